# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""checksum: the option's two forms, the placeholder refused, and checksum files of every usual shape."""

from __future__ import annotations

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.store import checksum as _checksum
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import IngestError

A, B = 'a' * 64, 'b' * 64
URL = 'https://downloads.example.org/images/2025-05-13-raspios.img.xz.sha256'

PARSE = [
    (None, (None, None)),
    ('', (None, None)),
    ('sha256:' + 'A' * 64, (A, None)),
    (' sha256:' + A + '\n', (A, None)),
    ('sha256:' + URL, (None, URL)),
    ('sha256:http://10.0.0.1:8080/SHA256SUMS', (None, 'http://10.0.0.1:8080/SHA256SUMS')),
]


@pytest.mark.parametrize(('given', 'expected'), PARSE)
def test_parse(given, expected):
    assert _checksum.parse(given) == expected


REFUSED = [
    ('sha256:' + '0' * 64, 'is a placeholder (all zeros)'),
    ('sha256:' + 'a' * 63, 'is not of the form'),
    ('md5:' + 'a' * 32, 'is not of the form'),
    (A, 'is not of the form'),
    ('sha256:', 'is not of the form'),
    ('sha256:www.example.org/x.sha256', 'is not of the form'),
    ('sha256:file:///etc/passwd', 'is not of the form'),
    ('sha256:https://exa mple.org/x', 'is not of the form'),
    ('sha512:' + 'a' * 128, 'is not of the form'),
]


@pytest.mark.parametrize(('given', 'message'), REFUSED)
def test_parse_refuses(given, message):
    with pytest.raises(IngestError, match=message.replace('(', r'\(').replace(')', r'\)')):
        _checksum.parse(given)


def test_the_placeholder_message_says_what_to_put_there():
    with pytest.raises(IngestError) as info:
        _checksum.parse('sha256:' + '0' * 64)
    assert 'put the sha256 published beside the image there' in str(info.value)
    assert 'nothing was fetched or unpacked' in str(info.value)


@pytest.mark.parametrize(('source', 'name'), [
    ('https://h/x/2025-05-13-raspios.img.xz', '2025-05-13-raspios.img.xz'),
    ('https://h/x/a%20b.img.xz?token=1', 'a b.img.xz'),
    ('/var/cache/pifleet/lite.img', 'lite.img'),
])
def test_file_name(source, name):
    assert _checksum.file_name(source) == name


FILES = [
    (A + '\n', A),                                                    # a bare hash
    (A.upper(), A),
    (A + '  lite.img.xz\n', A),                                       # sha256sum
    (B + '  other.img.xz\n' + A + '  lite.img.xz\n', A),
    (B + ' *other.img.xz\n' + A + ' *lite.img.xz\n', A),             # binary mode
    (A + '  ./lite.img.xz\n', A),
    (A + '  images/lite.img.xz\n', A),                               # a path: its last part
    ('# made by the release job\n' + A + '  lite.img.xz\n', A),
    ('SHA256 (other.img.xz) = ' + B + '\nSHA256 (lite.img.xz) = ' + A + '\n', A),  # BSD style
    (A + '  lite.img.xz\r\n', A),
]


@pytest.mark.parametrize(('text', 'expected'), FILES)
def test_from_file(text, expected):
    assert _checksum.from_file(text, 'lite.img.xz', URL) == expected


FILE_REFUSED = [
    ('', 'is empty'),
    (B + '  other.img.xz\n', 'has no line for lite.img.xz'),
    ('<html>Not found</html>', 'has no line for lite.img.xz'),
    (A + '  lite.img.xz\n' + B + '  lite.img.xz\n', 'lists lite.img.xz 2 times with different hashes'),
    ('0' * 64 + '\n', 'all-zero sha256'),
    ('deadbeef  lite.img.xz\n', 'has no line for lite.img.xz'),
]


@pytest.mark.parametrize(('text', 'message'), FILE_REFUSED)
def test_from_file_refuses(text, message):
    with pytest.raises(IngestError, match=message) as info:
        _checksum.from_file(text, 'lite.img.xz', URL)
    assert URL in str(info.value)
