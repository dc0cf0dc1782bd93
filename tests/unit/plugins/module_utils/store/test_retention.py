# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""retention: which generations roots use, which may go, and how the Pis are named when one may not."""

from __future__ import annotations

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as gen
from ansible_collections.pifleet.netboot.plugins.module_utils.store import retention


def index(*shas):
    made = gen.new_index('lite')
    made['generations'] = {str(n): {'sha256': sha} for n, sha in enumerate(shas, 1)}
    return made


def ref(serial, *, bakeform='lite', generation=None, sha256=None, kept='current', hostname=None):
    return {'serial': serial, 'hostname': hostname, 'kept': kept, 'bakeform': bakeform, 'generation': generation,
            'sha256': sha256}


USAGE = [
    ([], {}),
    ([ref('0000000a', generation=2)], {2: ['0000000a']}),
    ([ref('0000000a', generation=9)], {}),                           # a generation that is gone
    ([ref('0000000a', bakeform='other', generation=2)], {}),          # another bakeform's
    ([ref('0000000a', sha256='s1')], {1: ['0000000a']}),              # a marker made before generations
    ([ref('0000000a', sha256='nope')], {}),
    ([ref('0000000a', generation=3, sha256='s1')], {3: ['0000000a']}),  # the generation wins over the content
    ([ref('0000000a', generation=1), ref('0000000a', generation=2, kept='previous'), ref('0000000b', sha256='s2')],
     {1: ['0000000a'], 2: ['0000000a', '0000000b']}),
]


@pytest.mark.parametrize(('refs', 'expected'), USAGE)
def test_usage(refs, expected):
    used = retention.usage('lite', index('s1', 's2', 's3'), refs)
    assert {number: [r['serial'] for r in found] for number, found in used.items()} == expected


# (ids, current, pinned, keep, used, removed)
REMOVABLE = [
    ([1, 2, 3, 4, 5], 5, [], 3, [], [1, 2]),
    ([1, 2, 3, 4, 5], 5, [], 1, [], [1, 2, 3, 4]),
    ([1, 2, 3, 4, 5], 5, [], 1, [1, 3], [2, 4]),
    ([1, 2, 3, 4, 5], 5, [2], 2, [1], [3]),
    ([1, 2, 3, 4, 5], 2, [], 2, [], [1, 3, 4]),       # current set back: it counts, the newest other stays
    ([1, 2, 3], 3, [], 5, [], []),
    ([], None, [], 3, [], []),
    ([4, 7], None, [], 1, [], [4]),                   # no current (a broken index): the newest stays
    ([1, 2, 3], 3, [1, 2], 1, [], []),
]


@pytest.mark.parametrize('case', REMOVABLE)
def test_removable(case):
    ids, current, pinned, keep, used, removed = case
    assert retention.removable(ids, current, pinned, keep, {n: ['x'] for n in used}) == removed


def test_keep_below_one_is_refused():
    with pytest.raises(ValueError, match='keep must be at least 1'):
        retention.removable([1], 1, [], 0, {})


def test_in_use_names_each_pi_and_its_root():
    used = {2: [ref('3a4b5c6d', hostname='pi-01'), ref('0000000a', kept='previous')],
            1: [ref('0000000b', hostname='pi-03', kept='previous')]}
    assert retention.in_use('lite', used) == (
        'lite@1 is used by pi-03 (0000000b, previous root); '
        'lite@2 is used by pi-01 (3a4b5c6d, current root), Pi 0000000a (previous root)')
    many = {1: [ref('%08x' % n) for n in range(25)]}
    assert retention.in_use('lite', many).endswith('Pi 00000013 (current root) and 5 more')
    assert retention.used_by(used[2]) == [{'serial': '3a4b5c6d', 'hostname': 'pi-01', 'root': 'current'},
                                          {'serial': '0000000a', 'hostname': None, 'root': 'previous'}]
