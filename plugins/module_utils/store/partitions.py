# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Partition tables of Raspberry Pi images, parsed from bytes (no tools, no mounts)."""

from __future__ import annotations

import re
import struct
import uuid

SECTOR = 512

# MBR partition type bytes of FAT file systems (FAT12/16/32, with and without LBA).
FAT_TYPES = frozenset((0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E))
LINUX_TYPE = 0x83
GPT_PROTECTIVE = 0xEE

GPT_FAT_GUIDS = frozenset((
    'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7',  # Microsoft basic data
    'c12a7328-f81f-11d2-ba4b-00a0c93ec93b',  # EFI system
))
GPT_LINUX_GUIDS = frozenset((
    '0fc63daf-8483-4772-8e79-3d69d8477de4',  # Linux filesystem
    'b921b045-1df0-41c3-af44-4c6f280d3fae',  # Linux root (ARM 64)
))


class PartitionError(ValueError):
    """The image has no partition table we can use; the message says why."""


def parse_mbr(sector0):
    """Return the four primary MBR entries that are in use, as dicts.

    Raises PartitionError when the sector has no MBR boot signature.
    """
    if len(sector0) < SECTOR:
        raise PartitionError('it is %d bytes long, shorter than one 512-byte sector' % len(sector0))
    if sector0[510:512] != b'\x55\xaa':
        raise PartitionError('it has no MBR boot signature (0x55AA at byte 510); '
                             'this is not a disk image')
    disk_id = struct.unpack_from('<I', sector0, 440)[0]
    parts = []
    for index in range(4):
        entry = sector0[446 + 16 * index:446 + 16 * (index + 1)]
        status, ptype, start, count = entry[0], entry[4], *struct.unpack_from('<II', entry, 8)
        if ptype == 0 or count == 0:
            continue
        if status not in (0x00, 0x80):
            raise PartitionError('MBR entry %d has an invalid status byte 0x%02x' % (index + 1, status))
        parts.append({
            'number': index + 1,
            'type': '0x%02x' % ptype,
            'start': start * SECTOR,
            'size': count * SECTOR,
        })
    return {'table': 'mbr', 'disk_id': '%08x' % disk_id, 'partitions': parts}


def parse_gpt(header, entries):
    """Parse a GPT header (LBA 1) and its entry array; return the used entries."""
    if header[:8] != b'EFI PART':
        raise PartitionError('its protective MBR announces GPT but LBA 1 has no "EFI PART" header')
    entries_lba, count, entry_size = struct.unpack_from('<QII', header, 72)
    del entries_lba
    if entry_size < 128 or count > 1024:
        raise PartitionError('its GPT header is malformed (entry size %d, %d entries)' % (entry_size, count))
    disk_guid = str(uuid.UUID(bytes_le=bytes(header[56:72])))
    parts = []
    for index in range(count):
        entry = entries[index * entry_size:(index + 1) * entry_size]
        if len(entry) < 128 or entry[:16] == b'\0' * 16:
            continue
        first, last = struct.unpack_from('<QQ', entry, 32)
        parts.append({
            'number': index + 1,
            'type': str(uuid.UUID(bytes_le=bytes(entry[:16]))),
            'start': first * SECTOR,
            'size': (last - first + 1) * SECTOR,
        })
    return {'table': 'gpt', 'disk_id': disk_guid, 'partitions': parts}


def read_table(fileobj):
    """Read and parse the partition table from the start of a seekable image file."""
    fileobj.seek(0)
    head = fileobj.read(SECTOR * 2)
    table = parse_mbr(head)
    if any(p['type'] == '0x%02x' % GPT_PROTECTIVE for p in table['partitions']):
        fileobj.seek(SECTOR)
        header = fileobj.read(SECTOR)
        if header[:8] != b'EFI PART' or len(header) < 92:
            return parse_gpt(header, b'')  # raises: what it says is the problem
        entries_lba, count, entry_size = struct.unpack_from('<QII', header, 72)
        if entries_lba > 1 << 32:
            raise PartitionError('its GPT header is malformed (entries at LBA %d)' % entries_lba)
        fileobj.seek(entries_lba * SECTOR)
        table = parse_gpt(header, fileobj.read(min(count, 1024) * max(entry_size, 128)))
    return table


def is_fat(part):
    return part['type'] in GPT_FAT_GUIDS or (part['type'].startswith('0x') and int(part['type'], 16) in FAT_TYPES)


def is_linux(part):
    return part['type'] in GPT_LINUX_GUIDS or part['type'] == '0x%02x' % LINUX_TYPE


def select_boot_and_root(table, image_size):
    """Pick the FAT boot partition and the Linux root partition of a Pi image.

    Returns ``(boot, root)``; raises PartitionError naming the problem and the fix. ``image_size``
    None skips the bounds check (the table is read before the whole image has streamed by).
    """
    if table['table'] != 'mbr':
        raise PartitionError('it has a GPT partition table; Raspberry Pi OS images use MBR (the Pi 3 '
                             'boot ROM reads only MBR): use an MBR image such as the official .img.xz')
    parts = table['partitions']
    if not parts:
        raise PartitionError('its MBR has no partitions')
    for part in parts:
        end = part['start'] + part['size']
        if image_size is not None and end > image_size:
            raise PartitionError('partition %d runs past the end of the image (ends at byte %d, image is %d '
                                 'bytes): the image is truncated or its table is wrong; download it again'
                                 % (part['number'], end, image_size))
    boot = next((p for p in parts if is_fat(p)), None)
    if boot is None:
        raise PartitionError('it has no FAT boot partition (types found: %s); a Pi image has a FAT32 '
                             'partition 1 with the boot files' % ', '.join(p['type'] for p in parts))
    root = next((p for p in parts if is_linux(p)), None)
    if root is None:
        raise PartitionError('it has no Linux (0x83) root partition')
    return boot, root


# Files whose presence says which models a boot partition can boot (docs/netboot.md §10).
MODEL_MARKERS = (
    ('3', ('start.elf', 'bootcode.bin')),
    ('4', ('start4.elf',)),
    ('5', ('kernel_2712.img',)),
)


def detect_models(boot_files):
    """Return the sorted list of Pi models ('3', '4', '5') whose firmware the boot files carry."""
    names = set(boot_files)
    models = {model for model, markers in MODEL_MARKERS if names.intersection(markers)}
    if any(name.startswith('bcm2712-') and name.endswith('.dtb') for name in names):
        models.add('5')
    return sorted(models)


# config.txt section filters that a Pi of each model obeys (besides [all]); filters of one board
# variant ([cm4], [pi400], ...), of a serial, GPIO or EDID, and [none] are not assumed.
_MODEL_FILTERS = {3: ('pi3', 'pi3+'), 4: ('pi4',), 5: ('pi5',)}
_AUTO_INITRAMFS = re.compile(r'kernel(.*)\.img')


def boot_config(text, model=None):
    """The kernel and initramfs a Pi's firmware loads, from the text of its config.txt.

    Returns ``{'kernel', 'initramfs', 'kernels', 'initramfs_files'}``: the first two are what a Pi of
    ``model`` (3, 4, 5; None: lines of ``[all]`` only) ends up with, the last assignment winning, each
    None when config.txt does not say (the firmware then picks ``kernel8.img``-style defaults); the
    last two list every ``kernel=`` and ``initramfs`` name in the file, whatever its section. Handles
    ``kernel=<file>``, ``initramfs <file> [followkernel|<address>]`` and ``auto_initramfs=1``.
    """
    filters = ('all',) + (_MODEL_FILTERS.get(int(model), ()) if model is not None else ())
    active = True
    found = {'kernel': None, 'initramfs': None, 'auto_initramfs': False}
    kernels, initramfs_files = [], []
    for raw in (text or '').splitlines():
        line = raw.split('#', 1)[0].strip()
        if not line:
            continue
        if line.startswith('[') and line.endswith(']'):
            active = line[1:-1].strip().lower() in filters
            continue
        key, sep, value = line.partition('=')
        key, value = key.strip().lower(), value.strip()
        if sep and key == 'kernel' and value:
            kernels.append(value)
            found['kernel'] = value if active else found['kernel']
        elif sep and key == 'auto_initramfs':
            found['auto_initramfs'] = value == '1' if active else found['auto_initramfs']
        elif not sep and line.split()[0].lower() == 'initramfs' and len(line.split()) >= 2:
            initramfs_files.append(line.split()[1])
            found['initramfs'] = line.split()[1] if active else found['initramfs']
    initramfs = found['initramfs']
    if initramfs is None and found['auto_initramfs'] and found['kernel']:
        match = _AUTO_INITRAMFS.fullmatch(found['kernel'])
        initramfs = 'initramfs%s' % match.group(1) if match else None
    return {'kernel': found['kernel'], 'initramfs': initramfs, 'kernels': sorted(set(kernels)),
            'initramfs_files': sorted(set(initramfs_files))}


def detect_kernels(boot_files, config_text=None):
    """Kernels on the boot partition: ``kernel*.img`` and the files config.txt names with ``kernel=``
    (Debian's ``vmlinuz-<version>``, for example)."""
    names = set(boot_files)
    named = {name for name in boot_config(config_text)['kernels'] if name in names}
    return sorted(named | {name for name in names
                           if '/' not in name and name.startswith('kernel') and name.endswith('.img')})
