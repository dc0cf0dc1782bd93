# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_disks: sizes, names, planning, disks.json and the worker, table-driven; no root, no real tools."""

from __future__ import annotations

import json
import os
import struct

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils import _disks
from ansible_collections.pifleet.netboot.plugins.module_utils._disks import DiskError

MIB = 1024 * 1024
GIB = 1024 * MIB

SIZES = [
    (1, MIB), (MIB, MIB), (MIB + 1, 2 * MIB), (3 * GIB, 3 * GIB), ('1048576', MIB), ('512M', 512 * MIB),
    ('512m', 512 * MIB), ('512MiB', 512 * MIB), ('512MB', 512 * MIB), ('512 mib', 512 * MIB), ('8G', 8 * GIB),
    ('1.5G', 1536 * MIB), ('.5g', 512 * MIB), ('1.5K', MIB), ('2048K', 2 * MIB), ('1T', 1024 * GIB),
    ('0.001G', 2 * MIB), ('  64M ', 64 * MIB), ('100B', MIB), ('1tib', 1024 * GIB),
]
BAD_SIZES = [0, -5, '0', '0M', '', 'M', 'big', '1.2.3G', '5P', '5X', '-1G', '1e9', '1 G B', True, None, 1.5, [1]]


@pytest.mark.parametrize(('value', 'expected'), SIZES)
def test_parse_size(value, expected):
    assert _disks.parse_size(value) == expected


@pytest.mark.parametrize('value', BAD_SIZES)
def test_parse_size_rejects(value):
    with pytest.raises(DiskError, match='is not a size'):
        _disks.parse_size(value)


NAMES = [('data', True), ('scratch-1', True), ('a.b_c', True), ('0', True), ('x' * 64, True), ('x' * 65, False),
         ('Data', False), ('-x', False), ('.hidden', False), ('..', False), ('a/b', False), ('../etc', False),
         ('', False), ('disks.json', False), ('a b', False), (None, False)]


@pytest.mark.parametrize(('name', 'valid'), NAMES)
def test_check_name(name, valid):
    assert (_disks.check_name(name) is None) is valid


@pytest.mark.parametrize(('count', 'text'), [
    (512, '512 bytes'), (MIB, '1 MiB (1048576 bytes)'), (1536 * MIB, '1.5 GiB (1610612736 bytes)'),
    (8 * GIB, '8 GiB (8589934592 bytes)')])
def test_human(count, text):
    assert _disks.human(count) == text


def superblock(path, *, blocks=65536, log_block=0, per_group=8192, inodes=16384, free_inodes=16373,
               incompat=0x2C2, blocks_hi=0, magic=0xEF53):
    block = bytearray(1024)
    struct.pack_into('<5I', block, 0, inodes, blocks, 0, 0, free_inodes)
    struct.pack_into('<3I', block, 0x18, log_block, log_block, per_group)
    struct.pack_into('<H', block, 0x38, magic)
    struct.pack_into('<I', block, 0x54, 11)
    struct.pack_into('<I', block, 0x60, incompat)
    struct.pack_into('<I', block, 0x150, blocks_hi)
    path.write_bytes(bytes(1024) + bytes(block))
    return str(path)


def test_read_ext_super(tmp_path):
    info = _disks.read_ext_super(superblock(tmp_path / 'a'))
    assert info == {'block_size': 1024, 'fs_size': 64 * MIB, 'group_size': 8 * MIB, 'inodes_used': 11,
                    'first_inode': 11, 'needs_recovery': False}
    big = _disks.read_ext_super(superblock(tmp_path / 'b', blocks=0, blocks_hi=1, log_block=2, incompat=0x2C6))
    assert big['fs_size'] == (1 << 32) * 4096 and big['block_size'] == 4096 and big['needs_recovery']
    assert _disks.read_ext_super(superblock(tmp_path / 'c', magic=0x1234)) is None
    (tmp_path / 'short').write_bytes(b'x' * 1500)
    assert _disks.read_ext_super(str(tmp_path / 'short')) is None
    assert _disks.read_ext_super(str(tmp_path / 'missing')) is None


def ext(used=11, fs_size=64 * MIB, group=8 * MIB, recovery=False):
    return {'block_size': 1024, 'fs_size': fs_size, 'group_size': group, 'inodes_used': used, 'first_inode': 11,
            'needs_recovery': recovery}


def disk(size=64 * MIB, allocated=0, fstype='none', info=None):
    return {'size': size, 'allocated': allocated, 'fstype': fstype, 'ext': info}


@pytest.mark.parametrize(('current', 'expected'), [
    (disk(allocated=0), False), (disk(allocated=4096), True),
    (disk(fstype='ext4', allocated=MIB, info=ext()), False), (disk(fstype='ext4', info=ext(used=12)), True),
    (disk(fstype='ext4', info=ext(recovery=True)), True), (disk(fstype='ext4', info=None), True)])
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


def test_render_index_sorted_and_empty():
    entries = [_disks.index_entry('/d/3a4b5c6d', name, MIB, 'none') for name in ('zz', 'aa')]
    data = json.loads(_disks.render_index('3a4b5c6d', entries))
    assert data == {'serial': '3a4b5c6d', 'disks': [
        {'name': 'aa', 'file': '/d/3a4b5c6d/aa/disk.img', 'size': MIB, 'fstype': 'none', 'nfs_path': '/d/3a4b5c6d/aa'},
        {'name': 'zz', 'file': '/d/3a4b5c6d/zz/disk.img', 'size': MIB, 'fstype': 'none', 'nfs_path': '/d/3a4b5c6d/zz'},
    ]}
    assert _disks.render_index('3a4b5c6d', []) == ''


@pytest.mark.parametrize(('text', 'names'), [
    ('{"serial": "x", "disks": [{"name": "a", "fstype": "ext4"}]}', ['a']), ('not json', []), ('[1]', []),
    ('{"disks": [{"no": "name"}]}', [])])
def test_load_index(tmp_path, text, names):
    (tmp_path / 'disks.json').write_text(text)
    got_text, entries = _disks.load_index(str(tmp_path))
    assert got_text == text and sorted(entries) == names
    assert _disks.load_index(str(tmp_path / 'none')) == ('', {})


def test_write_index_replaces_and_removes(tmp_path):
    _disks.write_index(str(tmp_path), 'one\n')
    assert (tmp_path / 'disks.json').read_text() == 'one\n'
    assert (tmp_path / 'disks.json').stat().st_mode & 0o777 == 0o644
    _disks.write_index(str(tmp_path), 'two\n')
    assert os.listdir(tmp_path) == ['disks.json'] and (tmp_path / 'disks.json').read_text() == 'two\n'
    _disks.write_index(str(tmp_path), '')
    assert os.listdir(tmp_path) == []


def test_scan_and_inspect(tmp_path):
    for name in ('b', 'a', 'noimage', 'Bad'):
        (tmp_path / name).mkdir()
    for name in ('a', 'b', 'Bad'):
        (tmp_path / name / 'disk.img').write_bytes(b'')
    os.truncate(tmp_path / 'b' / 'disk.img', 3 * MIB)
    (tmp_path / 'link').symlink_to(tmp_path / 'a')
    assert _disks.scan_disks(str(tmp_path)) == ['a', 'b']
    assert _disks.scan_disks(str(tmp_path / 'missing')) == []
    assert _disks.inspect_disk(str(tmp_path / 'b'), None) == disk(size=3 * MIB)
    assert _disks.inspect_disk(str(tmp_path / 'noimage'), None) is None
    with pytest.raises(DiskError, match='is a symbolic link'):
        _disks.inspect_disk(str(tmp_path / 'link'), None)
    superblock(tmp_path / 'a' / 'disk.img')
    assert _disks.inspect_disk(str(tmp_path / 'a'), None)['fstype'] == 'ext4'  # detected
    assert _disks.inspect_disk(str(tmp_path / 'a'), 'none')['ext'] is None  # recorded wins


class FakeRun:
    def __init__(self, *codes):
        self.codes, self.calls = list(codes), []

    def __call__(self, argv):
        self.calls.append(argv)
        return (self.codes.pop(0) if self.codes else 0), '', 'tool said no'


def worker(run):
    return _disks.DiskWorker(run, lambda name: '/sbin/' + name)


def test_create_is_sparse_private_and_formats_ext4(tmp_path):
    run = FakeRun()
    worker(run).create(str(tmp_path / 'a-very-long-disk-name'), 'a-very-long-disk-name', 64 * MIB, 'ext4', 'disk')
    image = tmp_path / 'a-very-long-disk-name' / 'disk.img'
    assert image.stat().st_size == 64 * MIB and image.stat().st_blocks == 0
    assert image.stat().st_mode & 0o777 == 0o600 and image.stat().st_nlink == 1  # scratch copy gone
    assert os.listdir(image.parent) == ['disk.img']
    argv = run.calls[0]
    assert argv[:5] == ['/sbin/mkfs.ext4', '-q', '-F', '-L', 'a-very-long-disk']
    assert argv[-2] == '--' and os.path.basename(argv[-1]) == 'disk.img' and argv[-1] != str(image)


def test_create_failure_leaves_no_image(tmp_path):
    with pytest.raises(DiskError, match='formatting disk x as ext4 failed: tool said no'):
        worker(FakeRun(1)).create(str(tmp_path / 'x'), 'x', 64 * MIB, 'ext4', 'disk x')
    assert os.listdir(tmp_path / 'x') == []


def test_create_never_replaces_an_image(tmp_path):
    (tmp_path / 'x').mkdir()
    (tmp_path / 'x' / 'disk.img').write_bytes(b'precious')
    with pytest.raises(DiskError, match='appeared while it was being built'):
        worker(FakeRun()).create(str(tmp_path / 'x'), 'x', MIB, 'none', 'disk x')
    assert (tmp_path / 'x' / 'disk.img').read_bytes() == b'precious'


@pytest.mark.parametrize(('codes', 'fails'), [((0, 0), None), ((1, 0), None), ((4,), 'checking the ext4'),
                                              ((0, 1), 'growing the ext4 file system')])
def test_grow_ext4_runs_fsck_then_resize(tmp_path, codes, fails):
    image = tmp_path / 'disk.img'
    image.write_bytes(b'')
    run = FakeRun(*codes)
    if fails:
        with pytest.raises(DiskError, match=fails):
            worker(run).grow(str(image), 2 * MIB, 'ext4', False, 'disk')
    else:
        worker(run).grow(str(image), 2 * MIB, 'ext4', False, 'disk')
        assert [argv[0] for argv in run.calls] == ['/sbin/e2fsck', '/sbin/resize2fs']
        assert run.calls[0][1:] == ['-f', '-p', str(image)]
    assert image.stat().st_size == 2 * MIB


def test_grow_none_runs_nothing_and_remove_takes_the_directory(tmp_path):
    disk_dir = tmp_path / 'data'
    disk_dir.mkdir()
    (disk_dir / 'disk.img').write_bytes(b'x')
    run = FakeRun()
    worker(run).grow(str(disk_dir / 'disk.img'), MIB, 'none', False, 'disk')
    assert run.calls == [] and (disk_dir / 'disk.img').stat().st_size == MIB
    worker(run).remove(str(tmp_path), str(disk_dir), 'data')
    assert os.listdir(tmp_path) == []


def test_make_dir_refuses_symlinks_and_files(tmp_path):
    _disks.make_dir(str(tmp_path / 'd'))
    assert (tmp_path / 'd').stat().st_mode & 0o777 == 0o755
    (tmp_path / 'l').symlink_to(tmp_path / 'd')
    with pytest.raises(DiskError, match='symbolic link'):
        _disks.make_dir(str(tmp_path / 'l'))
    (tmp_path / 'f').write_bytes(b'')
    with pytest.raises(DiskError, match='not a directory'):
        _disks.make_dir(str(tmp_path / 'f'))
