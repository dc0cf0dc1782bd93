#!/usr/bin/python
# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pi_status
short_description: Where each Raspberry Pi's last boot got to, and what the bakery knows about its root and disks
version_added: 0.1.0
description:
  - Reads, on the bakery, in one call for many Pis, what pifleet and the boot services know about each Pi, and
    changes nothing. Used by the C(pifleet.netboot.status) playbook.
  - "Each Pi's boots as a timeline: C(dhcp) (the proxy DHCP answered its PXE request: dnsmasq's log at
    O(dhcp_log_path)), C(tftp) (its boot set fetched from the TFTP hook: O(events_path)), C(nfs) (its root export in
    use: NFS-Ganesha's export and client lists over D-Bus), C(running) (its SSH server answers with a host key its
    root was given: C(ssh-keyscan) from the bakery, compared with the C(host_keys) of its root marker). The last
    boot gets the stage it reached, the time of each stage, the time between the DHCP answer and the first TFTP
    request, and, when it stalled, a hint of where to look."
  - Its root and disks from the markers beside their images; C(statvfs) of the bakery's own mounts of its file
    systems; its bakeform generation and whether it is behind the bakeform's current one; and each bakeform's
    generations, which one is current and which Pis use each.
  - Never reads a file inside a Pi's root or disks (a Pi controls those) and never writes anything.
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
attributes:
  check_mode:
    support: full
    details: Reads only, in check mode too.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - C(ssh-keyscan) (openssh-client) on the bakery for the C(running) stage.
  - C(busctl) (systemd) on the bakery and NFS-Ganesha on the system D-Bus for the C(nfs) stage.
notes:
  - The times of the C(nfs) and C(running) stages are exact only when the boot watcher of the
    C(pifleet.netboot.tftp_hook) role is on (it notes when it first saw them, in O(watch_state)); otherwise a
    running Pi's timeline shows the last NFS activity of its root and that it answers now.
  - Strings from the LAN (MACs, vendor classes, file names) are data; results carry them as they were seen.
options:
  pis:
    description: The Pis to report on.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The Pi's inventory name, as the fleet map names it.
        type: str
        required: true
      serial:
        description: Its serial (8 hex digits), which names its root and disks.
        type: str
      prefix:
        description: The TFTP prefix it asks with (its serial, its MAC as C(dc-a6-32-01-36-c2), or a custom string).
        type: str
      mac:
        description: Its MAC (C(dc:a6:32:01:36:c2)), to find its DHCP requests.
        type: str
      ip:
        description: Its address, asked for its SSH host key; else the address of its last TFTP request.
        type: str
  roots_dir:
    description: Where the roots and their markers are (the fleet role's C(pifleet_roots_dir)).
    type: path
    default: /srv/pifleet/roots
  disks_dir:
    description: Where the disks and their indexes are (C(pifleet_disks_dir)).
    type: path
    default: /srv/pifleet/disks
  store:
    description: The bakeform store (C(pifleet_bakeform_store)).
    type: path
    default: /srv/pifleet/bakeforms
  map_path:
    description: The TFTP hook's fleet map; its prefixes of each Pi are taken too.
    type: path
    default: /var/lib/pifleet/tftp/map.json
  events_path:
    description: The TFTP hook's events.
    type: path
    default: /var/log/pifleet/boot-events.jsonl
  dhcp_log_path:
    description: dnsmasq's DHCP log file (the C(pifleet.netboot.dnsmasq) role's C(pifleet_dhcp_log_path)); empty for none.
    type: str
    default: /var/log/pifleet/dnsmasq.log
  watch_state:
    description: The boot watcher's state file, for the exact times of the C(nfs) and C(running) stages.
    type: path
    default: /var/lib/pifleet/watch/state.json
  nfs_server:
    description:
      - V(ganesha) asks NFS-Ganesha over the system D-Bus which exports and clients were active; when it is not there
        (or with V(none)) the C(nfs) stage is not observed and a boot goes from C(tftp) to C(running). The kernel NFS
        server keeps no activity per export to ask.
    type: str
    choices: [ganesha, none]
    default: ganesha
  ssh:
    description: Ask each Pi's SSH server for its host key.
    type: bool
    default: true
  ssh_timeout:
    description: Seconds each Pi's SSH server has to answer (all are asked at once).
    type: int
    default: 5
  max_bytes:
    description: How much of the end of each log (and of its first rotation) is read.
    type: int
    default: 16777216
  limits:
    description:
      - Seconds before a boot counts as stalled, per step (C(dhcp), C(tftp), C(nfs), C(running)), and
        C(boot_gap), a quiet gap that starts a new boot. Unset keys keep their defaults (60, 60, 180, 300, 120).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Where the Pis' last boots got to
  pifleet.netboot.pi_status:
    pis:
      - {name: pi-01, serial: 3a4b5c6d, ip: 192.168.1.51}
      - {name: pi-02, serial: 10000000c0ffee04, mac: "dc:a6:32:01:36:c2", prefix: dc-a6-32-01-36-c2}
  become: true
  register: fleet_status
"""

RETURN = r"""
now:
  description: When the bakery looked (UTC).
  type: str
  returned: always
pis:
  description: One entry per Pi, in the order given.
  type: list
  elements: dict
  returned: always
  contains:
    name:
      description: The Pi's name.
      type: str
    serial:
      description: Its serial as given.
      type: str
    root:
      description: C(marker) (its root marker is there), C(image) and C(usage) (C(size), C(used), C(avail) in bytes
        and C(percent), of the bakery's mount of its root; null when not mounted); null without a serial.
      type: dict
    disks:
      description: C(usage) of its disks container when it has disks, else null.
      type: dict
    bakeform:
      description: The bakeform its root was made from.
      type: str
    generation:
      description: The generation its root was made from (null for a root made before generations, unless its image
        matches one).
      type: int
    label:
      description: C(name@N).
      type: str
    current_generation:
      description: The bakeform's current generation.
      type: int
    behind:
      description: Whether its generation is not the bakeform's current one (older, or newer after the current one
        was set back), as M(pifleet.netboot.pi_root) says it.
      type: bool
    host_keys:
      description: How many public host keys its root marker records.
      type: int
    address:
      description: The address asked for its SSH host key.
      type: str
    up:
      description: V(yes) (its SSH server answers with one of its root's host keys), V(no), V(wrong key),
        V(unverified) (it answers; its marker records no keys to compare), V(unchecked).
      type: str
    boots:
      description: How many boots the logs hold for it.
      type: int
    boot:
      description:
        - Its last boot (null when the logs hold none). C(start); C(state) (V(running), V(booting), V(stalled),
          V(ended), it ran and is not answering now); C(stage) reached (V(dhcp), V(tftp), V(nfs), V(running));
          C(stalled_at); C(times) (C(dhcp), C(tftp), C(kernel), C(tftp_done), C(nfs), C(nfs_last), C(running));
          C(seconds) (C(dhcp_to_tftp), C(tftp), C(to_running)); C(took) (C(seconds) from its start to the furthest
          stage whose time is known, and that stage as C(to)); C(dhcp) (C(answers), C(mac), C(vendor_class),
          C(client_id)); C(tftp) (C(requests), C(files), C(bytes), C(retransmits), C(errors), C(refusals),
          C(last_file), C(last_outcome), C(last_error), C(client), C(kernel)); C(up); C(hint) (where to look when it
          stalled); C(note) (a slow start, spanning tree for one).
      type: dict
    history:
      description: Its earlier boots (C(start), C(state), C(stage), C(stalled_at)), oldest first.
      type: list
      elements: dict
bakeforms:
  description:
    - Each bakeform of the store (and each one a root names), from its index, its generation directories and the
      root markers. C(name); C(layout) (V(generations), V(format2) before its first run of M(pifleet.netboot.bakeform)
      with generations, V(none) when roots name it but the store has none); C(current) and C(current_label) (the
      generation new roots get); C(generations), each C(id), C(label) (C(name@N)), C(current), C(pinned),
      C(used_by) (C(serial), C(hostname), C(root) V(current) or V(previous); the Pis whose roots use it) and
      C(netboot), what its root lacks that a Pi's settings may need (for example V(no mount.nfs)), V(nothing missing),
      or V(not recorded) for a generation registered before M(pifleet.netboot.bakeform) recorded it (its Pis'
      settings are not checked against it).
  type: list
  elements: dict
  returned: always
data_filesystems:
  description: C(path), C(size), C(used), C(avail), C(percent) of each file system holding the store, roots or disks.
  type: list
  elements: dict
  returned: always
sources:
  description: What was read or asked (C(dhcp), C(tftp), C(nfs), C(ssh)), and why not when it was not.
  type: dict
  returned: always
strays:
  description: C(dhcp_answers) and C(tftp_requests) in the logs that belong to none of the given Pis.
  type: dict
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import normalise_mac, normalise_serial
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import ModuleHost, PifleetModule
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.bootlogs import address
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.statuswork import FleetStatus
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.timeline import LIMITS

PI_OPTIONS = dict(name=dict(type='str', required=True), serial=dict(type='str'), prefix=dict(type='str'),
                  mac=dict(type='str'), ip=dict(type='str'))


def check_pis(base):
    """The Pis with serial, MAC and address normalised; every problem reported at once."""
    checked = []
    for index, pi in enumerate(base.params['pis']):
        where = 'pis[%d] (%s)' % (index, pi['name'])
        item = dict(pi)
        try:
            item['serial'] = normalise_serial(pi['serial']) if pi.get('serial') else None
        except ValueError as exc:
            base.problem('%s: %s' % (where, exc))
        try:
            item['mac'] = normalise_mac(pi['mac']).replace('-', ':') if pi.get('mac') else None
        except ValueError as exc:
            base.problem('%s: mac: %s' % (where, exc))
        if pi.get('ip') and address(pi['ip']) is None:
            base.problem('%s: ip %r is not an IP address' % (where, pi['ip']))
        item['ip'] = address(pi.get('ip'))
        checked.append(item)
    unknown = sorted(set(base.params['limits']) - set(LIMITS))
    if unknown:
        base.problem('limits: unknown key(s) %s; use %s' % (', '.join(unknown), ', '.join(sorted(LIMITS))))
    elif any(not isinstance(value, int) or value <= 0 for value in base.params['limits'].values()):
        base.problem('limits: every value is a number of seconds above 0')
    base.unique(checked, 'name', 'pis: the name(s) %s appear more than once')
    base.check()
    return checked


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pis=dict(type='list', elements='dict', options=PI_OPTIONS, required=True),
            roots_dir=dict(type='path', default='/srv/pifleet/roots'),
            disks_dir=dict(type='path', default='/srv/pifleet/disks'),
            store=dict(type='path', default='/srv/pifleet/bakeforms'),
            map_path=dict(type='path', default='/var/lib/pifleet/tftp/map.json'),
            events_path=dict(type='path', default='/var/log/pifleet/boot-events.jsonl'),
            dhcp_log_path=dict(type='str', default='/var/log/pifleet/dnsmasq.log'),
            watch_state=dict(type='path', default='/var/lib/pifleet/watch/state.json'),
            nfs_server=dict(type='str', choices=['ganesha', 'none'], default='ganesha'),
            ssh=dict(type='bool', default=True),
            ssh_timeout=dict(type='int', default=5),
            max_bytes=dict(type='int', default=16 * 1024 * 1024),
            limits=dict(type='dict', default={}),
        ),
        supports_check_mode=True,
    )
    base = PifleetModule(module, {'changed': False})
    params = dict(module.params, pis=check_pis(base))
    try:
        result = FleetStatus(ModuleHost(module), params).gather()
    except OSError as exc:
        # Missing files are read as "not there" already; this is a path that exists and cannot be read (an I/O
        # error, a stale NFS handle, a symlink loop): the status playbook shows this bakery's line with it.
        base.fail('pi_status could not read %s on this bakery: %s; check that the file systems of roots_dir, '
                  'disks_dir and store are mounted and readable' % (exc.filename or 'its files', exc.strerror or exc))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
