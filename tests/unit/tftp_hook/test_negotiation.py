# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Request parsing, option negotiation and the block counter arithmetic."""

from __future__ import annotations

import pytest

PARSE_OK = [
    (b'\0\1a.bin\0octet\0', (b'a.bin', 'octet', [])),
    (b'\0\1a.bin\0OCTET\0', (b'a.bin', 'octet', [])),
    (b'\0\1a.bin\0NetASCII\0', (b'a.bin', 'netascii', [])),
    (b'\0\1p/s.elf\0octet\0tsize\x000\0BLKSIZE\x001024\0',
     (b'p/s.elf', 'octet', [(b'tsize', b'0'), (b'blksize', b'1024')])),
    (b'\0\1a\0octet\0blksize\0', (b'a', 'octet', [])),  # an option without a value is dropped
    (b'\0\1a\0octet\0x\0\0', (b'a', 'octet', [(b'x', b'')])),
    (b'\0\1\0octet\0', (b'', 'octet', [])),  # empty names are refused later, by validate_name
]

PARSE_ERRORS = [
    (b'\0\1', 'NUL'),
    (b'\0\1a.bin', 'NUL'),
    (b'\0\1a.bin\0octet', 'NUL'),
    (b'\0\1a.bin\0', 'no transfer mode'),
    (b'\0\1a.bin\0mail\0', 'unsupported'),
    (b'\0\1a.bin\0../../secret\0', 'unsupported'),
    (b'\0\1a.bin\0\0', 'unsupported'),
]


@pytest.mark.parametrize(('packet', 'expected'), PARSE_OK)
def test_parse_request(hook, packet, expected):
    assert hook.parse_request(packet) == expected


@pytest.mark.parametrize(('packet', 'why'), PARSE_ERRORS)
def test_parse_request_errors(hook, packet, why):
    with pytest.raises(hook.Malformed, match=why):
        hook.parse_request(packet)


NEGOTIATE = [
    ([], 1468, {}),
    ([(b'blksize', b'1024')], 1468, {b'blksize': 1024}),
    ([(b'blksize', b'1468')], 1024, {b'blksize': 1024}),  # capped to max_blksize
    ([(b'blksize', b'8')], 1468, {b'blksize': 8}),
    ([(b'blksize', b'7')], 1468, {}),
    ([(b'blksize', b'65465')], 65464, {}),
    ([(b'blksize', b'65464')], 65464, {b'blksize': 65464}),
    ([(b'blksize', b'-1')], 1468, {}),
    ([(b'blksize', b'abc')], 1468, {}),
    ([(b'blksize', b'')], 1468, {}),
    ([(b'blksize', b'9' * 600)], 1468, {}),
    ([(b'blksize', b'\xd9\xa1\xd9\xa2')], 1468, {}),  # non-ASCII digits
    ([(b'blksize', b'512'), (b'blksize', b'1024')], 1468, {b'blksize': 512}),
    ([(b'tsize', b'0')], 1468, {b'tsize': 0}),
    ([(b'tsize', b'x')], 1468, {}),
    ([(b'timeout', b'1')], 1468, {b'timeout': 1}),
    ([(b'timeout', b'255')], 1468, {b'timeout': 255}),
    ([(b'timeout', b'0')], 1468, {}),
    ([(b'timeout', b'256')], 1468, {}),
    ([(b'windowsize', b'4')], 1468, {b'windowsize': 4}),
    ([(b'windowsize', b'65535')], 1468, {b'windowsize': 64}),
    ([(b'windowsize', b'0')], 1468, {}),
    ([(b'windowsize', b'65536')], 1468, {}),
    ([(b'multicast', b'1'), (b'foo', b'bar')], 1468, {}),
    ([(b'tsize', b'0'), (b'blksize', b'1024')], 1468, {b'tsize': 0, b'blksize': 1024}),
]


@pytest.mark.parametrize(('options', 'max_blksize', 'expected'), NEGOTIATE)
def test_negotiate(hook, options, max_blksize, expected):
    accepted = hook.negotiate(options, max_blksize)
    assert accepted == expected
    assert list(accepted) == list(expected)  # the OACK keeps the client's order


BLOCKS = [
    (0, 512, 1),  # an empty file is one empty block
    (1, 512, 1),
    (511, 512, 1),
    (512, 512, 2),  # an exact multiple ends with an empty block
    (513, 512, 2),
    (65536 * 512 + 100, 512, 65537),
    (65535 * 512, 512, 65536),
]


@pytest.mark.parametrize(('size', 'blksize', 'count'), BLOCKS)
def test_block_count(hook, size, blksize, count):
    assert hook.block_count(size, blksize) == count


ACKS = [
    # 16-bit ACK, acked, sent -> absolute block or None
    (1, 0, 1, 1),
    (0, 0, 1, None),  # the ACK of the OACK again: a duplicate
    (1, 1, 2, None),  # duplicate
    (2, 1, 2, 2),
    (3, 1, 2, None),  # not sent yet
    (65535, 65534, 65535, 65535),
    (0, 65535, 65536, 65536),  # the wrap: 65535 -> 0
    (1, 65536, 65537, 65537),
    (0, 65536, 65537, None),
    (65535, 65536, 65537, None),  # an old ACK from before the wrap
    (3, 131070, 131074, None),  # beyond the window
    (2, 131070, 131074, 131074),  # windowed, across the second wrap
    (1, 131070, 131074, 131073),  # a partial window
]


@pytest.mark.parametrize(('block', 'acked', 'sent', 'expected'), ACKS)
def test_ack_to_absolute(hook, block, acked, sent, expected):
    assert hook.ack_to_absolute(block, acked, sent) == expected


def test_error_packet(hook):
    assert hook.error_packet(2, 'Access violation') == b'\0\5\0\2Access violation\0'
