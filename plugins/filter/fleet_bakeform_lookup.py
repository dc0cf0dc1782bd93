# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_bakeform_lookup
short_description: One read-only shell command that tells which bakeforms' sources the store holds already
version_added: 0.1.0
author:
  - pifleet maintainers (@pifleet)
description:
  - The fleet role runs a C(pifleet.netboot.bakeform) that makes a new generation asynchronously, so it needs to
    know beforehand which ones will. This filter gives the command (for C(ansible.builtin.raw)) that prints a
    C(stat) of each local source and the manifests of its stored generations;
    P(pifleet.netboot.fleet_bakeforms_stored#filter) reads its output.
  - Only the bakeforms this can settle are in it, those with an inline C(sha256:) checksum or a local source with
    an absolute path and no checksum. An empty string when there is none.
options:
  _input:
    description: The fleet's bakeforms (C(pifleet_bakeforms) items).
    type: list
    elements: dict
    required: true
  store:
    description: The bakeform store on the bakery.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Look up which bakeforms' sources the store holds already
  ansible.builtin.raw: "{{ fleet_bakeforms | pifleet.netboot.fleet_bakeform_lookup(fleet_store) }}"
  register: fleet_bakeform_lookup
  changed_when: false
"""

RETURN = r"""
_value:
  description: A POSIX shell command that only reads (C(stat), C(cat)) and exits 0.
  type: str
"""

# The module_utils are imported where a filter runs, not here: ansible-core loads every filter file of the
# collection to find any one filter, in each task's worker process, and compiles them from source there.


def fleet_bakeform_lookup(items, store):
    from ansible_collections.pifleet.netboot.plugins.module_utils.store import sourcelook as _look

    return _look.command(list(items or []), str(store))


def fleet_bakeforms_stored(stdout, items):
    from ansible_collections.pifleet.netboot.plugins.module_utils.store import sourcelook as _look

    return _look.stored(stdout if isinstance(stdout, str) else '', list(items or []))


class FilterModule:
    def filters(self):
        return {'fleet_bakeform_lookup': fleet_bakeform_lookup, 'fleet_bakeforms_stored': fleet_bakeforms_stored}
