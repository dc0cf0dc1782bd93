#!/usr/bin/python
# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nfs_export
short_description: NFS exports of Pi roots, disks and boot files, each limited to its Pi
version_added: 0.1.0
description:
  - Manages the NFS exports of the bakery in one file that pifleet owns and never touches any other line.
  - For the kernel NFS server (O(backend=kernel)) that file is C(/etc/exports.d/pifleet.exports); after a change
    the module runs C(exportfs -ra) and, if that fails, puts the previous file back and fails with its error.
  - For NFS-Ganesha (O(backend=ganesha)) it is C(/etc/ganesha/pifleet.conf), made of C(EXPORT) blocks, which the
    module includes from O(ganesha_config) with one C(%include) line (added once, no other line touched); after a
    change it sends C(SIGHUP) to the running C(ganesha.nfsd), which reloads its exports live.
  - Each Ganesha export keeps its C(Export_Id) across runs; new exports get the lowest free id from 100 on, so ids
    below 100 stay free for the user's own exports (ids used in O(ganesha_config) are skipped as well).
  - A Pi's root and disks should go read-write to that Pi's address only (the default O(options) suit them, as root
    must not be squashed on an NFS root); boot files should go read-only (O(options) C([ro, sync, no_subtree_check,
    no_root_squash])). Exports to the world (C(*), C(0.0.0.0/0), C(::/0), name patterns) are refused unless
    O(allow_world=true); a read-write export to a network draws a warning.
  - Each export must be the top of a file system of its own (see O(allow_shared_filesystem)), and gets the option
    C(mp) (unless it has C(mp) or C(mountpoint) already), so it is served only while a file system is mounted at its
    path. Kernel nfsd does that itself; for NFS-Ganesha, which has no such option, the module writes the export as a
    comment (withheld, see RV(withheld)) while nothing is mounted there, and the C(nfs_server) role's guard does the
    same each time Ganesha starts or reloads. A Pi whose root failed to mount is never served a bare directory.
  - The managed file records which file system each export is; when another one is mounted at the same path (a
    rebuilt root), the module makes the server drop that export and export it again, touching no other export
    (Ganesha would otherwise keep serving the old, deleted file system).
  - Without O(exclusive), entries are merged by path into the managed file (an entry replaces the same path's
    entry); with O(exclusive=true) the managed file holds exactly the entries of this call.
  - One bad entry never stops the others. An entry that cannot be exported (its path is
    missing or not a file system of its own, a client or option is wrong) keeps what the managed file had for its
    path, also with O(exclusive=true) (never widened, never removed because it was wrong); every other entry is
    written, and then the task fails naming each failed entry (RV(failed_exports)), by Pi when the entry names one
    (O(exports[].serial), RV(failed_pis)). A failure of the call as a whole (its arguments, the lock, the server's
    reload) fails without them.
  - The managed file is read, merged and written under the bakery lock, so two runs at once never lose a change.
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
  - pifleet.netboot._attributes.full
  - pifleet.netboot._lock
requirements:
  - netaddr (Debian package C(python3-netaddr)) on the bakery host.
  - C(exportfs) (Debian C(nfs-kernel-server)) for O(backend=kernel) with O(reload=true).
options:
  path:
    description:
      - Directory to export (absolute, normalised, existing for O(state=present)).
      - Required unless O(exports) is given.
    type: path
  clients:
    description:
      - Hosts allowed to mount O(path) (IPv4 or IPv6 addresses, CIDR networks or RFC 1123 host names).
      - Required for O(state=present). With O(exports), the default for items that give none.
    type: list
    elements: str
  options:
    description:
      - exports(5) options, one per item, applied to every client of the entry; validated against what the
        server accepts. With O(exports), the default for items that give none.
      - For O(backend=ganesha) only V(rw), V(ro), V(root_squash), V(no_root_squash), V(all_squash),
        V(anonuid=N), V(anongid=N), V(sec=sys), V(sync) and V(no_subtree_check) are accepted (the last two are
        what Ganesha does anyway).
      - Boot file exports should pass V(ro) instead of V(rw).
    type: list
    elements: str
    default: [rw, sync, no_subtree_check, no_root_squash]
  state:
    description:
      - V(present) exports O(path) to O(clients); V(absent) removes the export of O(path).
      - With O(exports), the default for items that give none.
    type: str
    choices: [present, absent]
    default: present
  exports:
    description:
      - Many entries in one call; top-level O(clients), O(options) and O(state) are their defaults.
    type: list
    elements: dict
    suboptions:
      path:
        description: Directory to export.
        type: path
        required: true
      clients:
        description: Hosts allowed to mount it.
        type: list
        elements: str
      options:
        description: exports(5) options for it.
        type: list
        elements: str
      state:
        description:
          - Whether the export should be there.
          - V(keep) leaves the managed entry of this path exactly as it is (or absent, when there is none), also with
            O(exclusive=true). The fleet role passes it for a Pi that failed an earlier step, so that the Pi keeps the
            export it had.
        type: str
        choices: [present, absent, keep]
      serial:
        description:
          - Serial of the Pi this export is for (8 hex digits); when given, a failure of this entry is reported in
            RV(failed_pis) under it.
        type: str
      hostname:
        description: Host name of the Pi this export is for, to name it in a failure.
        type: str
  exclusive:
    description:
      - When true, the managed file holds exactly the entries of this call (others are removed).
    type: bool
    default: false
  backend:
    description:
      - V(kernel) for the kernel NFS server (exportfs), V(ganesha) for NFS-Ganesha.
    type: str
    choices: [kernel, ganesha]
    default: kernel
  exports_file:
    description:
      - The file pifleet owns. Default C(/etc/exports.d/pifleet.exports) for V(kernel) (exportfs reads only
        C(*.exports) files there), C(/etc/ganesha/pifleet.conf) for V(ganesha).
    type: path
  ganesha_config:
    description:
      - Main NFS-Ganesha config, which gets the line C(%include "<exports_file>") if it lacks it.
    type: path
    default: /etc/ganesha/ganesha.conf
  ganesha_pidfile:
    description:
      - PID file of the running C(ganesha.nfsd), signalled with C(SIGHUP) to reload exports.
    type: path
    default: /run/ganesha/ganesha.pid
  reload:
    description:
      - Apply a changed file to the running server (C(exportfs -ra), or C(SIGHUP) to Ganesha).
      - When Ganesha is not running, nothing fails and RV(reloaded) is false.
    type: bool
    default: true
  allow_world:
    description:
      - Allow clients that let any host in (C(*), C(0.0.0.0/0), C(::/0), host name patterns).
    type: bool
    default: false
  allow_shared_filesystem:
    description:
      - Allow an export that is not the top of a file system of its own (a directory inside a larger file system,
        a bind mount of one), and the options C(crossmnt) and C(nohide).
      - Without it such exports are refused, because an NFS client can forge file handles for any file of the
        exported file system, whatever directory was exported (Ganesha has no subtree check; kernel nfsd has none
        with C(no_subtree_check)). M(pifleet.netboot.pi_root) and M(pifleet.netboot.pi_disk) give each Pi file
        systems of its own.
    type: bool
    default: false
  command_timeout:
    description:
      - Seconds C(exportfs) may run before it is killed (and the task fails saying so).
    type: int
    default: 600
  reload_settle:
    description:
      - Seconds NFS-Ganesha is given to re-read its exports while an export whose file system changed (a rebuilt
        root) is dropped, before it is exported again. Only used for such exports.
    type: float
    default: 2.0
"""

EXAMPLES = r"""
- name: Export Pi A's root read-write to Pi A only
  pifleet.netboot.nfs_export:
    path: /srv/pifleet/roots/pi-a
    clients: [192.168.1.50]

- name: Converge the fleet's exports in one call, replacing every other managed export
  pifleet.netboot.nfs_export:
    exclusive: true
    exports:
      - path: /srv/pifleet/roots/pi-a
        clients: [192.168.1.50]
      - path: /srv/pifleet/roots/pi-b
        clients: [192.168.1.51]
      - path: /srv/pifleet/boot/bookworm-lite
        clients: [192.168.1.50, 192.168.1.51]
        options: [ro, sync, no_subtree_check, no_root_squash]

- name: Serve the same exports with NFS-Ganesha
  pifleet.netboot.nfs_export:
    backend: ganesha
    path: /srv/pifleet/roots/pi-a
    clients: [192.168.1.50]

- name: Stop exporting a retired Pi's root
  pifleet.netboot.nfs_export:
    path: /srv/pifleet/roots/pi-old
    state: absent
"""

RETURN = r"""
exports:
  description: The managed exports after the run (in check mode, as they would be), sorted by path.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Exported directory.
      type: str
    clients:
      description: Allowed clients, normalised.
      type: list
      elements: str
    options:
      description: exports(5) options.
      type: list
      elements: str
    export_id:
      description: Ganesha C(Export_Id) (V(ganesha) backend only).
      type: int
      returned: when backend is ganesha
  sample:
    - path: /srv/pifleet/roots/pi-a
      clients: [192.168.1.50]
      options: [rw, sync, no_subtree_check, no_root_squash]
file:
  description: The managed exports file.
  returned: always
  type: str
  sample: /etc/exports.d/pifleet.exports
reloaded:
  description: Whether the running server was told to apply the change (C(exportfs -ra) ran, or Ganesha got C(SIGHUP)).
  returned: always
  type: bool
  sample: true
results:
  description: One item per requested entry, with whether it changed the managed set (and C(failed), C(msg) for an
    entry that could not be exported).
  returned: always
  type: list
  elements: dict
  sample:
    - path: /srv/pifleet/roots/pi-a
      state: present
      changed: true
failed_exports:
  description: The entries that could not be exported, each kept as the managed file had it.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: The export's path., type: str}
    serial:
      description: The Pi it is for (O(exports[].serial)) or null.
      type: str
    hostname:
      description: The Pi's host name (O(exports[].hostname)) or null.
      type: str
    msg: {description: Why it failed., type: str}
  sample: []
failed_pis:
  description: The failed entries that name a Pi (O(exports[].serial)), as every pifleet list module reports them.
  returned: always
  type: list
  elements: dict
  contains:
    serial: {description: Serial of the Pi., type: str}
    hostname:
      description: Its host name, or null.
      type: str
    path: {description: The export that failed., type: str}
    msg: {description: Why it failed., type: str}
  sample: []
withheld:
  description:
    - Exports with option C(mp) that have no file system mounted at their path. Kernel nfsd withholds them itself
      (exports(5) C(mp)); for NFS-Ganesha they are written as comments until their file system is mounted again.
  returned: always
  type: list
  elements: str
  sample: []
bounced:
  description:
    - Exports the server was made to let go of before exporting them, touching no other export. Those whose file
      system changed (a rebuilt root), and the new paths of a file system exported before under a path that is gone
      (a mount point moved).
  returned: always
  type: list
  elements: str
  sample: [/srv/pifleet/roots/3a4b5c6d]
lock_waited:
  description: Seconds this run waited for another pifleet run to release the bakery lock.
  returned: when it had to wait
  type: float
  sample: 1.5
"""

import os
import signal
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import command as _command
from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import (
    COMMAND_ARGS,
    LOCK_ARGS,
    expand,
    failed_pi,
    failed_pis_message,
    file_diff,
    take_lock,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import exports as ex

ITEM_KEYS = ('path', 'clients', 'options', 'state', 'serial', 'hostname')


class NfsExport:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.backend = self.params['backend']
        self.file = self.params['exports_file'] or ex.DEFAULT_FILES[self.backend]
        self.result = {'changed': False, 'exports': [], 'file': self.file, 'reloaded': False, 'results': [],
                       'failed_pis': [], 'failed_exports': [], 'withheld': []}
        self.diffs = []

    def fail(self, msg, **details):
        self.module.fail_json(msg=msg, **dict(self.result, **details))

    def items(self):
        """The entries of the call; a call that is wrong as a whole (not one export) fails here."""
        items = expand(self.params, 'exports', ITEM_KEYS)
        try:
            if not os.path.isabs(self.file):
                raise ex.ExportsError('exports_file %s is not an absolute path; give the full path' % self.file)
            if self.backend == 'ganesha':
                ex.check_ganesha_path(self.file)
            ex.check_arguments(items)
        except ex.ExportsError as exc:
            self.fail(str(exc))
        return items

    def validate(self, items):
        """(the entries that are fine, the failed ones with their ``msg``): one bad export never stops the others."""
        shared = self.params['allow_shared_filesystem']
        roots = None if shared else _loopfs.mount_roots()
        good, failed = [], []
        for item in items:
            try:
                warnings = ex.check_item(item, self.backend, self.params['allow_world'], shared, roots)
            except ex.ExportsError as exc:
                failed.append(dict(item, msg=str(exc)))
                continue
            for warning in warnings:
                self.module.warn(warning)
            good.append(item)
        return good, failed

    def run(self):
        if not ex.HAS_NETADDR:
            self.module.fail_json(msg=missing_required_lib('netaddr'), exception=ex.NETADDR_IMPORT_ERROR)
        items = self.items()
        if self.backend == 'kernel' and os.path.basename(os.path.dirname(self.file)) == 'exports.d' \
                and not self.file.endswith('.exports'):
            self.module.warn('exportfs reads only *.exports files in %s: %s will be ignored; name it '
                             '<something>.exports' % (os.path.dirname(self.file), self.file))
        # Read, merge and write under the lock: another run's change between our read and our write is never lost.
        lock = take_lock(self.module, 'nfs_export', self.result)
        try:
            failed = self.converge(items)
        finally:
            if lock:
                lock.release()
        if failed:
            self.fail(failed_pis_message('nfs_export', failed))
        self.module.exit_json(**self.result)

    def converge(self, items):
        good, failed = self.validate(items)
        before = ex.read_config(self.file)
        parse = ex.parse_kernel if self.backend == 'kernel' else ex.parse_ganesha
        current, extra = parse(before or '')
        if self.backend == 'kernel' and extra:
            self.module.warn('%s held lines pifleet does not write (%s); they are dropped: keep your own exports '
                             'in another file' % (self.file, '; '.join(extra)))
        # A failed entry keeps what its path had: never widened, never removed because one export was wrong.
        wanted = ex.merge(current, good, self.params['exclusive'], keep=[item['path'] for item in failed])
        problems = {item['path']: item['msg'] for item in failed}
        self.result['results'] = []
        for i in items:
            entry = {'path': i['path'], 'state': i['state'], 'changed': current.get(i['path']) != wanted.get(i['path'])}
            if i['path'] in problems:
                entry.update(failed=True, msg=problems[i['path']])
            self.result['results'].append(entry)
        self.result['failed_exports'] = [{'path': i['path'], 'serial': i.get('serial'), 'hostname': i.get('hostname'),
                                          'msg': i['msg']} for i in failed]
        self.result['failed_pis'] = [failed_pi(i['serial'], i.get('hostname'), i['msg'], path=i['path'])
                                     for i in failed if i.get('serial')]
        after = self.render(wanted, extra)
        if self.result['withheld']:
            shown = self.result['withheld']
            self.module.warn('%d export(s) withheld, as nothing is mounted at their path (option mp): %s%s; each is '
                             'served again once its file system is mounted (pi_root, pi_disk) and the exports are '
                             'written again' % (len(shown), ', '.join(shown[:10]), ' and more' if len(shown) > 10
                                                else ''))
        file_changed = after != before and not (before is None and not wanted)
        config_before, config_after = self.include()
        include_changed = config_after != config_before
        self.result['changed'] = file_changed or include_changed
        self.result['bounced'] = ex.bounced(current, wanted)
        if self.module._diff:
            if file_changed:
                self.diffs.append(file_diff(self.file, before, after))
            if include_changed:
                self.diffs.append(file_diff(self.params['ganesha_config'], config_before, config_after))
            self.result['diff'] = self.diffs
        if self.result['changed'] and not self.module.check_mode:
            self.apply(file_changed, before, after, config_after if include_changed else None,
                       (current, wanted, extra))
        return failed

    def render(self, wanted, extra):
        # Exports with option mp and nothing mounted at their path: kernel nfsd withholds them itself (mp), for
        # Ganesha they are written withheld (commented out) until their file system is mounted again.
        withheld = ex.unmounted(wanted, _loopfs.mount_roots())
        self.result['withheld'] = sorted(withheld)
        if self.backend == 'kernel':
            self.result['exports'] = [wanted[p] for p in sorted(wanted)]
            return ex.render_kernel(wanted)
        old_ids = extra
        reserved = ex.used_export_ids(ex.read_config(self.params['ganesha_config']))
        ids = ex.assign_ids(list(wanted), old_ids, reserved)
        self.result['exports'] = [dict(wanted[p], export_id=ids[p]) for p in sorted(wanted)]
        return ex.render_ganesha(wanted, ids, withheld)

    def include(self):
        """The Ganesha config before and after adding our include line (equal when nothing is to add)."""
        if self.backend != 'ganesha':
            return None, None
        config = self.params['ganesha_config']
        text = ex.read_config(config)
        if text is None:
            self.fail('NFS-Ganesha config %s not found for the include of %s; install nfs-ganesha or set '
                      'ganesha_config' % (config, self.file))
        if ex.has_include(text, self.file):
            return text, text
        return text, ex.add_include(text, self.file)

    def apply(self, file_changed, before, after, config_after, sets):
        current, wanted, extra = sets
        bounce = self.result['bounced'] if self.params['reload'] else []
        if file_changed:
            os.makedirs(os.path.dirname(self.file), 0o755, exist_ok=True)
            if bounce:
                self.let_go(bounce, current, ex.without(wanted, bounce), extra)
            _atomic.write_text(self.file, after)
        if config_after is not None:
            # After the exports file exists, so the config never includes a missing file.
            _atomic.write_text(self.params['ganesha_config'], config_after)
        if not self.params['reload']:
            return
        if self.backend == 'kernel':
            self.exportfs(before)
        else:
            self.hup()

    def let_go(self, bounce, current, rest, extra):
        """Make the server drop the exports whose file system changed, before it exports them again.

        Ganesha keeps serving the file system it opened at an export's path, even after another is
        mounted there and after SIGHUP; removing the export and adding it again makes it look again.
        Kernel nfsd: ``exportfs -u`` of each client, then the ``exportfs -ra`` below flushes its caches.
        """
        if self.backend == 'kernel':
            exportfs = self.module.get_bin_path('exportfs', required=True)
            for path in bounce:
                for client in current.get(path, {}).get('clients', ()):  # a moved export was not there before
                    self.tool([exportfs, '-u', '%s:%s' % (client, path)])
            return
        shown = self.result['exports']
        _atomic.write_text(self.file, self.render(rest, extra))
        self.result['exports'] = shown
        pid = self.hup()
        deadline = time.monotonic() + 30
        while pid and not ex.hup_taken(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(self.params['reload_settle'])  # the reload it started reads the file we leave now

    def exportfs(self, before):
        exportfs = self.module.get_bin_path('exportfs', required=True)
        rc, out, err = self.tool([exportfs, '-ra'])
        if rc != 0:
            _atomic.write_or_remove(self.file, before)
            self.tool([exportfs, '-ra'])
            self.result['changed'] = False
            self.fail('exportfs -ra failed for %s: %s; the previous file is back in place, correct the exports and '
                      'run again' % (self.file, err.strip() or out.strip()), rc=rc, stdout=out, stderr=err)
        self.result['reloaded'] = True

    def tool(self, argv):
        """(rc, out, err) of exportfs, killed after command_timeout (a hung server must not hang the bakery)."""
        return _command.run(argv, self.params['command_timeout'])

    def hup(self):
        pid = ex.ganesha_pid(self.params['ganesha_pidfile'])
        if pid is None:
            self.module.warn('NFS-Ganesha is not running (no live ganesha.nfsd in %s): the exports apply when it '
                             'starts' % self.params['ganesha_pidfile'])
            return
        os.kill(pid, signal.SIGHUP)  # Ganesha re-reads its exports live
        self.result['reloaded'] = True
        return pid


def main():
    item = dict(
        path=dict(type='path', required=True),
        clients=dict(type='list', elements='str'),
        options=dict(type='list', elements='str'),
        state=dict(type='str', choices=['present', 'absent', 'keep']),
        serial=dict(type='str'),
        hostname=dict(type='str'),
    )
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path'),
            clients=dict(type='list', elements='str'),
            options=dict(type='list', elements='str', default=list(ex.DEFAULT_OPTIONS)),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            exports=dict(type='list', elements='dict', options=item),
            exclusive=dict(type='bool', default=False),
            backend=dict(type='str', choices=['kernel', 'ganesha'], default='kernel'),
            exports_file=dict(type='path'),
            ganesha_config=dict(type='path', default='/etc/ganesha/ganesha.conf'),
            ganesha_pidfile=dict(type='path', default='/run/ganesha/ganesha.pid'),
            reload=dict(type='bool', default=True),
            allow_world=dict(type='bool', default=False),
            allow_shared_filesystem=dict(type='bool', default=False),
            reload_settle=dict(type='float', default=2.0),
            **LOCK_ARGS,
            **COMMAND_ARGS,
        ),
        required_one_of=[('path', 'exports')],
        mutually_exclusive=[('path', 'exports')],
        supports_check_mode=True,
    )
    NfsExport(module).run()


if __name__ == '__main__':
    main()
