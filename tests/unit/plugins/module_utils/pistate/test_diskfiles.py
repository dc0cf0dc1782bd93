# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_diskfiles on a plain directory standing for a Pi's mounted disks file system, where the Pi can change
anything at any moment: links, FIFOs and swaps in the middle of a tool run are refused or harmless.

The tools are fakes that record their argv and can act as the Pi while they "run"; the real tools on
real loop-mounted file systems are in tests/integration/test_pi_disk.py.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from fstree import snapshot

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import diskfiles as _diskfiles
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.diskfiles import (
    DiskFiles,
    copy_sparse,
    remove_tree,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.disks import DiskError

MIB = 1024 * 1024
SERIAL = '3a4b5c6d'


class FakeRun:
    """Records each call; ``act(argv)`` plays the Pi during the call; answers with the next code."""

    def __init__(self, *codes, act=None):
        self.codes, self.calls, self.act = list(codes), [], act
        self.seen = []  # (dev, ino) of the file each tool was handed

    def __call__(self, argv, pass_fds=()):
        self.calls.append((argv, tuple(pass_fds)))
        target = argv[-1]
        if target.startswith('/proc/self/fd/'):
            st = os.stat(target)
            self.seen.append((st.st_dev, st.st_ino))
        if self.act:
            self.act(argv)
        return (self.codes.pop(0) if self.codes else 0), '', 'tool said no'


@pytest.fixture
def box(tmp_path):
    """(container top, a stand-in directory outside it holding a stand-in file, their checksum)."""
    top, outside = tmp_path / 'box', tmp_path / 'outside'
    top.mkdir()
    outside.mkdir()
    (outside / 'disk.img').write_bytes(b'the bakery\'s own file' * 1000)
    return top, outside


def files(top, run=None):
    tree = Tree(str(top))
    return DiskFiles(tree, SERIAL, run=run or FakeRun(), which=lambda name, required=False: '/sbin/' + name)


def make_disk(top, name='data', size=3 * MIB, body=None):
    (top / name).mkdir()
    image = top / name / 'disk.img'
    image.write_bytes(body or b'')
    os.truncate(image, size)
    return image


def hostile_ext_super(image):
    """What a Pi may leave in its disk.img: an ext4 superblock that says its journal needs recovery, an MMP
    interval of days and a size far beyond the file (the old pi_disk ran e2fsck and resize2fs on it)."""
    block = bytearray(1024)
    struct.pack_into('<5I', block, 0, 16384, 0xFFFFFFFF, 0, 0, 0)
    struct.pack_into('<3I', block, 0x18, 2, 2, 8192)
    struct.pack_into('<H', block, 0x38, 0xEF53)
    struct.pack_into('<I', block, 0x60, 0x2C6 | 0x100)  # needs_recovery, mmp
    struct.pack_into('<H', block, 0x166, 0xFFFF)  # s_mmp_update_interval
    with open(image, 'r+b') as handle:
        handle.seek(1024)
        handle.write(bytes(block))


def test_inspect_is_fstat_alone_and_never_reads_the_disk(box, monkeypatch):
    top, _outside = box
    image = make_disk(top)
    hostile_ext_super(image)
    disks = files(top)
    monkeypatch.setattr(os, 'read', lambda *a: pytest.fail('a disk.img was read'))
    monkeypatch.setattr(os, 'pread', lambda *a: pytest.fail('a disk.img was read'))
    assert disks.inspect('data', None) == {'size': 3 * MIB, 'allocated': image.stat().st_blocks * 512,
                                           'fstype': None, 'blank': None, 'extra': False}
    assert disks.inspect('data', 'ext4', 4096) == dict(disks.inspect('data', None), fstype='ext4', blank=4096)
    assert disks.inspect('missing', None) is None
    (top / 'data' / 'notes.txt').write_text('the Pi wrote this')
    assert disks.inspect('data', 'none')['extra'] is True


# What a Pi can put where pi_disk expects a disk: each is refused, and nothing outside changes.
def link_image(top, outside):
    (top / 'data').mkdir()
    (top / 'data' / 'disk.img').symlink_to(outside / 'disk.img')
    return 'data/disk.img is a symbolic link'


def link_dir(top, outside):
    (top / 'data').symlink_to(outside)
    return 'data is a symbolic link'


def fifo_image(top, _outside):
    (top / 'data').mkdir()
    os.mkfifo(top / 'data' / 'disk.img')
    return 'data/disk.img is a FIFO'


def socket_image(top, _outside):
    (top / 'data').mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(top / 'data' / 'disk.img'))
    return 'data/disk.img is a socket'


ATTACKS = [link_image, link_dir, fifo_image, socket_image]
OPERATIONS = {
    'inspect': lambda disks: disks.inspect('data', None),
    'grow': lambda disks: disks.grow('data', 8 * MIB),
    'create': lambda disks: disks.create('data', 8 * MIB, 'ext4'),
    'remove': lambda disks: disks.remove('data'),
}


@pytest.mark.parametrize('operation', sorted(OPERATIONS))
@pytest.mark.parametrize('attack', ATTACKS, ids=lambda f: f.__name__)
def test_what_the_pi_planted_is_refused_and_outside_is_untouched(box, attack, operation):
    top, outside = box
    expected = attack(top, outside)
    before, planted = snapshot(outside), snapshot(top)
    run = FakeRun()
    with pytest.raises(DiskError) as info:
        OPERATIONS[operation](files(top, run))
    message = str(info.value)
    assert expected in message and 'disk data of Pi 3a4b5c6d' in message and 'never follows' in message
    assert run.calls == []  # no tool was handed anything
    assert snapshot(outside) == before and snapshot(top) == planted


@pytest.mark.parametrize('operation', sorted(OPERATIONS))
def test_a_file_where_the_disk_directory_belongs_is_refused(box, operation):
    top, _outside = box
    (top / 'data').write_bytes(b'not a directory')
    with pytest.raises(DiskError, match='data is a file, not what pi_disk made'):
        OPERATIONS[operation](files(top))
    assert (top / 'data').read_bytes() == b'not a directory'


def test_create_is_sparse_private_linked_whole_and_tools_get_the_open_file(box):
    top, _outside = box
    run = FakeRun()
    files(top, run).create('a-very-long-disk-name', 64 * MIB, 'ext4')
    image = top / 'a-very-long-disk-name' / 'disk.img'
    st = image.stat()
    assert st.st_size == 64 * MIB and st.st_blocks == 0 and st.st_mode & 0o777 == 0o600 and st.st_nlink == 1
    assert os.listdir(image.parent) == ['disk.img']  # built unnamed: no scratch name the Pi could see
    [(argv, fds)] = run.calls
    assert argv[:5] == ['/sbin/mkfs.ext4', '-q', '-F', '-L', 'a-very-long-disk']
    assert argv[-2:] == ['--', '/proc/self/fd/%d' % fds[0]] and run.seen == [(st.st_dev, st.st_ino)]
    files(top, run).create('raw', MIB, 'none')
    assert len(run.calls) == 1 and (top / 'raw' / 'disk.img').stat().st_size == MIB


def test_create_failure_leaves_nothing_and_never_replaces(box):
    top, _outside = box
    with pytest.raises(DiskError, match='formatting disk x of Pi 3a4b5c6d as ext4 failed: tool said no'):
        files(top, FakeRun(1)).create('x', 64 * MIB, 'ext4')
    assert os.listdir(top / 'x') == []

    def plant(_argv):
        (top / 'y' / 'disk.img').write_bytes(b'precious')

    with pytest.raises(DiskError, match='appeared while it was being made'):
        files(top, FakeRun(act=plant)).create('y', 64 * MIB, 'ext4')
    assert (top / 'y' / 'disk.img').read_bytes() == b'precious'
    with pytest.raises(DiskError, match=r'y/disk\.img is a file, not what pi_disk made'):
        files(top).create('y', 64 * MIB, 'ext4')  # there before it started: refused up front


def test_create_while_the_pi_swaps_the_directory_for_a_link_lands_in_the_real_one(box):
    top, outside = box
    before = snapshot(outside)

    def swap(_argv):  # the Pi, over NFS, while mkfs runs
        os.rename(top / 'data', top / 'moved')
        (top / 'data').symlink_to(outside)

    files(top, FakeRun(act=swap)).create('data', 64 * MIB, 'ext4')
    assert snapshot(outside) == before
    assert os.listdir(top / 'moved') == ['disk.img'] and (top / 'moved' / 'disk.img').stat().st_size == 64 * MIB


def test_grow_only_makes_the_file_longer_by_a_hole_and_runs_no_tool(box):
    """The Pi grows its own file system: no e2fsck, resize2fs or anything else on bytes it wrote."""
    top, _outside = box
    image = make_disk(top, size=8 * MIB)
    hostile_ext_super(image)
    content = image.read_bytes()
    run = FakeRun()
    files(top, run).grow('data', 16 * MIB)
    assert run.calls == []
    assert image.stat().st_size == 16 * MIB and image.stat().st_blocks * 512 < MIB  # by a hole
    assert image.read_bytes()[:8 * MIB] == content and image.read_bytes()[8 * MIB:] == bytes(8 * MIB)


def test_grow_refuses_what_the_pi_changed(box):
    top, _outside = box
    image = make_disk(top, size=32 * MIB)
    with pytest.raises(DiskError, match=r'now 32 MiB.*more than the 16 MiB'):
        files(top).grow('data', 16 * MIB)
    os.unlink(image)
    with pytest.raises(DiskError, match=r'disk\.img is gone'):
        files(top).grow('data', 64 * MIB)


def test_create_records_what_the_blank_disk_took(box):
    top, _outside = box

    def mkfs(argv):  # a stand-in mkfs.ext4 writing a few blocks through the fd it was given
        with open(argv[-1], 'r+b') as handle:
            handle.write(b'x' * 8192)

    assert files(top, FakeRun(act=mkfs)).create('data', 16 * MIB, 'ext4') == 8192
    assert files(top).create('other', 16 * MIB, 'none') == 0


def test_remove_takes_the_disk_and_what_the_pi_left_without_following_links(box):
    top, outside = box
    make_disk(top)
    (top / 'data' / 'sub' / 'deeper').mkdir(parents=True)
    (top / 'data' / 'sub' / 'deeper' / 'f').write_bytes(b'x')
    (top / 'data' / 'sub' / 'out').symlink_to(outside)
    (top / 'data' / 'sub' / 'file-out').symlink_to(outside / 'disk.img')
    os.mkfifo(top / 'data' / 'pipe')
    before = snapshot(outside)
    files(top).remove('data')
    assert os.listdir(top) == [] and snapshot(outside) == before
    files(top).remove('data')  # gone already: nothing to do


def test_remove_tree_survives_a_deeper_nest_than_python_recursion(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir('nest', dir_fd=fd)
    current = os.open('nest', os.O_RDONLY, dir_fd=fd)
    for _level in range(1500):
        os.mkdir('d', dir_fd=current)
        nxt = os.open('d', os.O_RDONLY, dir_fd=current)
        os.close(current)
        current = nxt
    os.close(current)
    remove_tree(fd, 'nest')
    os.close(fd)
    assert os.listdir(tmp_path) == []


def test_scan_finds_disks_and_skips_the_rest(box, monkeypatch):
    top, outside = box
    make_disk(top, 'b', 2 * MIB)
    make_disk(top, 'a', MIB)
    (top / 'noimage').mkdir()
    (top / 'lost+found').mkdir()
    make_disk(top, 'Bad')
    (top / 'link').symlink_to(outside)
    (top / 'file').write_bytes(b'')
    found = files(top).scan()
    assert sorted(found) == ['a', 'b'] and found['b']['size'] == 2 * MIB
    monkeypatch.setattr(_diskfiles, 'SCAN_LIMIT', 5)
    with pytest.raises(DiskError, match='holds 5 entries or more'):
        files(top).scan()


def test_copy_sparse_keeps_content_and_holes(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    with open(src, 'wb') as handle:
        handle.truncate(64 * MIB)
        handle.seek(5 * MIB)
        handle.write(os.urandom(MIB + 123))
        handle.seek(40 * MIB)
        handle.write(b'tail')
    with open(src, 'rb') as source, open(dst, 'wb') as target:
        copy_sparse(source.fileno(), target.fileno(), 64 * MIB)
    assert src.read_bytes() == dst.read_bytes()
    assert dst.stat().st_blocks * 512 <= src.stat().st_blocks * 512 + MIB
