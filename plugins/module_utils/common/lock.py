# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One bakery-wide lock for the write phase of every pifleet module.

Two runs at once (two AWX jobs, a cron job and a person) would otherwise interleave their writes to
the exports file, the fleet map, the roots and the disks. Each module takes an exclusive flock() on
one file before it changes anything and keeps it until it exits; a run that has to wait says so.
The lock file holds the holder's PID and module name, for the message of whoever waits.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

DEFAULT_PATH = '/run/lock/pifleet.lock'


class LockError(Exception):
    """The lock could not be taken in time; the message names the holder."""


class BakeryLock:
    """``with BakeryLock(path, who, timeout) as lock:`` — ``lock.waited`` is the seconds spent waiting."""

    def __init__(self, path=DEFAULT_PATH, who='pifleet', timeout=3600.0, poll=0.2):
        self.path, self.who, self.timeout, self.poll = path, who, timeout, poll
        self.fd = None
        self.waited = 0.0
        self.holder = None

    def acquire(self):
        os.makedirs(os.path.dirname(self.path) or '.', 0o755, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
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
