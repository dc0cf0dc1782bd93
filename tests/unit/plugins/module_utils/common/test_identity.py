# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common import identity
from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import normalise_mac, normalise_serial

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


PREFIXES = [
    ('3a4b5c6d', '3a4b5c6d'),
    ('3A4B5C6D', '3a4b5c6d'),
    ('dc-a6-32-01-36-c2', 'dc-a6-32-01-36-c2'),
    ('DC:A6:32:01:36:C2', 'dc-a6-32-01-36-c2'),
    ('lab-rack1.pi_07', 'lab-rack1.pi_07'),       # TFTP_PREFIX_STR kept as given
    ('Rack1', 'Rack1'),
    ('a' * 32, 'a' * 32),
    (12345678, '12345678'),                       # YAML reads an all-digit serial as an int
    ('a' * 33, None),
    ('..', None),
    ('.hidden', None),
    ('../etc', None),
    ('a/b', None),
    ('pi 07', None),
    ('', None),
]


@pytest.mark.parametrize(('given', 'expected'), PREFIXES)
def test_normalise_prefix(given, expected):
    if expected is None:
        with pytest.raises(ValueError, match=r'TFTP prefix .* is not valid'):
            identity.normalise_prefix(given)
    else:
        assert identity.normalise_prefix(given) == expected


@pytest.mark.parametrize('name', ['', 'pi 07', 'pi-07\n[all]', 'pi\t1'])
def test_bad_inventory_names(name):
    with pytest.raises(ValueError, match='Pi name'):
        identity.check_inventory_name(name)


@pytest.mark.parametrize('hostname, ok', [
    ('kitchen', True), ('pi-3a4b5c6d', True), ('rack1.lab', True), ('a' * 63, True),
    ('', False), ('Kitchen', False), ('-pi', False), ('pi-', False), ('a' * 64, False), ('pi_1', False),
    ('a..b', False), ('pi 1', False), ('kitchen\n', False), ('.'.join(['a' * 63] * 4), False),
])
def test_check_host_name(hostname, ok):
    if ok:
        identity.check_host_name(hostname)
    else:
        with pytest.raises(ValueError, match='is not valid: use lower-case letters'):
            identity.check_host_name(hostname)


# The two host name rules differ on purpose (see _identity): a label of either case for the fleet inventory and
# the cloud-init seed, a dotted lower-case name for /etc/hostname and NFS clients.
HOST_NAMES = [
    # (text, RFC 1123 label, dotted host name)
    ('kitchen', True, True),
    ('Kitchen', True, False),
    ('rack1.lab', False, True),
    ('a' * 63, True, True),
    ('a' * 64, False, False),
    ('-pi', False, False),
    ('pi_1', False, False),
    ('', False, False),
]


@pytest.mark.parametrize(('text', 'label', 'name'), HOST_NAMES)
def test_host_label_and_host_name(text, label, name):
    assert identity.is_host_label(text) is label
    assert identity.is_host_name(text) is name


def test_prefix_str_and_folder_prefix_differ_on_a_leading_dot():
    """The fleet takes any TFTP_PREFIX_STR; pi_boot, which makes a folder of it, refuses a hidden one."""
    assert identity.is_prefix_str('.lab')
    with pytest.raises(ValueError):
        identity.normalise_prefix('.lab')
    assert not identity.is_prefix_str('a' * 33)


@pytest.mark.parametrize(('text', 'ok'), [
    ('bookworm-lite', True), ('data.1_x', True), ('9', True),
    ('Data', False), ('-x', False), ('.x', False), ('a/b', False), ('', False), (None, False), (7, False),
])
def test_is_name(text, ok):
    assert identity.is_name(text) is ok


@pytest.mark.parametrize(('text', 'ok'), [
    ('3a4b5c6d', True), ('3A4B5C6D', False), ('3a4b5c6', False), ('100000003a4b5c6d', False),
])
def test_is_serial_takes_the_stored_form_only(text, ok):
    assert identity.is_serial(text) is ok
