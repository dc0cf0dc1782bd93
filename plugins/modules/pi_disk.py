#!/usr/bin/python
# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pi_disk
short_description: Extra disks for Raspberry Pis, as sparse disk.img files served over NFS
version_added: 0.1.0
description:
  - Creates, grows and removes extra disks of network-booted Pis on the bakery host. Each disk is a sparse
    C(<disks_dir>/<serial>/<name>/disk.img); its directory is what gets exported over NFS to that Pi.
  - Maintains C(<disks_dir>/<serial>/disks.json), the list the Pi reads to attach its disks (C(name), C(file),
    C(size), C(fstype), C(nfs_path)), replaced atomically and only when its content changes.
  - A new disk is built beside its final place (sparse, formatted when O(fstype=ext4), without mounting) and
    linked into place, so a failed or killed run never leaves a half-made C(disk.img).
  - Disks grow in place (the file by a hole; an ext4 file system with C(e2fsck) and C(resize2fs)) and never
    shrink. The file system of an existing disk is never changed.
  - All disks of one call are planned before anything is changed, so a refused item changes nothing.
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff shows each C(disks.json) before and after.
  platform:
    platforms: posix
requirements:
  - e2fsprogs (C(mkfs.ext4), C(e2fsck), C(resize2fs)) for O(fstype=ext4) disks.
notes:
  - An ext4 disk whose journal needs recovery (a Pi has it mounted) is not grown; shut the Pi down first.
  - "O(state=absent) without O(force) refuses a disk that holds data: for O(fstype=none) any allocated block,
    for O(fstype=ext4) more inodes in use than a fresh file system (11), a journal that needs recovery, or an
    unreadable superblock."
  - Quote serials in YAML, for example C("00c0ffee"), because unquoted digits may be read as numbers.
options:
  serial:
    description:
      - Serial of the Pi, 8 hex digits (its TFTP prefix) or the 16 digits of C(/proc/cpuinfo).
      - Required for every disk, at the top level or in each item of O(disks).
    type: str
  name:
    description:
      - Name of the disk; up to 64 lower-case letters, digits, C(.), C(_) and C(-), starting with a letter or digit.
      - Required for every disk, at the top level or in each item of O(disks).
    type: str
  size:
    description:
      - Size of the disk; bytes as an integer, or a number with C(K), C(M), C(G) or C(T) (binary units,
        case-insensitive, optional C(iB) or C(B); decimals allowed, e.g. C(1.5G)). Rounded up to a whole MiB.
      - Required with O(state=present). An ext4 disk needs at least 8 MiB. Asking for less than the disk's
        current size fails.
    type: raw
  fstype:
    description:
      - V(none) leaves the disk blank (the Pi formats it); V(ext4) formats it on the bakery, without mounting.
      - Must match the file system the disk was created with.
    type: str
    choices: [none, ext4]
    default: none
  state:
    description:
      - V(present) creates the disk or grows it to O(size). V(absent) removes its directory and its entry in C(disks.json);
        removing a Pi's last disk also removes its C(disks.json) and its empty directory.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - With O(state=absent), remove the disk even when it holds data.
    type: bool
    default: false
  disks_dir:
    description:
      - Directory holding the disks of all Pis.
    type: path
    default: /srv/pifleet/disks
  disks:
    description:
      - Many disks in one call (the fleet converges in one task). Top-level O(serial), O(name), O(size),
        O(fstype), O(state) and O(force) are the defaults for each item.
      - The same serial and name may appear only once.
    type: list
    elements: dict
    suboptions:
      serial:
        description: Serial of the Pi (see O(serial)).
        type: str
      name:
        description: Name of the disk (see O(name)).
        type: str
      size:
        description: Size of the disk (see O(size)).
        type: raw
      fstype:
        description: File system of the disk (see O(fstype)).
        type: str
        choices: [none, ext4]
      state:
        description: V(present) or V(absent) (see O(state)).
        type: str
        choices: [present, absent]
      force:
        description: Remove the disk even when it holds data (see O(force)).
        type: bool
"""

EXAMPLES = r"""
- name: Give a Pi an 8 GiB ext4 data disk
  pifleet.netboot.pi_disk:
    serial: "3a4b5c6d"
    name: data
    size: 8G
    fstype: ext4

- name: Converge the disks of the whole fleet in one call
  pifleet.netboot.pi_disk:
    fstype: ext4
    disks: "{{ pifleet_disks }}"  # [{serial: "3a4b5c6d", name: data, size: 16G}, ...]

- name: Remove a scratch disk and its data
  pifleet.netboot.pi_disk:
    serial: "3a4b5c6d"
    name: scratch
    state: absent
    force: true
"""

RETURN = r"""
disks:
  description: One entry per disk of the call, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    serial:
      description: Serial of the Pi (8 hex digits).
      type: str
      sample: 3a4b5c6d
    name:
      description: Name of the disk.
      type: str
      sample: data
    path:
      description: Path of the disk's C(disk.img).
      type: str
      sample: /srv/pifleet/disks/3a4b5c6d/data/disk.img
    changed:
      description: Whether this disk was (or in check mode would be) changed.
      type: bool
      sample: true
    action:
      description: What was (or in check mode would be) done.
      type: str
      choices: [created, grown, unchanged, removed]
      sample: created
    apparent_size:
      description:
        - Size of C(disk.img) in bytes as seen by the Pi; 0 when the disk does not exist.
        - In check mode, the size the disk would have.
      type: int
      sample: 8589934592
    allocated_size:
      description:
        - Bytes of C(disk.img) actually stored on the bakery (the file is sparse); 0 when the disk does not exist.
        - In check mode, the current allocation.
      type: int
      sample: 276824064
    fstype:
      description: File system of the disk (V(none) or V(ext4)); null when the disk does not exist.
      type: str
      sample: ext4
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pifleet.netboot.plugins.module_utils import _atomic, _batch
from ansible_collections.pifleet.netboot.plugins.module_utils._disks import (
    IMAGE,
    INDEX,
    DiskError,
    DiskWorker,
    check_name,
    index_entry,
    inspect_disk,
    load_index,
    make_dir,
    parse_size,
    plan_disk,
    render_index,
    scan_disks,
    write_index,
)
from ansible_collections.pifleet.netboot.plugins.module_utils._identity import normalise_serial

ITEM_KEYS = ('serial', 'name', 'size', 'fstype', 'state', 'force')
LANG_C = {'LANG': 'C', 'LC_ALL': 'C'}


class PiDiskModule:
    def __init__(self, module):
        self.module = module
        self.disks_dir = os.path.abspath(module.params['disks_dir'])
        self.result = {'changed': False, 'disks': []}
        self.diffs = []

    def fail(self, msg, **details):
        self.module.fail_json(msg=msg, **self.result, **details)

    def items(self):
        """The disks to converge, validated and normalised; fails naming the item at fault."""
        params = self.module.params
        items = []
        for index, item in enumerate(_batch.expand(params, 'disks', ITEM_KEYS)):
            where = 'disks[%d]' % index if params['disks'] is not None else 'the disk'
            for key in ('serial', 'name'):
                if item[key] in (None, ''):
                    self.fail('%s missing for %s: every disk needs a serial and a name; set %s at the top level '
                              'or in the item' % (key, where, key))
            try:
                item['serial'] = normalise_serial(item['serial'])
            except ValueError as exc:
                self.fail('invalid serial for %s: %s' % (where, exc))
            problem = check_name(item['name'])
            if problem:
                self.fail('invalid name for %s: %s' % (where, problem))
            if item['state'] == 'present':
                if item['size'] in (None, ''):
                    self.fail('size missing for disk %s of Pi %s: state present needs a size; set size (e.g. "8G")'
                              % (item['name'], item['serial']))
                try:
                    item['size'] = parse_size(item['size'])
                except DiskError as exc:
                    self.fail('invalid size for disk %s of Pi %s: %s' % (item['name'], item['serial'], exc))
            item['key'] = '%s/%s' % (item['serial'], item['name'])
            items.append(item)
        dupes = _batch.find_duplicates(items, 'key')
        if dupes:
            self.fail('duplicate disks in disks: %s each given more than once (as serial/name); give each disk '
                      'once' % ', '.join(dupes))
        return items

    def plan_serial(self, serial, items):
        """Plan every disk of one Pi and the disks.json that results; DiskError if any is refused."""
        serial_dir = os.path.join(self.disks_dir, serial)
        if os.path.islink(serial_dir):
            raise DiskError('%s is a symbolic link: pifleet disk directories never are (it could point outside '
                            '%s); remove it or move it away' % (serial_dir, self.disks_dir))
        old_text, recorded = load_index(serial_dir)
        fstypes = {name: entry.get('fstype') for name, entry in recorded.items()
                   if isinstance(entry, dict) and entry.get('fstype') in ('none', 'ext4')}
        entries = {}
        for name in scan_disks(serial_dir):
            current = inspect_disk(os.path.join(serial_dir, name), fstypes.get(name))
            entries[name] = index_entry(serial_dir, name, current['size'], current['fstype'])
        steps = []
        for item in items:
            disk_dir = os.path.join(serial_dir, item['name'])
            current = inspect_disk(disk_dir, fstypes.get(item['name']))
            plan = plan_disk(item, current, os.path.isdir(disk_dir))
            if plan['action'] == 'removed':
                entries.pop(item['name'], None)
            elif plan['action'] in ('created', 'grown'):
                entries[item['name']] = index_entry(serial_dir, item['name'], plan['size'], item['fstype'])
            steps.append((item, current, plan))
        return {'serial': serial, 'dir': serial_dir, 'steps': steps, 'old': old_text,
                'new': render_index(serial, list(entries.values()))}

    def run(self):
        items = self.items()
        by_serial = {}
        for item in items:
            by_serial.setdefault(item['serial'], []).append(item)
        try:
            plans = [self.plan_serial(serial, group) for serial, group in sorted(by_serial.items())]
            outcome = {}
            for plan in plans:
                outcome.update(self.converge(plan))
        except DiskError as exc:
            self.fail(str(exc), **exc.details)
        except OSError as exc:
            self.fail('changing the disks in %s failed: %s; check the path and its permissions'
                      % (self.disks_dir, exc))
        self.result['disks'] = [outcome[item['key']] for item in items]
        if self.module._diff:
            self.result['diff'] = self.diffs
        self.module.exit_json(**self.result)

    def converge(self, plan):
        """Apply one Pi's plan (unless check mode); return its per-disk results by serial/name."""
        serial_dir, index_changed = plan['dir'], plan['new'] != plan['old']
        touched = index_changed or any(step[2]['action'] != 'unchanged' for step in plan['steps'])
        self.result['changed'] |= touched
        if index_changed and self.module._diff:
            path = os.path.join(serial_dir, INDEX)
            self.diffs.append({'before': plan['old'], 'after': plan['new'], 'before_header': path, 'after_header': path})
        if touched and not self.module.check_mode:
            self.apply(plan)
        return {item['key']: self.outcome(item, current, step) for item, current, step in plan['steps']}

    def apply(self, plan):
        serial_dir = plan['dir']
        worker = DiskWorker(lambda argv: self.module.run_command(argv, environ_update=LANG_C),
                            lambda name: self.module.get_bin_path(name, required=True))
        if any(step[2]['action'] == 'created' for step in plan['steps']):
            os.makedirs(self.disks_dir, 0o755, exist_ok=True)
            make_dir(serial_dir)
        _atomic.sweep_stale(serial_dir, lambda label: None)
        for item, _unused_current, step in plan['steps']:
            disk_dir = os.path.join(serial_dir, item['name'])
            what = 'disk %s of Pi %s' % (item['name'], item['serial'])
            if step['action'] == 'created':
                _atomic.sweep_stale(disk_dir, lambda label: None)
                worker.create(disk_dir, item['name'], step['size'], item['fstype'], what)
            elif step['action'] == 'grown':
                worker.grow(os.path.join(disk_dir, IMAGE), step['size'], item['fstype'], step['resize_only'], what)
            elif step['action'] == 'removed':
                worker.remove(serial_dir, disk_dir, item['name'])
        if os.path.isdir(serial_dir):
            if plan['new'] != plan['old']:
                write_index(serial_dir, plan['new'])
            if not plan['new']:
                try:
                    os.rmdir(serial_dir)  # only when nothing else lives there
                except OSError:
                    pass

    def outcome(self, item, current, step):
        image = os.path.join(self.disks_dir, item['serial'], item['name'], IMAGE)
        action = step['action']
        result = {'serial': item['serial'], 'name': item['name'], 'path': image, 'action': action,
                  'changed': action != 'unchanged', 'apparent_size': 0, 'allocated_size': 0, 'fstype': None}
        if action == 'removed':
            return result
        if not self.module.check_mode and action != 'unchanged':
            current = inspect_disk(os.path.dirname(image), item['fstype'] if item['state'] == 'present' else None)
        if current is not None:
            result.update(apparent_size=current['size'], allocated_size=current['allocated'], fstype=current['fstype'])
        if self.module.check_mode and action in ('created', 'grown'):
            result.update(apparent_size=step['size'], fstype=item['fstype'])
        return result


def main():
    item_options = dict(
        serial=dict(type='str'),
        name=dict(type='str'),
        size=dict(type='raw'),
        fstype=dict(type='str', choices=['none', 'ext4']),
        state=dict(type='str', choices=['present', 'absent']),
        force=dict(type='bool'),
    )
    module = AnsibleModule(
        argument_spec=dict(
            serial=dict(type='str'),
            name=dict(type='str'),
            size=dict(type='raw'),
            fstype=dict(type='str', choices=['none', 'ext4'], default='none'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            force=dict(type='bool', default=False),
            disks_dir=dict(type='path', default='/srv/pifleet/disks'),
            disks=dict(type='list', elements='dict', options=item_options),
        ),
        supports_check_mode=True,
    )
    PiDiskModule(module).run()


if __name__ == '__main__':
    main()
