# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading and writing inside a tree that someone else controls, without ever leaving it.

A Pi is root on its own root file system, so any path in it may be a symlink by the time we use
it. ``Tree`` never resolves a path string: it holds a file descriptor of the top directory and walks
each relative path one component at a time with ``openat(O_NOFOLLOW)``, so a symlink anywhere on the
way (``etc`` -> ``/etc``, a last component swapped for a link) is refused instead of followed, and
a directory swapped after we opened it cannot redirect us: we keep writing into the directory we
opened. ``..`` and absolute paths are refused outright. Reads are capped, since a Pi can make a
file as large as its disk. Standard library only.
"""

from __future__ import annotations

import errno
import os
import stat

READ_LIMIT = 1 << 20  # the largest config file we read from a Pi's root
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ConfinedError(Exception):
    """A path in the tree is not what we may use (a symlink, not a directory, too large)."""


class Tree:
    """A directory tree addressed only by paths relative to it; see the module docstring."""

    def __init__(self, top, label=None, durable=True):
        self.top = top
        self.label = label or top
        # False: a tree being built that nothing uses yet, flushed whole before it is (sync_file_system): its
        # files are not flushed to disk one by one (a new root gets a dozen; a first run makes a thousand roots).
        self.durable = durable
        try:
            self.fd = os.open(top, _DIR_FLAGS)
        except OSError as exc:
            raise ConfinedError('%s cannot be opened as a directory (%s)' % (top, exc.strerror)) from exc

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ walking

    def _refuse(self, rel, why):
        return ConfinedError('%s in %s %s; nothing there is read or written through a symlink or outside the '
                             'tree' % (rel, self.label, why))

    @staticmethod
    def _parts(rel):
        parts = [part for part in rel.split('/') if part not in ('', '.')]
        if rel.startswith('/') or '..' in parts or not parts:
            raise ConfinedError('%r is not a relative path inside the tree' % rel)
        return parts

    def _open_dir(self, rel_parts, create=False, mode=0o755):
        """fd of the directory ``rel_parts`` (a list), walked without following links; None when missing."""
        fd = os.dup(self.fd)
        try:
            for index, name in enumerate(rel_parts):
                try:
                    try:
                        nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except FileNotFoundError:
                        if not create:
                            os.close(fd)
                            return None
                        _mkdir_root_owned(fd, name, mode)
                        nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise self._refuse('/'.join(rel_parts[:index + 1]), 'is a symlink or not a directory') from None
                    raise
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _parent(self, rel, create=False):
        """(fd of the parent directory or None, last name) of ``rel``."""
        parts = self._parts(rel)
        return self._open_dir(parts[:-1], create=create), parts[-1]

    # ------------------------------------------------------------------ reading

    def lstat(self, rel):
        """os.lstat of ``rel`` (never following it); None when it or a parent is missing."""
        fd, name = self._parent(rel)
        if fd is None:
            return None
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    def exists(self, rel):
        return self.lstat(rel) is not None

    def is_dir(self, rel):
        st = self.lstat(rel)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def readlink(self, rel):
        """The target of the symlink ``rel``; None when it is not a symlink."""
        fd, name = self._parent(rel)
        if fd is None:
            return None
        try:
            return os.readlink(name, dir_fd=fd)
        except (FileNotFoundError, OSError):
            return None
        finally:
            os.close(fd)

    def listdir(self, rel):
        """Names in the directory ``rel``; [] when missing. A symlink or file there is refused."""
        fd = self._open_dir(self._parts(rel))
        if fd is None:
            return []
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def open_file(self, rel):
        """A read-only fd of the regular file ``rel`` (the caller closes it); None when missing or not a file."""
        fd, name = self._parent(rel)
        if fd is None:
            return None
        try:
            old = _lstat_at(fd, name)
            if old is None or not stat.S_ISREG(old.st_mode):
                return None  # a device node is never opened: on a mount without nodev that could act on the device
            try:
                handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.EISDIR):
                    return None  # swapped since: missing, a symlink, a socket, a directory
                if exc.errno in (errno.EACCES, errno.EPERM):  # e.g. swapped for a device node on a nodev mount
                    raise self._refuse(rel, 'cannot be opened as a regular file (%s)' % exc.strerror) from None
                raise
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                os.close(handle)  # a FIFO or device node planted under a config file's name
                return None
            return handle
        finally:
            os.close(fd)

    def read_bytes(self, rel, limit=READ_LIMIT):
        """Content of the regular file ``rel``; None when it is missing or not a regular file."""
        handle = self.open_file(rel)
        if handle is None:
            return None
        try:
            if os.fstat(handle).st_size > limit:
                raise self._refuse(rel, 'is larger than %d bytes' % limit)
            chunks, total = [], 0
            while True:
                chunk = os.read(handle, 65536)
                if not chunk:
                    return b''.join(chunks)
                total += len(chunk)
                if total > limit:
                    raise self._refuse(rel, 'is larger than %d bytes' % limit)
                chunks.append(chunk)
        finally:
            os.close(handle)

    def read_text(self, rel, limit=READ_LIMIT):
        data = self.read_bytes(rel, limit)
        return None if data is None else data.decode('utf-8', errors='surrogateescape')

    # ------------------------------------------------------------------ writing

    def makedirs(self, rel, mode=0o755):
        """Create the missing directories of ``rel`` (root-owned, ``mode``)."""
        os.close(self._open_dir(self._parts(rel), create=True, mode=mode))

    def write_bytes(self, rel, data, mode=0o644, *, force_owner=False, uid=0, gid=0):
        """Replace ``rel`` by a new file (temp file + rename, both inside the opened parent).

        An existing regular file's owner, mode and xattrs are kept unless ``force_owner``; a symlink
        or other non-file there is replaced, never written through.
        """
        fd, name = self._parent(rel, create=True)
        tmp = None
        try:
            old = _lstat_at(fd, name)
            keep = old is not None and stat.S_ISREG(old.st_mode) and not force_owner
            owner = (old.st_uid, old.st_gid, old.st_mode & 0o7777) if keep else (uid, gid, mode)
            tmp, out = _temp_file(fd, name)
            try:
                os.write(out, data)
                os.fchown(out, owner[0], owner[1])
                os.fchmod(out, owner[2])  # after chown, which clears setuid/setgid bits
                if keep:
                    _copy_xattrs(fd, name, out)
                if self.durable:
                    os.fsync(out)
            finally:
                os.close(out)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            tmp = None
        finally:
            if tmp is not None:
                _unlink_quiet(fd, tmp)
            os.close(fd)

    def write_text(self, rel, text, mode=0o644, *, force_owner=False):
        self.write_bytes(rel, text.encode('utf-8', errors='surrogateescape'), mode, force_owner=force_owner)

    def copy_from(self, src_fd, rel, uid, gid, mode):
        """Write the content of the open file ``src_fd`` to ``rel`` with the given owner and mode."""
        os.lseek(src_fd, 0, os.SEEK_SET)
        data = os.read(src_fd, READ_LIMIT + 1)
        if len(data) > READ_LIMIT:
            raise self._refuse(rel, 'would be larger than %d bytes' % READ_LIMIT)
        self.write_bytes(rel, data, mode, force_owner=True, uid=uid, gid=gid)

    def ensure_dir(self, rel, mode, uid=0, gid=0):
        """``rel`` as a real directory with this owner and mode (a symlink or file there is removed first)."""
        fd, name = self._parent(rel, create=True)
        try:
            old = _lstat_at(fd, name)
            if old is not None and not stat.S_ISDIR(old.st_mode):
                os.unlink(name, dir_fd=fd)
                old = None
            if old is None:
                os.mkdir(name, mode, dir_fd=fd)
            inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                os.fchown(inner, uid, gid)
                os.fchmod(inner, mode)
            finally:
                os.close(inner)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._refuse(rel, 'was swapped for a symlink') from None
            raise
        finally:
            os.close(fd)

    def symlink(self, rel, target):
        """Make ``rel`` a symlink to ``target`` (a name inside the tree's own view), atomically."""
        fd, name = self._parent(rel, create=True)
        tmp = '.pifleet-link-%s' % os.urandom(6).hex()
        try:
            os.symlink(target, tmp, dir_fd=fd)
            try:
                os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError:
                _unlink_quiet(fd, tmp)
                raise
        finally:
            os.close(fd)

    def entries(self, rel):
        """``(name, lstat)`` of each entry of the directory ``rel``, never following a link; [] when missing."""
        fd = self._open_dir(self._parts(rel))
        if fd is None:
            return []
        try:
            found = []
            for name in sorted(os.listdir(fd)):
                st = _lstat_at(fd, name)
                if st is not None:
                    found.append((name, st))
            return found
        finally:
            os.close(fd)

    def remove_tree(self, rel):
        """Remove ``rel`` whatever it is: a file, a symlink (never what it points to) or a whole directory,
        walked by descriptors without following any link. Nothing outside the tree can be reached."""
        fd, name = self._parent(rel)
        if fd is None:
            return
        try:
            _remove_at(fd, name)
        finally:
            os.close(fd)

    def unlink(self, rel):
        """Remove the file or symlink ``rel`` if it is there (never a directory's content)."""
        fd, name = self._parent(rel)
        if fd is None:
            return
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


def _mkdir_root_owned(fd, name, mode):
    os.mkdir(name, mode, dir_fd=fd)
    inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
    try:
        os.fchown(inner, 0, 0)
        os.fchmod(inner, mode)
    finally:
        os.close(inner)


def _lstat_at(fd, name):
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove_at(fd, name):
    """Remove ``name`` in the directory ``fd``: a directory's content first, entered with O_NOFOLLOW."""
    st = _lstat_at(fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink_quiet(fd, name)
        return
    try:
        inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link since: remove the link itself
            _unlink_quiet(fd, name)
            return
        raise
    try:
        for child in os.listdir(inner):
            _remove_at(inner, child)
    finally:
        os.close(inner)
    try:
        os.rmdir(name, dir_fd=fd)
    except FileNotFoundError:
        pass


def _temp_file(fd, name):
    for _attempt in range(100):
        tmp = '.pifleet-%s-%s' % (name[:40], os.urandom(6).hex())
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                dir_fd=fd)
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, 'no free temporary name beside %s' % name)


def _unlink_quiet(fd, name):
    try:
        os.unlink(name, dir_fd=fd)
    except OSError:
        pass


def _copy_xattrs(fd, name, out):
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    try:
        for attr in os.listxattr(src):
            try:
                os.setxattr(out, attr, os.getxattr(src, attr))
            except OSError:
                pass  # e.g. a security.* name this host's policy refuses; the content matters more
    except OSError:
        pass
    finally:
        os.close(src)
