# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""disks: names, planning, the index and the container size, table-driven; no root, no real tools."""

from __future__ import annotations

import json

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import disks as _disks
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.disks import DiskError

MIB = 1024 * 1024
GIB = 1024 * MIB

NAMES = [('data', True), ('scratch-1', True), ('a.b_c', True), ('0', True), ('x' * 64, True), ('x' * 65, False),
         ('Data', False), ('-x', False), ('.hidden', False), ('..', False), ('a/b', False), ('../etc', False),
         ('', False), ('disks.json', False), ('a b', False), ('lost+found', False), (None, False)]


@pytest.mark.parametrize(('name', 'valid'), NAMES)
def test_check_name(name, valid):
    assert (_disks.check_name(name) is None) is valid


def disk(size=64 * MIB, allocated=0, fstype='none', blank=None, extra=False):
    return {'size': size, 'allocated': allocated, 'fstype': fstype, 'blank': blank, 'extra': extra}


@pytest.mark.parametrize(('current', 'expected'), [
    (disk(allocated=0), False), (disk(allocated=4096), True),
    (disk(fstype='ext4', allocated=MIB, blank=MIB), False),  # as pi_disk made it
    (disk(fstype='ext4', allocated=MIB + 4096, blank=MIB), True),  # the Pi wrote (or only mounted it)
    (disk(fstype='ext4', allocated=MIB, blank=None), True),  # made before pifleet kept a record: cannot tell
    (disk(extra=True), True), (disk(fstype='ext4', allocated=MIB, blank=MIB, extra=True), True)])
def test_has_data_is_told_from_the_file_alone(current, expected):
    assert _disks.has_data(current) is expected


def want(state='present', size=64 * MIB, fstype='none', force=False):
    return {'serial': '3a4b5c6d', 'name': 'data', 'state': state, 'size': size, 'fstype': fstype, 'force': force}


PLANS = [
    ('create', want(), None, {'action': 'created', 'size': 64 * MIB}),
    ('create ext4', want(fstype='ext4', size=8 * MIB), None, {'action': 'created', 'size': 8 * MIB}),
    ('unchanged', want(), disk(), {'action': 'unchanged'}),
    ('unchanged ext4', want(fstype='ext4'), disk(fstype='ext4', blank=MIB), {'action': 'unchanged'}),
    # The file system inside is the Pi's: its size never makes a plan (that was work repeated on every run).
    ('unchanged whatever is inside', want(fstype='ext4'), disk(fstype='ext4'), {'action': 'unchanged'}),
    ('grow', want(size=128 * MIB), disk(), {'action': 'grown', 'size': 128 * MIB}),
    ('grow ext4: the file only', want(size=128 * MIB, fstype='ext4'), disk(fstype='ext4'),
     {'action': 'grown', 'size': 128 * MIB}),
    ('fstype unknown (index rebuilt)', want(fstype='ext4'), disk(fstype=None), {'action': 'unchanged'}),
    ('absent missing', want(state='absent'), None, {'action': 'unchanged'}),
    ('absent empty', want(state='absent'), disk(), {'action': 'removed'}),
    ('absent blank ext4', want(state='absent'), disk(fstype='ext4', allocated=MIB, blank=MIB), {'action': 'removed'}),
    ('absent data forced', want(state='absent', force=True), disk(allocated=MIB), {'action': 'removed'}),
]


@pytest.mark.parametrize(('case', 'wanted', 'current', 'expected'), PLANS, ids=[p[0] for p in PLANS])
def test_plan(case, wanted, current, expected):
    assert _disks.plan_disk(wanted, current) == expected


def test_plan_removes_a_leftover_directory_without_image():
    assert _disks.plan_disk(want(state='absent'), None, dir_exists=True) == {'action': 'removed'}


REFUSED = [
    ('shrink', want(size=32 * MIB), disk(),
     'shrinking disk data of Pi 3a4b5c6d refused: its disk.img is 64 MiB (67108864 bytes) and size asks for 32 MiB'),
    ('shrink ext4', want(size=32 * MIB, fstype='ext4'), disk(fstype='ext4'), 'disks never shrink'),
    ('the Pi made it 100G', want(size=16 * MIB), disk(size=100 * GIB), 'if the Pi made its disk.img bigger itself'),
    ('fstype change', want(fstype='ext4'), disk(), 'changing the file system of disk data of Pi 3a4b5c6d from none'),
    ('ext4 too small', want(fstype='ext4', size=4 * MIB), None, 'too small for ext4'),
    ('absent with data', want(state='absent'), disk(allocated=4096), 'may hold data (none file system, 4 KiB'),
    ('absent with files beside', want(state='absent'), disk(extra=True), 'other files in its directory'),
    ('absent ext4 written', want(state='absent'), disk(fstype='ext4', allocated=2 * MIB, blank=MIB),
     'ext4 file system, 2 MiB (2097152 bytes) allocated, 1 MiB (1048576 bytes) when pi_disk made it blank'),
    ('absent ext4 of old', want(state='absent'), disk(fstype='ext4', allocated=MIB),
     'pifleet has no record of how it looked blank'),
]


@pytest.mark.parametrize(('case', 'wanted', 'current', 'message'), REFUSED, ids=[r[0] for r in REFUSED])
def test_plan_refuses(case, wanted, current, message):
    with pytest.raises(DiskError) as info:
        _disks.plan_disk(wanted, current)
    assert message in str(info.value)
    assert 'e2fsck' not in str(info.value) and 'resize2fs' not in str(info.value)


LAYOUT = _disks.Layout('/d', '3a4b5c6d')


def test_layout_keeps_index_and_image_off_the_mount_points_file_system():
    assert (LAYOUT.point, LAYOUT.image, LAYOUT.index) == ('/d/mnt/3a4b5c6d', '/d/3a4b5c6d.img', '/d/3a4b5c6d.json')
    assert LAYOUT.disk('data') == '/d/mnt/3a4b5c6d/data/disk.img'
    assert LAYOUT.old_point == '/d/3a4b5c6d'  # where earlier releases mounted them (moved by pi_disk)


def test_render_index_sorted_and_empty():
    data = json.loads(_disks.render_index(LAYOUT, {'zz': {'size': MIB, 'fstype': 'none'},
                                                   'aa': {'size': 2 * MIB, 'fstype': 'ext4'}}))
    # The format of before; nfs_path is now the export, the Pi's disks file system.
    assert data == {'serial': '3a4b5c6d', 'disks': [
        {'name': 'aa', 'file': '/d/mnt/3a4b5c6d/aa/disk.img', 'size': 2 * MIB, 'fstype': 'ext4',
         'nfs_path': '/d/mnt/3a4b5c6d'},
        {'name': 'zz', 'file': '/d/mnt/3a4b5c6d/zz/disk.img', 'size': MIB, 'fstype': 'none',
         'nfs_path': '/d/mnt/3a4b5c6d'},
    ]}
    assert _disks.render_index(LAYOUT, {}) == ''


def test_the_index_keeps_what_a_blank_ext4_disk_took():
    text = _disks.render_index(LAYOUT, {'aa': {'size': 16 * MIB, 'fstype': 'ext4', 'blank': 1081344}})
    assert json.loads(text)['disks'][0]['blank'] == 1081344
    assert _disks.parse_index(text) == {'aa': {'size': 16 * MIB, 'fstype': 'ext4', 'blank': 1081344}}


@pytest.mark.parametrize(('text', 'entries'), [
    ('{"serial": "x", "disks": [{"name": "a", "size": 1048576, "fstype": "ext4"}]}',
     {'a': {'size': MIB, 'fstype': 'ext4'}}),
    ('{"disks": [{"name": "a", "size": 1048576, "fstype": "ext4", "blank": -1}, '
     '{"name": "b", "size": 1048576, "fstype": "ext4", "blank": true}]}',
     {'a': {'size': MIB, 'fstype': 'ext4'}, 'b': {'size': MIB, 'fstype': 'ext4'}}),
    ('{"disks": [{"name": "../a", "size": 1, "fstype": "none"}, {"name": "b", "size": -1, "fstype": "none"}, '
     '{"name": "c", "size": 1, "fstype": "xfs"}]}', {}),
    ('not json', None), ('[1]', None), ('{"disks": [{"no": "name"}]}', None)])
def test_load_index(tmp_path, text, entries):
    (tmp_path / 'x.json').write_text(text)
    assert _disks.load_index(str(tmp_path / 'x.json')) == (text, entries)
    assert _disks.load_index(str(tmp_path / 'none.json')) == ('', {})


def test_load_index_is_size_capped(tmp_path):
    (tmp_path / 'x.json').write_text(' ' * (_disks.INDEX_LIMIT + 1))
    assert _disks.load_index(str(tmp_path / 'x.json'))[1] is None


@pytest.mark.parametrize('sizes', [[], [MIB], [16 * MIB, 64 * MIB], [8 * GIB] * 4, [1024 * GIB], [MIB] * 300])
def test_container_size_holds_the_disks_and_whole_groups(sizes):
    size = _disks.container_size(sizes)
    assert size % _disks.GROUP == 0
    overhead = _disks.JOURNAL + _disks.FIXED + len(sizes) * _disks.PER_DISK + sum(sizes) // 1024
    assert sum(sizes) + overhead + _disks.SLACK <= size < sum(sizes) + overhead + _disks.SLACK + _disks.GROUP
    assert _disks.container_size([*sizes, MIB]) >= size  # a disk more never shrinks it


def test_inode_count_has_a_floor_then_follows_largefile4():
    assert _disks.inode_count(256 * MIB) == _disks.MIN_INODES
    assert _disks.inode_count(1024 * GIB) == 1024 * GIB // (4 * MIB)
