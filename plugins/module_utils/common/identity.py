# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How Pis and their things are named: every identity rule of the collection, in one place.

- serial: 8 hex digits (the default TFTP prefix) or the 16 of ``/proc/cpuinfo``; stored as 8
  lower-case hex digits, the form a Pi asks with.
- MAC: with colons or dashes; stored as ``dc-a6-32-01-36-c2``, the form a Pi 4/5 asks with.
- TFTP prefix: a serial, a MAC, or the EEPROM's ``TFTP_PREFIX_STR`` (at most 32 of ``[A-Za-z0-9._-]``).
  Two readings on purpose: the fleet plan takes any such string as ``pi_tftp_prefix``, while pi_boot,
  which makes a folder of it, also refuses a leading ``.`` (a hidden folder it would never sweep).
- host names, two rules on purpose: a host *label* (RFC 1123: one label of letters of either case,
  digits and inner dashes, at most 63) is what the fleet inventory (``pi_hostname``) and the cloud-init
  seed accept; a dotted host *name* (lower-case labels separated by dots, at most 253) is what pi_root
  writes to ``/etc/hostname`` and what nfs_export takes as a client (after lower-casing it). So the
  fleet refuses ``rack1.lab`` that pi_root takes, and pi_root refuses ``Kitchen`` that the fleet takes.
- names of bakeforms and disks: ``[a-z0-9][a-z0-9._-]*``, safe as one path component and in a systemd
  unit name; disks also have a length limit (``disks``), bakeforms none.
- inventory names (pi_boot's ``name``): one word without control characters (they go into config.txt
  comments and the folder marker).
- a prefix seen in the TFTP hook's log: what may become a discovered host's name, nothing more.
"""

from __future__ import annotations

import re

_SERIAL = re.compile(r'(?:0x)?([0-9a-fA-F]{8}|[0-9a-fA-F]{16})')
_MAC = re.compile(r'([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]'
                  r'([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})')
SERIAL_PREFIX = re.compile(r'[0-9a-f]{8}')  # a serial as stored, and as a Pi asks with it
MAC_PREFIX = re.compile(r'[0-9a-f]{2}(?:-[0-9a-f]{2}){5}')  # a MAC as stored, and as a Pi 4/5 asks with it
PREFIX_STR = re.compile(r'[A-Za-z0-9._-]{1,32}')  # the EEPROM's TFTP_PREFIX_STR
# The hook denies traversal, NUL, control characters and over-long names; a logged prefix that becomes a
# host name must still look like a name, so hostile requests never become hosts (see fleet/events).
LOGGED_PREFIX = re.compile(r'[A-Za-z0-9][A-Za-z0-9._:-]{0,63}')
HOST_LABEL = re.compile(r'(?!-)[A-Za-z0-9-]{1,63}(?<!-)')
_LOWER_LABEL = r'[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?'
HOST_NAME = re.compile(r'%s(\.%s)*' % (_LOWER_LABEL, _LOWER_LABEL))
HOST_NAME_MAX = 253
NAME = re.compile(r'[a-z0-9][a-z0-9._-]*')


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


def is_serial(text):
    """True for a serial in its stored form (8 lower-case hex digits)."""
    return SERIAL_PREFIX.fullmatch(text) is not None


def is_prefix_str(text):
    """True for a string the EEPROM takes as ``TFTP_PREFIX_STR`` (the fleet's ``pi_tftp_prefix``)."""
    return PREFIX_STR.fullmatch(text) is not None


def normalise_prefix(prefix):
    """Return the TFTP prefix as the hook's map keys it (and as pi_boot names the Pi's folder).

    A serial (8 hex digits) and a MAC (``dc:a6:32:01:36:c2`` or ``dc-a6-32-01-36-c2``) go lower-case
    in the dash form the bootloader asks with; any other ``TFTP_PREFIX_STR`` not starting with ``.`` (a
    folder name, not a hidden one) is kept as it is. Raises ValueError saying what is expected.
    """
    text = str(prefix).strip()
    if is_serial(text.lower()):
        return text.lower()
    if _MAC.fullmatch(text):
        return normalise_mac(text)
    if is_prefix_str(text) and not text.startswith('.'):
        return text
    raise ValueError(
        'TFTP prefix %r is not valid: give the serial as 8 hex digits ("3a4b5c6d"), the MAC as '
        '"dc-a6-32-01-36-c2", or a custom string of up to 32 letters, digits, ".", "_" and "-" '
        'not starting with "."' % text)


def prefix_kind(prefix):
    """``serial``, ``mac`` or the prefix itself: the ``pi_tftp_prefix`` that makes the hook see a prefix a Pi
    asked with (as logged: a serial is lower-case hex; a MAC is dashed, of either case).

    None when no pi_tftp_prefix would: the fleet accepts 8 hex digits, the Pi's dashed MAC or a
    TFTP_PREFIX_STR (letters, digits, dots, dashes, underscores; at most 32).
    """
    if is_serial(prefix):
        return 'serial'
    if MAC_PREFIX.fullmatch(prefix.lower()):
        return 'mac'
    return prefix if is_prefix_str(prefix) else None


def is_logged_prefix(prefix):
    """True for a prefix from the hook's log that may name a discovered host (see LOGGED_PREFIX)."""
    return LOGGED_PREFIX.fullmatch(prefix) is not None and '..' not in prefix


def is_host_label(text):
    """True for one RFC 1123 label of either case (the fleet's ``pi_hostname``, the cloud-init seed)."""
    return HOST_LABEL.fullmatch(text) is not None


def is_host_name(text):
    """True for a dotted host name of lower-case RFC 1123 labels, at most 253 characters."""
    return bool(text) and len(text) <= HOST_NAME_MAX and HOST_NAME.fullmatch(text) is not None


def check_host_name(hostname):
    """Raise ValueError unless ``hostname`` is a dotted host name (what pi_root writes to /etc/hostname)."""
    if not is_host_name(hostname):
        raise ValueError('hostname %r is not valid: use lower-case letters, digits and "-" (labels of at most 63 '
                         'characters, separated by ".", not starting or ending with "-")' % hostname)


def is_name(text):
    """True for the name of a bakeform or a disk (see NAME; length limits are the caller's)."""
    return isinstance(text, str) and NAME.fullmatch(text) is not None


def check_inventory_name(name):
    """Raise ValueError unless ``name`` is one word without control characters (pi_boot's ``name``)."""
    if not name or any(c.isspace() or ord(c) < 32 for c in name):
        raise ValueError('Pi name %r is not valid: give the inventory name, without spaces or line breaks' % name)
