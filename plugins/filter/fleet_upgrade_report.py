# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_upgrade_report
short_description: The report of one wave of the upgrade playbook
version_added: 0.1.0
author:
  - pifleet maintainers (@pifleet)
description:
  - Names each Pi of a wave that was not upgraded (its new root could not be made, or it did not come back on it
    within the timeout), with its serial, its last boot event and what was rolled back (and whether it came back),
    and says whether the failures exceed the wave's budget.
options:
  _input:
    description:
      - What the wave did, C(wave), C(serials), C(build_failed), C(roots), C(down), C(new_boot), C(rollback_roots),
        C(rollback_failed), C(back), C(rollback_boot) (see C(playbooks/tasks/upgrade_report.yml)).
    type: dict
    required: true
  budget:
    description: How many Pis of the wave may fail, a count (V(2)) or a percentage of the wave (V(10%), rounded down).
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Put the wave's report together
  ansible.builtin.set_fact:
    report: "{{ facts | pifleet.netboot.fleet_upgrade_report('10%') }}"
"""

RETURN = r"""
_value:
  description: C(failures) (each C(name), C(serial), C(reason), C(last_boot), C(rolled_back), C(back), C(line)),
    C(budget), C(exceeded), C(text) (the report, empty without failures).
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible.utils.unsafe_proxy import wrap_var

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.upgrade import reimage_report, report


def fleet_upgrade_report(facts, budget):
    if not isinstance(facts, dict):
        raise AnsibleFilterError('fleet_upgrade_report expects a dict of what the wave did')
    try:
        # Boot events and module messages may quote what a Pi sent: data, never a template.
        return wrap_var(report(facts, budget))
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from None


def fleet_reimage_report(facts):
    if not isinstance(facts, dict):
        raise AnsibleFilterError('fleet_reimage_report expects a dict of what the reimage did')
    # Boot events and module messages may quote what a Pi sent: data, never a template.
    return wrap_var(reimage_report(facts))


class FilterModule:
    def filters(self):
        return {'fleet_upgrade_report': fleet_upgrade_report, 'fleet_reimage_report': fleet_reimage_report}
