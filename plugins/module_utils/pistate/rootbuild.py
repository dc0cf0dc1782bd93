# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Building a Pi's root from a bakeform generation, and rolling back to the root kept before it.

The part of ``rootwork.PiRoots`` that makes roots (a mixin: it uses the shared state there). A new root
is cloned from the generation's golden root in a locked scratch directory, fixed there (the NFS fixes,
the Pi's identity from the bakery's store, its host certificates, the kernel hold), unmounted, and moved
in with ``rollback.install``: the root it replaces becomes the previous one, or goes. A rollback fixes the
previous root the same way in a scratch mount, then swaps the pair with ``rollback.swap``. Nothing is read
from the root being replaced, except once the identity of a root made before the bakery kept identities.
"""

from __future__ import annotations

import contextlib
import os

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError, Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import identity as _identity
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rollback as _rollback
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rootfix as _rootfix
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots


class Builder:
    """Clone, rebuild and roll back (mixed into ``rootwork.PiRoots``)."""

    def old_root(self, plan):
        """A context manager giving a Tree of the root being replaced (None when there is none to read)."""
        lay = plan['layout']

        @contextlib.contextmanager
        def opened():
            if not (plan['legacy'] or plan['image']) or (self.host.check_mode and plan['mounted'] != lay.image):
                yield None
                return
            if not plan['legacy'] and plan['mounted'] != lay.image:
                self.ensure_mounted(plan)
            with Tree(lay.old_point if plan['legacy'] else lay.point, 'the old root of Pi %s' % plan['serial']) as tree:
                yield tree
        return opened

    def contents(self, plan, tree, identity, source=None, packages=None):
        """Changes that give a root (in ``tree``) the Pi's identity, host certificates and kernel hold.

        The generation's kernel packages come from ``packages`` (a marker's), else ``source`` (a fresh clone).
        """
        item, bake, generation = plan['item'], plan['bake'], plan['generation']
        changes = _identity.host_key_changes(tree, identity, self.key_types)
        certs, record, signed = self.parts.certificate(item, tree, identity, self.key_types)
        hold, packages = self.parts.hold(tree, bake, generation, packages, source=source)
        return changes + certs + hold, {'host_keys': identity.public_keys(self.key_types), 'certificate': record,
                                        'kernel_packages': packages, 'signed': signed}

    def marker(self, plan, method, changes, fs_uuid, facts):
        item, bake = plan['item'], plan['bake']
        return _roots.new_marker(
            serial=plan['serial'], hostname=item['hostname'], bakeform=bake.name, generation=plan['generation'],
            sha256=(bake.manifest(plan['generation'], strict=False) or {}).get('sha256'),
            method=method, fixes=_rootfix.fixes_of(changes), fs_uuid=fs_uuid,
            keys_sha256=_roots.sha256_text(_rootfix.authorized_keys_text(item['ssh_authorized_keys'])),
            boot_mount=item['boot_mount'], host_keys=facts['host_keys'], certificate=facts['certificate'],
            kernel_packages=facts['kernel_packages'])

    def methods(self, golden):
        """The clone methods for ``golden``, found once per image and run: each look reads all of mountinfo, which
        holds a line per mounted root (a look per Pi made a first run of 1000 Pis quadratic)."""
        if golden not in self.clone_methods:
            self.clone_methods[golden] = _roots.choose_methods(self.clone_method, golden, self.roots_dir)
        return self.clone_methods[golden]

    def build(self, plan, result):
        item, lay, serial = plan['item'], plan['layout'], plan['serial']
        bake, generation, rebuild = plan['bake'], plan['generation'], plan['action'] == 'rebuild'
        golden = bake.root_image(generation)
        methods = self.methods(golden)
        result.update(changed=True, action='rebuilt' if rebuild else 'cloned', clone_method=methods[0])
        identity, keep_identity = self.parts.identity(item, self.old_root(plan))
        keys = _rootfix.authorized_keys_text(item['ssh_authorized_keys'])
        keep = rebuild and item.get('keep_previous', True) and plan['image'] and plan['marker'] is not None
        previous = plan['marker'] if keep else plan['previous']
        if self.host.check_mode:
            tree = self.golden(bake, generation)
            changes = _rootfix.clone_changes(tree, item['hostname'], self.boot_line(item, bake, generation, tree), keys,
                                             identity.machine_id + '\n', seed=self.seed(item, tree))
            more, facts = self.contents(plan, tree, identity)
            self.clone_diff(plan, changes, tree)
            marker = self.marker(plan, methods[0], changes + more, None, facts)
            self.diff(lay.marker, _roots.marker_text(plan['marker']), _roots.marker_text(marker))
            return dict(result, **self.describe(plan, marker, previous))
        scratch = _atomic.ScratchDir(self.roots_dir, serial)
        try:
            image, mnt = scratch.join('root.img'), scratch.join('mnt')
            method = self.cloner.clone(golden, image, methods, 'Pi %s' % serial)
            self.cloner.new_uuid(image, 'Pi %s' % serial)
            os.chmod(image, 0o600)
            os.mkdir(mnt, 0o700)
            self.mounter.mount(image, mnt, _loopfs.ROOT_OPTIONS, 'the new root of Pi %s' % serial)
            try:
                with Tree(mnt, 'the new root of Pi %s (%s)' % (serial, bake.label(generation)), durable=False) as tree:
                    boot = self.boot_line(item, bake, generation, tree)
                    changes = _rootfix.clone_changes(tree, item['hostname'], boot, keys, identity.machine_id + '\n',
                                                     seed=self.seed(item, tree))
                    more, facts = self.contents(plan, tree, identity, source=tree)
                    _rootfix.apply(tree, changes + more)
                    self.clone_diff(plan, changes, tree)
                # One flush of the new root (through its loop device into its image) for all it was given, before
                # anything names it: not a flush per file.
                _atomic.sync_file_system(mnt)
            finally:
                self.mounter.umount(mnt, 'the new root of Pi %s' % serial)
            marker = self.marker(plan, method, changes + more, _loopfs.read_superblock(image)['uuid'], facts)
            self.diff(lay.marker, _roots.marker_text(plan['marker']), _roots.marker_text(marker))
            if keep_identity or facts['signed']:
                self.parts.identities.save(serial, identity)  # before the root that holds it: the store leads
            self.unmount(plan)
            if plan['legacy']:
                os.rename(lay.old_point, scratch.join('legacy'))  # removed with the scratch directory
            _rollback.install(lay, scratch, image, marker, current=plan['marker'] if plan['image'] else None,
                              keep_previous=keep)
            plan.update(image=True, legacy=False, marker=marker)
            self.ensure_mounted(plan)
            result['clone_method'] = method
        finally:
            scratch.close(self._unmount_quietly)
        return dict(result, **self.describe(plan, marker, previous))

    def rollback(self, plan, result):
        """The previous root becomes the current one, given the Pi's identity and the fixes of today's options."""
        item, lay, serial = plan['item'], plan['layout'], plan['serial']
        bake, generation, current = plan['bake'], plan['generation'], plan['marker']
        result.update(changed=True, action='rolledback', clone_method=plan['previous'].get('clone_method'))
        identity, keep_identity = self.parts.identity(item, self.old_root(plan))
        keys = _rootfix.authorized_keys_text(item['ssh_authorized_keys'])
        rolled = {'from': '%s@%s' % (current.get('bakeform'), current.get('generation')), 'at': _roots.now()}
        if self.host.check_mode:
            wanted = dict(plan['previous'], hostname=item['hostname'], rolled_back=rolled)
            self.diff(lay.marker, _roots.marker_text(current), _roots.marker_text(wanted))
            return dict(result, **self.describe(plan, wanted, current))
        with _atomic.ScratchDir(self.roots_dir, serial) as scratch:
            mnt = scratch.join('mnt')
            os.mkdir(mnt, 0o700)
            self.mounter.mount(lay.prev_image, mnt, _loopfs.ROOT_OPTIONS, 'the previous root of Pi %s' % serial)
            try:
                with Tree(mnt, 'the previous root of Pi %s' % serial) as tree:
                    changes = _rootfix.inplace_changes(tree, item['hostname'], self.boot_line(
                        item, bake, generation, tree), keys)
                    changes += _rootfix.seed_changes(tree, self.seed(item, tree))
                    changes += _rootfix.machine_id_changes(tree, identity.machine_id + '\n')
                    more, facts = self.contents(plan, tree, identity, packages=plan['previous'].get('kernel_packages'))
                    _rootfix.apply(tree, changes + more)
                    self.show(lay, changes)
            finally:
                self.mounter.umount(mnt, 'the previous root of Pi %s' % serial)
            wanted = _roots.updated_marker(
                plan['previous'], hostname=item['hostname'], fixes=_rootfix.fixes_of(changes + more),
                keys_sha256=_roots.sha256_text(keys), boot_mount=item['boot_mount'], generation=generation,
                host_keys=facts['host_keys'], host_certificate=facts['certificate'] is not None,
                certificate=facts['certificate'], kernel_packages=facts['kernel_packages'], rolled_back=rolled)
            self.diff(lay.marker, _roots.marker_text(current), _roots.marker_text(wanted))
            if keep_identity or facts['signed']:
                self.parts.identities.save(serial, identity)
            self.unmount(plan)
            _rollback.swap(lay, current, wanted)
        plan.update(marker=wanted)
        self.ensure_mounted(plan)
        return dict(result, **self.describe(plan, wanted, current))

    def clone_diff(self, plan, changes, view):
        """Diffs of the files shown, old root against the new one (``view``: the golden, or the fixed clone).

        The old root is the Pi's: what cannot be read there (a symlinked etc, a file of a gigabyte) is shown
        as an empty file rather than failing the rebuild.
        """
        if not self.host.diff:
            return
        lay, after = plan['layout'], {c['path']: c['after'] for c in changes if c['kind'] == 'file'}
        old = Tree(lay.point, 'the root of Pi %s' % plan['serial']) if plan['mounted'] == lay.image else None
        with old or contextlib.nullcontext():
            for rel in _rootfix.DIFF_FILES:
                try:
                    before = old.read_text(rel) if old else None
                except (ConfinedError, OSError):
                    before = None
                self.diff(os.path.join(lay.point, rel), before, after.get(rel, view.read_text(rel)))
