# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real Raspberry Pi OS-like arm64 images that boot: Debian built with mmdebstrap, cached by recipe.

    python3 -m lab.realimage build --flavour bookworm|trixie [--cache DIR] [--mirror URL]
    python3 -m lab.realimage show --flavour bookworm|trixie [--cache DIR]

Two flavours, both packaged like a Raspberry Pi OS image (piimage.py's MBR + FAT ``bootfs`` +
ext4 ``rootfs``):

- ``bookworm``: Debian 12 with dhcpcd, like Raspberry Pi OS before NetworkManager;
- ``trixie``: Debian 13 with cloud-init, netplan.io and NetworkManager, and NoCloud ``meta-data``,
  ``user-data`` and ``network-config`` on the boot partition, like Raspberry Pi OS of October 2025.

Both carry the Raspberry Pi OS pieces that a root must lose or change to live on NFS, so that a
boot proves each fix: PARTUUID lines in ``/etc/fstab`` and ``cmdline.txt`` (with
``init=/usr/lib/raspberrypi-sys-mods/firstboot``), the ``resize2fs_once`` init script, a
``dphys-swapfile`` service, the ``userconfig`` first-boot dialog, the
``regenerate_ssh_host_keys`` unit, ssh disabled, golden SSH host keys and machine-id, ``eth0``
naming (``99-default.link`` masked). The kernel is Debian's ``linux-image-arm64`` with a small
initramfs (``MODULES=list``: virtio and the Pi NICs, NFS); ``config.txt`` names it with
``kernel=`` and ``initramfs … followkernel``; the firmware comes from Debian's raspi-firmware.

The image goes to ``<cache>/<flavour>-<recipe hash>.img`` (sparse) with a ``.json`` beside it
(kernel, initramfs, disk id, build time); the cache defaults to ``/var/cache/pifleet/realimage``
(``PIFLEET_IMAGE_CACHE``), outside any checkout, so every run on the machine reuses it until the
recipe below changes. Root only (mmdebstrap --mode=root); needs mmdebstrap, qemu-user-static,
binfmt-support and arch-test (the arm64 maintainer scripts run under qemu-user).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab import piimage
from lab.nspawnlab import host_mirror

RECIPE_VERSION = 2  # bump when the packaging below changes in a way the recipe text does not show
CACHE = Path(os.environ.get('PIFLEET_IMAGE_CACHE', '/var/cache/pifleet/realimage'))
MIB = piimage.MIB
BOOT_MB = 256
COMMON_PACKAGES = (
    'systemd-sysv', 'udev', 'dbus', 'kmod', 'iproute2', 'netbase', 'openssh-server', 'nfs-common',
    'initramfs-tools', 'linux-image-arm64', 'raspi-firmware', 'e2fsprogs', 'procps', 'sudo',
)
FLAVOURS = {
    'bookworm': {'suite': 'bookworm', 'packages': ('dhcpcd5',), 'cloud_init': False,
                 'pretty': 'Debian GNU/Linux 12 (bookworm), Raspberry Pi OS-like (dhcpcd)'},
    'trixie': {'suite': 'trixie', 'packages': ('cloud-init', 'netplan.io', 'network-manager'), 'cloud_init': True,
               'pretty': 'Debian GNU/Linux 13 (trixie), Raspberry Pi OS-like (cloud-init, netplan, NetworkManager)'},
}
# Kept out of the root: documentation and driver families a netbooted test Pi never loads (the
# image shrinks by half, and so do the bakery's ingest and clone times).
EXCLUDES = (
    '/usr/share/doc/*', '/usr/share/man/*', '/usr/share/info/*', '/usr/share/locale/*', '/usr/share/lintian/*',
    # udev's hardware database: compiling it under qemu-user takes a minute per image; a test Pi needs none.
    '/usr/lib/udev/hwdb.d/*', '/lib/udev/hwdb.d/*',
    *('%s/lib/modules/*/kernel/%s/*' % (usr, part) for usr in ('', '/usr') for part in (
        'drivers/gpu', 'drivers/media', 'drivers/net/wireless', 'drivers/infiniband', 'drivers/staging',
        'drivers/scsi', 'drivers/iio', 'drivers/input/touchscreen', 'sound', 'net/mac80211', 'net/wireless',
        'net/bluetooth', 'drivers/bluetooth')),
)
# The initramfs mounts the NFS root itself (root=/dev/nfs); MODULES=list keeps it small. virtio for
# qemu, the Pi NICs (Pi 4 genet, Pi 3 smsc95xx/lan78xx) for a real Pi.
INITRAMFS_CONF = 'MODULES=list\n'
INITRAMFS_MODULES = ('virtio_pci', 'virtio_mmio', 'virtio_net', 'af_packet', 'nfs', 'nfsv3', 'broadcom',
                     'bcmgenet', 'smsc95xx', 'lan78xx')
GOLDEN_MACHINE_ID = 'c0ffee00c0ffee00c0ffee00c0ffee00'

CONFIG_TXT = """\
# For more options and information see
# http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
arm_64bit=1
disable_overscan=1
enable_uart=1
upstream_kernel=1
kernel={kernel}
initramfs {initramfs} followkernel

[cm4]
otg_mode=1

[all]
"""
CMDLINE_TXT = ('console=serial0,115200 console=tty1 root=PARTUUID={disk_id}-02 rootfstype=ext4 fsck.repair=yes '
               'rootwait init=/usr/lib/raspberrypi-sys-mods/firstboot\n')
FSTAB = """\
proc            /proc           proc    defaults          0       0
PARTUUID={disk_id}-01  /boot/firmware  vfat    defaults          0       2
PARTUUID={disk_id}-02  /               ext4    defaults,noatime  0       1
"""
# Raspberry Pi OS's first boot: grow the root partition on the SD card, then go on to systemd.
FIRSTBOOT = """\
#!/bin/sh
# Raspberry Pi OS-like first boot (init= in cmdline.txt): resize the root partition of the SD card.
mount -t proc proc /proc 2>/dev/null
ROOT_DEV=$(sed -n 's|^\\([^ ]*\\) / .*|\\1|p' /proc/mounts | tail -n 1)
case "$ROOT_DEV" in
  /dev/mmcblk*p2|/dev/sd?2) echo "firstboot: would resize $ROOT_DEV" ;;
  *) echo "firstboot: the root ($ROOT_DEV) is not partition 2 of an SD card: cannot resize it" >&2; exit 1 ;;
esac
exec /sbin/init
"""
DPHYS_SWAPFILE = """\
#!/bin/sh
# dphys-swapfile-like: a swap file of CONF_SWAPSIZE MiB at /var/swap.
CONF_SWAPSIZE=100
[ -r /etc/dphys-swapfile ] && . /etc/dphys-swapfile
case "$1" in
  setup) [ "$CONF_SWAPSIZE" -gt 0 ] || exit 0
         truncate -s "${CONF_SWAPSIZE}M" /var/swap && chmod 600 /var/swap && mkswap /var/swap ;;
  swapon) [ "$CONF_SWAPSIZE" -gt 0 ] || exit 0
          swapon /var/swap ;;
  swapoff) swapoff /var/swap 2>/dev/null; exit 0 ;;
esac
"""
DPHYS_UNIT = """\
[Unit]
Description=dphys-swapfile - set up, mount/unmount, and delete a swap file
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/dphys-swapfile setup
ExecStart=/usr/sbin/dphys-swapfile swapon
ExecStop=/usr/sbin/dphys-swapfile swapoff

[Install]
WantedBy=multi-user.target
"""
REGENERATE_KEYS_UNIT = """\
[Unit]
Description=Regenerate SSH host keys
Before=ssh.service
ConditionFileIsExecutable=/usr/bin/ssh-keygen

[Service]
Type=oneshot
ExecStartPre=-/bin/sh -c "/bin/rm -f -v /etc/ssh/ssh_host_*_key*"
ExecStart=/usr/bin/ssh-keygen -A -v
ExecStartPost=/bin/systemctl disable regenerate_ssh_host_keys

[Install]
WantedBy=multi-user.target
"""
# Raspberry Pi OS asks for a first user on a console when the image has none and userconf.txt
# is not on the boot partition; it waits for an answer, so the boot never finishes unattended.
USERCONFIG_UNIT = """\
[Unit]
Description=User configuration dialog
After=systemd-user-sessions.service
Before=getty@tty1.service

[Service]
Type=oneshot
ExecStart=/usr/lib/userconf-pi/userconf-service
StandardInput=tty
StandardOutput=tty
TTYPath=/dev/tty8

[Install]
WantedBy=multi-user.target
"""
USERCONFIG_SERVICE = """\
#!/bin/sh
# userconf-pi-like: make the first user from /boot/firmware/userconf.txt, else ask on the console.
if [ -r /boot/firmware/userconf.txt ]; then
  IFS=: read -r name hash < /boot/firmware/userconf.txt
  useradd -m -u 1000 -p "$hash" "$name" && exec systemctl disable userconfig
fi
getent passwd 1000 >/dev/null && exec systemctl disable userconfig
echo "Please enter a new user name:"
read -r name
"""
# Raspberry Pi OS-like (rpi-cloud-init-mods): NoCloud only. How an SD card's boot partition is found
# is not modelled (cloud-init 24.3 deprecates a custom fs_label); a netbooted Pi's seed is in its root.
CLOUD_CFG = """\
datasource_list: [NoCloud, None]
"""
SEED_META_DATA = 'instance-id: rpi-imager-1759400000000\n'
SEED_USER_DATA = """\
#cloud-config
# Raspberry Pi Imager-like first-boot settings
hostname: raspberrypi
manage_etc_hosts: true
users:
  - name: pi
    groups: users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo
    shell: /bin/bash
    lock_passwd: true
"""
SEED_NETWORK_CONFIG = """\
network:
  version: 2
  ethernets:
    eth0:
      dhcp4: true
      optional: true
"""


def log(message, flavour=None):
    print('realimage%s: %s' % (' ' + flavour if flavour else '', message), flush=True)


def recipe(flavour):
    """Everything that decides the image's content, as text: its hash names the cached image."""
    spec = FLAVOURS[flavour]
    parts = [str(RECIPE_VERSION), flavour, json.dumps(spec, sort_keys=True), ' '.join(COMMON_PACKAGES),
             ' '.join(EXCLUDES), INITRAMFS_CONF, ' '.join(INITRAMFS_MODULES), GOLDEN_MACHINE_ID, CONFIG_TXT,
             CMDLINE_TXT, FSTAB, FIRSTBOOT, DPHYS_SWAPFILE, DPHYS_UNIT, REGENERATE_KEYS_UNIT, USERCONFIG_UNIT,
             USERCONFIG_SERVICE, str(BOOT_MB)]
    if spec['cloud_init']:
        parts += [CLOUD_CFG, SEED_META_DATA, SEED_USER_DATA, SEED_NETWORK_CONFIG]
    return '\n\0'.join(parts)


def recipe_hash(flavour):
    return hashlib.sha256(recipe(flavour).encode()).hexdigest()[:12]


def image_path(flavour, cache=CACHE):
    return Path(cache) / ('%s-%s.img' % (flavour, recipe_hash(flavour)))


def cached(flavour, cache=CACHE):
    """The image's description (with ``path``) when it is in the cache, else None."""
    path = image_path(flavour, cache)
    info = path.with_suffix('.json')
    if path.is_file() and info.is_file():
        return dict(json.loads(info.read_text()), path=str(path))
    return None


# --------------------------------------------------------------------------- the machine


def ensure_binfmt():
    """arm64 maintainer scripts run through qemu-user: binfmt_misc mounted, qemu-aarch64 enabled."""
    binfmt = Path('/proc/sys/fs/binfmt_misc')
    if not (binfmt / 'status').exists():
        proc = subprocess.run(['mount', '-t', 'binfmt_misc', 'binfmt_misc', str(binfmt)], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0 and not (binfmt / 'status').exists():  # another build may have mounted it meanwhile
            raise RuntimeError('binfmt_misc is not mounted and mounting it failed (%s); run as root on a host '
                               'with binfmt_misc' % proc.stderr.strip())
    if not (binfmt / 'qemu-aarch64').exists():
        proc = subprocess.run(['update-binfmts', '--enable', 'qemu-aarch64'], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0 or not (binfmt / 'qemu-aarch64').exists():
            raise RuntimeError('cannot run arm64 programs here: update-binfmts --enable qemu-aarch64 failed (%s); '
                               'install qemu-user-static and binfmt-support' % (proc.stderr.strip() or 'no entry'))


def mmdebstrap(flavour, root, stage, mirror):
    spec = FLAVOURS[flavour]
    argv = ['mmdebstrap', '--mode=root', '--variant=minbase', '--architectures=arm64',
            '--components=main,non-free-firmware', '--include=%s' % ','.join(COMMON_PACKAGES + spec['packages']),
            '--aptopt=APT::Install-Recommends "false"',
            *('--dpkgopt=path-exclude=%s' % pattern for pattern in EXCLUDES),
            '--dpkgopt=path-include=/usr/share/locale/locale.alias',
            '--setup-hook=sync-in %s /' % stage, spec['suite'], str(root), mirror]
    log('mmdebstrap %s (arm64) from %s: takes minutes (maintainer scripts run under qemu-user)'
        % (spec['suite'], mirror), flavour)
    started = time.monotonic()
    lines = []
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            lines.append(line)
            # mmdebstrap's own progress ("I: ...") only: one line per step, not per package.
            if line.startswith(('I: ', 'E: ', 'W: ')):
                print('  %s %5.0fs %s' % (flavour, time.monotonic() - started, line.rstrip()), flush=True)
    if proc.returncode != 0:
        raise RuntimeError('mmdebstrap %s failed (rc %d):\n%s' % (flavour, proc.returncode, ''.join(lines[-60:])))


def stage_tree(stage):
    """Files in place before any package installs (the initramfs is made once, with these)."""
    conf = stage / 'etc/initramfs-tools/conf.d'
    conf.mkdir(parents=True)
    (conf / 'pifleet.conf').write_text(INITRAMFS_CONF)
    (stage / 'etc/initramfs-tools/modules').write_text(''.join(m + '\n' for m in INITRAMFS_MODULES))


# --------------------------------------------------------------------------- Raspberry Pi OS pieces


def _write(root, rel, text, mode=0o644):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _link(root, rel, target):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def pi_os_pieces(root, flavour, disk_id):
    """What a Raspberry Pi OS image carries and a root on NFS must lose or change (see the docstring)."""
    wants = 'etc/systemd/system/multi-user.target.wants'
    _write(root, 'etc/fstab', FSTAB.format(disk_id=disk_id))
    _write(root, 'etc/hostname', 'raspberrypi\n')
    hosts = (root / 'etc/hosts').read_text() if (root / 'etc/hosts').exists() else '127.0.0.1\tlocalhost\n'
    _write(root, 'etc/hosts', re.sub(r'(?m)^127\.0\.1\.1\s.*\n?', '', hosts) + '127.0.1.1\traspberrypi\n')
    _write(root, 'etc/machine-id', GOLDEN_MACHINE_ID + '\n', 0o444)
    _write(root, 'etc/default/locale', 'LANG=C.UTF-8\n')
    _link(root, 'etc/systemd/network/99-default.link', '/dev/null')  # eth0, not enp0s1
    (root / wants / 'ssh.service').unlink(missing_ok=True)  # ssh is off until /boot/firmware/ssh asks
    _write(root, 'usr/lib/raspberrypi-sys-mods/firstboot', FIRSTBOOT, 0o755)
    _write(root, 'etc/init.d/resize2fs_once', piimage.RESIZE2FS_ONCE, 0o755)
    _link(root, 'etc/rc3.d/S01resize2fs_once', '../init.d/resize2fs_once')
    _write(root, 'etc/dphys-swapfile', '# /etc/dphys-swapfile\nCONF_SWAPSIZE=100\n')
    _write(root, 'usr/sbin/dphys-swapfile', DPHYS_SWAPFILE, 0o755)
    for name, unit in (('dphys-swapfile', DPHYS_UNIT), ('regenerate_ssh_host_keys', REGENERATE_KEYS_UNIT),
                       ('userconfig', USERCONFIG_UNIT)):
        _write(root, 'usr/lib/systemd/system/%s.service' % name, unit)
        _link(root, '%s/%s.service' % (wants, name), '/usr/lib/systemd/system/%s.service' % name)
    _write(root, 'usr/lib/userconf-pi/userconf-service', USERCONFIG_SERVICE, 0o755)
    if FLAVOURS[flavour]['cloud_init']:
        _write(root, 'etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg', CLOUD_CFG)
    for stale in (root / 'boot/firmware').iterdir():  # raspi-firmware's hooks filled it: the FAT has these
        shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()


def boot_files(root, flavour, disk_id):
    """{path on the FAT: bytes}: firmware, device trees, kernel, initramfs, config.txt, cmdline.txt."""
    kernels = sorted((root / 'boot').glob('vmlinuz-*'))
    if len(kernels) != 1:
        raise RuntimeError('expected one kernel in %s/boot, found %s' % (root, [k.name for k in kernels]))
    kernel = kernels[0].name
    version = kernel[len('vmlinuz-'):]
    initramfs = 'initrd.img-' + version
    files = {name.name: name.read_bytes() for name in sorted((root / 'usr/lib/raspi-firmware').glob('*'))
             if name.is_file() and name.suffix in ('.bin', '.elf', '.dat')}
    for dtb in sorted((root / ('usr/lib/linux-image-' + version) / 'broadcom').glob('bcm2*-rpi-*.dtb')):
        files[dtb.name] = dtb.read_bytes()
    files[kernel] = (root / 'boot' / kernel).read_bytes()
    files[initramfs] = (root / 'boot' / initramfs).read_bytes()
    files['config.txt'] = CONFIG_TXT.format(kernel=kernel, initramfs=initramfs).encode()
    files['cmdline.txt'] = CMDLINE_TXT.format(disk_id=disk_id).encode()
    if FLAVOURS[flavour]['cloud_init']:
        files.update({'meta-data': SEED_META_DATA.encode(), 'user-data': SEED_USER_DATA.encode(),
                      'network-config': SEED_NETWORK_CONFIG.encode()})
    return files, {'kernel': kernel, 'initramfs': initramfs, 'kernel_version': version}


def tree_bytes(root):
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def pack(root, files, out, *, work, disk_id, seed):
    """MBR + FAT32 bootfs + ext4 rootfs (mke2fs -d straight into the image), Raspberry Pi OS layout."""
    boot_offset = piimage.BOOT_START_SECTOR * piimage.SECTOR
    boot_size = BOOT_MB * MIB
    root_offset = piimage._align_up(boot_offset + boot_size, piimage.ALIGN)
    root_size = piimage._align_up(int(tree_bytes(root) * 1.25) + 256 * MIB, piimage.ALIGN)
    with open(out, 'wb') as handle:
        handle.truncate(root_offset + root_size)
    piimage._write_table(out, gpt=False, disk_id=disk_id, seed=seed,
                         parts=[(boot_offset, boot_size, 'c'), (root_offset, root_size, '83')])
    fat = piimage._build_fat(files, work, boot_size, seed)
    piimage._copy_sparse(fat, out, boot_offset)
    fat.unlink()
    piimage._run(['mke2fs', '-q', '-t', 'ext4', '-b', '4096', '-L', 'rootfs', '-E',
                  'offset=%d,nodiscard,assume_storage_prezeroed=1' % root_offset, '-d', str(root), '-F', str(out),
                  '%dk' % (root_size // 1024)])
    return {'boot_offset': boot_offset, 'boot_size': boot_size, 'root_offset': root_offset, 'root_size': root_size}


def build(flavour, cache=CACHE, mirror=None):
    """The cached image of ``flavour`` (its description with ``path``), built first when missing."""
    if flavour not in FLAVOURS:
        raise ValueError('unknown flavour %r; choose from %s' % (flavour, ', '.join(FLAVOURS)))
    found = cached(flavour, cache)
    if found:
        log('image %s (cached)' % found['path'], flavour)
        return found
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ('.lock-%s' % flavour), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of the same flavour finishes first
        found = cached(flavour, cache)
        if found:
            return found
        for stale in cache.glob('.build-%s-*' % flavour):  # scratch dirs of killed builds (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        ensure_binfmt()
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix='.build-%s-' % flavour, dir=cache))
        try:
            digest = recipe_hash(flavour)
            seed = int(digest, 16)
            disk_id = piimage._disk_id(seed)
            stage, root = work / 'stage', work / 'root'
            stage_tree(stage)
            mirror = mirror or host_mirror()
            mmdebstrap(flavour, root, stage, mirror)
            built = time.monotonic() - started
            pi_os_pieces(root, flavour, disk_id)
            files, kernel = boot_files(root, flavour, disk_id)
            log('packing: kernel %s, %d boot files, root %.0f MiB' % (
                kernel['kernel'], len(files), tree_bytes(root) / MIB), flavour)
            out = work / 'image.img'
            layout = pack(root, files, out, work=work, disk_id=disk_id, seed=seed)
            info = {'flavour': flavour, 'recipe': digest, 'suite': FLAVOURS[flavour]['suite'],
                    'pretty': FLAVOURS[flavour]['pretty'], 'mirror': mirror, 'disk_id': disk_id, **kernel,
                    **layout, 'boot_files': sorted(files), 'image_bytes': out.stat().st_size,
                    'mmdebstrap_seconds': round(built, 1), 'build_seconds': round(time.monotonic() - started, 1)}
            dest = image_path(flavour, cache)
            os.replace(out, dest)
            dest.with_suffix('.json').write_text(json.dumps(info, indent=1, sort_keys=True) + '\n')
            for old in cache.glob('%s-*.img' % flavour):  # earlier recipes' images: the cache holds one per flavour
                if old != dest:
                    old.unlink(missing_ok=True)
                    old.with_suffix('.json').unlink(missing_ok=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log('image %s built in %.0f s' % (dest, info['build_seconds']), flavour)
    return dict(info, path=str(dest))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('command', choices=('build', 'show'))
    parser.add_argument('--flavour', choices=sorted(FLAVOURS), required=True)
    parser.add_argument('--cache', default=str(CACHE), help='cache directory (default %(default)s)')
    parser.add_argument('--mirror', default=None, help="Debian mirror (default: the host's)")
    args = parser.parse_args(argv)
    if args.command == 'show':
        found = cached(args.flavour, args.cache)
        print(json.dumps(found, indent=1, sort_keys=True) if found else 'not built: %s' % image_path(
            args.flavour, args.cache))
        return 0 if found else 1
    if os.geteuid() != 0:
        parser.error('must run as root (mmdebstrap --mode=root)')
    print(json.dumps(build(args.flavour, args.cache, args.mirror), indent=1, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
