# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``status`` playbook's output: a table whose widths follow the content, or one JSON document.

Pure functions over pi_status results (and the power states the playbook read). File names in hints come
from the LAN: every cell and line is made printable, so a name cannot pass for a row of the table.
"""

from __future__ import annotations

COLUMNS = ('PI', 'MODEL', 'GENERATION', 'ROOT', 'DISKS', 'POWER', 'STAGE', 'UP', 'LAST BOOT', 'TOOK')
FULL = 85.0  # percent: a data file system above it is named below the table


def printable(value):
    return ''.join(ch if ch.isprintable() else '?' for ch in str(value))


def duration(seconds):
    """``41s``, ``3m12s``, ``2h05m``."""
    seconds = round(seconds)
    if seconds < 60:
        return '%ds' % seconds
    if seconds < 3600:
        return '%dm%02ds' % divmod(seconds, 60)
    return '%dh%02dm' % (seconds // 3600, seconds % 3600 // 60)


def took(boot):
    """How long the last boot took: to ``running`` when that time is known, else to the furthest stage seen."""
    spent = boot.get('took') or {}
    if spent.get('to') is None:
        return '-'
    if spent['to'] == 'running':
        return duration(spent['seconds'])
    return '%s (%s)' % (duration(spent['seconds']), spent['to'])


def stage(boot):
    if boot is None:
        return 'never'
    state = boot['state']
    if state == 'running':
        return 'running'
    if state == 'stalled':
        return 'stalled at %s' % boot['stalled_at']
    if state == 'ended':
        return 'ended (%s)' % boot['stage']
    return 'booting (%s)' % boot['stage']


def _usage(part, missing):
    if part is None:
        return missing
    if part.get('usage') is None:
        return 'unmounted'
    return '%.0f%%' % part['usage']['percent']


def generation(pi):
    if not pi.get('label'):
        return '-'
    if pi.get('behind'):
        return '%s (behind @%s)' % (pi['label'], pi['current_generation'])
    return pi['label']


def _count(number, one, many):
    return '%d %s' % (number, one if number == 1 else many)


def bakeform_line(form):
    """One bakeform of the store: its current generation and, per generation, how many Pis' roots use it."""
    if form.get('layout') == 'format2':
        return 'BAKEFORM %s: store format 2 (before generations): the next pifleet.netboot.bakeform run for it makes ' \
               'its image generation 1' % form['name']
    if not form.get('generations'):
        return 'BAKEFORM %s: no generation in the store' % form['name']
    listed = []
    for gen in form['generations']:
        users = gen.get('used_by') or []
        previous = sum(1 for user in users if user.get('root') == 'previous')
        notes = [note for note, shown in (('current', gen.get('current')), ('pinned', gen.get('pinned'))) if shown]
        if len(users) > previous:
            notes.append(_count(len(users) - previous, 'Pi', 'Pis'))
        if previous:
            notes.append(_count(previous, 'root kept for rollback', 'roots kept for rollback'))
        # What its Pis' settings are refused for ("not recorded": registered before bakeform recorded it). A root
        # without cloud-init alone is every image before Trixie: the JSON form says so, the line does not.
        if gen.get('netboot') not in (None, 'nothing missing', 'no cloud-init'):
            notes.append('its root: %s' % gen['netboot'])
        listed.append('%s (%s)' % (gen['label'], ', '.join(notes) or 'unused'))
    current = form.get('current_label') or 'none'
    return 'BAKEFORM %s: current %s; generations %s' % (form['name'], current, ', '.join(listed))


def row(pi, model, power):
    """One Pi's cells, in COLUMNS order."""
    boot = pi.get('boot')
    root = pi.get('root')
    root_cell = 'missing' if root is None or not root.get('marker') else _usage(root, 'missing')
    return [pi['name'], '-' if model is None else str(model), generation(pi), root_cell,
            _usage(pi.get('disks'), '-'), power or '-', stage(boot), pi.get('up') or '-',
            boot['start'] if boot else 'never', took(boot) if boot else '-']


def table(rows):
    """Lines of a table: each column as wide as its widest cell, two spaces between columns."""
    cells = [list(COLUMNS)] + [[printable(cell) for cell in cells] for cells in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(COLUMNS))]
    return ['  '.join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]


def report(status, models=None, power=None, power_errors=None):
    """The lines ``status`` prints: the table, then why Pis stalled, slow starts, power errors, each bakeform's
    generations, full disks and what the bakery could not observe."""
    models, power, power_errors = models or {}, power or {}, power_errors or {}
    pis = status.get('pis') or []
    rows = [row(pi, models.get(pi['name']), 'error' if pi['name'] in power_errors else power.get(pi['name']))
            for pi in pis]
    lines = table(rows)
    for pi in pis:
        boot = pi.get('boot') or {}
        if boot.get('state') in ('stalled', 'ended') and boot.get('hint'):
            lines.append(printable('%s %s: %s' % ('STALLED' if boot['state'] == 'stalled' else 'ENDED', pi['name'],
                                                  boot['hint'])))
        if boot.get('note'):
            lines.append(printable('SLOW START %s: %s' % (pi['name'], boot['note'])))
    for pi in pis:
        if pi['name'] in power_errors:
            lines.append(printable('POWER ERROR %s: %s' % (pi['name'], power_errors[pi['name']])))
    for form in status.get('bakeforms') or []:
        lines.append(printable(bakeform_line(form)))
    for fs in status.get('data_filesystems') or []:
        if fs.get('percent', 0) > FULL:
            lines.append(printable('DATA FULL %s: %.0f%% used (%d of %d MiB)' % (
                fs['path'], fs['percent'], fs['used'] // 2 ** 20, fs['size'] // 2 ** 20)))
    for source, said in sorted((status.get('sources') or {}).items()):
        if said.startswith('not '):
            lines.append(printable('%s %s' % (source.upper(), said)))
    return lines


def unread(status):
    """Whether a bakery's pi_status call gave no reading (it failed, its bakery was unreachable or it was skipped)."""
    return bool(status.get('failed') or status.get('unreachable') or status.get('skipped'))


def reason(status):
    """Why a bakery's pi_status call gave no reading: its message, and the last line the bakery's Python printed
    to stderr when the module never got to say (a MODULE FAILURE)."""
    said = ' '.join(str(status.get('msg') or ('skipped' if status.get('skipped') else 'failed')).split())
    stderr = [line.strip() for line in str(status.get('module_stderr') or '').splitlines() if line.strip()]
    if stderr:
        said = said.rstrip('.') + ': ' + stderr[-1][:300]
    return said


def report_all(results, models=None, power=None, power_errors=None):
    """``report`` of each bakery's result (``[(bakery, result)]``), under a heading when there are several; a
    bakery whose pi_status call gave no reading is a line saying why, and the others are shown as ever."""
    lines = []
    for bakery, status in results:
        if len(results) > 1:
            lines.append(printable('BAKERY %s' % bakery))
        if unread(status):
            lines.append(printable('BAKERY %s: %s' % (bakery, reason(status))))
            continue
        lines.extend(report(status, models, power, power_errors))
    return lines


def document(results, models=None, power=None, power_errors=None):
    """The JSON document of ``-e status_format=json``: each Pi's pi_status entry with its bakery, model, power
    and the STAGE the table shows; each bakery's bakeforms (generations, current), data file systems and sources."""
    models, power, power_errors = models or {}, power or {}, power_errors or {}
    pis, bakeries, now = [], [], None
    for bakery, status in results:
        now = now or status.get('now')
        bakeries.append({'name': bakery, 'failed': unread(status), 'msg': reason(status) if unread(status) else None,
                         'bakeforms': status.get('bakeforms') or [],
                         'data_filesystems': status.get('data_filesystems') or [],
                         'sources': status.get('sources') or {}})
        for pi in status.get('pis') or []:
            pis.append(dict(pi, bakery=bakery, model=models.get(pi['name']), power=power.get(pi['name']),
                            power_error=power_errors.get(pi['name']), stage=stage(pi.get('boot'))))
    return {'format': 1, 'now': now, 'pis': pis, 'bakeries': bakeries}
