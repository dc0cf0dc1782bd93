# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""sizes: what people write as a size, read into bytes, and bytes written back readably; table-driven."""

from __future__ import annotations

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common.sizes import SizeError, human, parse_size

MIB = 1024 * 1024
GIB = 1024 * MIB

SIZES = [
    (1, MIB), (MIB, MIB), (MIB + 1, 2 * MIB), (3 * GIB, 3 * GIB), ('1048576', MIB), ('512M', 512 * MIB),
    ('512m', 512 * MIB), ('512MiB', 512 * MIB), ('512MB', 512 * MIB), ('512 mib', 512 * MIB), ('8G', 8 * GIB),
    ('1.5G', 1536 * MIB), ('.5g', 512 * MIB), ('1.5K', MIB), ('2048K', 2 * MIB), ('1T', 1024 * GIB),
    ('0.001G', 2 * MIB), ('  64M ', 64 * MIB), ('100B', MIB), ('1tib', 1024 * GIB),
]
BAD_SIZES = [0, -5, '0', '0M', '', 'M', 'big', '1.2.3G', '5P', '5X', '-1G', '1e9', '1 G B', True, None, 1.5, [1]]


@pytest.mark.parametrize(('value', 'expected'), SIZES)
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize('value', BAD_SIZES)
def test_parse_size_rejects(value):
    with pytest.raises(SizeError, match='is not a size'):
        parse_size(value)


@pytest.mark.parametrize(('count', 'text'), [
    (512, '512 bytes'), (MIB, '1 MiB (1048576 bytes)'), (1536 * MIB, '1.5 GiB (1610612736 bytes)'),
    (8 * GIB, '8 GiB (8589934592 bytes)')])
def test_human(count, text):
    assert human(count) == text
