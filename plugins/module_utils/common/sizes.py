# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sizes in bytes: read from what people write (``512M``, ``1.5G``, ``8GiB``) and written back readably."""

from __future__ import annotations

import decimal
import re

MIB = 1024 * 1024
_SIZE_RE = re.compile(r'(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|b)?', re.IGNORECASE)
_UNITS = {None: 0, 'k': 1, 'm': 2, 'g': 3, 't': 4}


class SizeError(ValueError):
    """A value that is not a size; the message says what is accepted."""


def parse_size(value):
    """Bytes of a size given as an int or as ``512M``, ``1.5G``, ``8GiB``…; rounded up to a whole MiB."""
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    elif isinstance(value, str) and _SIZE_RE.fullmatch(value.strip()):
        number, unit = _SIZE_RE.fullmatch(value.strip()).groups()
        exact = decimal.Decimal(number) * (1024 ** _UNITS[unit.lower() if unit else None])
        count = int(exact.to_integral_value(rounding=decimal.ROUND_CEILING))
    else:
        raise SizeError('size %r is not a size: give bytes (an integer) or a number with K, M, G or T '
                        '(binary units, e.g. "512M", "1.5G", "8GiB")' % (value,))
    if count <= 0:
        raise SizeError('size %r is not a size: a disk needs at least 1 MiB' % (value,))
    return -(-count // MIB) * MIB


def human(count):
    """``134217728`` → ``128 MiB (134217728 bytes)``: readable and exact in messages."""
    for unit, power in (('TiB', 4), ('GiB', 3), ('MiB', 2), ('KiB', 1)):
        if count >= 1024 ** power:
            return '%s %s (%d bytes)' % (('%.2f' % (count / 1024 ** power)).rstrip('0').rstrip('.'), unit, count)
    return '%d bytes' % count
