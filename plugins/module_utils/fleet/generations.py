# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which generation each Pi's root uses, seen from the controller, and what follows from it.

A Pi boots the boot files of the generation its root was built from. The controller learns that
generation from two registered results, never from inside a root: ``pi_root``'s per-Pi entries
(``generation``, ``boot_export``: what each root is now) and, for Pis that ``pi_root`` did not
converge in this run (failed, or not in the call), the bakeforms' ``generations[].used_by`` read
before (what each root was). From them:

- ``boot_exports()``: with ``boot_mount: nfs``, each generation's ``boot-nfs`` exported read-only
  to exactly the Pis whose current root uses it (a path used only by Pis that failed stays as it
  was: ``state: keep``);
- ``boot_generations()``: the ``pi_boot`` items with each Pi's own ``generation``.

Pure functions; ``plugins/filter/fleet_boot_exports.py`` wraps them.
"""

from __future__ import annotations

import ipaddress

from ansible_collections.pifleet.netboot.plugins.module_utils.store.generations import Bakeform, parse_label

# A generation's boot files, mounted at /boot/firmware by the Pis whose root uses it (boot_mount: nfs).
BOOT_OPTIONS = ['ro', 'sync', 'no_subtree_check', 'root_squash']


def roots_before(bakeform_results, store):
    """``{serial: {bakeform, generation, label, boot_export}}`` of every Pi whose *current* root uses a
    generation, from registered ``bakeform`` results (each with ``generations``, their ``used_by``)."""
    found = {}
    for result in bakeform_results or []:
        if not isinstance(result, dict):
            continue
        for gen in result.get('generations') or []:
            try:
                name, number = parse_label(gen.get('label'))
            except (ValueError, TypeError):
                continue
            for ref in gen.get('used_by') or []:
                if ref.get('root', 'current') == 'current' and ref.get('serial'):
                    found[ref['serial']] = {'bakeform': name, 'generation': number, 'label': gen['label'],
                                            'boot_export': Bakeform(store, name).boot_export(number)}
    return found


def _good(roots):
    """pi_root's entries of the Pis it converged (a failed entry says nothing about the root)."""
    return {entry['serial']: entry for entry in roots or []
            if isinstance(entry, dict) and entry.get('serial') and entry.get('action') != 'failed'
            and not entry.get('msg')}


def roots_now(roots, before=None):
    """``{serial: {bakeform, generation, boot_export}}``: pi_root's word for the Pis it converged, ``before``
    (``roots_before()``) for every other Pi."""
    now = dict(before or {})
    for serial, entry in _good(roots).items():
        now[serial] = {key: entry.get(key) for key in ('bakeform', 'generation', 'label', 'boot_export')}
    return now


def client_order(client):
    try:
        net = ipaddress.ip_network(client, strict=False)
    except ValueError:
        return (1, 0, 0, 0, client)
    return (0, net.version, int(net.network_address), net.prefixlen, client)


def boot_exports(plan, roots, before=None, scope=None):
    """The ``nfs_export`` items of the generations' ``boot-nfs``, each read-only to exactly the Pis of ``plan``
    whose current root uses that generation.

    A Pi pi_root converged is placed by its entry in ``roots`` (pi_root's registered ``pis``); any other (it
    failed, or was not in this call) by ``before``. A path that only failed Pis use is kept as it is
    (``state: keep``): never removed, never widened because a step failed. Sorted by path, clients sorted, so
    the exports file (and each export's id) stays the same from run to run.
    """
    failed = _failed_serials(roots)
    now = roots_now(roots, before)
    users = {}
    for pi in (plan or {}).get('pis', []):
        where = (now.get(pi['serial']) or {}).get('boot_export')
        client = pi.get('ip') or scope
        if where and client:
            users.setdefault(where, []).append((pi['serial'], client))
    exports = []
    for path in sorted(users):
        if all(serial in failed for serial, _client in users[path]):
            exports.append({'path': path, 'state': 'keep'})
        else:
            exports.append({'path': path, 'options': list(BOOT_OPTIONS),
                            'clients': sorted({client for _serial, client in users[path]}, key=client_order)})
    return exports


def _failed_serials(roots):
    return {entry['serial'] for entry in roots or [] if isinstance(entry, dict) and entry.get('serial')
            and (entry.get('action') == 'failed' or entry.get('msg'))}


def boot_generations(boot, roots, before=None):
    """The ``pi_boot`` items with each Pi's ``generation``: its root's, from pi_root's result (or ``before``).

    An item kept as it was (``state: keep``) is left alone; a Pi whose generation is unknown gets none (pi_boot
    then serves the bakeform's current one, as for a root it builds from it)."""
    now = roots_now(roots, before)
    items = []
    for item in boot or []:
        root = now.get(item.get('serial')) or {}
        if item.get('state') == 'keep' or not isinstance(root.get('generation'), int):
            items.append(item)
        else:
            items.append(dict(item, generation=root['generation']))
    return items
