# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How Pis are named on the bakery: serials (the default TFTP prefix) and MACs."""

from __future__ import annotations

import re

_SERIAL = re.compile(r'(?:0x)?([0-9a-fA-F]{8}|[0-9a-fA-F]{16})')
_MAC = re.compile(r'([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]'
                  r'([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})')


def normalise_serial(serial):
    """Return the TFTP prefix form of a Pi serial: 8 lower-case hex digits.

    Accepts that form or the 16-digit ``/proc/cpuinfo`` form (``10000000abcdef01``), whose low
    32 bits are the prefix. Raises ValueError saying what is expected.
    """
    text = str(serial).strip()
    match = _SERIAL.fullmatch(text)
    if not match:
        raise ValueError('serial %r is not a Pi serial: give 8 hex digits (the TFTP prefix, e.g. "3a4b5c6d") '
                         'or the 16 digits of /proc/cpuinfo (e.g. "100000003a4b5c6d")' % text)
    return match.group(1)[-8:].lower()


def normalise_mac(mac):
    """Return a MAC as ``dc-a6-32-01-36-c2``, the Pi 4/5 MAC TFTP prefix form."""
    match = _MAC.fullmatch(str(mac).strip())
    if not match:
        raise ValueError('MAC %r is not of the form dc:a6:32:01:36:c2' % mac)
    return '-'.join(group.lower() for group in match.groups())
