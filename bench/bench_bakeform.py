# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: bakeform ingest of a ~2 GB xz image, as a ratio to `xz -dc image > /dev/null`.

Both are timed in the same run on the same file (best of --repeat), so the ratio holds across
machines even though the seconds do not. The image is built once by the test-image factory and
cached under .build/bench/. Results are printed and written to .build/bench/bakeform.json.

    python bench/bench_bakeform.py [--image-mb 2000] [--root-files 20000] [--root-mb 600] [--repeat 2]
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

from modrun import run_module  # noqa: E402

from lab.piimage import build_image  # noqa: E402


def timed(func):
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def xz_to_null(path, threads):
    with open(os.devnull, 'wb') as null:
        subprocess.run(['xz', '-dc', '-T%d' % threads, str(path)], stdout=null, check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--image-mb', type=int, default=2000)
    parser.add_argument('--root-files', type=int, default=20000)
    parser.add_argument('--root-mb', type=int, default=600)
    parser.add_argument('--repeat', type=int, default=2)
    args = parser.parse_args(argv)

    work = REPO / '.build' / 'bench'
    work.mkdir(parents=True, exist_ok=True)
    image = work / ('raspios-%dmb-%df-%dmb.img.xz' % (args.image_mb, args.root_files, args.root_mb))
    if not image.exists():
        print('building %s (once; cached) ...' % image.name, flush=True)
        build_image(image, profile='realistic', image_mb=args.image_mb, root_files=args.root_files,
                    root_mb=args.root_mb)
    store = work / 'store'

    def ingest():
        shutil.rmtree(store, ignore_errors=True)
        result = run_module('bakeform', {'name': 'bench', 'src': str(image), 'store': str(store)})
        if result.get('failed') or not result.get('changed'):
            raise SystemExit('ingest failed: %s' % result.get('msg'))
        ingest.manifest = result['manifest']

    def rerun():
        result = run_module('bakeform', {'name': 'bench', 'src': str(image), 'store': str(store)})
        if result.get('changed'):
            raise SystemExit('second run changed something')

    rows = {}
    for label, func in (('xz -dc (default threads)', lambda: xz_to_null(image, 0)),
                        ('xz -dc -T1', lambda: xz_to_null(image, 1)),
                        ('bakeform ingest', ingest),
                        ('bakeform re-run (unchanged)', rerun)):
        rows[label] = min(timed(func) for _attempt in range(args.repeat))
        print('%-30s %8.2f s' % (label, rows[label]), flush=True)
    base = rows['xz -dc (default threads)']
    report = {
        'image': image.name, 'xz_bytes': image.stat().st_size, 'image_bytes': ingest.manifest['image_size'],
        'seconds': rows,
        'ratio_ingest_to_xz': rows['bakeform ingest'] / base,
        'ratio_ingest_to_xz_T1': rows['bakeform ingest'] / rows['xz -dc -T1'],
        'ratio_rerun_to_xz': rows['bakeform re-run (unchanged)'] / base,
    }
    shutil.rmtree(store, ignore_errors=True)
    print('ingest / xz -dc      = %.2f' % report['ratio_ingest_to_xz'])
    print('ingest / xz -dc -T1  = %.2f' % report['ratio_ingest_to_xz_T1'])
    print('re-run / xz -dc      = %.3f' % report['ratio_rerun_to_xz'])
    (work / 'bakeform.json').write_text(json.dumps(report, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
