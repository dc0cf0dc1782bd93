# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The power and status playbooks, run by ansible-playbook against this host as the bakery.

Power devices are the loopback fakes of tests/tools/powerfakes.py (a Shelly Gen1 and a Tasmota plug
over real HTTP); the status table reads a fleet state made in a temp dir and a boot event log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from powerfakes import PlugServer, SnmpAgent

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def plugs():
    server = PlugServer()
    try:
        yield server
    finally:
        server.close()


def inventory(tmp, plugs, **bakery_vars):
    pis = {
        'pi-01': {'pi_serial': '1234abcd', 'pi_model': 4, 'pi_ip': '10.99.33.51',
                  'pi_power': {'driver': 'http', 'api': 'shelly1', 'url': plugs.add('p1', 'shelly1')}},
        'pi-02': {'pi_serial': '1234abce', 'pi_model': 5, 'pi_ip': '10.99.33.52',
                  'pi_power': {'driver': 'http', 'api': 'tasmota', 'url': plugs.add('p2', 'tasmota', on=True)}},
        'pi-03': {'pi_serial': '1234abcf', 'pi_model': 3, 'pi_ip': '10.99.33.53'},  # no power device
    }
    hosts = {'bakery': {'hosts': {'lab-bakery': dict({'ansible_connection': 'local',
                                                      'ansible_python_interpreter': sys.executable}, **bakery_vars)}},
             'pis': {'hosts': pis}}
    (tmp / 'hosts.yml').write_text(yaml.safe_dump(hosts))


def play(tmp, name, *args):
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_NOCOLOR='1')
    proc = subprocess.run([str(Path(sys.executable).parent / 'ansible-playbook'), '-i', str(tmp / 'hosts.yml'),
                           str(REPO / 'playbooks' / name), *args], capture_output=True, text=True, env=env,
                          check=False, timeout=300)
    recaps = dict(re.findall(r'^(\S+)\s+:\s+(ok=.*)$', proc.stdout, re.M))
    counters = {host: {k: int(v) for k, v in re.findall(r'(\w+)=(\d+)', line)} for host, line in recaps.items()}
    return proc.returncode, counters, proc.stdout + proc.stderr


def test_power_on_one_pi_then_status_of_all(tmp_path, plugs):
    inventory(tmp_path, plugs)
    rc, counters, output = play(tmp_path, 'power.yml', '-e', 'power_state=on', '--limit', 'pi-01')
    assert rc == 0, output[-3000:]
    assert plugs.plugs['p1'].state == [True] and plugs.plugs['p1'].sets == 1
    assert plugs.plugs['p2'].sets == 0  # not in --limit
    assert counters['pi-01']['changed'] == 1
    rc, counters, output = play(tmp_path, 'power.yml', '-e', 'power_state=on', '--limit', 'pi-01')
    assert rc == 0 and counters['pi-01']['changed'] == 0 and plugs.plugs['p1'].sets == 1, output[-3000:]
    rc, counters, output = play(tmp_path, 'power.yml', '-e', 'power_state=off', '--check')
    assert rc == 0 and plugs.plugs['p1'].state == [True] and plugs.plugs['p2'].state == [True], output[-3000:]
    rc, counters, output = play(tmp_path, 'power.yml')  # power_state defaults to status: reads only
    assert rc == 0 and all(c['changed'] == 0 for c in counters.values()), output[-3000:]
    for pi in ('pi-01', 'pi-02'):
        assert re.search(r'ok: \[%s\] => \{\s+"msg": "on"' % pi, output), output[-3000:]
    assert counters['pi-03'] == dict(counters['pi-03'], ok=0, skipped=1, failed=0)  # no power device


def test_power_failure_names_the_pi_and_device(tmp_path, plugs):
    inventory(tmp_path, plugs)
    plugs.plugs['p1'].state = [True]
    plugs.plugs['p2'].mode = 'refuse'
    rc, counters, output = play(tmp_path, 'power.yml', '-e', 'power_state=off')
    assert rc != 0
    assert 'pi-02' in output and plugs.url('p2') in output
    assert plugs.plugs['p1'].state == [False]  # the other Pi was still switched off
    # Each Pi has its own result in the recap (AWX's host summary), not the first Pi all of them.
    assert counters['pi-01'] == dict(counters['pi-01'], changed=1, failed=0), counters
    assert counters['pi-02'] == dict(counters['pi-02'], changed=0, failed=1), counters
    assert re.search(r'fatal: \[pi-02\]: FAILED! => \{[^}]*"msg": "power status failed for pi-02 \(http tasmota %s'
                     % re.escape(plugs.url('p2')), output), output[-3000:]


def test_a_bad_argument_shows_pi_powers_own_message(tmp_path, plugs):
    """Bug: default() evaluated its argument first, so a call that failed before any Pi (a bad argument) showed
    "'dict object' has no attribute 'changed'" instead of pi_power's message."""
    inventory(tmp_path, plugs)
    rc, counters, output = play(tmp_path, 'power.yml', '-e', 'power_state=sideways')
    assert rc != 0 and "has no attribute" not in output, output[-3000:]
    for pi in ('pi-01', 'pi-02'):
        assert counters[pi] == dict(counters[pi], failed=1), counters
        assert re.search(r'fatal: \[%s\]: FAILED! => \{[^}]*"msg": "value of state must be one of: on, off, cycled, '
                         r'status, got: sideways' % pi, output), output[-3000:]
    assert plugs.plugs['p1'].sets == 0 and plugs.plugs['p2'].sets == 0


def fleet_table(output):
    """The rows of the status table as {PI: {column: cell}}, cut at the header's column starts; and the lines
    below the table."""
    at = output.index('TASK [Show the fleet]')
    lines = json.JSONDecoder().raw_decode(output, output.index('=> {', at) + 3)[0]['msg']
    header = lines[0]
    starts = [m.start() for m in re.finditer(r'(?:^|(?<=  ))\S', header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
    rows, rest = {}, []
    for line in lines[1:]:
        if re.match(r'^[A-Z][A-Z ]+ \S+: |^[A-Z]+ not ', line) or line.startswith('BAKERY '):
            rest.append(line)
            continue
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
        rows[cells[0]] = dict(zip(names, cells))
    return header, rows, rest


def status_bakery(tmp_path, **extra):
    """A bakery in a temp dir: pi-01 with its root and disks (markers), a map, pi-01's last boot in the hook's
    events; the Pis' addresses on loopback, where no SSH server answers."""
    roots, disks = tmp_path / 'roots', tmp_path / 'disks'
    (roots / '1234abcd').mkdir(parents=True)
    (roots / '1234abcd.json').write_text('{}')  # the markers beside each Pi's images
    (disks / '1234abcd').mkdir(parents=True)
    (disks / '1234abcd.json').write_text('{}')
    prefixes = {'1234abcd': {'name': 'pi-01', 'dirs': []}, '1234abce': {'name': 'pi-02', 'dirs': []}}
    fleet_map = {'version': 1, 'default': [], 'prefixes': prefixes}
    (tmp_path / 'map.json').write_text(json.dumps(fleet_map))
    events = [{'time': '2026-11-23T10:00:0%d+00:00' % i, 'client': '127.0.1.51', 'port': 4000 + i,
               'request': '1234abcd/' + path, 'prefix': '1234abcd', 'path': path, 'name': 'pi-01', 'known': True,
               'outcome': outcome, 'bytes': 10, 'size': 10, 'duration': 0.5, 'retransmits': 0}
              for i, (path, outcome) in enumerate([('start4.elf', 'probe'), ('start4.elf', 'ok'),
                                                   ('kernel8.img', 'ok')])]
    (tmp_path / 'events.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in events))
    return dict({'pifleet_roots_dir': str(roots), 'pifleet_disks_dir': str(disks),
                 'pifleet_events_path': str(tmp_path / 'events.jsonl'), 'pifleet_map_path': str(tmp_path / 'map.json'),
                 'pifleet_dhcp_log_path': str(tmp_path / 'no-dnsmasq.log'), 'pifleet_bakeform_store': str(tmp_path)},
                **extra)


def loopback_pis(tmp_path):
    hosts = yaml.safe_load((tmp_path / 'hosts.yml').read_text())
    for index, facts in enumerate(hosts['pis']['hosts'].values(), start=51):
        facts['pi_ip'] = '127.0.1.%d' % index  # keyscan asks loopback only: nothing answers there
    (tmp_path / 'hosts.yml').write_text(yaml.safe_dump(hosts))
    return hosts


def test_status_table(tmp_path, plugs):
    inventory(tmp_path, plugs, **status_bakery(tmp_path))
    loopback_pis(tmp_path)
    rc, counters, output = play(tmp_path, 'status.yml')
    assert rc == 0 and counters['lab-bakery']['changed'] == 0, output[-3000:]
    assert all(c['changed'] == 0 and c['failed'] == 0 for c in counters.values()), counters
    header, rows, rest = fleet_table(output)
    assert header.split() == ['PI', 'MODEL', 'GENERATION', 'ROOT', 'DISKS', 'POWER', 'STAGE', 'UP', 'LAST', 'BOOT',
                              'TOOK']
    one = rows['pi-01']
    assert (one['MODEL'], one['ROOT'], one['DISKS'], one['POWER']) == ('4', 'unmounted', 'unmounted', 'off'), rows
    assert one['LAST BOOT'] == '2026-11-23T10:00:00Z' and one['UP'] == 'no'
    # It fetched its kernel long ago, and the NFS server in use tells nothing: stalled after TFTP, with the hint.
    assert one['STAGE'] == 'stalled at nfs' and one['TOOK'] == '2s (tftp)', one  # first request -> kernel's end
    assert [line for line in rest if line.startswith('STALLED pi-01: fetched its kernel ')], rest
    # No NFS-Ganesha on this host's D-Bus: the NFS stage is not observed, and status says so.
    assert [line for line in rest if line.startswith('NFS not observed: NFS-Ganesha did not list its exports')], rest
    assert (rows['pi-02']['ROOT'], rows['pi-02']['DISKS'], rows['pi-02']['STAGE']) == ('missing', '-', 'never')
    assert rows['pi-03']['POWER'] == '-'  # no power device


def test_status_widths_follow_long_names_limit_and_json(tmp_path, plugs):
    long_name = 'pi-in-the-far-corner-of-the-second-floor-lab'
    inventory(tmp_path, plugs, **status_bakery(tmp_path))
    hosts = loopback_pis(tmp_path)
    hosts['pis']['hosts'][long_name] = hosts['pis']['hosts'].pop('pi-03')
    (tmp_path / 'hosts.yml').write_text(yaml.safe_dump(hosts))
    rc, _counters, output = play(tmp_path, 'status.yml')
    assert rc == 0, output[-3000:]
    header, rows, _rest = fleet_table(output)
    assert set(rows) == {'pi-01', 'pi-02', long_name}
    assert header.index('MODEL') == len(long_name) + 2  # the PI column is as wide as its widest name
    # --limit: only the Pis named; the bakery still does the reading.
    rc, counters, output = play(tmp_path, 'status.yml', '--limit', 'pi-02')
    assert rc == 0, output[-3000:]
    _header, rows, _rest = fleet_table(output)
    assert list(rows) == ['pi-02'] and 'lab-bakery' not in counters
    # status_format=json: one document instead of the table; status_file writes it alone for scripts.
    rc, counters, output = play(tmp_path, 'status.yml', '-e', 'status_format=json', '-e',
                                'status_file=%s' % (tmp_path / 'status.json'))
    assert rc == 0, output[-3000:]
    document = json.loads((tmp_path / 'status.json').read_text())
    at = output.index('TASK [Show the fleet]')
    assert json.JSONDecoder().raw_decode(output, output.index('=> {', at) + 3)[0]['msg'] == document
    pis = {pi['name']: pi for pi in document['pis']}
    assert set(pis) == {'pi-01', 'pi-02', long_name} and document['format'] == 1
    assert pis['pi-01']['stage'] == 'stalled at nfs' and pis['pi-01']['boot']['stalled_at'] == 'nfs'
    assert pis['pi-01']['boot']['times']['tftp'] == '2026-11-23T10:00:00Z' and pis['pi-01']['model'] == 4
    assert pis['pi-01']['bakery'] == 'lab-bakery' and pis['pi-01']['power'] == 'off'
    assert document['bakeries'][0]['sources']['nfs'].startswith('not observed')


def test_status_shows_each_pis_power_error(tmp_path, plugs):
    """A uhubctl missing on the bakery fails its own Pi's POWER (error, with the reason); the others are read."""
    inventory(tmp_path, plugs, **status_bakery(tmp_path))
    hosts = loopback_pis(tmp_path)
    hosts['pis']['hosts']['pi-03']['pi_power'] = {'driver': 'uhubctl', 'location': '1-1', 'port': 2,
                                                  'program': 'no-such-uhubctl'}
    (tmp_path / 'hosts.yml').write_text(yaml.safe_dump(hosts))
    rc, counters, output = play(tmp_path, 'status.yml')
    assert rc == 0 and counters['lab-bakery']['failed'] == 0, output[-3000:]
    _header, rows, rest = fleet_table(output)
    assert [rows[pi]['POWER'] for pi in ('pi-01', 'pi-02', 'pi-03')] == ['off', 'on', 'error'], rows
    assert [line for line in rest if re.fullmatch(
        r'POWER ERROR pi-03: program no-such-uhubctl not found for pi-03 \(driver uhubctl\): it is not '
        r'an executable file on \S+; install it or set device.program to its path', line)], rest
    assert not [line for line in rest if line.startswith(('POWER ERROR pi-01', 'POWER ERROR pi-02'))]


def test_power_and_status_print_no_secret_even_at_vvv(tmp_path, plugs):
    """Plug passwords, the SNMP write community and the SNMPv3 keys stay out of -vvv output; a failure still names
    the Pi and why."""
    v3 = {'user': 'pifleet', 'auth_protocol': 'SHA', 'auth_key': 'Sw0rdf1sh-auth', 'priv_protocol': 'AES',
          'priv_key': 'Sw0rdf1sh-priv'}
    agent = SnmpAgent(tmp_path / 'agent', {(1, 3): 2, (1, 4): 2}, community='Sw0rdf1sh-community', users=[v3])
    try:
        pis = {
            'pi-01': {'pi_serial': '1234abcd', 'pi_power': {
                'driver': 'http', 'api': 'shelly2', 'password': 'Sw0rdf1sh-shelly',
                'url': plugs.add('p1', 'shelly2', password='Sw0rdf1sh-shelly')}},
            'pi-02': {'pi_serial': '1234abce', 'pi_power': {  # a stale password: this Pi fails
                'driver': 'http', 'api': 'tasmota', 'password': 'Sw0rdf1sh-stale',
                'url': plugs.add('p2', 'tasmota', password='Sw0rdf1sh-tasmota')}},
            'pi-03': {'pi_serial': '1234abcf', 'pi_power': {
                'driver': 'snmp', 'host': '127.0.0.1', 'port': agent.port, 'port_index': 3,
                'community': 'Sw0rdf1sh-community'}},
            'pi-04': {'pi_serial': '1234abd0', 'pi_power': dict(  # the inventory form of an SNMPv3 switch port
                v3, driver='snmp', version=3, host='127.0.0.1', port=agent.port, port_index=4)},
        }
        (tmp_path / 'hosts.yml').write_text(yaml.safe_dump({
            'bakery': {'hosts': {'lab-bakery': {'ansible_connection': 'local',
                                                'ansible_python_interpreter': sys.executable}}},
            'pis': {'hosts': pis}}))
        rc, _counters, output = play(tmp_path, 'power.yml', '-vvv', '-e', 'power_state=on')
        assert rc != 0, output[-3000:]
        assert plugs.plugs['p1'].state == [True] and agent.state(1, 3) == 1  # the others were switched on
        assert agent.state(1, 4) == 1  # through net-snmp, SNMPv3 authPriv
        assert 'failed for pi-02 (http tasmota %s, channel 0): the plug wants credentials' % plugs.url('p2') in output
        rc, _counters, status_output = play(tmp_path, 'status.yml', '-vvv')
        assert rc == 0, status_output[-3000:]
    finally:
        agent.close()
    for text in (output, status_output):
        assert 'Sw0rdf1sh' not in text, [row for row in text.splitlines() if 'Sw0rdf1sh' in row][:5]
