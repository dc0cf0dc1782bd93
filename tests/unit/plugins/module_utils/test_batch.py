# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.pifleet.netboot.plugins.module_utils._batch import expand, find_duplicates


def test_single_item_from_top_level():
    params = {'serial': 'a', 'size': '1G', 'disks': None, 'other': 1}
    assert expand(params, 'disks', ('serial', 'size')) == [{'serial': 'a', 'size': '1G'}]


def test_list_items_override_top_level_defaults():
    params = {'serial': None, 'size': '1G', 'disks': [{'serial': 'a'}, {'serial': 'b', 'size': '2G', 'junk': 1}]}
    assert expand(params, 'disks', ('serial', 'size')) == [
        {'serial': 'a', 'size': '1G'}, {'serial': 'b', 'size': '2G'}]


def test_empty_list_is_no_items():
    assert expand({'disks': [], 'serial': 'a'}, 'disks', ('serial',)) == []


def test_find_duplicates():
    items = [{'k': 1}, {'k': 2}, {'k': 1}, {'k': 3}, {'k': 2}]
    assert find_duplicates(items, 'k') == [1, 2]
    assert find_duplicates([], 'k') == []
