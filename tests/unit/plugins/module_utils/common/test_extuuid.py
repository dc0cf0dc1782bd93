# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""extuuid: a clone's new UUID written in-process must leave the image as tune2fs -U leaves it."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common import extuuid
from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import read_superblock

SBIN = '/usr/sbin:/sbin:/usr/bin:/bin'
needs_e2fsprogs = pytest.mark.skipif(not shutil.which('mke2fs', path=SBIN), reason='needs e2fsprogs')
NEW = uuid.UUID('11111111-2222-4333-8444-555555555555')


def test_crc32c_is_castagnoli_without_the_final_inversion():
    assert extuuid.crc32c(b'123456789') ^ 0xFFFFFFFF == 0xE3069283  # the standard check value
    assert extuuid.crc32c(b'') == 0xFFFFFFFF


def tool(*argv):
    return subprocess.run([shutil.which(argv[0], path=SBIN), *argv[1:]], check=True, capture_output=True, text=True)


def mkfs(path, size, *options):
    # 2048 blocks a group: a small image with many groups, so several backup superblocks.
    tool('mke2fs', '-q', '-F', '-t', 'ext4', '-g', '2048', *options, str(path), size)
    return path


def differences(one, other):
    """Offsets where two images differ, as (offset within its 1024-byte superblock, is that a superblock)."""
    a, b = one.read_bytes(), other.read_bytes()
    assert len(a) == len(b)
    found = set()
    for base in range(0, len(a), 1024):
        if a[base:base + 1024] != b[base:base + 1024]:
            found.update((rel, a[base + 0x38:base + 0x3A] == b'\x53\xef')
                         for rel in range(1024) if a[base + rel] != b[base + rel])
    return found


# Each layout as mke2fs makes it; tune2fs -U on one copy, extuuid on the other: the same bytes but for each
# superblock's write time (tune2fs sets it) and, with metadata_csum, the checksum that covers it.
@needs_e2fsprogs
@pytest.mark.parametrize('options', [
    ('-O', 'metadata_csum,metadata_csum_seed'),
    ('-O', 'metadata_csum,metadata_csum_seed', '-b', '1024', '-g', '1024'),  # one block after a group's start
    ('-O', 'metadata_csum,metadata_csum_seed,sparse_super2'),
    ('-O', '^metadata_csum,^uninit_bg'),  # no checksums at all
    ('-O', '^metadata_csum,^uninit_bg,^sparse_super,^resize_inode'),  # a backup in every group
], ids=['csum-seed', 'csum-seed-1k', 'sparse_super2', 'no-csum', 'no-sparse'])
def test_the_image_is_what_tune2fs_makes_of_it(tmp_path, options):
    ours = mkfs(tmp_path / 'ours.img', '48M', *options)
    theirs = tmp_path / 'theirs.img'
    shutil.copyfile(ours, theirs)
    tool('tune2fs', '-U', str(NEW), str(theirs))
    assert extuuid.set_uuid(str(ours), NEW.bytes) is True
    allowed = {(rel, True) for rel in (*range(0x30, 0x34), *range(0x3FC, 0x400))}
    assert differences(ours, theirs) <= allowed
    assert read_superblock(str(ours))['uuid'] == str(NEW)
    tool('e2fsck', '-f', '-n', str(ours))  # checksums and backups as e2fsck wants them (rc 0)


@needs_e2fsprogs
@pytest.mark.parametrize('options', [
    ('-O', 'metadata_csum,^metadata_csum_seed'),  # every checksum is keyed on the UUID
    ('-O', '^metadata_csum,uninit_bg'),  # the group descriptors' checksums are
    ('-O', 'mmp'),
], ids=['csum-no-seed', 'gdt-csum', 'mmp'])
def test_other_layouts_are_left_to_tune2fs_untouched(tmp_path, options):
    image = mkfs(tmp_path / 'root.img', '64M', *options)
    before = image.read_bytes()
    assert extuuid.set_uuid(str(image), NEW.bytes) is False
    assert image.read_bytes() == before


def test_what_is_not_a_superblock_is_left_alone(tmp_path):
    image = tmp_path / 'zeros.img'
    image.write_bytes(bytes(1 << 20))
    assert extuuid.set_uuid(str(image), NEW.bytes) is False
    assert image.read_bytes() == bytes(1 << 20)
    short = tmp_path / 'short.img'
    short.write_bytes(b'x' * 1500)
    assert extuuid.set_uuid(str(short), NEW.bytes) is False


@needs_e2fsprogs
def test_a_wrong_superblock_checksum_is_left_to_tune2fs(tmp_path):
    image = mkfs(tmp_path / 'root.img', '64M', '-O', 'metadata_csum,metadata_csum_seed')
    with open(image, 'r+b') as handle:
        handle.seek(1024 + 0x3FC)
        handle.write(b'\0\0\0\0')
    before = image.read_bytes()
    assert extuuid.set_uuid(str(image), NEW.bytes) is False
    assert image.read_bytes() == before


def test_backup_groups_as_e2fsprogs_places_them():
    block = bytearray(1024)
    block[0x38:0x3A] = b'\x53\xef'
    block[0x4:0x8] = (100 * 8192).to_bytes(4, 'little')
    block[0x20:0x24] = (8192).to_bytes(4, 'little')
    block[0x64:0x68] = (1).to_bytes(4, 'little')  # sparse_super
    assert extuuid.backup_groups(bytes(block)) == [1, 3, 5, 7, 9, 25, 27, 49, 81]
    block[0x64:0x68] = bytes(4)
    assert extuuid.backup_groups(bytes(block)) == list(range(1, 100))
    block[0x5C:0x60] = (0x200).to_bytes(4, 'little')  # sparse_super2: the two groups it names
    block[0x24C:0x254] = (1).to_bytes(4, 'little') + (99).to_bytes(4, 'little')
    assert extuuid.backup_groups(bytes(block)) == [1, 99]
