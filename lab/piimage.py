# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-image factory: Raspberry Pi OS-like disk images, built in seconds without root.

Nothing here mounts anything or needs kernel vfat: the FAT boot partition is made with
mkfs.vfat + mtools on a plain file, the ext4 root with ``mke2fs -d`` straight into the
image, and the root tree (owners, device nodes, setuid bits, xattrs) is faked by running
the tree builder AND mke2fs inside one ``fakeroot`` session, so the faked metadata is what
mke2fs records.

Usage:
    python3 -m lab.piimage --out PATH [--models 3,4,5] [--profile tiny|realistic]
        [--variant V] [--xz] [--seed N] [--root-files N] [--root-mb N] [--image-mb N]
        [--tree-out DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

VARIANTS = ("good", "truncated", "bad-checksum", "no-fat", "gpt", "random", "empty", "past-end")
PROFILES = ("tiny", "realistic")

SECTOR = 512
MIB = 1024 * 1024
BOOT_START_SECTOR = 8192  # 4 MiB, like Raspberry Pi OS
ALIGN = 4 * MIB
CHUNK = 64 * 1024
# Fixed timestamp (2024-11-19) for reproducible FAT/ext4 metadata where the tools allow it.
EPOCH = 1731974400

# GPT type GUIDs that sfdisk understands.
GPT_MS_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
GPT_LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

# VFS capability v2 for cap_net_raw+ep (permitted bit 13, effective flag set).
CAP_NET_RAW_XATTR = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)

# (relative path, realistic size in bytes) per Pi model; tiny sizes are a few KiB each.
MODEL_BOOT_FILES: dict[int, list[tuple[str, int]]] = {
    3: [
        ("bootcode.bin", 52 * 1024),
        ("start.elf", 2_900_000),
        ("fixup.dat", 7 * 1024),
        ("bcm2710-rpi-3-b.dtb", 55 * 1024),
        ("bcm2710-rpi-3-b-plus.dtb", 55 * 1024),
    ],
    4: [
        ("start4.elf", 2_300_000),
        ("fixup4.dat", 7 * 1024),
        ("bcm2711-rpi-4-b.dtb", 55 * 1024),
    ],
    5: [
        ("kernel_2712.img", 9_500_000),
        ("bcm2712-rpi-5-b.dtb", 55 * 1024),
    ],
}
COMMON_BINARIES = [
    ("kernel8.img", 9_000_000),
    ("overlays/vc4-kms-v3d.dtbo", 3 * 1024),
    ("overlays/disable-bt.dtbo", 1024),
]
REALISTIC_ONLY = [("initramfs8", 12_000_000), ("initramfs_2712", 12_000_000)]
# Stand-ins of the packages a netbooted root may need: the paths bakeform reads to tell what a root can do
# (plugins/module_utils/store/capabilities.py), each package also listed in var/lib/dpkg/status. The default is a
# Bookworm Lite-like root with nfs-common; a test asks for a root without it (Trixie Lite shipped so) or with more.
PACKAGE_FILES: dict[str, tuple[str, ...]] = {
    "nfs-common": ("usr/sbin/mount.nfs",),
    "cloud-init": ("usr/bin/cloud-init", "etc/cloud/cloud.cfg"),
    "network-manager": (
        "usr/sbin/NetworkManager",
        "usr/lib/systemd/system/NetworkManager.service",
        "etc/NetworkManager/NetworkManager.conf",
    ),
    "dhcpcd": ("usr/sbin/dhcpcd", "usr/lib/systemd/system/dhcpcd.service", "etc/dhcpcd.conf"),
    "initramfs-tools": ("usr/share/initramfs-tools/scripts/nfs", "usr/lib/klibc/bin/nfsmount"),
    "dracut": ("usr/lib/dracut/modules.d/90kernel-modules/module-setup.sh",),
    "dracut-network": ("usr/lib/dracut/modules.d/95nfs/module-setup.sh",),
}
DEFAULT_PACKAGES = ("nfs-common",)

CONFIG_TXT = """\
# For more options and information see
# http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
arm_64bit=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[all]
"""

ISSUE_TXT = """\
Raspberry Pi reference 2024-11-19
Generated using pi-gen, https://github.com/RPi-Distro/pi-gen, 891df1e21ed2b6099a2e6a13e26c91dea44b34d4, stage2
"""

OVERLAYS_README = """\
Introduction
============

This directory contains Device Tree overlays. Device Tree makes it possible
to support many hardware configurations with a single kernel and without the
need to explicitly load or blacklist kernel modules.
"""

RESIZE2FS_ONCE = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          resize2fs_once
# Required-Start:
# Required-Stop:
# Default-Start: 3
# Default-Stop:
# Short-Description: Resize the root filesystem to fill partition
# Description:
### END INIT INFO
. /lib/lsb/init-functions
case "$1" in
  start)
    log_daemon_msg "Starting resize2fs_once"
    ROOT_DEV=$(findmnt / -o source -n) &&
    resize2fs "$ROOT_DEV" &&
    update-rc.d resize2fs_once remove &&
    rm /etc/init.d/resize2fs_once &&
    log_end_msg $?
    ;;
  *)
    echo "Usage: $0 start" >&2
    exit 3
    ;;
esac
"""

OS_RELEASE = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""


# --------------------------------------------------------------------------- helpers


def _run(argv: list[str], *, input_text: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command (argv list, never a shell string); raise RuntimeError with its stderr."""
    try:
        proc = subprocess.run(
            argv,
            input=input_text,
            capture_output=True,
            text=True,
            env=env,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        raise RuntimeError(f"command not found: {argv[0]} (install it first)") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (rc={proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout


def _rng(seed: int, label: str) -> random.Random:
    # Derive independent, stable streams per purpose so adding a file does not shift others.
    digest = hashlib.sha256(f"pifleet:{seed}:{label}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _pseudo_bytes(seed: int, label: str, size: int) -> bytes:
    # random.randbytes is deterministic for a given seed and much faster than hashing blocks.
    return _rng(seed, label).randbytes(size)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(MIB):
            h.update(block)
    return h.hexdigest()


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _disk_id(seed: int) -> str:
    did = int.from_bytes(hashlib.sha256(f"pifleet-disk:{seed}".encode()).digest()[:4], "big")
    return f"{did or 0x5A1E0C3D:08x}"


def _uuid(seed: int, label: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(f"pifleet-uuid:{seed}:{label}".encode()).digest()[:16], version=4))


def _copy_sparse(src: Path, dst: Path, offset: int) -> None:
    """Copy src into dst at offset, seeking over all-zero chunks so dst stays sparse."""
    zero = bytes(CHUNK)
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        pos = offset
        while block := fin.read(CHUNK):
            if block != zero[: len(block)]:
                fout.seek(pos)
                fout.write(block)
            pos += len(block)


# --------------------------------------------------------------------------- boot partition


def boot_file_contents(models: tuple[int, ...], profile: str, seed: int, disk_id: str) -> dict[str, bytes]:
    """Return {relative path: bytes} of the boot partition for the given models/profile."""
    binaries: list[tuple[str, int]] = []
    for model in sorted(set(models)):
        binaries += MODEL_BOOT_FILES[model]
    binaries += COMMON_BINARIES
    if profile == "realistic":
        binaries += REALISTIC_ONLY
    files: dict[str, bytes] = {}
    for rel, real_size in binaries:
        size = real_size if profile == "realistic" else 1024 * (2 + _rng(seed, "size:" + rel).randrange(6))
        files[rel] = _pseudo_bytes(seed, "boot:" + rel, size)
    files["config.txt"] = CONFIG_TXT.encode()
    files["cmdline.txt"] = (
        f"console=serial0,115200 console=tty1 root=PARTUUID={disk_id}-02 rootfstype=ext4 fsck.repair=yes "
        "rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n"
    ).encode()
    files["overlays/README"] = OVERLAYS_README.encode()
    files["issue.txt"] = ISSUE_TXT.encode()
    return dict(sorted(files.items()))


def _build_fat(files: dict[str, bytes], work: Path, size_bytes: int, seed: int) -> Path:
    src = work / "bootsrc"
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for p in [*src.rglob("*"), src]:
        os.utime(p, (EPOCH, EPOCH))  # mcopy -m keeps these, for reproducible directory entries
    fat = work / "boot.vfat"
    volid = hashlib.sha256(f"pifleet-volid:{seed}".encode()).hexdigest()[:8]
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", SOURCE_DATE_EPOCH=str(EPOCH))
    _run(
        ["mkfs.vfat", "--invariant", "-F", "32", "-n", "bootfs", "-i", volid, "-C", str(fat), str(size_bytes // 1024)],
        env=env,
    )
    tops = sorted(str(p) for p in src.iterdir())
    _run(["mcopy", "-s", "-m", "-i", str(fat), *tops, "::/"], env=env)
    return fat


# --------------------------------------------------------------------------- root tree (inside fakeroot)


def _bulk_plan(seed: int, n_files: int, total_bytes: int) -> list[int]:
    rng = _rng(seed, "bulk-sizes")
    avg = max(1, total_bytes // max(1, n_files))
    sizes = [max(1, int(avg * rng.uniform(0.25, 1.75))) for _index in range(n_files)]
    if sizes:
        sizes[-1] = max(1, sizes[-1] + total_bytes - sum(sizes))
    return sizes


def _write_bulk(root: Path, seed: int, n_files: int, total_bytes: int) -> None:
    """Many semi-compressible files: half random bytes, half repeated text (compresses ~2:1)."""
    sizes = _bulk_plan(seed, n_files, total_bytes)
    pool = _pseudo_bytes(seed, "bulk-pool", 32 * MIB)  # slicing one pool is much faster than per-file RNG
    text = b"pifleet bulk payload: the quick brown fox jumps over the lazy dog 0123456789\n" * 4096
    rng = _rng(seed, "bulk-offsets")
    bulk = root / "usr/lib/bulk"
    for i, size in enumerate(sizes):
        d = bulk / f"d{i // 100:03d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        half = size // 2
        off = rng.randrange(0, len(pool) - half) if half < len(pool) else 0
        rand = pool[off : off + half]
        rest = size - len(rand)
        filler = (text * (rest // len(text) + 1))[:rest] if rest > len(text) else text[:rest]
        with open(d / f"f{i:04d}", "wb") as fh:
            fh.write(rand)
            fh.write(filler)


def _fake_pem(seed: int, kind: str, bits: int) -> tuple[str, str]:
    body = base64.b64encode(_pseudo_bytes(seed, "sshkey:" + kind, bits)).decode()
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    priv = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END OPENSSH PRIVATE KEY-----\n"
    algo = {"ed25519": "ssh-ed25519", "rsa": "ssh-rsa"}[kind]
    pub = f"{algo} {base64.b64encode(_pseudo_bytes(seed, 'sshpub:' + kind, bits // 4)).decode()} root@raspberrypi\n"
    return priv, pub


def _make_root_tree(root: Path, spec: dict) -> None:
    """Build the root filesystem tree. Must run under fakeroot (or as root)."""
    # Parent dirs made by mkdir(parents=True) get 0755; every explicit mode below is set with chmod,
    # so the caller's umask can neither strip nor add bits.
    os.umask(0o022)
    seed, disk_id = spec["seed"], spec["disk_id"]

    def mkdir(rel: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        p = root / rel
        p.mkdir(parents=True, exist_ok=True)
        os.chown(p, uid, gid)
        os.chmod(p, mode)

    def write(rel: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Path:
        p = root / rel
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chown(p, uid, gid)  # chown before chmod: a real chown clears setuid/setgid bits
        os.chmod(p, mode)
        return p

    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for rel in (
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "etc",
        "etc/ssh",
        "etc/systemd/system/multi-user.target.wants",
        "etc/init.d",
        "var/empty-dir",
        "var/lib/sparse",
        "dev",
        "proc",
        "boot/firmware",
        "home",
    ):
        mkdir(rel)
    mkdir("home/pi", 0o750, 1000, 1000)
    mkdir("root", 0o700)
    mkdir("tmp", 0o1777)
    os.symlink("usr/bin", root / "bin")

    # One inode, three names: careless copies turn these into three files.
    write("usr/bin/busybox", _pseudo_bytes(seed, "busybox", 8192), 0o755)
    os.link(root / "usr/bin/busybox", root / "usr/bin/ls")
    os.link(root / "usr/bin/busybox", root / "usr/bin/cat")
    os.symlink("/usr/bin/busybox", root / "etc/alternatives-editor")
    os.symlink("../bin/busybox", root / "usr/sbin/reboot")
    os.symlink("/nonexistent/target", root / "etc/dangling")

    _add_special_files(root, seed, write)
    _add_etc(root, seed, disk_id, write)
    _add_packages(root, seed, spec.get("packages", DEFAULT_PACKAGES), write)
    if spec["profile"] == "realistic":
        _write_bulk(root, seed, spec["root_files"], spec["bulk_bytes"])


def _check_packages(packages) -> None:
    unknown = set(packages) - set(PACKAGE_FILES)
    if unknown:
        raise ValueError(f"unknown packages {sorted(unknown)}; choose from {', '.join(PACKAGE_FILES)}")


def _add_packages(root: Path, seed: int, packages, write: Callable[..., Path]) -> None:
    """The stand-in files of ``packages`` (PACKAGE_FILES) and a dpkg status file that lists them as installed."""
    stanzas = []
    for name in sorted(packages):
        for rel in PACKAGE_FILES[name]:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            executable = "/bin/" in f"/{rel}" or "/sbin/" in f"/{rel}"
            write(rel, _pseudo_bytes(seed, "package:" + rel, 512), 0o755 if executable else 0o644)
        stanzas.append(f"Package: {name}\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1.0-pifleet\n")
    (root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    write("var/lib/dpkg/status", "\n".join(stanzas))


def _add_special_files(root: Path, seed: int, write: Callable[..., Path]) -> None:
    """setuid/setgid, file capabilities, device nodes, a FIFO, a sparse file, a non-ASCII name."""
    write("usr/bin/passwd", _pseudo_bytes(seed, "passwd", 4096), 0o4755)
    write("usr/bin/crontab", _pseudo_bytes(seed, "crontab", 4096), 0o2755, 0, 102)
    ping = write("usr/bin/ping", _pseudo_bytes(seed, "ping", 4096), 0o755)
    os.setxattr(ping, "security.capability", CAP_NET_RAW_XATTR)

    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(root / "dev/null", 0o666)
    os.mknod(root / "dev/sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
    os.chown(root / "dev/sda", 0, 6)
    os.chmod(root / "dev/sda", 0o660)
    os.mkfifo(root / "var/lib/fifo", 0o644)

    # 8 MiB apparent, 8 KiB of data: a copy without hole support inflates it.
    with open(root / "var/lib/sparse/big.bin", "wb") as fh:
        fh.write(_pseudo_bytes(seed, "sparse-head", 4096))
        fh.seek(8 * MIB - 4096)
        fh.write(_pseudo_bytes(seed, "sparse-tail", 4096))
    os.chmod(root / "var/lib/sparse/big.bin", 0o644)

    write("home/pi/Café-ñ-日本.txt", "non-ASCII file name\n", 0o644, 1000, 1000)


def _add_etc(root: Path, seed: int, disk_id: str, write: Callable[..., Path]) -> None:
    """Identity, fstab, SSH host keys and first-boot bits that a golden-image copy must keep."""
    write(
        "etc/fstab",
        (
            "# Generated by pifleet piimage.py\n"
            "proc            /proc           proc    defaults          0       0\n"
            f"PARTUUID={disk_id}-01  /boot/firmware  vfat    defaults          0       2\n"
            f"PARTUUID={disk_id}-02  /               ext4    defaults,noatime  0       1\n"
        ),
    )
    hostname = write("etc/hostname", "raspberrypi\n")
    os.setxattr(hostname, "user.pifleet", b"golden")
    write("etc/hosts", "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\traspberrypi\n")
    write("etc/machine-id", hashlib.sha256(f"pifleet-machine-id:{seed}".encode()).hexdigest()[:32] + "\n", 0o444)
    for kind, nbytes in (("ed25519", 300), ("rsa", 1800)):
        priv, pub = _fake_pem(seed, kind, nbytes)
        write(f"etc/ssh/ssh_host_{kind}_key", priv, 0o600)
        write(f"etc/ssh/ssh_host_{kind}_key.pub", pub, 0o644)
    write("etc/init.d/resize2fs_once", RESIZE2FS_ONCE, 0o755)
    os.symlink(
        "/lib/systemd/system/resize2fs_once.service",
        root / "etc/systemd/system/multi-user.target.wants/resize2fs_once.service",
    )
    write("etc/dphys-swapfile", "# /etc/dphys-swapfile\nCONF_SWAPSIZE=100\n")
    write("etc/os-release", OS_RELEASE)


def _describe_tree(root: Path) -> list[dict]:
    """Entry-by-entry expectation, taken under fakeroot so the faked owners/modes/xattrs are seen."""
    entries: list[dict] = []
    groups: dict[tuple[int, int], int] = {}
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        paths += [base / n for n in sorted(dirnames + filenames)]
    for p in sorted(paths, key=lambda q: q.relative_to(root).as_posix()):
        st = os.lstat(p)
        fmt = stat.S_IFMT(st.st_mode)
        kind = {
            stat.S_IFREG: "file",
            stat.S_IFDIR: "dir",
            stat.S_IFLNK: "symlink",
            stat.S_IFCHR: "char",
            stat.S_IFBLK: "block",
            stat.S_IFIFO: "fifo",
        }[fmt]
        xattrs: dict[str, str] = {}
        if kind != "symlink":  # Linux allows no user xattrs on symlinks; skip the noise
            for name in sorted(os.listxattr(p, follow_symlinks=False)):
                xattrs[name] = os.getxattr(p, name, follow_symlinks=False).hex()
        group = None
        if kind == "file" and st.st_nlink > 1:
            group = groups.setdefault((st.st_dev, st.st_ino), len(groups))
        entries.append(
            {
                "path": p.relative_to(root).as_posix(),
                "type": kind,
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mode": st.st_mode & 0o7777,
                "size": st.st_size if kind == "file" else None,
                "target": os.readlink(p) if kind == "symlink" else None,
                "rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)] if kind in ("char", "block") else None,
                "xattrs": xattrs,
                "inode_group": group,
            }
        )
    return entries


def _mkroot(spec_path: str) -> int:
    """Hidden subcommand run under fakeroot: build the tree, record expectations, run mke2fs."""
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["tree"])
    _make_root_tree(root, spec)
    expect = _describe_tree(root)
    Path(spec["expect_path"]).write_text(json.dumps(expect, ensure_ascii=False))
    if spec.get("image"):
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames + [""]:
                os.utime(os.path.join(dirpath, n), (EPOCH, EPOCH), follow_symlinks=False)
        env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(EPOCH))
        _run(
            [
                "mke2fs",
                "-q",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-L",
                "rootfs",
                "-U",
                spec["fs_uuid"],
                "-E",
                f"offset={spec['offset']},nodiscard,assume_storage_prezeroed=1,hash_seed={spec['fs_uuid']}",
                "-d",
                str(root),
                "-F",
                spec["image"],
                f"{spec['size'] // 1024}k",
            ],
            env=env,
        )
        _pin_ctimes(spec["image"], spec["offset"], expect, env)
    return 0


def _pin_ctimes(image: str, offset: int, expect: list[dict], env: dict[str, str]) -> None:
    """Set every inode's ctime to EPOCH so the image is byte-identical across runs.

    mke2fs -d copies st_ctime from the tree, which nobody can set; debugfs can. mke2fs -d allocates
    inodes in order: the root (2), lost+found (11), then one per distinct tree inode from 12 on.
    """
    distinct = sum(1 for e in expect if e["inode_group"] is None) + len(
        {e["inode_group"] for e in expect if e["inode_group"] is not None}
    )
    inodes = [2, 11, *range(12, 12 + distinct)]
    cmds = Path(image).with_name("pin-ctimes.debugfs")
    cmds.write_text("".join(f"sif <{ino}> ctime @{EPOCH}\n" for ino in inodes))
    try:
        _run(["debugfs", "-w", "-f", str(cmds), f"{image}?offset={offset}"], env=env)
    finally:
        cmds.unlink()


# --------------------------------------------------------------------------- image assembly


def _write_table(img: Path, *, gpt: bool, disk_id: str, seed: int, parts: list[tuple[int, int, str]]) -> None:
    lines = [f"label: {'gpt' if gpt else 'dos'}"]
    lines.append(f"label-id: {_uuid(seed, 'gpt-disk').upper()}" if gpt else f"label-id: 0x{disk_id}")
    lines += ["unit: sectors", "sector-size: 512", ""]
    for i, (start, size, ptype) in enumerate(parts, 1):
        extra = f", uuid={_uuid(seed, f'gpt-part{i}').upper()}" if gpt else ""
        lines.append(f"start={start // SECTOR}, size={size // SECTOR}, type={ptype}{extra}")
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(img)], input_text="\n".join(lines) + "\n")


def _root_content_bytes(profile: str, root_files: int, root_mb: int) -> int:
    return 16 * MIB + (root_mb * 1000 * 1000 if profile == "realistic" else 0)


def _build_disk(
    raw: Path,
    work: Path,
    *,
    models: tuple[int, ...],
    profile: str,
    variant: str,
    seed: int,
    root_files: int,
    root_mb: int,
    image_mb: int | None,
    tree_out: Path | None,
    packages: tuple[str, ...] = DEFAULT_PACKAGES,
) -> dict:
    disk_id = _disk_id(seed)
    boot_offset = BOOT_START_SECTOR * SECTOR
    boot_size = (512 if profile == "realistic" else 64) * MIB
    root_offset = _align_up(boot_offset + boot_size, ALIGN)
    if profile == "realistic":
        content = _root_content_bytes(profile, root_files, root_mb)
        root_size = _align_up(int(content * 1.3) + 64 * MIB, ALIGN)
    else:
        root_size = 48 * MIB
    root_end = root_offset + root_size
    gpt = variant == "gpt"
    # GPT keeps a backup header in the last 33 sectors, so leave room after partition 2.
    size = root_end + (MIB if gpt else 0)
    if image_mb:
        size = max(size, image_mb * MIB)
    table_root_size = root_size + (64 * MIB if variant == "past-end" else 0)
    table_size = max(size, root_offset + table_root_size + (MIB if gpt else 0))

    with open(raw, "wb") as fh:
        fh.truncate(table_size)  # sparse; partitions are written in place below
    types = (GPT_MS_BASIC_DATA, GPT_LINUX_FS) if gpt else ("83" if variant == "no-fat" else "c", "83")
    _write_table(
        raw,
        gpt=gpt,
        disk_id=disk_id,
        seed=seed,
        parts=[(boot_offset, boot_size, types[0]), (root_offset, table_root_size, types[1])],
    )

    boot_files: dict[str, str] = {}
    if variant != "no-fat":
        files = boot_file_contents(models, profile, seed, disk_id)
        fat = _build_fat(files, work, boot_size, seed)
        _copy_sparse(fat, raw, boot_offset)
        fat.unlink()
        boot_files = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}

    tree = tree_out if tree_out else work / "rootfs"
    if tree_out and tree_out.exists():
        shutil.rmtree(tree_out)
    expect_path = work / "expect.json"
    spec = {
        "tree": str(tree.resolve()),
        "seed": seed,
        "disk_id": disk_id,
        "profile": profile,
        "root_files": root_files,
        "bulk_bytes": root_mb * 1000 * 1000,
        "expect_path": str(expect_path),
        "image": str(raw.resolve()),
        "offset": root_offset,
        "size": root_size,
        "fs_uuid": _uuid(seed, "rootfs"),
        "packages": sorted(packages),
    }
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    # Tree + mke2fs in ONE fakeroot session: the faked owners/devices/xattrs live only in its daemon.
    _run(["fakeroot", "--", sys.executable, str(Path(__file__).resolve()), "_mkroot", str(spec_path)])
    expect = json.loads(expect_path.read_text())
    if tree_out:
        Path(f"{tree_out}.expect.json").write_text(json.dumps(expect, indent=1, ensure_ascii=False) + "\n")
        Path(f"{tree_out}.boot.json").write_text(json.dumps(boot_files, indent=1) + "\n")
    else:
        shutil.rmtree(tree)

    if table_size != size:
        os.truncate(raw, size)  # past-end: the table now describes more than the file holds
    return {
        "disk_id": disk_id,
        "boot_offset": boot_offset,
        "boot_size": boot_size,
        "root_offset": root_offset,
        "root_size": table_root_size,
        "boot_files": boot_files,
        "expect": expect,
    }


def build_image(
    out: str | Path,
    *,
    models=(3, 4, 5),
    profile: str = "tiny",
    variant: str = "good",
    xz: bool | None = None,
    seed: int = 1,
    root_files: int | None = None,
    root_mb: int | None = None,
    image_mb: int | None = None,
    tree_out: str | Path | None = None,
    packages=DEFAULT_PACKAGES,
) -> dict:
    """Build one test image at `out` (+ `out`.sha256 sidecar) and describe it.

    `packages` (names of PACKAGE_FILES) are the stand-in packages its root has: nfs-common by default.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    models = tuple(sorted({int(m) for m in models}))
    _check_packages(packages)
    if not set(models) <= {3, 4, 5}:
        raise ValueError(f"models must be a subset of 3,4,5, got {models}")
    out = Path(out)
    if xz is None:
        xz = out.name.endswith(".xz")
    root_files = 20000 if root_files is None else root_files
    root_mb = 600 if root_mb is None else root_mb
    out.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the output: final rename is atomic and big temps land on the same disk.
    work = Path(tempfile.mkdtemp(prefix=".piimage-", dir=out.parent))
    try:
        raw = work / "disk.img"
        info: dict = {
            "disk_id": None,
            "boot_offset": None,
            "boot_size": None,
            "root_offset": None,
            "root_size": None,
            "boot_files": {},
            "expect": None,
        }
        if variant == "empty":
            raw.write_bytes(b"")
        elif variant == "random":
            # No 0x55AA anywhere, so nothing can mistake it for a boot sector.
            raw.write_bytes(_pseudo_bytes(seed, "random-variant", 4 * MIB).replace(b"\x55\xaa", b"\x55\xab"))
        else:
            info = _build_disk(
                raw,
                work,
                models=models,
                profile=profile,
                variant=variant,
                seed=seed,
                root_files=root_files,
                root_mb=root_mb,
                image_mb=image_mb,
                tree_out=Path(tree_out) if tree_out else None,
                packages=tuple(packages),
            )
        final = raw
        if xz:
            final = work / "disk.img.xz"
            with open(final, "wb") as fh:
                proc = subprocess.run(
                    ["xz", "-T0", "-1", "-c", str(raw)], stdout=fh, stderr=subprocess.PIPE, check=False
                )
            if proc.returncode != 0:
                raise RuntimeError(f"xz failed (rc={proc.returncode}):\n{proc.stderr.decode(errors='replace')}")
            raw.unlink()
        if variant == "truncated":
            os.truncate(final, final.stat().st_size // 2)
        digest = "sha256:" + _sha256_file(final)
        if variant == "bad-checksum":
            # Well-formed but wrong: the hash of something else.
            digest = "sha256:" + hashlib.sha256(b"not-the-image" + digest.encode()).hexdigest()
        os.replace(final, out)
        Path(f"{out}.sha256").write_text(digest + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"path": str(out), "sha256": digest, **info}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_mkroot"]:
        return _mkroot(argv[1])
    ap = argparse.ArgumentParser(description="Build a Raspberry Pi OS-like test disk image (no root needed).")
    ap.add_argument("--out", required=True, help="output path (.xz suffix implies --xz)")
    ap.add_argument("--models", default="3,4,5", help="comma-separated Pi models among 3,4,5")
    ap.add_argument("--profile", choices=PROFILES, default="tiny")
    ap.add_argument("--variant", choices=VARIANTS, default="good")
    ap.add_argument("--xz", action="store_true", default=None, help="compress with xz -T0 -1")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--root-files", type=int, default=None, help="bulk file count (realistic; default 20000)")
    ap.add_argument("--root-mb", type=int, default=None, help="bulk content in MB (realistic; default 600)")
    ap.add_argument("--image-mb", type=int, default=None, help="grow the image (sparse tail) to this size")
    ap.add_argument("--tree-out", default=None, help="also keep the root source tree here (+ .expect/.boot.json)")
    ap.add_argument("--packages", default=",".join(DEFAULT_PACKAGES),
                    help=f"comma-separated stand-in packages of the root, among {','.join(PACKAGE_FILES)}")
    args = ap.parse_args(argv)
    result = build_image(
        args.out,
        models=[int(m) for m in args.models.split(",") if m.strip()],
        profile=args.profile,
        variant=args.variant,
        xz=args.xz,
        seed=args.seed,
        root_files=args.root_files,
        root_mb=args.root_mb,
        image_mb=args.image_mb,
        tree_out=args.tree_out,
        packages=[p for p in args.packages.split(",") if p.strip()],
    )
    result.pop("expect", None)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
