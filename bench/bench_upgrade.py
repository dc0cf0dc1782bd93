# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: the build phase of an upgrade of N Pis, next to the fleet's first `site` run in the same run.

The fleet of bench_scale.py (N Pis, the tiny factory image) on an XFS loop file system (reflinks, as a
bakery should have): the fleet role's first run on generation 1 is the baseline. A second image becomes
generation 2 (the role again, not timed: site moves no Pi). Then the build phase of an upgrade of every Pi,
as the upgrade playbook runs it for one wave on one bakery: the fleet role's ``tasks_from: rebuild`` with
``fleet_rebuild_generation: 2`` (ONE pi_root call: each current root kept as the previous one, a new root
from generation 2 with the Pi's identity kept; then the exports and the boot folders). The goal: at most
1.5x the first run. Also reported: the extra disk one kept generation costs per Pi (the space used after
the upgrade minus before, per Pi: the new root's blocks beyond the previous one, which stays whole).
Power and the wait for each Pi are not part of the build phase (tests/integration/test_upgrade.py proves
them on simulated Pis). Needs root (loop mounts).

    python bench/bench_upgrade.py [--pis 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / 'bench'), str(REPO / 'tests' / 'tools')]

from bench_scale import WORK, fleet_pis, fresh, play, prepare  # noqa: E402
from fstree import loop_fs, unmount_below  # noqa: E402

from lab import ensure_importable  # noqa: E402
from lab.piimage import build_image  # noqa: E402

GOAL_RATIO = 1.5


def used_bytes(path):
    subprocess.run(['sync'], check=True)
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def use_image(tmp, image):
    inventory = yaml.safe_load((tmp / 'hosts.yml').read_text())
    inventory['bakery']['vars']['pifleet_bakeforms'] = [{'name': 'raspios', 'src': str(image)}]
    (tmp / 'hosts.yml').write_text(yaml.safe_dump(inventory))


def bench(tmp, images, count):
    prepare(tmp, images[1], fleet_pis(count))
    site = tmp / 'play.yml'
    upgrade = tmp / 'upgrade.yml'
    upgrade.write_text(yaml.safe_dump([{'name': 'Upgrade build phase', 'hosts': 'bakery', 'gather_facts': False,
                                        'tasks': [{'name': 'Rebuild every Pi on generation 2, keeping the previous',
                                                   'ansible.builtin.include_role': {
                                                       'name': 'pifleet.netboot.fleet', 'tasks_from': 'rebuild'},
                                                   'vars': {'fleet_rebuild': "{{ groups['pis'] }}",
                                                            'fleet_rebuild_generation': '2'}}]}]))
    first, _counters, _tasks = play(tmp, site, 'site-first')
    use_image(tmp, images[2])
    play(tmp, site, 'site-generation-2')
    before = used_bytes(tmp)
    built, _counters, tasks = play(tmp, upgrade, 'upgrade-build')
    after = used_bytes(tmp)
    markers = [json.loads(p.read_text()) for p in (tmp / 'srv/roots').glob('*.prev.json')]
    current = [json.loads(p.read_text()) for p in (tmp / 'srv/roots').glob('*.json') if '.prev.' not in p.name]
    if len(markers) != count or {m.get('generation') for m in markers} != {1} \
            or {m.get('generation') for m in current} != {2}:
        raise SystemExit('the upgrade did not keep every previous root on generation 1 and build generation 2')
    slowest = sorted(tasks.items(), key=lambda kv: -kv[1])[:8]
    again, counters_again, _tasks = play(tmp, site, 'site-after-upgrade')
    if counters_again.get('changed'):
        raise SystemExit('site after the upgrade changed %d task(s)' % counters_again['changed'])
    return {'pis': count, 'site_first_seconds': first, 'upgrade_build_seconds': built,
            'upgrade_over_site': built / first, 'goal_ratio': GOAL_RATIO, 'site_after_upgrade_seconds': again,
            'extra_bytes_per_pi_per_kept_generation': (after - before) / count,
            'upgrade_tasks': {name: round(seconds, 2) for name, seconds in slowest}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pis', type=int, default=1000)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit('bench_upgrade needs root (loop mounts)')
    ensure_importable()  # ansible-playbook finds the collection (make sets this up too)
    WORK.mkdir(parents=True, exist_ok=True)
    images = {n: WORK / ('upgrade-gen%d.img.xz' % n) for n in (1, 2)}
    for number, path in images.items():
        if not path.exists():
            build_image(path, profile='tiny', seed=70 + number, models=(3, 4, 5))
    started = time.perf_counter()
    with loop_fs(WORK, 'xfs', '%dG' % max(16, 8 + args.pis // 50)) as scratch:
        tmp = fresh(scratch, 'upgrade')
        try:
            row = bench(tmp, images, args.pis)
        finally:
            unmount_below(tmp)
    row['wall_seconds'] = time.perf_counter() - started
    print('%d Pis on XFS: first site %.1f s; upgrade build phase (keep previous + new root, exports, boot folders) '
          '%.1f s = x%.2f (goal <= x%.1f); extra disk per kept generation %.2f MB per Pi'
          % (row['pis'], row['site_first_seconds'], row['upgrade_build_seconds'], row['upgrade_over_site'],
             GOAL_RATIO, row['extra_bytes_per_pi_per_kept_generation'] / 1e6))
    (WORK / 'upgrade.json').write_text(json.dumps(row, indent=2) + '\n')
    return 0 if row['upgrade_over_site'] <= GOAL_RATIO else 1


if __name__ == '__main__':
    sys.exit(main())
