# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_root on real XFS and btrfs (reflink) and ext4 (copy) loop file systems, as root.

Each file system holds a bakeform store and the roots dir, as on a bakery. Every Pi's root is an
ext4 image cloned from the root.img of a bakeform generation and loop-mounted at its mount point; it is
compared entry by entry (fstree.describe) with what the image factory built, except what the fixes
change. Lifecycle, a new generation, rebuild, removal, check mode, forced clone methods, a SIGKILL
mid-clone, a 30-Pi list call and two runs at once (the bakery lock) are exercised against real state.
Rollback, identities, certificates and kills mid-move are in test_pi_root_generations.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fstree import describe, expected_tree, loop_fs, loops_backed_by, mounted_ro, release_mounts, snapshot
from genstore import ingest
from modrun import has_open, module_argv, run_module

from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import read_superblock, unit_name
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import Layout
from lab.piimage import build_image

AUTO_METHOD = {'xfs': 'reflink', 'btrfs': 'reflink', 'ext4': 'copy'}
KEY_A = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHN0dWJrZXlmb3J0ZXN0aW5nMTIzNDU2Nzg5MA admin@bakery'
KEY_B = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG90aGVya2V5Zm9ydGVzdGluZzEyMzQ1Njc4OTA ops@bakery'
WANTS = 'etc/systemd/system/multi-user.target.wants'
NM_CONF = 'etc/NetworkManager/conf.d/90-pifleet-nfsroot.conf'


def keys(*kinds):
    return {'etc/ssh/ssh_host_%s_key%s' % (kind, ext) for kind in kinds for ext in ('', '.pub')}


# The factory's image has ed25519 and rsa host keys; each Pi gets ed25519 and ecdsa keys of its own
# (host_key_types' default) and none of the golden set. What the fixes may change, remove and add;
# everything else must be as the factory built it.
CHANGED = {'etc/fstab', 'etc/hostname', 'etc/hosts', 'etc/machine-id', 'var/lib/dbus/machine-id',
           'etc/dphys-swapfile', 'etc/dhcpcd.conf', *keys('ed25519')}
REMOVED = {WANTS + '/resize2fs_once.service', 'etc/rc3.d/S01resize2fs_once', *keys('rsa')}
ADDED = {'etc/systemd/system/dphys-swapfile.service', WANTS + '/ssh.service', 'etc/NetworkManager/conf.d', NM_CONF,
         'root/.ssh', 'root/.ssh/authorized_keys', *keys('ecdsa')}
ADDED_WITHOUT_KEYS = ADDED - {'root/.ssh', 'root/.ssh/authorized_keys'}


class Lab:
    """A loop file system holding a store, the roots dir, the units dir and the lock file."""

    def __init__(self, fs, mnt):
        self.fs, self.mnt = fs, mnt
        self.store, self.roots, self.units = mnt / 'store', mnt / 'roots', mnt / 'units'
        self.lock = str(mnt / 'run' / 'pifleet.lock')  # a directory of its own, 0700
        self.expect = {}  # bakeform name -> the describe() the factory (plus like_pi_os) promises

    def args(self, **extra):
        return dict({'bakeform': 'bw', 'store': str(self.store), 'roots_dir': str(self.roots),
                     'units_dir': str(self.units), 'lock_file': self.lock}, **extra)

    def pi_root(self, check=False, diff=False, **extra):
        return run_module('pi_root', self.args(**extra), check=check, diff=diff)

    def ingest(self, name, image):
        """The image as the next generation of ``name`` (the current one); returns its content's sha256."""
        number, manifest = ingest(self.store, name, image['path'], self.lock)
        self.expect[name] = like_pi_os(self.gen(name, number) / 'root.img', image, self.mnt)
        return manifest['sha256']

    def gen(self, name, number=1):
        return self.store / name / 'generations' / str(number)

    def scratch_dirs(self):
        return sorted(n for n in os.listdir(self.roots) if n.startswith('.pifleet-tmp-')) if self.roots.exists() else []

    def layout(self, serial):
        return Layout(str(self.roots), serial)

    def point(self, serial):
        """Where a Pi's root is mounted and exported: on the mount points' tmpfs, roots/mnt."""
        return Path(self.layout(serial).point)

    def image(self, serial):
        return Path(self.layout(serial).image)

    def paths(self, serial):
        """Everything of a Pi's root in the roots dir: its mount point (and that of earlier releases), image,
        marker, previous root, journal and the identity the bakery keeps."""
        layout = self.layout(serial)
        return [Path(p) for p in (layout.point, layout.old_point, layout.image, layout.marker, layout.prev_image,
                                  layout.prev_marker, layout.journal, layout.identity)]

    def mounted(self):
        """The Pis' mount points below the roots dir, sorted, once per mount (a mount stacked on another shows
        twice); the mount points' tmpfs itself is not one of them."""
        return sorted(point for point, _options in mounts(self.roots) if point != str(self.roots / 'mnt'))

    def state(self):
        """What a run that changes nothing leaves as it was: markers, units and every file in the mounted roots.

        The images themselves are left out: reading a mounted root may update access times inside it.
        """
        seen = {k: v for k, v in snapshot(self.roots).items() if not k.endswith('.img')}
        seen.update(('units/' + k, v) for k, v in snapshot(self.units).items())
        return seen


def mounts(top):
    """(mount point, options) of every mount below ``top``."""
    with open('/proc/self/mountinfo', encoding='utf-8') as info:
        lines = [line.split() for line in info]
    return [(fields[4], fields[5].split(',')) for fields in lines if fields[4].startswith(str(top) + '/')]


def like_pi_os(golden_img, image, top):
    """Add what a Pi OS root has and the factory's lacks (so every fix has work), on the golden image itself.

    Returns the expected description of the golden root: the factory's, plus the added entries.
    """
    extras = top / 'pi-os-extras'
    for rel, text in (('etc/dhcpcd.conf', 'hostname\nclientid\n'), ('lib/systemd/system/ssh.service', '[Unit]\n'),
                      ('var/lib/dbus/machine-id', 'f' * 32 + '\n')):
        (extras / rel).parent.mkdir(parents=True, exist_ok=True)
        (extras / rel).write_text(text)
    (extras / 'etc/NetworkManager').mkdir()
    (extras / 'etc/rc3.d').mkdir()
    os.symlink('../init.d/resize2fs_once', extras / 'etc/rc3.d/S01resize2fs_once')
    want = expected_tree(image['expect'])
    want.update({path: entry for path, entry in describe(extras).items() if path not in want})
    view = top / 'golden-rw'
    view.mkdir()
    subprocess.run(['mount', '-o', 'loop', str(golden_img), str(view)], check=True)
    try:
        subprocess.run(['cp', '-a', '--', str(extras) + '/.', str(view)], check=True)
    finally:
        subprocess.run(['umount', str(view)], check=True)
        view.rmdir()
        subprocess.run(['rm', '-rf', '--', str(extras)], check=True)
    return want


@pytest.fixture(scope='session')
def tiny_images(tmp_path_factory):
    top = tmp_path_factory.mktemp('piroot-images')
    return {'good': build_image(top / 'good.img', seed=21),
            'other': build_image(top / 'other.img', seed=22, models=(4,))}


@pytest.fixture(scope='module', params=['xfs', 'btrfs', 'ext4'])
def lab(request, tmp_path_factory, tiny_images):
    """A loop file system with bakeform 'bw' ingested; every root and mount on it is gone afterwards."""
    top = tmp_path_factory.mktemp('piroot-%s' % request.param)
    with loop_fs(top, request.param) as mnt:
        lab = Lab(request.param, mnt)
        lab.sha256 = lab.ingest('bw', tiny_images['good'])
        try:
            yield lab
        finally:
            release_mounts(mnt)


def shared_extents(path):
    out = subprocess.run(['filefrag', '-v', str(path)], capture_output=True, text=True, check=True).stdout
    return 'shared' in out


def assert_faithful(want, root, added=ADDED):
    """Entry by entry: as the factory built it, except what the fixes change (whose metadata stays)."""
    got = describe(root)
    assert set(got) - set(want) == added
    assert set(want) - set(got) == REMOVED
    for path, entry in want.items():
        if path in REMOVED:
            continue
        if path in CHANGED:
            assert dict(got[path], size=None) == dict(entry, size=None), path
        else:
            assert got[path] == entry, path


def test_clone_is_faithful_and_fixed(lab):
    serials = ['3a4b5c6d', '0badcafe']
    args = dict(pis=[{'serial': serials[0], 'hostname': 'kitchen'}, {'serial': '10000000' + serials[1]}],
                ssh_authorized_keys=[KEY_A], boot_mount='nfs', nfs_server='10.99.0.2')
    planned = lab.pi_root(check=True, diff=True, **args)
    assert planned['changed'] is True, planned
    assert [(p['action'], p['clone_method']) for p in planned['pis']] == [('cloned', AUTO_METHOD[lab.fs])] * 2
    assert not lab.roots.exists() and not lab.units.exists() and lab.mounted() == []

    done = lab.pi_root(diff=True, **args)
    assert done['changed'] is True, done
    assert [(p['serial'], p['hostname'], p['action'], p['clone_method']) for p in done['pis']] == [
        (serials[0], 'kitchen', 'cloned', AUTO_METHOD[lab.fs]),
        (serials[1], 'pi-0badcafe', 'cloned', AUTO_METHOD[lab.fs])]
    texts = [d for d in done['diff'] if not d['after_header'].endswith('.json')]
    assert texts == [d for d in planned['diff'] if not d['after_header'].endswith('.json')]  # check mode foretold it
    made = ('.identity', '.img', '.json')
    assert sorted(os.listdir(lab.roots)) == sorted(['mnt', *(s + ext for s in serials for ext in made)])
    roots = [lab.point(serial) for serial in serials]
    assert lab.mounted() == sorted(str(r) for r in roots)
    for point, options in mounts(lab.roots):
        assert {'rw', 'nosuid', 'nodev'} <= set(options), (point, options)  # the tmpfs too (and noexec)
    for root in roots:
        assert_faithful(lab.expect['bw'], root)

    # Each clone is a file system image of its own, sharing blocks with the golden one where it can.
    assert shared_extents(str(lab.image(roots[0].name))) is (lab.fs != 'ext4')
    assert os.stat(lab.image(roots[0].name)).st_mode & 0o777 == 0o600 and os.stat(lab.roots).st_mode & 0o777 == 0o700

    assert_fixed(lab, roots[0], 'kitchen')
    assert (roots[1] / 'etc/hostname').read_text() == 'pi-0badcafe\n'
    assert_own_identity(lab, roots)
    marker = json.loads((lab.roots / (serials[0] + '.json')).read_text())
    assert marker['serial'] == serials[0] and marker['bakeform'] == 'bw' and marker['hostname'] == 'kitchen'
    assert marker['bakeform_sha256'] == lab.sha256 and marker['clone_method'] == AUTO_METHOD[lab.fs]
    assert marker['fs_uuid'] == read_superblock(str(lab.image(roots[0].name)))['uuid']
    assert marker['boot_mount'] == 'nfs' and marker['created'] == marker['updated']
    assert {'fstab', 'hostname', 'hosts', 'machine_id', 'ssh_host_keys', 'firstboot_disabled', 'swap_disabled',
            'network', 'ssh_enabled', 'authorized_keys'} == set(marker['fixes'])
    for point in [*roots, lab.gen('bw') / 'boot-nfs']:
        unit = (lab.units / unit_name(str(point))).read_text()
        assert 'Where=%s\n' % point in unit
        assert os.readlink(lab.units / 'local-fs.target.wants' / unit_name(str(point))) == str(
            lab.units / unit_name(str(point)))

    # The image itself, as the next boot of the bakery mounts it: unmounted (as by a reboot), then read-only.
    subprocess.run(['umount', str(roots[1])], check=True)
    with mounted_ro(str(lab.image(roots[1].name)), lab.mnt / 'view') as view:
        assert_faithful(lab.expect['bw'], view)
        assert (view / 'etc/hostname').read_text() == 'pi-0badcafe\n'
    remounted = lab.pi_root(**args)
    assert [p['action'] for p in remounted['pis']] == ['unchanged', 'mounted'], remounted

    before = lab.state()
    for check in (True, False):
        again = lab.pi_root(check=check, **args)
        assert again['changed'] is False, again
        assert [p['action'] for p in again['pis']] == ['unchanged', 'unchanged']
    assert lab.state() == before and lab.mounted() == sorted(str(r) for r in roots)
    for serial in serials:
        assert_removed(lab, serial)


def assert_fixed(lab, root, hostname):
    """The fixes for life on NFS, in a root cloned with boot_mount nfs and KEY_A."""
    boot = lab.gen('bw') / 'boot-nfs'
    assert (root / 'etc/fstab').read_text() == (
        '# Generated by pifleet piimage.py\n'
        'proc            /proc           proc    defaults          0       0\n'
        '10.99.0.2:%s /boot/firmware nfs ro,vers=3,nolock 0 0\n' % boot)
    boot_mounts = [options for point, options in mounts(lab.store) if point == str(boot)]
    assert len(boot_mounts) == 1 and 'ro' in boot_mounts[0]  # boot.img, read-only, for the export
    boot_files = json.loads((lab.gen('bw') / 'manifest.json').read_text())['boot_files']
    assert sorted(os.listdir(boot)) == sorted({p.split('/')[0] for p in boot_files} | {'lost+found'})
    assert (root / 'etc/hostname').read_text() == hostname + '\n'
    assert os.getxattr(root / 'etc/hostname', 'user.pifleet') == b'golden'
    assert (root / 'etc/hosts').read_text().splitlines()[-1] == '127.0.1.1\t' + hostname
    assert os.readlink(root / 'etc/systemd/system/dphys-swapfile.service') == '/dev/null'
    assert 'CONF_SWAPSIZE=0' in (root / 'etc/dphys-swapfile').read_text().splitlines()
    assert os.readlink(root / WANTS / 'ssh.service') == '/lib/systemd/system/ssh.service'
    assert 'unmanaged-devices=interface-name:eth0;interface-name:end0' in (root / NM_CONF).read_text()
    assert 'denyinterfaces eth0 end0' in (root / 'etc/dhcpcd.conf').read_text().splitlines()
    authorized = os.lstat(root / 'root/.ssh/authorized_keys')
    assert (root / 'root/.ssh/authorized_keys').read_text() == KEY_A + '\n'
    assert (authorized.st_uid, authorized.st_gid, authorized.st_mode & 0o777) == (0, 0, 0o600)
    assert os.lstat(root / 'root/.ssh').st_mode & 0o777 == 0o700


def assert_own_identity(lab, roots):
    """Each Pi its own file system UUID, machine-id and host keys, none shared with the golden root or each other."""
    golden = lab.gen('bw') / 'root.img'
    uuids = {read_superblock(str(lab.image(r.name)))['uuid'] for r in roots} | {read_superblock(str(golden))['uuid']}
    assert len(uuids) == len(roots) + 1
    ids = [(r / 'etc/machine-id').read_text() for r in roots]
    with mounted_ro(golden, lab.mnt / 'view') as view:
        ids.append((view / 'etc/machine-id').read_text())
        golden_keys = {rel: (view / rel).read_bytes() for rel in keys('ed25519', 'rsa')}
    assert len(set(ids)) == len(roots) + 1 and all(len(i) == 33 for i in ids[:-1])
    assert all((r / 'var/lib/dbus/machine-id').read_text() == i for r, i in zip(roots, ids))
    for rel in keys('ed25519', 'ecdsa'):
        assert len({(r / rel).read_bytes() for r in roots} | {golden_keys.get(rel)}) == len(roots) + 1, rel
    listed = subprocess.run(['ssh-keygen', '-l', '-f', str(roots[0] / 'etc/ssh/ssh_host_ecdsa_key.pub')],
                            capture_output=True, text=True, check=True).stdout
    assert '(ECDSA)' in listed and 'root@' in listed


@pytest.mark.parametrize('method', ['copy', 'reflink', 'snapshot'])
def test_forced_clone_method(lab, method):
    serial = {'copy': '00c0ffee', 'reflink': '00ee1111', 'snapshot': '00ab5555'}[method]
    result = lab.pi_root(serial=serial, clone_method=method)
    root = lab.point(serial)
    if method == 'snapshot':
        assert result.get('failed') and 'clone_method snapshot is no longer offered' in result['msg'], result
        assert 'forged NFS handles' in result['msg'] and 'clone_method reflink' in result['msg']
    elif method == 'reflink' and lab.fs == 'ext4':
        assert result.get('failed') and 'cloning' in result['msg'] and 'clone_method: copy works' in result['msg']
    else:
        assert not result.get('failed') and result['pis'][0]['clone_method'] == method, result
        assert_faithful(lab.expect['bw'], root, ADDED_WITHOUT_KEYS)
        assert shared_extents(str(lab.image(root.name))) is (method == 'reflink')
        assert json.loads((lab.roots / (serial + '.json')).read_text())['clone_method'] == method
        assert_removed(lab, serial)
        return
    assert result['pis'][0]['action'] == 'failed' and result['changed'] is False
    assert not any(os.path.lexists(path) for path in lab.paths(root.name))
    assert lab.scratch_dirs() == [] and lab.mounted() == [] and loops_backed_by(lab.roots) == []


def test_lifecycle_fix_generation_rebuild_absent(lab, tiny_images):
    first_sha = lab.ingest('life', tiny_images['good'])
    base = dict(serial='1e1e1e1e', hostname='den', bakeform='life', ssh_authorized_keys=[KEY_A])
    root, marker_path, image = lab.point('1e1e1e1e'), lab.roots / '1e1e1e1e.json', lab.image('1e1e1e1e')
    assert lab.pi_root(**base)['pis'][0]['action'] == 'cloned'
    marker0 = json.loads(marker_path.read_text())
    keys0 = {rel: (root / rel).read_bytes() for rel in keys('ed25519', 'ecdsa')}
    machine_id = (root / 'etc/machine-id').read_text()
    (root / 'home/pi/notes.txt').write_text('the Pi wrote this\n')
    inode = os.stat(root / 'usr/bin/busybox').st_ino

    renamed = dict(base, hostname='study', ssh_authorized_keys=[KEY_A, KEY_B])
    before = lab.state()
    planned = lab.pi_root(check=True, diff=True, **renamed)
    assert planned['changed'] is True and planned['pis'][0]['action'] == 'fixed'
    shown = {d['after_header'] for d in planned['diff']}
    assert shown == {str(root / 'etc/hostname'), str(root / 'etc/hosts'), str(marker_path)}
    assert lab.state() == before  # check mode wrote nothing
    fixed = lab.pi_root(**renamed)
    assert fixed['changed'] is True and fixed['pis'][0]['action'] == 'fixed', fixed
    assert (root / 'etc/hostname').read_text() == 'study\n'
    assert (root / 'etc/hosts').read_text().splitlines()[-1] == '127.0.1.1\tstudy'
    assert (root / 'root/.ssh/authorized_keys').read_text() == KEY_A + '\n' + KEY_B + '\n'
    assert (root / 'home/pi/notes.txt').read_text() == 'the Pi wrote this\n'  # fixed in place, not re-cloned
    assert os.stat(root / 'usr/bin/busybox').st_ino == inode
    marker1 = json.loads(marker_path.read_text())
    assert (marker1['created'], marker1['fs_uuid'], marker1['hostname']) == (marker0['created'], marker0['fs_uuid'],
                                                                             'study')
    assert {rel: (root / rel).read_bytes() for rel in keys0} == keys0
    assert lab.pi_root(**renamed)['changed'] is False

    second_sha = lab.ingest('life', tiny_images['other'])  # generation 2, the current one
    assert second_sha != first_sha
    before = lab.state()
    behind = lab.pi_root(**renamed)  # present never moves a root to another generation: a fact, no warning
    pi = behind['pis'][0]
    assert behind['changed'] is False and (pi['action'], pi['generation'], pi['behind']) == ('unchanged', 1, True)
    assert not behind.get('warnings') and lab.state() == before

    old_image = os.stat(image).st_ino
    rebuilt = lab.pi_root(state='rebuilt', **renamed)
    assert rebuilt['changed'] is True and rebuilt['pis'][0]['action'] == 'rebuilt', rebuilt
    assert rebuilt['pis'][0]['label'] == 'life@2' and rebuilt['pis'][0]['previous']['label'] == 'life@1'
    assert os.stat(image).st_ino != old_image and lab.mounted() == [str(root)]  # the old one unmounted
    assert os.stat(lab.layout('1e1e1e1e').prev_image).st_ino == old_image  # and kept whole for a rollback
    assert not (root / 'home/pi/notes.txt').exists()  # a fresh clone of the new content
    assert_faithful(lab.expect['life'], root)
    marker2 = json.loads(marker_path.read_text())
    assert marker2['bakeform_sha256'] == second_sha and marker2['hostname'] == 'study' and marker2['generation'] == 2
    assert marker2['fs_uuid'] == read_superblock(str(image))['uuid'] != marker0['fs_uuid']
    assert {rel: (root / rel).read_bytes() for rel in keys0} == keys0  # the Pi's SSH identity survives
    assert (root / 'etc/machine-id').read_text() == machine_id
    assert lab.scratch_dirs() == []
    assert lab.pi_root(**renamed)['changed'] is False
    assert_removed(lab, '1e1e1e1e', bakeform='life')


def assert_removed(lab, serial, **extra):
    args = dict(serial=serial, state='absent', **extra)
    point = lab.point(serial)
    assert lab.pi_root(check=True, **args)['changed'] is True and lab.mounted().count(str(point)) == 1
    gone = lab.pi_root(**args)
    assert gone['changed'] is True and gone['pis'][0]['action'] == 'removed', gone
    assert not any(os.path.lexists(path) for path in lab.paths(serial))
    assert str(point) not in lab.mounted() and lab.scratch_dirs() == []
    assert not (lab.units / unit_name(str(point))).exists()
    assert not os.path.lexists(lab.units / 'local-fs.target.wants' / unit_name(str(point)))
    assert [loop for loop in loops_backed_by(lab.roots) if serial in loop] == []
    assert lab.pi_root(**args)['changed'] is False


def test_thirty_pis_in_one_call(lab):
    if lab.fs != 'xfs':
        pytest.skip('30 clones once, on XFS (reflink); the other file systems clone the same way')
    pis = [{'serial': '5e%06x' % index, 'hostname': 'rack-%02d' % index} for index in range(30)]
    done = lab.pi_root(pis=pis)
    assert done['changed'] is True and [p['action'] for p in done['pis']] == ['cloned'] * 30, done
    roots = [lab.point(pi['serial']) for pi in pis]
    assert lab.mounted() == sorted(str(r) for r in roots)  # each mounted once
    assert len({(r / 'etc/ssh/ssh_host_ed25519_key.pub').read_bytes() for r in roots}) == 30
    assert len({(r / 'etc/machine-id').read_text() for r in roots}) == 30
    assert len({read_superblock(str(lab.image(r.name)))['uuid'] for r in roots}) == 30
    assert [(r / 'etc/hostname').read_text() for r in roots] == ['rack-%02d\n' % i for i in range(30)]
    assert {unit_name(str(r)) for r in roots} <= set(os.listdir(lab.units))

    def state():  # no clone, no new keys, no marker or unit rewritten
        return ({r.name: os.stat(str(lab.image(r.name))).st_ino for r in roots},
                {r.name: (r / 'etc/ssh/ssh_host_ed25519_key').read_bytes() for r in roots},
                {k: v for k, v in snapshot(lab.roots).items() if k.endswith('.json')}, snapshot(lab.units))
    before = state()
    again = lab.pi_root(pis=pis)
    assert again['changed'] is False and {p['action'] for p in again['pis']} == {'unchanged'}
    assert state() == before and lab.mounted() == sorted(str(r) for r in roots)
    removed = lab.pi_root(pis=[dict(pi, state='absent') for pi in pis])
    assert [p['action'] for p in removed['pis']] == ['removed'] * 30
    assert lab.mounted() == [] and loops_backed_by(lab.roots) == [] and os.listdir(lab.roots) == []


def test_two_runs_at_once_take_turns_and_end_consistent(lab):
    """pi_root and bakeform started while another pi_root holds the bakery lock: they wait, then see its work.

    The first run is paused (SIGSTOP) while it holds the lock, until the other two have opened the lock file and so
    found it held: they must wait however fast the first run is on a loaded machine."""
    if lab.fs != 'xfs':
        pytest.skip('the lock does not depend on the file system: once, on XFS')
    pis = [{'serial': '7a%06x' % index, 'hostname': 'first-%d' % index} for index in range(4)]
    first = subprocess.Popen(module_argv('pi_root', lab.args(pis=pis, host_key_types=['rsa', 'ed25519'])),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    waiting = []
    try:
        holder = 'pid %d, pi_root' % first.pid
        deadline = time.monotonic() + 60
        while Path(lab.lock).exists() is False or Path(lab.lock).read_text().strip() != holder:
            assert first.poll() is None and time.monotonic() < deadline, 'the first run never took the lock'
            time.sleep(0.002)
        os.kill(first.pid, signal.SIGSTOP)
        renamed = [dict(pi, hostname='second-%d' % index) for index, pi in enumerate(pis)]
        waiting.append(subprocess.Popen(
            module_argv('pi_root', lab.args(pis=renamed, host_key_types=['rsa', 'ed25519'])),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        waiting.append(subprocess.Popen(
            module_argv('bakeform', {'name': 'never', 'state': 'absent', 'store': str(lab.store),
                                     'lock_file': lab.lock}),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        deadline = time.monotonic() + 120
        while not all(has_open(proc.pid, str(lab.lock)) for proc in waiting):
            assert all(proc.poll() is None for proc in waiting), 'a waiting run ended while the lock was held'
            assert time.monotonic() < deadline, 'the waiting runs never opened the lock'
            time.sleep(0.01)
        time.sleep(0.5)  # past their first try of the lock
    finally:
        os.kill(first.pid, signal.SIGCONT)
        outs = [proc.communicate(timeout=600)[0] for proc in waiting]
        first_out = first.communicate(timeout=600)[0]
    second_out, other = outs[0], json.loads(outs[1])
    first_result, second_result = json.loads(first_out), json.loads(second_out)
    assert [p['action'] for p in first_result['pis']] == ['cloned'] * 4, first_result
    assert 'lock_waited' not in first_result
    assert [p['action'] for p in second_result['pis']] == ['fixed'] * 4, second_result  # not cloned a second time
    for result in (second_result, other):
        assert result['lock_waited'] > 0, result
        assert holder in json.dumps(result['warnings']) and 'waited' in json.dumps(result['warnings'])
    assert other['changed'] is False
    assert lab.mounted() == sorted(str(lab.point(pi['serial'])) for pi in pis)  # each mounted once
    for index, pi in enumerate(pis):
        assert (lab.point(pi['serial']) / 'etc/hostname').read_text() == 'second-%d\n' % index
        assert json.loads((lab.roots / (pi['serial'] + '.json')).read_text())['hostname'] == 'second-%d' % index
    assert lab.scratch_dirs() == []
    lab.pi_root(pis=[dict(pi, state='absent') for pi in pis])
    assert lab.mounted() == []


@pytest.fixture(scope='module')
def big_image(tmp_path_factory):
    """A root with a few thousand files, so a copy takes long enough to be killed midway."""
    return build_image(tmp_path_factory.mktemp('piroot-big') / 'big.img', profile='realistic', root_files=4000,
                       root_mb=200, seed=23)


def alive(pid):
    """A process that still runs (a zombie waiting for its reaper does not)."""
    try:
        with open('/proc/%d/stat' % pid, encoding='ascii', errors='replace') as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except OSError:
        return False


def command_name(pid):
    try:
        with open('/proc/%d/comm' % pid, encoding='ascii', errors='replace') as handle:
            return handle.read().strip()
    except OSError:
        return None


def children(pid):
    """All descendants of a process, from /proc (the module's cp), with their command names."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir('/proc/%d/task' % parent) if os.path.isdir('/proc/%d/task' % parent) else []:
            try:
                with open('/proc/%d/task/%s/children' % (parent, task), encoding='ascii') as handle:
                    kids = [int(k) for k in handle.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return {kid: command_name(kid) for kid in found}


def loop_files(top):
    """The files below ``top`` behind loop devices (one entry per device)."""
    out = subprocess.run(['losetup', '--json', '--list'], capture_output=True, text=True, check=True).stdout
    files = [d.get('back-file') or '' for d in json.loads(out)['loopdevices']] if out.strip() else []
    return [f for f in files if f.startswith(str(top) + '/')]


def kill_when(proc, ready, what):
    """SIGKILL ``proc`` once ``ready()``; return the descendants it had then."""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.002)
        kids = children(proc.pid)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, '%s finished before it could be killed' % what
    return kids


@pytest.fixture
def ext4_lab(tmp_path, big_image):
    with loop_fs(tmp_path, 'ext4') as mnt:
        lab = Lab('ext4', mnt)
        lab.ingest('bw', big_image)
        try:
            yield lab
        finally:
            release_mounts(mnt)


def test_sigkill_mid_clone_leaves_no_root_mount_or_loop_device(ext4_lab):
    lab = ext4_lab
    args = dict(serial='0dead0ff', hostname='victim')
    proc = subprocess.Popen(module_argv('pi_root', lab.args(**args)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def copying():  # the clone is under way: its image has some of the golden one's blocks
        images = [lab.roots / n / 'root.img' for n in lab.scratch_dirs()]
        return any(i.exists() and i.stat().st_blocks * 512 > (8 << 20) for i in images)
    kids = kill_when(proc, copying, 'the clone')
    assert 'cp' in kids.values(), 'no cp was running: %s' % kids
    for _attempt in range(50):  # pdeathsig takes cp down with the module at once (the copy needs seconds)
        if not any(alive(kid) for kid in kids):
            break
        time.sleep(0.01)
    assert not any(alive(kid) for kid in kids), 'cp or ssh-keygen outlived the killed module'
    root = lab.point('0dead0ff')
    assert not any(os.path.lexists(path) for path in lab.paths(root.name))
    assert lab.mounted() == [] and loops_backed_by(lab.roots) == []
    leftovers = lab.scratch_dirs()
    # The half-made image and the SSH host keys made ahead for it (pi_root's KeyForge), both swept below.
    assert sorted(name.split('-')[2] for name in leftovers) == ['0dead0ff', 'keys'], leftovers

    again = lab.pi_root(**args)
    assert again['changed'] is True and again['pis'][0]['action'] == 'cloned', again
    assert again['swept'] == leftovers and lab.scratch_dirs() == []
    assert_faithful(lab.expect['bw'], root, ADDED_WITHOUT_KEYS)
    assert_removed(lab, '0dead0ff')


def test_sigkill_while_the_new_root_is_mounted_is_cleaned_by_the_next_run(ext4_lab):
    """Killed while fixing a clone: its scratch mount outlives the module until the next run sweeps it."""
    lab = ext4_lab
    pis = [{'serial': '0dead%03x' % index} for index in range(4)]
    proc = subprocess.Popen(module_argv('pi_root', lab.args(pis=pis, clone_method='copy')),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: any('.pifleet-tmp-' in point for point in lab.mounted()), 'the fixes')
    stale = [point for point in lab.mounted() if '.pifleet-tmp-' in point]
    assert len(stale) == 1 and stale[0].endswith('/mnt'), lab.mounted()
    assert not any(os.path.lexists(lab.roots / (pi['serial'] + '.json')) for pi in pis[1:])

    again = lab.pi_root(pis=pis)
    assert not again.get('failed'), again
    assert any(name in stale[0] for name in again['swept']), (again['swept'], stale)
    assert lab.scratch_dirs() == [] and lab.mounted() == sorted(str(lab.point(p['serial'])) for p in pis)
    for _attempt in range(50):  # the lazily unmounted scratch image lets go of its loop device once released
        if len(loops_backed_by(lab.roots)) == len(pis):
            break
        time.sleep(0.1)
    assert sorted(loop_files(lab.roots)) == sorted(str(lab.roots / (p['serial'] + '.img')) for p in pis)
    removed = lab.pi_root(pis=[dict(pi, state='absent') for pi in pis])
    assert not removed.get('failed') and lab.mounted() == [] and loops_backed_by(lab.roots) == []
