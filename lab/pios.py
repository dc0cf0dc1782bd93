# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Raspberry Pi OS pieces of the real images (lab/realimage.py): what a Raspberry Pi OS image
carries and a root on NFS must lose or change, each written so that it breaks a netbooted Pi when
left alone (docs/real-boot.md lists them with the fix that each boot proves).

Text only, and the function that writes it into a root tree: no packages, no qemu.
"""

from __future__ import annotations

import re
import shutil

from lab import piimage

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


def pi_os_pieces(root, disk_id, cloud_init):
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
    if cloud_init:
        _write(root, 'etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg', CLOUD_CFG)
    for stale in (root / 'boot/firmware').iterdir():  # raspi-firmware's hooks filled it: the FAT has these
        shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()


def boot_text(kernel, initramfs, disk_id, cloud_init):
    """The text files of the boot partition: config.txt, cmdline.txt and, with cloud-init, the NoCloud seed."""
    files = {'config.txt': CONFIG_TXT.format(kernel=kernel, initramfs=initramfs).encode(),
             'cmdline.txt': CMDLINE_TXT.format(disk_id=disk_id).encode()}
    if cloud_init:
        files.update({'meta-data': SEED_META_DATA.encode(), 'user-data': SEED_USER_DATA.encode(),
                      'network-config': SEED_NETWORK_CONFIG.encode()})
    return files


def recipe(cloud_init):
    """Every text above that goes into an image, for the image's recipe hash."""
    parts = [GOLDEN_MACHINE_ID, CONFIG_TXT, CMDLINE_TXT, FSTAB, FIRSTBOOT, DPHYS_SWAPFILE, DPHYS_UNIT,
             REGENERATE_KEYS_UNIT, USERCONFIG_UNIT, USERCONFIG_SERVICE, piimage.RESIZE2FS_ONCE]
    if cloud_init:
        parts += [CLOUD_CFG, SEED_META_DATA, SEED_USER_DATA, SEED_NETWORK_CONFIG]
    return '\n\0'.join(parts)
