# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet role's pre-flight line: what the long step of a run will make, before it starts.

Built from check-mode runs of ``pi_root`` and ``pi_disk`` over the Pis whose roots are new or rebuilt: their
``pis`` (what each would do, and by which clone method) and ``planned_space`` (what the space ledger booked per
data file system: the worst case the new images add, the worst case already committed, the limit, the free
space now). Pure; no AnsibleModule.
"""

from __future__ import annotations

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.space import short

MADE_ROOTS = ('cloned', 'rebuilt')
MADE_DISKS = ('created', 'migrated')


def to_make(items, before):
    """The items (of the plan's ``roots`` or ``disks``) of the Pis whose roots this run makes: those to rebuild
    (``state`` rebuilt), then those with no state whose serial has no current root (``before``: by serial, what each
    Pi's root used before the run), in the order given. A Python loop: at 1000 Pis the same selection in Jinja cost
    about a second of every run."""
    before = before or {}
    items = list(items or [])
    rebuilt = [item for item in items if item.get('state') == 'rebuilt']
    return rebuilt + [item for item in items if 'state' not in item and item.get('serial') not in before]


def _count(number, one, many):
    return '%d %s' % (number, one if number == 1 else many)


def _result(registered):
    """A registered result, or {} when the step was skipped or did not run."""
    if not isinstance(registered, dict) or registered.get('skipped'):
        return {}
    return registered


def _space(results):
    """Per data file system (by mount point), the planned space of both calls added up: each call books only its
    own images, and both ledgers start from the same worst case already committed."""
    found = {}
    for result in results:
        for fs in result.get('planned_space') or []:
            if not isinstance(fs, dict) or not fs.get('mount'):
                continue
            known = found.setdefault(fs['mount'], dict(fs, claimed=0))
            known['claimed'] += int(fs.get('claimed') or 0)
            known['committed'] = max(known['committed'], fs['committed'])
    return [found[mount] for mount in sorted(found)]


def preflight(roots, disks=None):
    """One line: how many roots (new, rebuilt) and disks file systems (new, grown) this run makes, the clone
    method, and per data file system the worst case they add against what is allowed and what is free now."""
    roots, disks = _result(roots), _result(disks)
    if roots.get('failed') and not roots.get('pis') and not roots.get('failed_pis'):
        return 'Pre-flight: pi_root could not plan (%s); the run below says more' % (roots.get('msg') or 'no reason')
    root_pis = [pi for pi in roots.get('pis') or [] if isinstance(pi, dict)]
    disk_pis = [pi for pi in disks.get('pis') or [] if isinstance(pi, dict)]
    new = sum(1 for pi in root_pis if pi.get('action') == 'cloned')
    rebuilt = sum(1 for pi in root_pis if pi.get('action') == 'rebuilt')
    methods = sorted({pi.get('clone_method') for pi in root_pis if pi.get('action') in MADE_ROOTS} - {None})
    made = sum(1 for pi in disk_pis if pi.get('action') in MADE_DISKS)
    grown = sum(1 for pi in disk_pis if pi.get('action') == 'grown')
    said = []
    if new or rebuilt:
        kinds = [text for number, text in ((new, '%d new' % new), (rebuilt, '%d rebuilt' % rebuilt)) if number]
        said.append('%s to make (%s)%s' % (_count(new + rebuilt, 'root', 'roots'), ', '.join(kinds),
                                           ' by ' + ' and '.join(methods) if methods else ''))
    if made or grown:
        kinds = [text for number, text in ((made, '%d new' % made), (grown, '%d grown' % grown)) if number]
        said.append('%s (%s)' % (_count(made + grown, 'disks file system', 'disks file systems'), ', '.join(kinds)))
    line = 'Pre-flight: ' + ('; '.join(said) if said else 'no root or disks file system to make')
    for fs in _space([roots, disks]):
        after = fs['committed'] + fs['claimed']
        numbers = (fs['mount'], fs.get('fstype') or 'unknown file system', short(fs['claimed']), short(after),
                   short(fs['limit']), short(fs['free']), ' (NOT ENOUGH)' if after > fs['limit'] else '')
        line += '. %s (%s): they need %s at most (their full sizes); %s with every Pi image full, of %s allowed; ' \
                '%s free now%s' % numbers
    failed = sorted({pi.get('serial') or '?' for pi in (roots.get('failed_pis') or []) + (disks.get('failed_pis') or [])
                     if isinstance(pi, dict)})
    if failed:
        line += '. %s would fail (%s): the run names why' % (_count(len(failed), 'Pi', 'Pis'), ', '.join(failed))
    return line
