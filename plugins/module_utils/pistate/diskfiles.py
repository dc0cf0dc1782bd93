# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files of pi_disk: disks inside a Pi's mounted container, and the container images themselves.

Everything inside a container is the Pi's to change at any moment (it is exported to the Pi), so
``DiskFiles`` touches it only through file descriptors: each ``<name>`` directory is opened from the
container's ``confined.Tree`` with ``O_NOFOLLOW``, ``disk.img`` from that directory the same way,
checked to be a regular file with ``fstat`` on the open descriptor, and tools get ``/proc/self/fd/N``
(the file we checked, whatever the name points to by then), never a path. New disks are built as an
unnamed ``O_TMPFILE`` and linked into place whole. ``run(argv, pass_fds=())`` runs the tools.

Once linked in, a ``disk.img`` is the Pi's and written raw: nothing here reads its content. ``inspect``
is ``fstat`` only; ``grow`` only makes the file longer (by a hole). The one tool ever run on a disk
is ``mkfs.ext4``, on the fresh unnamed file, before any Pi could see it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.disks import (
    IMAGE,
    MIB,
    DiskError,
    check_name,
    human,
)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
SCAN_LIMIT = 10000  # entries read from a directory the Pi controls
KINDS = {stat.S_IFLNK: 'a symbolic link', stat.S_IFDIR: 'a directory', stat.S_IFIFO: 'a FIFO', stat.S_IFREG: 'a file',
         stat.S_IFSOCK: 'a socket', stat.S_IFCHR: 'a character device', stat.S_IFBLK: 'a block device'}
CHUNK = MIB


def kind(mode):
    return KINDS.get(stat.S_IFMT(mode), 'something else')


def fd_path(fd):
    return '/proc/self/fd/%d' % fd


class DiskFiles:
    """The disks in one container, seen through ``tree`` (a ``confined.Tree`` of its top directory)."""

    def __init__(self, tree, serial, top=None, run=None, which=None):
        self.tree, self.serial, self.run, self.which = tree, serial, run, which
        self.top = top or tree.top  # the path messages name (the mount point, not where we peeked)

    def _refuse(self, name, rel, what):
        return DiskError('disk %s of Pi %s: %s/%s is %s, not what pi_disk made (the Pi can change anything in its '
                         'export); pi_disk never follows or replaces it: look at it on the bakery, move it away, '
                         'then run again' % (name, self.serial, self.top, rel, what))

    def _open_dir(self, name):
        """fd of ``<name>``; None when missing; DiskError when it is not a real directory."""
        st = self.tree.lstat(name)
        if st is None:
            return None
        if not stat.S_ISDIR(st.st_mode):
            raise self._refuse(name, name, kind(st.st_mode))
        try:
            return os.open(name, _DIR, dir_fd=self.tree.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._refuse(name, name, 'swapped for a symbolic link or a file') from None
            raise

    @contextlib.contextmanager
    def image(self, name, write=False):
        """``(fd, stat)`` of ``<name>/disk.img`` checked as a regular file; ``(None, None)`` when it is missing."""
        dfd = self._open_dir(name)
        fd = None
        if dfd is not None:
            try:
                fd = self._open_image(name, dfd, os.O_RDWR if write else os.O_RDONLY)
            finally:
                os.close(dfd)
        try:
            yield (fd, os.fstat(fd)) if fd is not None else (None, None)
        finally:
            if fd is not None:
                os.close(fd)

    def _open_image(self, name, dfd, mode):
        rel = '%s/%s' % (name, IMAGE)
        st = _lstat_at(dfd, IMAGE)
        if st is None:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise self._refuse(name, rel, kind(st.st_mode))
        try:
            fd = os.open(IMAGE, mode | _FILE, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EACCES, errno.EISDIR):
                raise self._refuse(name, rel, 'swapped for something else while pi_disk looked') from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._refuse(name, rel, 'swapped for something else while pi_disk looked')
        return fd

    # ------------------------------------------------------------------ reading

    def inspect(self, name, recorded_fstype, blank=None):
        """``{'size', 'allocated', 'fstype', 'blank', 'extra'}`` of a disk, or None when it has no disk.img.

        From ``fstat`` alone: the content is the Pi's and never read. The fstype and ``blank`` are what
        the index recorded (None when it cannot say: an index lost and rebuilt). ``extra``: other
        entries in the disk's directory.
        """
        with self.image(name) as (fd, st):
            if fd is None:
                return None
        extra = any(entry != IMAGE for entry in self.names(name, 2))
        return {'size': st.st_size, 'allocated': st.st_blocks * 512, 'fstype': recorded_fstype, 'blank': blank,
                'extra': extra}

    def is_dir(self, name):
        st = self.tree.lstat(name)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def names(self, rel='.', limit=SCAN_LIMIT):
        """Up to ``limit`` names in the directory ``rel`` (not followed if it is a link); [] when missing."""
        try:
            fd = self.tree.fd if rel == '.' else os.open(rel, _DIR, dir_fd=self.tree.fd)
        except OSError:
            return []
        try:
            found = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    found.append(entry.name)
                    if len(found) >= limit:
                        break
            return found
        finally:
            if fd != self.tree.fd:
                os.close(fd)

    def scan(self):
        """``{name: inspect()}`` of the directories holding a disk.img (an index lost, an old layout)."""
        names = self.names()
        if len(names) >= SCAN_LIMIT:
            raise DiskError('the disks of Pi %s cannot be listed: %s holds %d entries or more at its top; remove '
                            'what the Pi made there' % (self.serial, self.top, SCAN_LIMIT))
        found = {}
        for name in sorted(names):
            if check_name(name) is None and self.is_dir(name):
                current = self.inspect(name, None)
                if current is not None:
                    found[name] = current
        return found

    # ------------------------------------------------------------------ writing

    def create(self, name, size, fstype):
        """Make ``<name>/disk.img``: sparse (a hole, not written zeros), formatted when ext4, linked in whole.

        Returns the bytes it has allocated (its blank file system), which the index keeps (``has_data``).
        The fresh file is formatted before it has a name: no Pi has seen it yet.
        """
        what = 'disk %s of Pi %s' % (name, self.serial)
        made = {}

        def fill(fd):
            try:
                os.ftruncate(fd, size)
            except OSError as exc:
                raise DiskError('creating %s failed: a %s file cannot be made in its container (%s); grow '
                                'nothing else meanwhile and run again' % (what, human(size), exc)) from exc
            if fstype == 'ext4':
                self.tool([self.which('mkfs.ext4', True), '-q', '-F', '-L', name[:16], '-E',
                           'lazy_itable_init=1,lazy_journal_init=1,nodiscard', '--', fd_path(fd)], fd,
                          'formatting %s as ext4' % what)
                os.fsync(fd)  # its blocks allocated now, so the count below is the one a Pi's writes add to
            made['allocated'] = os.fstat(fd).st_blocks * 512

        self._link_new(name, fill)
        return made['allocated']

    def grow(self, name, size):
        """Grow ``<name>/disk.img`` to ``size`` by a hole, never through a path. Its file system stays as it is:
        the Pi grows it (resize2fs on the Pi, or x-systemd.growfs), the bakery never parses a Pi's bytes."""
        what = 'disk %s of Pi %s' % (name, self.serial)
        with self.image(name, write=True) as (fd, st):
            if fd is None:
                raise DiskError('growing %s failed: its disk.img is gone (the Pi removed it?); run again to '
                                'create it' % what)
            if st.st_size > size:
                raise DiskError('growing %s refused: its disk.img is now %s, more than the %s asked for (the Pi '
                                'changed it); disks never shrink' % (what, human(st.st_size), human(size)))
            if st.st_size < size:
                os.ftruncate(fd, size)

    def remove(self, name):
        """Delete ``<name>/disk.img`` (the disk is gone from then on), then whatever else is in ``<name>``."""
        dfd = self._open_dir(name)
        if dfd is None:
            return
        try:
            fd = self._open_image(name, dfd, os.O_RDONLY)
            if fd is not None:
                os.close(fd)
                os.unlink(IMAGE, dir_fd=dfd)
        finally:
            os.close(dfd)
        remove_tree(self.tree.fd, name)

    def adopt(self, name, src_fd, size):
        """A copy of the open file ``src_fd`` as ``<name>/disk.img``, holes kept (an old layout's disk)."""

        def fill(fd):
            copy_sparse(src_fd, fd, size)
            os.fsync(fd)

        self._link_new(name, fill)

    def _link_new(self, name, fill):
        """``fill(fd)`` an unnamed file in ``<name>`` (O_TMPFILE: nothing the Pi can see or swap), then link it in."""
        if self.tree.lstat(name) is None:
            self.tree.makedirs(name)
        dfd = self._open_dir(name)  # refuses a link or a file there
        try:
            found = _lstat_at(dfd, IMAGE)
            if found is not None:
                raise self._refuse(name, '%s/%s' % (name, IMAGE), kind(found.st_mode))
            fd = os.open('.', os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                os.fchmod(fd, 0o600)
                fill(fd)
                try:
                    # linkat() never replaces: a disk.img that appeared meanwhile stays and we stop.
                    os.link(fd_path(fd), IMAGE, dst_dir_fd=dfd, follow_symlinks=True)
                except FileExistsError:
                    raise DiskError('making disk %s of Pi %s failed: %s/%s/%s appeared while it was being made (the '
                                    'Pi, or another run?); run again' % (name, self.serial, self.top, name,
                                                                         IMAGE)) from None
            finally:
                os.close(fd)
        finally:
            os.close(dfd)

    def tool(self, argv, fd, what, ok=(0,)):
        rc, out, err = self.run(argv, pass_fds=(fd,))
        if rc not in ok:
            raise DiskError('%s failed: %s' % (what, (err or out).strip() or 'exit status %d' % rc),
                            rc=rc, stderr=err, cmd=argv)


def _lstat_at(dfd, name):
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def copy_sparse(src, dst, size):
    """Copy ``size`` bytes from fd ``src`` to fd ``dst``: only the data extents, and no all-zero chunk."""
    os.ftruncate(dst, size)
    pos = 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return  # only a hole left
            raise
        end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        while start < end:
            chunk = os.pread(src, min(CHUNK, end - start), start)
            if not chunk:
                return  # the source shrank under us: what is left reads as zeros
            if chunk.count(0) != len(chunk):
                os.pwrite(dst, chunk, start)
            start += len(chunk)
        pos = end


def remove_tree(parent_fd, name):
    """Remove ``name`` in ``parent_fd`` and everything below, through descriptors, never following a link."""
    stack = [(parent_fd, name, None)]
    while stack:
        parent, entry, fd = stack[-1]
        if fd is None:
            try:
                fd = os.open(entry, _DIR, dir_fd=parent)
            except FileNotFoundError:
                stack.pop()
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                os.unlink(entry, dir_fd=parent)  # a file or a link: the entry itself, nothing it points to
                stack.pop()
                continue
            stack[-1] = (parent, entry, fd)
        child = _next_dir(fd)
        if child is not None:
            stack.append((fd, child, None))
            continue
        os.close(fd)
        stack.pop()
        os.rmdir(entry, dir_fd=parent)


def _next_dir(fd):
    """Unlink the non-directories in ``fd``; return the name of a directory left in it, or None."""
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return entry.name
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.name, dir_fd=fd)
    return None
