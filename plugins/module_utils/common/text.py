# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Text a Pi wrote, made safe to show: ``--diff`` and ``-v`` output go to an administrator's terminal.

A Pi chooses the bytes of its ``etc/hosts``, ``fstab``, the names of files it leaves in its export;
raw, an ESC sequence in them can rewrite what the terminal shows (hide a line, fake a prompt, set
the window title), a carriage return can draw over the line before it, a bidirectional override can
reorder it. ``printable()`` escapes every character that is not printable, except the line breaks
and tabs a diff needs (``\\x1b``, ``\\x0d``, ``\\u202e``); bytes that were not UTF-8 (read with
``surrogateescape``) show as ``\\xNN``. Backslashes stay as they are (fstab writes ``\\040`` itself).
No AnsibleModule here.
"""

from __future__ import annotations

KEEP = '\n\t'


def _escape(char):
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
        return '\\x%02x' % (code - 0xDC00)
    if code < 0x100:
        return '\\x%02x' % code
    if code < 0x10000:
        return '\\u%04x' % code
    return '\\U%08x' % code


def printable(text, keep=KEEP):
    """``text`` with every non-printable character escaped, except those in ``keep`` (newline and tab).

    Bytes are read as UTF-8 (others as ``\\xNN``); the strings in a mapping or list are escaped; other values
    (None, numbers) are returned as they are.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode('utf-8', errors='surrogateescape')
    if isinstance(text, dict):  # a diff may show a mapping (a summary of a file): its strings, keys included
        return {printable(key, keep): printable(value, keep) for key, value in text.items()}
    if isinstance(text, (list, tuple)):
        return [printable(value, keep) for value in text]
    if not isinstance(text, str) or text.isprintable():
        return text
    return ''.join(char if char.isprintable() or char in keep else _escape(char) for char in text)


def printable_name(text):
    """One name (a file a Pi made) for a message on one line: newlines and tabs escaped too."""
    return printable(text, keep='')
