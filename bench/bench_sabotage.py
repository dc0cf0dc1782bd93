# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Proof and benchmark: a fleet where three Pis were sabotaged still converges every other Pi.

The fleet of bench_scale.py (N Pis, the same inventory, the same role play on an XFS loop store).
First only the three victims are made; then each is sabotaged the way a Pi (root on its own system)
can do it through its exports: Pi A makes its root's ``etc`` a symbolic link (to a stand-in for the
bakery's ``/etc``), Pi B writes an ``etc/hosts`` over 1 MiB, Pi C makes its ``disk.img`` 100 GiB (so
the 16 MiB the inventory asks for is a shrink, refused). Then the role runs for all N Pis, twice:

- the first run converges the other N-3 (roots, disks, exports, boot folders, the fleet map) and ends
  with one failure naming the three (inventory name, serial, step, why);
- each victim keeps the export, boot folder and map entry it had, and the stand-in is never written;
- the second run changes nothing and names the same three.

``verify()`` says what is wrong (an empty list: all of the above holds); tests/integration/
test_fleet_fails_per_pi.py runs it for a smaller N. Per-task times come from the junit callback.

    python bench/bench_sabotage.py [--pis 1000] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import (  # the bench's own fleet, store and runner, not a copy
    WORK,
    build_image,
    end_state,
    ensure_importable,
    fleet_pis,
    fresh,
    loop_fs,
    play,
    points_dir,
    prepare,
    unmount_below,
)

STEPS = ('roots', 'roots', 'disks')  # where each victim fails
SUMMARY = 'Fail naming every Pi that failed a step (every other Pi was converged)'


def victims(pis):
    """(etc made a link, hosts over 1 MiB, disk made 100 GiB): two Pis without disks, one with."""
    plain = [name for name in sorted(pis) if not pis[name].get('pi_disks')]
    disked = [name for name in sorted(pis) if pis[name].get('pi_disks')]
    return plain[0], plain[1], disked[0]


def serial(pi):
    return pi['pi_serial'][-8:]


def sabotage(tmp, pis, names):
    """What each victim does from inside its own exports (as root on its own system)."""
    link, hosts, disk = names
    standin = tmp / 'bakery-etc'  # what the link points to: were pi_root to follow it, the bakery's /etc
    standin.mkdir()
    (standin / 'hostname').write_text('bakery\n')
    (standin / 'hosts').write_text('127.0.0.1 localhost bakery\n')
    roots, disks = Path(points_dir(str(tmp / 'srv/roots'))), Path(points_dir(str(tmp / 'srv/disks')))  # mount points
    root = roots / serial(pis[link])
    os.rename(root / 'etc', root / 'etc.was')
    os.symlink(str(standin), root / 'etc')
    (roots / serial(pis[hosts]) / 'etc/hosts').write_bytes(b'#' * (1 << 20) + b'\n127.0.0.1 localhost\n')
    os.truncate(disks / serial(pis[disk]) / 'data' / 'disk.img', 100 << 30)
    return digest(standin)


def digest(top):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(top.iterdir())}


def kept_state(tmp, pis, names):
    """What the victims have in the shared state: their export blocks, boot folders and map entries."""
    exports = (tmp / 'ganesha/pifleet.conf').read_text()
    blocks = {path: block for block in re.findall(r'^EXPORT \{\n.*?^\}$', exports, re.M | re.S)
              for path in re.findall(r'Path = "([^"]*)";', block)}
    fleet_map = json.loads((tmp / 'map.json').read_text())['prefixes']
    state = {}
    for name in names:
        mine = {path: block for path, block in blocks.items() if path.endswith('/' + serial(pis[name]))}
        prefixes = {prefix: entry for prefix, entry in fleet_map.items() if entry['name'] == name}
        folders = {prefix: sorted(p.name for p in (tmp / 'srv/pis' / prefix).iterdir()) for prefix in prefixes}
        state[name] = {'exports': mine, 'map': prefixes, 'folders': folders}
    return state


def run(tmp, image, count):
    """The whole proof on a fresh ``tmp``: the victims made and sabotaged, then two runs of the role for all."""
    pis = fleet_pis(count)
    names = victims(pis)
    prepare(tmp, image, {name: pis[name] for name in names})
    play(tmp, tmp / 'play.yml', 'victims')
    standin = sabotage(tmp, pis, names)
    before = kept_state(tmp, pis, names)
    prepare(tmp, image, pis)
    first = play(tmp, tmp / 'play.yml', 'sabotaged-first', check=False)
    after_first = end_state(tmp)
    again = play(tmp, tmp / 'play.yml', 'sabotaged-rerun', check=False)
    return {'pis': pis, 'names': names, 'standin': standin, 'before': before, 'first': first, 'again': again,
            'after_first': after_first, 'tmp': tmp}


def verify(outcome):
    """Every way the outcome differs from what fail-per-Pi promises (empty: it holds)."""
    tmp, pis, names = outcome['tmp'], outcome['pis'], outcome['names']
    problems = []
    for label in ('first', 'again'):
        _seconds, counters, _tasks = outcome[label]
        text = (tmp / ('sabotaged-%s.log' % ('first' if label == 'first' else 'rerun'))).read_text(errors='replace')
        if counters.get('failed') != 1 or 'TASK [pifleet.netboot.fleet : %s]' % SUMMARY not in text:
            problems.append('%s run: %s failed tasks, not the one summary at the end' % (label, counters.get('failed')))
        if '3 Pi(s) failed, every other Pi was converged' not in text:
            problems.append('%s run: no summary naming three Pis' % label)
        for name, step in zip(names, STEPS):
            named = '%s (serial %s) failed at %s: ' % (name, serial(pis[name]), step)
            if named not in text:
                problems.append('%s run: "%s" is not in the summary' % (label, named))
    if outcome['again'][1].get('changed'):
        problems.append('the second run changed %d task(s)' % outcome['again'][1]['changed'])
    state = outcome['after_first']
    healthy = {name: pi for name, pi in pis.items() if name not in names}
    wrong_roots = [name for name, pi in healthy.items() if state['roots'].get(serial(pi)) != name + '\n']
    wanted_disks = {'%s/data' % serial(pi) for pi in healthy.values() if pi.get('pi_disks')}
    # <roots_dir or disks_dir>/mnt/<serial>: keyed 'roots/<serial>' or 'disks/<serial>'
    exported = dict((path.rsplit('/', 3)[1] + '/' + path.rsplit('/', 1)[1], clients) for path, clients in
                    state['exports'])
    wrong_exports = [name for name, pi in pis.items() if exported.get('roots/' + serial(pi)) != pi['pi_ip']
                     or (pi.get('pi_disks') and exported.get('disks/' + serial(pi)) != pi['pi_ip'])]
    in_map = {entry['name'] for entry in state['map']['prefixes'].values()}
    folders = {key.split('/')[0] for key in state['boot']}
    for what, wrong in (('roots', wrong_roots), ('disks', sorted(wanted_disks - set(state['disks']))),
                        ('exports', wrong_exports), ('map entries', sorted(set(pis) - in_map))):
        if wrong:
            problems.append('%d Pi(s) without their %s after the first run: %s' % (len(wrong), what, wrong[:5]))
    if len(folders) != len(pis):
        problems.append('%d boot folders for %d Pis' % (len(folders), len(pis)))
    if kept_state(tmp, pis, names) != outcome['before']:
        problems.append('a victim lost (or had changed) its export, boot folder or map entry')
    if digest(tmp / 'bakery-etc') != outcome['standin']:
        problems.append('the stand-in for the bakery\'s /etc was written through the link')
    return problems


def print_tasks(outcome):
    first, again = outcome['first'], outcome['again']
    print('\nper task, %d Pis, 3 sabotaged (s):  first run %.1f / re-run %.1f' % (
        len(outcome['pis']), first[0], again[0]))
    for name in sorted(set(first[2]) | set(again[2]), key=lambda n: -first[2].get(n, 0)):
        print('  %7.1f %7.1f  %s' % (first[2].get(name, 0), again[2].get(name, 0), name))
    print('  %7.1f %7.1f  (outside tasks: start-up, inventory, play)' % (
        first[0] - sum(first[2].values()), again[0] - sum(again[2].values())))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pis', type=int, default=1000)
    parser.add_argument('--keep', action='store_true', help='keep the temp dir under .build/bench/scale/')
    parser.add_argument('--out', default=str(WORK / 'sabotage.json'))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit('bench_sabotage needs root (the Pi roots keep owners and device nodes)')
    ensure_importable()
    image = WORK / 'scale-tiny.img.xz'
    if not image.exists():
        build_image(image, profile='tiny', models=(3, 4, 5))
    (WORK / 'scale').mkdir(parents=True, exist_ok=True)
    with loop_fs(WORK / 'scale', 'xfs', '60G') as scratch:
        tmp = fresh(scratch, 'sabotage-%d' % args.pis)
        try:
            outcome = run(tmp, image, args.pis)
            problems = verify(outcome)
            print_tasks(outcome)
            Path(args.out).write_text(json.dumps({key: outcome[key] for key in ('names', 'first', 'again')},
                                                 indent=1) + '\n')
        finally:
            if not args.keep:
                unmount_below(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
    if problems:
        raise SystemExit('fail per Pi does not hold:\n  ' + '\n  '.join(problems))
    print('\n%d Pis, 3 sabotaged (%s): the other %d converged, the three named, a second run changed nothing'
          % (args.pis, ', '.join(outcome['names']), args.pis - 3))
    return 0


if __name__ == '__main__':
    sys.exit(main())
