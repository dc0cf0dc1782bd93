# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One simulated Pi of the boot storm (run by bench_storm.py inside the Pi's network namespace).

It imports the simulator, prints ``ready`` once it is loaded, waits for one byte on stdin (the start
signal: every Pi starts together, after Python start-up, which would otherwise be timed too), boots
as a Pi 4 from ``--server`` and prints the simulator's JSON report. The simulator shares no code with
the hook: it plays the Pi 4 bootloader (lock-step, one transfer after another, the tsize probes ended
by "Early terminate") and checks every file against its source.

    python bench/storm_client.py --server IP --serial HEX8 --blksize N --expect-dir DIR [--expect-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lab package

from lab import pisim


class Mapped(mmap.mmap):
    """An expected file, mapped rather than read: 200 Pis on one machine share one copy of the boot set."""

    def __eq__(self, other):
        return isinstance(other, (bytes, bytearray)) and len(other) == len(self) and memoryview(self) == other

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = None


def expect_mapped(dirs):
    """expect(request) as pisim.expect_from_dirs (the path after the prefix, first dir that has it), mapped."""
    found = {}

    def expect(request):
        rel = request.split('/', 1)[1] if '/' in request else request
        if rel not in found:
            found[rel] = None
            for folder in dirs:
                path = os.path.join(folder, rel)
                if os.path.isfile(path):
                    with open(path, 'rb') as handle:
                        size = os.fstat(handle.fileno()).st_size
                        found[rel] = Mapped(handle.fileno(), size, access=mmap.ACCESS_READ) if size else b''
                    break
        return found[rel]

    return expect


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--server', required=True)
    parser.add_argument('--serial', required=True)
    parser.add_argument('--blksize', type=int, required=True)
    parser.add_argument('--model', type=int, default=4)
    parser.add_argument('--expect-dir', action='append', required=True)
    args = parser.parse_args()
    expect = expect_mapped(args.expect_dir)
    print('ready', flush=True)
    sys.stdin.read(1)
    report = pisim.boot(args.model, args.server, serial=args.serial, mac='dc:a6:32:00:00:01',
                        prefix='serial', blksize=args.blksize, expect=expect)
    print(json.dumps(report), flush=True)
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
