#!/usr/bin/python
# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pi_boot
short_description: Per-Pi boot folders (cmdline.txt, config.txt) and the TFTP hook's fleet map
version_added: 0.1.0
description:
  - Gives every Pi a folder C(<boot_dir>/<prefix>/) holding the boot files that differ from its bakeform
    generation's, and writes the fleet map (O(map_path)) that the pifleet TFTP hook reads, so that a request for
    C(<prefix>/<file>) is served from the Pi's folder first, then from the boot files of the generation its root
    is built from, C(<store>/<bakeform>/generations/<generation>/boot/), so a kernel always boots with its own modules.
  - "A Pi whose bakeform or generation is not in the store, or cannot boot its model, fails alone: its folder and
    map entry stay as they were, the other Pis are served, and the module fails at the end naming it."
  - "C(cmdline.txt) is the bakeform's without its SD-card root and first-boot tokens (C(root=), C(rootfstype=),
    C(init=), C(fsck.repair=), C(resize), C(splash), C(plymouth.*), C(network-config=)) plus an NFS root:
    C(root=/dev/nfs nfsroot=<nfsroot>,vers=3,noacl rw ip=dhcp rootwait network-config=disabled), then O(pis[].cmdline_extra)."
  - C(network-config=disabled) keeps cloud-init (Raspberry Pi OS based on Debian 13) from turning the kernel's DHCP
    lease into its own network config for the NIC the root is mounted over; systems without cloud-init ignore it.
  - C(config.txt) is written only for Pis with O(pis[].config_txt) lines (the bakeform's, then a
    C(# pifleet.netboot) block under C([all])); other Pis get the bakeform's.
  - Each folder carries the marker C(.pifleet-boot.json). Folders without it are never changed or removed.
  - O(store) and O(boot_dir) must lie inside the hook's C(roots) (by default C(/srv/pifleet) and C(/var/lib/pifleet)).
  - Meant to be called once for the whole fleet; files and the map are only written when their content changes.
  - A Pi that cannot be served (its bakeform or generation missing or unable to boot its model, its folder not made by pi_boot, a
    wrong nfsroot or config.txt line) fails alone; its folder and its map entry stay exactly
    as they were, also with O(exclusive=true); every other Pi is written, and then the task fails naming each failed
    Pi (RV(failed_pis)). Problems of the call as a whole (a name or prefix given twice or invalid, a missing
    O(default_bakeform), the lock) fail it without writing anything.
  - Reads and writes the folders and the map under the bakery lock (not in check mode).
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
  - pifleet.netboot._attributes.full
  - pifleet.netboot._lock
attributes:
  diff_mode:
    details: One entry per file written or removed (the map first), at most 50, then one saying how many more.
options:
  store:
    description:
      - Directory of the bakeform store (see M(pifleet.netboot.bakeform)).
    type: path
    default: /srv/pifleet/bakeforms
  boot_dir:
    description:
      - Directory holding one folder per Pi, named after its TFTP prefix.
    type: path
    default: /srv/pifleet/pis
  map_path:
    description:
      - The fleet map the TFTP hook reads.
    type: path
    default: /var/lib/pifleet/tftp/map.json
  default_bakeform:
    description:
      - Bakeform whose boot files (of its current generation) answer root-level requests (the Pi 3's
        C(bootcode.bin)); the map's C(default).
      - When not given, the map's C(default) is empty with O(exclusive=true) and kept as it is otherwise.
    type: str
  exclusive:
    description:
      - With V(true) the map holds only the Pis of O(pis), and marked folders in O(boot_dir) of other prefixes
        are removed.
      - With V(false) other Pis' map entries and folders are kept; a Pi of O(pis) found in the map under another
        prefix is moved (its old entry and marked folder removed).
    type: bool
    default: true
  pis:
    description:
      - The Pis.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Inventory name of the Pi.
        type: str
        required: true
      prefix:
        description:
          - TFTP prefix the Pi asks with, the name of its folder.
          - The serial as 8 hex digits, the MAC (C(dc-a6-32-01-36-c2) or with colons), or a custom string of up to
            32 letters, digits, C(.), C(_) and C(-) (EEPROM C(TFTP_PREFIX_STR)). Serials and MACs are stored lower-case.
        type: str
        required: true
      bakeform:
        description:
          - Name of the bakeform in O(store) whose boot files the Pi boots. Required when O(pis[].state=present).
        type: str
      generation:
        description:
          - The generation of O(pis[].bakeform) whose boot files the Pi boots, the one its root is built from (the
            C(generation) M(pifleet.netboot.pi_root) returns). Defaults to the bakeform's current generation.
        type: int
      model:
        description:
          - Pi model. When given, a bakeform whose boot files cannot boot it is refused.
        type: int
        choices: [3, 4, 5]
      nfsroot:
        description:
          - NFS root as C(server:/path), optionally with C(,options). Required when O(pis[].state=present).
          - V(vers=3) is added unless V(vers=2) is given; C(proto=) and NFS 4 are refused (the initramfs mounts
            the root with klibc C(nfsmount)).
          - V(noacl) is added unless V(acl) or V(noacl) is given (NFS-Ganesha answers the NFSACL side protocol
            with errors that fill the Pi's journal).
        type: str
      cmdline_extra:
        description:
          - Kernel parameters appended to C(cmdline.txt).
        type: str
      config_txt:
        description:
          - Extra lines for the Pi's C(config.txt), one per item.
        type: list
        elements: str
      state:
        description:
          - V(absent) removes the Pi's folder (when it carries the marker) and its map entry.
          - V(keep) leaves the Pi's folder and the map entries that name it exactly as they are (none, if it has
            none), also with O(exclusive=true). The fleet role passes it for a Pi that failed an earlier step.
        type: str
        choices: [present, absent, keep]
        default: present
      serial:
        description:
          - Serial of the Pi (8 hex digits), to name it in RV(failed_pis). Defaults to O(pis[].prefix) when that is a
            serial.
        type: str
"""

EXAMPLES = r"""
- name: Boot folders and fleet map for the whole fleet
  pifleet.netboot.pi_boot:
    default_bakeform: bookworm-lite
    pis:
      - name: pi-01
        prefix: 3a4b5c6d
        bakeform: bookworm-lite
        model: 4
        nfsroot: 10.0.0.2:/srv/pifleet/roots/3a4b5c6d
      - name: pi-02
        prefix: dc-a6-32-01-36-c2
        bakeform: bookworm-lite
        model: 5
        nfsroot: 10.0.0.2:/srv/pifleet/roots/0a1b2c3d
        cmdline_extra: systemd.log_level=debug
        config_txt:
          - dtoverlay=disable-wifi

- name: Remove one Pi, keep the others
  pifleet.netboot.pi_boot:
    exclusive: false
    pis:
      - name: pi-02
        prefix: dc-a6-32-01-36-c2
        state: absent
"""

RETURN = r"""
pis:
  description: One item per Pi of O(pis).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Inventory name.
      type: str
    prefix:
      description: TFTP prefix as stored in the map.
      type: str
    dir:
      description: The Pi's folder.
      type: str
    state:
      description: The requested state.
      type: str
    changed:
      description: Whether files of this folder were (or in check mode would be) written or removed.
      type: bool
    files:
      description: Names of the files written or removed in the folder.
      type: list
      elements: str
    generation:
      description: The generation whose boot files the Pi is served, as C(<bakeform>@<generation>); null when absent
        or failed.
      type: str
    msg:
      description: Why this Pi failed (its folder and map entry were left as they were).
      type: str
      returned: when this Pi failed
  sample:
    - name: pi-01
      prefix: 3a4b5c6d
      dir: /srv/pifleet/pis/3a4b5c6d
      state: present
      changed: true
      files: [.pifleet-boot.json, cmdline.txt]
      generation: bookworm-lite@3
map:
  description: The fleet map.
  returned: always
  type: dict
  contains:
    path:
      description: Path of the map.
      type: str
    changed:
      description: Whether the map was (or would be) rewritten.
      type: bool
    prefixes:
      description: Number of prefixes in the map.
      type: int
  sample:
    path: /var/lib/pifleet/tftp/map.json
    changed: false
    prefixes: 2
failed_pis:
  description: The Pis that failed (each kept as it was; every other Pi was written), each with why.
  returned: always
  type: list
  elements: dict
  contains:
    serial:
      description: Its serial (O(pis[].serial), or its prefix when that is a serial) or null.
      type: str
    hostname:
      description: Its inventory name (O(pis[].name)).
      type: str
    name: {description: Its inventory name., type: str}
    prefix: {description: Its TFTP prefix., type: str}
    msg: {description: Why it failed., type: str}
  sample:
    - serial: 3a4b5c6d
      hostname: pi-01
      name: pi-01
      prefix: 3a4b5c6d
      msg: "pi-01 is a Pi 5 but bakeform old@1 has boot files for Pi 3, 4 only; pick a bakeform with kernel_2712.img"
lock_waited:
  description: Seconds this run waited for another pifleet run to release the bakery lock.
  returned: when it had to wait
  type: float
  sample: 1.5
removed:
  description: Pi folders removed (V(absent), moved, or not listed with O(exclusive=true)).
  returned: always
  type: list
  elements: str
  sample: [/srv/pifleet/pis/0badcafe]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import is_serial
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import (
    LOCK_ARGS,
    PifleetModule,
    failed_pi,
    failed_pis_message,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.bootfiles import cap_diffs
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.bootwork import PiBoots, check_items


def failures(items, plan):
    """``failed_pis`` of the run: each Pi that failed alone, in the order given."""
    return [failed_pi(item.get('serial') or (item['prefix'] if is_serial(item['prefix']) else None), item['name'],
                      plan.failed[item['name']], name=item['name'], prefix=item['prefix'])
            for item in items if item['name'] in plan.failed]


def main():
    pi_options = dict(
        name=dict(type='str', required=True),
        prefix=dict(type='str', required=True),
        bakeform=dict(type='str'),
        generation=dict(type='int'),
        model=dict(type='int', choices=[3, 4, 5]),
        nfsroot=dict(type='str'),
        cmdline_extra=dict(type='str'),
        config_txt=dict(type='list', elements='str'),
        state=dict(type='str', choices=['present', 'absent', 'keep'], default='present'),
        serial=dict(type='str'),
    )
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type='path', default='/srv/pifleet/bakeforms'),
            boot_dir=dict(type='path', default='/srv/pifleet/pis'),
            map_path=dict(type='path', default='/var/lib/pifleet/tftp/map.json'),
            default_bakeform=dict(type='str'),
            exclusive=dict(type='bool', default=True),
            pis=dict(type='list', elements='dict', required=True, options=pi_options,
                     required_if=[('state', 'present', ('bakeform', 'nfsroot'))]),
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    boots = PiBoots(store=params['store'], boot_dir=params['boot_dir'], map_path=params['map_path'],
                    exclusive=params['exclusive'], default_bakeform=params['default_bakeform'], warn=module.warn)
    base = PifleetModule(module, {'changed': False, 'pis': [], 'removed': [], 'failed_pis': [],
                                  'map': {'path': boots.map_path, 'changed': False, 'prefixes': 0}}, 'pis')
    items, base.problems = check_items(params['pis'])
    base.check()
    lock = base.lock('pi_boot')  # the folders and the map are read and written under it
    try:
        converge(base, boots, items)
    finally:
        if lock:
            lock.release()
    if base.result['failed_pis']:
        base.fail(failed_pis_message('pi_boot', base.result['failed_pis']))
    module.exit_json(**base.result)


def converge(base, boots, items):
    module = base.module
    try:
        plan = boots.plan(items)
    except OSError as exc:
        base.fail('reading the current boot files failed for %s: %s; check that pi_boot runs as a user who can read '
                  '%s' % (exc.filename, exc.strerror or exc, ', '.join((boots.store, boots.boot_dir, boots.map_path))))
    base.result.update(pis=plan.pis, map=plan.map)
    base.problems = plan.problems
    base.check()
    base.result.update(removed=sorted(plan.removals), changed=plan.changed, failed_pis=failures(items, plan))
    if module._diff:
        base.result['diff'] = cap_diffs(plan.diffs())
    if plan.changed and not module.check_mode:
        try:
            boots.apply(plan)
        except OSError as exc:
            base.fail('writing boot files failed for %s: %s; check the permissions and free space of %s and %s'
                      % (exc.filename or boots.boot_dir, exc.strerror or exc, boots.boot_dir, boots.map_path))


if __name__ == '__main__':
    main()
