# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-Pi roots: the state planner, clone methods, layout and markers, image clones and SSH host keys."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import read_superblock
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots

SHA, OTHER = 'a' * 64, 'b' * 64


@pytest.mark.parametrize('state, exists, marker, expected', [
    ('present', False, None, 'clone'),
    ('present', True, {'generation': 1}, 'fix'),
    ('present', True, {'generation': 1, 'rolled_back': {'from': 'bw@2'}}, 'fix'),
    ('present', True, None, 'foreign'),
    ('rebuilt', False, None, 'clone'),
    ('rebuilt', True, {'generation': 1}, 'rebuild'),
    ('rebuilt', True, None, 'rebuild'),
    ('rolledback', True, {'generation': 2}, 'rollback'),
    ('rolledback', True, {'generation': 1, 'rolled_back': {'from': 'bw@2'}}, 'fix'),  # done already
    ('rolledback', True, None, 'foreign'),
    ('rolledback', False, None, 'clone'),  # refused by the planner: nothing to roll back
    ('absent', True, {'generation': 1}, 'remove'),
    ('absent', True, None, 'remove'),
    ('absent', False, None, 'none'),
])
def test_plan_action(state, exists, marker, expected):
    assert _roots.plan_action(state, exists, marker) == expected


INDEX = {'generations': {'1': {'sha256': SHA}, '2': {'sha256': OTHER}, 'x': {'sha256': 'c' * 64}}}


@pytest.mark.parametrize('marker, expected', [
    ({'generation': 3, 'bakeform_sha256': SHA}, 3),  # the marker's word counts
    ({'bakeform_sha256': OTHER}, 2),  # made before generations: the generation with its content
    ({'bakeform_sha256': 'c' * 64}, None),
    ({'bakeform_sha256': 'd' * 64}, None),
    ({'generation': True, 'bakeform_sha256': SHA}, 1),
    ({'generation': 0}, None),
    (None, None),
])
def test_marker_generation(marker, expected):
    assert _roots.marker_generation(marker, INDEX) == expected
    assert _roots.marker_generation(marker, None) == (expected if (marker or {}).get('generation') == 3 else None)


MOUNTS = {'/srv/x': ('/dev/loop1', 'xfs'), '/srv/b': ('/dev/loop2', 'btrfs'), '/srv/e': ('/dev/loop3', 'ext4'),
          '/srv/t': ('tmpfs', 'tmpfs'), '/srv/z': ('pool/z', 'zfs'), '/srv/o': ('overlay', 'overlay')}


def fake_mount(path):
    return MOUNTS[path[:6]]


@pytest.mark.parametrize('requested, golden, roots, expected', [
    ('auto', '/srv/b/store/bw/root.img', '/srv/b/roots', ['reflink', 'copy']),
    ('auto', '/srv/x/store/bw/root.img', '/srv/x/roots', ['reflink', 'copy']),
    ('auto', '/srv/z/store/bw/root.img', '/srv/z/roots', ['reflink', 'copy']),
    ('auto', '/srv/e/store/bw/root.img', '/srv/e/roots', ['copy']),
    ('auto', '/srv/t/store/bw/root.img', '/srv/t/roots', ['copy']),
    ('auto', '/srv/o/store/bw/root.img', '/srv/o/roots', ['copy']),
    ('auto', '/srv/b/store/bw/root.img', '/srv/x/roots', ['copy']),  # no clone shares extents across file systems
    ('auto', '/srv/x/store/bw/root.img', '/srv/b/roots', ['copy']),
    ('reflink', '/srv/e/store/bw/root.img', '/srv/e/roots', ['reflink']),  # forced: fails later, with its reason
    ('copy', '/srv/b/store/bw/root.img', '/srv/b/roots', ['copy']),
])
def test_choose_methods(requested, golden, roots, expected):
    assert _roots.choose_methods(requested, golden, roots, fake_mount) == expected


@pytest.mark.parametrize('fs', ['/srv/b', '/srv/x', '/srv/e'])
def test_snapshot_is_refused_with_its_reason(fs):
    with pytest.raises(_roots.RootError) as info:
        _roots.choose_methods('snapshot', fs + '/store/bw/root.img', fs + '/roots', fake_mount)
    msg = str(info.value)
    assert 'snapshot is no longer offered' in msg and 'forged NFS handles' in msg and 'clone_method reflink' in msg


def test_mount_of_takes_the_longest_prefix(tmp_path):
    info = tmp_path / 'mountinfo'
    info.write_text(
        '22 1 8:1 / / rw - ext4 /dev/sda1 rw\n'
        '30 22 7:1 / /srv rw shared:1 - xfs /dev/loop1 rw\n'
        '31 30 0:40 / /srv/with\\040space rw - btrfs /dev/loop2 rw\n'
        '32 22 0:41 / /srvother rw - tmpfs tmpfs rw\n')
    assert _roots.mount_of('/srv/roots/3a4b5c6d', str(info)) == ('/dev/loop1', 'xfs')
    assert _roots.mount_of('/srv/with space/roots', str(info)) == ('/dev/loop2', 'btrfs')
    assert _roots.mount_of('/srvother/x', str(info)) == ('tmpfs', 'tmpfs')
    assert _roots.mount_of('/home', str(info)) == ('/dev/sda1', 'ext4')


def test_layout_keeps_the_marker_out_of_the_pis_reach():
    lay = _roots.Layout('/srv/pifleet/roots', '3a4b5c6d')
    assert (lay.serial, lay.point, lay.image, lay.marker) == (
        '3a4b5c6d', '/srv/pifleet/roots/mnt/3a4b5c6d', '/srv/pifleet/roots/3a4b5c6d.img',
        '/srv/pifleet/roots/3a4b5c6d.json')
    assert (lay.prev_image, lay.prev_marker, lay.journal, lay.identity) == (
        '/srv/pifleet/roots/3a4b5c6d.prev.img', '/srv/pifleet/roots/3a4b5c6d.prev.json',
        '/srv/pifleet/roots/3a4b5c6d.swap.json', '/srv/pifleet/roots/3a4b5c6d.identity')
    # The mount point is what the Pi reaches over NFS: nothing else of its state is below it.
    for path in (lay.marker, lay.image, lay.prev_image, lay.prev_marker, lay.journal, lay.identity):
        assert not path.startswith(lay.point + '/')
    # It lies on the mount points' own file system (roots/mnt), not beside the images.
    assert os.path.dirname(lay.point) == '/srv/pifleet/roots/mnt' and lay.old_point == '/srv/pifleet/roots/3a4b5c6d'


def test_load_marker(tmp_path):
    path = tmp_path / '3a4b5c6d.json'
    assert _roots.load_marker(str(path)) is None
    assert _roots.load_marker(str(tmp_path / 'no-dir' / 'x.json')) is None
    path.write_text('{"serial": "3a4b5c6d"}')
    assert _roots.load_marker(str(path)) == {'serial': '3a4b5c6d'}
    path.write_text('["not", "a", "marker"]')
    assert _roots.load_marker(str(path)) is None
    path.write_text('{broken')
    with pytest.raises(_roots.RootError, match=r'marker .*3a4b5c6d.json is not valid JSON .*state: rebuilt'):
        _roots.load_marker(str(path))
    assert _roots.load_marker(str(path), strict=False) is None
    path.write_text('{"pad": "%s"}' % ('x' * _roots.MARKER_LIMIT))  # only the first 64 KiB are read
    with pytest.raises(_roots.RootError, match='not valid JSON'):
        _roots.load_marker(str(path))


def test_marker_text_and_sha256_text():
    assert _roots.marker_text(None) == ''
    assert _roots.marker_text({'b': 1, 'a': 2}) == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert _roots.sha256_text(None) is None
    assert _roots.sha256_text('') == 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'


def test_new_and_updated_marker():
    marker = _roots.new_marker(serial='3a4b5c6d', hostname='kitchen', bakeform='bw', generation=2, sha256=SHA,
                               method='copy', fixes=['hosts', 'fstab'], keys_sha256=None, boot_mount='none',
                               fs_uuid='u-1', host_keys=['ssh-ed25519 AAAA'])
    assert marker['created'] == marker['updated'] and marker['fixes'] == ['fstab', 'hosts']
    assert (marker['fs_uuid'], marker['clone_method'], marker['bakeform_sha256']) == ('u-1', 'copy', SHA)
    assert (marker['generation'], marker['host_keys'], marker['host_certificate'], marker['rolled_back']) == (
        2, ['ssh-ed25519 AAAA'], False, None)
    signed = _roots.new_marker(serial='3a4b5c6d', hostname='kitchen', bakeform='bw', generation=2, sha256=SHA,
                               method='copy', fixes=[], keys_sha256=None, boot_mount='none', fs_uuid='u-1',
                               host_keys=[], certificate={'ca': 'SHA256:x'}, kernel_packages=['linux-image-a=1'])
    assert signed['host_certificate'] is True and signed['kernel_packages'] == ['linux-image-a=1']
    rolled = _roots.updated_marker(marker, hostname='kitchen', fixes=[], keys_sha256=None, boot_mount='none',
                                   rolled_back={'from': 'bw@3'})
    assert rolled['rolled_back'] == {'from': 'bw@3'} and rolled['generation'] == 2
    assert _roots.updated_marker(marker, hostname='kitchen', fixes=[], keys_sha256=None, boot_mount='none') is None
    renamed = _roots.updated_marker(marker, hostname='garage', fixes=['hostname'], keys_sha256=None, boot_mount='none')
    assert renamed['hostname'] == 'garage' and renamed['fixes'] == ['fstab', 'hostname', 'hosts']
    assert renamed['created'] == marker['created'] and renamed['fs_uuid'] == 'u-1'
    keyed = _roots.updated_marker(marker, hostname='kitchen', fixes=[], keys_sha256=OTHER, boot_mount='none')
    assert keyed['authorized_keys_sha256'] == OTHER
    booted = _roots.updated_marker(marker, hostname='kitchen', fixes=[], keys_sha256=None, boot_mount='nfs')
    assert booted['boot_mount'] == 'nfs'


class FakeRun:
    """Records argv; fails the commands with a listed flag after leaving a partial copy; copies otherwise."""

    def __init__(self, failing=()):
        self.calls, self.failing = [], failing

    def __call__(self, argv):
        self.calls.append(argv)
        if any(flag in argv for flag in self.failing):
            with open(argv[-1], 'wb') as partial:
                partial.write(b'half')
            return 1, '', 'cp: failed to clone: Operation not supported'
        if len(argv) > 4 and argv[4].endswith('/cp'):
            shutil.copyfile(argv[-2], argv[-1])
        return 0, '', ''


def which(name, required):
    return '/usr/bin/' + name


def failing_reflink(golden, dest):
    """A file system that cannot share extents, after leaving a partial file."""
    with open(dest, 'wb') as partial:
        partial.write(b'half')
    raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


def test_reflink_falls_back_to_copy_after_cleaning_up(tmp_path):
    golden = tmp_path / 'root.img'
    golden.write_bytes(b'golden image')
    dest = tmp_path / 'clone.img'
    run = FakeRun()
    method = _roots.Cloner(run, which, reflink=failing_reflink).clone(str(golden), str(dest), ['reflink', 'copy'],
                                                                      'Pi x')
    assert method == 'copy'
    cp = ['/usr/bin/setpriv', '--pdeathsig', 'KILL', '--', '/usr/bin/cp']
    assert run.calls == [[*cp, '--reflink=never', '--sparse=always', '--', str(golden), str(dest)]]
    assert dest.read_bytes() == b'golden image'  # not the partial file of the failed attempt


def test_clone_failure_says_what_and_leaves_nothing(tmp_path):
    dest = tmp_path / 'clone.img'
    with pytest.raises(_roots.RootError, match=r'cloning .*root.img for Pi 3a4b5c6d failed \(reflink: Operation not '
                                               r'supported\); clone_method: copy works'):
        cloner = _roots.Cloner(FakeRun(), which, reflink=failing_reflink)
        cloner.clone(str(tmp_path / 'root.img'), str(dest), ['reflink'], 'Pi 3a4b5c6d')
    assert not dest.exists()
    run = FakeRun(failing=('--reflink=never',))
    with pytest.raises(_roots.RootError, match=r'failed \(reflink: Operation not supported; copy: cp: failed'):
        cloner = _roots.Cloner(run, which, reflink=failing_reflink)
        cloner.clone(str(tmp_path / 'root.img'), str(dest), ['reflink', 'copy'], 'Pi 3a4b5c6d')
    assert not dest.exists()


def test_a_real_reflink_shares_the_bytes_or_says_why_not(tmp_path):
    """In this process (FICLONE), no cp: the same bytes and mode where the file system shares extents (XFS, btrfs);
    where it does not, an OSError the clone step turns into its fall-back to copy."""
    golden = tmp_path / 'root.img'
    golden.write_bytes(b'golden image' * 1000)
    golden.chmod(0o600)
    dest = tmp_path / 'clone.img'
    try:
        _roots.reflink(str(golden), str(dest))
    except OSError as exc:
        assert exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY), exc
        return
    assert dest.read_bytes() == golden.read_bytes() and dest.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):  # never over a file that is there
        _roots.reflink(str(golden), str(dest))


def real_run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def real_which(name, required):
    return shutil.which(name) or shutil.which(name, path='/usr/sbin:/sbin')


@pytest.mark.skipif(not shutil.which('setpriv'), reason='needs setpriv (util-linux)')
def test_a_real_copy_is_sparse_and_identical(tmp_path):
    golden = tmp_path / 'root.img'
    with open(golden, 'wb') as handle:
        handle.write(b'head')
        handle.seek(32 << 20)
        handle.write(b'tail')
    dest = tmp_path / 'clone.img'
    assert _roots.Cloner(real_run, real_which).clone(str(golden), str(dest), ['copy'], 'Pi x') == 'copy'
    assert dest.read_bytes() == golden.read_bytes()
    assert dest.stat().st_blocks * 512 < 1 << 20  # the holes stayed holes


@pytest.mark.skipif(not shutil.which('mke2fs', path='/usr/sbin:/sbin'), reason='needs e2fsprogs')
def test_new_uuid_gives_the_clone_an_identity_of_its_own(tmp_path):
    image = tmp_path / 'clone.img'
    subprocess.run(['mke2fs', '-q', '-F', '-t', 'ext4', '-O', 'metadata_csum_seed', str(image), '8M'], check=True)
    before = read_superblock(str(image))['uuid']
    _roots.Cloner(real_run, real_which).new_uuid(str(image), 'Pi x')
    assert read_superblock(str(image))['uuid'] != before
    (tmp_path / 'not-ext4.img').write_bytes(bytes(1 << 20))
    with pytest.raises(_roots.RootError, match=r'giving the root of Pi x its own UUID failed: .*') as info:
        _roots.Cloner(real_run, real_which).new_uuid(str(tmp_path / 'not-ext4.img'), 'Pi x')
    assert info.value.details['rc'] != 0 and info.value.details['cmd'][1:] == ['-U', 'random',
                                                                               str(tmp_path / 'not-ext4.img')]


@pytest.mark.skipif(not shutil.which('mke2fs', path='/usr/sbin:/sbin'), reason='needs e2fsprogs')
def test_new_uuid_of_a_layout_extuuid_declines_is_tune2fs_work(tmp_path):
    image = tmp_path / 'clone.img'
    subprocess.run(['mke2fs', '-q', '-F', '-t', 'ext4', '-O', '^metadata_csum,uninit_bg', str(image), '8M'], check=True)
    before, ran = read_superblock(str(image))['uuid'], []

    def run(argv):
        ran.append(argv[1:])
        return real_run(argv)

    _roots.Cloner(run, real_which).new_uuid(str(image), 'Pi x')
    assert ran == [['-U', 'random', str(image)]] and read_superblock(str(image))['uuid'] != before
    ran.clear()
    seeded = tmp_path / 'seeded.img'
    subprocess.run(['mke2fs', '-q', '-F', '-t', 'ext4', '-O', 'metadata_csum_seed', str(seeded), '8M'], check=True)
    before = read_superblock(str(seeded))['uuid']
    _roots.Cloner(run, real_which).new_uuid(str(seeded), 'Pi x')  # the golden roots' layout: no tune2fs
    assert ran == [] and read_superblock(str(seeded))['uuid'] != before
