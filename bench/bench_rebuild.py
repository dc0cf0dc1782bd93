# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: rebuilding N Pis on a new generation while keeping their previous roots, against their first clone.

On an XFS loop file system (reflinks, as a bakery should have) holding a store of two generations of a
realistic image: time one pi_root list call that clones N roots from generation 1 (the baseline, in the
same run: what the fleet's first `site` pays), let each Pi write a little (``--pi-mb``), then time one
call that rebuilds all N on generation 2 with ``keep_previous`` (the build phase of an upgrade), and a
rollback of all N. Reports the ratios, and the disk a kept previous root costs per Pi: it shares every
block with its generation's golden root except those the Pi and pi_root's fixes wrote, so after the
rollback (the previous roots are then the unused generation-2 roots, which no Pi wrote to) the space
their removal frees, per Pi, is what keeping one costs beyond what its Pi wrote. Needs root.

    python bench/bench_rebuild.py [--pis 200] [--root-files 20000] [--root-mb 600] [--pi-mb 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / 'tests' / 'tools')]  # the lab package, the tests' helpers

from fstree import loop_fs, unmount_below  # noqa: E402
from genstore import ingest  # noqa: E402
from modrun import ensure_importable, run_module  # noqa: E402

from lab.piimage import build_image  # noqa: E402

ensure_importable()
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import Layout  # noqa: E402

# Every root is a reflink clone that shares nearly all its blocks: the bench measures clones, not the space
# policy, so the worst case of N full roots (and N previous ones) may exceed the small loop file system.
OVERCOMMIT = 1000.0


def used_bytes(path):
    subprocess.run(['sync'], check=True)
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def call(common, pis):
    start = time.perf_counter()
    result = run_module('pi_root', dict(common, pis=pis))
    seconds = time.perf_counter() - start
    if result.get('failed'):
        raise SystemExit('pi_root failed: %s' % result.get('msg'))
    return seconds, result


def bench(image, count, pi_mb, work):
    work.mkdir(parents=True, exist_ok=True)
    with loop_fs(work, 'xfs', size='%dG' % max(8, 4 + count * (pi_mb + 8) // 1024)) as mnt:
        store, roots = mnt / 'store', mnt / 'roots'
        lock = str(mnt / 'run' / 'lock')  # a directory of its own: the bakery lock wants it 0700
        for _generation in (1, 2):
            ingest(store, 'bench', image, lock)
        common = {'bakeform': 'bench', 'store': str(store), 'roots_dir': str(roots), 'units_dir': str(mnt / 'units'),
                  'lock_file': lock, 'overcommit': OVERCOMMIT}
        pis = [{'serial': 'b0%06x' % index, 'hostname': 'bench-%03d' % index} for index in range(count)]
        before = used_bytes(mnt)
        first, result = call(common, [dict(pi, generation=1) for pi in pis])
        methods = sorted({pi['clone_method'] for pi in result['pis']})
        cloned = used_bytes(mnt) - before
        for pi in pis:  # what each Pi wrote on its first generation: kept whole in its previous root
            with open(os.path.join(Layout(str(roots), pi['serial']).point, 'var', 'pi-work.bin'), 'wb') as handle:
                handle.write(os.urandom(pi_mb << 20))
        rebuild, result = call(common, [dict(pi, state='rebuilt', generation=2) for pi in pis])
        assert all(pi['previous']['generation'] == 1 for pi in result['pis'])
        rollback, result = call(common, [dict(pi, state='rolledback') for pi in pis])
        assert all(pi['generation'] == 1 and pi['previous']['generation'] == 2 for pi in result['pis'])
        rerun, result = call(common, [dict(pi, state='rolledback') for pi in pis])
        assert not result['changed']
        before = used_bytes(mnt)
        for pi in pis:  # the previous roots (generation 2, which no Pi wrote to) go: what they cost comes back
            layout = Layout(str(roots), pi['serial'])
            for path in (layout.prev_image, layout.prev_marker):
                os.unlink(path)
        freed = before - used_bytes(mnt)
        unmount_below(mnt)
        return {'pis': count, 'clone_method': methods, 'first_clone_seconds': first, 'rebuild_keep_seconds': rebuild,
                'rollback_seconds': rollback, 'rerun_seconds': rerun, 'rebuild_over_first': rebuild / first,
                'first_clone_bytes_per_pi': cloned / count, 'pi_wrote_bytes_per_pi': pi_mb << 20,
                'previous_root_bytes_per_pi': freed / count}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pis', type=int, default=200)
    parser.add_argument('--root-files', type=int, default=20000)
    parser.add_argument('--root-mb', type=int, default=600)
    parser.add_argument('--pi-mb', type=int, default=4)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit('bench_rebuild needs root (loop mounts)')
    work = REPO / '.build' / 'bench'
    work.mkdir(parents=True, exist_ok=True)
    image = work / ('roots-%df-%dmb.img' % (args.root_files, args.root_mb))
    if not image.exists():
        print('building %s (once; cached) ...' % image.name, flush=True)
        build_image(image, profile='realistic', root_files=args.root_files, root_mb=args.root_mb)
    row = bench(image, args.pis, args.pi_mb, work / 'rebuild')
    print('%d Pis on XFS (%s): first clone %.1f s; rebuild keeping the previous root %.1f s (x%.2f); rollback %.1f s; '
          're-run %.1f s' % (row['pis'], ','.join(row['clone_method']), row['first_clone_seconds'],
                             row['rebuild_keep_seconds'], row['rebuild_over_first'], row['rollback_seconds'],
                             row['rerun_seconds']))
    print('disk per Pi: a first clone %.2f MB; a kept previous root %.2f MB beyond what its Pi wrote (here %.1f MB, '
          'which it keeps whole)' % (row['first_clone_bytes_per_pi'] / 1e6, row['previous_root_bytes_per_pi'] / 1e6,
                                     row['pi_wrote_bytes_per_pi'] / 1e6))
    (work / 'rebuild.json').write_text(json.dumps(row, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
