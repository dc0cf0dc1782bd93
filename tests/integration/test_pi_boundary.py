# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boundary between a Pi and the bakery, attacked for real (SECURITY.md maps each test to its boundary).

The bakery here is an XFS loop file system holding the store, the roots and a stand-in for the
bakery's own /etc. bakeform, pi_root and nfs_export build two Pis, A and B, as the fleet role does;
NFS-Ganesha serves the exports on a namespace LAN (10.99.41.0/24). Then Pi A attacks:

- with a raw NFS client (tests/tools/rawnfs.py, AUTH_SYS uid 0) it forges file handles: the file
  system root (inode 2), the inode numbers of B's secret and of the stand-in /etc files, B's own
  handle replayed as is, with A's export id, and A's export id with B's file system; over NFSv3
  and NFSv4. Nothing outside A's own file system may answer, B's secret and the stand-in are never
  read, and nothing is created outside A;
- as root on its own system it turns paths in its root into symlinks to the stand-in /etc (before a
  rebuild, in a golden image, and flipping etc/ 2000 times while pi_root re-applies its fixes): the
  stand-in's checksums must not change, and a rebuild gives it the identity the bakery keeps (never
  what its root holds).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from attack import created_outside, rawnfs, target
from fstree import loop_fs
from genstore import ingest
from modrun import run_module

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import unit_name
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import Layout
from lab.nfslab import Ganesha, Lan, missing_tools, nfs, nfs_url, shared_mount
from lab.piimage import build_image

HOSTS = {'srv': '10.99.41.2', 'pia': '10.99.41.50', 'pib': '10.99.41.51', 'out': '10.99.41.60'}
SERVER = HOSTS['srv']
A, B = '0000000a', '0000000b'
SECRET = b'secret of pi B: 5f2d0c9e71'
BAKERY_SECRET = b'hostname of the bakery itself: 0c0ffee'
MISSING = missing_tools(('ip', 'unshare', 'ganesha.nfsd', 'rpcbind', 'nfs-ls', 'mkfs.xfs', 'tune2fs', 'ssh-keygen'))

pytestmark = pytest.mark.skipif(bool(MISSING), reason='missing %s' % ', '.join(MISSING))


def digest_tree(top):
    """Checksums of every file below ``top`` (the stand-in must come out of every attack unchanged)."""
    found = {}
    for base, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(base, name)
            with open(path, 'rb') as handle:
                found[os.path.relpath(path, top)] = hashlib.sha256(handle.read()).hexdigest()
    return found


class Bakery:
    """Paths and module calls of the bakery under test."""

    def __init__(self, top):
        self.top = top
        self.store, self.roots, self.units = top / 'store', top / 'roots', top / 'units'
        self.standin = top / 'bakery-etc'
        self.lock = str(top / 'run' / 'pifleet.lock')  # a directory of its own, 0700

    def point(self, serial):
        """A Pi's root as the Pi sees it: its mount point, the export."""
        return Path(Layout(str(self.roots), serial).point)

    def module(self, name, args, **kwargs):
        return run_module(name, dict(args, lock_file=self.lock), **kwargs)

    def roots_call(self, pis, **extra):
        return self.module('pi_root', dict({'store': str(self.store), 'roots_dir': str(self.roots),
                                            'units_dir': str(self.units), 'bakeform': 'bw', 'pis': pis}, **extra))

    def exports(self, server, extra=(), **options):
        return self.module('nfs_export', dict({
            'backend': 'ganesha', 'exclusive': True, 'ganesha_config': str(server.config),
            'ganesha_pidfile': str(server.pidfile), 'exports_file': str(self.top / 'pifleet.conf'),
            'reload_settle': 1.0,
            'exports': [{'path': str(self.point(A)), 'clients': [HOSTS['pia']]},
                        {'path': str(self.point(B)), 'clients': [HOSTS['pib']]}, *extra]}, **options))

    def unmount_all(self):
        for serial in (A, B):
            self.roots_call([{'serial': serial, 'state': 'absent'}])


@pytest.fixture(scope='module')
def bakery(tmp_path_factory):
    """Two Pis' roots on an XFS bakery, exported by a running Ganesha; torn down completely."""
    tmp = tmp_path_factory.mktemp('boundary')
    image = tmp / 'pi.img.xz'
    build_image(image, seed=11, models=(4,))
    lan = Lan('pfbnd', HOSTS)
    with loop_fs(tmp, 'xfs', '3G') as top:
        shared_mount(top)
        bk = Bakery(top)
        server = Ganesha(lan, 'srv', top / 'ganesha')
        try:
            ingest(bk.store, 'bw', image, bk.lock)
            result = bk.roots_call([{'serial': A}, {'serial': B}])
            assert result.get('failed') is not True, result
            (bk.point(B) / 'root/secret').write_bytes(SECRET)
            bk.standin.mkdir()
            (bk.standin / 'hostname').write_bytes(BAKERY_SECRET)
            (bk.standin / 'ssh').mkdir()
            for kind in ('ed25519', 'ecdsa'):
                (bk.standin / 'ssh' / ('ssh_host_%s_key' % kind)).write_text('bakery private %s key\n' % kind)
                (bk.standin / 'ssh' / ('ssh_host_%s_key.pub' % kind)).write_text('bakery public %s key\n' % kind)
            lan.start()
            server.dir.mkdir()
            server.write_config()
            server.start()
            result = bk.exports(server)
            assert result.get('failed') is not True, result
            wait_readable(lan, 'pia', bk.point(A))
            yield bk, lan, server
        finally:
            server.close()
            lan.close()
            bk.unmount_all()


def wait_readable(lan, host, path, timeout=20):
    deadline = time.monotonic() + timeout
    while nfs(lan, host, ['nfs-ls', nfs_url(SERVER, str(path))]).returncode != 0:
        assert time.monotonic() < deadline, 'export %s never became readable from %s' % (path, host)
        time.sleep(0.3)


@pytest.mark.parametrize('version', [3, 4])
def test_forged_handles_reach_only_the_pis_own_file_system(bakery, version):
    bk, lan, _server = bakery
    root_a = bk.point(A)
    fsid_a = None
    foreign = [rawnfs(lan, 'pib', 'handle3', {'server': SERVER, 'export': str(bk.point(B))})['handle']]
    targets = [2, target(bk.point(B) / 'root/secret'), target(bk.standin / 'hostname'), target(bk.standin),
               target(bk.top), target(bk.point(B))]
    spec = {'server': SERVER, 'export': str(root_a), 'known': 'etc/hostname', 'targets': targets,
            'names': ['root/secret', 'bakery-etc/hostname', 'hostname', 'roots/mnt/%s/root/secret' % B, 'secret'],
            'foreign': foreign}
    seen = rawnfs(lan, 'pia', 'forge3' if version == 3 else 'forge4', spec)
    assert len(seen) > 10, seen
    if version == 3:
        assert seen[0]['status'] == 0
        fsid_a = seen[0]['fsid']
    for item in seen:
        data = bytes.fromhex(item.get('data') or '')
        assert SECRET not in data and BAKERY_SECRET not in data, item
        if item.get('ok') and fsid_a is not None and item.get('fsid') is not None:
            assert item['fsid'] == fsid_a, ('a forged handle reached another file system', item)
        if item.get('handle', '').startswith('foreign'):
            assert not item['ok'], ('a handle of B answered through A', item)
    created = {item['name'] for item in seen if item['op'] in ('create', 'create4')}
    assert created_outside(bk.top, root_a, created) == []
    assert (bk.point(B) / 'root/secret').read_bytes() == SECRET


def test_the_attack_is_real_against_a_directory_on_a_shared_file_system(bakery):
    """The control: the same forgery through an export of a plain directory reaches the whole file system.

    That is what every Pi root was before (one directory each on the bakery's file system), and why
    nfs_export now refuses such exports unless allow_shared_filesystem is set.
    """
    bk, lan, server = bakery
    legacy = bk.top / 'legacy-a'
    (legacy / 'etc').mkdir(parents=True, exist_ok=True)
    (legacy / 'etc/hostname').write_text('legacy\n')
    entry = {'path': str(legacy), 'clients': [HOSTS['pia']]}
    refused = bk.exports(server, [entry])
    assert refused.get('failed') and 'allow_shared_filesystem' in refused['msg'], refused
    try:
        assert bk.exports(server, [entry], allow_shared_filesystem=True).get('failed') is not True
        wait_readable(lan, 'pia', legacy)
        seen = rawnfs(lan, 'pia', 'forge3', {'server': SERVER, 'export': str(legacy), 'known': 'etc/hostname',
                                             'targets': [target(bk.top)], 'names': ['bakery-etc/hostname'],
                                             'foreign': []})
        leaked = [bytes.fromhex(item['data']) for item in seen if item.get('data')]
        assert BAKERY_SECRET in leaked, seen
    finally:
        assert bk.exports(server).get('failed') is not True


def test_other_addresses_cannot_mount_the_root(bakery):
    bk, lan, _server = bakery
    assert rawnfs(lan, 'out', 'handle3', {'server': SERVER, 'export': str(bk.point(A))})['status'] != 0
    assert rawnfs(lan, 'pib', 'handle3', {'server': SERVER, 'export': str(bk.point(A))})['status'] != 0


def test_roots_are_their_own_file_systems_out_of_reach_of_local_users(bakery):
    bk, _lan, _server = bakery
    assert os.stat(bk.roots).st_mode & 0o7777 == 0o700
    assert os.stat(bk.store).st_mode & 0o7777 == 0o711
    assert os.stat(bk.store / 'bw/generations/1/root.img').st_mode & 0o777 == 0o600
    with open('/proc/self/mountinfo', encoding='utf-8') as info:
        mounts = {line.split()[4]: line.split()[5].split(',') for line in info}
    uuids = set()
    for serial in (A, B):
        point = str(bk.point(serial))
        assert {'nosuid', 'nodev'} <= set(mounts[point]), mounts[point]
        uuids.add(json.loads((bk.roots / (serial + '.json')).read_text())['fs_uuid'])
        unit = (bk.units / unit_name(point)).read_text()
        image = bk.roots / (serial + '.img')
        assert 'What=%s\n' % image in unit and 'Where=%s\n' % point in unit and 'nosuid,nodev' in unit
    assert len(uuids) == 2  # each clone has a file system identity of its own
    for serial in (A, B):  # the identity the bakery keeps: root's, 0700, beside the roots (0700)
        kept = bk.roots / (serial + '.identity')
        assert os.stat(kept).st_mode & 0o7777 == 0o700 and os.stat(kept).st_uid == 0
    denied = subprocess.run(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', 'ls',
                             str(bk.point(A))], capture_output=True, text=True, check=False)
    assert denied.returncode != 0 and 'Permission denied' in denied.stderr


def test_rebuild_takes_the_identity_from_the_bakery_never_through_an_ssh_symlink(bakery):
    bk, lan, server = bakery
    before = digest_tree(bk.standin)
    kept = {name: (bk.roots / (A + '.identity') / name).read_bytes() for name in ('ssh_host_ed25519_key', 'machine-id')}
    ssh = bk.point(A) / 'etc/ssh'
    os.rename(ssh, bk.point(A) / 'etc/ssh.real')
    os.symlink(str(bk.standin / 'ssh'), ssh)
    result = bk.roots_call([{'serial': A, 'state': 'rebuilt'}])
    assert result.get('failed') is not True and not result.get('warnings'), result
    assert (bk.point(A) / 'etc/ssh/ssh_host_ed25519_key').read_bytes() == kept['ssh_host_ed25519_key']
    assert (bk.point(A) / 'etc/machine-id').read_bytes() == kept['machine-id']
    assert not os.path.islink(bk.point(A) / 'etc/ssh') and digest_tree(bk.standin) == before
    # The rebuilt root is a new file system at the same path: the export is dropped and made again.
    result = bk.exports(server)
    assert result['bounced'] == [str(bk.point(A))], result
    wait_readable(lan, 'pia', bk.point(A))
    listing = nfs(lan, 'pia', ['nfs-ls', nfs_url(SERVER, str(bk.point(A) / 'etc'))]).stdout
    assert 'ssh.real' not in listing  # Ganesha serves the new root, not the old one it had open
    # A root made before the bakery kept identities, with the same trap: new keys, never the stand-in's.
    subprocess.run(['rm', '-rf', '--', str(bk.roots / (A + '.identity'))], check=True)
    os.rename(ssh, bk.point(A) / 'etc/ssh.real')
    os.symlink(str(bk.standin / 'ssh'), ssh)
    result = bk.roots_call([{'serial': A, 'state': 'rebuilt'}])
    assert result.get('failed') is not True and 'made new ones for' in json.dumps(result.get('warnings')), result
    new_key = (bk.point(A) / 'etc/ssh/ssh_host_ed25519_key').read_bytes()
    assert b'bakery private' not in new_key and new_key != kept['ssh_host_ed25519_key']
    assert digest_tree(bk.standin) == before
    assert bk.exports(server)['bounced'] == [str(bk.point(A))]


def exchange(one, other):
    """Swap two names atomically (the collection's renameat2 with RENAME_EXCHANGE); the test needs it to work."""
    assert atomic.exchange(str(one), str(other)), 'this file system cannot swap names atomically'


def test_fixes_never_follow_a_flipping_etc(bakery):
    bk, _lan, _server = bakery
    before = digest_tree(bk.standin)
    root = bk.point(B)
    stop = threading.Event()
    flips = [0]

    def flip():
        # etc/ and a symlink to the stand-in trade places atomically (RENAME_EXCHANGE), so etc always exists: a
        # plain rename pair leaves a moment without etc, in which the fixes may make a new etc/ and end the flips.
        real, link = root / 'etc', root / 'etc.flip'
        os.symlink(str(bk.standin), link)
        swapped = False
        try:
            while not stop.is_set() and flips[0] < 2000:
                exchange(real, link)  # etc is now a symlink to the stand-in
                swapped = True
                time.sleep(0.001)
                exchange(real, link)
                swapped = False
                time.sleep(0.001)
                flips[0] += 1
        finally:
            if swapped:
                exchange(real, link)
            os.unlink(link)

    thread = threading.Thread(target=flip)
    thread.start()
    outcomes = []
    try:
        while thread.is_alive() or len(outcomes) < 3:  # the fixes run again and again while etc/ flips
            index = len(outcomes)
            result = bk.roots_call([{'serial': B, 'hostname': 'flip-%d' % (index % 2)}])
            outcomes.append('failed' if result.get('failed') else result['pis'][0]['action'])
    finally:
        stop.set()
        thread.join()
    assert flips[0] == 2000 and len(outcomes) >= 3, (flips, outcomes)
    assert digest_tree(bk.standin) == before, outcomes
    assert (bk.standin / 'hostname').read_bytes() == BAKERY_SECRET
    assert set(outcomes) <= {'fixed', 'failed', 'unchanged'}, outcomes


def test_a_golden_image_with_an_ssh_symlink_is_refused(bakery):
    bk, _lan, _server = bakery
    before = digest_tree(bk.standin)
    golden = bk.store / 'bw/generations/1/root.img'
    mnt = bk.top / 'golden-mnt'
    mnt.mkdir()
    subprocess.run(['mount', '-o', 'loop', str(golden), str(mnt)], check=True)
    try:
        os.rename(mnt / 'etc/ssh', mnt / 'etc/ssh.orig')
        os.symlink(str(bk.standin / 'ssh'), mnt / 'etc/ssh')
    finally:
        subprocess.run(['umount', str(mnt)], check=True)
    result = bk.roots_call([{'serial': '0000000c'}])
    assert result.get('failed') is True
    assert 'etc/ssh' in result['msg'] and 'symlink' in result['msg'], result['msg']
    assert digest_tree(bk.standin) == before
    assert not os.path.exists(bk.roots / '0000000c.img')
