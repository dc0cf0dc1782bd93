# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_hosts
short_description: Find the bakeries and the Pis of the inventory, and the bakery of each Pi
version_added: 0.1.0
author:
  - pifleet maintainers (@pifleet)
description:
  - Reads the group settings where users put them, host by host, so they work in C(group_vars/all), in the bakery
    group's own C(group_vars), in host variables or as extra variables. A host is a bakery when it is in the group
    that its own C(pifleet_bakery_group) names (default V(bakery)); the Pis are the hosts of the group each
    bakery's C(pifleet_pis_group) names (default V(pis)); each Pi is served by the bakery its C(pi_bakery) names,
    else by the first bakery (the rule the fleet role follows).
  - Fails with every problem at once - no bakery, a missing Pi group, a C(pi_bakery) that is not a bakery, a
    Pi in one bakery's group served by another, a limit that selects none of the hosts the playbook runs on - so
    that a playbook never prints "no hosts matched" and ends green.
  - The first play of every playbook of the collection calls it once (C(run_once)) on all hosts.
options:
  _input:
    description: The inventory's groups (C(groups)).
    type: dict
    required: true
  hostvars:
    description: The C(hostvars) of the play.
    type: dict
    required: true
  target:
    description: What the playbook's plays run on; at least one of them must be in O(selected).
    type: str
    choices: [bakeries, pis]
    default: bakeries
  pis:
    description:
      - V(required) - at least one Pi. V(group) - each bakery's Pi group must be in the inventory, and may be empty
        (a fleet of none). V(ignored) - the Pis are not looked at.
    type: str
    choices: [required, group, ignored]
    default: group
  selected:
    description: The hosts the limit lets in (C(ansible_play_hosts_all) of a play on all hosts); omit for no check.
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Find the bakeries and the Pis
  ansible.builtin.set_fact:
    fleet_hosts: "{{ groups | pifleet.netboot.fleet_hosts(hostvars, target='pis', pis='required',
                     selected=ansible_play_hosts_all) }}"
  run_once: true

- name: Show which bakery serves each Pi
  ansible.builtin.debug:
    msg: "{{ fleet_hosts.bakery_of }}"
"""

RETURN = r"""
_value:
  description: The bakeries and the Pis.
  type: dict
  contains:
    bakeries:
      description: The bakeries, in the order of their group.
      type: list
      elements: str
    bakery_group:
      description: The group of the bakeries.
      type: str
    pi_groups:
      description: The Pi group of each bakery.
      type: dict
    pis:
      description: Every Pi of every bakery, each once.
      type: list
      elements: str
    bakery_of:
      description: The bakery of each Pi.
      type: dict
    pis_of:
      description: The Pis of each bakery.
      type: dict
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.hosts import PIS_NEEDS, TARGETS, HostsError, find


def _reader(hostvars):
    """value(host, name) over hostvars, each host's variables read once."""
    seen = {}

    def value(host, name):
        if host not in seen:
            seen[host] = hostvars[host]
        variables = seen[host]
        return variables[name] if name in variables else None
    return value


def fleet_hosts(groups, hostvars, target='bakeries', pis='group', selected=None):
    if target not in TARGETS or pis not in PIS_NEEDS:
        raise AnsibleFilterError('fleet_hosts: target must be one of %s and pis one of %s; got %r, %r'
                                 % (', '.join(TARGETS), ', '.join(PIS_NEEDS), target, pis))
    try:
        return find(groups, _reader(hostvars), target=target, pis=pis,
                    selected=None if selected is None else list(selected))
    except HostsError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {'fleet_hosts': fleet_hosts}
