# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fleet that fails per Pi: which Pis failed which step, and what the later steps do with them.

The fleet role calls each list module once (roots, disks, exports, boot folders, prune). A module
finishes every Pi it can and reports the others in ``failed_pis`` (``nfs_export`` also in
``failed_exports``: an export of no one Pi, such as a bakeform's boot files). ``failures()`` turns
the registered results into one list, ``{name, serial, step, msg}`` per failed Pi and step, named
from the plan; ``healthy()`` gives the later steps their arguments: a Pi that failed is left out of
``pi_disk`` and kept exactly as it was by ``nfs_export`` and ``pi_boot`` (``state: keep``), even
though both run ``exclusive``, so a Pi that failed never loses a good export or boot folder, and
never gets a wider one; ``summary()`` is the one message the role fails with at the end.
Pure functions; the filters in ``plugins/filter/fleet_failures.py`` wrap them.
"""

from __future__ import annotations

STEPS = ('roots', 'disks', 'exports', 'boot', 'prune roots', 'prune disks')


def _names(plan):
    return {pi['serial']: pi['name'] for pi in (plan or {}).get('pis', [])}


def failures(results, plan=None):
    """``[{name, serial, step, msg}]`` of the registered ``results`` (``{step: result}``; a skipped or missing
    step is ``{}`` or None). ``name`` is the inventory name (from ``plan``; None for a Pi it does not hold,
    such as one being pruned); an export that is no one Pi's is named by its path, ``serial`` None."""
    names = _names(plan)
    found = []
    for step, result in (results or {}).items():
        if not isinstance(result, dict):
            continue
        for pi in result.get('failed_pis') or []:
            serial = pi.get('serial')
            found.append({'name': names.get(serial) or pi.get('name'), 'serial': serial, 'step': step,
                          'msg': pi.get('msg')})
        for export in result.get('failed_exports') or []:
            if not export.get('serial'):  # those of a Pi are in failed_pis
                found.append({'name': export.get('path'), 'serial': None, 'step': step, 'msg': export.get('msg')})
    return found


def healthy(plan, failed):
    """The arguments of the steps after a failure: ``{'disks', 'exports', 'boot'}`` of ``plan`` where every Pi in
    ``failed`` (``failures()``) has no disks to make and keeps its exports and boot folder as they are."""
    gone = {entry['serial'] for entry in failed or [] if entry.get('serial')}
    gone_names = {entry['name'] for entry in failed or [] if entry.get('name')}
    by_name = {pi['name']: pi['serial'] for pi in plan.get('pis', [])}
    gone |= {by_name[name] for name in gone_names if name in by_name}
    if not gone:
        return {'disks': plan['disks'], 'exports': plan['exports'], 'boot': plan['boot']}
    exports = [{'path': item['path'], 'state': 'keep', 'serial': item['serial'], 'hostname': item.get('hostname')}
               if item.get('serial') in gone else item for item in plan['exports']]
    boot = [{'name': item['name'], 'prefix': item['prefix'], 'state': 'keep', 'serial': item.get('serial')}
            if by_name.get(item['name']) in gone else item for item in plan['boot']]
    return {'disks': [item for item in plan['disks'] if item['serial'] not in gone], 'exports': exports, 'boot': boot}


def summary(failed):
    """The one message naming every failed Pi: inventory name, serial, step and why, one Pi a line."""
    if not failed:
        return ''
    pis = {(entry.get('name'), entry.get('serial')) for entry in failed}
    lines = ['%s (serial %s) failed at %s: %s' % (entry.get('name') or 'a Pi no longer in the inventory',
                                                  entry.get('serial') or '-', entry['step'], entry.get('msg'))
             for entry in failed]
    return '%d Pi(s) failed, every other Pi was converged; each failed Pi keeps the export and boot folder it had:\n' \
        '%s' % (len(pis), '\n'.join(lines))
