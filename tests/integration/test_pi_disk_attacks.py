# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Pi attacking pi_disk from inside its mounted disks file system, as it can over NFS: links, FIFOs and
swaps while a tool runs, aimed at stand-ins outside its file system, which must never change (as root).
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import time

import pytest
from disklab import SERIAL, bakery, base, sha, superblock, tool
from fstree import snapshot
from modrun import run_module

MIB = 1024 * 1024


@pytest.fixture
def lab(tmp_path):
    yield from bakery(tmp_path)


@pytest.fixture
def attacked(lab):
    """Pi 3a4b5c6d with an ext4 disk 'data', and stand-ins outside its file system that must never change."""
    run_module('pi_disk', base(lab, serial=SERIAL, name='data', size='64M', fstype='ext4'))
    outside = lab['top'].parent / 'outside'
    outside.mkdir()
    for path in (outside / 'standin.img', outside / 'dir' / 'disk.img'):
        path.parent.mkdir(exist_ok=True)
        tool('truncate', '-s', '64M', str(path))  # valid ext4 images: a tool that follows would change them
        tool('mkfs.ext4', '-q', '-F', '-L', 'standin', str(path), '32M')
    lab['outside'] = outside
    return lab


def plant(lab, name, attack):
    """What the Pi does over NFS where pi_disk expects <name>/disk.img; returns what the error must say."""
    point = lab['points'] / SERIAL
    disk_dir = point / name
    if attack == 'image-link':
        disk_dir.mkdir(exist_ok=True)
        if (disk_dir / 'disk.img').exists():
            os.rename(disk_dir / 'disk.img', disk_dir / 'moved.img')
        (disk_dir / 'disk.img').symlink_to(lab['outside'] / 'standin.img')
        return '%s/disk.img is a symbolic link' % name
    if attack == 'dir-link':
        if disk_dir.exists():
            os.rename(disk_dir, point / ('moved-' + name))
        disk_dir.symlink_to(lab['outside'] / 'dir')
        return '%s is a symbolic link' % name
    disk_dir.mkdir(exist_ok=True)
    if (disk_dir / 'disk.img').exists():
        os.rename(disk_dir / 'disk.img', disk_dir / 'moved.img')
    os.mkfifo(disk_dir / 'disk.img')
    return '%s/disk.img is a FIFO' % name


OPERATIONS = {  # the disk attacked, and the item that works on it
    'grow': ('data', {'name': 'data', 'size': '128M', 'fstype': 'ext4'}),
    'format': ('fresh', {'name': 'fresh', 'size': '64M', 'fstype': 'ext4'}),
    'remove': ('data', {'name': 'data', 'state': 'absent', 'force': True}),
}


@pytest.mark.parametrize('operation', sorted(OPERATIONS))
@pytest.mark.parametrize('attack', ['image-link', 'dir-link', 'fifo'])
def test_what_the_pi_planted_in_its_export_is_refused_and_nothing_outside_changes(attacked, attack, operation):
    lab = attacked
    name, item = OPERATIONS[operation]
    expected = plant(lab, name, attack)
    outside, planted = snapshot(lab['outside']), snapshot(lab['points'] / SERIAL)
    index = (lab['disks'] / (SERIAL + '.json')).read_text()
    result = run_module('pi_disk', base(lab, disks=[dict(item, serial=SERIAL),
                                                    {'serial': 'bbbb0004', 'name': 'other', 'size': '8M'}]))
    assert result.get('failed'), result
    assert result['msg'].startswith('pi_disk failed for 1 Pi(s): 3a4b5c6d: disk %s of Pi 3a4b5c6d: ' % name)
    assert expected in result['msg'] and 'never follows or replaces it' in result['msg'], result['msg']
    assert [(d['serial'], d['action']) for d in result['disks']] == [(SERIAL, 'failed'), ('bbbb0004', 'created')]
    assert snapshot(lab['outside']) == outside  # checksums, sizes, times of every stand-in
    assert snapshot(lab['points'] / SERIAL) == planted and (lab['disks'] / (SERIAL + '.json')).read_text() == index


@pytest.fixture
def swapping_tools(lab, tmp_path, monkeypatch):
    """Tools that let the Pi swap a path for a link to a stand-in while they run (first in PATH)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name in ('mkfs.ext4',):
        real = subprocess.run(['sh', '-c', 'command -v %s' % name], capture_output=True, text=True,
                              check=True, env={'PATH': '/usr/sbin:/sbin:/usr/bin:/bin'}).stdout.strip()
        (bin_dir / name).write_text('#!/bin/sh\n'
                                    'if [ -n "$PFD_SWAP" ] && [ ! -L "$PFD_SWAP" ]; then\n'
                                    '  mv "$PFD_SWAP" "$PFD_SWAP.moved" && ln -s "$PFD_TARGET" "$PFD_SWAP"\n'
                                    'fi\n'
                                    'exec %s "$@"\n' % real)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv('PATH', '%s:%s' % (bin_dir, os.environ['PATH']))
    return monkeypatch


def test_a_hostile_disk_is_grown_as_a_file_and_no_parser_runs_on_it(attacked, tmp_path, monkeypatch):
    """The Pi leaves an ext4 superblock in its disk.img that claims a journal to recover, MMP with an update
    interval of 18 hours (e2fsck would wait for it, holding the bakery lock) and a size beyond the file. pi_disk
    grows the file and runs no tool on it at all; the file system inside stays the Pi's, byte for byte."""
    lab = attacked
    disk = lab['points'] / SERIAL / 'data' / 'disk.img'
    block = bytearray(1024)
    struct.pack_into('<5I', block, 0, 16384, 0xFFFFFFFF, 0, 0, 0)
    struct.pack_into('<3I', block, 0x18, 2, 2, 8192)
    struct.pack_into('<H', block, 0x38, 0xEF53)
    struct.pack_into('<I', block, 0x60, 0x2C6 | 0x100)  # needs_recovery, mmp
    struct.pack_into('<H', block, 0x166, 0xFFFF)  # s_mmp_update_interval
    with open(disk, 'r+b') as handle:
        handle.seek(1024)
        handle.write(bytes(block))
    content = sha(disk)
    bin_dir, log = tmp_path / 'bin', tmp_path / 'called'
    bin_dir.mkdir()
    for name in ('e2fsck', 'fsck.ext4', 'resize2fs', 'debugfs', 'dumpe2fs', 'tune2fs', 'blkid', 'file'):
        (bin_dir / name).write_text('#!/bin/sh\necho "%s $*" >> %s\nexec /bin/false\n' % (name, log))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv('PATH', '%s:%s' % (bin_dir, os.environ['PATH']))
    started = time.monotonic()
    result = run_module('pi_disk', base(lab, serial=SERIAL, name='data', size='128M', fstype='ext4'))
    assert not result.get('failed') and result['disks'][0]['action'] == 'grown', result
    assert time.monotonic() - started < 60
    called = log.read_text() if log.exists() else ''
    assert 'disk.img' not in called and '/proc/self/fd' not in called, called  # the container's own grow may run
    assert disk.stat().st_size == 128 * MIB
    with open(disk, 'rb') as handle:
        assert hashlib.sha256(handle.read(64 * MIB)).hexdigest() == content
    assert run_module('pi_disk', base(lab, serial=SERIAL, name='data', size='128M', fstype='ext4'))['changed'] is False


def test_a_swap_while_mkfs_runs_never_reaches_outside(attacked, swapping_tools):
    lab = attacked
    fresh = lab['points'] / SERIAL / 'fresh'
    fresh.mkdir()
    swapping_tools.setenv('PFD_SWAP', str(fresh))
    swapping_tools.setenv('PFD_TARGET', str(lab['outside'] / 'dir'))
    outside = snapshot(lab['outside'])
    result = run_module('pi_disk', base(lab, serial=SERIAL, name='fresh', size='64M', fstype='ext4'))
    assert not result.get('failed'), result
    assert snapshot(lab['outside']) == outside
    made = lab['points'] / SERIAL / 'fresh.moved' / 'disk.img'  # linked into the directory pi_disk opened
    assert superblock(made)['Filesystem volume name'] == 'fresh'
