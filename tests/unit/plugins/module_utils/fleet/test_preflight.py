# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""preflight: the fleet role's line before the roots are made, from check-mode results of pi_root and pi_disk."""

from __future__ import annotations

import pytest

from ansible_collections.pifleet.netboot.plugins.filter.fleet_preflight import fleet_preflight, fleet_preflight_items
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.preflight import preflight, to_make

GIB = 1 << 30


def fs(mount='/srv/pifleet', claimed=0, committed=100 * GIB, **more):
    return dict({'mount': mount, 'fstype': 'xfs', 'reflink': True, 'size': 1000 * GIB, 'free': 600 * GIB,
                 'committed': committed, 'claimed': claimed, 'limit': 980 * GIB}, **more)


ROOTS = {'changed': True, 'pis': [
    {'serial': '0000000a', 'action': 'cloned', 'clone_method': 'reflink'},
    {'serial': '0000000b', 'action': 'cloned', 'clone_method': 'reflink'},
    {'serial': '0000000c', 'action': 'rebuilt', 'clone_method': 'reflink'},
    {'serial': '0000000d', 'action': 'unchanged', 'clone_method': 'copy'}],  # not made: its method is not this run's
    'failed_pis': [], 'planned_space': [fs(claimed=12 * GIB)]}
DISKS = {'changed': True, 'pis': [{'serial': '0000000a', 'action': 'created'},
                                  {'serial': '0000000b', 'action': 'grown'},
                                  {'serial': '0000000c', 'action': 'unchanged'}],
         'failed_pis': [], 'planned_space': [fs(claimed=20 * GIB)]}


@pytest.mark.parametrize('roots, disks, expected', [
    (ROOTS, DISKS,
     'Pre-flight: 3 roots to make (2 new, 1 rebuilt) by reflink; 2 disks file systems (1 new, 1 grown). '
     '/srv/pifleet (xfs): they need 32 GiB at most (their full sizes); 132 GiB with every Pi image full, of 980 GiB '
     'allowed; 600 GiB free now'),
    # reimage: no disks step; one root, copied, on a file system without reflink
    (dict(ROOTS, pis=[{'serial': '0000000c', 'action': 'rebuilt', 'clone_method': 'copy'}],
          planned_space=[fs(claimed=4 * GIB, fstype='ext4', reflink=False)]), None,
     'Pre-flight: 1 root to make (1 rebuilt) by copy. /srv/pifleet (ext4): they need 4 GiB at most (their full '
     'sizes); 104 GiB with every Pi image full, of 980 GiB allowed; 600 GiB free now'),
    # roots and disks on file systems of their own; each passes alone, together they do not fit one of them
    (dict(ROOTS, planned_space=[fs(claimed=500 * GIB, committed=400 * GIB)]),
     dict(DISKS, planned_space=[fs(claimed=90 * GIB, committed=400 * GIB), fs('/srv/disks', claimed=GIB // 2)]),
     'Pre-flight: 3 roots to make (2 new, 1 rebuilt) by reflink; 2 disks file systems (1 new, 1 grown). '
     '/srv/disks (xfs): they need 512 MiB at most (their full sizes); 100.5 GiB with every Pi image full, of 980 GiB '
     'allowed; 600 GiB free now. /srv/pifleet (xfs): they need 590 GiB at most (their full sizes); 990 GiB with '
     'every Pi image full, of 980 GiB allowed; 600 GiB free now (NOT ENOUGH)'),
    # a Pi whose root would not fit: the ledger refused it (no claim), it is named
    (dict(ROOTS, pis=[*ROOTS['pis'][:1], {'serial': '0000000b', 'action': 'failed', 'msg': 'not enough space'}],
          failed_pis=[{'serial': '0000000b', 'hostname': 'pi-b', 'msg': 'not enough space on /srv/pifleet ...'}],
          planned_space=[fs(claimed=4 * GIB)]), {'skipped': True, 'changed': False},
     'Pre-flight: 1 root to make (1 new) by reflink. /srv/pifleet (xfs): they need 4 GiB at most (their full '
     'sizes); 104 GiB with every Pi image full, of 980 GiB allowed; 600 GiB free now. 1 Pi would fail (0000000b): '
     'the run names why'),
    ({'changed': False, 'pis': [{'serial': '0000000d', 'action': 'unchanged'}], 'planned_space': []}, None,
     'Pre-flight: no root or disks file system to make'),
    ({'failed': True, 'msg': 'another pifleet run holds the lock', 'pis': [], 'failed_pis': []}, None,
     'Pre-flight: pi_root could not plan (another pifleet run holds the lock); the run below says more'),
])
def test_preflight_line(roots, disks, expected):
    assert preflight(roots, disks) == expected


def test_the_filter_gives_the_line():
    assert fleet_preflight(ROOTS, DISKS) == preflight(ROOTS, DISKS)


ITEMS = [{'serial': '0000000a', 'hostname': 'pi-a'},  # has a root: not made
         {'serial': '0000000b', 'hostname': 'pi-b'},  # new
         {'serial': '0000000c', 'hostname': 'pi-c', 'state': 'rebuilt'},  # has a root, rebuilt
         {'serial': '0000000d', 'hostname': 'pi-d', 'state': 'rolledback'},  # back to its previous root: not made
         {'serial': '0000000e', 'hostname': 'pi-e'}]  # new
BEFORE = {'0000000a': {'generation': 1}, '0000000c': {'generation': 1}, '0000000d': {'generation': 2}}


@pytest.mark.parametrize('items, before, expected', [
    # rebuilt first, then the new ones, each in the plan's order
    (ITEMS, BEFORE, ['0000000c', '0000000b', '0000000e']),
    # a fresh bakery: every Pi without a state is new; a rolled-back one still makes nothing
    (ITEMS, None, ['0000000c', '0000000a', '0000000b', '0000000e']),
    # a re-run: every root is there
    (ITEMS[:2], {'0000000a': {}, '0000000b': {}}, []),
    # disks items (no state): the disks of the Pis whose roots are new
    ([{'serial': '0000000a', 'name': 'data'}, {'serial': '0000000b', 'name': 'data'}], BEFORE, ['0000000b']),
    (None, BEFORE, []),
])
def test_the_items_of_the_pis_whose_roots_this_run_makes(items, before, expected):
    assert [item['serial'] for item in to_make(items, before)] == expected
    assert fleet_preflight_items(items, before) == to_make(items, before)


def test_the_items_are_handed_on_unchanged():
    assert to_make(ITEMS, BEFORE)[0] is ITEMS[2]
