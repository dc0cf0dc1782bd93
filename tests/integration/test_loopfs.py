# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_loopfs.attach_and_mount on the real kernel: the loop device pi_root and pi_disk mount each Pi's file
system with (ioctls and mount(2), not mount -o loop, which looks through every loop device first)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from fstree import loops_backed_by

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='loop devices and mount(2) need root')


def options_of(point):
    return subprocess.run(['findmnt', '-rn', '-o', 'FSTYPE,OPTIONS', '--mountpoint', str(point)],
                          capture_output=True, text=True, check=True).stdout.split()


def gone(path, timeout=10):
    deadline = time.monotonic() + timeout
    while loops_backed_by(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return loops_backed_by(path) == []


@pytest.fixture
def image(tmp_path):
    tree = tmp_path / 'tree'
    (tree / 'etc').mkdir(parents=True)
    (tree / 'etc' / 'hostname').write_text('pi\n')
    path = tmp_path / 'root.img'
    subprocess.run(['mke2fs', '-q', '-t', 'ext4', '-d', str(tree), str(path), '16M'], check=True)
    return path


@pytest.mark.parametrize('options', [_loopfs.ROOT_OPTIONS, ('ro', 'noload', 'nosuid', 'nodev', 'noexec')])
def test_the_image_is_mounted_with_its_options_and_its_loop_device_goes_with_the_unmount(tmp_path, image, options):
    point = tmp_path / 'mnt'
    point.mkdir()
    _loopfs.attach_and_mount(str(image), str(point), options)
    try:
        fstype, mounted = options_of(point)
        assert fstype == 'ext4' and (point / 'etc' / 'hostname').read_text() == 'pi\n'
        assert set(o for o in options if o != 'noload') <= set(mounted.split(',')), mounted
        assert ('ro' in options) == ('ro' in mounted.split(','))
        assert _loopfs.mounted_image(str(point)) == str(image)  # what pi_root checks on the next run
    finally:
        subprocess.run(['umount', str(point)], check=True)
    assert gone(tmp_path), 'the loop device outlived the unmount (no autoclear)'


def test_an_image_that_does_not_mount_leaves_no_loop_device(tmp_path):
    junk = tmp_path / 'junk.img'
    junk.write_bytes(b'\0' * (4 << 20))
    point = tmp_path / 'mnt'
    point.mkdir()
    with pytest.raises(OSError, match=r'junk\.img'):
        _loopfs.attach_and_mount(str(junk), str(point), _loopfs.ROOT_OPTIONS)
    assert not os.path.ismount(point)
    assert gone(tmp_path)


def test_the_pre_5_8_fallback_never_leaves_a_device_attached_without_autoclear(tmp_path, image, monkeypatch):
    """A kernel without LOOP_CONFIGURE attaches in two ioctls; when the second (autoclear) fails, the device the
    first attached is detached again, or it would hold the image for good. The real kernel attaches and detaches;
    only LOOP_CONFIGURE (said missing, as before 5.8) and LOOP_SET_STATUS64 (made to fail) are played."""
    real = _loopfs.fcntl.ioctl
    calls = []

    def ioctl(fd, request, arg=0, *rest):
        calls.append(request)
        if request == _loopfs.LOOP_CONFIGURE:
            raise OSError(22, 'Invalid argument')
        if request == _loopfs.LOOP_SET_STATUS64:
            assert loops_backed_by(tmp_path), 'LOOP_SET_FD attached nothing'  # attached, without autoclear
            raise OSError(5, 'Input/output error')
        return real(fd, request, arg, *rest)

    monkeypatch.setattr(_loopfs.fcntl, 'ioctl', ioctl)
    point = tmp_path / 'mnt'
    point.mkdir()
    with pytest.raises(OSError, match='Input/output error'):
        _loopfs.attach_and_mount(str(image), str(point), _loopfs.ROOT_OPTIONS)
    assert _loopfs.LOOP_SET_FD in calls and calls[-1] == _loopfs.LOOP_CLR_FD
    assert not os.path.ismount(point) and gone(tmp_path, timeout=2), 'a loop device was left attached'


def test_the_mounter_says_what_failed_in_mounts_words(tmp_path):
    """When mount(2) refuses, mount(8) is asked too: its message names the problem."""
    junk = tmp_path / 'junk.img'
    junk.write_bytes(b'\0' * (4 << 20))
    point = tmp_path / 'mnt'
    point.mkdir()

    def run(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    with pytest.raises(_loopfs.LoopError, match=r'mounting .*junk\.img .* for the root of Pi x failed: .*'):
        _loopfs.Mounter(run, lambda name, required: '/usr/bin/' + name).mount(
            str(junk), str(point), _loopfs.ROOT_OPTIONS, 'the root of Pi x')
    assert gone(tmp_path)


def test_an_image_still_mounted_elsewhere_is_never_mounted_through_a_second_loop_device(tmp_path, image):
    """An NFS server in a private mount namespace keeps the file system after we unmount it: mounting the image
    through a new loop device then would put one ext4 under two kernels' views of it (corruption). The Mounter
    mounts the same loop device again, as mount -o loop does."""
    first, second = tmp_path / 'first', tmp_path / 'second'
    first.mkdir()
    second.mkdir()

    def run(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    mounter = _loopfs.Mounter(run, lambda name, required: '/usr/bin/' + name)
    mounter.mount(str(image), str(first), _loopfs.ROOT_OPTIONS, 'the root of Pi x')
    device = _loopfs.mount_at(str(first))[0]
    holder = subprocess.Popen(['unshare', '--mount', '--propagation', 'private', 'sleep', '60'])
    try:
        time.sleep(0.5)  # its copy of our mounts is made
        subprocess.run(['umount', str(first)], check=True)
        assert loops_backed_by(tmp_path) == [os.path.basename(device)] or loops_backed_by(tmp_path) == [device]
        mounter.mount(str(image), str(second), _loopfs.ROOT_OPTIONS, 'the root of Pi x')
        try:
            assert _loopfs.mount_at(str(second))[0] == device
            assert len(loops_backed_by(tmp_path)) == 1
        finally:
            subprocess.run(['umount', str(second)], check=True)
    finally:
        holder.kill()
        holder.wait()
    assert gone(tmp_path)


@pytest.mark.parametrize('where', ['mnt', 'deep/er/mnt', '.'])
def test_a_scratch_directory_unmounts_what_is_mounted_in_it_before_it_is_removed(tmp_path, image, where):
    """ScratchDir.close finds a mount inside (or the scratch directory mounted over) by st_dev alone, without
    reading mountinfo, and unmounts it before rmtree could reach the image's files."""
    parent = tmp_path / 'roots'
    parent.mkdir()
    scratch = _atomic.ScratchDir(str(parent), 'test')
    point = os.path.normpath(scratch.join(where))
    os.makedirs(point, exist_ok=True)
    assert not _atomic.holds_other_file_systems(scratch.path)
    _loopfs.attach_and_mount(str(image), point, _loopfs.ROOT_OPTIONS)
    assert _atomic.holds_other_file_systems(scratch.path)
    unmounted = []

    def unmount(path):
        unmounted.append(path)
        subprocess.run(['umount', path], check=True)
    scratch.close(unmount)
    assert unmounted == [point] and os.listdir(parent) == []
    listed = subprocess.run(['debugfs', '-R', 'cat /etc/hostname', str(image)], capture_output=True, text=True,
                            check=True)
    assert listed.stdout == 'pi\n'  # what was mounted was not emptied by the removal
    assert gone(image)
