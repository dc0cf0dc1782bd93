# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fresh UUID for an ext4 image the bakery just cloned from its own golden root, without tune2fs.

Why: ``tune2fs -U`` first asks whether the image is mounted, and for that opens every loop device
the host has mounted; a first run that clones 1000 roots, each mounted as it is made, paid for that
a thousand times over a growing list (and a process per root). When the superblock alone carries the
UUID, this writes it here: the UUID into the primary superblock and each backup (as tune2fs does),
each with its checksum again. That is the case when the file system stores its checksum seed
(metadata_csum_seed, which bakeform gives every golden root with metadata_csum) or has no checksums
at all. For any other layout (group descriptor checksums keyed on the UUID, an external journal
device, multiple-mount protection, stable inode numbers, a superblock that does not read as one)
``set_uuid`` changes nothing and answers False: the caller runs tune2fs as before.

Only for images the bakery made itself from its own golden root (never bytes a Pi wrote: that
would be a parser on a Pi's data, which the bakery never runs). No AnsibleModule here.
"""

from __future__ import annotations

import os
import struct

SUPERBLOCK = 1024  # byte offset of the primary superblock; each one is 1024 bytes
SIZE = 1024
MAGIC = 0xEF53
_UUID = 0x68  # s_uuid, 16 bytes
_CHECKSUM = 0x3FC  # s_checksum: crc32c of the 1020 bytes before it
_COMPAT_SPARSE_SUPER2 = 0x200
_COMPAT_STABLE_INODES = 0x800
_INCOMPAT_JOURNAL_DEV = 0x8
_INCOMPAT_MMP = 0x100
INCOMPAT_CSUM_SEED = 0x2000
_INCOMPAT_64BIT = 0x80
_RO_COMPAT_SPARSE_SUPER = 0x1
_RO_COMPAT_GDT_CSUM = 0x10
RO_COMPAT_METADATA_CSUM = 0x400


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _bit in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data, crc=0xFFFFFFFF):
    """CRC32C (Castagnoli) as the ext4 kernel code computes it: seed ``crc``, no final inversion."""
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def superblock_checksum(block):
    return crc32c(block[:_CHECKSUM])


def _is_power_of(number, base):
    while number > 1 and number % base == 0:
        number //= base
    return number == 1


def backup_groups(block):
    """The block groups holding a backup superblock (group 0 is the primary's), as e2fsprogs places them."""
    compat, = struct.unpack_from('<I', block, 0x5C)
    incompat, ro_compat = struct.unpack_from('<II', block, 0x60)
    first, = struct.unpack_from('<I', block, 0x14)
    per_group, = struct.unpack_from('<I', block, 0x20)
    blocks, = struct.unpack_from('<I', block, 0x4)
    if incompat & _INCOMPAT_64BIT:
        blocks |= struct.unpack_from('<I', block, 0x150)[0] << 32
    groups = -(-(blocks - first) // per_group) if per_group else 0
    if compat & _COMPAT_SPARSE_SUPER2:
        found = struct.unpack_from('<II', block, 0x24C)
        return sorted({group for group in found if 0 < group < groups})
    if not ro_compat & _RO_COMPAT_SPARSE_SUPER:
        return list(range(1, groups))
    return [group for group in range(1, groups)
            if group == 1 or _is_power_of(group, 3) or _is_power_of(group, 5) or _is_power_of(group, 7)]


def simple_layout(block):
    """True when the superblock alone carries the UUID (see the module's docstring); False: leave it to tune2fs."""
    if len(block) < SIZE or struct.unpack_from('<H', block, 0x38)[0] != MAGIC:
        return False
    compat, = struct.unpack_from('<I', block, 0x5C)
    incompat, ro_compat = struct.unpack_from('<II', block, 0x60)
    if compat & _COMPAT_STABLE_INODES or incompat & (_INCOMPAT_JOURNAL_DEV | _INCOMPAT_MMP):
        return False
    if ro_compat & RO_COMPAT_METADATA_CSUM:
        return bool(incompat & INCOMPAT_CSUM_SEED) and superblock_checksum(block) == struct.unpack_from(
            '<I', block, _CHECKSUM)[0]
    return not ro_compat & _RO_COMPAT_GDT_CSUM


def _with_uuid(block, new, checksummed):
    block = bytearray(block)
    block[_UUID:_UUID + 16] = new
    if checksummed:
        struct.pack_into('<I', block, _CHECKSUM, superblock_checksum(block))
    return bytes(block)


def set_uuid(path, new):
    """Give the ext2/3/4 image ``path`` (not mounted) the UUID ``new`` (16 bytes) in every superblock; True when
    done, False (nothing written) when its layout needs tune2fs. OSError as the file system raises it."""
    fd = os.open(path, os.O_RDWR)
    try:
        primary = os.pread(fd, SIZE, SUPERBLOCK)
        if not simple_layout(primary):
            return False
        checksummed = bool(struct.unpack_from('<I', primary, 0x64)[0] & RO_COMPAT_METADATA_CSUM)
        first, per_group = struct.unpack_from('<I', primary, 0x14)[0], struct.unpack_from('<I', primary, 0x20)[0]
        block_size = 1024 << struct.unpack_from('<I', primary, 0x18)[0]
        copies = []
        for group in backup_groups(primary):
            offset = (first + group * per_group) * block_size
            backup = os.pread(fd, SIZE, offset)
            if len(backup) < SIZE or struct.unpack_from('<H', backup, 0x38)[0] != MAGIC:
                return False  # not where e2fsprogs puts it: tune2fs knows better
            copies.append((offset, backup))
        # The backups first and the primary last, as tune2fs writes them: until the primary is written the image
        # reads as the clone it was, and the caller that fails in between removes it anyway.
        for offset, backup in copies:
            os.pwrite(fd, _with_uuid(backup, new, checksummed), offset)
        os.pwrite(fd, _with_uuid(primary, new, checksummed), SUPERBLOCK)
        return True
    finally:
        os.close(fd)
