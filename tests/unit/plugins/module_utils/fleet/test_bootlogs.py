# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Table-driven tests of what the boot services write, read as data (bootlogs.py)."""

from __future__ import annotations

import ast
import calendar
import json
from pathlib import Path

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import bootlogs as bl

NOW = calendar.timegm((2026, 12, 6, 12, 0, 0))
# Real lines of dnsmasq 2.90 (proxy mode, log-dhcp, log-facility=<file>) for a Pi 4 and a Pi 3 DISCOVER
# (lab/pisim.py), and a plain DISCOVER that gets no proxy answer.
DNSMASQ = """\
Dec  6 10:20:05 dnsmasq[20211]: started, version 2.90 DNS disabled
Dec  6 10:20:05 dnsmasq-dhcp[20211]: DHCP, proxy on subnet 10.99.77.0
Dec  6 10:20:06 dnsmasq-dhcp[20211]: 3806698939 available DHCP subnet: 10.99.77.0/255.255.255.0
Dec  6 10:20:06 dnsmasq-dhcp[20211]: 3806698939 vendor class: PXEClient:Arch:00000:UNDI:002001
Dec  6 10:20:06 dnsmasq-dhcp[20211]: 3806698939 PXE(sbveth0) dc:a6:32:ff:ee:04 proxy
Dec  6 10:20:06 dnsmasq-dhcp[20211]: 3806698939 tags: sbveth0
Dec  6 10:20:06 dnsmasq-dhcp[20211]: 3806698939 bootfile name: bootcode.bin
Dec  6 10:20:06 dnsmasq-dhcp[20211]: 3806698939 sent size:  1 option: 53 message-type  2
Dec  6 10:20:06 dnsmasq-dhcp[20211]: 3806698939 sent size: 17 option: 97 client-machine-id  \
00:52:50:69:34:11:31:c0:00:32:ff:ee:04:04...
Dec  6 10:20:06 dnsmasq-dhcp[20211]: 3806698939 sent size: 32 option: 43 vendor-encap  06:01:03:0a:04:00:50:58:45:09...
Dec  6 10:20:13 dnsmasq-dhcp[20211]: 3860180839 available DHCP subnet: 10.99.77.0/255.255.255.0
Dec  6 10:20:13 dnsmasq-dhcp[20211]: 3860180839 vendor class: PXEClient:Arch:00000:UNDI:002001
Dec  6 10:20:13 dnsmasq-dhcp[20211]: 3860180839 PXE(sbveth0) b8:27:eb:c0:ff:e3 proxy
Dec  6 10:20:13 dnsmasq-dhcp[20211]: 3860180839 sent size: 17 option: 97 client-machine-id  \
00:00:c0:ff:e3:00:c0:ff:e3:00:c0:ff:e3:00...
Dec  6 10:20:17 dnsmasq-dhcp[20211]: 1962767645 available DHCP subnet: 10.99.77.0/255.255.255.0
"""


def test_dnsmasq_answers_with_mac_vendor_class_and_client_id():
    records = bl.parse_dhcp_log(DNSMASQ, NOW, calendar.timegm)
    assert [(r['mac'], r['answer'], r['time'] - NOW) for r in records] == [
        ('dc:a6:32:ff:ee:04', 'proxy', -(3600 + 39 * 60 + 54)), ('b8:27:eb:c0:ff:e3', 'proxy', -(3600 + 39 * 60 + 47))]
    pi4 = records[0]
    assert pi4['vendor_class'] == 'PXEClient:Arch:00000:UNDI:002001' and pi4['client_id_cut']
    assert pi4['client_id'] == '00:52:50:69:34:11:31:c0:00:32:ff:ee:04:04'
    assert bl.identify(pi4['mac'], pi4['client_id']) == {
        'model': 4, 'model_from': 'dhcp client id', 'board': 'Pi 4B 4GB', 'revision': 'c03111', 'serial': None}
    # The older form (serial four times) carries the whole serial in the 14 bytes dnsmasq shows.
    assert bl.identify(records[1]['mac'], records[1]['client_id']) == {
        'model': 3, 'model_from': 'mac prefix', 'board': None, 'revision': None, 'serial': 'c0ffe3'.rjust(8, '0')}


@pytest.mark.parametrize('mac, client_id, expected', [
    ('2c:cf:67:ff:ee:05', '00:52:50:69:35:70:41:d0:00:67:ff:ee:05:05', (5, 'dhcp client id', 'Pi 5 8GB')),
    ('d8:3a:dd:00:00:01', None, (5, 'mac prefix', None)),
    ('e4:5f:01:00:00:01', '', (4, 'mac prefix', None)),
    ('02:00:00:00:00:01', '00:52:50:69:34', (4, 'dhcp client id', None)),  # cut before the revision
    ('02:00:00:00:00:01', 'zz', (None, None, None)),
    ('02:00:00:00:00:01', '00:00:00:00:00:00:00:00:00:00:00:00:00:00', (None, None, None)),
    ('dc:a6:32:00:00:01', '00:52:50:69:34:00:00:00:00', (4, 'dhcp client id', None)),  # old-style revision 0
])
def test_identify(mac, client_id, expected):
    found = bl.identify(mac, client_id)
    assert (found['model'], found['model_from'], found['board']) == expected


@pytest.mark.parametrize('line', [
    'Dec  6 10:20:06 dnsmasq-dhcp[1]: 1 PXE(eth0) DC:A6:32:FF:EE:04 proxy',  # dnsmasq writes lower case
    'Dec  6 10:20:06 dnsmasq-dhcp[1]: 1 PXE(eth0) dc:a6:32:ff:ee proxy',
    'Dec  6 10:20:06 dnsmasq[1]: 1 PXE(eth0) dc:a6:32:ff:ee:04 proxy',
    'Foo  6 10:20:06 dnsmasq-dhcp[1]: 1 PXE(eth0) dc:a6:32:ff:ee:04 proxy',
    'Dec  6 10:20:06 dnsmasq-dhcp[1]: 1 PXE(eth0) dc:a6:32:ff:ee:04 proxy {{ lookup("pipe", "id") }}',
])
def test_dnsmasq_lines_that_are_not_answers(line):
    assert bl.parse_dhcp_log(line + '\n', NOW, calendar.timegm) == []


def test_dnsmasq_authoritative_answers_carry_the_address():
    text = ('Dec  6 10:00:00 dnsmasq-dhcp[1]: 77 vendor class: PXEClient:Arch:00000:UNDI:002001\n'
            'Dec  6 10:00:00 dnsmasq-dhcp[1]: 77 DHCPOFFER(br0) 10.99.0.51 dc:a6:32:ff:ee:04\n'
            'Dec  6 10:00:01 dnsmasq-dhcp[1]: 77 DHCPACK(br0) 10.99.0.51 dc:a6:32:ff:ee:04 pi-04\n'
            'Dec  6 10:00:02 dnsmasq-dhcp[1]: 78 DHCPACK(br0) 10.99.0.999 dc:a6:32:ff:ee:04\n')
    records = bl.parse_dhcp_log(text, NOW, calendar.timegm)
    assert [(r['answer'], r['address'], r['vendor_class']) for r in records] == [
        ('offer', '10.99.0.51', 'PXEClient:Arch:00000:UNDI:002001'),
        ('ack', '10.99.0.51', 'PXEClient:Arch:00000:UNDI:002001'), ('ack', None, None)]


@pytest.mark.parametrize('stamp, now, expected', [
    ('Dec 31 23:59:00', (2027, 1, 1, 0, 5, 0), (2026, 12, 31, 23, 59, 0)),  # last year's line just after New Year
    ('Jan  1 00:01:00', (2026, 12, 31, 23, 59, 0), (2027, 1, 1, 0, 1, 0)),  # a clock a little ahead
    ('Mar  1 08:00:00', (2026, 12, 6, 0, 0, 0), (2026, 3, 1, 8, 0, 0)),
])
def test_dnsmasq_year_is_the_latest_not_after_now(stamp, now, expected):
    line = '%s dnsmasq-dhcp[1]: 5 PXE(eth0) dc:a6:32:ff:ee:04 proxy\n' % stamp
    assert bl.parse_dhcp_log(line, calendar.timegm(now), calendar.timegm)[0]['time'] == calendar.timegm(expected)


def test_dnsmasq_vendor_class_is_clipped_data():
    text = 'Dec  6 10:00:00 dnsmasq-dhcp[1]: 9 vendor class: %s\n' % ('x' * 500)
    text += 'Dec  6 10:00:00 dnsmasq-dhcp[1]: 9 PXE(eth0) dc:a6:32:ff:ee:04 proxy\n'
    assert bl.parse_dhcp_log(text, NOW, calendar.timegm)[0]['vendor_class'] == 'x' * 128 + '...'


def hook_line(**fields):
    event = {'time': '2026-12-06T10:20:07.5+00:00', 'client': '10.99.77.51', 'port': 4000, 'request': '1234abcd/x',
             'prefix': '1234abcd', 'path': 'x', 'name': 'pi-01', 'known': True, 'outcome': 'ok', 'bytes': 10,
             'duration': 0.5, 'retransmits': 1, 'error': None}
    event.update(fields)
    return json.dumps(event) + '\n'


def test_hook_events():
    text = (hook_line() + hook_line(client='::ffff:10.99.77.52', outcome='timeout', bytes=-3)
            + hook_line(outcome='denied') + hook_line(outcome='suppressed', client='*') + hook_line(client='pi')
            + hook_line(time='yesterday') + hook_line(prefix=None, request='bootcode.bin', path='bootcode.bin')
            + 'not json\n' + hook_line(prefix=7) + hook_line(client='fe80::1%eth0') + '{"time": "2026')
    records, malformed = bl.parse_hook_events(text)
    assert malformed == 5  # the torn last line is a write in progress, not damage
    assert [(r['client'], r['outcome'], r['bytes'], r['prefix']) for r in records] == [
        ('10.99.77.51', 'ok', 10, '1234abcd'), ('10.99.77.52', 'timeout', 0, '1234abcd'),
        ('10.99.77.51', 'ok', 10, '')]
    assert records[0]['time'] == bl.epoch_of('2026-12-06T10:20:07.5Z') and records[0]['duration'] == 0.5
    assert bl.parse_hook_events('half a line\n' + hook_line(), skip_first=True) == (records[:1], 0)


# busctl --json=short replies of Ganesha 4.3 (a Pi that read its export, an outsider that was refused).
EXPORTS = json.dumps({'type': '(tt)a(qs((sb)(sb)(sb)(sb)(sb)(sb)(sb)(sb))(tt))', 'data': [[1796552752, 0], [
    [0, '/', [['NFSv3', False], ['MNT', False], ['NMLv4', False], ['RQUOTA', False], ['NFSv40', False],
              ['NFSv41', False], ['NFSv42', False], ['9P', False]], [0, 0]],
    [7, '/srv/pifleet/roots/1234abcd', [['NFSv3', True], ['MNT', False]], [1796552754, 794265496]]]]})
CLIENTS = json.dumps({'type': '(tt)a(s((sb)(sb)(sb)(sb)(sb)(sb)(sb)(sb))(tt))', 'data': [[1796552754, 0], [
    ['::ffff:10.99.78.50', [['NFSv3', True], ['MNT', True]], [1796552754, 804306273]],
    ['::ffff:10.99.78.60', [['NFSv3', False], ['MNT', True]], [1796552754, 799462326]],
    ['10.99.78.61', [False, True, False, False, True, False, False, False], [1796552750, 0]],
    ['not an address', [['NFSv3', True]], [1, 0]]]]})


def test_ganesha_exports_and_clients():
    exports = bl.parse_ganesha_exports(EXPORTS)
    assert exports['/'] == {'nfs': False, 'last': None}
    assert exports['/srv/pifleet/roots/1234abcd'] == {'nfs': True, 'last': pytest.approx(1796552754.794265496)}
    clients = bl.parse_ganesha_clients(CLIENTS)
    assert set(clients) == {'10.99.78.50', '10.99.78.60', '10.99.78.61'}
    assert (clients['10.99.78.50']['nfs'], clients['10.99.78.60']['nfs'], clients['10.99.78.60']['mount']) == (
        True, False, True)
    assert clients['10.99.78.61'] == {'nfs': True, 'mount': True, 'last': 1796552750.0}  # the older flag form
    with pytest.raises(ValueError, match='not a busctl'):
        bl.parse_ganesha_exports('Call failed: The name org.ganesha.nfsd was not provided')
    assert bl.ganesha_argv('clients')[-3:] == ['/org/ganesha/nfsd/ClientMgr', 'org.ganesha.nfsd.clientmgr',
                                               'ShowClients']


ED = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl'
EC = ('ecdsa-sha2-nistp256 '
      'AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG4N9')


def test_keyscan_and_verdicts():
    text = '# 10.99.0.53:22 SSH-2.0-OpenSSH_9.2p1\n10.99.0.53 %s\n10.99.0.53 %s\nbogus ssh-ed25519 AAAA\n' % (ED, EC)
    text += '10.99.0.54 ssh-ed25519 not*base64\n10.99.0.55 x-key AAAA\n'
    seen = bl.parse_keyscan(text)
    assert seen == {'10.99.0.53': {ED, EC}}
    assert bl.key_verdict(seen['10.99.0.53'], [ED + ' root@golden']) == 'yes'
    assert bl.key_verdict(seen['10.99.0.53'], ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==']) == 'wrong key'
    assert bl.key_verdict(seen['10.99.0.53'], []) == 'unverified'
    assert bl.key_verdict(set(), [ED]) == 'no'
    assert bl.keyscan_argv(['10.99.0.53'], 3)[:3] == ['ssh-keyscan', '-T', '3']


def test_neighbours():
    text = ('IP address       HW type     Flags       HW address            Mask     Device\n'
            '10.99.0.53       0x1         0x2         dc:a6:32:ff:ee:06     *        host0\n'
            '10.99.0.54       0x1         0x0         00:00:00:00:00:00     *        host0\n'
            '10.99.0.55       0x1         0x2         DC:A6:32:FF:EE:07     *        host0\n'
            'junk\n')
    assert bl.parse_neighbours(text) == {'10.99.0.53': 'dc:a6:32:ff:ee:06', '10.99.0.55': 'dc:a6:32:ff:ee:07'}


@pytest.mark.parametrize('value, expected', [
    ('10.0.0.1', '10.0.0.1'), ('::ffff:10.0.0.1', '10.0.0.1'), ('fe80::1%eth0', None), ('2001:db8::1', '2001:db8::1'),
    ('', None), (None, None), ('10.0.0.1 ', '10.0.0.1'),
])
def test_address(value, expected):
    assert bl.address(value) == expected


@pytest.mark.parametrize('name', ['bootlogs.py', 'timeline.py'])
def test_runs_without_the_collection(name):
    """The boot watcher runs these files as they are on the bakery: standard library imports only."""
    source = Path(bl.__file__).with_name(name).read_text(encoding='utf-8')
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or '').split('.')[0])
    allowed = {'__future__', 'base64', 'calendar', 'datetime', 'ipaddress', 'json', 'os', 're', 'time'}
    assert imported <= allowed, imported


@pytest.mark.parametrize('prefix, mac', [
    ('DC-A6-32-01-36-C2', 'dc:a6:32:01:36:c2'), ('00c0ffe3', 'b8:27:eb:c0:ff:e3'), ('lab-x', None), ('', None),
    ('dc:a6:32:01:36:c2', None),  # a prefix is asked with dashes: colons are no MAC prefix
])
def test_mac_of_prefix(prefix, mac):
    assert bl.mac_of_prefix(prefix) == mac
