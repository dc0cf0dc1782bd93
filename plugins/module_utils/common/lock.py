# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One bakery-wide lock for the write phase of every pifleet module.

Two runs at once (two AWX jobs, a cron job and a person) would otherwise interleave their writes to
the exports file, the fleet map, the roots and the disks. Each module takes an exclusive flock() on
one file before it changes anything and keeps it until it exits; a run that has to wait says so.
The lock file holds the holder's PID and module name, for the message of whoever waits.

The lock lives in a directory only root can use (``/run/pifleet``, 0700): in a world-writable one
(``/run/lock`` is 1777) any local user could create the file first and hold a flock on it, stopping
every module and choosing the "holder" text they print. The directory is opened without following
a symbolic link, checked (owner, mode), and the file opened inside it with ``O_NOFOLLOW``; anything
else is refused with what to do, never a traceback.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

DEFAULT_DIR = '/run/pifleet'
DEFAULT_PATH = DEFAULT_DIR + '/pifleet.lock'
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class LockError(Exception):
    """The lock could not be taken (in time, or at all); the message says why and what to do."""


def open_lock_dir(directory):
    """An fd of the lock's directory, made 0700 when missing; LockError unless only its owner (root, or the user we
    run as) can use it."""
    uid = os.geteuid()
    try:
        os.makedirs(os.path.dirname(directory.rstrip('/')) or '/', 0o755, exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        fd = os.open(directory, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LockError('the bakery lock\'s directory %s is a symbolic link or not a directory: pifleet keeps its '
                            'lock in a directory of its own that only root can use, so that no other user can take '
                            'or hold the lock; remove %s (it is not pifleet\'s) and run again, or set lock_file to a '
                            'path in such a directory' % (directory, directory)) from None
        raise LockError('the bakery lock\'s directory %s cannot be made or opened: %s; check the path and that the '
                        'module runs as root (become: true), or set lock_file' % (directory, exc.strerror or exc)) \
            from None
    st = os.fstat(fd)
    if st.st_uid not in (0, uid) or st.st_mode & 0o077:
        os.close(fd)
        raise LockError('the bakery lock\'s directory %s is owned by uid %d with mode %04o; pifleet wants it owned by '
                        'uid %d (the user the modules run as, root on a bakery) with mode 0700, so that no other '
                        'user can take or hold the lock and stop every pifleet module. Check who made it, then '
                        'remove it (pifleet makes it again) or run: chown %d %s && chmod 0700 %s'
                        % (directory, st.st_uid, st.st_mode & 0o7777, uid, uid, directory, directory))
    return fd


def open_lock_file(path):
    """An fd of the lock file (made 0600), opened inside its checked directory without following a link."""
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = open_lock_dir(directory)
    try:
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        why = 'a symbolic link' if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise LockError('the bakery lock %s cannot be opened: %s; remove it (pifleet makes it again) and run again'
                        % (path, why)) from None
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid()):
        os.close(fd)
        raise LockError('the bakery lock %s is not a regular file of uid %d (something else made it); remove it '
                        '(pifleet makes it again) and run again' % (path, os.geteuid()))
    return fd


class BakeryLock:
    """``with BakeryLock(path, who, timeout) as lock:`` — ``lock.waited`` is the seconds spent waiting."""

    def __init__(self, path=DEFAULT_PATH, who='pifleet', timeout=3600.0, poll=0.2):
        self.path, self.who, self.timeout, self.poll = path, who, timeout, poll
        self.fd = None
        self.waited = 0.0
        self.holder = None

    def acquire(self):
        self.fd = open_lock_file(self.path)
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    self.release()
                    raise LockError('locking the bakery lock %s failed: %s; check the file system it is on (a '
                                    'local one, such as /run), or set lock_file' % (self.path, exc.strerror or exc)) \
                        from None
            if self.holder is None:
                self.holder = self._read_holder()
            if time.monotonic() - start > self.timeout:
                os.close(self.fd)
                self.fd = None
                raise LockError('another pifleet run (%s) has held the bakery lock %s for more than %d s; wait for '
                                'it to finish, or raise lock_timeout'
                                % (self.holder or 'unknown', self.path, self.timeout))
            time.sleep(self.poll)
        self.waited = round(time.monotonic() - start, 3) if self.holder else 0.0
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, ('pid %d, %s\n' % (os.getpid(), self.who)).encode(), 0)
        return self

    def _read_holder(self):
        try:
            return os.pread(self.fd, 200, 0).decode('utf-8', errors='replace').strip() or None
        except OSError:
            return None

    def message(self):
        """What the run says when it had to wait; None when it did not."""
        if not self.holder:
            return None
        return 'waited %.1f s for the bakery lock %s held by another pifleet run (%s)' % (
            self.waited, self.path, self.holder)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
