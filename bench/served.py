# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each Pi's boot folder serves, read the way the TFTP hook reads it, against the generation of its root.

A Pi's kernel must match its root's modules: after an upgrade its boot folder serves the new generation's
boot files, after a rollback the previous generation's again. ``problems()`` reads the fleet map with the
hook's own code (``FleetMap.load``, ``resolve``, ``open_file`` of roles/tftp_hook/files/pifleet_tftp_hook.py,
loaded by path: the service is one file, not a package), asks it for every boot file of the generation
each Pi's root marker names (``<roots_dir>/<serial>.json``: pi_root's word, written when the root was
made or rolled back), and compares the bytes served with that generation's ``boot`` directory in the
store. ``cmdline.txt`` (and ``config.txt`` when the Pi has lines of its own) come from its folder, first
in its map entry, else from the same generation; its folder's marker must name that generation. Used by
bench_sabotage.py (1000 Pis) and its test.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

HOOK = Path(__file__).resolve().parents[1] / 'roles' / 'tftp_hook' / 'files' / 'pifleet_tftp_hook.py'
OWN = ('cmdline.txt', 'config.txt')  # rendered per Pi in its folder, not the generation's


def load_hook():
    spec = importlib.util.spec_from_file_location('pifleet_tftp_hook_served', HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sha(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def generation_files(store, bakeform, generation, cache):
    """{relative path: sha256} of a generation's boot files (the Pi's own two left out), read once."""
    key = (bakeform, generation)
    if key not in cache:
        boot = os.path.join(store, bakeform, 'generations', str(generation), 'boot')
        files = {}
        for top, _dirs, names in os.walk(boot):
            for name in names:
                rel = os.path.relpath(os.path.join(top, name), boot)
                if rel not in OWN:
                    files[rel] = _sha(os.path.join(top, name))
        cache[key] = files
    return cache[key]


def served(hook, fleet_map, roots_real, prefix, rel):
    """sha256 of what the hook sends for ``<prefix>/<rel>``, or None when it sends nothing."""
    found = hook.open_file(hook.resolve(prefix + '/' + rel, fleet_map, ()), roots_real)
    if found is None:
        return None
    fd, _size, _path = found
    with os.fdopen(fd, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def problems(srv, map_path, pis, serial_of):
    """Every Pi of ``pis`` ({name: inventory vars}) whose boot folder does not serve its root's generation: a list
    of sentences (empty: each serves it). ``srv``: the directory holding ``roots``, ``pis`` (boot folders) and
    ``bakeforms`` (the store), the hook's one configured root; ``serial_of(pi)``: the 8-digit serial."""
    hook = load_hook()
    roots_real = [os.path.realpath(srv)]
    fleet_map, map_problems = hook.FleetMap.load(map_path, roots_real)
    found = ['the hook drops part of the map: %s' % problem for problem in map_problems[:3]]
    prefixes = {}
    for prefix, (name, _dirs) in fleet_map.prefixes.items():
        prefixes.setdefault(name, []).append(prefix)
    cache = {}
    for name in sorted(pis):
        serial = serial_of(pis[name])
        with open(os.path.join(srv, 'roots', serial + '.json'), encoding='utf-8') as handle:
            root = json.load(handle)
        bakeform, generation = root.get('bakeform'), root.get('generation')
        label = '%s@%s' % (bakeform, generation)
        if len(prefixes.get(name, ())) != 1:
            found.append('%s: %d map entries, not one' % (name, len(prefixes.get(name, ()))))
            continue
        prefix = prefixes[name][0]
        with open(os.path.join(srv, 'pis', prefix, '.pifleet-boot.json'), encoding='utf-8') as handle:
            folder = json.load(handle).get('generation')
        if folder != label:
            found.append('%s: its root is %s, its boot folder says %s' % (name, label, folder))
        wanted = generation_files(os.path.join(srv, 'bakeforms'), bakeform, generation, cache)
        wrong = sorted(rel for rel, digest in wanted.items()
                       if served(hook, fleet_map, roots_real, prefix, rel) != digest)
        if not wanted or wrong:
            found.append('%s: its root is %s, but the hook serves other bytes (or none) for %s'
                         % (name, label, ', '.join(wrong[:4]) or 'no boot files at all'))
        # cmdline.txt always, config.txt when the Pi has lines of its own: from its folder, else the generation's.
        for own in OWN:
            mine = os.path.join(srv, 'pis', prefix, own)
            there = mine if os.path.exists(mine) else os.path.join(
                srv, 'bakeforms', bakeform, 'generations', str(generation), 'boot', own)
            path = served_path(hook, fleet_map, roots_real, prefix, own)
            if path != there:
                found.append('%s: %s is served from %s, not %s' % (name, own, path, there))
    return found


def served_path(hook, fleet_map, roots_real, prefix, rel):
    found = hook.open_file(hook.resolve(prefix + '/' + rel, fleet_map, ()), roots_real)
    if found is None:
        return None
    os.close(found[0])
    return found[2]
