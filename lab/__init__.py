# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The built-in lab: what `make demo`, the tests, molecule and the benchmarks run on (not part of the collection).

The tests' own helpers stay in tests/tools (module runner, tree and loop-file-system helpers, the
power-device fakes, the raw NFS attack client).

- ``lab.demo``       the main job on the lab (``python -m lab.demo``, what ``make demo`` runs)
- ``lab.nspawnlab``  a bakery in a systemd-nspawn container on a namespace LAN, with a router
- ``lab.nfslab``     namespace LANs, NFS-Ganesha in a namespace, userspace NFS clients, exportfs checks
- ``lab.piimage``    Raspberry Pi OS-like test images in a second, broken variants too
- ``lab.realimage``  real arm64 Raspberry Pi OS-like images (mmdebstrap), cached by recipe
- ``lab.pisim``      the Pi bootloader simulator (DHCP, the TFTP sequence of a Pi 3/4/5, NFS)
- ``lab.qemupi``     a virtual Pi that really boots: qemu + U-Boot on the lab LAN

Run its programs as modules from the checkout (``python -m lab.pisim ...``); ``ensure_importable()``
makes the checkout importable as ``ansible_collections.pifleet.netboot`` and puts the checkout on
PYTHONPATH, for this process and the ones it starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO / '.build' / 'collections'


def ensure_importable():
    link = COLLECTIONS / 'ansible_collections' / 'pifleet' / 'netboot'
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)
    for path in (str(REPO), str(COLLECTIONS)):
        if path not in sys.path:
            sys.path.insert(0, path)
    paths = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    wanted = [p for p in (str(COLLECTIONS), str(REPO)) if p not in paths]
    os.environ['PYTHONPATH'] = os.pathsep.join([*wanted, *paths])
    os.environ['ANSIBLE_COLLECTIONS_PATH'] = str(COLLECTIONS)
