# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a day-two run of bench_sabotage.py must have said and done beyond the roots: the upgrade's wave report
and reimage's one summary naming the three silent victims, each rebuilt Pi power-cycled once and waited for, and
each boot folder serving its root's generation (bench/served.py). Each function returns the problems found (an
empty list: it holds); verify_day_two() in bench_sabotage.py gathers them.
"""

from __future__ import annotations

import re

import served  # what each boot folder serves, read with the TFTP hook's own code


def serial(pi):
    return pi['pi_serial'][-8:]


def served_problems(tmp, pis):
    """Each of ``pis`` whose boot folder does not serve its root's generation (bench/served.py)."""
    return served.problems(tmp / 'srv', tmp / 'map.json', pis, serial)


def report_problems(log, pis, names):
    """What the upgrade's one wave report fails to say of the three silent victims."""
    link, hosts, disk = names
    problems = []
    head = '3 of %d Pi(s) of this wave were not upgraded (failure budget 3)' % len(pis)
    if head not in log:
        problems.append('no wave report naming the three: "%s"' % head)
    for name, tail in ((link, 'the rollback failed (etc in the previous root of Pi %s is a symlink or not a '
                              'directory; nothing there is read or written through a symlink or outside the tree): '
                              'it is left on its new root' % serial(pis[link])),
                       (hosts, 'the rollback failed (etc/hosts in the previous root of Pi %s is larger than 1048576 '
                               'bytes; nothing there is read or written through a symlink or outside the tree): it '
                               'is left on its new root' % serial(pis[hosts])),
                       (disk, 'rolled back from raspios@2 to raspios@1 (root, boot folder, boot export), '
                              'power-cycled: it did NOT come back either')):
        if not re.search(r'\\n%s \(serial %s\): it did not come back on raspios@2 within the timeout[^\\]*%s'
                         % (name, serial(pis[name]), re.escape(tail)), log):
            problems.append('the report does not say of %s: ...%s' % (name, tail))
    return problems


def reimage_report_problems(log, pis, names, wait):
    """What reimage's one summary fails to say of the three silent victims: each rebuilt, not back within ``wait``
    seconds."""
    problems = []
    head = '3 of %d Pi(s) were not reimaged' % len(pis)
    if head not in log:
        problems.append('no summary naming the three: "%s"' % head)
    for name in names:
        line = ('%s (serial %s): it did not come back on raspios@1 within %d s (no SSH server answered with the host '
                'key of its new root)' % (name, serial(pis[name]), wait))
        if not re.search(r'\\n' + re.escape(line), log):
            problems.append('the summary does not say: %s' % line)
    return problems


def day_two_boot_problems(outcome):
    """Each Pi's boot folder serves the boot files of its root's generation (read through the hook's map): after the
    playbook (a Pi rolled back serves its previous generation again) and after site twice; in an upgrade the two
    generations' boot files differ, so a folder left on the wrong one is seen."""
    tmp, after = outcome['tmp'], outcome['after']
    problems = ['after the %s: %s' % (outcome['playbook'], problem) for problem in after['served'][:5]]
    problems += ['after site twice: %s' % problem for problem in after['served_end'][:5]]
    store, cache = str(tmp / 'srv/bakeforms'), {}
    if outcome['playbook'] == 'upgrade' and served.generation_files(store, 'raspios', 1, cache) == \
            served.generation_files(store, 'raspios', 2, cache):
        problems.append('generations 1 and 2 have the same boot files: the boot folders prove nothing')
    return problems


def power_problems(outcome, log, up):
    """Every Pi rebuilt was waited for, and those of ``up`` came up; with plugs, each was power-cycled once (off, then
    on), the silent ones too."""
    plugs, pis = outcome['plugs'], outcome['pis']
    problems = ['%s: power set %d time(s), now %s, not cycled once' % (name, plugs.plugs[name].sets,
                                                                       plugs.plugs[name].state)
                for name in sorted(pis) if plugs and (plugs.plugs[name].sets, plugs.plugs[name].state) != (2, [True])]
    waited = set(re.findall(r'"msg": "(\S+) is up \(SSH answers with the host key of its root\)', log))
    if waited != set(up):
        problems.append('%d Pi(s) waited for and up, not the %d that answer (missing: %s)'
                        % (len(waited), len(up), sorted(set(up) - waited)[:5]))
    return problems


def playbook_problems(outcome, log, quiet):
    """The wave report or summary (``quiet``: the three silent victims, or none), the power cycles and waits
    (reimage), the boot folders."""
    pis, playbook = outcome['pis'], outcome['playbook']
    problems = []
    if quiet and playbook == 'upgrade':
        problems += report_problems(log, pis, quiet)
    if quiet and playbook == 'reimage':
        problems += reimage_report_problems(log, pis, quiet, outcome['wait'])
    if playbook == 'reimage':
        problems += power_problems(outcome, log, set(pis) - set(quiet))
    return problems + day_two_boot_problems(outcome)
