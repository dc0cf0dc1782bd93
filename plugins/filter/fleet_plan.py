# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_plan
short_description: Validate the Pis of the inventory and plan the fleet's module calls
version_added: 0.1.0
author:
  - pifleet maintainers (@pifleet)
description:
  - Reads the C(pi_*) variables of the given inventory hosts, validates all of them at once (missing or malformed
    serials, MACs, addresses, models, prefixes, host names; duplicates; bakeforms not declared or unable to boot
    the Pi's model; a Pi without C(pi_ip) unless O(export_scope) widens its exports) and fails with every problem
    listed, or returns the argument lists for C(pi_root), C(pi_disk), C(nfs_export) and C(pi_boot).
  - Also refused, with the fix - a C(pi_*) variable the collection does not know (the closest known name is
    suggested); a serial, MAC, prefix or host name that YAML read as a number (an unquoted serial C(00123456) is
    octal 42798; quote it); C(pi_disks) sizes that Ansible's own size parsing (C(human_to_bytes)) refuses, unknown disk
    keys, an ext4 disk under 8 MiB; O(bakeforms) items without a name or with two or no sources, unknown keys, and
    a download without a well-formed, non-zero C(sha256:<64 hex>) checksum or a C(sha256:<URL>) of a checksum
    file.
  - The disks' sizes reach C(pi_disk) in bytes, as read here.
  - Used by the C(pifleet.netboot.fleet) role; one call plans the whole fleet.
  - It never reads C(pi_power) (the power, status and reimage playbooks do), so the plan holds no plug password or
    SNMP community and the fleet needs no vault for them.
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
  bakeforms:
    description:
      - The declared bakeforms (C(pifleet_bakeforms)); an item's C(models), when known, lists the Pi models it
        boots. With no Pis (an empty list of names) only the bakeforms are checked.
    type: list
    elements: dict
    required: true
  default_bakeform:
    description: Bakeform of Pis that name none.
    type: str
  export_scope:
    description: Network (CIDR) that exports of Pis without C(pi_ip) go to. Empty means such a Pi is an error.
    type: str
  roots_dir:
    description: Directory of the per-Pi roots.
    type: str
    default: /srv/pifleet/roots
  disks_dir:
    description: Directory of the per-Pi disks.
    type: str
    default: /srv/pifleet/disks
  nfs_server:
    description: Address of the bakery that the Pis mount their roots from.
    type: str
    required: true
  ssh_authorized_keys:
    description: Keys for Pis that set no C(pi_ssh_authorized_keys).
    type: list
    elements: str
  boot_mount:
    description:
      - How the Pis mount their generation's boot files (the C(pifleet.netboot.pi_root) option). The exports of
        the generations' C(boot-nfs) are not in the plan (they depend on which generation each root uses, known after
        C(pi_root), see P(pifleet.netboot.fleet_boot_exports#filter)).
    type: str
    choices: [none, nfs]
    default: none
  store:
    description: The bakeform store (where the boot folders exported with O(boot_mount=nfs) live).
    type: str
    default: /srv/pifleet/bakeforms
  models:
    description:
      - Pi models each bakeform boots, by bakeform name, as found in its manifest after ingest (the C(models) of
        the C(pifleet.netboot.bakeform) result). Overrides the declared C(models).
    type: dict
  bakery:
    description:
      - Inventory name of the bakery being planned. Only Pis whose C(pi_bakery) names it, or Pis without
        C(pi_bakery) when it is the first of O(bakeries), are planned.
    type: str
  bakeries:
    description: Inventory names of all bakeries (for example C(groups['bakery'])). Defaults to [O(bakery)].
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Plan the fleet
  ansible.builtin.set_fact:
    fleet: "{{ groups['pis'] | pifleet.netboot.fleet_plan(hostvars, bakeforms=pifleet_bakeforms,
               nfs_server=ansible_default_ipv4.address) }}"
"""

RETURN = r"""
_value:
  description: >-
    A dict with C(pis) (each validated Pi's C(name), C(serial), C(model), C(bakeform), C(ip) and C(principals): what
    the fleet role's later steps read of it), C(roots), C(disks), C(exports) and C(boot) (argument lists for the
    modules), C(serials) and C(export_scope). A Pi that sets C(pi_cloud_init) (a cloud-config mapping or YAML text,
    merged into the seed's user-data) or C(pi_cloud_init_instance) (raise it for a new cloud-init instance-id) has
    them checked; its C(roots) item carries C(cloud_init) = C({instance}) and, when it has user data,
    C(cloud_init_from) (its inventory name). The user data itself stays out of the plan (it may hold secrets, and
    the plan is a fact C(-v) prints): P(pifleet.netboot.fleet_user_data#filter) reads it for the C(pi_root) call.
    Each C(exports) item names its Pi (C(serial), C(hostname)) and each C(boot) item its C(serial), so a Pi that
    fails a step is named and kept.
  type: dict
"""

from ansible.errors import AnsibleFilterError

# The module_utils are imported where a filter runs, not here: ansible-core loads every filter file of the
# collection to find any one filter, in each task's worker process, and compiles them from source there.

# Not pi_power: the fleet powers nothing, and reading it would template its secrets (an undefined vault variable
# fails the run) and print them with the plan at -v.
PI_VARS = ('pi_serial', 'pi_mac', 'pi_tftp_prefix', 'pi_model', 'pi_ip', 'pi_bakeform', 'pi_hostname', 'pi_disks',
           'pi_cmdline_extra', 'pi_config_txt', 'pi_ssh_authorized_keys', 'pi_cloud_init', 'pi_cloud_init_instance')
# Every pi_* variable the collection reads somewhere: a Pi's other pi_* names are typos (pi_disk for pi_disks).
KNOWN_PI_VARS = frozenset((*PI_VARS, 'pi_power', 'pi_bakery'))


def fleet_plan(names, hostvars, bakeforms, *, default_bakeform=None, export_scope=None, roots_dir='/srv/pifleet/roots',
               disks_dir='/srv/pifleet/disks', nfs_server=None, ssh_authorized_keys=None, bakery=None,
               bakeries=None, models=None, boot_mount='none', store='/srv/pifleet/bakeforms'):
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import checks
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.fleet import PlanError, plan
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.hosts import owner

    problems = []
    declared = checks.bakeforms(bakeforms, problems)
    for name, found in (models or {}).items():
        if name in declared and found is not None:
            declared[name] = [int(model) for model in found]
    if not default_bakeform and len(declared) == 1:
        default_bakeform = next(iter(declared))
    bakeries = list(bakeries or ([bakery] if bakery else []))
    pis_vars = {}
    for name in names or []:
        host = hostvars[name]
        named = host['pi_bakery'] if 'pi_bakery' in host else None
        if named and bakeries and named not in bakeries:
            raise AnsibleFilterError('%s: pi_bakery %r is not a bakery of the inventory (bakeries: %s)'
                                     % (name, named, ', '.join(bakeries)))
        if bakery and owner(named, bakeries) != bakery:
            continue
        checks.unknown_keys(name, [key for key in host if key.startswith('pi_')], KNOWN_PI_VARS, problems)
        pis_vars[name] = {key: host[key] for key in PI_VARS if key in host}
        if host.get('ansible_host') not in (None, ''):  # a name its host certificate must be valid for
            pis_vars[name]['ansible_host'] = str(host['ansible_host'])
    settings = {'bakeforms': declared, 'default_bakeform': default_bakeform, 'export_scope': export_scope,
                'roots_dir': roots_dir, 'disks_dir': disks_dir, 'nfs_server': nfs_server,
                'ssh_authorized_keys': ssh_authorized_keys, 'boot_mount': boot_mount, 'store': store}
    try:
        return plan(pis_vars, settings, problems)
    except PlanError as exc:
        raise AnsibleFilterError(str(exc)) from None


def fleet_user_data(roots, hostvars):
    """The plan's roots items with each Pi's user data read from the inventory (documented in fleet_user_data.yml)."""
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.fleet import user_data
    from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.cloudinit import CloudInitError

    names = [item['cloud_init_from'] for item in roots or [] if item.get('cloud_init_from')]
    try:
        return user_data(roots or [], {name: {'pi_cloud_init': hostvars[name].get('pi_cloud_init')} for name in names})
    except CloudInitError as exc:
        raise AnsibleFilterError(str(exc)) from None


def fleet_unbooted(pis, models):
    """Names of the plan's Pis whose bakeform does not boot their model (documented in fleet_unbooted.yml)."""
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.fleet import unbooted

    return unbooted(pis, models)


class FilterModule:
    def filters(self):
        return {'fleet_plan': fleet_plan, 'fleet_user_data': fleet_user_data, 'fleet_unbooted': fleet_unbooted}
