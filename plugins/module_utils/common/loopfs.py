# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File systems of their own: ext4 image files, loop-mounted, and the systemd units that mount them at boot.

Why: an NFS server turns a file handle into a file by (file system, inode). Ganesha and kernel nfsd
both refuse a handle naming a file system the client's export does not cover, but neither can stop a
forged inode number *within* the exported file system. So everything a Pi may reach lives on a file
system that holds nothing else (its root, its disks), and a forged handle reaches only the Pi's own
files (SECURITY.md has the argument and the test). These helpers make, clone, mount and persist
such file systems; external tools run through one ``run(argv)`` callable. No AnsibleModule here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import struct
import uuid

from ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic import libc as _libc
from ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic import read_mounts
from ansible_collections.pifleet.netboot.plugins.module_utils.common.extuuid import (
    INCOMPAT_CSUM_SEED,
    MAGIC,
    RO_COMPAT_METADATA_CSUM,
    SUPERBLOCK,
)

# Mounted on the bakery without device nodes or setuid: a Pi's files are for the Pi, never for a
# local user of the bakery. The Pi itself sees its modes unchanged over NFS.
ROOT_OPTIONS = ('nosuid', 'nodev')
UNITS_DIR = '/etc/systemd/system'
WANTED_BY = 'local-fs.target'
UNIT_HEADER = '# Managed by pifleet.netboot: mounts a Pi file system at boot; removed with it'
NFS_SERVICES = ('nfs-ganesha.service', 'nfs-server.service', 'nfs-kernel-server.service')


class LoopError(Exception):
    """A file system that cannot be made, mounted or persisted; the message says which and why."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.details = details


# --------------------------------------------------------------------------- ext4 superblocks


def read_superblock(path, offset=0):
    """{'uuid', 'label', 'blocks', 'block_size', 'csum_seed', 'metadata_csum'} of an ext2/3/4 image; None otherwise."""
    try:
        with open(path, 'rb') as handle:
            handle.seek(offset + SUPERBLOCK)
            block = handle.read(1024)
    except OSError:
        return None
    if len(block) < 1024 or struct.unpack_from('<H', block, 56)[0] != MAGIC:
        return None
    blocks_lo, = struct.unpack_from('<I', block, 4)
    log_size, = struct.unpack_from('<I', block, 24)
    incompat, ro_compat = struct.unpack_from('<II', block, 96)
    blocks_hi = struct.unpack_from('<I', block, 0x150)[0] if incompat & 0x80 else 0
    return {
        'uuid': str(uuid.UUID(bytes=block[104:120])),
        'label': block[120:136].split(b'\0', 1)[0].decode('utf-8', errors='replace'),
        'blocks': blocks_lo | (blocks_hi << 32),
        'block_size': 1024 << log_size,
        'csum_seed': bool(incompat & INCOMPAT_CSUM_SEED),
        'metadata_csum': bool(ro_compat & RO_COMPAT_METADATA_CSUM),
    }


# --------------------------------------------------------------------------- mounts


def mount_at(point, mountinfo='/proc/self/mountinfo'):
    """(source, fstype) of the file system mounted exactly at ``point`` (the top one); None when none."""
    found = None
    for target, fstype, source in read_mounts(mountinfo):
        if target == point:
            found = (source, fstype)
    return found


def loop_backing(device):
    """The file behind ``/dev/loopN`` (from sysfs); None for anything else."""
    match = re.fullmatch(r'/dev/(loop[0-9]+)', device or '')
    if not match:
        return None
    try:
        with open('/sys/block/%s/loop/backing_file' % match.group(1), encoding='utf-8') as handle:
            return handle.read().rstrip('\n')
    except OSError:
        return None


def mounted_image(point, mountinfo='/proc/self/mountinfo'):
    """The image file loop-mounted at ``point`` (as the kernel names it), or None."""
    found = mount_at(point, mountinfo)
    return loop_backing(found[0]) if found else None


# Loop devices and mount(2), for attach_and_mount (linux/loop.h, sys/mount.h).
LOOP_CTL_GET_FREE, LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS64, LOOP_CONFIGURE = 0x4C82, 0x4C00, 0x4C01, 0x4C04, 0x4C0A
LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR = 1, 4
MOUNT_FLAGS = {'ro': 1, 'nosuid': 2, 'nodev': 4, 'noexec': 8, 'noatime': 1024, 'nodiratime': 2048}


def _loop_info64(image, flags):
    """struct loop_info64: device, inode, rdevice, offset, sizelimit; number, encrypt type and key size, flags;
    file name[64], crypt name[64], key[32], init[2]."""
    name = os.fsencode(image)[:63]
    return struct.pack('=5Q4I64s64s32s2Q', 0, 0, 0, 0, 0, 0, 0, 0, flags, name, b'', b'', 0, 0)


def attach_and_mount(image, point, options):
    """Attach ``image`` to a free loop device (autoclear: it goes with the unmount) and mount(2) its ext4.

    What ``mount -o loop`` does, without its cost: util-linux looks through every loop device for one
    already backed by the file, and a bakery has one per Pi and per Pi's disks (with 1000 Pis, most of
    a fleet run went there). That look has a purpose: a file system still mounted through another loop
    device (an NFS server's private mount namespace keeps it after we unmount) must never be mounted
    through a second one. Here the loop devices are read once per process (``attached_loops``) and
    kept up to date with what this process attaches; an image that is still attached raises
    FileExistsError, and Mounter leaves it to mount(8), which mounts the same device again.
    Raises OSError; a loop device it attached is detached again.
    """
    flags = sum(MOUNT_FLAGS.get(option, 0) for option in options)
    data = ','.join(option for option in options if option not in MOUNT_FLAGS)
    readonly = 'ro' in options
    backing = os.open(image, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
    try:
        key = _file_key(os.fstat(backing))
        known = attached_loops().get(key)
        if known and _backed_by(known) == key:
            raise OSError(errno.EEXIST, '%s is still attached to %s' % (image, known))
        control = os.open('/dev/loop-control', os.O_RDWR | os.O_CLOEXEC)
        try:
            device, loop = _attach(control, backing, image, readonly)
        finally:
            os.close(control)
        _LOOPS[key] = device
    finally:
        os.close(backing)
    try:
        if _libc().mount(device.encode(), os.fsencode(point), b'ext4', flags, data.encode() or None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, '%s (%s of %s)' % (os.strerror(code), device, image))
    except OSError:
        fcntl.ioctl(loop, LOOP_CLR_FD, 0)
        raise
    finally:
        os.close(loop)


_LOOPS = {}  # (st_dev, st_ino) of a backing file -> /dev/loopN; read once, then kept by attach_and_mount
_LOOPS_READ = []


def _file_key(stat):
    return stat.st_dev, stat.st_ino


def _backed_by(device, sysfs='/sys/block'):
    """(st_dev, st_ino) of the file behind ``/dev/loopN`` now; None when it is detached or the file is gone."""
    try:
        with open(os.path.join(sysfs, os.path.basename(device), 'loop', 'backing_file'), encoding='utf-8') as handle:
            return _file_key(os.stat(handle.read().rstrip('\n')))
    except (OSError, ValueError):
        return None


def attached_loops(sysfs='/sys/block'):
    """{(st_dev, st_ino) of a backing file: /dev/loopN} of the loop devices attached when first asked."""
    if not _LOOPS_READ:
        for name in os.listdir(sysfs) if os.path.isdir(sysfs) else []:
            if name.startswith('loop'):
                key = _backed_by(name, sysfs)
                if key:
                    _LOOPS.setdefault(key, '/dev/' + name)
        _LOOPS_READ.append(True)
    return _LOOPS


def _attach(control, backing, image, readonly):
    """A free loop device backed by the open file ``backing``: (its path, an open fd of it)."""
    flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if readonly else 0)
    for _attempt in range(20):  # another process may take the free device first: ask again
        device = '/dev/loop%d' % fcntl.ioctl(control, LOOP_CTL_GET_FREE)
        loop = os.open(device, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        try:
            try:
                config = struct.pack('=II', backing, 0) + _loop_info64(image, flags) + bytes(64)
                fcntl.ioctl(loop, LOOP_CONFIGURE, config)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOTTY):  # a kernel before 5.8 has no LOOP_CONFIGURE
                    raise
                _attach_in_two_steps(loop, backing, _loop_info64(image, flags))
            return device, loop
        except OSError as exc:
            os.close(loop)
            if exc.errno != errno.EBUSY:
                raise
    raise OSError(errno.EBUSY, 'no free loop device stayed free for %s' % image)


def _attach_in_two_steps(loop, backing, info):
    """LOOP_SET_FD, then LOOP_SET_STATUS64 (autoclear, read-only): what LOOP_CONFIGURE does at once.

    Between the two the device is attached without autoclear: if the second fails, it is detached
    again here, or it would stay attached (and hold the image) after every unmount, for good.
    """
    fcntl.ioctl(loop, LOOP_SET_FD, backing)
    try:
        fcntl.ioctl(loop, LOOP_SET_STATUS64, info)
    except OSError:
        with contextlib.suppress(OSError):
            fcntl.ioctl(loop, LOOP_CLR_FD, 0)
        raise


MNT_DETACH, UMOUNT_NOFOLLOW = 2, 8  # sys/mount.h


def _umount_here(point):
    """umount2(2) of ``point``, lazily when busy; False when it could not (left to umount(8))."""
    for flags in (UMOUNT_NOFOLLOW, UMOUNT_NOFOLLOW | MNT_DETACH):
        if _libc().umount2(os.fsencode(point), flags) == 0:
            return True
        if ctypes.get_errno() != errno.EBUSY:
            return False
    return False


class Mounter:
    """mount/umount through ``run(argv)`` (util-linux), with messages that say what to do."""

    def __init__(self, run, which):
        self.run = run
        self.which = which  # which(name, required) -> path

    def mount(self, image, point, options, what):
        """Attach and mount(2) here (attach_and_mount); mount(8) when that cannot be done, with its words."""
        if os.geteuid() == 0:
            try:
                attach_and_mount(image, point, options)
                return
            except OSError:
                pass  # mount(8) tries again and says why in its own words (and the hint below)
        opts = ','.join(('loop', *options))
        rc, out, err = self.run([self.which('mount', True), '-t', 'ext4', '-o', opts, '--', image, point])
        if rc != 0:
            text = (err or out).strip()
            hint = ''
            if 'loop' in text.lower() or not os.path.exists('/dev/loop-control'):
                hint = ('; this host (or container) has no usable loop devices: pifleet keeps each Pi on a file '
                        'system of its own and needs them (in a container, pass /dev/loop-control and /dev/loopN)')
            raise LoopError('mounting %s at %s for %s failed: %s%s' % (image, point, what, text, hint),
                            rc=rc, stderr=err)

    def umount(self, point, what):
        """Unmount ``point``; a file system the NFS server still holds is detached lazily (it goes once released).

        As root, umount2(2) in this process (a first run unmounts a scratch mount per new root: a umount(8) each,
        which reads all of mountinfo, was a thousand processes at 1000 Pis); never through a symlink. Anything
        else it refuses goes to umount(8), which tries again and says why in its own words."""
        if os.geteuid() == 0 and _umount_here(point):
            return
        umount = self.which('umount', True)
        rc, out, err = self.run([umount, '--', point])
        if rc != 0:
            rc, out, err = self.run([umount, '--lazy', '--', point])
        if rc != 0:
            raise LoopError('unmounting %s (%s) failed: %s' % (point, what, (err or out).strip()), rc=rc, stderr=err)


# --------------------------------------------------------------------------- systemd mount units


def unit_name(point):
    """The mount unit systemd names after ``point`` (systemd-escape --path --suffix=mount)."""
    path = '/'.join(part for part in point.split('/') if part not in ('', '.'))  # systemd simplifies // and /./
    if not path:
        return '-.mount'
    out = []
    for index, char in enumerate(path):
        if char == '/':
            out.append('-')
        elif char.isascii() and (char.isalnum() or char in ':_' or (char == '.' and index > 0)):
            out.append(char)
        else:
            out.extend('\\x%02x' % byte for byte in char.encode('utf-8'))
    return ''.join(out) + '.mount'


def unit_text(image, point, options, description):
    return '\n'.join((
        UNIT_HEADER,
        '[Unit]',
        'Description=%s' % description,
        'RequiresMountsFor=%s' % os.path.dirname(image),
        'Before=%s' % ' '.join(NFS_SERVICES),
        '',
        '[Mount]',
        'What=%s' % image,
        'Where=%s' % point,
        'Type=ext4',
        'Options=%s' % ','.join(('loop', *options)),
        '',
        '[Install]',
        'WantedBy=%s' % WANTED_BY,
        '',
    ))


class Units:
    """Mount units in ``units_dir`` (enabled by the same symlink ``systemctl enable`` makes)."""

    def __init__(self, units_dir=UNITS_DIR):
        self.dir = units_dir
        self.changed = False

    def _paths(self, point):
        name = unit_name(point)
        return (os.path.join(self.dir, name),
                os.path.join(self.dir, '%s.wants' % WANTED_BY, name))

    def current(self, point):
        path, link = self._paths(point)
        try:
            with open(path, encoding='utf-8') as handle:
                text = handle.read()
        except FileNotFoundError:
            text = None
        return text, os.path.islink(link) and os.readlink(link) == path

    def wanted(self, point, text):
        """True when the unit for ``point`` already has this text and is enabled."""
        return self.current(point) == (text, True)

    def ensure(self, point, text, write_text):
        path, link = self._paths(point)
        current, enabled = self.current(point)
        if current != text:
            os.makedirs(self.dir, 0o755, exist_ok=True)
            write_text(path, text)
            self.changed = True
        if not enabled:
            os.makedirs(os.path.dirname(link), 0o755, exist_ok=True)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(path, link)
            self.changed = True

    def remove(self, point):
        path, link = self._paths(point)
        for name in (link, path):
            if os.path.lexists(name):
                os.unlink(name)
                self.changed = True

    def reload(self, run, which):
        """``systemctl daemon-reload`` when systemd runs this host and a unit changed."""
        if self.changed and os.path.isdir('/run/systemd/system'):
            systemctl = which('systemctl', False)
            if systemctl:
                run([systemctl, 'daemon-reload'])
        self.changed = False


def mount_roots(mountinfo='/proc/self/mountinfo'):
    """{mount point: the path inside its file system mounted there} ('/' when a whole file system is)."""
    roots = {}
    with open(mountinfo, encoding='utf-8') as info:
        for line in info:
            fields = line.split()
            roots[_unescape(fields[4])] = _unescape(fields[3])
    return roots


def _unescape(field):
    return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), field)
