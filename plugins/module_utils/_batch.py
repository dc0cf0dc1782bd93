# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One item or a list of them: how modules the fleet role calls take many Pis in one call.

A module declares its per-item options at the top level *and* as the suboptions of a list
option (``pis:``, ``disks:``, ``exports:``). Top-level values are defaults for every list item.
"""

from __future__ import annotations


def expand(params, list_key, keys):
    """Return the items to converge: the list's entries over top-level defaults, or the top level alone."""
    shared = {key: params.get(key) for key in keys}
    items = params.get(list_key)
    if items is None:
        return [shared]
    expanded = []
    for item in items:
        merged = dict(shared)
        merged.update((key, value) for key, value in item.items() if key in keys and value is not None)
        expanded.append(merged)
    return expanded


def find_duplicates(items, key):
    """Values of ``key`` that occur more than once among ``items``, sorted."""
    seen, dupes = set(), set()
    for item in items:
        value = item.get(key)
        if value in seen:
            dupes.add(value)
        seen.add(value)
    return sorted(dupes, key=str)
