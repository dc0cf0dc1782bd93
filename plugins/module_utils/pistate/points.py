# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mount points on a file system of their own, so that an unmounted Pi file system exposes nothing.

Each Pi's root and disks are exported at their mount point. When nothing is mounted there (a mount
unit that failed at boot, a swap of roots that died half-way), the export is the bare mount-point
directory, and a client that forges handles reaches every inode of the file system that directory
lies on. If that were the data file system, it would hold every Pi's image. So mount points never
lie beside the images: they live in ``<dir>/mnt``, a small tmpfs (source ``pifleet-points``) that
holds nothing but empty directories. The directory under it, on the data file system, is made
immutable and left empty, so nothing can be created there while the tmpfs is not mounted (neither
by pifleet nor by systemd, which makes a mount unit's ``Where=`` when it is missing).

The NFS server withholds an export with nothing mounted at its path as well (``exports``: kernel
``mp``, Ganesha through pifleet's guard): this file system is the second line, for when that fails.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs

POINTS = 'mnt'  # not hex: never a serial, nor a marker or image name
SOURCE = 'pifleet-points'
FSTYPE = 'tmpfs'
# size bounds what a client could write into a bare mount point, nr_inodes how many names (and memory).
OPTIONS = ('mode=0700', 'nosuid', 'nodev', 'noexec', 'size=1m', 'nr_inodes=65536')
UNDERLAY_MODE = 0o700
UNIT_HEADER = '# Managed by pifleet.netboot: the file system that holds only the mount points of Pi file systems'
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


class PointsError(_loopfs.LoopError):
    """The mount points' file system is missing or not ours; the message says what and how to fix it."""


def points_dir(base):
    """The directory of the mount points of the Pi file systems kept in ``base`` (roots_dir, disks_dir)."""
    return os.path.join(base, POINTS)


def unit_text(path):
    return '\n'.join((
        UNIT_HEADER,
        '[Unit]',
        'Description=pifleet mount points in %s' % os.path.dirname(path),
        'Before=%s' % ' '.join(_loopfs.NFS_SERVICES),
        '',
        '[Mount]',
        'What=%s' % SOURCE,
        'Where=%s' % path,
        'Type=%s' % FSTYPE,
        'Options=%s' % ','.join(OPTIONS),
        '',
        '[Install]',
        'WantedBy=%s' % _loopfs.WANTED_BY,
        '',
    ))


def is_ours(found):
    """True for ``mount_at``'s answer when it is the points tmpfs."""
    return found is not None and found == (SOURCE, FSTYPE)


def set_immutable(path, on=True):
    """Make the directory ``path`` immutable (nothing can be created in it), or not; False where the file system
    has no such flag."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        flags = struct.unpack_from('i', buf)[0]
        wanted = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
        if wanted != flags:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack('i', wanted) + bytes(4))
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    finally:
        os.close(fd)


class Points:
    """The mount points' tmpfs of one directory (``base``: roots_dir or disks_dir).

    ``host`` as for the planners (``run``, ``which``, ``warn``, ``check_mode``); ``units`` a
    ``loopfs.Units`` (None: no unit written). ``what`` names the Pis' file systems in messages.
    """

    def __init__(self, host, base, units, what):
        self.host, self.units, self.what = host, units, what
        self.base = os.path.realpath(base)
        self.path = points_dir(self.base)
        self.ready = None  # known to be mounted in this run (read once; the run holds the bakery lock)
        self.ensured = False

    def mounted(self):
        if self.ready is None:
            self.ready = is_ours(_loopfs.mount_at(self.path))
        return self.ready

    def ensure(self):
        """The tmpfs mounted at ``<base>/mnt`` over an empty immutable directory, with its unit; True if changed.
        Once per run (check mode: only what would change)."""
        if self.ensured:
            return False
        changed = False
        if self.units:
            text = unit_text(self.path)
            if not self.units.wanted(self.path, text):
                changed = True
                if not self.host.check_mode:
                    self.units.ensure(self.path, text, _write_unit)
        if not self.mounted():
            found = _loopfs.mount_at(self.path)
            if found is not None:
                raise PointsError('%s has %s (%s) mounted on it, not the mount points\' tmpfs %s; pifleet keeps the '
                                  'mount points of %s there: unmount it, then run again'
                                  % (self.path, found[0], found[1], SOURCE, self.what))
            changed = True
            if not self.host.check_mode:
                self.mount()
        if not self.host.check_mode and not set_immutable(self.path):  # the tmpfs's top: nobody adds to it
            self.host.warn('the mount points\' tmpfs at %s cannot be made immutable (a kernel before 6.0): a Pi '
                           'served its bare mount point could write to it' % self.path)
        self.ensured = not self.host.check_mode
        return changed

    def mount(self):
        self.prepare_underlay()
        mount = self.host.which('mount', True)
        rc, out, err = self.host.run([mount, '-t', FSTYPE, '-o', ','.join(OPTIONS), '--', SOURCE, self.path])
        if rc != 0:
            raise PointsError('mounting the mount points\' tmpfs at %s failed: %s; the %s cannot be mounted (nor '
                              'exported) without it' % (self.path, (err or out).strip(), self.what))
        self.ready = None
        if not self.mounted():
            raise PointsError('the mount points\' tmpfs at %s is not there after mounting it' % self.path)

    def prepare_underlay(self):
        """``<base>/mnt`` on the data file system: an empty directory, immutable where the file system allows."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            os.mkdir(self.path, UNDERLAY_MODE)
            st = os.lstat(self.path)
        if not os.path.isdir(self.path) or os.path.islink(self.path) or os.listdir(self.path):
            raise PointsError('%s is not an empty directory (mode %o); pifleet mounts the file system of the mount '
                              'points of %s there: move what is there away, then run again'
                              % (self.path, st.st_mode, self.what))
        if not set_immutable(self.path):
            self.host.warn('%s could not be made immutable (its file system has no such flag): while the mount '
                           'points\' tmpfs is not mounted, nothing but pifleet\'s checks keeps mount points off the '
                           'data file system' % self.path)

    def make(self, point):
        """The mount point ``point`` in ``<base>/mnt``, made on the points' tmpfs only, never on the data fs."""
        if os.path.realpath(os.path.dirname(point)) != self.path:
            raise PointsError('%s is not in %s, where the mount points of %s live' % (point, self.path, self.what))
        self.ensure()
        if not self.mounted():
            raise PointsError('the mount points\' tmpfs is not mounted at %s, so %s cannot be made there without '
                              'leaving a bare directory of the data file system to export' % (self.path, point))
        with self.opened():
            st = _lstat(point)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.unlink(point)  # not what pifleet makes here: never mounted on, nor followed
                st = None
            if st is None:
                os.mkdir(point, 0o755)
        if not os.path.ismount(point):
            set_immutable(point)  # bare (nothing mounted yet, or no more), it takes nothing: not even from root

    def remove(self, point):
        """Remove the mount point ``point`` once nothing is mounted there."""
        if os.path.ismount(point) or not os.path.isdir(point) or os.path.islink(point):
            return
        set_immutable(point, False)
        with self.opened():
            with contextlib.suppress(OSError):
                os.rmdir(point)

    def give_up(self, old_point, image, who):
        """The mount point of earlier releases (``old_point``, on the data file system) given up: its unit removed,
        unmounted (the NFS server lets go once the exports move) and the directory removed. The Pi's file system
        (``image``) must be mounted at its new point first, so that nothing is left unmounted in between; anything
        else mounted there is refused, never unmounted."""
        found = _loopfs.mount_at(os.path.realpath(old_point))
        if found and _loopfs.loop_backing(found[0]) not in (image, os.path.realpath(image)):
            raise PointsError('%s: %s has %s mounted on it, not %s; pifleet moves only its own file systems from '
                              'there: unmount it, then run again' % (who, old_point, found[0], image))
        if self.units:
            self.units.remove(old_point)
        if found:
            _loopfs.Mounter(self.host.run, self.host.which).umount(old_point, '%s at its old mount point' % who)
        problem = remove_old_point(old_point)
        if problem:
            self.host.warn('%s: %s' % (who, problem))

    @contextlib.contextmanager
    def opened(self):
        """The tmpfs's top made writable for a moment (pifleet adds or removes a mount point; it holds the lock)."""
        set_immutable(self.path, False)
        try:
            yield
        finally:
            set_immutable(self.path)

    def release(self):
        """With no Pi file system left in ``base``: the tmpfs unmounted, its unit and directory removed (what
        ensure() made, undone); True if something was. Only while nothing is mounted below it."""
        if self.host.check_mode or holds_images(self.base) or not os.path.lexists(self.path):
            return False
        if any(p.startswith(self.path + '/') for p in _mount_points()):
            return False
        if self.mounted():
            rc, out, err = self.host.run([self.host.which('umount', True), '--', self.path])
            if rc != 0:
                self.host.warn('unmounting the empty mount points\' tmpfs at %s failed: %s'
                               % (self.path, (err or out).strip()))
                return False
            self.ready = self.ensured = False
        if self.units:
            self.units.remove(self.path)
        if not os.path.ismount(self.path) and os.path.isdir(self.path) and not os.listdir(self.path):
            set_immutable(self.path, False)
            os.rmdir(self.path)
        return True


def remove_old_point(path):
    """Remove the mount point of earlier releases (unmounted by now); a problem to warn about, or None."""
    try:
        if os.path.islink(path):
            os.unlink(path)  # the link only, never what it points to
        else:
            os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return ('its old mount point %s was left in place (%s): nothing exports it any more; look at what is in it '
                'and remove it' % (path, exc.strerror))
    return None


def holds_images(base):
    """True while ``base`` holds Pi images (``*.img``): its mount points' tmpfs is still needed."""
    try:
        return any(name.endswith('.img') for name in os.listdir(base))
    except FileNotFoundError:
        return False


def _lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _mount_points():
    return [point for point, _fstype, _source in _atomic.read_mounts()]


def _write_unit(path, body):
    _atomic.write_text(path, body, 0o644)
