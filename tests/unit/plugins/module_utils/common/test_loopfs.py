# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Loop file systems: unit names as systemd makes them, unit files, superblocks of real mke2fs images."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import uuid

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs

TRICKY = [
    ('/srv/pifleet/roots/3a4b5c6d', 'srv-pifleet-roots-3a4b5c6d.mount'),
    ('/srv/pi-fleet/roots/3a4b5c6d', 'srv-pi\\x2dfleet-roots-3a4b5c6d.mount'),
    ('/srv/pifleet/bakeforms/bookworm-lite.2025.05/boot-nfs',
     'srv-pifleet-bakeforms-bookworm\\x2dlite.2025.05-boot\\x2dnfs.mount'),
    ('/srv/my roots/x', 'srv-my\\x20roots-x.mount'),
    ('/srv/Café/日本', 'srv-Caf\\xc3\\xa9-\\xe6\\x97\\xa5\\xe6\\x9c\\xac.mount'),
    ('/.hidden/x', '\\x2ehidden-x.mount'),
    ('/srv/.roots/.x', 'srv-.roots-.x.mount'),
    ('/-lead/a_b:c', '\\x2dlead-a_b:c.mount'),
    ('/srv/back\\slash/$x', 'srv-back\\x5cslash-\\x24x.mount'),
    ('/srv/tab\there', 'srv-tab\\x09here.mount'),
    ('/srv/roots/', 'srv-roots.mount'),
    ('/srv//roots/./x', 'srv-roots-x.mount'),
    ('/', '-.mount'),
]


@pytest.mark.parametrize(('point', 'expected'), TRICKY)
def test_unit_name(point, expected):
    assert _loopfs.unit_name(point) == expected


@pytest.mark.skipif(not shutil.which('systemd-escape'), reason='needs systemd-escape')
@pytest.mark.parametrize('point', [point for point, _name in TRICKY])
def test_unit_name_is_what_systemd_escape_makes(point):
    # systemd refuses a mount unit whose name is not the escaped Where=: the two must agree exactly.
    out = subprocess.run(['systemd-escape', '--path', '--suffix=mount', '--', point], capture_output=True, text=True,
                         check=True).stdout.rstrip('\n')
    assert _loopfs.unit_name(point) == out


def test_unit_text():
    text = _loopfs.unit_text('/srv/pifleet/roots/3a4b5c6d.img', '/srv/pifleet/roots/3a4b5c6d', ('nosuid', 'nodev'),
                             'pifleet root of Pi 3a4b5c6d')
    assert text.splitlines() == [
        _loopfs.UNIT_HEADER,
        '[Unit]',
        'Description=pifleet root of Pi 3a4b5c6d',
        'RequiresMountsFor=/srv/pifleet/roots',
        'Before=nfs-ganesha.service nfs-server.service nfs-kernel-server.service',
        '',
        '[Mount]',
        'What=/srv/pifleet/roots/3a4b5c6d.img',
        'Where=/srv/pifleet/roots/3a4b5c6d',
        'Type=ext4',
        'Options=loop,nosuid,nodev',
        '',
        '[Install]',
        'WantedBy=local-fs.target',
    ]
    assert text.endswith('\n')


def write_text(path, text):
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write(text)


def test_units_ensure_wanted_remove(tmp_path):
    units = _loopfs.Units(str(tmp_path / 'system'))
    point = '/srv/pifleet/roots/3a4b5c6d'
    text = _loopfs.unit_text(point + '.img', point, _loopfs.ROOT_OPTIONS, 'root')
    unit = tmp_path / 'system' / 'srv-pifleet-roots-3a4b5c6d.mount'
    link = tmp_path / 'system' / 'local-fs.target.wants' / unit.name
    assert units.current(point) == (None, False) and not units.wanted(point, text)

    units.ensure(point, text, write_text)
    assert units.changed and units.wanted(point, text)
    assert unit.read_text() == text and os.readlink(link) == str(unit)  # what systemctl enable makes

    again = _loopfs.Units(str(tmp_path / 'system'))
    again.ensure(point, text, write_text)
    assert not again.changed  # the same text, enabled: nothing to do

    other = text.replace('nosuid,nodev', 'nosuid,nodev,ro')
    assert not again.wanted(point, other)
    again.ensure(point, other, write_text)
    assert again.changed and unit.read_text() == other

    os.unlink(link)
    os.symlink('/elsewhere', link)  # an enable link pointing elsewhere is made right
    fixed = _loopfs.Units(str(tmp_path / 'system'))
    assert not fixed.wanted(point, other)
    fixed.ensure(point, other, write_text)
    assert fixed.changed and os.readlink(link) == str(unit)

    gone = _loopfs.Units(str(tmp_path / 'system'))
    gone.remove(point)
    assert gone.changed and not os.path.lexists(unit) and not os.path.lexists(link)
    gone = _loopfs.Units(str(tmp_path / 'system'))
    gone.remove(point)
    assert not gone.changed


def test_units_reload_only_when_changed_and_systemd_runs(tmp_path, monkeypatch):
    calls = []
    units = _loopfs.Units(str(tmp_path))
    units.reload(calls.append, lambda name, required: '/bin/systemctl')
    assert calls == []  # nothing changed
    units.changed = True
    booted = os.path.isdir('/run/systemd/system')
    units.reload(calls.append, lambda name, required: '/bin/systemctl')
    assert calls == ([['/bin/systemctl', 'daemon-reload']] if booted else []) and units.changed is False


MOUNTINFO = (
    '22 1 8:1 / / rw - ext4 /dev/vda rw\n'
    '30 22 7:1 / /srv/roots/3a4b5c6d rw,nosuid,nodev - ext4 /dev/loop1 rw\n'
    '31 22 7:2 / /srv/roots/3a4b5c6d rw,nosuid,nodev - ext4 /dev/loop2 rw\n'  # mounted over: the top one counts
    '32 22 0:40 /sub /srv/with\\040space rw - btrfs /dev/loop3 rw\n'
    '33 22 0:41 / /srv/tmp rw - tmpfs tmpfs rw\n'
)


def test_mount_at_and_mount_roots(tmp_path):
    info = tmp_path / 'mountinfo'
    info.write_text(MOUNTINFO)
    assert _loopfs.mount_at('/srv/roots/3a4b5c6d', str(info)) == ('/dev/loop2', 'ext4')
    assert _loopfs.mount_at('/srv/with space', str(info)) == ('/dev/loop3', 'btrfs')
    assert _loopfs.mount_at('/srv/roots', str(info)) is None
    assert _loopfs.mounted_image('/srv/tmp', str(info)) is None  # not a loop device
    assert _loopfs.mounted_image('/nowhere', str(info)) is None
    roots = _loopfs.mount_roots(str(info))
    assert roots['/srv/with space'] == '/sub' and roots['/srv/tmp'] == '/'


@pytest.mark.parametrize('device', [None, '', 'tmpfs', '/dev/sda1', '/dev/loop', '/dev/loop1x', '/dev/loop99999'])
def test_loop_backing_is_none_for_anything_but_a_live_loop_device(device):
    assert _loopfs.loop_backing(device) is None


def mke2fs(path, *options, size='8M', offset=None):
    argv = ['mke2fs', '-q', '-F', '-t', 'ext4', *options]
    if offset:
        argv += ['-E', 'offset=%d' % offset]
    subprocess.run([*argv, str(path), size], check=True, capture_output=True)
    return path


needs_mke2fs = pytest.mark.skipif(not shutil.which('mke2fs'), reason='needs mke2fs (e2fsprogs)')


@needs_mke2fs
@pytest.mark.parametrize(('options', 'block_size', 'csum_seed'), [
    ((), 4096, False),
    (('-b', '1024'), 1024, False),
    (('-O', 'metadata_csum_seed'), 4096, True),
    (('-O', '^metadata_csum'), 4096, False),
])
def test_read_superblock(tmp_path, options, block_size, csum_seed):
    fs_uuid = str(uuid.uuid4())
    image = mke2fs(tmp_path / 'fs.img', '-U', fs_uuid, '-L', 'pifleet-é', '-b', str(block_size), *options)
    sb = _loopfs.read_superblock(str(image))
    assert sb == {'uuid': fs_uuid, 'label': 'pifleet-é', 'blocks': 8 * 1024 * 1024 // block_size,
                  'block_size': block_size, 'csum_seed': csum_seed, 'metadata_csum': '^metadata_csum' not in options}


@needs_mke2fs
def test_read_superblock_at_an_offset_and_of_other_files(tmp_path):
    image = mke2fs(tmp_path / 'disk.img', '-U', 'clear', size='4M', offset=1 << 20)
    assert _loopfs.read_superblock(str(image)) is None  # the MBR area holds no superblock
    assert _loopfs.read_superblock(str(image), offset=1 << 20)['uuid'] == '00000000-0000-0000-0000-000000000000'
    (tmp_path / 'short').write_bytes(b'\0' * 1500)
    (tmp_path / 'zeros').write_bytes(b'\0' * 4096)
    for other in ('short', 'zeros', 'missing'):
        assert _loopfs.read_superblock(str(tmp_path / other)) is None


@needs_mke2fs
def test_tune2fs_uuid_change_is_seen(tmp_path):
    image = mke2fs(tmp_path / 'fs.img', '-O', 'metadata_csum_seed')
    before = _loopfs.read_superblock(str(image))['uuid']
    subprocess.run(['tune2fs', '-U', 'random', str(image)], check=True, capture_output=True)
    after = _loopfs.read_superblock(str(image))
    assert after['uuid'] != before and after['csum_seed']


class FakeRun:
    def __init__(self, *results):
        self.results, self.calls = list(results), []

    def __call__(self, argv):
        self.calls.append(argv)
        return self.results.pop(0)


def which(name, required):
    return '/usr/bin/' + name


def test_mounter_argv_and_messages():
    run = FakeRun((0, '', ''))
    _loopfs.Mounter(run, which).mount('/r/x.img', '/r/x', ('nosuid', 'nodev'), 'the root of Pi x')
    assert run.calls == [['/usr/bin/mount', '-t', 'ext4', '-o', 'loop,nosuid,nodev', '--', '/r/x.img', '/r/x']]

    run = FakeRun((32, '', 'mount: /r/x: failed to setup loop device for /r/x.img.'))
    with pytest.raises(_loopfs.LoopError, match=r'mounting /r/x.img at /r/x for the root of Pi x failed: mount: .*'
                                                r'has no usable loop devices') as info:
        _loopfs.Mounter(run, which).mount('/r/x.img', '/r/x', ('nosuid',), 'the root of Pi x')
    assert info.value.details == {'rc': 32, 'stderr': 'mount: /r/x: failed to setup loop device for /r/x.img.'}

    run = FakeRun((32, '', 'mount: wrong fs type'))
    with pytest.raises(_loopfs.LoopError) as info:
        _loopfs.Mounter(run, which).mount('/r/x.img', '/r/x', (), 'x')
    assert ('loop devices' in str(info.value)) is (not os.path.exists('/dev/loop-control'))


def test_umount_falls_back_to_lazy_and_says_what_failed():
    run = FakeRun((32, '', 'target is busy'), (0, '', ''))
    _loopfs.Mounter(run, which).umount('/r/x', 'the root of Pi x')
    assert run.calls == [['/usr/bin/umount', '--', '/r/x'], ['/usr/bin/umount', '--lazy', '--', '/r/x']]
    run = FakeRun((32, '', 'busy'), (32, '', 'not mounted'))
    with pytest.raises(_loopfs.LoopError, match=r'unmounting /r/x \(the root of Pi x\) failed: not mounted'):
        _loopfs.Mounter(run, which).umount('/r/x', 'the root of Pi x')


def test_umount_in_process_first_and_umount8_for_what_it_refuses(tmp_path, monkeypatch):
    """As root, umount2(2) without a process (lazily when busy), never through a symlink; what it refuses (not a
    mount point, a symlink) goes to umount(8) as before. The real unmount is tested where roots are mounted."""
    (tmp_path / 'dir').mkdir()
    (tmp_path / 'link').symlink_to('/')
    assert _loopfs._umount_here(str(tmp_path / 'dir')) is False  # not mounted: EINVAL
    assert _loopfs._umount_here(str(tmp_path / 'link')) is False  # / itself is never reached through the link
    calls = []

    class Libc:
        def umount2(self, point, flags):
            calls.append((point, flags))
            if len(calls) == 1:
                ctypes.set_errno(errno.EBUSY)
                return -1
            return 0

    monkeypatch.setattr(_loopfs, '_libc', Libc)
    monkeypatch.setattr(_loopfs.os, 'geteuid', lambda: 0)
    run = FakeRun()
    _loopfs.Mounter(run, which).umount('/r/x', 'the root of Pi x')
    assert calls == [(b'/r/x', _loopfs.UMOUNT_NOFOLLOW), (b'/r/x', _loopfs.UMOUNT_NOFOLLOW | _loopfs.MNT_DETACH)]
    assert run.calls == []


def test_the_two_step_attach_detaches_what_it_attached_when_autoclear_fails(monkeypatch):
    """Before 5.8: LOOP_SET_FD attaches; a failing LOOP_SET_STATUS64 must not leave it attached for good."""
    calls = []

    def ioctl(fd, request, arg=0):
        calls.append(request)
        if request == _loopfs.LOOP_SET_STATUS64:
            raise OSError(5, 'Input/output error')
        return 0

    monkeypatch.setattr(_loopfs.fcntl, 'ioctl', ioctl)
    with pytest.raises(OSError, match='Input/output error'):
        _loopfs._attach_in_two_steps(7, 8, b'info')
    assert calls == [_loopfs.LOOP_SET_FD, _loopfs.LOOP_SET_STATUS64, _loopfs.LOOP_CLR_FD]
    calls.clear()
    monkeypatch.setattr(_loopfs.fcntl, 'ioctl', lambda fd, request, arg=0: calls.append(request) or 0)
    _loopfs._attach_in_two_steps(7, 8, b'info')
    assert calls == [_loopfs.LOOP_SET_FD, _loopfs.LOOP_SET_STATUS64]  # kept attached: autoclear is set
