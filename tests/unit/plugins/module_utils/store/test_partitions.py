# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import io
import struct
import uuid

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.store.partitions import (
    PartitionError,
    boot_config,
    detect_kernels,
    detect_models,
    parse_mbr,
    read_table,
    select_boot_and_root,
)

MIB = 1024 * 1024


def mbr(entries, disk_id=0x5A1E0C3D, signature=b'\x55\xaa'):
    """Build sector 0 from (status, type, start_lba, sectors) tuples."""
    sector = bytearray(512)
    struct.pack_into('<I', sector, 440, disk_id)
    for index, (status, ptype, start, count) in enumerate(entries):
        struct.pack_into('<B3sB3sII', sector, 446 + 16 * index, status, b'\0' * 3, ptype, b'\0' * 3, start, count)
    sector[510:512] = signature
    return bytes(sector)


def gpt(parts):
    """A protective MBR, a GPT header at LBA 1 and entries at LBA 2, from (type_guid, first, last)."""
    header = bytearray(512)
    header[:8] = b'EFI PART'
    header[56:72] = uuid.UUID('11111111-2222-3333-4444-555555555555').bytes_le
    struct.pack_into('<QII', header, 72, 2, 128, 128)
    entries = bytearray(128 * 128)
    for index, (guid, first, last) in enumerate(parts):
        entries[index * 128:index * 128 + 16] = uuid.UUID(guid).bytes_le
        struct.pack_into('<QQ', entries, index * 128 + 32, first, last)
    return mbr([(0, 0xEE, 1, 0xFFFFFFFF)]) + bytes(header) + bytes(entries)


PI_OS = [(0x80, 0x0C, 8192, 1048576), (0, 0x83, 1056768, 4194304)]

MBR_CASES = [
    # id, sector 0, expected partitions (number, type, start bytes, size bytes)
    ('pi-os', mbr(PI_OS), [(1, '0x0c', 8192 * 512, 1048576 * 512), (2, '0x83', 1056768 * 512, 4194304 * 512)]),
    ('gap-in-table', mbr([(0, 0, 0, 0), (0, 0x0B, 2048, 100)]), [(2, '0x0b', 2048 * 512, 100 * 512)]),
    ('empty-table', mbr([]), []),
]


@pytest.mark.parametrize(('sector', 'expected'), [c[1:] for c in MBR_CASES], ids=[c[0] for c in MBR_CASES])
def test_parse_mbr(sector, expected):
    table = parse_mbr(sector)
    assert table['table'] == 'mbr'
    assert table['disk_id'] == '5a1e0c3d'
    assert [(p['number'], p['type'], p['start'], p['size']) for p in table['partitions']] == expected


BAD_SECTORS = [
    ('zero-length', b'', 'shorter than one 512-byte sector'),
    ('short', b'\x55\xaa' * 10, 'shorter than one 512-byte sector'),
    ('random-bytes', bytes(range(256)) * 2, 'no MBR boot signature'),
    ('zeros', bytes(512), 'no MBR boot signature'),
    ('bad-status', mbr([(0x42, 0x0C, 1, 1)]), 'invalid status byte 0x42'),
]


@pytest.mark.parametrize(('sector', 'message'), [c[1:] for c in BAD_SECTORS], ids=[c[0] for c in BAD_SECTORS])
def test_parse_mbr_rejects_garbage(sector, message):
    with pytest.raises(PartitionError, match=message):
        parse_mbr(sector)


def test_read_table_gpt():
    image = gpt([('ebd0a0a2-b9e5-4433-87c0-68b6b72699c7', 8192, 16383),
                 ('0fc63daf-8483-4772-8e79-3d69d8477de4', 16384, 32767)])
    table = read_table(io.BytesIO(image))
    assert table['table'] == 'gpt'
    assert table['disk_id'] == '11111111-2222-3333-4444-555555555555'
    assert [(p['number'], p['start'], p['size']) for p in table['partitions']] == [
        (1, 8192 * 512, 8192 * 512), (2, 16384 * 512, 16384 * 512)]


def test_read_table_protective_mbr_without_header():
    with pytest.raises(PartitionError, match='no "EFI PART" header'):
        read_table(io.BytesIO(mbr([(0, 0xEE, 1, 100)]) + bytes(512)))


SELECT_CASES = [
    ('pi-os', mbr(PI_OS), 5251072 * 512, None),
    ('past-end', mbr(PI_OS), 5251071 * 512, 'partition 2 runs past the end of the image'),
    ('no-fat', mbr([(0, 0x83, 8192, 100), (0, 0x83, 9000, 100)]), 10 * MIB, 'no FAT boot partition'),
    ('no-linux', mbr([(0, 0x0C, 8192, 100)]), 10 * MIB, 'no Linux'),
    ('no-partitions', mbr([]), 10 * MIB, 'has no partitions'),
]


@pytest.mark.parametrize(('sector', 'size', 'message'), [c[1:] for c in SELECT_CASES], ids=[c[0] for c in SELECT_CASES])
def test_select_boot_and_root(sector, size, message):
    table = parse_mbr(sector)
    if message is None:
        boot, root = select_boot_and_root(table, size)
        assert (boot['number'], root['number']) == (1, 2)
    else:
        with pytest.raises(PartitionError, match=message):
            select_boot_and_root(table, size)


def test_select_refuses_gpt_with_a_reason():
    table = read_table(io.BytesIO(gpt([('ebd0a0a2-b9e5-4433-87c0-68b6b72699c7', 8192, 16383)])))
    with pytest.raises(PartitionError, match='GPT partition table; Raspberry Pi OS images use MBR'):
        select_boot_and_root(table, 100 * MIB)


MODEL_CASES = [
    ('pi3-only', ['bootcode.bin', 'start.elf', 'fixup.dat', 'kernel8.img'], ['3']),
    ('pi4-only', ['start4.elf', 'fixup4.dat', 'kernel8.img'], ['4']),
    ('pi5-kernel', ['kernel_2712.img'], ['5']),
    ('pi5-dtb-only', ['bcm2712-rpi-5-b.dtb', 'kernel8.img'], ['5']),
    ('all', ['bootcode.bin', 'start.elf', 'start4.elf', 'kernel_2712.img'], ['3', '4', '5']),
    ('overlay-is-not-firmware', ['overlays/start4.elf'], []),
    ('nothing', ['config.txt'], []),
]


@pytest.mark.parametrize(('files', 'models'), [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_detect_models(files, models):
    assert detect_models(files) == models


def test_detect_kernels_ignores_subdirs_and_other_files():
    files = ['kernel8.img', 'kernel_2712.img', 'kernel8.img.bak', 'overlays/kernel9.img', 'initramfs8']
    assert detect_kernels(files) == ['kernel8.img', 'kernel_2712.img']


DEBIAN_CONFIG = """\
# Raspberry Pi OS-like, Debian kernel
arm_64bit=1
kernel=vmlinuz-6.1.0-44-arm64
initramfs initrd.img-6.1.0-44-arm64 followkernel

[cm4]
otg_mode=1

[all]
"""

BOOT_CONFIG_CASES = [
    # (id, config.txt, model, kernel, initramfs)
    ('debian-kernel', DEBIAN_CONFIG, 4, 'vmlinuz-6.1.0-44-arm64', 'initrd.img-6.1.0-44-arm64'),
    ('no-config', None, 4, None, None),
    ('defaults-only', 'arm_64bit=1\ndtoverlay=vc4-kms-v3d\n', 4, None, None),
    ('auto-initramfs', 'auto_initramfs=1\nkernel=kernel8.img\n', 4, 'kernel8.img', 'initramfs8'),
    ('auto-initramfs-pi5', 'auto_initramfs=1\n[pi5]\nkernel=kernel_2712.img\n', 5, 'kernel_2712.img',
     'initramfs_2712'),
    ('auto-off', 'auto_initramfs=0\nkernel=kernel8.img\n', 4, 'kernel8.img', None),
    ('model-section-applies', '[pi4]\nkernel=k4.img\n[pi5]\nkernel=k5.img\n[all]\n', 4, 'k4.img', None),
    ('other-model-section-ignored', '[pi4]\nkernel=k4.img\n[pi5]\nkernel=k5.img\n', 5, 'k5.img', None),
    ('variant-section-not-assumed', 'kernel=a.img\n[cm4]\nkernel=cm.img\n', 4, 'a.img', None),
    ('none-section', 'kernel=a.img\n[none]\nkernel=b.img\n', 4, 'a.img', None),
    ('last-wins', 'kernel=a.img\nkernel=b.img\n', 3, 'b.img', None),
    ('comments-and-spaces', '  kernel = vmlinuz  # the Debian one\n#kernel=old.img\n', None, 'vmlinuz', None),
    ('initramfs-address', 'initramfs initrd.img 0x01f00000\n', 4, None, 'initrd.img'),
    ('no-model-reads-all-only', '[pi4]\nkernel=k4.img\n', None, None, None),
    ('section-case', '[PI4]\nkernel=k4.img\n', 4, 'k4.img', None),
]


@pytest.mark.parametrize(('text', 'model', 'kernel', 'initramfs'), [c[1:] for c in BOOT_CONFIG_CASES],
                         ids=[c[0] for c in BOOT_CONFIG_CASES])
def test_boot_config(text, model, kernel, initramfs):
    found = boot_config(text, model)
    assert (found['kernel'], found['initramfs']) == (kernel, initramfs)


def test_boot_config_lists_every_kernel_and_initramfs_whatever_the_section():
    found = boot_config('kernel=a.img\n[pi5]\nkernel=b.img\ninitramfs i5 followkernel\n[none]\nkernel=c.img\n')
    assert found['kernels'] == ['a.img', 'b.img', 'c.img']
    assert found['initramfs_files'] == ['i5']


def test_detect_kernels_reads_config_txt_kernel_lines():
    files = ['vmlinuz-6.1.0-44-arm64', 'initrd.img-6.1.0-44-arm64', 'config.txt', 'start4.elf']
    assert detect_kernels(files) == []  # bug: only kernel*.img names were recognised
    assert detect_kernels(files, DEBIAN_CONFIG) == ['vmlinuz-6.1.0-44-arm64']


def test_detect_kernels_lists_only_named_kernels_that_exist():
    files = ['kernel8.img', 'config.txt']
    assert detect_kernels(files, 'kernel=vmlinuz-missing\n') == ['kernel8.img']
