# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_root's plan and apply: each Pi's root as a file system of its own, built from a bakeform generation,
fixed and mounted; the root before it kept for a rollback.

``plan(item)`` reads the state of one Pi's root (images, markers, mount) and decides what to do;
``apply(plan)`` does it, or in check mode reports it with the diff a real run would make. The host is
a small object with ``run(argv)``, ``which(name, required)``, ``warn(msg)``, ``check_mode``, ``diff``
and ``tmpdir`` (the module's AnsibleModule adapter; tests can pass their own). Building and rolling
back are ``rootbuild``; what goes into a root besides the NFS fixes is ``rootparts``; moving roots
safely is ``rollback``. See ``roots`` for the layout and ``SECURITY.md`` for why every write goes
through ``confined.Tree``.
"""

from __future__ import annotations

import contextlib
import os
import re

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import file_diff, printable
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import cloudinit as _cloudinit
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import identity as _identity
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import points as _points
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rollback as _rollback
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rootfix as _rootfix
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rootneeds as _rootneeds
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import space as _space
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.rootbuild import Builder
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.rootparts import Parts, kinds_of

BOOT_OPTIONS = ('ro', 'nosuid', 'nodev', 'noexec')
_HALF_WRITTEN = re.compile(r'\.pifleet-[a-z0-9_]{8}')  # atomic.write_text's temporary file (mkstemp)
_JOURNAL = re.compile(r'[0-9a-f]{8}\.swap\.json')
GOLDEN_OPTIONS = ('ro', 'noload', 'nosuid', 'nodev', 'noexec')


class PiRoots(Builder):
    """The roots of many Pis in one ``roots_dir``; one instance per module run."""

    def __init__(self, host, *, store, roots_dir, units_dir, clone_method, key_types, host_ca=None, space=None):
        # The kernel's names: mount points are found in mountinfo and named in units by their real path.
        self.host, self.store, self.roots_dir = host, os.path.realpath(store), os.path.realpath(roots_dir)
        self.clone_method, self.key_types = clone_method, list(key_types)
        self.cloner = _roots.Cloner(host.run, host.which)
        self.mounter = _loopfs.Mounter(host.run, host.which)
        self.units = _loopfs.Units(units_dir) if units_dir else None
        self.points = _points.Points(host, self.roots_dir, self.units, 'Pi roots')
        self.space = space  # a space.Ledger: new roots must fit the data file system in the worst case
        self.parts = Parts(host, store=self.store, roots_dir=self.roots_dir, key_types=key_types, host_ca=host_ca,
                           golden=self.golden)
        self.goldens, self.diffs, self.kernels, self.clone_methods = {}, [], {}, {}
        self.needs = _rootneeds.Needs(host)  # the Pis' settings against what their generation's image can do
        self.views = None  # the scratch directory holding the golden views of a real run
        self.mounts = None
        self.stack = contextlib.ExitStack()
        self.shared_changed = False  # the roots directory's mode, the generations' boot file systems

    # ------------------------------------------------------------------ shared state

    def mounted(self, point):
        """The image file mounted at ``point`` (None when nothing is): one mountinfo read per run."""
        if self.mounts is None:
            self.mounts = {}
            for target, _fstype, source in _atomic.read_mounts():
                self.mounts[target] = source
        return _loopfs.loop_backing(self.mounts.get(point)) if point in self.mounts else None

    def golden(self, bake, generation):
        """A read-only view of a generation's golden root (check mode, package lists), mounted once per run.

        A real run mounts it in a scratch directory of roots_dir, which the next run sweeps (with the mount)
        should this one be killed; check mode, which writes nothing there, under the module's tmpdir.
        """
        key = (bake.name, generation)
        if key not in self.goldens:
            label = bake.label(generation)
            if self.host.check_mode or not os.path.isdir(self.roots_dir):
                point = os.path.join(self.host.tmpdir, 'golden-%s-%s' % key)
            else:
                if self.views is None:
                    self.views = _atomic.ScratchDir(self.roots_dir, 'golden')
                    self.stack.callback(self.views.close, self._unmount_quietly)
                point = self.views.join('%s-%s' % key)
            os.mkdir(point, 0o700)
            self.mounter.mount(bake.root_image(generation), point, GOLDEN_OPTIONS, 'a read-only look at %s' % label)
            self.stack.callback(self.mounter.umount, point, label)
            self.goldens[key] = self.stack.enter_context(Tree(point, 'the golden root of %s' % label))
        return self.goldens[key]

    def close(self):
        self.stack.close()
        self.parts.close()
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
        # A killed run's new identity is dropped and the old one put back (an image is renamed in whole).
        swept = _atomic.sweep_stale(self.roots_dir, self.parts.identities.target, self._unmount_quietly)
        for name in sorted(os.listdir(self.roots_dir)):
            path = os.path.join(self.roots_dir, name)
            if _HALF_WRITTEN.fullmatch(name) and os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)  # a marker or journal half written by a killed run: only pi_root writes here
                swept.append(name)
            elif _JOURNAL.fullmatch(name):  # every Pi's roots whole before anything reads a marker
                self.recover(_roots.Layout(self.roots_dir, name[:8]))
        return swept

    def recover(self, lay):
        self.host.warn('root of Pi %s: a killed run had left its roots half moved; put in order: %s'
                       % (lay.serial, '; '.join(_rollback.recover(lay)) or 'nothing to do'))

    def _unmount_quietly(self, point):
        self.host.run([self.host.which('umount', True), '--lazy', '--', point])

    def order_keys(self, plans):
        """Start making the host keys of every new identity of this run (several ssh-keygen at once)."""
        for plan in plans:
            if self.parts.needs_keys(plan['item'], plan['action']):
                self.parts.key_forge().order(plan['serial'], plan['item']['hostname'], self.key_types,
                                             sign=self.parts.presign(plan['item']))

    # ------------------------------------------------------------------ plan

    def plan(self, item):
        serial, state = item['serial'], item['state']
        lay = _roots.Layout(self.roots_dir, serial)
        if os.path.lexists(lay.journal):
            if self.host.check_mode:
                self.host.warn('root of Pi %s: a run was killed while moving its roots; the next real run puts them '
                               'in order first' % serial)
            else:
                self.recover(lay)
        image = os.path.isfile(lay.image)
        link = os.path.islink(lay.point)
        if link and state != 'absent':  # mounting there would mount over whatever it points to
            raise _roots.RootError('root of Pi %s: %s is a symlink; pi_root mounts the root there itself: remove '
                                   'the link' % (serial, lay.point))
        old = lay.old_point  # the mount point of earlier releases, on the data file system
        legacy = not image and not os.path.islink(old) and os.path.isdir(old) and not os.path.ismount(old) and bool(
            os.listdir(old))
        moved = not legacy and (os.path.lexists(old) or bool(self.units and self.units.current(old)[0] is not None))
        marker = _roots.load_marker(lay.marker, strict=state in ('present', 'rolledback')) if image else None
        previous = _roots.load_marker(lay.prev_marker, strict=False) if os.path.isfile(lay.prev_image) else None
        plan = {'serial': serial, 'item': item, 'layout': lay, 'image': image, 'legacy': legacy, 'moved': moved,
                'marker': marker, 'previous': previous, 'mounted': self.mounted(lay.point)}
        if state == 'absent':
            present = image or legacy or moved or any(os.path.lexists(path) for path in (
                lay.marker, lay.point, lay.prev_image, lay.prev_marker, lay.journal, lay.identity))
            return dict(plan, action='remove' if present else 'none')
        action = _roots.plan_action(state, image or legacy, marker)
        if state == 'rolledback' and action == 'clone':
            raise _roots.RootError('root of Pi %s: there is no root to roll back (%s is not there)'
                                   % (serial, lay.image))
        if action == 'rollback' and previous is None:
            raise _roots.RootError('root of Pi %s has no previous root to roll back to (%s is not there): a root '
                                   'is kept for a rollback by state: rebuilt with keep_previous: true (the upgrade '
                                   'playbook)' % (serial, lay.prev_image))
        if action == 'foreign':
            if legacy:
                raise _roots.RootError(
                    'root of Pi %s: %s is a directory made by an older pifleet on the shared file system, where a '
                    'Pi can reach other files with forged NFS handles; rebuild it with state: rebuilt (it keeps '
                    'its SSH host keys and machine-id)' % (serial, lay.old_point))
            raise _roots.RootError('root of Pi %s: %s exists but %s does not, so pi_root did not make it; move it '
                                   'away, or use state: rebuilt to replace it' % (serial, lay.image, lay.marker))
        who = 'Pi %s' % serial
        _bake, _generation, current = self.parts.generation(item['bakeform'], None, who)
        if action in ('clone', 'rebuild'):
            bake, generation, _current = self.parts.generation(item['bakeform'], item.get('generation'), who)
            self.needs.check(item, bake, generation)  # before its space is booked
            self.claim_space(serial, bake.root_image(generation))
        else:  # the root's own generation: present and a rollback never choose another one
            source = previous if action == 'rollback' else marker
            bake, index = self.parts.bakeform(source.get('bakeform') or item['bakeform'], who)
            generation = _roots.marker_generation(source, index)
            if action == 'fix' and generation is not None:  # a rollback puts back what the Pi had
                self.needs.check(item, bake, generation, lay.point if plan['mounted'] == lay.image else None)
        return dict(plan, action=action, bake=bake, generation=generation, current=current)

    def claim_space(self, serial, golden):
        """Book the new root's worst case (its golden image's size) on the data file system, or refuse it."""
        if self.space is None or not os.path.isfile(golden):
            return
        try:
            self.space.claim(self.roots_dir, os.stat(golden).st_size, 'the root of Pi %s' % serial)
        except _space.SpaceError as exc:
            raise _roots.RootError(str(exc)) from None

    # ------------------------------------------------------------------ apply

    def apply(self, plan):
        item, lay, action = plan['item'], plan['layout'], plan['action']
        result = {'serial': plan['serial'], 'hostname': item['hostname'], 'path': lay.point, 'image': lay.image,
                  'changed': False, 'action': 'unchanged',
                  'clone_method': (plan['marker'] or {}).get('clone_method')}
        if action in ('none', 'remove'):
            result.update(self.describe(plan, plan['marker'], plan['previous']))
            if action == 'remove':
                self.diff(lay.marker, _roots.marker_text(plan['marker']), '')
                if not self.host.check_mode:
                    self.remove(plan)
                result.update(changed=True, action='removed', previous=None)
            return result
        if action in ('clone', 'rebuild'):
            return self.build(plan, result)
        if action == 'rollback':
            return self.rollback(plan, result)
        changed = self.ensure_mounted(plan)
        if changed and self.host.check_mode:
            return dict(result, changed=True, action='mounted', **self.describe(plan, plan['marker'], plan['previous']))
        return self.fix(plan, result, changed)

    def describe(self, plan, marker, previous):
        """The result keys that say what a root is built from (CONTRACTS part 2), for ``marker`` and ``previous``."""
        item, bake, generation = plan['item'], plan.get('bake'), plan.get('generation')
        marker = marker or {}
        name = marker.get('bakeform') or (bake.name if bake else item.get('bakeform'))
        if plan['action'] in ('none', 'remove'):
            generation = marker.get('generation')
        described = {
            'bakeform': name, 'generation': generation,
            'label': '%s@%s' % (name, generation) if name and generation else None,
            'current_generation': plan.get('current'),
            'behind': bool(plan.get('current')) and (name != item.get('bakeform') or generation != plan['current']),
            'previous': None, 'host_keys': list(marker.get('host_keys') or []),
            'host_certificate': bool(marker.get('host_certificate')),
        }
        if described['label'] and marker.get('kernel_packages') is not None:
            self.kernels[described['label']] = list(marker['kernel_packages'])
        if previous:
            number = previous.get('generation')
            described['previous'] = {'bakeform': previous.get('bakeform'), 'generation': number,
                                     'label': '%s@%s' % (previous.get('bakeform'), number) if number else None}
        if item.get('boot_mount') == 'nfs' and bake and generation:
            described['boot_export'] = bake.boot_export(generation)
        return described

    def boot_line(self, item, bake, generation, tree):
        """The fstab line for the boot files of the root's generation (None without boot_mount nfs)."""
        if item['boot_mount'] != 'nfs':
            return None
        if generation is None:
            generation = bake.current()
            self.host.warn('root of Pi %s was built from content that is no generation of bakeform %s: its boot '
                           'files are those of %s until the upgrade playbook gives it a generation'
                           % (item['serial'], bake.name, bake.label(generation)))
        self.ensure_boot_export(bake, generation)
        return _rootfix.boot_line('nfs', item['nfs_server'], bake.boot_export(generation),
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

    def ensure_boot_export(self, bake, generation):
        """A generation's boot.img mounted read-only at its boot-nfs, for Pis with boot_mount nfs."""
        point, image, label = bake.boot_export(generation), bake.boot_image(generation), bake.label(generation)
        if self.persist(image, point, BOOT_OPTIONS, 'pifleet boot files of %s' % label):
            self.shared_changed = True
        if self.mounted(point) == image:
            return
        self.shared_changed = True
        if self.host.check_mode:
            return
        if self.mounted(point):
            self.mounter.umount(point, 'the old boot files of %s' % label)
        os.makedirs(point, 0o755, exist_ok=True)
        self.mounter.mount(image, point, BOOT_OPTIONS, 'the boot files of %s' % label)
        self.mounts = None  # read again: other Pis of this generation ask the same question

    def ensure_mounted(self, plan):
        """Mount the Pi's image at its mount point (again, if another image is mounted there); True if changed."""
        lay = plan['layout']
        changed = self.persist(lay.image, lay.point, _loopfs.ROOT_OPTIONS, 'pifleet root of Pi %s' % plan['serial'])
        if plan['mounted'] == lay.image:
            return self.move_out(plan) or changed
        if not self.host.check_mode:
            self.unmount(plan)
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

    def unmount(self, plan):
        """The root at the Pi's mount point unmounted (lazily if the NFS server holds it)."""
        lay = plan['layout']
        if plan['mounted'] or os.path.ismount(lay.point):
            self.mounter.umount(lay.point, 'the old root of Pi %s' % plan['serial'])
        plan['mounted'] = None

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
        """The option-driven fixes of a live root, in place; its generation and host keys stay as they are."""
        item, lay, marker = plan['item'], plan['layout'], plan['marker']
        bake, generation = plan['bake'], plan['generation']
        with Tree(lay.point, 'the root of Pi %s' % plan['serial']) as tree:
            keys = _rootfix.authorized_keys_text(item['ssh_authorized_keys'])
            boot = self.boot_line(item, bake, generation, tree)
            changes = _rootfix.inplace_changes(tree, item['hostname'], boot, keys)
            changes += _rootfix.seed_changes(tree, self.seed(item, tree))
            identity = self.parts.identities.load(plan['serial'])
            kept = identity is not None
            if not kept:  # a root made before the bakery kept identities: taken from it once (well-formed only)
                identity, _made = self.parts.identity(dict(item, identity='keep'),
                                                      old_root=lambda: contextlib.nullcontext(tree))
                changes += _rootfix.machine_id_changes(tree, identity.machine_id + '\n')
                changes += [change for change in _identity.host_key_changes(tree, identity, self.key_types)
                            if change['kind'] != 'absent']  # present gives no key and takes none away
            kinds = [kind for kind in kinds_of(marker.get('host_keys'), self.key_types) if kind in identity.keys]
            cert_changes, record, signed = self.parts.certificate(item, tree, identity, kinds)
            hold_changes, packages = ([], marker.get('kernel_packages')) if generation is None else self.parts.hold(
                tree, bake, generation, marker.get('kernel_packages'))
            changes += cert_changes + hold_changes
            wanted = _roots.updated_marker(
                marker, hostname=item['hostname'], fixes=_rootfix.fixes_of(changes), boot_mount=item['boot_mount'],
                keys_sha256=_roots.sha256_text(keys), generation=generation, host_certificate=record is not None,
                certificate=record, kernel_packages=packages,
                host_keys=marker.get('host_keys') or identity.public_keys(kinds))
            described = self.describe(plan, wanted or marker, plan['previous'])
            if not changes and wanted is None and kept and not signed:
                return dict(result, changed=changed, action='mounted' if changed else 'unchanged', **described)
            self.show(lay, changes)
            if wanted is not None:
                self.diff(lay.marker, _roots.marker_text(marker), _roots.marker_text(wanted))
            if not self.host.check_mode:
                _rootfix.apply(tree, changes)
                if signed or not kept:
                    self.parts.identities.save(plan['serial'], identity)
                if wanted is not None:
                    _rollback.write_marker(lay.marker, wanted)
        return dict(result, changed=True, action='fixed', **described)

    def show(self, lay, changes, point=None):
        """Diffs of the files people read (fstab, hostname, hosts) among ``changes``."""
        for change in changes:
            if change['path'] in _rootfix.DIFF_FILES:
                self.diff(os.path.join(point or lay.point, change['path']), change['before'], change['after'])

    def diff(self, header, before, after):
        """A diff entry (diff mode only); text a Pi may have written is shown with its control characters escaped."""
        if self.host.diff and before != after:
            self.diffs.append(file_diff(header, printable(before), printable(after)))

    def remove(self, plan):
        """The Pi's roots (current and previous), its mount and unit, and the identity the bakery kept for it."""
        lay = plan['layout']
        if self.units:
            self.units.remove(lay.point)
        if os.path.islink(lay.point):
            os.unlink(lay.point)  # the link only: what it points to is not this Pi's root
        self.unmount(plan)
        if plan['legacy']:
            _atomic.discard(self.roots_dir, plan['serial'], lay.old_point)
        self.move_out(plan)
        for path in (lay.image, lay.marker, lay.journal):
            if os.path.lexists(path):
                os.unlink(path)  # a lazily unmounted image lives on until the NFS server lets go of it
        _rollback.remove_previous(lay)
        self.parts.identities.remove(plan['serial'])
        self.points.remove(lay.point)
