# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_failures
short_description: The Pis that failed the fleet's steps, from the registered module results
version_added: 0.1.0
author:
  - pifleet maintainers (@pifleet)
description:
  - The fleet role calls each list module (C(pi_root), C(pi_disk), C(nfs_export), C(pi_boot)) once for the whole
    fleet; each finishes every Pi it can and lists the others in C(failed_pis). This filter turns the registered
    results of the steps into one list, one entry per failed Pi and step, named from the fleet plan.
  - An export that is no one Pi's (a bakeform's boot files, from C(nfs_export)'s C(failed_exports)) is named by its
    path, with no serial.
  - See also P(pifleet.netboot.fleet_healthy#filter) (what the later steps do with them) and
    P(pifleet.netboot.fleet_failure_summary#filter) (the message the role fails with).
options:
  _input:
    description:
      - The registered results by step name (the key C(roots) holding the registered result of C(pi_root), and so
        on); a step that did not run may be missing, null or skipped.
    type: dict
    required: true
  plan:
    description: The fleet plan (P(pifleet.netboot.fleet_plan#filter)), to name each Pi by its inventory name.
    type: dict
"""

EXAMPLES = r"""
- name: Note the Pis whose roots failed
  ansible.builtin.set_fact:
    fleet_failed: "{{ {'roots': fleet_roots_result} | pifleet.netboot.fleet_failures(fleet_plan) }}"
"""

RETURN = r"""
_value:
  description: One entry per failed Pi and step.
  type: list
  elements: dict
  contains:
    name:
      description: Inventory name (null for a Pi the plan does not hold; the path of an export of no one Pi).
      type: str
    serial:
      description: Serial of the Pi (8 hex digits), or null.
      type: str
    step: {description: The step (the key of the input)., type: str}
    msg: {description: Why it failed., type: str}
"""

from ansible.errors import AnsibleFilterError
from ansible.utils.unsafe_proxy import wrap_var

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.failures import failures, healthy, summary


def fleet_failures(results, plan=None):
    if not isinstance(results, dict):
        raise AnsibleFilterError('fleet_failures expects {step: registered result}, got %s' % type(results).__name__)
    # Module messages may quote what a Pi wrote: data, never a template.
    return wrap_var(failures(results, plan))


def fleet_healthy(plan, failed=None):
    if not isinstance(plan, dict) or not all(key in plan for key in ('pis', 'disks', 'exports', 'boot')):
        raise AnsibleFilterError('fleet_healthy expects the fleet plan (pifleet.netboot.fleet_plan)')
    return healthy(plan, list(failed or []))


def fleet_failure_summary(failed):
    return wrap_var(summary(list(failed or [])))


class FilterModule:
    def filters(self):
        return {'fleet_failures': fleet_failures, 'fleet_healthy': fleet_healthy,
                'fleet_failure_summary': fleet_failure_summary}
