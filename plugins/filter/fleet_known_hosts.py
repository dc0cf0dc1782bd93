# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_known_hosts
short_description: The controller's known_hosts lines for one bakery's Pis
version_added: 0.1.0
author:
  - pifleet maintainers (@pifleet)
description:
  - C(@cert-authority) lines with the bakery's SSH host CA for the names and addresses of its Pis (each Pi's
    C(principals) in the fleet plan, its inventory name, host name, C(pi_ip) and C(ansible_host)), then plain lines with
    the host keys of the Pis whose root cannot take a certificate (C(host_certificate=false) in
    C(pifleet.netboot.pi_root)'s result).
  - Sorted, so the file changes only when the fleet does.
options:
  _input:
    description: The fleet plan of one bakery (P(pifleet.netboot.fleet_plan#filter)).
    type: dict
    required: true
  roots:
    description: The per-Pi entries of C(pi_root)'s result (C(pis)).
    type: list
    elements: dict
  ca_public:
    description: The CA's public key (the content of C(host_ca.pub)); empty for none (plain lines for every Pi).
    type: str
  comment:
    description: A comment at the end of each C(@cert-authority) line (which bakery's CA it is).
    type: str
"""

EXAMPLES = r"""
- name: The known_hosts lines of this bakery's Pis
  ansible.builtin.set_fact:
    lines: "{{ fleet_plan | pifleet.netboot.fleet_known_hosts(fleet_roots_result.pis, ca_pub) }}"
"""

RETURN = r"""
_value:
  description: The lines, without newlines.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError

# The module_utils are imported where a filter runs, not here: ansible-core loads every filter file of the
# collection to find any one filter, in each task's worker process, and compiles them from source there.


def fleet_known_hosts(plan, roots=None, ca_public=None, comment=None):
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.sshtrust import known_hosts

    if not isinstance(plan, dict) or 'pis' not in plan:
        raise AnsibleFilterError('fleet_known_hosts expects the fleet plan (pifleet.netboot.fleet_plan)')
    try:
        return known_hosts(plan, list(roots or []), ca_public or None, comment)
    except ValueError as exc:
        raise AnsibleFilterError('fleet_known_hosts: %s' % exc) from None


class FilterModule:
    def filters(self):
        return {'fleet_known_hosts': fleet_known_hosts}
