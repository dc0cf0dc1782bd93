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
- the second run changes nothing and names the same three;
- each Pi's boot folder serves its root's generation (bench/served.py, through the TFTP hook's map).

``verify()`` says what is wrong (an empty list: all of the above holds); tests/integration/
test_fleet_fails_per_pi.py runs it for a smaller N. Per-task times come from the junit callback.

``--playbook upgrade`` (or ``reimage``) does the same for a day-two run: every Pi is made on generation
1 (and a second image registered as generation 2), each at an address on loopback where an SSH server
answers with its root's host key (tests/tools/sshpi.py); then the three are sabotaged and the playbook
runs for all N in one wave. A rebuild reads nothing of the root it replaces, so the sabotaged roots
neither stop it nor are written: every Pi gets its new root, each victim's root kept whole as its
previous one, the disk untouched. With ``--silent`` the three also never answer: they are named in the
wave's one report (the rollback to a sabotaged previous root fails for that Pi alone and leaves the
root untouched; the third is rolled back and named as not back) and every other Pi is upgraded; in a
reimage they are named in its one summary (rebuilt, not back) and every other Pi is waited for (with a
fake plug each, in the test, also power-cycled once). The test adds three more sabotaged the same ways
that do answer, in the same wave (``answering``): they get their new roots like every other Pi. Then
``site`` twice: it names the disks (no part of a rebuild) alone and changes nothing for the others.
After the playbook and after site, each Pi's boot folder serves the boot files of its root's
generation, read through the TFTP hook's own map code (bench/served.py): the Pi rolled back serves its
previous generation again. ``verify_day_two()`` checks all of it (with sabotage_checks.py).

    python bench/bench_sabotage.py [--pis 1000] [--playbook site|upgrade|reimage] [--silent] [--wait S] [--keep]
                                   [--disk 160G]
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

import yaml

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
from sabotage_checks import playbook_problems, serial, served_problems
from sshpi import SshPis  # tests/tools (on the path through bench_scale): Pis that answer SSH on loopback

STEPS = ('roots', 'roots', 'disks')  # where each victim fails
SUMMARY = 'Fail naming every Pi that failed a step (every other Pi was converged)'


def victims(pis, which=0):
    """(etc made a link, hosts over 1 MiB, disk made 100 GiB): two Pis without disks, one with; ``which``: the first
    three, or the next (a day-two run's three that answer, beside three silent ones)."""
    plain = [name for name in sorted(pis) if not pis[name].get('pi_disks')]
    disked = [name for name in sorted(pis) if pis[name].get('pi_disks')]
    return plain[2 * which], plain[2 * which + 1], disked[which]


def sabotage(tmp, pis, names):
    """What each victim does from inside its own exports (as root on its own system)."""
    link, hosts, disk = names
    standin = tmp / 'bakery-etc'  # what the link points to: were pi_root to follow it, the bakery's /etc
    standin.mkdir(exist_ok=True)  # a second three (run_day_two's answering) link theirs to the same one
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


def prepare_fleet(tmp, image, pis, fleet=None):
    """bench_scale's inventory and role variables, with ``fleet``'s (more role variables) over them."""
    prepare(tmp, image, pis)
    if fleet:
        variables = yaml.safe_load((tmp / 'fleet.yml').read_text())
        variables.update(fleet)
        (tmp / 'fleet.yml').write_text(yaml.safe_dump(variables))


def run(tmp, image, count, fleet=None):
    """The whole proof on a fresh ``tmp``: the victims made and sabotaged, then two runs of the role for all.
    ``fleet``: more role variables (the test's: a shorter poll of the image's ingest)."""
    pis = fleet_pis(count)
    names = victims(pis)
    prepare_fleet(tmp, image, {name: pis[name] for name in names}, fleet)
    play(tmp, tmp / 'play.yml', 'victims')
    standin = sabotage(tmp, pis, names)
    before = kept_state(tmp, pis, names)
    prepare_fleet(tmp, image, pis, fleet)
    first = play(tmp, tmp / 'play.yml', 'sabotaged-first', check=False)
    after_first = dict(end_state(tmp), served=served_problems(tmp, pis))
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
    problems += ['after the first run: %s' % problem for problem in state['served'][:5]]
    if kept_state(tmp, pis, names) != outcome['before']:
        problems.append('a victim lost (or had changed) its export, boot folder or map entry')
    if digest(tmp / 'bakery-etc') != outcome['standin']:
        problems.append('the stand-in for the bakery\'s /etc was written through the link')
    return problems


# ------------------------------------------------------------------------------------------ upgrade, reimage

DAY_TWO = ('upgrade', 'reimage')


def loopback_pis(count):
    """The bench's fleet, each Pi's address on loopback (127.97.x.y), where tests/tools/sshpi.py answers for it."""
    pis = fleet_pis(count)
    for index, name in enumerate(sorted(pis)):
        pis[name]['pi_ip'] = '127.97.%d.%d' % (index // 250, index % 250 + 2)
    return pis


def markers(tmp, pis):
    """{name: ((generation, fs_uuid) of the current root, of the previous root)} from pi_root's markers."""
    found = {}
    for name, pi in pis.items():
        pair = []
        for suffix in ('.json', '.prev.json'):
            path = tmp / 'srv/roots' / (serial(pi) + suffix)
            marker = json.loads(path.read_text()) if path.exists() else {}
            pair.append((marker.get('generation'), marker.get('fs_uuid')))
        found[name] = tuple(pair)
    return found


def recap(text):
    """{host: {ok, changed, failed, ...}} from a log's PLAY RECAP."""
    return {host: {k: int(v) for k, v in re.findall(r'(\w+)=(\d+)', line)}
            for host, line in re.findall(r'^(\S+)\s+:\s+(ok=.*)$', text, re.M)}


def run_day_two(tmp, images, count, playbook, *, silent=False, answering=False, plugs=None, wait=15, fleet=None):
    """The proof for ``upgrade`` or ``reimage``: every Pi made on generation 1 (and, for an upgrade, generation 2
    registered: site moves no Pi), three sabotaged, then the playbook for all of them in one wave, with an SSH
    server on loopback for each Pi (no power devices: the Pis are "up" again at once; ``silent``: the three never
    answer; ``answering``: three more sabotaged the same ways that do answer, so one wave has both; ``plugs``: a
    tests/tools/powerfakes PlugServer, a plug for each Pi, so the power cycle is seen; ``wait``: the playbook's
    seconds for a Pi to come back, which only a silent Pi waits out; ``fleet``: more role variables); then site
    twice."""
    pis = loopback_pis(count)
    for name in sorted(pis) if plugs else ():
        pis[name]['pi_power'] = {'driver': 'http', 'api': 'shelly1', 'url': plugs.add(name, 'shelly1', on=True)}
    names = victims(pis)
    more = victims(pis, 1) if answering else ()
    prepare_fleet(tmp, images[1], pis, fleet)
    site = tmp / 'play.yml'
    made = play(tmp, site, 'site-gen1')
    if playbook == 'upgrade':
        inventory = yaml.safe_load((tmp / 'hosts.yml').read_text())
        inventory['bakery']['vars']['pifleet_bakeforms'] = [{'name': 'raspios', 'src': str(images[2])}]
        (tmp / 'hosts.yml').write_text(yaml.safe_dump(inventory))
        play(tmp, site, 'site-gen2')
    sabotaged = names + more
    standin = sabotage(tmp, pis, names)
    if more:
        sabotage(tmp, pis, more)
    before = {'kept': kept_state(tmp, pis, sabotaged), 'markers': markers(tmp, pis),
              'disks': {name: disk_state(tmp, pis, name) for name in sabotaged[2::3]}}
    (tmp / 'day2.yml').write_text(yaml.safe_dump([{'ansible.builtin.import_playbook': 'pifleet.netboot.' + playbook}]))
    # Only a silent Pi waits the whole time (twice in an upgrade: on its new root, then rolled back).
    extra = {'pifleet_events_path': str(tmp / 'events.jsonl'), 'pifleet_reimage_wait': wait,
             'upgrade_waves': ['100%'], 'upgrade_timeout': wait, 'upgrade_failure_budget': 3}
    keys = {pi['pi_ip']: os.path.join(points_dir(str(tmp / 'srv/roots')), serial(pi), 'etc/ssh/ssh_host_ed25519_key')
            for pi in pis.values()}
    ssh = SshPis(keys)
    if silent:
        ssh.up -= {pis[name]['pi_ip'] for name in names}
    try:
        first = play(tmp, tmp / 'day2.yml', playbook, check=False, args=('-e', json.dumps(extra)))
    finally:
        ssh.close()
    after = {'kept': kept_state(tmp, pis, sabotaged), 'markers': markers(tmp, pis), 'state': end_state(tmp),
             'served': served_problems(tmp, pis)}
    again = play(tmp, site, 'site-after', check=False)
    rerun = play(tmp, site, 'site-rerun', check=False)
    after['served_end'] = served_problems(tmp, pis)
    return {'pis': pis, 'names': names, 'answering': more, 'standin': standin, 'before': before, 'after': after,
            'first': first, 'made': made, 'again': again, 'rerun': rerun, 'tmp': tmp, 'playbook': playbook,
            'silent': silent, 'wait': wait, 'plugs': plugs}


def disk_state(tmp, pis, name):
    """The victim's disk: its size and its export block (the disk is no part of a rebuild)."""
    path = Path(points_dir(str(tmp / 'srv/disks'))) / serial(pis[name]) / 'data' / 'disk.img'
    exports = (tmp / 'ganesha/pifleet.conf').read_text()
    blocks = [block for block in re.findall(r'^EXPORT \{\n.*?^\}$', exports, re.M | re.S)
              if 'disks/mnt/%s"' % serial(pis[name]) in block]
    return os.stat(path).st_size, blocks


def verify_day_two(outcome):
    """Every way a day-two run differs from what fail-per-Pi promises (empty: it holds). An upgrade moves every Pi
    that answers to generation 2 (reimage: a new root on generation 1), the previous root kept: a rebuild reads
    nothing of the root it replaces, so the sabotaged roots neither stop it nor are written (each is kept whole as
    the previous root). Silent victims are named in the wave's one report: the rollback to a sabotaged previous
    root fails for that Pi alone (it stays on its new root, the previous one untouched), the third is rolled back
    and named as not back. Then site names the 100 GiB disks alone (a disk is no part of a rebuild) and changes
    nothing, twice."""
    tmp, pis, names, playbook = outcome['tmp'], outcome['pis'], outcome['names'], outcome['playbook']
    quiet = names if outcome['silent'] else ()
    sabotaged = names + outcome['answering']
    roots_sabotaged = sabotaged[0:2] + sabotaged[3:5]  # each three's etc link and big hosts
    disks = sabotaged[2::3]
    before, after = outcome['before']['markers'], outcome['after']['markers']
    new = 2 if playbook == 'upgrade' else 1
    log = (tmp / (playbook + '.log')).read_text(errors='replace')
    counters = recap(log)
    problems = []
    silent = set(quiet)
    failed = sorted(name for name in pis if counters.get(name, {}).get('failed'))
    if failed != sorted(silent):
        problems.append('%s failed %s, not %s' % (playbook, failed[:6], sorted(silent)))
    for name in pis:
        (generation, _uuid), (previous, previous_uuid) = after[name]
        # A silent Pi whose previous root was fine (the disk's) is rolled back to it: generation 1, 2 the previous.
        wanted = (1, 2) if name in disks and name in silent and playbook == 'upgrade' else (new, 1)
        if (generation, previous) != wanted:
            problems.append('%s: current/previous generation %s/%s after the %s, not %s/%s'
                            % (name, generation, previous, playbook, *wanted))
        elif name in roots_sabotaged and previous_uuid != before[name][0][1]:
            problems.append('%s: its sabotaged root is not the previous root it kept' % name)
    problems += playbook_problems(outcome, log, quiet)
    state = outcome['after']['state']
    exported = {path.rsplit('/', 1)[1]: clients for path, clients in state['exports'] if '/roots/' in path}
    wrong = [name for name, pi in pis.items() if exported.get(serial(pi)) != pi['pi_ip']]
    if wrong:
        problems.append('%d Pi(s) without their root export: %s' % (len(wrong), wrong[:5]))
    in_map = {entry['name'] for entry in state['map']['prefixes'].values()}
    if in_map != set(pis):
        problems.append('Pis without a map entry: %s' % sorted(set(pis) - in_map)[:5])
    for disk in disks:
        if disk_state(tmp, pis, disk) != outcome['before']['disks'][disk]:
            problems.append('the 100 GiB disk of %s or its export changed' % disk)
    if digest(tmp / 'bakery-etc') != outcome['standin']:
        problems.append('the stand-in for the bakery\'s /etc was written through the link')
    for label in ('again', 'rerun'):
        _seconds, counters, _tasks = outcome[label]
        text = (tmp / ('site-after.log' if label == 'again' else 'site-rerun.log')).read_text(errors='replace')
        named = '%d Pi(s) failed, every other Pi was converged' % len(disks) in text and all(
            '%s (serial %s) failed at disks: ' % (disk, serial(pis[disk])) in text for disk in disks)
        if counters.get('failed') != 1 or not named or counters.get('changed'):
            problems.append('site %s: failed %s, changed %s, the disks named alone: %s'
                            % (label, counters.get('failed'), counters.get('changed'), named))
    return problems


def print_tasks(outcome):
    first, again = outcome['first'], outcome['again']
    runs = ('%s (the first site: %.1f s)' % (outcome['playbook'], outcome['made'][0]), 'site after it') \
        if 'playbook' in outcome else ('first run', 're-run')
    # junit has a case per host: a task of the play on the Pis counts once per Pi (a sum, not its wall time).
    print('\nper task, %d Pis, %d sabotaged (s%s):  %s %.1f / %s %.1f' % (
        len(outcome['pis']), len(outcome['names'] + outcome.get('answering', ())),
        ', summed over the hosts' if 'playbook' in outcome else '', runs[0], first[0], runs[1], again[0]))
    for name in sorted(set(first[2]) | set(again[2]), key=lambda n: -first[2].get(n, 0)):
        print('  %7.1f %7.1f  %s' % (first[2].get(name, 0), again[2].get(name, 0), name))
    if 'playbook' not in outcome:
        print('  %7.1f %7.1f  (outside tasks: start-up, inventory, play)' % (
            first[0] - sum(first[2].values()), again[0] - sum(again[2].values())))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pis', type=int, default=1000)
    parser.add_argument('--playbook', choices=('site', *DAY_TWO), default='site',
                        help='site: the fleet role on every Pi (default); upgrade or reimage: that playbook on a '
                             'fleet made before the three were sabotaged')
    parser.add_argument('--silent', action='store_true', help='upgrade, reimage: the three never answer SSH')
    parser.add_argument('--wait', type=int, default=15,
                        help='upgrade, reimage: the seconds a Pi has to come back (default 15). The wait is one '
                             'deadline for all the Pis of a bakery, and the simulated Pis answer SSH from one Python '
                             'process (tests/tools/sshpi.py): at 1000 Pis it cannot answer a thousand key exchanges '
                             'at once in time (300 s: 288 of 997 up), so a 1000-Pi day-two run fails there')
    parser.add_argument('--keep', action='store_true', help='keep the temp dir under .build/bench/scale/')
    parser.add_argument('--out', default=None, help='default: .build/bench/sabotage[-<playbook>].json')
    parser.add_argument('--disk', default=None, help='size of the sparse XFS loop file system (default: 60G, '
                        'and 140M a Pi over 20G when that is more: 160G for 1000 Pis)')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit('bench_sabotage needs root (the Pi roots keep owners and device nodes)')
    ensure_importable()
    images = {1: WORK / 'scale-tiny.img.xz', 2: WORK / 'scale-tiny-gen2.img.xz'}
    for number, image in images.items():
        if not image.exists():
            build_image(image, profile='tiny', models=(3, 4, 5), seed=number)
    day_two = args.playbook in DAY_TWO
    label = 'sabotage' + ('-%s%s' % (args.playbook, '-silent' if args.silent else '') if day_two else '')
    (WORK / 'scale').mkdir(parents=True, exist_ok=True)
    # Sparse: what is written stays small (reflinked roots), but pi_root and pi_disk book every image's worst case
    # before they make one (the space check; bench_scale needs 120G for 1000), and a day-two run keeps each Pi's
    # previous root beside its new one (about 60 MiB each of this image). The size that held for an upgrade of 1000
    # serves both.
    size = args.disk or '%dG' % max(60, 20 + args.pis * 140 // 1000)
    with loop_fs(WORK / 'scale', 'xfs', size) as scratch:
        tmp = fresh(scratch, '%s-%d' % (label, args.pis))
        try:
            if day_two:
                outcome = run_day_two(tmp, images, args.pis, args.playbook, silent=args.silent, wait=args.wait)
                problems = verify_day_two(outcome)
                keys = ('names', 'made', 'first', 'again', 'rerun')
            else:
                outcome = run(tmp, images[1], args.pis)
                problems = verify(outcome)
                keys = ('names', 'first', 'again')
            print_tasks(outcome)
            summary = json.dumps({key: outcome[key] for key in keys}, indent=1)
            Path(args.out or WORK / (label + '.json')).write_text(summary + '\n')
        finally:
            if not args.keep:
                unmount_below(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
    if problems:
        raise SystemExit('fail per Pi does not hold:\n  ' + '\n  '.join(problems))
    what = '%d Pis, 3 sabotaged' % args.pis
    if day_two:
        what = '%s (%.1f s) of %s%s' % (args.playbook, outcome['first'][0], what, ' and silent' if args.silent else '')
    print('\n%s (%s): the other %d converged, the three named, a second run changed nothing'
          % (what, ', '.join(outcome['names']), args.pis - 3))
    return 0


if __name__ == '__main__':
    sys.exit(main())
