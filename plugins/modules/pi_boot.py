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
  - Gives every Pi a folder C(<boot_dir>/<prefix>/) holding the boot files that differ from its bakeform's,
    and writes the fleet map (O(map_path)) that the pifleet TFTP hook reads, so that a request for
    C(<prefix>/<file>) is served from the Pi's folder first, then from the bakeform's boot files
    C(<store>/<bakeform>/boot/).
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
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
  - pifleet.netboot._attributes.full
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
      - Bakeform whose boot files answer root-level requests (the Pi 3's C(bootcode.bin)); the map's C(default).
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
        type: str
        choices: [present, absent]
        default: present
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
  sample:
    - name: pi-01
      prefix: 3a4b5c6d
      dir: /srv/pifleet/pis/3a4b5c6d
      state: present
      changed: true
      files: [.pifleet-boot.json, cmdline.txt]
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
removed:
  description: Pi folders removed (V(absent), moved, or not listed with O(exclusive=true)).
  returned: always
  type: list
  elements: str
  sample: [/srv/pifleet/pis/0badcafe]
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pifleet.netboot.plugins.module_utils import _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils import _bootfiles as bf
from ansible_collections.pifleet.netboot.plugins.module_utils._bakeform import boot_models, check_name
from ansible_collections.pifleet.netboot.plugins.module_utils._identity import check_inventory_name, normalise_prefix
from ansible_collections.pifleet.netboot.plugins.module_utils._module import find_duplicates


def listed(names, limit=5):
    names = list(names)
    more = ' and %d more' % (len(names) - limit) if len(names) > limit else ''
    return ', '.join(names[:limit]) + more


class PiBootModule:
    def __init__(self, module):
        self.module = module
        params = module.params
        self.store = os.path.abspath(params['store'])
        self.boot_dir = os.path.abspath(params['boot_dir'])
        self.map_path = os.path.abspath(params['map_path'])
        self.exclusive = params['exclusive']
        self.result = {'changed': False, 'pis': [], 'removed': [],
                       'map': {'path': self.map_path, 'changed': False, 'prefixes': 0}}
        self.problems = []
        self.bakeforms = {}  # name -> (boot dir, {file: text}, models) or None when missing
        self.missing = {}  # bakeform -> names of the Pis asking for it
        self.writes = []  # (folder, [(file, before, after)], new folder?)
        self.removals = {}  # folder -> its files, for the diff

    def fail(self, msg, **details):
        self.module.fail_json(msg=msg, **self.result, **details)

    def run(self):
        items = self.validate(self.module.params['pis'])
        try:
            map_text, map_before = self.plan(items)
        except OSError as exc:
            where = ', '.join((self.store, self.boot_dir, self.map_path))
            self.fail('reading the current boot files failed for %s: %s; check that pi_boot runs as a user who can '
                      'read %s' % (exc.filename, exc.strerror or exc, where))
        if self.problems:
            self.fail(self.problems[0] if len(self.problems) == 1 else '%d problems in pis: %s'
                      % (len(self.problems), '; '.join(self.problems[:10])), problems=self.problems)
        self.result['removed'] = sorted(self.removals)
        self.result['changed'] = bool(self.writes or self.removals or self.result['map']['changed'])
        if self.module._diff:
            self.result['diff'] = bf.cap_diffs(self.diffs(map_before, map_text))
        if self.result['changed'] and not self.module.check_mode:
            try:
                self.apply(map_text)
            except OSError as exc:
                self.fail('writing boot files failed for %s: %s; check the permissions and free space of %s and %s'
                          % (exc.filename or self.boot_dir, exc.strerror or exc, self.boot_dir, self.map_path))
        self.module.exit_json(**self.result)

    def plan(self, items):
        wanted = {item['prefix'] for item in items if item['state'] == 'present'}
        for item in items:
            if item['state'] == 'present':
                self.plan_present(item)
            else:
                self.plan_absent(item)
        if self.exclusive:
            self.plan_strays(wanted)
        return self.plan_map(items)

    def validate(self, pis):
        items = []
        for index, raw in enumerate(pis):
            item = dict(raw)
            try:
                check_inventory_name(item['name'])
                item['prefix'] = normalise_prefix(item['prefix'])
                if item['state'] == 'present':
                    item['nfsroot'] = bf.parse_nfsroot(item['nfsroot'], item['name'])
                    bf.check_config_lines(item['config_txt'], item['name'])
            except ValueError as exc:  # BootFilesError is one
                self.problems.append('item %d of pis: %s' % (index, exc))
            items.append(item)
        for key in ('prefix', 'name'):
            dupes = find_duplicates(items, key)
            if dupes:
                self.problems.append('pis lists the %s %s more than once; give each Pi its own %s'
                                     % (key, ', '.join(dupes), key))
        if self.problems:
            self.fail('; '.join(self.problems), problems=self.problems)
        return items

    def bakeform(self, name, who):
        """(boot dir, {cmdline.txt, config.txt: text or None}, models) of a bakeform, read once per run."""
        if name not in self.bakeforms:
            boot = os.path.join(self.store, name, 'boot')
            if check_name(name) or not os.path.isdir(boot):
                self.bakeforms[name] = None
            else:
                files = {file: _atomic.read_text(os.path.join(boot, file)) for file in (bf.CMDLINE, bf.CONFIG)}
                self.bakeforms[name] = (boot, files, boot_models(os.path.join(self.store, name)))
        if self.bakeforms[name] is None:
            self.missing.setdefault(name, []).append(who)
        return self.bakeforms[name]


    def folder_state(self, item, folder):
        """The managed files in the Pi's folder, or None when it is there but not ours."""
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            return {}
        current = {}
        if stat.S_ISDIR(mode):
            current = {file: _atomic.read_text(os.path.join(folder, file)) for file in bf.MANAGED}
            if bf.json_object(current[bf.MARKER]) is not None or not os.listdir(folder):
                return current
        self.problems.append('boot folder %s for %s exists but pi_boot did not make it (not a folder with %s inside); '
                             'move it away or give the Pi another prefix' % (folder, item['name'], bf.MARKER))
        return None

    def plan_present(self, item):
        info = self.bakeform(item['bakeform'], item['name'])
        folder = os.path.join(self.boot_dir, item['prefix'])
        entry = {'name': item['name'], 'prefix': item['prefix'], 'dir': folder, 'state': 'present',
                 'changed': False, 'files': []}
        self.result['pis'].append(entry)
        item['dirs'] = [folder, info[0] if info else '']
        if info is None:
            return
        problem = bf.model_problem(item['name'], item['model'], item['bakeform'], info[2])
        if problem:
            self.problems.append(problem)
            return
        current = self.folder_state(item, folder)
        if current is None:
            return
        plan = bf.plan_files(current, bf.desired_files(item, info[1]))
        if plan:
            self.writes.append((folder, plan, not current))
            entry.update(changed=True, files=[file for file, _before, _after in plan])

    def plan_absent(self, item):
        folder = os.path.join(self.boot_dir, item['prefix'])
        removed = self.remove_marked(folder)
        self.result['pis'].append({'name': item['name'], 'prefix': item['prefix'], 'dir': folder, 'state': 'absent',
                                   'changed': removed, 'files': sorted(self.removals.get(folder, []))})

    def remove_marked(self, folder, name=None):
        """Plan removing ``folder`` if it carries our marker (naming ``name``, when given)."""
        if not os.path.isdir(folder) or os.path.islink(folder):
            return False
        marker = bf.json_object(_atomic.read_text(os.path.join(folder, bf.MARKER)))
        if marker is None or (name is not None and marker.get('name') != name):
            return False
        self.removals[folder] = sorted(os.listdir(folder))
        return True

    def plan_strays(self, wanted):
        try:
            names = os.listdir(self.boot_dir)
        except FileNotFoundError:
            return
        for name in sorted(names):
            if not name.startswith('.') and name not in wanted:
                self.remove_marked(os.path.join(self.boot_dir, name))

    def plan_map(self, items):
        before = _atomic.read_text(self.map_path)
        existing = bf.read_map(before)
        if before is not None and existing is None:
            self.module.warn('%s is not a fleet map pi_boot can read; it is replaced' % self.map_path)
        default_name = self.module.params['default_bakeform']
        if default_name:
            info = self.bakeform(default_name, 'default_bakeform')
            default = [info[0]] if info else []
        elif existing and not self.exclusive and isinstance(existing.get('default'), list):
            default = existing['default']
        else:
            default = []
        entries, moved = bf.merge_entries(existing and existing['prefixes'], items, self.exclusive)
        for prefix, name in moved:
            self.remove_marked(os.path.join(self.boot_dir, prefix), name)
        for bakeform in sorted(self.missing):
            why = check_name(bakeform) or 'bakeform %s has no %s' % (bakeform, os.path.join(self.store, bakeform, 'boot'))
            self.problems.append('boot files not found for %s: %s; register it with pifleet.netboot.bakeform or '
                                 'name another bakeform' % (listed(self.missing[bakeform]), why))
        text = bf.render_map(bf.build_map(default, entries))
        self.result['map'].update(changed=text != before, prefixes=len(entries))
        return text, before

    def diffs(self, map_before, map_text):
        diffs = []
        if self.result['map']['changed']:
            diffs.append(self.file_diff(self.map_path, map_before, map_text))
        for folder, plan, _new in self.writes:
            diffs.extend(self.file_diff(os.path.join(folder, file), before, after) for file, before, after in plan)
        for folder in sorted(self.removals):
            listing = ''.join(file + '\n' for file in self.removals[folder])
            diffs.append({'before': listing, 'after': '', 'before_header': folder + '/',
                          'after_header': folder + '/ (removed)'})
        return diffs

    @staticmethod
    def file_diff(path, before, after):
        return {'before': before or '', 'after': after or '', 'before_header': path, 'after_header': path}

    def apply(self, map_text):
        # New folders are built in a scratch directory and renamed into place once flushed, so a folder is
        # complete whenever it is seen; the map comes after the folders it names; removals after the map, so
        # the hook stops looking into a folder before it goes.
        _atomic.make_dir(self.boot_dir)
        _atomic.sweep_stale(self.boot_dir, lambda label: None)
        scratch = _atomic.ScratchDir(self.boot_dir, 'pi-boot') if any(new for _f, _p, new in self.writes) else None
        try:
            built = []
            for folder, plan, new in self.writes:
                if new:
                    built.append((self.build(scratch, folder, plan), folder))
                    continue
                for file, _before, after in plan:
                    if after is None:
                        os.unlink(os.path.join(folder, file))
                    else:
                        _atomic.write_text(os.path.join(folder, file), after, fsync=False)
            if self.writes:
                os.sync()  # one flush for thousands of small files
            for path, folder in built:
                os.rename(path, folder)
        finally:
            if scratch is not None:
                scratch.close()
        if self.result['map']['changed']:
            _atomic.make_dir(os.path.dirname(self.map_path))
            _atomic.write_text(self.map_path, map_text)
        for folder in sorted(self.removals):
            _atomic.discard(self.boot_dir, 'pi-boot', folder)

    @staticmethod
    def build(scratch, folder, plan):
        path = scratch.join(os.path.basename(folder))
        os.mkdir(path)
        os.chmod(path, 0o755)
        for file, _before, after in plan:
            if after is not None:
                _atomic.write_new(os.path.join(path, file), after)
        return path


def main():
    pi_options = dict(
        name=dict(type='str', required=True),
        prefix=dict(type='str', required=True),
        bakeform=dict(type='str'),
        model=dict(type='int', choices=[3, 4, 5]),
        nfsroot=dict(type='str'),
        cmdline_extra=dict(type='str'),
        config_txt=dict(type='list', elements='str'),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
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
        ),
        supports_check_mode=True,
    )
    PiBootModule(module).run()


if __name__ == '__main__':
    main()
