# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files and directories of the bakery: read, written whole, built beside their target and swapped in.

Small files are read with ``read_text`` and replaced whole with ``write_text`` (by rename); files of a
folder still being built are made with ``write_new``.

A scratch directory ``<parent>/.pifleet-tmp-<label>-<pid>-<random>/`` holds a ``.lock`` file that its
builder keeps flock()ed. A later run that can take that lock knows the builder died (even by SIGKILL)
and removes the leftovers, undoing a half-finished swap first, so a crash never leaves a visible
half-made tree and never loses the old one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile

PREFIX = '.pifleet-tmp-'
RENAME_EXCHANGE = 2
AT_FDCWD = -100
_OCTAL = re.compile(r'\\([0-7]{3})')  # mountinfo escapes space, tab, newline, backslash


class ScratchDir:
    """A locked scratch directory inside ``parent``; ``with`` removes it unless it was kept."""

    def __init__(self, parent, label):
        self.parent = parent
        self.path = tempfile.mkdtemp(prefix='%s%s-%d-' % (PREFIX, label, os.getpid()), dir=parent)
        self._lock = os.open(os.path.join(self.path, '.lock'), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def join(self, *names):
        return os.path.join(self.path, *names)

    def close(self, unmount=None):
        """Remove the scratch directory; ``unmount`` is called first for anything mounted inside."""
        if self.path is None:
            return
        release_mounts(self.path, unmount)
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock)
        self.path = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_mounts(mountinfo='/proc/self/mountinfo'):
    """(mount point, fstype, source) of every mount in this mount namespace."""
    with open(mountinfo, encoding='utf-8') as info:
        return _parse_mounts(info)


def _parse_mounts(lines):
    mounts = []
    for line in lines:
        fields = line.split()
        sep = fields.index('-')
        mounts.append((_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
    return mounts


def _unescape(field):
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def _escape(path):
    """``path`` as mountinfo writes it (the kernel's show_path: space, tab, newline and backslash in octal)."""
    return ''.join('\\%03o' % ord(char) if char in ' \t\n\\' else char for char in path)


def read_text(path, errors='replace', universal_newlines=False):
    """A small file's text, or None when it is not there (os.read: cheaper than open() for thousands).

    ``errors`` is how bytes that are not UTF-8 are decoded (``strict``: UnicodeDecodeError);
    ``universal_newlines`` reads ``\r\n`` and ``\r`` as ``\n``, as open() does.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        chunks = []
        for chunk in iter(lambda: os.read(fd, 1 << 20), b''):
            chunks.append(chunk)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from exc  # os.read does not say which file
    finally:
        os.close(fd)
    text = b''.join(chunks).decode('utf-8', errors=errors)
    return text.replace('\r\n', '\n').replace('\r', '\n') if universal_newlines else text


_LIBC = []  # the C library, loaded on first use


def libc():
    """The C library through ctypes, errno kept (syncfs, renameat2, mount, umount2); loaded once per process."""
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def sync_file_system(path):
    """Flush to disk the file system that holds ``path`` (syncfs(2)), else every file system (os.sync).

    What os.sync() did for the files written there, without the others: a bakery mounts a file system per Pi root
    and disk, and os.sync() visits each of them, so a sync per new root grew with the fleet.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.sync()
        return
    try:
        syncfs = getattr(libc(), 'syncfs', None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def write_new(path, text, mode=0o644):
    """Create a file in a folder still being built (nobody reads it yet: no temporary name, no fsync)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(text.encode('utf-8'))
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)  # whatever our umask: readers may run unprivileged (the TFTP hook)
    finally:
        os.close(fd)


def make_dir(path, mode=0o755):
    """The directory at ``path`` and its parents, ``mode`` whatever our umask (for unprivileged readers)."""
    if not os.path.isdir(path):
        os.makedirs(path, mode, exist_ok=True)
        os.chmod(path, mode)


def write_text(path, text, mode=0o644, fsync=True):
    """Write ``text`` to ``path`` by rename, keeping an existing file's mode and owner.

    ``fsync=False`` skips the per-file flush to disk, for callers writing many small files that
    call ``sync_file_system()`` once at the end.
    """
    directory = os.path.dirname(path) or '.'
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(prefix='.pifleet-', dir=directory)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            handle.write(text)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, st.st_mode & 0o7777 if st else mode)
        if st is not None and os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_or_remove(path, text, mode=0o644):
    """Replace ``path`` with ``text`` by rename, or remove it when ``text`` is None (put back what was there)."""
    if text is None:
        if os.path.lexists(path):
            os.unlink(path)
    else:
        write_text(path, text, mode)


def mounts_under(path, mountinfo='/proc/self/mountinfo'):
    """Mount points at or below ``path`` in this mount namespace, deepest first.

    Mostly asked of a scratch directory that holds no mount any more (once per new root): when mountinfo does not
    hold ``path`` at all, as its own escaping writes it, nothing is parsed (parsing its line per mounted root, per
    root, made a first run of 1000 Pis quadratic)."""
    path = os.path.realpath(path)
    try:
        with open(mountinfo, encoding='utf-8') as info:
            text = info.read()
    except OSError:
        return []
    if _escape(path) not in text:
        return []
    mounts = _parse_mounts(text.splitlines())
    found = [point for point, _fstype, _source in mounts if point == path or point.startswith(path + '/')]
    return sorted(found, key=len, reverse=True)


def release_mounts(path, unmount):
    if not holds_other_file_systems(path):
        return  # the common case, found without reading mountinfo (a line per mounted root, per new root)
    for point in mounts_under(path):
        if unmount is not None:
            unmount(point)


def holds_other_file_systems(path):
    """True when ``path`` is a mount point, a symlink, or holds a directory (symlinks not followed) on another
    device than its own.

    Every mount pifleet makes is of a file system of its own (an ext4 image through a loop device), so its mount
    point shows another st_dev. A bind mount of ``path``'s own file system would not show; pifleet makes none. The
    walk goes into directories only, and a scratch directory is mostly a few entries (the tree a legacy root left
    is walked here and once more by rmtree)."""
    try:
        here = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(here.st_mode) or os.lstat(os.path.dirname(os.path.abspath(path))).st_dev != here.st_dev:
        return True  # a symlink (mounts_under looks where it leads), or a mount point itself
    top = here.st_dev
    folders = [path]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_dev != top:
                    return True
            except FileNotFoundError:  # gone since it was listed
                continue
            folders.append(entry.path)
    return False


def exchange(a, b):
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False when the kernel/fs cannot."""
    try:
        renameat2 = libc().renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), a)


def install(scratch, built, dest):
    """Move ``built`` (inside ``scratch``) to ``dest``; an existing ``dest`` ends up in ``scratch/old``.

    The caller removes the scratch directory afterwards, which disposes of the old tree.
    """
    if not os.path.lexists(dest):
        os.rename(built, dest)
        return
    if exchange(built, dest):
        os.rename(built, scratch.join('old'))
        return
    # No RENAME_EXCHANGE here: two renames; sweep_stale() puts 'old' back if we die in between.
    os.rename(dest, scratch.join('old'))
    os.rename(built, dest)


def discard(parent, label, path, remove=None, unmount=None):
    """Take ``path`` away from its name at once, then delete it at leisure.

    It is renamed into a scratch directory as ``trash`` (never restored by sweep_stale(), unlike
    ``old``), so a crash mid-delete leaves nothing half-deleted under the name. ``remove(path)``
    deletes special trees first (a btrfs subvolume, say); the scratch directory goes in any case.
    """
    release_mounts(path, unmount)  # a mount point inside cannot stay mounted in the trash
    scratch = ScratchDir(parent, label)
    try:
        os.rename(path, scratch.join('trash'))
        if remove is not None:
            remove(scratch.join('trash'))
    finally:
        scratch.close()


def free_bytes(path):
    """Bytes free for root at ``path`` (its nearest existing parent); None when unknown."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path.rstrip('/')) or '/'
    try:
        st = os.statvfs(path or '/')
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def sweep_stale(parent, target_for, unmount=None):
    """Remove scratch directories in ``parent`` whose builder is gone.

    ``target_for(label)`` names the destination a scratch directory was building; if the builder
    died between the two renames of install(), the old tree is moved back there first.
    Returns the names removed.
    """
    removed = []
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return removed
    for name in sorted(names):
        if not name.startswith(PREFIX):
            continue
        path = os.path.join(parent, name)
        try:
            lock = os.open(os.path.join(path, '.lock'), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            lock = None  # died before creating its lock: nothing of value inside
        except OSError:
            continue
        try:
            if lock is not None:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live builder
            label = name[len(PREFIX):].rsplit('-', 2)[0]
            dest = target_for(label)
            old = os.path.join(path, 'old')
            if dest and os.path.isdir(old) and not os.path.lexists(dest):
                os.rename(old, dest)
            release_mounts(path, unmount)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
        finally:
            if lock is not None:
                os.close(lock)
    return removed
