# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The mount points' own file system: a tmpfs over an empty immutable directory, made, checked and undone."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import LANG_C
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import points as _points

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason='mounts a tmpfs (root)')


class Host:
    def __init__(self, check_mode=False):
        self.check_mode, self.warnings, self.calls = check_mode, [], []

    def run(self, argv):
        self.calls.append(argv)
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=dict(os.environ, **LANG_C))
        return proc.returncode, proc.stdout, proc.stderr

    @staticmethod
    def which(name, required=False):
        return name

    def warn(self, msg):
        self.warnings.append(msg)


def test_the_unit_mounts_a_small_tmpfs_before_the_nfs_server():
    text = _points.unit_text('/srv/pifleet/roots/mnt')
    assert 'What=pifleet-points\n' in text and 'Where=/srv/pifleet/roots/mnt\n' in text and 'Type=tmpfs\n' in text
    assert 'Options=mode=0700,nosuid,nodev,noexec,size=1m,nr_inodes=65536\n' in text
    assert 'Before=nfs-ganesha.service nfs-server.service nfs-kernel-server.service\n' in text
    assert _points.points_dir('/srv/pifleet/disks') == '/srv/pifleet/disks/mnt'


def test_check_mode_says_what_would_be_made_and_makes_nothing(tmp_path):
    host = Host(check_mode=True)
    points = _points.Points(host, str(tmp_path), _loopfs.Units(str(tmp_path / 'units')), 'Pi roots')
    assert points.ensure() is True
    assert host.calls == [] and os.listdir(tmp_path) == []
    assert points.release() is False


@needs_root
def test_mount_points_are_made_only_on_the_tmpfs_and_all_of_it_is_undone(tmp_path):
    host, units = Host(), _loopfs.Units(str(tmp_path / 'units'))
    base = tmp_path / 'roots'
    base.mkdir()
    points = _points.Points(host, str(base), units, 'Pi roots')
    with pytest.raises(_points.PointsError, match='is not in'):
        points.make(str(base / '0000000a'))  # beside the images: never
    point = str(base / 'mnt' / '0000000a')
    try:
        points.make(point)  # mounts the tmpfs first
        assert _loopfs.mount_at(str(base / 'mnt')) == ('pifleet-points', 'tmpfs') and os.path.isdir(point)
        assert (tmp_path / 'units' / _loopfs.unit_name(str(base / 'mnt'))).is_file()
        assert points.ensure() is False  # once per run
        assert _points.Points(host, str(base), units, 'Pi roots').ensure() is False  # and steady afterwards
        (base / '0000000a.img').write_bytes(b'')
        assert points.release() is False  # an image is left: still needed
        os.unlink(base / '0000000a.img')
        # Unmounted (a boot where the unit failed): the directory under it takes nothing, not even a mount point.
        subprocess.run(['umount', str(base / 'mnt')], check=True)
        with pytest.raises(OSError) as info:
            os.mkdir(point)
        assert info.value.errno == errno.EPERM
        assert _points.Points(host, str(base), units, 'Pi roots').ensure() is True  # mounted again
        assert points.release() is True
        assert os.listdir(base) == [] and os.listdir(tmp_path / 'units') == ['local-fs.target.wants']
    finally:
        if os.path.ismount(base / 'mnt'):
            subprocess.run(['umount', str(base / 'mnt')], check=False)
        if os.path.isdir(base / 'mnt'):
            _points.set_immutable(str(base / 'mnt'), False)


@needs_root
def test_something_else_mounted_there_or_a_full_directory_is_refused(tmp_path):
    host = Host()
    base = tmp_path / 'roots'
    (base / 'mnt' / 'stray').mkdir(parents=True)
    with pytest.raises(_points.PointsError, match='is not an empty directory'):
        _points.Points(host, str(base), None, 'Pi roots').ensure()
    os.rmdir(base / 'mnt' / 'stray')
    subprocess.run(['mount', '-t', 'tmpfs', 'other', str(base / 'mnt')], check=True)
    try:
        with pytest.raises(_points.PointsError, match='has other'):
            _points.Points(host, str(base), None, 'Pi roots').ensure()
    finally:
        subprocess.run(['umount', str(base / 'mnt')], check=True)


def test_an_old_mount_point_is_removed_a_link_never_followed(tmp_path):
    target = tmp_path / 'target'
    target.mkdir()
    (tmp_path / 'link').symlink_to(target)
    assert _points.remove_old_point(str(tmp_path / 'link')) is None and target.is_dir()
    (tmp_path / 'old' / 'left').mkdir(parents=True)
    assert 'left in place' in _points.remove_old_point(str(tmp_path / 'old'))
    assert _points.remove_old_point(str(tmp_path / 'gone')) is None
