# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make the checkout importable as ansible_collections.pifleet.netboot; put tests/tools on the path."""

from __future__ import annotations

import sys
from pathlib import Path

TOOLS = str(Path(__file__).resolve().parent / 'tools')
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

from modrun import ensure_importable  # noqa: E402

ensure_importable()
