# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The bakery-wide lock every pifleet module holds while it writes (see module_utils/common/lock.py).
    DOCUMENTATION = r"""
options:
  lock_file:
    description:
      - File the module C(flock)s for its whole write phase, so that two runs at once (two AWX jobs, a cron
        job and a person) never interleave their changes on the bakery. A run that has to wait says so in a warning.
      - Every pifleet module on one bakery must use the same file. Not taken in check mode.
      - Its directory must be one only the module's user (root) can use, mode 0700, never a symbolic link. In a
        directory others can write to (C(/run/lock) is 1777), any local user could create the file first and hold
        it, stopping every pifleet module. The directory is made (0700) when missing; one owned by another user,
        open to others or a symbolic link is refused with what to do, and so is a lock file that is a symbolic link
        or not a regular file.
    type: path
    default: /run/pifleet/pifleet.lock
  lock_timeout:
    description:
      - Seconds to wait for the lock before failing with the holder's PID and module.
    type: int
    default: 3600
"""
