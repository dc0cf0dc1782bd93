# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make the checkout importable as ansible_collections.pifleet.netboot wherever it sits."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / '.build' / 'collections'
LINK = COLLECTIONS / 'ansible_collections' / 'pifleet' / 'netboot'
TOOLS = REPO / 'tests' / 'tools'

if not LINK.is_symlink():
    LINK.parent.mkdir(parents=True, exist_ok=True)
    LINK.symlink_to(REPO)
for path in (str(COLLECTIONS), str(TOOLS)):
    if path not in sys.path:
        sys.path.insert(0, path)
# Child processes (modules run for real, helpers) see the same collection.
os.environ['PYTHONPATH'] = os.pathsep.join(p for p in (str(COLLECTIONS), os.environ.get('PYTHONPATH')) if p)
os.environ['ANSIBLE_COLLECTIONS_PATH'] = str(COLLECTIONS)
