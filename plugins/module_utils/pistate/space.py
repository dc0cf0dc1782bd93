# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Space on the data file system: the worst case of every Pi image, checked before one is made or grows.

Roots are reflink clones and disks sparse files, so what they take now is far less than what they may
take once their Pis fill them. When the sum outgrows the file system, the Pi that fills its own file
system first takes blocks that another Pi's file system counts as its own, and that Pi gets ENOSPC
inside its own limit, and its loop device I/O errors. So before a root or disks file system is made or
grown, the ledger checks the worst case of the data file system holding it:

    committed = used now + the sum, over every Pi image on it, of what the image can still take
    what an image can still take = its size - the blocks it alone owns already (FIEMAP: unshared extents)
    committed + the new image's worst case <= overcommit x the file system's size

(``size`` is what is in use plus what is available; ``SLACK`` of it is kept back for the file system's
own metadata.) Only the bakery's own files are looked at: the images' sizes and extent maps, ``statvfs``
of the file systems and of the Pis' mounted file systems, never a byte a Pi wrote. No AnsibleModule here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic import read_mounts
from ansible_collections.pifleet.netboot.plugins.module_utils.common.sizes import MIB, human

DEFAULT_OVERCOMMIT = 1.0
# The modules' options (documented in doc_fragments/_space.py).
SPACE_ARGS = {
    'overcommit': {'type': 'float', 'default': DEFAULT_OVERCOMMIT},
    'allow_root_filesystem': {'type': 'bool', 'default': False},
    'space_dirs': {'type': 'list', 'elements': 'path', 'default': []},
}
SLACK_MIN, SLACK_SHARE = 64 * MIB, 0.01  # kept back for the file system's own metadata (CoW, extent trees)
REFLINK_FS = ('xfs', 'btrfs', 'bcachefs', 'ocfs2')
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_SHARED = 0x1, 0x2000
_EXTENTS = 512  # per FIEMAP call
_HEAD, _EXTENT = struct.Struct('=QQIIII'), struct.Struct('=QQQQQI12x')  # struct fiemap, fiemap_extent


def short(count):
    """``1.5 GiB``: sizes in messages that hold several of them."""
    return human(count).split(' (')[0]


class SpaceError(Exception):
    """Not enough space for the worst case, or a Pi directory on the bakery's own root file system."""


def exclusive_bytes(path):
    """Bytes of the file at ``path`` stored in extents it alone owns (not shared by reflink); None when the
    file system cannot say (no FIEMAP)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        owned, start = 0, 0
        buf = bytearray(_HEAD.size + _EXTENT.size * _EXTENTS)
        while True:
            _HEAD.pack_into(buf, 0, start, (1 << 64) - 1 - start, 0, 0, _EXTENTS, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = _HEAD.unpack_from(buf, 0)[3]
            if not mapped:
                return owned
            for index in range(mapped):
                logical, _phys, length, _r1, _r2, flags = _EXTENT.unpack_from(buf, _HEAD.size + index * _EXTENT.size)
                if not flags & FIEMAP_EXTENT_SHARED:
                    owned += length
                start = logical + length
                if flags & FIEMAP_EXTENT_LAST:
                    return owned
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
            return None
        raise
    finally:
        os.close(fd)


def image_usage(path, st, fstype):
    """What one image takes and may still take: {size, allocated, exclusive, growth} in bytes."""
    allocated = st.st_blocks * 512
    exclusive = exclusive_bytes(path) if fstype in REFLINK_FS else allocated
    if exclusive is None:
        exclusive = 0  # a reflink file system that cannot tell: assume every block is shared
    exclusive = min(exclusive, allocated, st.st_size)
    return {'size': st.st_size, 'allocated': allocated, 'exclusive': exclusive, 'growth': st.st_size - exclusive}


def mounted_usage(point):
    """{fs_size, fs_used, fs_free} of the file system mounted at ``point`` (a Pi's), as the kernel counts it."""
    try:
        vfs = os.statvfs(point)
    except OSError:
        return {'fs_size': None, 'fs_used': None, 'fs_free': None}
    return {'fs_size': vfs.f_blocks * vfs.f_frsize, 'fs_used': (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize,
            'fs_free': vfs.f_bavail * vfs.f_frsize}


def mount_of(path, mounts):
    """(mount point, fstype) of the mount holding ``path``: the longest mount point that is a prefix of it."""
    path = os.path.realpath(path)
    best = ('/', None)
    for point, fstype, _source in mounts:
        inside = path == point or path.startswith(point.rstrip('/') + '/')
        if inside and len(point) >= len(best[0]):
            best = (point, fstype)
    return best


def existing(path):
    """``path``, or its nearest ancestor that exists (where it will be made)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def on_root_filesystem(dirs, allowed):
    """A message when one of ``dirs`` ({what: path}) lies (or would be made) on the bakery's ``/``; else None."""
    if allowed:
        return None
    root = os.stat('/').st_dev
    found = [(what, path) for what, path in sorted(dirs.items()) if path and os.stat(existing(path)).st_dev == root]
    if not found:
        return None
    return ('%s %s on the bakery\'s root file system (/): the Pis would fill the file system the bakery itself '
            'needs to run; put them on a file system of their own (XFS with reflink, mounted at /srv/pifleet for '
            'example), or set allow_root_filesystem: true (pifleet_allow_root_filesystem) to accept that'
            % (' and '.join('%s %s' % (what, path) for what, path in found), 'are' if len(found) > 1 else 'is'))


class Ledger:
    """The Pi images of ``dirs`` (roots_dir, disks_dir), by the file system they lie on; one per module run.

    ``claim(directory, size, who)`` books a new image (or growth) of ``size`` bytes on the file system of
    ``directory`` and raises SpaceError when the worst case would no longer fit under ``overcommit``.
    """

    def __init__(self, dirs, overcommit=DEFAULT_OVERCOMMIT):
        self.dirs = [os.path.realpath(d) for d in dirs if d]
        self.overcommit = float(overcommit)
        self.filesystems = None  # st_dev -> record
        self.images = {}  # real path -> usage
        self.mounts = None

    def scan(self):
        self.filesystems, self.images, self.mounts = {}, {}, read_mounts()
        for directory in dict.fromkeys(self.dirs):
            try:
                names = os.listdir(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if not name.endswith('.img'):
                    continue
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                record = self.filesystem_of(path)
                usage = image_usage(path, st, record['fstype'])
                self.images[path] = dict(usage, filesystem=record['mount'])
                record['images'] += 1
                record['growth'] += usage['growth']
        return self

    def filesystem_of(self, path):
        """The record of the file system ``path`` lies (or will lie) on."""
        if self.filesystems is None:
            self.scan()
        where = existing(path)
        dev = os.stat(where).st_dev
        if dev not in self.filesystems:
            vfs = os.statvfs(where)
            used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
            size = used + vfs.f_bavail * vfs.f_frsize
            mount, fstype = mount_of(where, self.mounts)
            self.filesystems[dev] = {'mount': mount, 'fstype': fstype, 'size': size, 'used': used,
                                     'free': vfs.f_bavail * vfs.f_frsize, 'images': 0, 'growth': 0, 'claimed': 0,
                                     'slack': max(SLACK_MIN, int(size * SLACK_SHARE))}
        return self.filesystems[dev]

    def committed(self, record):
        return record['used'] + record['growth'] + record['claimed']

    def limit(self, record):
        return int(self.overcommit * (record['size'] - record['slack']))

    def claim(self, directory, size, who):
        """Book ``size`` more bytes of worst case on the file system of ``directory`` for ``who``."""
        record = self.filesystem_of(directory)
        needed = self.committed(record) + size
        if needed > self.limit(record):
            numbers = (record['mount'], who, short(size), short(needed), short(record['used']),
                       short(record['growth'] + record['claimed']), record['images'], self.overcommit,
                       short(self.limit(record)), short(record['size']), short(record['free']))
            raise SpaceError(
                'not enough space on %s for %s (%s at most): with every Pi image on it filled, %s would be needed '
                '(%s in use now, %s that its %d Pi image(s) and this run\'s may still take, and this), but overcommit '
                '%g allows %s of its %s (%s are free now); free space (remove the roots and disks of Pis that left: '
                'pifleet_prune), grow the file system, give smaller images or disks, or raise overcommit '
                '(pifleet_overcommit), knowing that a Pi that fills its own file system may then leave other Pis with '
                'I/O errors' % numbers)
        record['claimed'] += size

    def usage(self, image, point):
        """The per-Pi ``usage`` of a module's result: its image on the data file system and its own file system."""
        found = self.images.get(os.path.realpath(image))
        if found is None:
            found = {'size': 0, 'allocated': 0, 'exclusive': 0, 'growth': 0, 'filesystem': None}
        return dict(found, **mounted_usage(point))

    def annotate(self, pis, layout):
        """Each of ``pis`` (module results with a serial) gets its ``usage``; ``layout(serial)`` gives its paths."""
        for pi in pis:
            if pi.get('serial'):
                lay = layout(pi['serial'])
                pi['usage'] = self.usage(lay.image, lay.point)

    def report(self):
        """One entry per data file system holding Pi images: its size, use and worst case, for the results."""
        return [{'mount': r['mount'], 'size': r['size'], 'used': r['used'], 'free': r['free'], 'images': r['images'],
                 'committed': r['used'] + r['growth'], 'overcommit': self.overcommit, 'limit': self.limit(r)}
                for r in sorted(self.filesystems.values(), key=lambda r: r['mount']) if r['images']]

    def planned(self):
        """What this run's new and grown images book, per data file system, as planned (before any is made; the
        same in check mode): the pre-flight of the fleet role reads it (fleet/preflight.py)."""
        return [{'mount': r['mount'], 'fstype': r['fstype'], 'reflink': r['fstype'] in REFLINK_FS, 'size': r['size'],
                 'free': r['free'], 'committed': r['used'] + r['growth'], 'claimed': r['claimed'],
                 'limit': self.limit(r)}
                for r in sorted((self.filesystems or {}).values(), key=lambda r: r['mount']) if r['claimed']]
