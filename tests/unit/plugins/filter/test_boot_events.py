# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot_events_summary filter: event log text -> per-Pi dicts (the parsing itself: test_events.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible.utils import unsafe_proxy

from ansible_collections.pifleet.netboot.plugins.filter.boot_events import FilterModule, boot_events_summary

DOCS = Path(__file__).resolve().parents[4] / 'plugins' / 'filter' / 'boot_events_summary.yml'


def line(seconds, client, request, known=False, outcome='ok'):
    prefix, path = request.split('/', 1) if '/' in request else ('', request)
    return json.dumps({'time': '2026-11-23T10:00:%02d+00:00' % seconds, 'client': client, 'request': request,
                       'prefix': prefix, 'path': path, 'name': None, 'known': known, 'outcome': outcome})


LINES = [line(0, '10.99.40.50', 'bootcode.bin'), line(1, '10.99.40.50', '3a4b5c6d/start.elf', outcome='unknown_prefix'),
         'torn {', line(2, '10.99.40.52', '1234abcd/start4.elf', known=True),
         line(30, '10.99.40.51', 'dc-a6-32-01-36-c2/kernel_2712.img', outcome='not_found')]
TEXT = '\n'.join(LINES) + '\n'


@pytest.mark.parametrize('kwargs, hosts', [
    ({}, ['discovered_serial_3a4b5c6d', 'discovered_mac_dc-a6-32-01-36-c2']),
    ({'include_known': True},
     ['discovered_serial_3a4b5c6d', 'known_serial_1234abcd', 'discovered_mac_dc-a6-32-01-36-c2']),
    ({'since': '2026-11-23T10:00:10+00:00'}, ['discovered_mac_dc-a6-32-01-36-c2']),
    ({'fleet_map': {'version': 1, 'prefixes': {'3a4b5c6d': {'name': 'pi-03', 'dirs': []}}}},
     ['discovered_mac_dc-a6-32-01-36-c2']),
])
def test_summary_options(kwargs, hosts):
    assert [pi['host'] for pi in boot_events_summary(TEXT, **kwargs)] == hosts


def test_summary_values_and_input_forms():
    result = boot_events_summary(TEXT)
    assert result[0]['serial'] == '3a4b5c6d' and result[0]['model'] == 3 and result[0]['requests'] == 2
    assert result[1]['mac'] == 'dc:a6:32:01:36:c2' and result[1]['model'] == 5
    assert result[1]['outcomes'] == {'not_found': 1}
    assert boot_events_summary(LINES) == result
    assert boot_events_summary(TEXT.encode()) == result
    assert boot_events_summary('') == []
    assert FilterModule().filters()['boot_events_summary'] is boot_events_summary


@pytest.mark.parametrize('args, kwargs, message', [
    ((None,), {}, 'expects the event log as text'),
    ((TEXT,), {'fleet_map': '{"prefixes": {}}'}, 'through from_json'),
    ((TEXT,), {'fleet_map': {'prefixes': ['x']}}, 'not a mapping'),
    ((TEXT,), {'since': 'tomorrow'}, 'neither an ISO time'),
])
def test_summary_errors(args, kwargs, message):
    with pytest.raises(AnsibleFilterError, match=message):
        boot_events_summary(*args, **kwargs)


@pytest.mark.skipif(not hasattr(unsafe_proxy.AnsibleUnsafeText('x'), '__UNSAFE__'),
                    reason='ansible-core 2.19+ never templates a string it was not told to trust')
def test_strings_are_unsafe_before_core_2_19():
    """Older cores template any plain string a playbook reuses: everything from the log comes back unsafe."""
    hostile = line(3, '10.99.40.66', "3a4b5c6e/{{ lookup('pipe', 'id') }}", outcome='{{ 7 * 6 }}')
    result = boot_events_summary(TEXT + hostile + '\n')
    strings = [value for pi in result for value in pi.values() if isinstance(value, str)]
    assert strings and all(isinstance(value, unsafe_proxy.AnsibleUnsafe) for value in strings)
    assert next(pi for pi in result if pi['prefix'] == '3a4b5c6e')['last_file'] == "{{ lookup('pipe', 'id') }}"


def test_documentation_matches_the_signature():
    docs = yaml.safe_load(DOCS.read_text())
    options = set(docs['DOCUMENTATION']['options']) - {'_input'}
    assert options == {'fleet_map', 'include_known', 'since', 'dhcp_log', 'utc_offset', 'neighbours', 'known_macs'}
    returned = set(docs['RETURN']['_value']['contains'])
    assert returned == set(boot_events_summary(TEXT)[0])
