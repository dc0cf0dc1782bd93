# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: bakeform generations on an XFS store (reflinks), as ratios measured in the same run.

1. Ingesting a new generation against the first ingest of an image of the same size (it should cost the
   same: a generation is a plain ingest beside the others).
2. A capture of a Pi's live root (the real bookworm image's root when it is cached in
   /var/cache/pifleet/realimage, else a realistic factory image): its time, and the disk it costs on XFS
   against a plain copy of the root image.

Results are printed and written to .build/bench/generations.json. Run as root (loop devices, mounts).

    python bench/bench_generations.py [--image-mb 1200] [--root-files 12000] [--root-mb 400] [--repeat 2]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / 'tests' / 'tools')]  # the lab package, the tests' helpers

from fstree import loop_fs, release_below  # noqa: E402
from modrun import ensure_importable, run_module  # noqa: E402

from lab.piimage import build_image  # noqa: E402

ensure_importable()  # pilife reads the collection's paths
from pilife import live_in, mount_like_pi_root  # noqa: E402

REAL = '/var/cache/pifleet/realimage/bookworm-*.img'


def used_bytes(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def bakeform(top, **args):
    result = run_module('bakeform', dict({'store': str(top / 'store'), 'roots_dir': str(top / 'roots'),
                                          'units_dir': str(top / 'units'),
                                          'lock_file': str(top / 'run' / 'lock')}, **args))
    if result.get('failed'):
        raise SystemExit('bakeform failed: %s' % result.get('msg'))
    return result


def timed(func):
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def ingests(top, images, repeat):
    """(first ingest, next generation) seconds, best of ``repeat``, each on a fresh store."""
    first, second = [], []
    for _attempt in range(repeat):
        shutil.rmtree(top / 'store', ignore_errors=True)
        first.append(timed(lambda: bakeform(top, name='bench', src=str(images[0])))[0])
        seconds, result = timed(lambda: bakeform(top, name='bench', src=str(images[1])))
        assert result['generation'] == 2, result
        second.append(seconds)
    shutil.rmtree(top / 'store', ignore_errors=True)
    return min(first), min(second)


def capture(top, image):
    """Ingest ``image``, make a Pi root of it as pi_root does, live in it, capture it: (seconds, extra bytes, root)."""
    one = bakeform(top, name='cap', src=str(image))
    golden = top / 'store/cap/generations' / str(one['generation']) / 'root.img'
    roots = top / 'roots'
    roots.mkdir(mode=0o700, exist_ok=True)
    pi_image = roots / '3a4b5c6d.img'
    subprocess.run(['cp', '--reflink=always', str(golden), str(pi_image)], check=True)
    subprocess.run(['tune2fs', '-U', 'random', str(pi_image)], check=True, capture_output=True)
    point = mount_like_pi_root(roots, '3a4b5c6d', pi_image)
    lived = live_in(point, '3a4b5c6d', 'bench-pi')
    subprocess.run(['sync'], check=True)
    (roots / '3a4b5c6d.json').write_text(json.dumps({
        'serial': '3a4b5c6d', 'hostname': 'bench-pi', 'bakeform': 'cap', 'generation': one['generation'],
        'bakeform_sha256': one['manifest']['sha256'], 'authorized_keys_sha256': lived['authorized_keys_sha256']}))
    before = used_bytes(top)
    seconds, result = timed(lambda: bakeform(top, name='cap', capture={'serial': '3a4b5c6d'}))
    subprocess.run(['sync'], check=True)
    extra = used_bytes(top) - before
    return seconds, extra, pi_image.stat().st_blocks * 512, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--image-mb', type=int, default=1200)
    parser.add_argument('--root-files', type=int, default=12000)
    parser.add_argument('--root-mb', type=int, default=400)
    parser.add_argument('--repeat', type=int, default=2)
    parser.add_argument('--store-size', default='12G')
    args = parser.parse_args(argv)

    work = REPO / '.build' / 'bench'
    work.mkdir(parents=True, exist_ok=True)
    images = []
    for seed in (1, 2):
        image = work / ('generation-%d-%dmb-%df-%dmb.img.xz' % (seed, args.image_mb, args.root_files, args.root_mb))
        if not image.exists():
            print('building %s (once; cached) ...' % image.name, flush=True)
            build_image(image, profile='realistic', image_mb=args.image_mb, root_files=args.root_files,
                        root_mb=args.root_mb, seed=seed)
        images.append(image)
    real = sorted(glob.glob(REAL))
    sample = Path(real[-1]) if real else images[0]

    top_dir = Path(tempfile.mkdtemp(prefix='bench-generations-', dir=work))
    try:
        with loop_fs(top_dir, 'xfs', args.store_size) as top:
            try:
                first, second = ingests(top, images, args.repeat)
                print('first ingest (generation 1)     %8.2f s' % first, flush=True)
                print('next generation (generation 2)  %8.2f s   ratio %.2f' % (second, second / first), flush=True)
                seconds, extra, allocated, result = capture(top, sample)
                print('capture of %s: %.2f s, %.1f MiB more on XFS; a copy of the root image: %.1f MiB (%.1f%%)'
                      % (sample.name, seconds, extra / 2**20, allocated / 2**20, 100.0 * extra / allocated),
                      flush=True)
            finally:
                release_below(top / 'roots')
                release_below(top / 'store')
    finally:
        shutil.rmtree(top_dir, ignore_errors=True)
    report = {'images': [p.name for p in images], 'seconds': {'first_ingest': first, 'next_generation': second},
              'ratio_next_generation_to_first': second / first,
              'capture': {'image': sample.name, 'seconds': seconds, 'extra_bytes': extra,
                          'root_image_allocated_bytes': allocated, 'taken_out': result['capture']['taken_out'],
                          'frozen': result['capture']['frozen']}}
    (work / 'generations.json').write_text(json.dumps(report, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
