# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_boot_exports
short_description: Each generation's boot files exported read-only to exactly the Pis whose root uses it
version_added: 0.1.0
author:
  - pifleet maintainers (@pifleet)
description:
  - With C(boot_mount=nfs) each Pi mounts the boot files of its root's generation (that generation's C(boot-nfs))
    at C(/boot/firmware). This filter gives the C(pifleet.netboot.nfs_export) items for them, computed after
    C(pifleet.netboot.pi_root) from its registered result (C(boot_export) of each Pi it converged).
  - A Pi that C(pi_root) did not converge (it failed, or it was not in the call) is placed by O(before), what its
    root used before the run (P(pifleet.netboot.fleet_roots_before#filter)). A path only Pis that failed use is
    kept exactly as it was (C(state=keep)).
options:
  _input:
    description: The fleet plan (P(pifleet.netboot.fleet_plan#filter)).
    type: dict
    required: true
  roots:
    description: The per-Pi entries of C(pifleet.netboot.pi_root)'s result (its C(pis)).
    type: list
    elements: dict
  before:
    description: What each Pi's current root used before the run (P(pifleet.netboot.fleet_roots_before#filter)).
    type: dict
"""

EXAMPLES = r"""
- name: Export each generation's boot files to its Pis
  pifleet.netboot.nfs_export:
    exports: "{{ fleet_plan | pifleet.netboot.fleet_boot_exports(fleet_roots_result.pis, fleet_before) }}"
"""

RETURN = r"""
_value:
  description: C(nfs_export) items, C({path, options, clients}) or C({path, state=keep}), sorted by path.
  type: list
  elements: dict
"""

from ansible.errors import AnsibleFilterError

# The module_utils are imported where a filter runs, not here: ansible-core loads every filter file of the
# collection to find any one filter, in each task's worker process, and compiles them from source there.


def _plan(plan):
    if not isinstance(plan, dict) or 'pis' not in plan:
        raise AnsibleFilterError('expected the fleet plan (pifleet.netboot.fleet_plan)')
    return plan


def fleet_boot_exports(plan, roots=None, before=None):
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import generations as _gen

    plan = _plan(plan)
    return _gen.boot_exports(plan, list(roots or []), dict(before or {}), plan.get('export_scope'))


def fleet_boot_generations(boot, roots=None, before=None):
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import generations as _gen

    return _gen.boot_generations(list(boot or []), list(roots or []), dict(before or {}))


def fleet_roots_before(bakeform_results, store):
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import generations as _gen

    if isinstance(bakeform_results, dict):  # a registered loop
        bakeform_results = bakeform_results.get('results') or []
    return _gen.roots_before(list(bakeform_results or []), store)


class FilterModule:
    def filters(self):
        return {'fleet_boot_exports': fleet_boot_exports, 'fleet_boot_generations': fleet_boot_generations,
                'fleet_roots_before': fleet_roots_before}
