# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Table-driven tests of the boot event log parser and per-Pi summary."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import events as ev

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def event(seconds, client, request, known=False, outcome='ok', *, name=None):
    """One event as the hook writes it (boot_spec "EVENT LINE"), ``seconds`` after T0."""
    prefix, path = request.split('/', 1) if '/' in request else ('', request)
    return {'time': (T0 + timedelta(seconds=seconds)).isoformat(), 'client': client, 'port': 49152,
            'server': '10.99.40.2', 'request': request, 'prefix': prefix, 'path': path, 'name': name,
            'known': known, 'source': None, 'outcome': outcome, 'bytes': 0, 'size': None, 'blksize': 512,
            'windowsize': 1, 'tsize': False, 'duration': 0.01, 'retransmits': 0, 'error': None}


def log(*events):
    return ''.join(json.dumps(item) + '\n' for item in events)


def summaries(*events, **kwargs):
    parsed, malformed = ev.parse_events(log(*events))
    assert malformed == 0
    return {item['host']: item for item in ev.summarise(parsed, **kwargs)}


@pytest.mark.parametrize('text, expected', [
    ('2026-11-23T10:00:00.123456+00:00', datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=timezone.utc)),
    ('2026-11-23T10:00:00Z', T0),
    ('2026-11-23T10:00:00', T0),  # naive: UTC
    ('2026-11-23T11:00:00+01:00', T0),
])
def test_parse_time(text, expected):
    assert ev.parse_time(text) == expected


@pytest.mark.parametrize('text', ['', 'yesterday', None, 12, '2026-13-01T00:00:00'])
def test_parse_time_rejects(text):
    with pytest.raises((ValueError, TypeError)):
        ev.parse_time(text)


@pytest.mark.parametrize('text, expected', [
    ('30s', T0 - timedelta(seconds=30)),
    ('15m', T0 - timedelta(minutes=15)),
    ('24h', T0 - timedelta(hours=24)),
    (' 7d ', T0 - timedelta(days=7)),
    ('2w', T0 - timedelta(weeks=2)),
    ('2026-11-22T10:00:00+00:00', T0 - timedelta(days=1)),
])
def test_parse_since(text, expected):
    assert ev.parse_since(text, now=T0) == expected


@pytest.mark.parametrize('text', ['7 days', '-1d', 'h', 'soon'])
def test_parse_since_rejects(text):
    with pytest.raises(ValueError, match='neither an ISO time'):
        ev.parse_since(text, now=T0)


@pytest.mark.parametrize('data, max_bytes, expected', [
    (b'a\nb\n', None, b'a\nb\n'),                # no limit
    (b'a\nb\n', 4, b'a\nb\n'),                   # the whole file fits
    (b'xa\nb\n', 4, b'b\n'),                     # 5 = max+1 bytes read: 'xa' was cut, skip it
    (b'\nab\nc\n', 5, b'ab\nc\n'),               # the window starts on a line: keep that line
    (b'xxxxx', 4, b''),                          # no newline: nothing whole
    ('xa\nb\n', 4, 'b\n'),                       # text works too
])
def test_tail_window(data, max_bytes, expected):
    assert ev.tail_window(data, max_bytes) == expected


GOOD = json.dumps(event(0, '10.99.40.50', '1234abcd/start4.elf'))


@pytest.mark.parametrize('text, count, malformed', [
    (GOOD + '\n' + GOOD + '\n', 2, 0),
    (GOOD + '\n\n   \n', 1, 0),                                        # blank lines are not damage
    ('not json\n' + GOOD + '\n', 1, 1),
    ('[1, 2]\n"text"\n' + GOOD + '\n', 1, 2),                          # not objects
    (json.dumps({'client': '10.0.0.1', 'request': 'a/b'}) + '\n', 0, 1),  # no time
    (json.dumps({'time': 'later', 'request': 'a/b'}) + '\n', 0, 1),    # bad time
    (json.dumps({'time': T0.isoformat(), 'request': 5}) + '\n', 0, 1),  # request not a string
    (json.dumps(dict(json.loads(GOOD), client='{{ 1 }}')) + '\n', 0, 1),  # the hook logs an IP address
    (json.dumps(dict(json.loads(GOOD), client=None)) + '\n', 0, 1),
    (json.dumps(dict(json.loads(GOOD), client='fe80::1%eth0')) + '\n', 0, 1),
    (GOOD + '\n' + GOOD[:40], 1, 0),                                   # write in progress: dropped, not counted
    (GOOD + '\n' + GOOD, 2, 0),                                        # unterminated but whole: kept
    (GOOD[:40] + '\n' + GOOD + '\n', 1, 1),
    ((GOOD + '\n').encode(), 1, 0),
    (b'\xff\xfe\n' + (GOOD + '\n').encode(), 1, 1),
])
def test_parse_events(text, count, malformed):
    events, bad = ev.parse_events(text)
    assert (len(events), bad) == (count, malformed)
    assert all(item['_time'] == T0 for item in events)


def test_parse_event_derives_a_missing_prefix_from_the_request():
    base = {'time': T0.isoformat(), 'client': '10.99.40.50'}
    parsed = ev.parse_event(json.dumps(dict(base, request='dc-a6-32-01-36-c2/config.txt')))
    assert parsed['prefix'] == 'dc-a6-32-01-36-c2'
    assert ev.parse_event(json.dumps(dict(base, request='bootcode.bin')))['prefix'] == ''


def test_parse_event_keeps_the_canonical_address():
    assert ev.parse_event(json.dumps({'time': T0.isoformat(), 'client': 'FD00:0::50'}))['client'] == 'fd00::50'


@pytest.mark.parametrize('paths, model', [
    (['bootcode.bin', 'bootsig.bin', 'start.elf'], 3),
    (['config.txt', 'start4.elf', 'fixup4.dat'], 4),
    (['config.txt', 'bcm2711-rpi-4-b.dtb'], 4),
    (['config.txt', 'cmdline.txt', 'kernel_2712.img'], 5),
    (['bcm2712-rpi-5-b.dtb'], 5),
    (['START.ELF'], 3),
    (['config.txt', 'cmdline.txt', 'kernel8.img'], None),
    (['sub/start4.elf'], 4),
    (['start.elf.bak', 'xstart4.elf'], None),
    ([], None),
])
def test_guess_model(paths, model):
    assert ev.guess_model(paths) == model


@pytest.mark.parametrize('prefix, kind, mac_any, mac_pi3', [
    ('1234abcd', 'serial', None, 'b8:27:eb:34:ab:cd'),
    ('dc-a6-32-01-36-c2', 'mac', 'dc:a6:32:01:36:c2', 'dc:a6:32:01:36:c2'),
    ('DC-A6-32-01-36-C2', 'mac', 'dc:a6:32:01:36:c2', 'dc:a6:32:01:36:c2'),
    ('rack1-node3', 'rack1-node3', None, None),
    ('rack_1.node-3', 'rack_1.node-3', None, None),
    ('1234abcde', '1234abcde', None, None),
    ('1234ABCD', '1234ABCD', None, None),  # the firmware sends lower-case hex: a custom string
    ('bbbb2222.', 'bbbb2222.', None, None),
    # Not what a Pi asks for, and not a pi_tftp_prefix the fleet accepts: no kind, no MAC.
    ('dc:a6:32:01:36:c2', None, None, None),
    ('a:b', None, None, None),
    ('x' * 33, None, None, None),
])
def test_prefix_kind_and_mac(prefix, kind, mac_any, mac_pi3):
    assert ev.prefix_kind(prefix) == kind
    assert ev.mac_from_prefix(prefix, model=4) == mac_any
    assert ev.mac_from_prefix(prefix, model=3) == mac_pi3


@pytest.mark.parametrize('prefix, client, known, name', [
    ('1234abcd', '10.0.0.1', False, 'discovered_serial_1234abcd'),
    ('dc-a6-32-01-36-c2', '10.0.0.1', False, 'discovered_mac_dc-a6-32-01-36-c2'),
    ('DC-A6-32-01-36-C2', '10.0.0.1', True, 'known_mac_dc-a6-32-01-36-c2'),
    ('1234ABCD', '10.0.0.1', False, 'discovered_serial_1234abcd'),  # the same key as 1234abcd: the same Pi
    ('bbbb2222.', '10.0.0.1', False, 'discovered_prefix_bbbb2222_' + sha(b'bbbb2222.')[:12]),
    ('Rack1_Node.3', '10.0.0.1', False, 'discovered_prefix_rack1-node-3_' + sha(b'rack1_node.3')[:12]),
    ('', '10.99.40.53', False, 'discovered_ip_10-99-40-53'),
    ('', 'fd00::50', False, 'discovered_ip_fd00--50'),
])
def test_host_name(prefix, client, known, name):
    assert ev.host_name(prefix, client, known) == name


def test_host_names_are_one_per_prefix_and_never_a_fleet_name():
    """Prefixes that sanitise alike get different names; none is an RFC 1123 label (a fleet host name)."""
    prefixes = ['bbbb2222', 'bbbb2222.', 'bbbb2222-', 'bbbb2222:', 'bbbb2222_', 'b.bbb2222', 'dc-a6-32-01-36-c2',
                'dc-a6-32-01-36-c2.', 'x', 'x.', '-x', 'rack.1', 'rack-1', 'rack:1', 'rack_1']
    names = [ev.host_name(prefix, '10.0.0.1') for prefix in prefixes] + [ev.host_name('', '10.0.0.1')]
    assert len(set(names)) == len(names)
    assert not any(re.fullmatch(r'(?!-)[A-Za-z0-9-]{1,63}(?<!-)', name) for name in names)


@pytest.mark.parametrize('prefix, name', [
    ('1234abcd', 'pi-1234abcd'),
    ('DC-A6-32-01-36-C2', 'pi-dc-a6-32-01-36-c2'),
    ('lab-x', 'pi-lab-x-' + sha(b'lab-x')[:8]),
    ('bbbb2222.', 'pi-bbbb2222-' + sha(b'bbbb2222.')[:8]),
    ('a:b', None),        # no pi_tftp_prefix makes a Pi ask for it
    ('', None),           # root requests only: nothing to declare the Pi by
])
def test_suggested_name(prefix, name):
    assert ev.suggested_name(prefix) == name


def test_known_prefixes_lower_cases_and_rejects_a_bad_map():
    fleet_map = {'version': 1, 'prefixes': {'1234ABCD': {'name': 'pi-01', 'dirs': []}, 'x': None}}
    assert ev.known_prefixes(fleet_map) == {'1234abcd': 'pi-01', 'x': None}
    assert ev.known_prefixes(None) == {}
    with pytest.raises(ValueError, match='not a mapping'):
        ev.known_prefixes({'prefixes': ['1234abcd']})


PI3_BOOT = [event(0, '10.99.40.50', 'bootcode.bin'), event(1, '10.99.40.50', 'bootsig.bin', outcome='not_found'),
            event(2, '10.99.40.50', '3a4b5c6d/start.elf', outcome='unknown_prefix')]


def test_pi3_root_requests_join_the_prefix_that_follows():
    pis = summaries(*PI3_BOOT)
    assert list(pis) == ['discovered_serial_3a4b5c6d']
    pi = pis['discovered_serial_3a4b5c6d']
    assert (pi['serial'], pi['mac'], pi['model'], pi['tftp_prefix']) == ('3a4b5c6d', 'b8:27:eb:4b:5c:6d', 3, 'serial')
    assert (pi['requests'], pi['first_seen'], pi['last_file']) == (3, PI3_BOOT[0]['time'], 'start.elf')
    assert pi['outcomes'] == {'ok': 1, 'not_found': 1, 'unknown_prefix': 1}


def test_root_requests_nobody_followed_make_an_address_host():
    pis = summaries(event(0, '10.99.40.60', 'bootcode.bin'), event(5, '10.99.40.61', 'abcdef01/start.elf'))
    assert sorted(pis) == ['discovered_ip_10-99-40-60', 'discovered_serial_abcdef01']
    lone = pis['discovered_ip_10-99-40-60']
    assert (lone['prefix'], lone['tftp_prefix'], lone['serial'], lone['mac']) == ('', None, None, None)
    assert lone['model'] == 3 and lone['suggested_name'] is None and lone['pi_vars'] == {'pi_model': 3}
    pi = pis['discovered_serial_abcdef01']
    assert pi['model'] == 3 and pi['requests'] == 1 and pi['suggested_name'] == 'pi-abcdef01'


def test_root_requests_of_a_known_pi_are_not_discovered():
    pis = summaries(event(0, '10.99.40.50', 'bootcode.bin'),
                    event(1, '10.99.40.50', '3a4b5c6d/start.elf', known=True, name='pi-03'))
    assert pis == {}


def test_known_from_the_hook_or_the_map_and_include_known():
    events = [event(0, '10.99.40.50', '1234abcd/start4.elf', known=True, name='pi-01'),
              event(1, '10.99.40.51', 'DC-A6-32-01-36-C2/config.txt'),
              event(2, '10.99.40.52', 'feedbeef/kernel_2712.img', outcome='not_found')]
    fleet_map = {'version': 1, 'prefixes': {'dc-a6-32-01-36-c2': {'name': 'pi-02', 'dirs': []}}}
    assert list(summaries(*events, fleet_map=fleet_map)) == ['discovered_serial_feedbeef']
    both = summaries(*events, fleet_map=fleet_map, include_known=True)
    # Known Pis keep names of their own: a device may use a known prefix from any address.
    assert sorted(both) == ['discovered_serial_feedbeef', 'known_mac_dc-a6-32-01-36-c2', 'known_serial_1234abcd']
    pi02 = both['known_mac_dc-a6-32-01-36-c2']
    assert pi02['known'] and pi02['name'] == 'pi-02' and pi02['mac'] == 'dc:a6:32:01:36:c2'
    assert pi02['suggested_name'] is None  # already in the fleet
    assert both['known_serial_1234abcd']['name'] == 'pi-01'
    assert not both['discovered_serial_feedbeef']['known'] and both['discovered_serial_feedbeef']['model'] == 5
    assert list(summaries(*events)) == ['discovered_mac_dc-a6-32-01-36-c2', 'discovered_serial_feedbeef']


def test_since_and_denied_and_hostile_prefixes():
    events = [event(0, '10.99.40.50', '11111111/start4.elf'),
              event(100, '10.99.40.51', '22222222/start4.elf'),
              event(101, '10.99.40.66', '../etc/passwd', outcome='denied'),
              event(102, '10.99.40.66', '33333333/x', outcome='denied'),
              event(103, '10.99.40.66', '-rf/x', outcome='not_found'),
              event(104, '10.99.40.66', 'a..b/x', outcome='not_found'),
              event(105, '10.99.40.66', ('z' * 65) + '/x', outcome='not_found'),
              dict(event(106, '10.99.40.67', '', outcome='suppressed'), dropped={'denied': 500})]
    assert list(summaries(*events)) == ['discovered_serial_11111111', 'discovered_serial_22222222']
    assert list(summaries(*events, since=T0 + timedelta(seconds=50))) == ['discovered_serial_22222222']


def test_last_values_follow_time_not_file_order():
    # The hook logs at the end of a transfer: a long transfer can land after a later short one.
    pis = summaries(event(10, '10.99.40.51', '1234abcd/config.txt'),
                    event(5, '10.99.40.50', '1234abcd/start4.elf', outcome='probe'))
    pi = pis['discovered_serial_1234abcd']
    assert (pi['address'], pi['last_file'], pi['last_outcome']) == ('10.99.40.51', 'config.txt', 'ok')
    assert pi['first_seen'] < pi['last_seen']


def test_names_do_not_depend_on_who_came_first():
    """A device cannot take a Pi's name by asking first under a prefix that sanitises alike."""
    real = event(5, '10.99.40.50', 'bbbb2222/start4.elf')
    rivals = [event(0, '10.99.40.66', 'bbbb2222./start4.elf'), event(1, '10.99.40.66', 'bbbb2222-/start4.elf'),
              event(2, '10.99.40.66', 'BBBB2222:/start4.elf')]
    first = summaries(*rivals, real)
    assert summaries(real, *rivals).keys() == first.keys()
    assert len(first) == 4
    assert first['discovered_serial_bbbb2222']['address'] == '10.99.40.50'
    assert len({pi['suggested_name'] for pi in first.values()} - {None}) == 3  # BBBB2222: is no pi_tftp_prefix
    assert first[ev.host_name('BBBB2222:', '')]['suggested_name'] is None


def test_host_vars_use_inventory_names_and_omit_unknowns():
    pis = summaries(*PI3_BOOT, event(9, '10.99.40.70', 'bootcode.bin'), event(10, '10.99.40.71', 'lab-x/kernel8.img'),
                    event(11, '10.99.40.72', 'a:b/kernel8.img'))
    assert ev.host_vars(pis['discovered_serial_3a4b5c6d']) == {
        'pi_serial': '3a4b5c6d', 'pi_mac': 'b8:27:eb:4b:5c:6d', 'pi_tftp_prefix': 'serial', 'pi_model': 3,
        'pifleet_prefix': '3a4b5c6d', 'pifleet_known': False, 'pifleet_address': '10.99.40.50',
        'pifleet_first_seen': PI3_BOOT[0]['time'], 'pifleet_last_seen': PI3_BOOT[2]['time'],
        'pifleet_requests': 3, 'pifleet_last_file': 'start.elf', 'pifleet_last_outcome': 'unknown_prefix'}
    assert pis['discovered_serial_3a4b5c6d']['pi_vars'] == {'pi_serial': '3a4b5c6d', 'pi_mac': 'b8:27:eb:4b:5c:6d',
                                                            'pi_model': 3}
    assert set(ev.host_vars(pis['discovered_ip_10-99-40-70'])) == {
        'pi_model', 'pifleet_known', 'pifleet_address', 'pifleet_first_seen', 'pifleet_last_seen',
        'pifleet_requests', 'pifleet_last_file', 'pifleet_last_outcome'}
    custom = ev.host_vars(pis[ev.host_name('lab-x', '')])
    assert custom['pi_tftp_prefix'] == 'lab-x' and 'pi_model' not in custom and 'pi_serial' not in custom
    # A prefix no pi_tftp_prefix can name gives no pi_* variable at all: only what the log said.
    odd = ev.host_vars(pis[ev.host_name('a:b', '')])
    assert not [key for key in odd if key.startswith('pi_')] and odd['pifleet_prefix'] == 'a:b'


def test_times_are_rendered_from_the_parsed_time():
    pis = summaries(dict(event(0, '10.99.40.50', '1234abcd/x'), time='2026-11-23T11:00:00+01:00'))
    assert pis['discovered_serial_1234abcd']['first_seen'] == T0.isoformat()


def test_variables_follow_the_prefix_as_the_hook_matches_it():
    """The hook matches prefixes regardless of case: the casing a device asked with first changes nothing."""
    upper = summaries(event(0, '10.99.40.50', 'ABCD1234/start4.elf'), event(1, '10.99.40.50', 'abcd1234/config.txt'))
    lower = summaries(event(0, '10.99.40.50', 'abcd1234/start4.elf'), event(1, '10.99.40.50', 'ABCD1234/config.txt'))
    assert list(upper) == list(lower) == ['discovered_serial_abcd1234']
    for pis in (upper, lower):
        assert pis['discovered_serial_abcd1234']['pi_vars'] == {'pi_serial': 'abcd1234', 'pi_model': 4}


def dhcp_answer(seconds, mac, client_id=None):
    """A proxy DHCP answer as bootlogs.parse_dhcp_log gives it, ``seconds`` after T0."""
    return {'kind': 'dhcp', 'time': (T0 + timedelta(seconds=seconds)).timestamp(), 'mac': mac, 'xid': '1',
            'answer': 'proxy', 'address': None, 'vendor_class': 'PXEClient:Arch:00000:UNDI:002001',
            'client_id': client_id, 'client_id_cut': bool(client_id)}


PI4_ID = '00:52:50:69:34:11:31:c0:00:32:ff:ee:04:04'  # RPi4, revision c03111 (4B 4GB), as dnsmasq logs it
PI3_ID = '00:3a:4b:5c:6d:3a:4b:5c:6d:3a:4b:5c:6d:3a'  # the Pi 3 ROM's serial four times


def test_dhcp_names_the_model_board_and_serial():
    parsed, _malformed = ev.parse_events(log(event(2, '10.99.40.51', '7e570004/start4.elf', outcome='unknown_prefix'),
                                             *PI3_BOOT))
    dhcp = [dhcp_answer(0, 'dc:a6:32:ff:ee:04', PI4_ID), dhcp_answer(1, 'b8:27:eb:4b:5c:6d', PI3_ID),
            dhcp_answer(3, 'e4:5f:01:00:00:07'), dhcp_answer(4, '00:11:22:33:44:55'),  # a PC's PXE firmware
            dhcp_answer(5, 'dc:a6:32:00:00:09')]
    pis = {pi['host']: pi for pi in ev.summarise(parsed, dhcp=dhcp, known_macs=['DC-A6-32-00-00-09'],
                                                 neighbours={'10.99.40.51': 'dc:a6:32:ff:ee:04'})}
    assert sorted(pis) == ['discovered_mac_e4-5f-01-00-00-07', 'discovered_serial_3a4b5c6d',
                           'discovered_serial_7e570004']
    pi4 = pis['discovered_serial_7e570004']  # its MAC through the bakery's neighbour table
    assert (pi4['model'], pi4['model_from'], pi4['board'], pi4['mac']) == (4, 'dhcp client id', 'Pi 4B 4GB',
                                                                           'dc:a6:32:ff:ee:04')
    assert pi4['pi_vars'] == {'pi_serial': '7e570004', 'pi_mac': 'dc:a6:32:ff:ee:04', 'pi_model': 4}
    assert pi4['dhcp']['answers'] == 1 and pi4['dhcp']['client_id'] == PI4_ID
    assert ev.host_vars(pi4)['pifleet_board'] == 'Pi 4B 4GB'
    pi3 = pis['discovered_serial_3a4b5c6d']  # its MAC from its serial (b8:27:eb + the low 3 bytes)
    assert (pi3['model'], pi3['model_from'], pi3['dhcp']['answers']) == (3, 'files', 1)
    lone = pis['discovered_mac_e4-5f-01-00-00-07']  # asked DHCP and never for a file
    assert (lone['model'], lone['model_from'], lone['requests'], lone['suggested_name']) == (
        4, 'mac prefix', 0, 'pi-e4-5f-01-00-00-07')
    assert lone['pi_vars'] == {'pi_mac': 'e4:5f:01:00:00:07', 'pi_model': 4}
    assert [pi['host'] for pi in ev.summarise([], dhcp=dhcp[1:2])] == ['discovered_mac_b8-27-eb-4b-5c-6d']
    wanted = {'pi_serial': '3a4b5c6d', 'pi_mac': 'b8:27:eb:4b:5c:6d', 'pi_model': 3}
    assert ev.summarise([], dhcp=dhcp[1:2])[0]['pi_vars'] == wanted
