# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which generations of a bakeform the Pis use, and which ones may go: pure decisions, no file is touched.

A generation is used while a Pi's root (its current one, or the previous one kept for a rollback) was
built from it. The references come from pifleet's own markers beside the roots
(``pistate.roots.references``, read by the module): a marker names its generation, or, when made before
generations, the content of its bakeform (``sha256``), which picks the generation of that content.

What stays: every used generation, the current one, the pinned ones, and the newest others until
``keep`` generations that are not in use are kept, the current one counted. Everything else is removed.
"""

from __future__ import annotations

from ansible_collections.pifleet.netboot.plugins.module_utils.store.generations import label, same_content

SHOWN = 20  # Pis named in one message; the result's ``used_by`` has them all


def usage(name, index, references):
    """``{generation: [reference, ...]}`` of the roots that use a generation of bakeform ``name``."""
    generations = {int(key) for key in ((index or {}).get('generations') or {})}
    used = {}
    for ref in references:
        if ref.get('bakeform') != name:
            continue
        if ref.get('generation') is not None:
            numbers = [ref['generation']] if ref['generation'] in generations else []
        else:
            numbers = same_content(index, ref.get('sha256'))
        for number in numbers:
            used.setdefault(number, []).append(ref)
    return used


def removable(ids, current, pinned, keep, used):
    """The generations to remove, oldest first: not current, not pinned, not used, beyond ``keep``.

    ``keep`` counts the generations that are not in use and stay, the current one among them; the
    newest others fill the rest of it (numbers only grow, so the highest are the newest).
    """
    if keep < 1:
        raise ValueError('keep must be at least 1 (the current generation is always kept), not %r' % (keep,))
    protected = set(pinned or ()) | set(used or ())
    if current is not None:
        protected.add(current)
    others = sorted((number for number in ids if number not in protected), reverse=True)
    room = keep - (1 if current is not None else 0)
    return sorted(others[max(room, 0):])


def pi_name(ref):
    """``pi-01 (3a4b5c6d, current root)``: how a Pi that uses a generation is named in a message."""
    kept = ref.get('kept') or 'current'
    if ref.get('hostname'):
        return '%s (%s, %s root)' % (ref['hostname'], ref['serial'], kept)
    return 'Pi %s (%s root)' % (ref['serial'], kept)


def in_use(name, used):
    """Why generations cannot be removed: each one with the Pis whose roots use it."""
    parts = []
    for number in sorted(used):
        refs = used[number]
        names = ', '.join(pi_name(ref) for ref in refs[:SHOWN])
        more = ' and %d more' % (len(refs) - SHOWN) if len(refs) > SHOWN else ''
        parts.append('%s is used by %s%s' % (label(name, number), names, more))
    return '; '.join(parts)


def used_by(refs):
    """The result's ``used_by`` of one generation: serial, hostname and which root of that Pi uses it."""
    return [{'serial': ref['serial'], 'hostname': ref.get('hostname'), 'root': ref.get('kept') or 'current'}
            for ref in refs]
