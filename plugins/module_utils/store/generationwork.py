# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bakeform's plan and apply for one name: its generations read, added, chosen, pinned and removed.

``Generations(host, store, name, units_dir=)`` reads what the store holds (``load``): a bakeform of store
format 3, one of format 2 (planned as generation 1 of format 3; ``migrate`` makes it so), an older or broken
one (replaced by the next ingest), or nothing. The index is kept in memory and written once at the end
(``save``); every change is made only outside check mode, so check mode reports the same ``changed``,
result and diff. Generation directories are renamed into place whole and never changed afterwards; one is
removed only when no Pi's root uses it (``retention``, ``remove_one``, ``remove_all``), its ``boot-nfs``
unmounted (lazily, the NFS server may hold it) and the mount unit pi_root wrote for it removed.

The host has ``run(argv)``, ``which(name, required)``, ``warn(msg)``, ``check_mode``; ``unmount(point)``
detaches lazily. The references (``pistate.roots.references``) are read by the module and handed in.
"""

from __future__ import annotations

import copy
import os

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as _gen
from ansible_collections.pifleet.netboot.plugins.module_utils.store import migration as _migration
from ansible_collections.pifleet.netboot.plugins.module_utils.store import retention as _retention
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import load_manifest

GenerationError = _gen.GenerationError


def view(bakeform, index, legacy=False):
    """What the diff shows of an index: the current generation, the pinned ones and each one's summary."""
    if not index:
        return {}
    return {
        'format': _migration.LEGACY_FORMAT if legacy else _gen.FORMAT,
        'current': bakeform.label(index['current']) if index.get('current') else None,
        'pinned': [bakeform.label(n) for n in index.get('pinned') or []],
        'generations': {bakeform.label(key): value for key, value in sorted(
            (index.get('generations') or {}).items(), key=lambda kv: int(kv[0]))},
    }


class Generations:
    def __init__(self, host, store, name, units_dir=None, unmount=None):
        self.host, self.check = host, host.check_mode
        self.bakeform = _gen.Bakeform(store, name)
        # The kernel's names, for mount points and the units named after them.
        self.real = _gen.Bakeform(os.path.realpath(store), name)
        self.units = _loopfs.Units(units_dir) if units_dir else None
        self.unmount = unmount
        self.layout = self.index = self.on_disk = self.legacy = None
        self.migrating = self.replacing = self.changed = self.migrated = False
        self.manifests = {}
        self.removed = []
        self.planned = set()  # generations check mode would make

    # ------------------------------------------------------------------ reading

    def load(self):
        bakeform = self.bakeform
        self.layout = bakeform.layout()
        if self.layout == 'generations':
            self.on_disk = bakeform.load_index()
            self.index = _gen.reconcile(bakeform, self.on_disk)
        elif self.layout == 'format2':
            self.legacy = load_manifest(bakeform.dir)
            if _migration.is_legacy_complete(bakeform, self.legacy):
                self.migrating = True
                self.index = _migration.planned_index(bakeform, self.legacy)
            else:
                self.replacing = True  # an older store format, or files removed by hand: replaced by the next ingest
                self.index = _gen.new_index(bakeform.name)
        elif self.layout == 'unknown':
            raise GenerationError('%s exists but is neither a bakeform of store format 3 (%s) nor an older one (%s): '
                                  'pifleet.netboot.bakeform did not make it; move it away or remove it'
                                  % (bakeform.dir, _gen.INDEX, _gen.MANIFEST))
        else:
            self.index = _gen.new_index(bakeform.name)
        self.before = view(bakeform, self.on_disk or (self.index if self.migrating else None), self.migrating)
        return self

    def exists(self):
        return bool(self.ids())

    def ids(self):
        return sorted(int(key) for key in self.index['generations'])

    def manifest(self, number):
        if number not in self.manifests:
            if self.migrating and number == 1:
                self.manifests[number] = _migration.generation_one(self.bakeform, self.legacy)
            else:
                self.manifests[number] = self.bakeform.manifest(number) or {}
        return self.manifests[number]

    def all_manifests(self):
        return {number: self.manifest(number) for number in self.ids()}

    def usage(self, references):
        return _retention.usage(self.bakeform.name, self.index, references)

    # ------------------------------------------------------------------ changing

    def mark(self):
        self.changed = True

    def migrate(self):
        """Make a format-2 bakeform generation 1 (in check mode: say so). True when it is (or would be) done."""
        if self.migrating:
            strangers = _migration.strangers(self.bakeform)
            if strangers:
                raise GenerationError('bakeform %s (store format 2) cannot become generation 1: %s holds %s, which '
                                      'pifleet did not put there; move it away first'
                                      % (self.bakeform.name, self.bakeform.dir, ', '.join(strangers)))
            if not self.check:
                _migration.Migration(self.host, self.bakeform, self.legacy, self.units, self.unmount).run()
                self.layout, self.migrating = 'generations', False
                self.on_disk = self.bakeform.load_index()
            self.mark()
            self.migrated = True
            return True
        if self.layout == 'generations' and self.units is not None:
            # A migration killed before its last step left the old boot-nfs mount unit: move it now.
            pending = _migration.unit_settings(self.units.current(_migration.legacy_point(self.bakeform))[0])
            if pending is not None:
                self.mark()
                if not self.check:
                    _migration.finish(self.bakeform, self.units)
        return False

    def add(self, make, planned):
        """Make the next generation with ``make(scratch, number) -> (built directory, manifest)``; its number.

        ``planned`` is its index entry as far as known before it is made (check mode shows that).
        """
        number = self.index['next']
        if self.check:
            self.index['generations'][str(number)] = planned
            self.planned.add(number)
        else:
            self.index['generations'][str(number)] = _gen.entry(self._make(make, number))
        self.mark()  # only once it is made: a failed build changed nothing
        self.index.update(next=number + 1, current=number)
        self.save()  # right after the generation is in place: what a later failure of this run cannot undo
        return number

    def _make(self, make, number):
        bakeform = self.bakeform
        os.makedirs(bakeform.store, 0o711, exist_ok=True)
        scratch = _atomic.ScratchDir(bakeform.store, bakeform.name)
        try:
            built, manifest = make(scratch, number)
            os.chmod(built, 0o755)
            if self.layout == 'generations':
                _atomic.make_dir(bakeform.generations_dir)
                os.rename(built, bakeform.gen_dir(number))  # whole, or not at all
            else:  # a new bakeform (or one replacing a broken older one): the whole directory in one rename
                top = scratch.join('top')
                _atomic.make_dir(os.path.join(top, _gen.GENERATIONS))
                os.rename(built, os.path.join(top, _gen.GENERATIONS, str(number)))
                index = dict(self.index, generations={str(number): _gen.entry(manifest)}, next=number + 1,
                             current=number)
                _gen.write_index(_gen.Bakeform(scratch.path, 'top'), index)
                _atomic.install(scratch, top, bakeform.dir)
                self.layout, self.replacing, self.on_disk = 'generations', False, index
        finally:
            scratch.close(self.unmount)
        self.manifests[number] = manifest
        return manifest

    def choose(self, number):
        """Make ``number`` the generation new roots get."""
        if number not in self.ids():
            raise GenerationError('current: generation %s not found: the generations of bakeform %s are %s'
                                  % (self.bakeform.label(number), self.bakeform.name, self.listed()))
        self.index['current'] = number

    def pin(self, numbers):
        """Keep exactly ``numbers`` whatever ``keep`` says (those not there are ignored, with a warning)."""
        missing = sorted(set(numbers) - set(self.ids()))
        if missing:
            self.host.warn('pinned: bakeform %s has no generation %s (its generations: %s); ignored'
                           % (self.bakeform.name, ', '.join(str(n) for n in missing), self.listed()))
        self.index['pinned'] = sorted(set(numbers) - set(missing))

    def listed(self):
        return ', '.join(str(n) for n in self.ids()) or 'none'

    def retention(self, keep, references, roots_known):
        """Remove the generations beyond ``keep`` that nobody uses (see ``retention``); their numbers."""
        used = self.usage(references)
        gone = _retention.removable(self.ids(), self.index.get('current'), self.index.get('pinned'), keep, used)
        if gone and not roots_known:
            self.host.warn('bakeform %s: generation(s) %s would go (keep: %d), but roots_dir does not exist, so '
                           'which ones Pis use cannot be told: nothing was removed. Set roots_dir to where '
                           'pifleet.netboot.pi_root keeps the roots (or create it when there are no Pis yet)'
                           % (self.bakeform.name, ', '.join(str(n) for n in gone), keep))
            return []
        for number in gone:
            self.drop(number)
        return gone

    def remove_one(self, number, references):
        """``state: absent, generation: number``: refused while a root uses it, or it is current or pinned."""
        if number not in self.ids():
            return False
        used = self.usage(references)
        if number in used:
            raise GenerationError('generation %s cannot be removed: %s. Upgrade or rebuild those Pis to another '
                                  'generation first' % (self.bakeform.label(number),
                                                        _retention.in_use(self.bakeform.name, {number: used[number]})))
        if number == self.index.get('current'):
            raise GenerationError('generation %s is the current one (what new roots get): choose another with '
                                  'current: <N> first (generations: %s)' % (self.bakeform.label(number), self.listed()))
        if number in (self.index.get('pinned') or []):
            raise GenerationError('generation %s is pinned: leave it out of pinned first' % self.bakeform.label(number))
        self.drop(number)
        return True

    def drop(self, number):
        if not self.check:
            if self.units is not None:
                self.units.remove(self.real.boot_export(number))
            # Renamed away whole at once (a mounted boot-nfs detached lazily first), then deleted at leisure.
            _atomic.discard(self.bakeform.store, self.bakeform.name, self.bakeform.gen_dir(number),
                            unmount=self.unmount)
        self.mark()
        self.removed.append(number)
        del self.index['generations'][str(number)]
        self.index['pinned'] = [n for n in self.index.get('pinned') or [] if n != number]
        self.save()

    def remove_all(self, references):
        """``state: absent``: the whole bakeform, refused while any root uses any of its generations."""
        if self.layout == 'none':
            return False
        used = self.usage(references)
        if self.replacing:  # a broken older bakeform has no generations: its roots name its content
            index = dict(self.index, generations={'1': _gen.entry(self.legacy)})
            used = _retention.usage(self.bakeform.name, index, references)
        if used:
            raise GenerationError('bakeform %s cannot be removed: %s. Move those Pis to another bakeform (or remove '
                                  'them) first' % (self.bakeform.name, _retention.in_use(self.bakeform.name, used)))
        if not self.check:
            if self.units is not None:
                for number in self.ids():
                    self.units.remove(self.real.boot_export(number))
                self.units.remove(_migration.legacy_point(self.bakeform))
            _atomic.discard(self.bakeform.store, self.bakeform.name, self.bakeform.dir, unmount=self.unmount)
        self.mark()
        self.removed = self.ids()
        self.index = None
        return True

    def save(self):
        """Write the index when it differs from the one on disk (always in one piece)."""
        if self.index is None or self.layout != 'generations' or self.index == self.on_disk:
            return
        self.mark()
        if not self.check:
            _gen.write_index(self.bakeform, self.index)
            self.on_disk = copy.deepcopy(self.index)

    def close(self):
        if self.units is not None:
            self.units.reload(self.host.run, self.host.which)

    # ------------------------------------------------------------------ reporting

    def report(self, references, generation=None):
        """The result's keys: generation, current, generations (with used_by), removed, manifest."""
        index = self.index or _gen.new_index(self.bakeform.name)
        used = _retention.usage(self.bakeform.name, index, references) if self.index else {}
        listed = []
        for number in sorted(int(key) for key in index['generations']):
            summary = index['generations'][str(number)]
            listed.append(dict(summary, id=number, label=self.bakeform.label(number),
                               pinned=number in (index.get('pinned') or []), current=number == index.get('current'),
                               used_by=_retention.used_by(used.get(number, []))))
        return {'generation': generation, 'current': index.get('current'), 'generations': listed,
                'removed': sorted(self.removed), 'migrated': self.migrated,
                'manifest': {} if generation is None or generation in self.planned else self.manifest(generation)}

    def diff(self):
        after = view(self.bakeform, self.index)
        return {'before': self.before, 'after': after, 'before_header': self.bakeform.index_path,
                'after_header': self.bakeform.index_path}
