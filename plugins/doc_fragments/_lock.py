# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The bakery-wide lock every pifleet module holds while it writes (see module_utils/_lock.py).
    DOCUMENTATION = r"""
options:
  lock_file:
    description:
      - File the module C(flock)s for its whole write phase, so that two runs at once (two AWX jobs, a cron
        job and a person) never interleave their changes on the bakery. A run that has to wait says so in a warning.
      - Every pifleet module on one bakery must use the same file. Not taken in check mode.
    type: path
    default: /run/lock/pifleet.lock
  lock_timeout:
    description:
      - Seconds to wait for the lock before failing with the holder's PID and module.
    type: int
    default: 3600
"""
