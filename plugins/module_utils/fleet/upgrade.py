# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The day-two reports: the upgrade playbook's per wave (which Pis were not upgraded, why, what was rolled
back), and the reimage playbook's one summary (``reimage_report()``).

A Pi of a wave fails the upgrade when its new root could not be built (it keeps the root it had: nothing
to roll back), or when it did not come back on its new root within the timeout (it is rolled back to
its previous root, power-cycled, and must come back). ``report()`` names each one with its serial, its
last boot event (what it fetched last, from the boot event log, since the wave or rollback started)
and what was rolled back, and says whether the wave's failures exceed the budget (a count, or a
percentage of the wave). Pure; the filters ``fleet_upgrade_report`` and ``fleet_reimage_report`` wrap them.
"""

from __future__ import annotations

import re

_BUDGET = re.compile(r'\s*([0-9]+)\s*(%?)\s*')


def budget(value, wave_size):
    """The number of failed Pis a wave of ``wave_size`` may have: ``value`` is a count (``2``) or a
    percentage of the wave (``'10%'``, rounded down). ValueError for anything else."""
    match = _BUDGET.fullmatch(str(value))
    if match is None or isinstance(value, bool):
        raise ValueError('upgrade_failure_budget %r is neither a count (0, 2) nor a percentage (10%%)' % (value,))
    number = int(match.group(1))
    if match.group(2):
        if number > 100:
            raise ValueError('upgrade_failure_budget %r is more than 100%%' % (value,))
        return number * wave_size // 100
    return number


def _by(entries, key='serial'):
    return {entry.get(key): entry for entry in entries or [] if isinstance(entry, dict)}


def report(facts, allowed):
    """``{failures: [{name, serial, reason, last_boot, rolled_back, back, line}], budget, exceeded, text}``.

    ``facts``: ``wave`` (inventory names), ``serials`` ({name: serial}), ``build_failed`` (fleet_failures entries of
    the new roots), ``roots`` (pi_root's entries of the new roots), ``down`` (names not back on the new root),
    ``new_boot`` ({name: last boot event on the new root}), ``rollback_roots``, ``rollback_failed``, ``back``
    ({name: came back after the rollback}), ``rollback_boot`` ({name: last boot event after the rollback}).
    """
    wave = list(facts.get('wave') or [])
    serials = facts.get('serials') or {}
    allowed = budget(allowed, len(wave))
    built = _by(facts.get('roots'))
    rolled = _by(facts.get('rollback_roots'))
    failures = []
    for entry in facts.get('build_failed') or []:
        if entry.get('name') not in wave:
            continue
        failures.append({'name': entry['name'], 'serial': entry.get('serial') or serials.get(entry['name']),
                         'reason': 'its new root could not be made (%s: %s)' % (entry.get('step'), entry.get('msg')),
                         'last_boot': None, 'rolled_back': 'nothing: it kept the root it had, not power-cycled',
                         'back': None})
    rollback_failed = {entry.get('name'): entry for entry in facts.get('rollback_failed') or []}
    for name in wave:
        if name not in (facts.get('down') or []):
            continue
        serial = serials.get(name)
        new = built.get(serial) or {}
        seen = (facts.get('new_boot') or {}).get(name)
        reason = 'it did not come back on %s within the timeout (no SSH server answered with its host key)' % (
            new.get('label') or 'its new root')
        if name in rollback_failed:
            what, back = 'the rollback failed (%s): it is left on its new root' % rollback_failed[name].get('msg'), None
        else:
            root = rolled.get(serial) or {}
            back = bool((facts.get('back') or {}).get(name))
            what = 'rolled back from %s to %s (root, boot folder, boot export), power-cycled: %s' % (
                new.get('label') or '?', root.get('label') or 'its previous root',
                'it is back up' if back else 'it did NOT come back either (last boot event %s)'
                % ((facts.get('rollback_boot') or {}).get(name) or 'none'))
        failures.append({'name': name, 'serial': serial, 'reason': reason, 'last_boot': seen, 'rolled_back': what,
                         'back': back})
    for item in failures:
        item['line'] = '%s (serial %s): %s; last boot event: %s; %s' % (
            item['name'], item['serial'] or '-', item['reason'], item['last_boot'] or 'none since the wave started',
            item['rolled_back'])
    exceeded = len(failures) > allowed
    head = '%d of %d Pi(s) of this wave were not upgraded (failure budget %d)%s' % (
        len(failures), len(wave), allowed,
        ': the budget is exceeded, the upgrade stops here and later waves are left as they are' if exceeded else '')
    text = head + ''.join('\n' + item['line'] for item in failures) if failures else ''
    return {'failures': failures, 'budget': allowed, 'exceeded': exceeded, 'text': text}


def _up(value):
    """A Pi's ``pifleet_up`` as the play left it: True, False, or None when it was never waited for."""
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() == 'true'


def reimage_report(facts):
    """``{failures: [{name, serial, reason, line}], text}``: each Pi of a reimage that did not come up, in one summary.

    ``facts``: ``pis`` (inventory names), ``serials`` ({name: pi_serial}), ``bakery_of`` ({name: bakery}),
    ``build_failed`` (fleet_failures entries with ``bakery``: an entry without a serial, such as a bakeform's boot
    export, stops every Pi of its bakery), ``roots`` (pi_root's entries of the new roots), ``up`` ({name:
    pifleet_up}, None for a Pi never waited for), ``boot`` ({name: last boot event}), ``timeout`` (seconds).
    A Pi whose rebuild failed keeps the root it had and is not power-cycled; one that was not waited for (its power
    cycle failed) or not back within the timeout has its previous root kept, for the rollback playbook.
    """
    serials = {name: str(serial or '').lower()[-8:] or None for name, serial in (facts.get('serials') or {}).items()}
    bakery_of = facts.get('bakery_of') or {}
    built = _by(facts.get('roots'))
    failures = []
    for name in facts.get('pis') or []:
        serial = serials.get(name)
        mine = [entry for entry in facts.get('build_failed') or [] if entry.get('name') == name
                or (not entry.get('serial') and entry.get('bakery') is not None
                    and entry.get('bakery') == bakery_of.get(name))]
        up = _up((facts.get('up') or {}).get(name))
        if mine:
            reason = 'its new root could not be made (%s); it keeps the root and export it had, not power-cycled' % (
                '; '.join('%s: %s' % (entry.get('step'), entry.get('msg')) for entry in mine))
        elif up is None:
            reason = 'it was not waited for: its power cycle failed (its own power task says why); its new root ' \
                     'is made, its previous root kept (pifleet.netboot.rollback puts it back)'
        elif not up:
            boot = (facts.get('boot') or {}).get(name)
            reason = 'it did not come back on %s within %s s (no SSH server answered with the host key of its new ' \
                     'root); last boot event: %s; its previous root is kept (pifleet.netboot.rollback puts it ' \
                     'back)' % ((built.get(serial) or {}).get('label') or 'its new root', facts.get('timeout'),
                                boot or 'none since the reimage started')
        else:
            continue
        failures.append({'name': name, 'serial': serial, 'reason': reason,
                         'line': '%s (serial %s): %s' % (name, serial or '-', reason)})
    head = '%d of %d Pi(s) were not reimaged' % (len(failures), len(facts.get('pis') or []))
    return {'failures': failures, 'text': head + ''.join('\n' + item['line'] for item in failures) if failures else ''}
