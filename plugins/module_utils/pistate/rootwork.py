# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_root's plan and apply: each Pi's root as a file system of its own, cloned, fixed and mounted.

``plan(item)`` reads the state of one Pi's root (image, marker, mount, unit) and decides what to do;
``apply(plan)`` does it, or in check mode reports it with the diff a real run would make. The host is
a small object with ``run(argv)``, ``which(name, required)``, ``warn(msg)``, ``check_mode``, ``diff``
and ``tmpdir`` (the module's AnsibleModule adapter; tests can pass their own). See ``roots`` for the
layout and ``SECURITY.md`` for why every write goes through ``confined.Tree``.
"""

from __future__ import annotations

import contextlib
import os

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import cloudinit as _cloudinit
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import points as _points
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rootfix as _rootfix
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import space as _space
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import (
    BOOT_EXPORT,
    BOOT_IMAGE,
    ROOT_IMAGE,
    check_name,
    is_complete,
    load_manifest,
)

DIFF_FILES = (_rootfix.FSTAB, _rootfix.HOSTNAME, _rootfix.HOSTS)
BOOT_OPTIONS = ('ro', 'nosuid', 'nodev', 'noexec')
GOLDEN_OPTIONS = ('ro', 'noload', 'nosuid', 'nodev', 'noexec')


class PiRoots:
    """The roots of many Pis in one ``roots_dir``; one instance per module run."""

    def __init__(self, host, *, store, roots_dir, units_dir, clone_method, key_types, space=None):
        # The kernel's names: mount points are found in mountinfo and named in units by their real path.
        self.host, self.store, self.roots_dir = host, os.path.realpath(store), os.path.realpath(roots_dir)
        self.clone_method, self.key_types = clone_method, list(key_types)
        self.cloner = _roots.Cloner(host.run, host.which)
        self.mounter = _loopfs.Mounter(host.run, host.which)
        self.units = _loopfs.Units(units_dir) if units_dir else None
        self.points = _points.Points(host, self.roots_dir, self.units, 'Pi roots')
        self.space = space  # a space.Ledger: new roots must fit the data file system in the worst case
        self.manifests, self.goldens, self.diffs = {}, {}, []
        self.mounts = None
        self.forge = None
        self.stack = contextlib.ExitStack()
        self.shared_changed = False  # the roots directory's mode, the bakeforms' boot file systems

    # ------------------------------------------------------------------ shared state

    def mounted(self, point):
        """The image file mounted at ``point`` (None when nothing is): one mountinfo read per run."""
        if self.mounts is None:
            self.mounts = {}
            for target, _fstype, source in _atomic.read_mounts():
                self.mounts[target] = source
        return _loopfs.loop_backing(self.mounts.get(point)) if point in self.mounts else None

    def manifest(self, name, serial):
        """Each bakeform's manifest, read once per run however many Pis use it."""
        if name not in self.manifests:
            problem = check_name(name)
            if problem:
                raise _roots.RootError('%s (Pi %s)' % (problem, serial))
            dest = os.path.join(self.store, name)
            manifest = load_manifest(dest)
            if manifest is None or not is_complete(dest, manifest):
                raise _roots.RootError(
                    'bakeform %s not found for Pi %s: %s has no manifest.json, root.img and boot.img of this '
                    'version; register the image (again) with pifleet.netboot.bakeform (name: %s, store: %s)'
                    % (name, serial, dest, name, self.store))
            self.manifests[name] = manifest
        return self.manifests[name]

    def golden(self, name):
        """A read-only view of a bakeform's golden root (check mode diffs): mounted once, under the tmpdir."""
        if name not in self.goldens:
            point = os.path.join(self.host.tmpdir, 'golden-%s' % name)
            os.mkdir(point, 0o700)
            self.mounter.mount(os.path.join(self.store, name, ROOT_IMAGE), point, GOLDEN_OPTIONS,
                               'a read-only look at bakeform %s' % name)
            self.stack.callback(self.mounter.umount, point, 'bakeform %s' % name)
            self.goldens[name] = self.stack.enter_context(Tree(point, 'the golden root of bakeform %s' % name))
        return self.goldens[name]

    def close(self):
        self.stack.close()
        if self.forge:
            self.forge.close()
            self.forge = None
        if self.points.release():  # the last root is gone
            self.shared_changed = True
        if self.units:
            self.units.reload(self.host.run, self.host.which)

    def prepare(self):
        """The roots directory exists, 0700 (a Pi's files are no business of the bakery's local users)."""
        if not os.path.isdir(self.roots_dir):
            os.makedirs(self.roots_dir, _roots.ROOTS_MODE)
        if os.stat(self.roots_dir).st_mode & 0o7777 != _roots.ROOTS_MODE:
            os.chmod(self.roots_dir, _roots.ROOTS_MODE)
            self.shared_changed = True
        if _points.holds_images(self.roots_dir) and self.points.ensure():  # else made with the first mount point
            self.shared_changed = True
        return _atomic.sweep_stale(self.roots_dir, self._sweep_target, self._unmount_quietly)

    def _sweep_target(self, _label):
        return None  # an image is renamed into place whole: a dead build has nothing to put back

    def _unmount_quietly(self, point):
        self.host.run([self.host.which('umount', True), '--lazy', '--', point])

    def key_forge(self):
        if self.forge is None:
            self.forge = _roots.KeyForge(self.roots_dir, self.host.which('ssh-keygen', True),
                                         setpriv=self.host.which('setpriv', False))
        return self.forge

    def order_keys(self, plans):
        """Start making the host keys of every root this run clones (several ssh-keygen at once)."""
        self.key_forge()
        for plan in plans:
            if plan['action'] == 'clone':
                self.forge.order(plan['serial'], plan['item']['hostname'], self.key_types)

    # ------------------------------------------------------------------ plan

    def plan(self, item):
        serial, state = item['serial'], item['state']
        lay = _roots.Layout(self.roots_dir, serial)
        image = os.path.isfile(lay.image)
        link = os.path.islink(lay.point)
        if link and state != 'absent':  # mounting there would mount over whatever it points to
            raise _roots.RootError('root of Pi %s: %s is a symlink; pi_root mounts the root there itself: remove '
                                   'the link' % (serial, lay.point))
        old = lay.old_point  # the mount point of earlier releases, on the data file system
        legacy = not image and not os.path.islink(old) and os.path.isdir(old) and not os.path.ismount(old) and bool(
            os.listdir(old))
        moved = not legacy and (os.path.lexists(old) or bool(self.units and self.units.current(old)[0] is not None))
        marker = _roots.load_marker(lay.marker, strict=state == 'present') if image else None
        plan = {'serial': serial, 'item': item, 'layout': lay, 'image': image, 'legacy': legacy, 'moved': moved,
                'marker': marker, 'mounted': self.mounted(lay.point)}
        if state == 'absent':
            present = image or legacy or moved or os.path.lexists(lay.marker) or os.path.lexists(lay.point)
            return dict(plan, action='remove' if present else 'none')
        manifest = self.manifest(item['bakeform'], serial)
        plan['sha256'] = manifest.get('sha256')
        action = _roots.plan_action(state, image or legacy, marker, plan['sha256'])
        if action in ('clone', 'rebuild'):
            self.claim_space(item)
        if action == 'foreign':
            if legacy:
                raise _roots.RootError(
                    'root of Pi %s: %s is a directory made by an older pifleet on the shared file system, where a '
                    'Pi can reach other files with forged NFS handles; rebuild it with state: rebuilt (it keeps '
                    'its SSH host keys and machine-id)' % (serial, lay.old_point))
            raise _roots.RootError('root of Pi %s: %s exists but %s does not, so pi_root did not make it; move it '
                                   'away, or use state: rebuilt to replace it' % (serial, lay.image, lay.marker))
        return dict(plan, action=action)

    def claim_space(self, item):
        """Book the new root's worst case (its golden image's size) on the data file system, or refuse it."""
        golden = os.path.join(self.store, item['bakeform'], ROOT_IMAGE)
        if self.space is None or not os.path.isfile(golden):
            return
        try:
            self.space.claim(self.roots_dir, os.stat(golden).st_size, 'the root of Pi %s' % item['serial'])
        except _space.SpaceError as exc:
            raise _roots.RootError(str(exc)) from None

    # ------------------------------------------------------------------ apply

    def apply(self, plan):
        item, lay, action = plan['item'], plan['layout'], plan['action']
        result = {'serial': plan['serial'], 'hostname': item['hostname'], 'path': lay.point, 'image': lay.image,
                  'changed': False, 'action': 'unchanged', 'drift': False,
                  'clone_method': (plan['marker'] or {}).get('clone_method')}
        if action == 'none':
            return result
        if action == 'remove':
            self.diff(lay.marker, _roots.marker_text(plan['marker']), '')
            if not self.host.check_mode:
                self.remove(plan)
            return dict(result, changed=True, action='removed')
        if action in ('clone', 'rebuild'):
            return self.build(plan, result)
        changed = self.ensure_mounted(plan)
        if action == 'drift':
            self.host.warn('root of Pi %s was cloned from bakeform content %s, but bakeform %s now holds %s; left '
                           'alone: use state: rebuilt to reimage it' % (plan['serial'], plan['marker'].get(
                               'bakeform_sha256'), item['bakeform'], plan['sha256']))
            return dict(result, changed=changed, action='mounted' if changed else 'drift', drift=True)
        if changed and self.host.check_mode:
            return dict(result, changed=True, action='mounted')  # what is inside is read once it is mounted
        return self.fix(plan, result, changed)

    def boot_line(self, item, tree):
        """The fstab line for the boot files (None without boot_mount nfs), for the root seen through ``tree``."""
        if item['boot_mount'] != 'nfs':
            return None
        self.ensure_boot_export(item['bakeform'])
        return _rootfix.boot_line('nfs', item['nfs_server'], os.path.join(self.store, item['bakeform'], BOOT_EXPORT),
                                  _rootfix.boot_mountpoint(tree))

    @staticmethod
    def seed(item, tree):
        """The Pi's own cloud-init NoCloud seed, for roots that have cloud-init (None otherwise).

        Without one, cloud-init on an NFS root falls back to its defaults: a new default user and new
        host keys, and its own idea of the network the root lives on.
        """
        if not tree.is_dir('etc/cloud'):
            return None
        extra = item.get('cloud_init') or {}
        try:
            return _cloudinit.render_seed(item['serial'], item['hostname'], item['ssh_authorized_keys'],
                                          user_data=extra.get('user_data'), instance=extra.get('instance'))
        except _cloudinit.CloudInitError as exc:
            raise _roots.RootError('the cloud-init seed of Pi %s: %s' % (item['serial'], exc)) from None

    def ensure_boot_export(self, name):
        """The bakeform's boot.img mounted read-only at <store>/<name>/boot-nfs, for Pis with boot_mount nfs."""
        point, image = os.path.join(self.store, name, BOOT_EXPORT), os.path.join(self.store, name, BOOT_IMAGE)
        if self.persist(image, point, BOOT_OPTIONS, 'pifleet boot files of bakeform %s' % name):
            self.shared_changed = True
        if self.mounted(point) == image:
            return
        self.shared_changed = True
        if self.host.check_mode:
            return
        if self.mounted(point):
            self.mounter.umount(point, 'the old boot files of bakeform %s' % name)
        os.makedirs(point, 0o755, exist_ok=True)
        self.mounter.mount(image, point, BOOT_OPTIONS, 'the boot files of bakeform %s' % name)
        self.mounts = None  # read again: other Pis of this bakeform ask the same question

    def ensure_mounted(self, plan):
        """Mount the Pi's image at its mount point (again, if another image is mounted there); True if changed."""
        lay = plan['layout']
        changed = self.persist(lay.image, lay.point, _loopfs.ROOT_OPTIONS, 'pifleet root of Pi %s' % plan['serial'])
        if plan['mounted'] == lay.image:
            return self.move_out(plan) or changed
        if not self.host.check_mode:
            if plan['mounted'] or os.path.ismount(lay.point):
                self.mounter.umount(lay.point, 'the old root of Pi %s' % plan['serial'])
            self.points.make(lay.point)
            self.mounter.mount(lay.image, lay.point, _loopfs.ROOT_OPTIONS, 'the root of Pi %s' % plan['serial'])
            plan['mounted'] = lay.image
        self.move_out(plan)
        return True

    def move_out(self, plan):
        """The mount point of earlier releases (on the data file system) given up, once the root is mounted at its
        new one: its unit goes, it is unmounted (the Pi's NFS server lets go with the next exports) and removed."""
        if not plan['moved']:
            return False
        if not self.host.check_mode:
            lay = plan['layout']
            self.points.give_up(lay.old_point, lay.image, 'the root of Pi %s' % plan['serial'])
            plan['moved'] = False
        return True

    def persist(self, image, point, options, description):
        """The mount unit that brings this mount back after a reboot; True if it had to change."""
        if not self.units:
            return False
        text = _loopfs.unit_text(image, point, options, description)
        if self.units.wanted(point, text):
            return False
        if not self.host.check_mode:
            self.units.ensure(point, text, lambda path, body: _atomic.write_text(path, body, 0o644))
        return True

    def fix(self, plan, result, changed):
        item, lay = plan['item'], plan['layout']
        with Tree(lay.point, 'the root of Pi %s' % plan['serial']) as tree:
            keys = _rootfix.authorized_keys_text(item['ssh_authorized_keys'])
            changes = _rootfix.inplace_changes(tree, item['hostname'], self.boot_line(item, tree), keys)
            changes += _rootfix.seed_changes(tree, self.seed(item, tree))
            wanted = _roots.updated_marker(plan['marker'], hostname=item['hostname'], fixes=_rootfix.fixes_of(changes),
                                           keys_sha256=_roots.sha256_text(keys), boot_mount=item['boot_mount'])
            if not changes and wanted is None:
                return dict(result, changed=changed, action='mounted' if changed else 'unchanged')
            for change in changes:
                if change['path'] in DIFF_FILES:
                    self.diff(os.path.join(lay.point, change['path']), change['before'], change['after'])
            if wanted is not None:
                self.diff(lay.marker, _roots.marker_text(plan['marker']), _roots.marker_text(wanted))
            if not self.host.check_mode:
                _rootfix.apply(tree, changes)
                if wanted is not None:
                    _atomic.write_text(lay.marker, _roots.marker_text(wanted), 0o600)
        return dict(result, changed=True, action='fixed')

    def carry(self, plan):
        """Identity kept across a rebuild: (machine-id, host keys, problem) read from the old root, if reachable."""
        lay = plan['layout']
        if not (plan['legacy'] or plan['mounted'] == lay.image):
            return None, {}, None
        with Tree(lay.old_point if plan['legacy'] else lay.point, 'the old root of Pi %s' % plan['serial']) as tree:
            machine_id = tree.read_text(_rootfix.MACHINE_ID, 64)
            carried, problem = _roots.read_carry(tree, self.key_types)
        return machine_id, carried, problem

    def build(self, plan, result):
        item, lay = plan['item'], plan['layout']
        serial, rebuild = plan['serial'], plan['action'] == 'rebuild'
        golden = os.path.join(self.store, item['bakeform'], ROOT_IMAGE)
        methods = _roots.choose_methods(self.clone_method, golden, self.roots_dir)
        result.update(changed=True, action='rebuilt' if rebuild else 'cloned', clone_method=methods[0])
        if rebuild and plan['image'] and not plan['mounted'] and not self.host.check_mode:
            self.ensure_mounted(plan)
        machine_id, carried, problem = self.carry(plan) if rebuild else (None, {}, None)
        if problem:
            self.host.warn('Pi %s: its SSH host keys were not carried over, new ones were made: %s' % (serial, problem))
        if not _rootfix.valid_machine_id(machine_id):
            machine_id = _rootfix.new_machine_id()
        keys = _rootfix.authorized_keys_text(item['ssh_authorized_keys'])
        if self.host.check_mode:
            tree = self.golden(item['bakeform'])
            changes = _rootfix.clone_changes(tree, item['hostname'], self.boot_line(item, tree), keys, machine_id,
                                             seed=self.seed(item, tree))
            self.clone_diff(plan, changes, tree)
            self.diff(plan['layout'].marker, _roots.marker_text(plan['marker']),
                      _roots.marker_text(self.marker(item, plan, methods[0], changes, None)))
            return result
        scratch = _atomic.ScratchDir(self.roots_dir, serial)
        try:
            image, mnt = scratch.join('root.img'), scratch.join('mnt')
            method = self.cloner.clone(golden, image, methods, 'Pi %s' % serial)
            self.cloner.new_uuid(image, 'Pi %s' % serial)
            os.chmod(image, 0o600)
            os.mkdir(mnt, 0o700)
            self.mounter.mount(image, mnt, _loopfs.ROOT_OPTIONS, 'the new root of Pi %s' % serial)
            try:
                with Tree(mnt, 'the new root of Pi %s (bakeform %s)' % (serial, item['bakeform'])) as tree:
                    changes = _rootfix.clone_changes(tree, item['hostname'], self.boot_line(item, tree), keys,
                                                     machine_id, seed=self.seed(item, tree))
                    _rootfix.apply(tree, changes)
                    _roots.host_keys(tree, self.key_types, lambda kind: self.key_forge().key(
                        serial, item['hostname'], kind), carry=carried)
                    result['host_keys'] = [tree.read_text('%s/ssh_host_%s_key.pub' % (_roots.SSH_DIR, kind)).strip()
                                           for kind in self.key_types]
                    self.clone_diff(plan, changes, tree)
            finally:
                self.mounter.umount(mnt, 'the new root of Pi %s' % serial)
            wanted = self.marker(item, plan, method, changes, _loopfs.read_superblock(image)['uuid'])
            self.diff(lay.marker, _roots.marker_text(plan['marker']), _roots.marker_text(wanted))
            self.install(plan, scratch, image, wanted)
            result['clone_method'] = method
        finally:
            scratch.close(self._unmount_quietly)
        return result

    def install(self, plan, scratch, image, marker):
        """Swap the new root in: the old one unmounted (lazily if the NFS server holds it), the image renamed."""
        lay = plan['layout']
        if plan['mounted'] or os.path.ismount(lay.point):
            self.mounter.umount(lay.point, 'the old root of Pi %s' % plan['serial'])
        if plan['legacy']:
            os.rename(lay.old_point, scratch.join('legacy'))  # removed with the scratch directory
        os.rename(image, lay.image)
        _atomic.write_text(lay.marker, _roots.marker_text(marker), 0o600)
        plan.update(image=True, mounted=None, legacy=False)
        self.ensure_mounted(plan)

    def marker(self, item, plan, method, changes, fs_uuid):
        return _roots.new_marker(
            serial=plan['serial'], hostname=item['hostname'], bakeform=item['bakeform'], sha256=plan['sha256'],
            method=method, fixes=[*_rootfix.fixes_of(changes), 'ssh_host_keys'], fs_uuid=fs_uuid,
            keys_sha256=_roots.sha256_text(_rootfix.authorized_keys_text(item['ssh_authorized_keys'])),
            boot_mount=item['boot_mount'])

    def clone_diff(self, plan, changes, view):
        """Diffs of the files shown, old root against the new one (``view``: the golden, or the fixed clone)."""
        if not self.host.diff:
            return
        lay, after = plan['layout'], {c['path']: c['after'] for c in changes if c['kind'] == 'file'}
        old = Tree(lay.point, 'the root of Pi %s' % plan['serial']) if plan['mounted'] == lay.image else None
        with old or contextlib.nullcontext():
            for rel in DIFF_FILES:
                self.diff(os.path.join(lay.point, rel), old.read_text(rel) if old else None,
                          after.get(rel, view.read_text(rel)))

    def diff(self, header, before, after):
        if self.host.diff and before != after:
            self.diffs.append({'before': before or '', 'after': after or '', 'before_header': header,
                               'after_header': header})

    def remove(self, plan):
        lay = plan['layout']
        if self.units:
            self.units.remove(lay.point)
        if os.path.islink(lay.point):
            os.unlink(lay.point)  # the link only: what it points to is not this Pi's root
        if plan['mounted'] or os.path.ismount(lay.point):
            self.mounter.umount(lay.point, 'the root of Pi %s' % plan['serial'])
        if plan['legacy']:
            _atomic.discard(self.roots_dir, plan['serial'], lay.old_point)
        self.move_out(plan)
        for path in (lay.image, lay.marker):
            if os.path.lexists(path):
                os.unlink(path)  # a lazily unmounted image lives on until the NFS server lets go of it
        self.points.remove(lay.point)
