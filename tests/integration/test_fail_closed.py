# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exports fail closed: a Pi whose root or disks are not mounted is never served the data file system.

The bakery is an XFS loop file system holding the store, Pi A's and Pi B's roots, A's disks, a file beside
them and a stand-in for the bakery's /etc; NFS-Ganesha serves the exports nfs_export writes (as the fleet
role does) on a namespace LAN (10.99.42.0/24). Then A's root stops being mounted, the three ways it can:

- its mount is stopped (a unit that failed at boot) and the NFS server restarts, its guard run first as
  the nfs_server role's ExecStartPre does: A's export is withheld, B (and A's disks) are still served;
- the same without the guard (the second line): A's export is then the bare mount point, a directory of
  the mount points' tmpfs, and handles forged from it reach nothing of the data file system;
- a rebuild of A is killed right after it unmounted A's old root (a umount that kills its caller, the
  fault injected): the running server serves nothing wide, a restart withholds A, the next run repairs.

In every case A, root on its own machine, replays the handles it held and forges others (tests/tools/rawnfs.py,
AUTH_SYS uid 0, NFSv3) for the inodes of B's secret, the file beside the roots, the stand-in /etc, the top of
the data file system and the mount points' tmpfs: nothing of them may be read, nothing created outside A.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from attack import created_outside, rawnfs, target
from fstree import loop_fs
from modrun import ensure_importable, module_argv, run_module

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.disks import Layout as DisksLayout
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.exports import WITHHELD
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import Layout
from lab.nfslab import Ganesha, Lan, missing_tools, nfs, nfs_url, shared_mount
from lab.piimage import build_image

GUARD = Path(__file__).resolve().parents[2] / 'roles' / 'nfs_server' / 'files' / 'pifleet_exports_guard.py'
HOSTS = {'srv': '10.99.42.2', 'pia': '10.99.42.50', 'pib': '10.99.42.51'}
SERVER = HOSTS['srv']
A, B = '0000002a', '0000002b'
SECRET = b'secret of pi B: 9e71c0d5'
BAKERY_SECRET = b'hostname of the bakery itself: 7ee1f00d'
BESIDE = b'a file beside the roots, on the data file system: 4b1d'
LEAKS = (SECRET, BAKERY_SECRET, BESIDE)
MISSING = missing_tools(('ip', 'unshare', 'ganesha.nfsd', 'rpcbind', 'nfs-ls', 'mkfs.xfs', 'tune2fs', 'ssh-keygen'))

pytestmark = pytest.mark.skipif(bool(MISSING), reason='missing %s' % ', '.join(MISSING))


def tmpfs_target(path):
    """[inode, generation] of a tmpfs directory, from the kernel's own handle for it (generation, inode)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8 + 128)
    struct.pack_into('=Ii', buf, 0, 128, 0)
    mount_id = ctypes.c_int()
    assert libc.name_to_handle_at(-100, os.fsencode(str(path)), buf, ctypes.byref(mount_id), 0) == 0
    gen, ino = struct.unpack_from('=IQ', buf, 8)
    assert ino == os.stat(path).st_ino
    return [ino, gen]


def withheld_paths(text):
    """The paths of the EXPORT blocks an exports file holds withheld (commented out)."""
    return re.findall(r'^%s\s*Path = "([^"]*)";' % re.escape(WITHHELD), text, re.M)


class Bakery:
    def __init__(self, top, lan, server):
        self.top, self.lan, self.server = top, lan, server
        self.store, self.roots, self.disks = top / 'store', top / 'roots', top / 'disks'
        self.units, self.lock = top / 'units', str(top / 'run' / 'pifleet.lock')  # the lock wants its dir 0700

    def root(self, serial):
        return Path(Layout(str(self.roots), serial).point)

    def disks_of(self, serial):
        return Path(DisksLayout(str(self.disks), serial).point)

    def roots_args(self, pis):
        return {'store': str(self.store), 'roots_dir': str(self.roots), 'units_dir': str(self.units),
                'bakeform': 'bw', 'pis': pis, 'lock_file': self.lock}

    def converge(self):
        """What the fleet role runs: roots, disks, then the exports (exclusive); each must succeed."""
        for name, args in (('pi_root', self.roots_args([{'serial': A}, {'serial': B}])),
                           ('pi_disk', {'disks_dir': str(self.disks), 'units_dir': str(self.units),
                                        'lock_file': self.lock,
                                        'disks': [{'serial': A, 'name': 'data', 'size': '16M'}]})):
            result = run_module(name, args)
            assert result.get('failed') is not True, result
        result = self.exports()
        assert result.get('failed') is not True and result['withheld'] == [], result
        return result

    def exports(self):
        return run_module('nfs_export', {
            'backend': 'ganesha', 'exclusive': True, 'ganesha_config': str(self.server.config),
            'ganesha_pidfile': str(self.server.pidfile), 'exports_file': str(self.exports_file),
            'reload_settle': 1.0, 'lock_file': self.lock,
            'exports': [{'path': str(self.root(A)), 'clients': [HOSTS['pia']]},
                        {'path': str(self.root(B)), 'clients': [HOSTS['pib']]},
                        {'path': str(self.disks_of(A)), 'clients': [HOSTS['pia']]}]})

    @property
    def exports_file(self):
        return self.top / 'pifleet.conf'

    def restart(self, guard, unmount=()):
        """The NFS server restarted, its guard first when ``guard`` (the nfs_server role's ExecStartPre);
        ``unmount`` is unmounted while it is down (as a mount unit that failed at boot leaves it)."""
        self.server.close()
        for point in unmount:
            subprocess.run(['umount', str(point)], check=True)
        if guard:
            proc = subprocess.run([sys.executable, '-I', str(GUARD), '--exports', str(self.exports_file)],
                                  capture_output=True, text=True, check=False)
            assert proc.returncode == 0, proc.stderr
        self.server.start()

    def served(self, host, path):
        return nfs(self.lan, host, ['nfs-ls', nfs_url(SERVER, str(path))]).returncode == 0

    def wait_served(self, host, path, timeout=20):
        for _attempt in range(int(timeout / 0.3)):
            if self.served(host, path):
                return
            subprocess.run(['sleep', '0.3'], check=True)
        raise AssertionError('%s never served to %s' % (path, host))

    def rawnfs(self, host, command, spec):
        return rawnfs(self.lan, host, command, spec)

    def targets(self):
        """What A must never reach: B's secret, the file beside the roots, the stand-in /etc, the top of the
        data file system, B's image, and the mount points' tmpfs (its top and B's mount point on it)."""
        return [2, target(self.root(B) / 'root/secret'), target(self.top / 'beside-the-roots.txt'),
                target(self.top / 'bakery-etc/hostname'), target(self.top / 'bakery-etc'), target(self.top),
                target(self.roots / (B + '.img')), tmpfs_target(self.roots / 'mnt')]

    def names(self):
        return ['root/secret', 'hostname', 'beside-the-roots.txt', 'bakery-etc/hostname', B + '/root/secret',
                'roots/mnt/%s/root/secret' % B, 'mnt/%s/root/secret' % B]


def assert_nothing_wide(bk, seen, own_fsid=None):
    """No forged or replayed handle read anything of the data file system; nothing was made outside A."""
    assert len(seen) > 10, seen
    for item in seen:
        data = bytes.fromhex(item.get('data') or '')
        assert not any(leak in data for leak in LEAKS), item
        if own_fsid is not None and item.get('ok') and item.get('fsid') is not None:
            assert item['fsid'] == own_fsid, ('a handle from A reached another file system', item)
    created = {item['name'] for item in seen if item['op'] == 'create'}
    assert created_outside(bk.top, bk.root(A), created) == []


@pytest.fixture(scope='module')
def bakery(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('closed')
    image = tmp / 'pi.img.xz'
    build_image(image, seed=12, models=(4,))
    lan = Lan('pfcl', HOSTS)
    with loop_fs(tmp, 'xfs', '3G') as top:
        shared_mount(top)
        server = Ganesha(lan, 'srv', top / 'ganesha')
        bk = Bakery(top, lan, server)
        try:
            assert run_module('bakeform', {'name': 'bw', 'src': str(image), 'store': str(bk.store),
                                           'lock_file': bk.lock}).get('failed') is not True
            assert run_module('pi_root', bk.roots_args([{'serial': A}, {'serial': B}])).get('failed') is not True
            (bk.root(B) / 'root/secret').write_bytes(SECRET)
            (top / 'beside-the-roots.txt').write_bytes(BESIDE)
            (top / 'bakery-etc').mkdir()
            (top / 'bakery-etc/hostname').write_bytes(BAKERY_SECRET)
            lan.start()
            server.dir.mkdir()
            server.write_config()
            server.start()
            bk.converge()
            bk.wait_served('pia', bk.root(A))
            yield bk
        finally:
            server.close()
            lan.close()
            run_module('pi_root', bk.roots_args([{'serial': s, 'state': 'absent'} for s in (A, B)]))
            run_module('pi_disk', {'disks_dir': str(bk.disks), 'units_dir': str(bk.units), 'lock_file': bk.lock,
                                   'state': 'absent', 'force': True, 'disks': [{'serial': A, 'name': 'data'}]})


@pytest.fixture
def repaired(bakery):
    """Each test starts from a converged bakery and leaves one (the next run repairs what it broke)."""
    yield bakery
    bakery.converge()
    bakery.restart(guard=True)
    bakery.wait_served('pia', bakery.root(A))


def learn(bk):
    """The handles A holds while it is served: its root's and its /etc/hostname's (and its disks')."""
    saved = bk.rawnfs('pia', 'learn3', {'server': SERVER, 'export': str(bk.root(A)), 'known': 'etc/hostname'})
    assert saved['status'] == 0 and saved['known'], saved
    return saved


def replay(bk, saved):
    return bk.rawnfs('pia', 'forge3', {'server': SERVER, 'saved': saved, 'targets': bk.targets(),
                                       'names': bk.names(), 'foreign': []})


def test_a_root_whose_mount_stopped_is_withheld_and_the_other_pis_are_served(repaired):
    bk = repaired
    saved = learn(bk)
    bk.restart(guard=True, unmount=[bk.root(A)])
    bk.wait_served('pib', bk.root(B))
    assert nfs(bk.lan, 'pib', ['nfs-cat', nfs_url(SERVER, str(bk.root(B) / 'root/secret'))]).stdout.encode() == SECRET
    assert bk.served('pia', bk.disks_of(A))  # A's disks are mounted: still served
    assert not bk.served('pia', bk.root(A))
    assert bk.rawnfs('pia', 'handle3', {'server': SERVER, 'export': str(bk.root(A))})['status'] != 0
    assert '#|     Path = "%s";' % bk.root(A) in bk.exports_file.read_text()
    assert_nothing_wide(bk, replay(bk, saved))

    bk.restart(guard=True, unmount=[bk.disks_of(A)])  # the same for a Pi's disks
    bk.wait_served('pib', bk.root(B))
    assert not bk.served('pia', bk.disks_of(A))
    withheld = run_module('nfs_export', {'backend': 'ganesha', 'exports_file': str(bk.exports_file),
                                         'ganesha_config': str(bk.server.config), 'reload': False,
                                         'lock_file': bk.lock, 'path': str(bk.root(B)), 'clients': [HOSTS['pib']]})
    assert sorted(withheld['withheld']) == sorted([str(bk.root(A)), str(bk.disks_of(A))]), withheld
    assert withheld['changed'] is False  # the guard wrote exactly what nfs_export writes


def test_without_the_guard_a_bare_mount_point_reaches_nothing_of_the_data_file_system(repaired):
    bk = repaired
    bk.restart(guard=False, unmount=[bk.root(A)])  # the second line alone: the export is A's bare mount point
    bk.wait_served('pib', bk.root(B))
    assert bk.served('pia', bk.root(A)), 'expected Ganesha to export the bare mount point without the guard'
    spec = {'server': SERVER, 'export': str(bk.root(A)), 'known': '', 'targets': bk.targets(), 'names': bk.names(),
            'foreign': []}
    seen = bk.rawnfs('pia', 'forge3', spec)
    assert seen[0]['status'] == 0, seen[:1]
    assert_nothing_wide(bk, seen, own_fsid=seen[0]['fsid'])
    # The tmpfs's top and a bare mount point are immutable: A made nothing there, not even through a handle it
    # forged for the tmpfs's top with the right generation.
    assert sorted(os.listdir(bk.roots / 'mnt')) == sorted([A, B]) and os.listdir(bk.root(A)) == []
    assert [item for item in seen if item['op'] == 'create' and item['ok']] == []


# The module as its own process with one fault: a kill (as a crash or an OOM kill would) right after it unmounted
# ``point``. As root the module unmounts with umount2(2) in its own process (loopfs._umount_here), so the kill
# follows that call; the umount(8) beside it (the module's fallback) does the same for the other path.
KILLED_AFTER_UMOUNT = """\
import os, runpy, signal, sys
from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs
POINT, real = sys.argv.pop(1), loopfs._umount_here


def umount_then_die(point):
    done = real(point)
    if done and point == POINT:
        os.kill(os.getpid(), signal.SIGKILL)
    return done


loopfs._umount_here = umount_then_die
runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)
"""


def kill_after_umount(tmp, point, argv):
    """``(argv, PATH)``: the module of ``argv`` run so that, once it has unmounted ``point``, it is killed."""
    bin_dir = tmp / 'faulty-bin'
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / 'umount'
    script.write_text('#!/bin/sh\n/usr/bin/umount "$@"; rc=$?\n'
                      'for arg in "$@"; do if [ "$arg" = "%s" ] && [ $rc -eq 0 ]; then kill -KILL $PPID; fi; done\n'
                      'exit $rc\n' % point)
    script.chmod(0o755)
    python, dash_m, module, *args = argv
    assert dash_m == '-m', argv
    return [python, '-c', KILLED_AFTER_UMOUNT, str(point), module, *args], '%s:%s' % (bin_dir, os.environ['PATH'])


def test_a_rebuild_killed_after_it_unmounted_the_old_root_serves_nothing_wide(repaired, tmp_path):
    bk = repaired
    saved = learn(bk)
    ensure_importable()
    argv, path = kill_after_umount(tmp_path, bk.root(A),
                                   module_argv('pi_root', bk.roots_args([{'serial': A, 'state': 'rebuilt'}])))
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=dict(os.environ, PATH=path),
                          timeout=600)
    assert proc.returncode == -9 and not os.path.ismount(bk.root(A)), (proc.returncode, proc.stdout, proc.stderr)
    assert [n for n in os.listdir(bk.roots) if n.startswith('.pifleet-tmp-')], 'the swap was not under way'

    # The server still running: it serves at most what it had, A's own old root, never the data file system.
    assert_nothing_wide(bk, replay(bk, saved))
    # The fleet's next step refuses A's export while nothing is mounted there. A failed entry keeps the export it
    # had (fail per Pi), but with nothing mounted at its path that export is written withheld: the file changes
    # only by A's block becoming a comment; B's and A's disks' exports are as they were.
    before = bk.exports_file.read_text()
    refused = bk.exports()
    assert refused.get('failed') and 'is a directory inside the file system of' in refused['msg'], refused
    assert [f['path'] for f in refused['failed_exports']] == [str(bk.root(A))], refused
    after = bk.exports_file.read_text()
    assert withheld_paths(before) == [] and withheld_paths(after) == [str(bk.root(A))], after
    assert after.replace(WITHHELD, '') == before
    # Restarted (a reboot, a crash): the guard withholds A; B is served.
    bk.restart(guard=True)
    bk.wait_served('pib', bk.root(B))
    assert not bk.served('pia', bk.root(A))
    assert_nothing_wide(bk, replay(bk, saved))
    # The next run puts A's root back (the scratch of the killed run is swept) and serves it.
    bk.converge()
    assert [n for n in os.listdir(bk.roots) if n.startswith('.pifleet-tmp-')] == []
    bk.wait_served('pia', bk.root(A))
    hostname = nfs(bk.lan, 'pia', ['nfs-cat', nfs_url(SERVER, str(bk.root(A) / 'etc/hostname'))]).stdout
    assert hostname == 'pi-%s\n' % A


def test_a_root_mounted_where_earlier_releases_did_moves_and_is_served_at_its_new_path(repaired):
    """The migration, served: B's root mounted and exported at roots/<serial> as earlier releases did; the next
    converge mounts it at roots/mnt/<serial>, gives the old point up, and the server serves the new path only."""
    bk = repaired
    old = bk.roots / B
    bk.server.close()
    subprocess.run(['umount', str(bk.root(B))], check=True)
    old.mkdir()
    subprocess.run(['mount', '-o', 'loop,nosuid,nodev', str(bk.roots / (B + '.img')), str(old)], check=True)
    earlier = run_module('nfs_export', {
        'backend': 'ganesha', 'exclusive': True, 'ganesha_config': str(bk.server.config),
        'ganesha_pidfile': str(bk.server.pidfile), 'exports_file': str(bk.exports_file), 'lock_file': bk.lock,
        'exports': [{'path': str(bk.root(A)), 'clients': [HOSTS['pia']]},
                    {'path': str(old), 'clients': [HOSTS['pib']]}]})
    assert earlier.get('failed') is not True, earlier
    bk.server.start()
    bk.wait_served('pib', old)

    bk.converge()
    assert not os.path.lexists(old) and os.path.ismount(bk.root(B))
    bk.wait_served('pib', bk.root(B))
    secret = nfs(bk.lan, 'pib', ['nfs-cat', nfs_url(SERVER, str(bk.root(B) / 'root/secret'))]).stdout.encode()
    assert secret == SECRET
    assert bk.rawnfs('pib', 'handle3', {'server': SERVER, 'export': str(old)})['status'] != 0
