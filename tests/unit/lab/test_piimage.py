# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fast checks of the test-image factory lab/piimage.py (tiny profile only)."""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path

import pytest

from lab import piimage

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("sfdisk", "mkfs.vfat", "mcopy", "mke2fs", "fakeroot", "xz")),
    reason="piimage needs sfdisk, mkfs.vfat, mtools, mke2fs, fakeroot and xz",
)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Build each variant once per module; tests only read them."""
    out = tmp_path_factory.mktemp("piimage")
    cache: dict[str, dict] = {}

    def get(variant: str) -> dict:
        if variant not in cache:
            cache[variant] = piimage.build_image(out / f"{variant}.img", variant=variant)
        return cache[variant]

    return get


def _mbr_entries(data: bytes) -> list[tuple[int, int, int]]:
    """(type, start LBA, sector count) of the four primary MBR entries."""
    assert data[510:512] == b"\x55\xaa"
    entries = []
    for i in range(4):
        raw = data[446 + 16 * i : 446 + 16 * (i + 1)]
        entries.append((raw[4], *struct.unpack("<II", raw[8:16])))
    return entries


def _sidecar(result: dict) -> str:
    return Path(result["path"] + ".sha256").read_text().strip()


def _sha(path: str) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_variants_constant():
    assert set(piimage.VARIANTS) == {
        "good",
        "truncated",
        "bad-checksum",
        "no-fat",
        "gpt",
        "random",
        "empty",
        "past-end",
    }


def test_good_image_has_fat32_lba_and_linux_partitions(images):
    res = images("good")
    data = Path(res["path"]).read_bytes()
    (t1, s1, n1), (t2, s2, n2), *rest = _mbr_entries(data)
    assert (t1, s1) == (0x0C, 8192)
    assert t2 == 0x83
    assert s2 * 512 == res["root_offset"] and s2 % 8192 == 0 and s2 >= s1 + n1
    assert all(e == (0, 0, 0) for e in rest)
    assert res["boot_offset"] == 8192 * 512 and n1 * 512 == res["boot_size"]
    assert (s2 + n2) * 512 == len(data)  # image ends with partition 2
    # Disk identifier at 440 matches the PARTUUIDs used in cmdline.txt.
    assert f"{struct.unpack('<I', data[440:444])[0]:08x}" == res["disk_id"]
    # FAT32 boot sector with the bootfs label at the partition start.
    boot = data[res["boot_offset"] : res["boot_offset"] + 512]
    assert boot[82:90] == b"FAT32   " and boot[71:82] == b"bootfs     "
    # ext4 superblock magic at root offset + 1024 + 0x38.
    assert data[res["root_offset"] + 1024 + 0x38 : res["root_offset"] + 1024 + 0x3A] == b"\x53\xef"
    assert {"start4.elf", "kernel_2712.img", "bootcode.bin", "cmdline.txt"} <= set(res["boot_files"])


def test_sidecar_correct_for_good_and_wrong_for_bad_checksum(images):
    good = images("good")
    assert _sidecar(good) == good["sha256"] == _sha(good["path"])
    bad = images("bad-checksum")
    assert _sidecar(bad) == bad["sha256"]
    assert bad["sha256"].startswith("sha256:") and len(bad["sha256"]) == 7 + 64
    assert bad["sha256"] != _sha(bad["path"])


def test_empty_is_zero_bytes(images):
    res = images("empty")
    assert Path(res["path"]).stat().st_size == 0
    assert _sidecar(res) == _sha(res["path"])


def test_random_has_no_boot_signature(images):
    data = Path(images("random")["path"]).read_bytes()
    assert len(data) == 4 * 1024 * 1024
    assert data[510:512] != b"\x55\xaa"
    assert b"\x55\xaa" not in data


def test_past_end_partition_runs_beyond_file(images):
    res = images("past-end")
    data = Path(res["path"]).read_bytes()
    entries = _mbr_entries(data)
    start, count = entries[1][1], entries[1][2]
    assert (start + count) * 512 > len(data)


def test_gpt_header(images):
    data = Path(images("gpt")["path"]).read_bytes()
    assert data[512:520] == b"EFI PART"
    assert data[446 + 4] == 0xEE  # protective MBR


def test_no_fat_and_truncated(images):
    nofat = images("no-fat")
    data = Path(nofat["path"]).read_bytes()
    entries = _mbr_entries(data)
    t1, t2 = entries[0][0], entries[1][0]
    assert t1 == t2 == 0x83 and nofat["boot_files"] == {}
    assert b"FAT32" not in data[nofat["boot_offset"] : nofat["boot_offset"] + 512]
    good_size = Path(images("good")["path"]).stat().st_size
    trunc = images("truncated")
    assert Path(trunc["path"]).stat().st_size == good_size // 2
    assert _sidecar(trunc) == _sha(trunc["path"])


def test_expect_lists_tricky_entries(images):
    expect = {e["path"]: e for e in images("good")["expect"]}
    cap = expect["usr/bin/ping"]["xattrs"]["security.capability"]
    assert bytes.fromhex(cap) == struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    assert expect["etc/hostname"]["xattrs"]["user.pifleet"] == b"golden".hex()
    assert expect["dev/null"]["type"] == "char" and expect["dev/null"]["rdev"] == [1, 3]
    assert expect["dev/sda"]["type"] == "block" and expect["dev/sda"]["gid"] == 6
    group = expect["usr/bin/busybox"]["inode_group"]
    assert group is not None
    assert sorted(p for p, e in expect.items() if e["inode_group"] == group) == [
        "usr/bin/busybox",
        "usr/bin/cat",
        "usr/bin/ls",
    ]
    assert expect["usr/bin/passwd"]["mode"] == 0o4755
    assert (expect["usr/bin/crontab"]["mode"], expect["usr/bin/crontab"]["gid"]) == (0o2755, 102)
    assert (expect["home/pi"]["uid"], expect["home/pi"]["mode"]) == (1000, 0o750)
    assert expect["tmp"]["mode"] == 0o1777
    assert expect["bin"] == {**expect["bin"], "type": "symlink", "target": "usr/bin"}
    assert expect["var/lib/fifo"]["type"] == "fifo"
    assert expect["var/lib/sparse/big.bin"]["size"] == 8 * 1024 * 1024
    assert "home/pi/Café-ñ-日本.txt" in expect


def test_xz_output_and_tree_out(tmp_path):
    res = piimage.build_image(tmp_path / "img.xz", models=(4,), tree_out=tmp_path / "tree")
    assert Path(res["path"]).read_bytes()[:6] == b"\xfd7zXZ\x00"
    assert _sidecar(res) == _sha(res["path"])
    assert "start4.elf" in res["boot_files"] and "start.elf" not in res["boot_files"]
    assert (tmp_path / "tree" / "etc" / "hostname").read_text() == "raspberrypi\n"
    assert (tmp_path / "tree.expect.json").is_file() and (tmp_path / "tree.boot.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".piimage-")] == []  # temp dir cleaned
