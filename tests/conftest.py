# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make the checkout importable (the lab package, and the collection as ansible_collections.pifleet.netboot);
put the tests' own helpers (tests/tools) on the path."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _path in (str(HERE / 'tools'), str(HERE.parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

try:
    from lab import ensure_importable  # the checkout: the lab package beside tests/
except ImportError:  # an installed collection (the tarball has no lab): importable where it is installed
    ensure_importable = None
if ensure_importable is not None:
    ensure_importable()
elif HERE.parents[2].name == 'ansible_collections' and str(HERE.parents[3]) not in sys.path:
    sys.path.insert(0, str(HERE.parents[3]))  # <dir>/ansible_collections/pifleet/netboot/tests
