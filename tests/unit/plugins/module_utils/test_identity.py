# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils._identity import normalise_mac, normalise_serial

SERIALS = [
    ('3a4b5c6d', '3a4b5c6d'),
    ('3A4B5C6D', '3a4b5c6d'),
    ('100000003a4b5c6d', '3a4b5c6d'),   # Pi 4 /proc/cpuinfo form
    ('00000000deadbeef', 'deadbeef'),   # Pi 3
    (' 0x0badc0de ', '0badc0de'),
    (12345678, '12345678'),             # YAML reads an all-digit serial as an int
    ('3a4b5c6', ValueError),
    ('3a4b5c6d0', ValueError),
    ('3a4b5c6g', ValueError),
    ('../../etc', ValueError),
    ('', ValueError),
]


@pytest.mark.parametrize(('given', 'expected'), SERIALS)
def test_normalise_serial(given, expected):
    if expected is ValueError:
        with pytest.raises(ValueError, match='is not a Pi serial'):
            normalise_serial(given)
    else:
        assert normalise_serial(given) == expected


MACS = [
    ('DC:A6:32:01:36:C2', 'dc-a6-32-01-36-c2'),
    ('dc-a6-32-01-36-c2', 'dc-a6-32-01-36-c2'),
    ('dc:a6:32:01:36', ValueError),
    ('dc:a6:32:01:36:c2:00', ValueError),
    ('zz:a6:32:01:36:c2', ValueError),
]


@pytest.mark.parametrize(('given', 'expected'), MACS)
def test_normalise_mac(given, expected):
    if expected is ValueError:
        with pytest.raises(ValueError, match='is not of the form'):
            normalise_mac(given)
    else:
        assert normalise_mac(given) == expected
