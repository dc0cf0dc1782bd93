# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: the fleet role on inventories of 10, 100 and 1000 Pis, against a task loop per Pi.

For each size N: an inventory of N Pis (models 3, 4 and 5, unique serials, MACs and addresses in
10.99.0.0/16 that are only data, about one in ten with a small extra disk, some with config.txt
lines, extra cmdline tokens or a MAC TFTP prefix) and a tiny bakeform image (built once, cached in
.build/bench/). ansible-playbook applies the real ``pifleet.netboot.fleet`` role to this host, every
path in a temp dir under .build/bench/scale/ (like tests/integration/test_fleet.py): a first run,
then a re-run that must change nothing. The baseline, bench/naive_fleet.yml (one module call per Pi
in task loops), does the same on a fresh temp dir in the same run, and the two end states are
compared (roots, disks, exported paths and clients, boot folders and their files, the fleet map).
After the re-run, the floor under it: ansible-playbook with the same inventory and extra variables and an empty play
(start-up and inventory alone), and with as many ``debug`` tasks as the re-run ran (what that many tasks cost
with nothing in them), so a re-run's time reads against what no role on this controller can go below.
Per-task times come from bench/callback_plugins/bench_times.py (clocks only: ansible-core's junit callback, used
before, also wrote every result out at the end, seconds of a 1000-Pi re-run that a user's run does not spend).
A baseline size whose estimate (from the smaller ones) is over --baseline-budget seconds is skipped, unless
named in --baseline-sizes.
Needs root (the roots keep owners and device nodes). Results go to .build/bench/scale.json.

    python bench/bench_scale.py [--sizes 10,100,1000] [--baseline-sizes 10,100] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / 'tests' / 'tools')]  # the lab package, the tests' helpers

from fstree import loop_fs, unmount_below  # noqa: E402
from modrun import COLLECTIONS, ensure_importable  # noqa: E402

from lab.piimage import build_image  # noqa: E402

ensure_importable()
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.points import points_dir  # noqa: E402

WORK = REPO / '.build' / 'bench'
NAIVE = REPO / 'bench' / 'naive_fleet.yml'
CALLBACKS = REPO / 'bench' / 'callback_plugins'
BAKERY = 'lab-bakery'
NFS_SERVER = '10.99.0.1'  # only written into cmdline.txt: no traffic is sent
GOAL_FIRST_SECONDS = 60  # 1000 Pis (issue 20: fast enough to run after every inventory edit)
GOAL_RERUN_SECONDS = 5
GOAL_GROWTH = 5


def fleet_pis(count):
    """``count`` Pis as inventory host variables (deterministic)."""
    pis = {}
    for index in range(count):
        model = (3, 4, 5)[index % 3]
        pi = {'pi_serial': '%08x' % (0xb0000000 + index * 7919), 'pi_model': model,
              'pi_mac': '2c:cf:67:%02x:%02x:%02x' % (index >> 16 & 255, index >> 8 & 255, index & 255),
              'pi_ip': '10.99.%d.%d' % (index // 250, index % 250 + 2)}
        if index % 10 == 4:
            pi['pi_disks'] = [{'name': 'data', 'size': '16M', 'fstype': 'ext4' if index % 20 == 4 else 'none'}]
        if index % 7 == 3:
            pi['pi_config_txt'] = ['dtparam=audio=off', 'gpu_mem=16']
        if index % 11 == 5:
            pi['pi_cmdline_extra'] = 'quiet'
        if model == 5 and index % 4 == 2:
            pi['pi_tftp_prefix'] = 'mac'
        pis['pi-%04d' % index] = pi
    return pis


def fleet_vars(tmp):
    """The role's variables (the baseline reads the same ones), every path under ``tmp``."""
    return {
        'fleet_store': str(tmp / 'srv/bakeforms'), 'fleet_roots_dir': str(tmp / 'srv/roots'),
        'fleet_disks_dir': str(tmp / 'srv/disks'), 'fleet_boot_dir': str(tmp / 'srv/pis'),
        'fleet_map_path': str(tmp / 'map.json'), 'fleet_nfs_server': NFS_SERVER, 'fleet_hook_service': '',
        'fleet_nfs_backend': 'ganesha', 'fleet_nfs_ganesha_config': str(tmp / 'ganesha/ganesha.conf'),
        'fleet_nfs_exports_file': str(tmp / 'ganesha/pifleet.conf'), 'fleet_nfs_reload': False,
        'fleet_units_dir': str(tmp / 'units'), 'fleet_clone_method': 'auto',  # reflink: the tmp dirs are on XFS
        'fleet_host_ca': str(tmp / 'ssh/host_ca'), 'fleet_known_hosts': str(tmp / 'known_hosts'),
    }


def prepare(tmp, image, pis):
    """Inventory, variables, the role's play and a Ganesha config to include the exports from."""
    host = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}
    inventory = {'bakery': {'hosts': {BAKERY: host},
                            'vars': {'pifleet_bakeforms': [{'name': 'raspios', 'src': str(image)}]}},
                 'pis': {'hosts': pis}}
    (tmp / 'hosts.yml').write_text(yaml.safe_dump(inventory))
    (tmp / 'fleet.yml').write_text(yaml.safe_dump(fleet_vars(tmp)))
    (tmp / 'play.yml').write_text(yaml.safe_dump([{'name': 'Fleet', 'hosts': 'bakery', 'gather_facts': False,
                                                   'roles': ['pifleet.netboot.fleet']}]))
    (tmp / 'ganesha').mkdir(exist_ok=True)
    (tmp / 'ganesha/ganesha.conf').write_text('NFS_CORE_PARAM {\n    Protocols = 3, 4;\n}\n')


def task_times(path):
    """Seconds per task name as bench_times wrote them (loops count once: the whole task)."""
    return json.loads(path.read_text()) if path.exists() else {}


def play(tmp, playbook, label, check=True, args=(), *, profile=None, recap=True):
    """Run ``playbook`` on the bakery; (seconds, recap counters, {task: seconds}). ``check``: a failed run is an
    error (the output is in ``<tmp>/<label>.log`` either way). ``args``: more ansible-playbook arguments.
    ``profile``: a path for cProfile's statistics of the controller's main process (the workers are not in it).
    ``recap``: whether the bakery has a line in the recap (a play without tasks prints none)."""
    times = tmp / ('times-%s.json' % label)
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_NOCOLOR='1',
               ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS), ANSIBLE_CALLBACKS_ENABLED='bench_times',
               BENCH_TIMES_FILE=str(times))
    argv = [str(Path(sys.executable).parent / 'ansible-playbook'), '-i', str(tmp / 'hosts.yml'), str(playbook),
            '-e', '@' + str(tmp / 'fleet.yml'), *args]
    if profile:
        argv[:1] = [sys.executable, '-m', 'cProfile', '-o', str(profile), argv[0]]
    log = tmp / (label + '.log')
    start = time.perf_counter()
    with log.open('w') as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    seconds = time.perf_counter() - start
    text = log.read_text(errors='replace')
    found = re.search(r'^%s\s+:\s+(.*)$' % re.escape(BAKERY), text, re.M)
    if (check and proc.returncode != 0) or (recap and not found):
        raise SystemExit('%s failed (rc %d), see %s:\n%s' % (label, proc.returncode, log, text[-3000:]))
    counters = {key: int(value) for key, value in re.findall(r'(\w+)=(\d+)', found.group(1))} if found else {}
    return seconds, counters, task_times(times)


def first_and_rerun(tmp, playbook, label, profile=None):
    first, applied, first_tasks = play(tmp, playbook, label + '-first')
    rerun, again, rerun_tasks = play(tmp, playbook, label + '-rerun')
    if profile:  # a third run, so the profiler's own cost stays out of the re-run's time
        play(tmp, playbook, label + '-profiled', profile=profile)
    if again.get('changed'):
        raise SystemExit('%s re-run changed %d task(s), see %s'
                         % (label, again['changed'], tmp / (label + '-rerun.log')))
    return {'first_seconds': first, 'rerun_seconds': rerun, 'first_changed': applied.get('changed'),
            'first_tasks': first_tasks, 'rerun_tasks': rerun_tasks}


def end_state(tmp):
    """What a fleet run leaves, with ``tmp`` taken out of every path (comparable across runs)."""
    srv = tmp / 'srv'

    def rel(text):
        return text.replace(str(tmp), '<tmp>')

    def listing(path):
        return sorted(p.name for p in path.iterdir() if not p.name.startswith('.')) if path.is_dir() else []

    exports = (tmp / 'ganesha/pifleet.conf').read_text()
    boot = {}
    for prefix in listing(srv / 'pis'):
        for file in listing(srv / 'pis' / prefix):
            boot['%s/%s' % (prefix, file)] = rel((srv / 'pis' / prefix / file).read_text())
    fleet_map = json.loads((tmp / 'map.json').read_text())
    roots, disks = Path(points_dir(str(srv / 'roots'))), Path(points_dir(str(srv / 'disks')))  # the mount points
    return {
        # Mounted roots only (on the points' tmpfs): <serial>.identity/ is the identity the bakery keeps for that Pi.
        'roots': {serial: (roots / serial / 'etc/hostname').read_text() for serial in listing(roots)
                  if re.fullmatch(r'[0-9a-f]{8}', serial) and (roots / serial).is_dir()},
        'disks': sorted('%s/%s' % (serial, name) for serial in listing(disks)
                        for name in listing(disks / serial) if (disks / serial / name).is_dir()),
        'exports': sorted(zip((rel(p) for p in re.findall(r'^\s*Path = "([^"]*)";', exports, re.M)),
                              re.findall(r'^\s*Clients = ([^;]*);', exports, re.M))),
        'boot': boot,
        'map': json.loads(rel(json.dumps(fleet_map, sort_keys=True))),
    }


def compare(role, baseline, count):
    problems = []
    for key in role:
        if role[key] != baseline[key]:
            if isinstance(role[key], dict):
                keys = sorted(set(role[key]) | set(baseline[key]))
                differ = [k for k in keys if role[key].get(k) != baseline[key].get(k)]
            else:
                differ = sorted(set(map(str, role[key])) ^ set(map(str, baseline[key])))
            problems.append('%s differ (%d): %s' % (key, len(differ), ', '.join(map(str, differ[:5]))))
    if problems:
        raise SystemExit('role and baseline disagree for %d Pis: %s' % (count, '; '.join(problems)))
    return {'roots': len(role['roots']), 'disks': len(role['disks']), 'exports': len(role['exports']),
            'boot_folders': len({k.split('/')[0] for k in role['boot']}), 'map_prefixes': len(role['map']['prefixes'])}


def fresh(parent, label):
    path = Path(tempfile.mkdtemp(prefix=label + '-', dir=parent))
    path.chmod(0o755)
    return path


def estimate(rows, count):
    """Seconds a baseline of ``count`` Pis would take (first + re-run), scaled from the largest one measured."""
    done = [r for r in rows if r.get('baseline')]
    if not done:
        return None
    largest = max(done, key=lambda r: r['pis'])
    per_pi = (largest['baseline']['first_seconds'] + largest['baseline']['rerun_seconds']) / largest['pis']
    return per_pi * count


def floor(tmp, tasks):
    """Seconds of an empty play and of a play of ``tasks`` no-op ``debug`` tasks on the same inventory and extra
    variables: ansible-playbook's own cost at this size, which no role goes below."""
    seconds = {}
    for label, count in (('floor-empty', 0), ('floor-tasks', tasks)):
        playbook = tmp / (label + '.yml')
        body = [{'name': 'no-op %d' % n, 'ansible.builtin.debug': {'msg': 'no-op'}} for n in range(count)]
        playbook.write_text(yaml.safe_dump([{'name': 'Floor', 'hosts': 'bakery', 'gather_facts': False,
                                             'tasks': body}], sort_keys=False))
        seconds[label] = play(tmp, playbook, label, recap=count > 0)[0]
    return {'empty_seconds': seconds['floor-empty'], 'tasks': tasks, 'tasks_seconds': seconds['floor-tasks']}


def bench_size(count, image, args, rows, scratch):
    pis = fleet_pis(count)
    row = {'pis': count, 'disks': sum(len(p.get('pi_disks', [])) for p in pis.values())}
    tmp = fresh(scratch, 'n%d-role' % count)
    try:
        prepare(tmp, image, pis)
        print('%d Pis: role ...' % count, flush=True)
        row['role'] = first_and_rerun(tmp, tmp / 'play.yml', 'role', args.profile_rerun)
        row['floor'] = floor(tmp, len(row['role']['rerun_tasks']))
        role_state = end_state(tmp)
        forecast = estimate(rows, count)
        explicit = args.baseline_sizes is not None and count in args.baseline_sizes
        wanted = count in (args.baseline_sizes if args.baseline_sizes is not None else args.sizes)
        if wanted and (explicit or forecast is None or forecast <= args.baseline_budget):
            base = fresh(scratch, 'n%d-naive' % count)
            try:
                prepare(base, image, pis)
                print('%d Pis: baseline ...' % count, flush=True)
                row['baseline'] = first_and_rerun(base, NAIVE, 'naive')
                row['same_end_state'] = compare(role_state, end_state(base), count)
                print('  same end state: %s' % ', '.join('%d %s' % (n, k.replace('_', ' '))
                                                         for k, n in row['same_end_state'].items()), flush=True)
            finally:
                if not args.keep:
                    unmount_below(base)
                    shutil.rmtree(base, ignore_errors=True)
        else:
            row['baseline_skipped'] = ('not asked' if not wanted else
                                       'estimated %.0f s > %d s' % (forecast, args.baseline_budget))
            row['baseline_estimate_seconds'] = forecast
    finally:
        if not args.keep:
            unmount_below(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    return row


def ratio(row, key):
    base = row.get('baseline')
    return '%.1fx' % (base[key] / row['role'][key]) if base else '-'


def print_table(rows):
    print('\n| Pis | role first s | role re-run s | baseline first s | baseline re-run s | first: baseline/role '
          '| re-run: baseline/role |')
    print('|---|---|---|---|---|---|---|')
    for row in rows:
        base = row.get('baseline')
        if base:
            base_cells = '%.1f | %.1f' % (base['first_seconds'], base['rerun_seconds'])
        else:
            forecast = row.get('baseline_estimate_seconds')
            base_cells = 'not run%s | not run' % (' (est. first+re-run %.0f s)' % forecast if forecast else '')
        print('| %d | %.1f | %.1f | %s | %s | %s |' % (row['pis'], row['role']['first_seconds'],
                                                       row['role']['rerun_seconds'], base_cells,
                                                       ratio(row, 'first_seconds'), ratio(row, 'rerun_seconds')))
    small, large = rows[0], rows[-1]
    if large['pis'] > small['pis']:
        growth = large['role']['rerun_seconds'] / small['role']['rerun_seconds']
        print('\nrole re-run growth %d -> %d Pis: %.2fx (goal < %dx)'
              % (small['pis'], large['pis'], growth, GOAL_GROWTH))
    for row in rows:
        print('floor at %d Pis: an empty play %.1f s, %d no-op tasks %.1f s (the role\'s re-run ran %d tasks in %.1f s)'
              % (row['pis'], row['floor']['empty_seconds'], row['floor']['tasks'], row['floor']['tasks_seconds'],
                 row['floor']['tasks'], row['role']['rerun_seconds']))
    if large['pis'] >= 1000:
        print('role first run of %d Pis: %.1f s (goal <= %d s); re-run: %.1f s (goal <= %d s)' % (
            large['pis'], large['role']['first_seconds'], GOAL_FIRST_SECONDS, large['role']['rerun_seconds'],
            GOAL_RERUN_SECONDS))


def print_tasks(row):
    for label, run in (('baseline', row.get('baseline')), ('role', row['role'])):
        if not run:
            continue
        print('\nper task, %s, %d Pis (s):  first run %.1f / re-run %.1f' % (
            label, row['pis'], run['first_seconds'], run['rerun_seconds']))
        for name in sorted(set(run['first_tasks']) | set(run['rerun_tasks']),
                           key=lambda n: -run['first_tasks'].get(n, 0)):
            print('  %7.1f %7.1f  %s' % (run['first_tasks'].get(name, 0), run['rerun_tasks'].get(name, 0), name))
        print('  %7.1f %7.1f  (outside tasks: start-up, inventory, play)' % (
            run['first_seconds'] - sum(run['first_tasks'].values()),
            run['rerun_seconds'] - sum(run['rerun_tasks'].values())))


def sizes(text):
    return [int(n) for n in text.split(',') if n.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=sizes, default=[10, 100, 1000])
    parser.add_argument('--baseline-sizes', type=sizes, default=None,
                        help='sizes to run the baseline for (default: --sizes, skipping those estimated over '
                             '--baseline-budget); a size named here always runs')
    parser.add_argument('--baseline-budget', type=int, default=900, help='seconds (default 900)')
    parser.add_argument('--collections', default=str(COLLECTIONS),
                        help='ANSIBLE_COLLECTIONS_PATH to run (e.g. a copy of main, to compare a change)')
    parser.add_argument('--keep', action='store_true', help='keep the temp dirs under .build/bench/scale/')
    parser.add_argument('--out', default=str(WORK / 'scale.json'))
    parser.add_argument('--profile-rerun', default=None, metavar='PATH',
                        help='after the re-run, run once more under cProfile (the controller\'s main process), '
                        'statistics to PATH')
    parser.add_argument('--disk', default='120G', help='size of the sparse XFS loop file system the runs use (the '
                        'space check books each root\'s worst case: 60G is too small for 1000 Pis)')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit('bench_scale needs root (the Pi roots keep owners and device nodes)')
    ensure_importable()
    os.environ['ANSIBLE_COLLECTIONS_PATH'] = args.collections
    os.environ['PYTHONPATH'] = args.collections
    image = WORK / 'scale-tiny.img.xz'
    if not image.exists():
        print('building %s (once; cached) ...' % image.name, flush=True)
        build_image(image, profile='tiny', models=(3, 4, 5))
    rows = []
    (WORK / 'scale').mkdir(parents=True, exist_ok=True)
    # A bakery's data disk: XFS, so each Pi's root image is a reflink clone (the roots are file systems
    # of their own, loop-mounted: --keep keeps them mounted until this run ends).
    with loop_fs(WORK / 'scale', 'xfs', args.disk) as scratch:
        for count in sorted(args.sizes):
            rows.append(bench_size(count, image, args, rows, scratch))
            report(rows, args)
    print_table(rows)
    print_tasks(rows[-1])
    return 0


def report(rows, args):
    row = rows[-1]
    print('  role %.1f s, re-run %.1f s; baseline %s' % (
        row['role']['first_seconds'], row['role']['rerun_seconds'],
        '%.1f s, re-run %.1f s' % (row['baseline']['first_seconds'], row['baseline']['rerun_seconds'])
        if row.get('baseline') else 'not run (%s)' % row['baseline_skipped']), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({'collections': args.collections, 'cpus': os.cpu_count(),
                                          'rows': rows}, indent=1) + '\n')


if __name__ == '__main__':
    sys.exit(main())
