# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_preflight
short_description: The fleet role's pre-flight line, from check-mode runs of pi_root and pi_disk
version_added: 0.1.0
author:
  - pifleet maintainers (@pifleet)
description:
  - Before the roots of new or rebuilt Pis are made, the fleet role runs C(pi_root) and C(pi_disk) in check mode over
    those Pis and prints one line made by this filter, so a long run says up front what it will do.
  - The line counts the roots to make (new, rebuilt) and their clone method (V(reflink) or V(copy)), the disks file
    systems to make or grow, and, per data file system, what they need at most (their full sizes, the space ledger's
    worst case), what the worst case of every Pi image would then be against what
    O(pifleet.netboot.pi_root#module:overcommit) allows, and the space free now; and the Pis that would fail.
options:
  _input:
    description: The registered result of C(pi_root) in check mode (skipped or null when it did not run).
    type: raw
    required: true
  disks:
    description: The registered result of C(pi_disk) in check mode (skipped or null when it did not run).
    type: raw
"""

EXAMPLES = r"""
- name: Say what the run will make
  ansible.builtin.debug:
    msg: "{{ fleet_roots_preflight | pifleet.netboot.fleet_preflight(fleet_disks_preflight) }}"
"""

RETURN = r"""
_value:
  description: >-
    One line, for example C(Pre-flight: 3 roots to make (2 new, 1 rebuilt) by reflink; 2 disks file systems
    (2 new). /srv/pifleet (xfs): they need 8 GiB at most (their full sizes); 120 GiB with every Pi image full,
    of 880 GiB allowed; 610 GiB free now).
  type: str
"""

from ansible.utils.unsafe_proxy import wrap_var

# The module_utils are imported where a filter runs, not here: ansible-core loads every filter file of the
# collection to find any one filter, in each task's worker process, and compiles them from source there.


def fleet_preflight(roots, disks=None):
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.preflight import preflight

    # Module messages and paths are data, never a template.
    return wrap_var(preflight(roots, disks))


def fleet_preflight_items(items, before=None):
    """The plan's items of the Pis whose roots this run makes (documented in fleet_preflight_items.yml)."""
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.preflight import to_make

    return to_make(items, before)


class FilterModule:
    def filters(self):
        return {'fleet_preflight': fleet_preflight, 'fleet_preflight_items': fleet_preflight_items}
