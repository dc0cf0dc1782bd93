# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_boot's plan and apply: a boot folder per Pi and the TFTP hook's fleet map.

``check_items(pis)`` validates the Pis of a call; ``PiBoots.plan(items)`` reads the folders, the boot
files of each Pi's bakeform generation and the map and returns a ``Plan`` (the files to write or remove,
the map, the problems found, the Pis that failed); ``apply(plan)`` makes it so. Each Pi is served the
boot files of its root's generation (``generations/<N>/boot``), so its kernel always boots with its own
modules. See ``bootfiles`` for what the files hold. No AnsibleModule here.

A Pi that fails (its bakeform or generation missing or unable to boot it, its folder not ours, its nfsroot wrong)
fails alone: it is planned as ``keep``, so its folder and its map entry stay exactly as they were
(never removed, never changed because of the failure), and every other Pi is written.
"""

from __future__ import annotations

import os
import stat

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import (
    check_inventory_name,
    normalise_prefix,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import file_diff, find_duplicates
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import bootfiles as bf
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as _generations
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import boot_models, check_name


def check_items(pis):
    """``(items, problems)``: the Pis normalised (prefix, nfsroot), and the problems that make the call wrong.

    A Pi that cannot be named (its name or prefix) is a problem of the call; one whose nfsroot or
    config.txt lines or generation are wrong fails alone: its item gets ``failed`` (the message).
    """
    items, problems = [], []
    for index, raw in enumerate(pis):
        item = dict(raw)
        try:
            check_inventory_name(item['name'])
            item['prefix'] = normalise_prefix(item['prefix'])
        except ValueError as exc:
            problems.append('item %d of pis: %s' % (index, exc))
        else:
            try:
                if item.get('generation') is not None:
                    item['generation'] = _generations.check_id(item['generation'], 'generation of %s' % item['name'])
                if item['state'] == 'present':
                    item['nfsroot'] = bf.parse_nfsroot(item['nfsroot'], item['name'])
                    bf.check_config_lines(item['config_txt'], item['name'])
            except ValueError as exc:  # BootFilesError is one
                item['failed'] = str(exc)
        items.append(item)
    for key in ('prefix', 'name'):
        dupes = find_duplicates(items, key)
        if dupes:
            problems.append('pis lists the %s %s more than once; give each Pi its own %s'
                            % (key, ', '.join(str(dupe) for dupe in dupes), key))
    return items, problems


class Plan:
    """What a pi_boot run found and would change."""

    def __init__(self, map_path):
        self.pis = []  # one result entry per Pi of the call
        self.problems = []  # of the call as a whole (a default bakeform missing)
        self.failed = {}  # name -> why, for the Pis that failed alone (kept as they were)
        self.writes = []  # (folder, [(file, before, after)], new folder?)
        self.removals = {}  # folder -> its files, for the diff
        self.map = {'path': map_path, 'changed': False, 'prefixes': 0}
        self.map_before = self.map_text = None

    @property
    def changed(self):
        return bool(self.writes or self.removals or self.map['changed'])

    def diffs(self):
        """Every file written or removed, the map first (uncapped: see _bootfiles.cap_diffs)."""
        diffs = []
        if self.map['changed']:
            diffs.append(file_diff(self.map['path'], self.map_before, self.map_text))
        for folder, files, _new in self.writes:
            diffs.extend(file_diff(os.path.join(folder, file), before, after) for file, before, after in files)
        for folder in sorted(self.removals):
            listing = ''.join(file + '\n' for file in self.removals[folder])
            diffs.append(file_diff(folder + '/', listing, '', folder + '/ (removed)'))
        return diffs


class PiBoots:
    """The boot folders in ``boot_dir`` and the map at ``map_path``; one instance per module run."""

    def __init__(self, *, store, boot_dir, map_path, exclusive, default_bakeform, warn):
        self.store = os.path.abspath(store)
        self.boot_dir = os.path.abspath(boot_dir)
        self.map_path = os.path.abspath(map_path)
        self.exclusive, self.default_bakeform, self.warn = exclusive, default_bakeform, warn
        self.bakeforms = {}  # (name, generation) -> (boot dir, {file: text}, models, label); a str: why not there

    # ------------------------------------------------------------------ plan

    def plan(self, items):
        plan = Plan(self.map_path)
        for item in items:
            if item.get('failed'):
                self.fail(plan, item, item['failed'])
            elif item['state'] == 'present':
                self.plan_present(plan, item)
            elif item['state'] == 'absent':
                self.plan_absent(plan, item)
            else:
                plan.pis.append(self.entry(item, 'keep'))
        # A Pi that failed is kept as it was: in the map, and its folder never a stray.
        items = [dict(item, state='keep') if item['name'] in plan.failed else item for item in items]
        existing = self.read_map(plan)
        entries, moved = bf.merge_entries(existing and existing['prefixes'], items, self.exclusive)
        if self.exclusive:
            self.plan_strays(plan, {item['prefix'] for item in items if item['state'] != 'absent'} | set(entries))
        for prefix, name in moved:
            self.remove_marked(plan, os.path.join(self.boot_dir, prefix), name)
        self.plan_map(plan, existing, entries)
        return plan

    def entry(self, item, state):
        return {'name': item['name'], 'prefix': item['prefix'], 'dir': os.path.join(self.boot_dir, item['prefix']),
                'state': state, 'changed': False, 'files': [], 'generation': None}

    def fail(self, plan, item, msg):
        """The Pi fails alone: its result says why (nothing of it is planned), and it is kept as it was."""
        plan.failed[item['name']] = msg
        found = [entry for entry in plan.pis if entry['name'] == item['name']]
        if not found:
            found = [self.entry(item, 'failed')]
            plan.pis.append(found[0])
        found[0].update(state='failed', msg=msg)

    def generation(self, name, generation):
        """(boot dir, {cmdline.txt, config.txt: text or None}, models, label) of a generation, read once per run;
        a message saying why when it is not there. ``generation`` None: the bakeform's current one."""
        key = (name, generation)
        if key not in self.bakeforms:
            self.bakeforms[key] = self.read_generation(name, generation)
        return self.bakeforms[key]

    def read_generation(self, name, generation):
        problem = check_name(name)
        if problem:
            return problem
        bake = _generations.Bakeform(self.store, name)
        try:
            index = bake.load_index()
        except _generations.GenerationError as exc:
            return str(exc)
        if index is None:
            return 'bakeform %s has no %s in %s; register it with pifleet.netboot.bakeform (a bakeform stored ' \
                   'before generations becomes generation 1 when it runs for it)' % (name, _generations.INDEX, bake.dir)
        number = bake.current(index) if generation is None else generation
        if number is None or not bake.is_complete(number):
            there = ', '.join(str(n) for n in bake.ids()) or 'none'
            return ('generation %s is not in %s (there: %s); register the image with pifleet.netboot.bakeform, or '
                    'name a generation that is there' % (bake.label(number or 'current'), bake.generations_dir, there))
        boot = bake.boot_dir(number)
        files = {file: _atomic.read_text(os.path.join(boot, file)) for file in (bf.CMDLINE, bf.CONFIG)}
        return boot, files, boot_models(bake.gen_dir(number)), bake.label(number)

    def folder_state(self, plan, item, folder):
        """The managed files in the Pi's folder, or None (the Pi failed) when it is there but not ours."""
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            return {}
        current = {}
        if stat.S_ISDIR(mode):
            current = {file: _atomic.read_text(os.path.join(folder, file)) for file in bf.MANAGED}
            if bf.json_object(current[bf.MARKER]) is not None or not os.listdir(folder):
                return current
        self.fail(plan, item, 'boot folder %s for %s exists but pi_boot did not make it (not a folder with %s inside); '
                              'move it away or give the Pi another prefix' % (folder, item['name'], bf.MARKER))
        return None

    def plan_present(self, plan, item):
        info = self.generation(item['bakeform'], item.get('generation'))
        folder = os.path.join(self.boot_dir, item['prefix'])
        entry = self.entry(item, 'present')
        plan.pis.append(entry)
        item['folder'] = folder
        if isinstance(info, str):
            self.fail(plan, item, 'boot files not found for %s: %s' % (item['name'], info))
            return
        item['dirs'] = [folder, info[0]]
        problem = bf.model_problem(item['name'], item['model'], info[3], info[2])
        if problem:
            self.fail(plan, item, problem)
            return
        entry['generation'] = info[3]
        current = self.folder_state(plan, item, folder)
        if current is None:
            return
        files = bf.plan_files(current, bf.desired_files(item, info[1], info[3]))
        if files:
            plan.writes.append((folder, files, not current))
            entry.update(changed=True, files=[file for file, _before, _after in files])

    def plan_absent(self, plan, item):
        folder = os.path.join(self.boot_dir, item['prefix'])
        removed = self.remove_marked(plan, folder)
        plan.pis.append(dict(self.entry(item, 'absent'), changed=removed, files=sorted(plan.removals.get(folder, []))))

    @staticmethod
    def remove_marked(plan, folder, name=None):
        """Plan removing ``folder`` if it carries our marker (naming ``name``, when given)."""
        if not os.path.isdir(folder) or os.path.islink(folder):
            return False
        marker = bf.json_object(_atomic.read_text(os.path.join(folder, bf.MARKER)))
        if marker is None or (name is not None and marker.get('name') != name):
            return False
        plan.removals[folder] = sorted(os.listdir(folder))
        return True

    def plan_strays(self, plan, wanted):
        try:
            names = os.listdir(self.boot_dir)
        except FileNotFoundError:
            return
        for name in sorted(names):
            if not name.startswith('.') and name not in wanted:
                self.remove_marked(plan, os.path.join(self.boot_dir, name))

    def read_map(self, plan):
        plan.map_before = _atomic.read_text(self.map_path)
        existing = bf.read_map(plan.map_before)
        if plan.map_before is not None and existing is None:
            self.warn('%s is not a fleet map pi_boot can read; it is replaced' % self.map_path)
        return existing

    def plan_map(self, plan, existing, entries):
        if self.default_bakeform:
            info = self.generation(self.default_bakeform, None)
            if isinstance(info, str):
                plan.problems.append('boot files not found for default_bakeform: %s' % info)
            default = [] if isinstance(info, str) else [info[0]]
        elif existing and not self.exclusive and isinstance(existing.get('default'), list):
            default = existing['default']
        else:
            default = []
        plan.map_text = bf.render_map(bf.build_map(default, entries))
        plan.map.update(changed=plan.map_text != plan.map_before, prefixes=len(entries))

    # ------------------------------------------------------------------ apply

    def apply(self, plan):
        # New folders are built in a scratch directory and renamed into place once flushed, so a folder is
        # complete whenever it is seen; the map comes after the folders it names; removals after the map, so
        # the hook stops looking into a folder before it goes.
        _atomic.make_dir(self.boot_dir)
        _atomic.sweep_stale(self.boot_dir, lambda label: None)
        scratch = _atomic.ScratchDir(self.boot_dir, 'pi-boot') if any(new for _f, _p, new in plan.writes) else None
        try:
            built = []
            for folder, files, new in plan.writes:
                if new:
                    built.append((self.build(scratch, folder, files), folder))
                    continue
                for file, _before, after in files:
                    if after is None:
                        os.unlink(os.path.join(folder, file))
                    else:
                        _atomic.write_text(os.path.join(folder, file), after, fsync=False)
            if plan.writes:
                _atomic.sync_file_system(self.boot_dir)  # one flush for thousands of small files
            for path, folder in built:
                os.rename(path, folder)
        finally:
            if scratch is not None:
                scratch.close()
        if plan.map['changed']:
            _atomic.make_dir(os.path.dirname(self.map_path))
            _atomic.write_text(self.map_path, plan.map_text)
        for folder in sorted(plan.removals):
            _atomic.discard(self.boot_dir, 'pi-boot', folder)

    @staticmethod
    def build(scratch, folder, files):
        path = scratch.join(os.path.basename(folder))
        os.mkdir(path)
        os.chmod(path, 0o755)
        for file, _before, after in files:
            if after is not None:
                _atomic.write_new(os.path.join(path, file), after)
        return path
