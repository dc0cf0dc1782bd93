# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""disks: names, planning, the index and the container size, table-driven; no root, no real tools."""

from __future__ import annotations

import json
import struct

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


def superblock(*, blocks=65536, log_block=0, per_group=8192, inodes=16384, free_inodes=16373, incompat=0x2C2,
               blocks_hi=0, magic=0xEF53):
    block = bytearray(1024)
    struct.pack_into('<5I', block, 0, inodes, blocks, 0, 0, free_inodes)
    struct.pack_into('<3I', block, 0x18, log_block, log_block, per_group)
    struct.pack_into('<H', block, 0x38, magic)
    struct.pack_into('<I', block, 0x54, 11)
    struct.pack_into('<I', block, 0x60, incompat)
    struct.pack_into('<I', block, 0x150, blocks_hi)
    return bytes(block)


def test_parse_ext_super():
    info = _disks.parse_ext_super(superblock())
    assert info == {'block_size': 1024, 'fs_size': 64 * MIB, 'group_size': 8 * MIB, 'inodes_used': 11,
                    'first_inode': 11, 'needs_recovery': False}
    big = _disks.parse_ext_super(superblock(blocks=0, blocks_hi=1, log_block=2, incompat=0x2C6))
    assert big['fs_size'] == (1 << 32) * 4096 and big['block_size'] == 4096 and big['needs_recovery']
    assert _disks.parse_ext_super(superblock(magic=0x1234)) is None
    assert _disks.parse_ext_super(superblock(log_block=40)) is None  # the magic alone, by chance
    assert _disks.parse_ext_super(b'x' * 500) is None


def ext(used=11, fs_size=64 * MIB, group=8 * MIB, recovery=False):
    return {'block_size': 1024, 'fs_size': fs_size, 'group_size': group, 'inodes_used': used, 'first_inode': 11,
            'needs_recovery': recovery}


def disk(size=64 * MIB, allocated=0, fstype='none', info=None, extra=False):
    return {'size': size, 'allocated': allocated, 'fstype': fstype, 'ext': info, 'extra': extra}


@pytest.mark.parametrize(('current', 'expected'), [
    (disk(allocated=0), False), (disk(allocated=4096), True),
    (disk(fstype='ext4', allocated=MIB, info=ext()), False), (disk(fstype='ext4', info=ext(used=12)), True),
    (disk(fstype='ext4', info=ext(recovery=True)), True), (disk(fstype='ext4', info=None), True),
    (disk(extra=True), True), (disk(fstype='ext4', allocated=MIB, info=ext(), extra=True), True)])
def test_has_data(current, expected):
    assert _disks.has_data(current) is expected


def want(state='present', size=64 * MIB, fstype='none', force=False):
    return {'serial': '3a4b5c6d', 'name': 'data', 'state': state, 'size': size, 'fstype': fstype, 'force': force}


PLANS = [
    ('create', want(), None, {'action': 'created', 'size': 64 * MIB}),
    ('create ext4', want(fstype='ext4', size=8 * MIB), None, {'action': 'created', 'size': 8 * MIB}),
    ('unchanged', want(), disk(), {'action': 'unchanged'}),
    ('unchanged ext4', want(fstype='ext4'), disk(fstype='ext4', info=ext()), {'action': 'unchanged'}),
    ('unchanged ext4 short tail', want(fstype='ext4'), disk(fstype='ext4', info=ext(fs_size=60 * MIB)),
     {'action': 'unchanged'}),
    ('grow', want(size=128 * MIB), disk(), {'action': 'grown', 'size': 128 * MIB, 'resize_only': False}),
    ('grow ext4', want(size=128 * MIB, fstype='ext4'), disk(fstype='ext4', info=ext()),
     {'action': 'grown', 'size': 128 * MIB, 'resize_only': False}),
    ('finish interrupted ext4 grow', want(size=128 * MIB, fstype='ext4'),
     disk(size=128 * MIB, fstype='ext4', info=ext()), {'action': 'grown', 'size': 128 * MIB, 'resize_only': True}),
    ('absent missing', want(state='absent'), None, {'action': 'unchanged'}),
    ('absent empty', want(state='absent'), disk(), {'action': 'removed'}),
    ('absent fresh ext4', want(state='absent'), disk(fstype='ext4', allocated=MIB, info=ext()), {'action': 'removed'}),
    ('absent data forced', want(state='absent', force=True), disk(allocated=MIB), {'action': 'removed'}),
]


@pytest.mark.parametrize(('case', 'wanted', 'current', 'expected'), PLANS, ids=[p[0] for p in PLANS])
def test_plan(case, wanted, current, expected):
    assert _disks.plan_disk(wanted, current) == expected


def test_plan_removes_a_leftover_directory_without_image():
    assert _disks.plan_disk(want(state='absent'), None, dir_exists=True) == {'action': 'removed'}


REFUSED = [
    ('shrink', want(size=32 * MIB), disk(),
     'shrinking disk data of Pi 3a4b5c6d refused: it is 64 MiB (67108864 bytes) and size asks for 32 MiB'),
    ('shrink ext4', want(size=32 * MIB, fstype='ext4'), disk(fstype='ext4', info=ext()), 'disks never shrink'),
    ('fstype change', want(fstype='ext4'), disk(), 'changing the file system of disk data of Pi 3a4b5c6d from none'),
    ('ext4 too small', want(fstype='ext4', size=4 * MIB), None, 'too small for ext4'),
    ('absent with data', want(state='absent'), disk(allocated=4096), 'holds data'),
    ('absent with files beside', want(state='absent'), disk(extra=True), 'other files in its directory'),
    ('absent ext4 with files', want(state='absent'), disk(fstype='ext4', info=ext(used=20)), 'force: true'),
    ('grow mounted', want(size=128 * MIB, fstype='ext4'), disk(fstype='ext4', info=ext(recovery=True)),
     'journal needs recovery'),
    ('grow unreadable', want(size=128 * MIB, fstype='ext4'), disk(fstype='ext4', info=None), 'no readable ext4'),
]


@pytest.mark.parametrize(('case', 'wanted', 'current', 'message'), REFUSED, ids=[r[0] for r in REFUSED])
def test_plan_refuses(case, wanted, current, message):
    with pytest.raises(DiskError) as info:
        _disks.plan_disk(wanted, current)
    assert message in str(info.value)


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


@pytest.mark.parametrize(('text', 'entries'), [
    ('{"serial": "x", "disks": [{"name": "a", "size": 1048576, "fstype": "ext4"}]}',
     {'a': {'size': MIB, 'fstype': 'ext4'}}),
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
