# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: lan_guard
short_description: The nftables table that lets a Pi's address send NFS and TFTP only from that Pi's MAC
version_added: 0.1.0
author:
  - pifleet maintainers (@pifleet)
description:
  - Reads C(pi_ip), C(pi_mac) (for a Pi 3 without it, C(pi_model) and C(pi_serial), as its MAC is C(b8:27:eb) and the
    serial's low three bytes) of the given inventory hosts and returns the nftables script of the
    C(pifleet.netboot.lan_guard) role, with the pairs it allows.
  - Packets to the given ports from a Pi's address are dropped unless they come from that Pi's MAC; packets from
    other addresses and to other ports (SSH) are left alone.
  - Fails listing every problem (a Pi with C(pi_ip) but no MAC, a malformed value, an address two Pis claim). Pis
    without C(pi_ip) have no address to guard and are left out. C(pi_power) is never read.
options:
  _input:
    description: Inventory names of the Pis (for example C(groups['pis'])).
    type: list
    elements: str
    required: true
  hostvars:
    description: The C(hostvars) of the play.
    type: dict
    required: true
  tcp_ports:
    description: TCP ports guarded (rpcbind, NFS, MOUNT); ports or ranges like C(32768-60999).
    type: list
    elements: raw
    required: true
  udp_ports:
    description: UDP ports guarded (TFTP and its transfer ports, rpcbind, NFS, MOUNT).
    type: list
    elements: raw
    required: true
  interfaces:
    description: Guard packets arriving on these interfaces only; empty guards every interface.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Render the guard of the inventory's Pis
  ansible.builtin.copy:
    content: "{{ (groups['pis'] | pifleet.netboot.lan_guard(hostvars, tcp_ports=[111, 2049, 20048],
      udp_ports=[69, 111, 2049, 20048, '32768-60999'])).ruleset }}"
    dest: /etc/pifleet/lan-guard.nft
    mode: "0644"
"""

RETURN = r"""
_value:
  description: C(ruleset), the nftables script (it makes table C(inet pifleet_lan_guard) whole in one transaction),
    and C(pairs), the Pis it allows (C(name), C(mac), C(ip), C(family)).
  type: dict
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.languard import GuardError, pairs, ruleset

PI_VARS = ('pi_serial', 'pi_mac', 'pi_model', 'pi_ip')  # never pi_power


def lan_guard(names, hostvars, tcp_ports, udp_ports, interfaces=()):
    pis_vars = {}
    for name in names or []:
        host = hostvars[name]
        pis_vars[name] = {key: host[key] for key in PI_VARS if key in host}
    try:
        found = pairs(pis_vars)
        return {'ruleset': ruleset(found, tcp_ports, udp_ports, list(interfaces or [])), 'pairs': found}
    except GuardError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {'lan_guard': lan_guard}
