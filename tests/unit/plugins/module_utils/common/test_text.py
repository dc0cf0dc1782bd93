# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Text a Pi wrote reaches --diff and -v output with its terminal escapes and other non-printables escaped."""

from __future__ import annotations

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import file_diff
from ansible_collections.pifleet.netboot.plugins.module_utils.common.text import printable, printable_name


@pytest.mark.parametrize('raw, shown', [
    ('127.0.0.1 localhost\n::1\tlocalhost\n', '127.0.0.1 localhost\n::1\tlocalhost\n'),  # as it is
    ('x \x1b]0;owned\x07 \x1b[2J\x1b[1A', 'x \\x1b]0;owned\\x07 \\x1b[2J\\x1b[1A'),  # title, clear, cursor
    ('fake line\rreal', 'fake line\\x0dreal'),  # drawing over the line
    ('abc\u202edcba', 'abc\\u202edcba'),  # a right-to-left override
    ('\x9b31m', '\\x9b31m'),  # the C1 CSI
    ('a\x00b\x7f', 'a\\x00b\\x7f'),
    ('/mnt/a\\040b é ✓', '/mnt/a\\040b é ✓'),  # fstab's own escapes and printable Unicode stay
    (b'bytes \xff\x1b', 'bytes \\xff\\x1b'),  # not UTF-8
    ('😀\U000e0001', '😀\\U000e0001'),
])
def test_printable(raw, shown):
    assert printable(raw) == shown


def test_a_name_on_one_line_escapes_line_breaks_too():
    assert printable_name('evil\nTASK [fake]\t') == 'evil\\x0aTASK [fake]\\x09'


def test_other_values_pass_and_mappings_are_walked():
    assert printable(None) is None and printable(3) == 3
    assert printable({'k\x1b': ['v\x1b', 1]}) == {'k\\x1b': ['v\\x1b', 1]}


def test_every_file_diff_is_printable():
    entry = file_diff('/srv/roots/a/etc/hosts', '127.0.1.1 pi\x1b[8m\n', None)
    assert entry == {'before': '127.0.1.1 pi\\x1b[8m\n', 'after': '', 'before_header': '/srv/roots/a/etc/hosts',
                     'after_header': '/srv/roots/a/etc/hosts'}
