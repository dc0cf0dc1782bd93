# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The deadline of every external tool a pifleet module runs (see module_utils/common/command.py).
    DOCUMENTATION = r"""
options:
  command_timeout:
    description:
      - Seconds each external tool the module runs (C(mke2fs), C(mount), C(ssh-keygen), ...) may take. One that takes
        longer is killed with everything it started, and the Pi it ran for fails with "timed out after N s"; the other
        Pis of the call go on.
    type: int
    default: 600
"""
