#!/usr/bin/python
# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pi_root
short_description: Give each Raspberry Pi a private root file system cloned from a bakeform
version_added: 0.1.0
description:
  - Makes C(<roots_dir>/<serial>), the root tree a Pi mounts over NFS, from the golden root of a bakeform
    (see M(pifleet.netboot.bakeform)) the cheapest faithful way the file system allows, a btrfs snapshot,
    a reflink copy (XFS, btrfs) or a full copy, keeping owners, modes, links, device nodes and xattrs.
  - The clone is built in a locked scratch directory beside its target, fixed, then renamed into place,
    so a Pi never sees a half-made root; leftovers of a killed run are removed by the next run.
  - The SSH host keys of the roots a call clones are generated ahead, at most one C(ssh-keygen) per CPU at a
    time, while the roots are cloned and installed one after the other in the order given.
  - "Fixes for life on NFS: SD-card lines out of C(/etc/fstab) (C(proc) kept), the boot files mounted per
    O(boot_mount), hostname and C(/etc/hosts), SSH host keys of its own, a fresh machine-id, first-boot resize
    and swap file disabled, C(ssh) enabled, authorized keys for root, and NetworkManager/dhcpcd kept off the
    NIC the root lives on. The marker C(<root>/.pifleet.json) records the bakeform, the clone method and the fixes."
  - An existing root made from the same bakeform content gets only the option-driven fixes re-applied in place
    (fstab boot line, hostname, hosts, authorized keys); its data is never touched. A root made from other
    content (the bakeform was replaced) is reported as drift and left alone until O(state=rebuilt).
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Shows C(/etc/fstab), C(/etc/hostname) and C(/etc/hosts) of each root and its marker.
  platform:
    platforms: posix
requirements:
  - root on the bakery host (owners and device nodes of the clone are kept).
  - coreutils C(cp), util-linux C(setpriv), OpenSSH C(ssh-keygen); btrfs-progs for snapshots.
options:
  serial:
    description:
      - Serial of the Pi, 8 hex digits (the TFTP prefix) or the 16 digits of C(/proc/cpuinfo); stored as 8 lower-case digits.
      - Mutually exclusive with O(pis); one of the two is required.
    type: str
  hostname:
    description:
      - Host name of the Pi. Defaults to C(pi-<serial>).
    type: str
  bakeform:
    description:
      - Name of the bakeform in O(store) whose golden root is cloned. Required unless O(state=absent).
    type: str
  store:
    description:
      - Directory of the bakeform store.
    type: path
    default: /srv/pifleet/bakeforms
  roots_dir:
    description:
      - Directory holding the per-Pi roots, C(<roots_dir>/<serial>). Best on the same file system as O(store),
        so clones can share its blocks.
    type: path
    default: /srv/pifleet/roots
  state:
    description:
      - V(present) clones the root if missing, else re-applies the option-driven fixes in place.
      - V(rebuilt) always clones afresh from the bakeform and swaps the new root in atomically, like V(restarted)
        for a service. The Pi keeps its SSH host keys and machine-id, so its identity survives a reimage.
      - V(absent) removes the root (atomically from its name first).
    type: str
    choices: [present, absent, rebuilt]
    default: present
  ssh_authorized_keys:
    description:
      - Public keys for C(/root/.ssh/authorized_keys) in the root (dir 0700, file 0600, owned by root); the file
        holds exactly these. Not managed when omitted.
    type: list
    elements: str
  boot_mount:
    description:
      - How the Pi sees its boot files. V(none) mounts nothing there; V(nfs) mounts C(<store>/<bakeform>/boot) from
        O(nfs_server) read-only (NFSv3) at C(/boot/firmware), or C(/boot) if the root has no C(/boot/firmware).
    type: str
    choices: [none, nfs]
    default: none
  nfs_server:
    description:
      - Address of the NFS server exporting the store. Required when O(boot_mount=nfs).
    type: str
  clone_method:
    description:
      - V(auto) uses a btrfs snapshot when the golden root is a subvolume on the file system of O(roots_dir), else a
        reflink copy, falling back to a full copy where reflinks are not supported (and directly across file systems).
      - V(snapshot), V(reflink) and V(copy) force one method, and fail where it is not possible.
    type: str
    choices: [auto, snapshot, reflink, copy]
    default: auto
  pis:
    description:
      - Many Pis in one call. Top-level options are defaults for each item. Serials and host names must be unique.
    type: list
    elements: dict
    suboptions:
      serial:
        description: Serial of the Pi, as O(serial).
        type: str
        required: true
      hostname:
        description: Host name of the Pi, as O(hostname).
        type: str
      bakeform:
        description: Bakeform to clone, as O(bakeform).
        type: str
      state:
        description: As O(state).
        type: str
        choices: [present, absent, rebuilt]
      ssh_authorized_keys:
        description: As O(ssh_authorized_keys).
        type: list
        elements: str
      boot_mount:
        description: As O(boot_mount).
        type: str
        choices: [none, nfs]
      nfs_server:
        description: As O(nfs_server).
        type: str
"""

EXAMPLES = r"""
- name: Give one Pi its root from the bookworm bakeform
  pifleet.netboot.pi_root:
    serial: 3a4b5c6d
    hostname: kitchen
    bakeform: bookworm-lite
    ssh_authorized_keys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk0b3... admin@bakery
    boot_mount: nfs
    nfs_server: 10.0.0.2

- name: Converge the whole fleet in one call
  pifleet.netboot.pi_root:
    bakeform: bookworm-lite
    pis:
      - {serial: 3a4b5c6d, hostname: kitchen}
      - {serial: "10000000deadbeef", hostname: garage}
      - {serial: 0badcafe, state: absent}

- name: Reimage a Pi from the updated bakeform (keeps its SSH host keys)
  pifleet.netboot.pi_root:
    serial: 3a4b5c6d
    hostname: kitchen
    bakeform: bookworm-lite
    state: rebuilt
"""

RETURN = r"""
pis:
  description: One entry per Pi, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    serial: {description: Serial as 8 lower-case hex digits., type: str, returned: always, sample: 3a4b5c6d}
    hostname: {description: Host name of the Pi., type: str, returned: always, sample: kitchen}
    path: {description: The Pi's root directory., type: str, returned: always, sample: /srv/pifleet/roots/3a4b5c6d}
    changed: {description: Whether this Pi's root was (or in check mode would be) changed., type: bool, returned: always}
    action:
      description: What was done, V(cloned), V(fixed), V(unchanged), V(drift), V(rebuilt) or V(removed).
      type: str
      returned: always
      sample: cloned
    clone_method:
      description: How the root was cloned (V(snapshot), V(reflink) or V(copy)); null when unknown.
      type: str
      returned: always
      sample: reflink
    drift:
      description: True when the root was cloned from other content than the bakeform now holds (left alone).
      type: bool
      returned: always
swept:
  description: Leftover scratch directories of killed runs that this run removed from O(roots_dir).
  returned: always
  type: list
  elements: str
  sample: []
"""

import contextlib
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pifleet.netboot.plugins.module_utils import _atomic, _rootfix, _roots
from ansible_collections.pifleet.netboot.plugins.module_utils._bakeform import (
    MANIFEST,
    IngestError,
    check_name,
    load_manifest,
)
from ansible_collections.pifleet.netboot.plugins.module_utils._batch import expand, find_duplicates
from ansible_collections.pifleet.netboot.plugins.module_utils._identity import normalise_serial

ITEM_KEYS = ('serial', 'hostname', 'bakeform', 'state', 'ssh_authorized_keys', 'boot_mount', 'nfs_server')
DIFF_FILES = (_rootfix.FSTAB, _rootfix.HOSTNAME, _rootfix.HOSTS)


class PiRootModule:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.roots_dir = self.params['roots_dir']
        self.store = self.params['store']
        self.result = {'changed': False, 'pis': [], 'swept': []}
        self.diffs = []
        self.manifests = {}
        self._cloner = None
        self.forge = None

    def fail(self, msg, **details):
        self.module.fail_json(msg=msg, **self.result, **details)

    @property
    def cloner(self):
        if self._cloner is None:
            self._cloner = _roots.Cloner(
                self.module.run_command, lambda name, required: self.module.get_bin_path(name, required=required))
        return self._cloner

    def run(self):
        items = self.items()
        try:
            if not self.module.check_mode and os.path.isdir(self.roots_dir):
                self.result['swept'] = _atomic.sweep_stale(
                    self.roots_dir, lambda label: os.path.join(self.roots_dir, label))
            with self.key_forge(items):
                for item in items:
                    self.result['pis'].append(self.converge(item))
        except (_roots.RootError, _rootfix.FixError, IngestError) as exc:
            self.fail(str(exc), **getattr(exc, 'details', {}))
        except OSError as exc:
            self.fail('changing the Pi roots in %s failed: %s; check space and permissions there (run as root)'
                      % (self.roots_dir, exc))
        self.result['changed'] = any(pi['changed'] for pi in self.result['pis'])
        if self.module._diff:
            self.result['diff'] = self.diffs
        self.module.exit_json(**self.result)

    def items(self):
        items = expand(self.params, 'pis', ITEM_KEYS)
        for item in items:
            try:
                item['serial'] = normalise_serial(item['serial'])
            except ValueError as exc:
                self.fail('invalid serial: %s' % exc)
            item['hostname'] = item['hostname'] or 'pi-%s' % item['serial']
            problem = _rootfix.check_hostname(item['hostname'])
            if problem:
                self.fail('%s for Pi %s' % (problem, item['serial']))
            if item['state'] != 'absent' and not item['bakeform']:
                self.fail('no bakeform for Pi %s: set bakeform (at the top level or in its pis entry)' % item['serial'])
            if item['boot_mount'] == 'nfs' and not item['nfs_server']:
                self.fail('boot_mount is nfs but nfs_server is not set for Pi %s: set nfs_server (the bakery address '
                          'the Pis reach)' % item['serial'])
        for key in ('serial', 'hostname'):
            dupes = find_duplicates(items, key)
            if dupes:
                self.fail('duplicate %ss in pis: %s; each Pi needs its own' % (key, ', '.join(dupes)))
        return items

    def key_forge(self, items):
        """A KeyForge already making the SSH host keys of the roots this run clones (none to make: a no-op)."""
        orders = [] if self.module.check_mode else [(item, self.keys_to_make(item)) for item in items]
        orders = [(item, kinds) for item, kinds in orders if kinds]
        keygen = self.module.get_bin_path('ssh-keygen') if orders else None
        if not keygen:
            return contextlib.nullcontext()  # without ssh-keygen, host_keys() fails as it always did
        os.makedirs(self.roots_dir, 0o755, exist_ok=True)
        self.forge = _roots.KeyForge(self.roots_dir, keygen, setpriv=self.module.get_bin_path('setpriv'))
        try:
            for item, kinds in orders:
                self.forge.order(item['serial'], item['hostname'], kinds)
        except BaseException:
            self.forge.close()
            raise
        return self.forge

    def keys_to_make(self, item):
        """Host key types a clone of this Pi's root will generate (its plan is made again, in order, later)."""
        path = os.path.join(self.roots_dir, item['serial'])
        action = _roots.plan_action(item['state'], os.path.lexists(path), None, None)  # no marker: clones only
        if action not in ('clone', 'rebuild') or check_name(item['bakeform']):
            return []
        bakeform = os.path.join(self.store, item['bakeform'])
        golden = os.path.join(bakeform, 'root')
        if not os.path.isdir(golden) or not os.path.isfile(os.path.join(bakeform, MANIFEST)):
            return []
        rebuild = action == 'rebuild'
        old_ssh = os.path.join(path, _roots.SSH_DIR)
        return [kind for kind in _roots.host_key_types(golden)  # a rebuild carries the old root's keys over
                if not (rebuild and _roots.is_regular(os.path.join(old_ssh, 'ssh_host_%s_key' % kind)))]

    def manifest(self, name, serial):
        """Each bakeform's manifest is read once per call, however many Pis use it."""
        if name not in self.manifests:
            problem = check_name(name)
            if problem:
                self.fail('%s (Pi %s)' % (problem, serial))
            dest = os.path.join(self.store, name)
            manifest = load_manifest(dest)
            if manifest is None or not os.path.isdir(os.path.join(dest, 'root')):
                self.fail('bakeform %s not found for Pi %s: %s has no manifest.json and root/; register the image '
                          'first with pifleet.netboot.bakeform (name: %s, store: %s)' % (name, serial, dest, name, self.store))
            self.manifests[name] = manifest
        return self.manifests[name]

    def diff(self, path, rel, before, after):
        if self.module._diff and before != after:
            header = os.path.join(path, rel)
            self.diffs.append({'before': before or '', 'after': after or '', 'before_header': header,
                               'after_header': header})

    def converge(self, item):
        serial, state = item['serial'], item['state']
        path = _roots.root_path(self.roots_dir, serial)
        exists = os.path.lexists(path)
        marker = _roots.load_marker(path, strict=state == 'present') if exists else None
        result = {'serial': serial, 'hostname': item['hostname'], 'path': path, 'changed': False,
                  'action': 'unchanged', 'clone_method': (marker or {}).get('clone_method'), 'drift': False}
        if state == 'absent':
            if exists:
                result.update(changed=True, action='removed')
                self.diff(path, _roots.MARKER, _roots.marker_text(marker), None)
                if not self.module.check_mode:
                    self.remove(path, serial)
            return result
        manifest = self.manifest(item['bakeform'], serial)
        item.update(path=path, sha256=manifest.get('sha256'), golden=os.path.join(self.store, item['bakeform'], 'root'),
                    keys=_rootfix.authorized_keys_text(item['ssh_authorized_keys']))
        action = _roots.plan_action(state, exists, marker, item['sha256'])
        if action == 'foreign':
            self.fail('root of Pi %s: %s exists but has no %s, so pi_root did not make it; move it away, or use '
                      'state: rebuilt to replace it' % (serial, path, _roots.MARKER))
        item['boot'] = _rootfix.boot_line(
            item['boot_mount'], item['nfs_server'], os.path.join(self.store, item['bakeform'], 'boot'),
            _rootfix.boot_mountpoint(path if exists else item['golden']))
        if action == 'drift':
            self.module.warn('root of Pi %s was cloned from bakeform content %s, but bakeform %s now holds %s; left '
                             'alone: use state: rebuilt to reimage it'
                             % (serial, marker.get('bakeform_sha256'), item['bakeform'], item['sha256']))
            result.update(action='drift', drift=True)
            return result
        if action == 'fix':
            return self.fix(item, marker, result)
        return self.clone(item, marker if exists else None, result)

    def fix(self, item, marker, result):
        path = item['path']
        changes = _rootfix.inplace_changes(path, item['hostname'], item['boot'], item['keys'])
        wanted = _roots.updated_marker(marker, hostname=item['hostname'], fixes=_rootfix.fixes_of(changes),
                                       keys_sha256=_roots.sha256_text(item['keys']), boot_mount=item['boot_mount'])
        if not changes and wanted is None:
            return result
        result.update(changed=True, action='fixed')
        for change in changes:
            if change['path'] in DIFF_FILES:
                self.diff(path, change['path'], change['before'], change['after'])
        if wanted is not None:
            self.diff(path, _roots.MARKER, _roots.marker_text(marker), _roots.marker_text(wanted))
        if not self.module.check_mode:
            _rootfix.apply(path, changes)
            if wanted is not None:
                _rootfix.write_file(path, _roots.MARKER, _roots.marker_text(wanted))
        return result

    def clone(self, item, old_marker, result):
        serial, path, golden = item['serial'], item['path'], item['golden']
        rebuild = os.path.lexists(path)
        methods = _roots.choose_methods(self.params['clone_method'], golden, self.roots_dir)
        result.update(changed=True, action='rebuilt' if rebuild else 'cloned', clone_method=methods[0])
        # A reimaged Pi keeps its identity: machine-id here, SSH host keys in host_keys().
        machine_id = _rootfix.read_text(path, _rootfix.MACHINE_ID) if rebuild else None
        if not _rootfix.valid_machine_id(machine_id):
            machine_id = _rootfix.new_machine_id()
        fix_args = (item['hostname'], item['boot'], item['keys'], machine_id)
        if self.module.check_mode:
            changes = _rootfix.clone_changes(golden, *fix_args)
            self.clone_diff(item, changes, old_marker, self.marker(item, methods[0], changes))
            return result
        os.makedirs(self.roots_dir, 0o755, exist_ok=True)
        cloner = self.cloner
        scratch = _atomic.ScratchDir(self.roots_dir, serial)
        try:
            built = scratch.join('root')
            method = cloner.clone(golden, built, methods, 'Pi %s' % serial)
            changes = _rootfix.clone_changes(built, *fix_args)
            _rootfix.apply(built, changes)
            cloner.host_keys(built, item['hostname'], _roots.host_key_types(golden), carry_from=path if rebuild else None,
                             forged=self.forge.take(serial) if self.forge else None)
            wanted = self.marker(item, method, changes)
            _rootfix.write_file(built, _roots.MARKER, _roots.marker_text(wanted))
            self.clone_diff(item, changes, old_marker, wanted)
            _atomic.install(scratch, built, path)
            result['clone_method'] = method
        finally:
            _roots.sweep_subvolumes(cloner, scratch.path)
            scratch.close()
        return result

    @staticmethod
    def marker(item, method, changes):
        return _roots.new_marker(
            serial=item['serial'], hostname=item['hostname'], bakeform=item['bakeform'], sha256=item['sha256'],
            method=method, fixes=[*_rootfix.fixes_of(changes), 'ssh_host_keys'],
            keys_sha256=_roots.sha256_text(item['keys']), boot_mount=item['boot_mount'])

    def clone_diff(self, item, changes, old_marker, wanted):
        path, golden = item['path'], item['golden']
        after = {c['path']: c['after'] for c in changes if c['kind'] == 'file'}
        for rel in DIFF_FILES:
            before = _rootfix.read_text(path, rel) if os.path.isdir(path) else _rootfix.read_text(golden, rel)
            self.diff(path, rel, before, after.get(rel, _rootfix.read_text(golden, rel)))
        self.diff(path, _roots.MARKER, _roots.marker_text(old_marker), _roots.marker_text(wanted))

    def remove(self, path, serial):
        # Out of its name first (as 'trash', never restored), so a killed delete leaves no half root behind.
        _atomic.discard(self.roots_dir, serial, path, self.cloner.remove_subvolume)


def main():
    pi_options = dict(
        serial=dict(type='str', required=True),
        hostname=dict(type='str'),
        bakeform=dict(type='str'),
        state=dict(type='str', choices=['present', 'absent', 'rebuilt']),
        ssh_authorized_keys=dict(type='list', elements='str', no_log=False),
        boot_mount=dict(type='str', choices=['none', 'nfs']),
        nfs_server=dict(type='str'),
    )
    module = AnsibleModule(
        argument_spec=dict(
            serial=dict(type='str'),
            hostname=dict(type='str'),
            bakeform=dict(type='str'),
            store=dict(type='path', default='/srv/pifleet/bakeforms'),
            roots_dir=dict(type='path', default='/srv/pifleet/roots'),
            state=dict(type='str', choices=['present', 'absent', 'rebuilt'], default='present'),
            ssh_authorized_keys=dict(type='list', elements='str', no_log=False),
            boot_mount=dict(type='str', choices=['none', 'nfs'], default='none'),
            nfs_server=dict(type='str'),
            clone_method=dict(type='str', choices=['auto', 'snapshot', 'reflink', 'copy'], default='auto'),
            pis=dict(type='list', elements='dict', options=pi_options),
        ),
        mutually_exclusive=[('serial', 'pis')],
        required_one_of=[('serial', 'pis')],
        required_if=[('boot_mount', 'nfs', ('nfs_server',))],
        supports_check_mode=True,
    )
    PiRootModule(module).run()


if __name__ == '__main__':
    main()
