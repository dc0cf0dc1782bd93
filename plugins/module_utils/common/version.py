# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's version as modules record it (a unit test keeps it equal to galaxy.yml)."""

from __future__ import annotations

COLLECTION_VERSION = '0.1.0'
