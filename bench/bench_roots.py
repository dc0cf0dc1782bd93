# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: N per-Pi roots (pi_root, one list call) on btrfs, XFS and ext4, against plain `cp -a`.

For each file system (a loop file mounted under .build/bench/roots/): ingest a realistic image
(>= 1 GB root, tens of thousands of files) with bakeform, time ONE plain `cp -a --reflink=never` of
its root tree on the same file system (the baseline, in the same run: what a tool copying trees
pays per Pi), then create N roots with one pi_root call (each a file system image of its own,
mounted) and report time and extra disk used as ratios to N plain copies, and the disk each root
costs as a share of the golden root; time an idempotent re-run; and on btrfs and XFS, N single-Pi
calls against the one list call. Needs root and ~(N+2) x root size of free disk for ext4 (N is
lowered, and said so, when the disk is smaller).

    python bench/bench_roots.py [--roots 50] [--root-files 30000] [--root-mb 1100] [--fs btrfs,xfs,ext4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / 'tests' / 'tools')]  # the lab package, the tests' helpers

from fstree import loop_fs, unmount_below  # noqa: E402
from modrun import ensure_importable, run_module  # noqa: E402

from lab.piimage import build_image  # noqa: E402

ensure_importable()
from ansible_collections.pifleet.netboot.plugins.module_utils.store.generations import Bakeform  # noqa: E402

# Reflink clones share nearly every block: the bench measures clones, not the space policy, so the worst case of
# every root filled may exceed the loop file system sized for what the clones really take.
OVERCOMMIT = 1000.0


def used_bytes(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def timed(func):
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def sync():
    subprocess.run(['sync'], check=True)


def pis(count, prefix):
    return [{'serial': '%s%06x' % (prefix, index), 'hostname': 'pi-%s-%03d' % (prefix, index)}
            for index in range(count)]


def call(pi_list, common):
    result = run_module('pi_root', dict(common, pis=pi_list))
    if result.get('failed'):
        raise SystemExit('pi_root failed: %s' % result.get('msg'))
    return result


def bench_fs(fstype, image, roots, root_bytes, work):
    need = root_bytes * (roots + 3) if fstype == 'ext4' else root_bytes * 4
    work.mkdir(parents=True, exist_ok=True)
    with loop_fs(work, fstype, size=str(need + 2 * 1024 ** 3)) as mnt:
        store, roots_dir = mnt / 'bakeforms', mnt / 'roots'
        lock = str(mnt / 'run' / 'lock')  # a directory of its own: the bakery lock wants it 0700
        ingest = run_module('bakeform', {'name': 'golden', 'src': str(image), 'store': str(store), 'lock_file': lock,
                                         'roots_dir': str(roots_dir), 'units_dir': str(mnt / 'units')})
        if ingest.get('failed'):
            raise SystemExit('bakeform failed: %s' % ingest.get('msg'))
        golden = mnt / 'golden-tree'
        golden.mkdir()
        golden_img = Bakeform(str(store), 'golden').root_image(ingest['generation'])
        subprocess.run(['mount', '-o', 'loop,ro', golden_img, str(golden)], check=True)
        sync()
        before = used_bytes(mnt)
        t_cp, _result = timed(lambda: subprocess.run(['cp', '-a', '--reflink=never', str(golden), str(mnt / 'cp')],
                                                     check=True))
        sync()
        cp_bytes = used_bytes(mnt) - before
        subprocess.run(['umount', str(golden)], check=True)
        shutil.rmtree(mnt / 'cp')
        sync()
        common = {'bakeform': 'golden', 'store': str(store), 'roots_dir': str(roots_dir),
                  'units_dir': str(mnt / 'units'), 'lock_file': lock,
                  'overcommit': OVERCOMMIT}
        before = used_bytes(mnt)
        t_list, result = timed(lambda: call(pis(roots, 'a0'), common))
        sync()
        list_bytes = used_bytes(mnt) - before
        methods = sorted({pi['clone_method'] for pi in result['pis']})
        t_rerun, rerun = timed(lambda: call(pis(roots, 'a0'), common))
        if rerun['changed']:
            raise SystemExit('pi_root re-run changed something on %s' % fstype)
        row = {
            'fs': fstype, 'roots': roots, 'clone_method': methods, 'cp_seconds': t_cp, 'cp_bytes': cp_bytes,
            'list_seconds': t_list, 'list_bytes': list_bytes, 'rerun_seconds': t_rerun,
            'time_ratio': t_list / (roots * t_cp), 'space_ratio': list_bytes / (roots * cp_bytes),
            'bytes_per_root': list_bytes / roots, 'root_share_of_golden': list_bytes / roots / cp_bytes,
        }
        if fstype != 'ext4':
            singles = pis(roots, 'b0')
            t_single, _result = timed(lambda: [call([pi], common) for pi in singles])
            row['single_calls_seconds'] = t_single
            row['single_over_list'] = t_single / t_list
            # The fleet's everyday case: nothing to do. One call per Pi pays Python + module start each time.
            t_single_rerun, _result = timed(lambda: [call([pi], common) for pi in singles])
            row['single_rerun_seconds'] = t_single_rerun
            row['single_rerun_over_list_rerun'] = t_single_rerun / t_rerun
        unmount_below(mnt)
        return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--roots', type=int, default=50)
    parser.add_argument('--root-files', type=int, default=30000)
    parser.add_argument('--root-mb', type=int, default=1100)
    parser.add_argument('--fs', default='btrfs,xfs,ext4')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit('bench_roots needs root (loop mounts)')

    work = REPO / '.build' / 'bench'
    work.mkdir(parents=True, exist_ok=True)
    image = work / ('roots-%df-%dmb.img' % (args.root_files, args.root_mb))
    if not image.exists():
        print('building %s (once; cached) ...' % image.name, flush=True)
        build_image(image, profile='realistic', root_files=args.root_files, root_mb=args.root_mb)
    root_bytes = args.root_mb * 1024 * 1024 * 11 // 10  # content plus inodes and directories
    rows = []
    for fstype in args.fs.split(','):
        roots = args.roots
        if fstype == 'ext4':
            free = shutil.disk_usage(work).free
            fits = int(free * 0.8 // root_bytes) - 3
            if fits < roots:
                print('ext4: only room for %d full copies here, benchmarking %d roots' % (fits, fits), flush=True)
                roots = max(fits, 1)
        print('%s: %d roots ...' % (fstype, roots), flush=True)
        rows.append(bench_fs(fstype, image, roots, root_bytes, work / 'roots'))
        row = rows[-1]
        print('  %-5s %-9s list %7.1f s (x%.3f of %d plain cp -a at %.1f s)  disk %6.0f MB (x%.4f; %.2f%% of the '
              'golden per root)  rerun %.1f s%s'
              % (row['fs'], ','.join(row['clone_method']), row['list_seconds'], row['time_ratio'], row['roots'],
                 row['cp_seconds'], row['list_bytes'] / 1e6, row['space_ratio'], 100 * row['root_share_of_golden'],
                 row['rerun_seconds'],
                 '  singles %.1f s (x%.2f), their re-run %.1f s (x%.1f)'
                 % (row['single_calls_seconds'], row['single_over_list'], row['single_rerun_seconds'],
                    row['single_rerun_over_list_rerun'])
                 if 'single_calls_seconds' in row else ''), flush=True)
    (work / 'roots.json').write_text(json.dumps(rows, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
