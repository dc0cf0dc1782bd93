# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_power's main() against real fakes: the loopback plug server (Shelly Gen1, Gen2 with digest, Tasmota),
a PPI program, a uhubctl and Debian's snmpd with a writable PoE column. Every assertion on state reads
the fake's own state (its file or memory), never the module's word for it."""

from __future__ import annotations

import re
import shutil
import time

import pytest
from modrun import run_module as run_process
from powerfakes import PlugServer, PpiFake, SnmpAgent, UhubctlFake

from ansible_collections.pifleet.netboot.plugins.modules import pi_power

SERIALS = ['3a4b5c%02x' % index for index in range(8)]


@pytest.fixture
def plugs():
    server = PlugServer()
    yield server
    server.close()


@pytest.fixture
def ppi(tmp_path):
    return PpiFake(tmp_path, {serial: 'off' for serial in SERIALS})


@pytest.fixture
def hub(tmp_path):
    return UhubctlFake(tmp_path, {'1-1': {1: 'off', 2: 'off', 3: 'on', 4: 'off'}, '1-2': {1: 'off', 2: 'off'}})


@pytest.fixture
def agent(tmp_path):
    snmpd = SnmpAgent(tmp_path, {**{(1, port): 2 for port in range(1, 9)}, (2, 1): 1})
    yield snmpd
    snmpd.close()


def call(run_module, check=False, diff=False, **args):
    """Run main(); return the result, with the failure message (if any) under 'msg'."""
    outcome = run_module(pi_power.main, dict({'cycle_delay': 0}, **args), check_mode=check, diff=diff)
    return dict(outcome.result, failed=outcome.failed)


def power(result):
    return [(pi['name'], pi['previous'], pi['power'], pi['changed']) for pi in result['pis']]


def http_item(plugs, name, api, **settings):
    url = plugs.add(name, api, **settings)
    device = {'url': url, 'api': api, 'password': settings.get('password'), 'channel': settings.get('channels', 1) - 1}
    return {'name': name, 'driver': 'http', 'device': device}


@pytest.mark.parametrize('api, settings', [
    ('shelly1', {}), ('shelly1', {'channels': 2, 'password': 'pw'}), ('shelly2', {}),
    ('shelly2', {'channels': 4, 'password': 'pw'}), ('tasmota', {}), ('tasmota', {'channels': 2, 'password': 'pw'}),
])
def test_http_on_off_status_cycled(run_module, plugs, api, settings):
    item = http_item(plugs, 'pi-01', api, **settings)
    plug, channel = plugs.plugs['pi-01'], item['device']['channel']
    steps = [('status', ('off', 'off', False), False, 0), ('on', ('off', 'on', True), True, 1),
             ('on', ('on', 'on', False), True, 0), ('cycled', ('on', 'on', True), True, 2),
             ('off', ('on', 'off', True), False, 1), ('off', ('off', 'off', False), False, 0),
             ('cycled', ('off', 'on', True), True, 1), ('status', ('on', 'on', False), True, 0)]
    for state, expected, powered, sets in steps:
        before = plug.sets
        result = call(run_module, state=state, **item)
        assert not result['failed'], result['msg']
        assert power(result) == [('pi-01', *expected)]
        assert result['changed'] is expected[2]
        assert plug.state[channel] is powered
        assert plug.sets - before == sets, (state, plug.requests)
    assert not any(plug.state[:channel])  # other relays of the plug untouched


def test_snmp_on_off_status_cycled(run_module, agent):
    item = {'name': 'pi-01', 'driver': 'snmp', 'device': {'host': '127.0.0.1', 'port': agent.port, 'port_index': 3}}
    for state, expected, value in [('status', ('off', 'off', False), 2), ('on', ('off', 'on', True), 1),
                                   ('on', ('on', 'on', False), 1), ('cycled', ('on', 'on', True), 1),
                                   ('off', ('on', 'off', True), 2), ('off', ('off', 'off', False), 2),
                                   ('cycled', ('off', 'on', True), 1)]:
        result = call(run_module, state=state, **item)
        assert not result['failed'], result['msg']
        assert power(result) == [('pi-01', *expected)]
        assert agent.state(1, 3) == value
    assert [agent.state(1, port) for port in (1, 2, 4)] == [2, 2, 2]
    grouped = call(run_module, state='off', name='pi-09', driver='snmp',
                   device={'host': '127.0.0.1', 'port': agent.port, 'group': 2, 'port_index': 1})
    assert power(grouped) == [('pi-09', 'on', 'off', True)]
    assert agent.state(2, 1) == 2


def test_uhubctl_on_off_status_cycled(run_module, hub):
    item = {'name': 'pi-01', 'driver': 'uhubctl', 'device': {'location': '1-1', 'port': 2, 'program': hub.program}}
    for state, expected, after, calls in [('status', ('off', 'off', False), 'off', []),
                                          ('on', ('off', 'on', True), 'on', ['on']),
                                          ('on', ('on', 'on', False), 'on', []),
                                          ('cycled', ('on', 'on', True), 'on', ['off', 'on']),
                                          ('off', ('on', 'off', True), 'off', ['off'])]:
        before = len(hub.calls())
        result = call(run_module, state=state, **item)
        assert not result['failed'], result['msg']
        assert power(result) == [('pi-01', *expected)]
        assert hub.state('1-1', 2) == after
        assert [action for _unused, _ports, action in hub.calls()[before:]] == calls
    assert hub.state('1-1', 3) == 'on'


def test_command_always_acts_and_cannot_read(run_module, ppi):
    item = {'name': 'pi-01', 'driver': 'command',
            'device': {'program': ppi.program, 'config': ppi.config, 'pi_id': SERIALS[1]}}
    status = call(run_module, state='status', **item)
    assert power(status) == [('pi-01', 'unknown', 'unknown', False)]
    assert ppi.calls() == []
    for state, actions in [('on', ['poweron']), ('on', ['poweron']), ('cycled', ['poweroff', 'poweron']),
                           ('off', ['poweroff'])]:
        before = len(ppi.calls())
        result = call(run_module, state=state, **item)
        assert power(result) == [('pi-01', 'unknown', state.replace('cycled', 'on'), True)]  # PPI has no query
        assert ppi.calls()[before:] == [[SERIALS[1], action] for action in actions]
    assert ppi.state(SERIALS[1]) == 'off'
    assert ppi.state(SERIALS[0]) == 'off'


def test_check_mode_reads_and_never_sets(run_module, plugs, agent, hub, ppi):
    pis = [http_item(plugs, 'pi-http', 'shelly2', password='pw'),
           {'name': 'pi-snmp', 'driver': 'snmp', 'device': {'host': '127.0.0.1', 'port': agent.port, 'port_index': 1}},
           {'name': 'pi-usb', 'driver': 'uhubctl', 'device': {'location': '1-1', 'port': 1, 'program': hub.program}},
           {'name': 'pi-ppi', 'driver': 'command',
            'device': {'program': ppi.program, 'config': ppi.config, 'pi_id': SERIALS[0]}}]
    for state in ('on', 'cycled'):
        result = call(run_module, check=True, diff=True, state=state, pis=pis)
        assert not result['failed'], result['msg']
        assert power(result) == [('pi-http', 'off', 'on', True), ('pi-snmp', 'off', 'on', True),
                                 ('pi-usb', 'off', 'on', True), ('pi-ppi', 'unknown', 'on', True)]
        assert [(entry['before'], entry['after']) for entry in result['diff']] == [
            ('power: off\n', 'power: on\n')] * 3 + [('power: unknown\n', 'power: on\n')]
        assert result['diff'][0]['before_header'].startswith('pi-http (http shelly2 http://127.0.0.1:')
    assert plugs.plugs['pi-http'].sets == 0 and plugs.plugs['pi-http'].state == [False]
    assert agent.state(1, 1) == 2
    assert hub.state('1-1', 1) == 'off' and hub.calls() == []
    assert ppi.calls() == []
    assert call(run_module, check=True, state='off', pis=pis[:3])['changed'] is False


def test_thirty_pis_across_drivers_in_one_call(run_module, plugs, agent, hub, ppi):
    apis = ['shelly1', 'shelly2', 'tasmota']
    pis = [http_item(plugs, 'pi-%02d' % index, apis[index % 3], channels=1 + index % 2, password='pw' * (index % 2))
           for index in range(16)]
    pis += [{'name': 'pi-%02d' % (15 + port), 'driver': 'snmp', 'device': {'port_index': port}} for port in range(1, 9)]
    pis += [{'name': 'pi-%02d' % (24 + index), 'driver': 'uhubctl',
             'device': {'location': location, 'port': port, 'program': hub.program}}
            for index, (location, port) in enumerate([('1-1', 1), ('1-1', 2), ('1-2', 1), ('1-2', 2)])]
    pis += [{'name': 'pi-%02d' % (28 + index), 'driver': 'command',
             'device': {'program': ppi.program, 'config': ppi.config, 'pi_id': SERIALS[index]}} for index in range(2)]
    shared = {'host': '127.0.0.1', 'port': agent.port, 'community': 'private'}  # merged into the snmp items
    result = call(run_module, state='on', device=shared, driver='snmp', pis=pis)
    assert not result['failed'], result['msg']
    assert len(result['pis']) == 30 and all(pi['changed'] and pi['power'] == 'on' for pi in result['pis'])
    assert [pi['name'] for pi in result['pis']] == ['pi-%02d' % index for index in range(30)]
    assert all(plug.state[-1] for plug in plugs.plugs.values())
    assert [agent.state(1, port) for port in range(1, 9)] == [1] * 8
    assert {hub.state(loc, port) for loc, port in [('1-1', 1), ('1-1', 2), ('1-2', 1), ('1-2', 2)]} == {'on'}
    assert [ppi.state(serial) for serial in SERIALS[:2]] == ['on', 'on']
    again = call(run_module, state='on', device=shared, driver='snmp', pis=pis)
    assert [pi['name'] for pi in again['pis'] if pi['changed']] == ['pi-28', 'pi-29']  # only PPI, which cannot read


def test_one_failing_pi_is_reported_and_the_others_still_switch(run_module, plugs, agent):
    pis = [http_item(plugs, 'pi-%02d' % index, 'shelly1') for index in range(5)]
    pis.append(http_item(plugs, 'pi-bad', 'tasmota', mode='garbage'))
    pis.append({'name': 'pi-port9', 'driver': 'snmp', 'device': {'host': '127.0.0.1', 'port': agent.port,
                                                                 'port_index': 9}})
    result = call(run_module, state='on', pis=pis)
    assert result['failed'] and result['changed']
    assert result['msg'].startswith('2 of 7 Pis failed: power status failed for pi-bad (http tasmota http://127.0.0.1:')
    assert 'answered something that is not a JSON object' in result['msg']
    assert re.search(r'power status failed for pi-port9 \(snmp 127\.0\.0\.1:\d+, PoE group 1 port 9\): the switch '
                     r'answered: agent answered noSuchInstance for [\d.]+\.1\.9; check device.group', result['msg'])
    assert [pi['name'] for pi in result['pis'] if 'error' in pi] == ['pi-bad', 'pi-port9']
    assert all(plugs.plugs['pi-%02d' % index].state == [True] for index in range(5))


@pytest.mark.parametrize('settings, limits, expect', [
    ({'mode': 'timeout'}, (0.3, 1), (r'timed out after 0\.3s \(1 retries\); check the plug is reachable from the', 2)),
    ({'mode': 'timeout'}, (0.3, 0), (r'timed out after 0\.3s; check the plug is reachable', 1)),
    ({'mode': 'garbage'}, (1, 2), (r"answered something that is not a JSON object: '<html><body>Welcome to nginx!", 1)),
    ({'mode': 'refuse'}, (1, 2), (r'HTTP 500 Internal Server Error: .*refused by the fake.* \(2 retries\)', 3)),
    ({'mode': 'refuse', 'status': 401}, (1, 2), (r'refused the credentials \(HTTP 401\); check device.username', 1)),
    ({'password': 'right'}, (1, 2), (r'refused the credentials \(HTTP 401\)', None)),
])
def test_http_errors_name_the_pi_and_the_device(run_module, plugs, settings, limits, expect):
    item = http_item(plugs, 'pi-03', 'shelly2', **dict(settings, password=None))
    plugs.plugs['pi-03'].password = settings.get('password')
    result = call(run_module, state='on', timeout=limits[0], retries=limits[1], **item)
    assert result['failed'] and not result['changed']
    prefix = 'power status failed for pi-03 (http shelly2 %s, channel 0): ' % item['device']['url']
    assert result['msg'].startswith(prefix), result['msg']
    assert re.search(expect[0], result['msg']), result['msg']
    if expect[1] is not None:
        assert len(plugs.plugs['pi-03'].requests) == expect[1]
    assert plugs.plugs['pi-03'].sets == 0


def test_tasmota_without_its_password(run_module, plugs):
    item = http_item(plugs, 'pi-04', 'tasmota')
    plugs.plugs['pi-04'].password = 'secret'
    result = call(run_module, state='status', **item)
    assert 'the plug wants credentials' in result['msg'] and 'set device.username and device.password' in result['msg']


@pytest.mark.parametrize('mode, error', [
    ('exit', r"power on failed for pi-01 \(command .*/ppi, pi_id 3a4b5c00\): PPI program answered rc=3, stdout '', "
             r"stderr 'relay board did not answer' \(1 retries\); check the program, its config"),
    ('stderr', r"rc=0, stdout 'ok', stderr 'warning: slow relay'; check the program"),
    ('garbage', r"rc=0, stdout 'done', stderr ''"),
    ('hang', r'power on failed for pi-01 \(command .*\): timed out after 0\.5s \(1 retries\)'),
])
def test_command_failures(run_module, ppi, mode, error):
    ppi.fail({SERIALS[0]: mode})
    started = time.monotonic()
    # Only the hung program meets the short timeout: on a loaded machine the others may take longer than 0.5 s to
    # start, and a timeout then (a transient failure, retried) would change the message.
    timeout = 0.5 if mode == 'hang' else 30
    result = call(run_module, state='on', name='pi-01', driver='command', timeout=timeout, retries=1,
                  device={'program': ppi.program, 'config': ppi.config, 'pi_id': SERIALS[0]})
    assert result['failed'] and re.search(error, result['msg']), result['msg']
    if mode == 'hang':
        assert time.monotonic() - started < 8  # the hung program was killed, twice


def test_uhubctl_failures(run_module, hub):
    device = {'location': '9-9', 'port': 1, 'program': hub.program}
    result = call(run_module, state='on', name='pi-01', driver='uhubctl', device=device)
    assert result['msg'].startswith("power status failed for pi-01 (uhubctl hub 9-9 port 1): uhubctl failed (rc=1): "
                                    "'No compatible devices detected at location 9-9!")
    result = call(run_module, state='on', name='pi-01', driver='uhubctl', device=dict(device, location='1-1', port=7))
    assert 'uhubctl shows no port 7 on hub 1-1' in result['msg']
    hub.hang('1-2')
    result = call(run_module, state='on', name='pi-01', driver='uhubctl', timeout=0.5, retries=0,
                  device=dict(device, location='1-2'))
    assert result['msg'] == ('power status failed for pi-01 (uhubctl hub 1-2 port 1): timed out after 0.5s; check the '
                             'hub location and port (uhubctl without options lists them)')
    assert hub.calls() == []


def test_snmp_wrong_community_times_out(run_module, agent):
    result = call(run_module, state='off', name='pi-05', driver='snmp', timeout=0.3, retries=1,
                  device={'host': '127.0.0.1', 'port': agent.port, 'community': 'guess', 'port_index': 2})
    assert result['msg'] == ('power status failed for pi-05 (snmp 127.0.0.1:%d, PoE group 1 port 2): timed out after '
                             '0.3s (1 retries); check the switch is reachable from the bakery and the community is '
                             'right (agents ignore a wrong one)' % agent.port)


def test_devices_are_driven_in_parallel(run_module, plugs):
    pis = [http_item(plugs, 'pi-%02d' % index, 'shelly1', delay=0.4) for index in range(6)]
    started = time.monotonic()
    assert not call(run_module, state='status', pis=pis)['failed']
    concurrent = time.monotonic() - started
    started = time.monotonic()
    assert not call(run_module, state='status', pis=pis, parallel=1)['failed']
    serial = time.monotonic() - started
    # Six 0.4 s answers: 2.4 s one after another, 0.4 s at once; a loaded machine adds to both alike.
    assert serial >= 2.4 and concurrent < serial - 1.0, (concurrent, serial)
    stuck = [http_item(plugs, 'pi-t%02d' % index, 'shelly2', mode='timeout') for index in range(10)]
    started = time.monotonic()
    result = call(run_module, state='on', timeout=0.5, retries=0, pis=stuck)
    assert time.monotonic() - started < 3
    assert result['msg'].startswith('10 of 10 Pis failed: ')
    assert result['msg'].count('timed out after 0.5s') == 10


@pytest.mark.parametrize('args, error', [
    ({'driver': 'snmp', 'device': {'host': 'h', 'port_index': 1}}, 'name missing for the Pi'),
    ({'pis': [{'name': 'a'}]}, 'driver missing for pis[0]'),
    ({'name': 'a', 'driver': 'http', 'device': {'url': 'http://x', 'api': 'shelly1', 'community': 'c'}},
     'invalid device for a (driver http): device.community is not a setting of this driver'),
    ({'name': 'a', 'driver': 'snmp', 'device': {'host': 'h'}}, 'device.port_index missing'),
    ({'name': 'a', 'driver': 'uhubctl', 'device': {'location': '1-1', 'port': 1, 'program': 'no-such-uhubctl'}},
     'program no-such-uhubctl not found for a (driver uhubctl)'),
    ({'driver': 'snmp', 'device': {'host': 'h', 'port_index': 1}, 'pis': [{'name': 'a'}, {'name': 'a'}]},
     'duplicate Pis in pis: a given more than once'),
    ({'name': 'a', 'driver': 'snmp', 'timeout': 0, 'device': {'host': 'h', 'port_index': 1}}, 'invalid timeout for a'),
    ({'name': 'a', 'driver': 'snmp', 'parallel': 0, 'device': {'host': 'h', 'port_index': 1}}, 'invalid parallel'),
])
def test_argument_errors(run_module, args, error):
    result = call(run_module, **args)
    assert result['failed'] and error in result['msg'], result['msg']


def test_secrets_stay_out_of_the_output(plugs, tmp_path):
    """In a real module process: password and community are no_log, even inside device and pis."""
    agent = SnmpAgent(tmp_path / 'agent', {(1, 1): 2}, community='Sw0rdf1sh-comm')
    try:
        url = plugs.add('pi-01', 'shelly2', password='Sw0rdf1sh-pw')
        args = {'state': 'on', 'cycle_delay': 0, 'device': {'community': 'Sw0rdf1sh-comm'}, 'pis': [
            {'name': 'pi-01', 'driver': 'http', 'device': {'url': url, 'api': 'shelly2', 'password': 'Sw0rdf1sh-pw'}},
            {'name': 'pi-02', 'driver': 'snmp', 'device': {'host': '127.0.0.1', 'port': agent.port, 'port_index': 1}}]}
        result = run_process('pi_power', args, diff=True)
        assert not result.get('failed'), result.get('msg')
        assert plugs.plugs['pi-01'].state == [True] and agent.state(1, 1) == 1
        assert 'Sw0rdf1sh' not in repr(result)
        assert result['invocation']['module_args']['device']['community'] == 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER'
    finally:
        agent.close()


def test_a_pi_with_an_unusable_device_fails_alone(run_module, plugs):
    """A uhubctl missing on the bakery or a bad device fails its own Pi; the other Pis are still read."""
    missing = {'location': '1-1', 'port': 2, 'program': 'no-such-uhubctl'}
    pis = [http_item(plugs, 'pi-01', 'shelly1'), {'name': 'pi-02', 'driver': 'uhubctl', 'device': missing},
           {'name': 'pi-03', 'driver': 'snmp', 'device': {'host': '127.0.0.1'}}]
    plugs.plugs['pi-01'].state = [True]
    result = call(run_module, state='status', pis=pis)
    assert result['failed'] and result['msg'].startswith('2 of 3 Pis failed: program no-such-uhubctl not found for '
                                                         'pi-02 (driver uhubctl)'), result['msg']
    by_name = {pi['name']: pi for pi in result['pis']}
    assert by_name['pi-01']['power'] == 'on' and 'error' not in by_name['pi-01']
    assert by_name['pi-02']['error'].startswith('program no-such-uhubctl not found for pi-02 (driver uhubctl)')
    assert by_name['pi-03']['error'].startswith('invalid device for pi-03 (driver snmp): device.port_index missing')
    assert by_name['pi-02']['power'] == by_name['pi-03']['power'] == 'unknown'


V3_USER = {'user': 'pifleet', 'auth_protocol': 'SHA-256', 'auth_key': 'Sw0rdf1sh-auth', 'priv_protocol': 'AES-256',
           'priv_key': 'Sw0rdf1sh-priv'}
NET_SNMP = all(shutil.which(tool) for tool in ('snmpget', 'snmpset'))


def v3_device(agent, port_index, **changes):
    return dict({'host': '127.0.0.1', 'port': agent.port, 'port_index': port_index, 'version': 3,
                 **V3_USER}, **changes)


@pytest.mark.skipif(not NET_SNMP, reason='needs the snmp package (net-snmp tools)')
def test_snmpv3_on_off_status_beside_v2c(run_module, tmp_path):
    """An SNMPv3 switch (authPriv, SHA-256/AES-256) and an old v2c one in one call."""
    agent = SnmpAgent(tmp_path / 'v3', {(1, 1): 2, (1, 2): 2}, users=[V3_USER])
    try:
        v2c = {'host': '127.0.0.1', 'port': agent.port, 'port_index': 2}
        pis = [{'name': 'pi-v3', 'driver': 'snmp', 'device': v3_device(agent, 1)},
               {'name': 'pi-v2', 'driver': 'snmp', 'device': v2c}]
        result = call(run_module, state='on', pis=pis)
        assert not result['failed'], result.get('msg')
        assert power(result) == [('pi-v3', 'off', 'on', True), ('pi-v2', 'off', 'on', True)]
        assert agent.state(1, 1) == agent.state(1, 2) == 1
        assert result['pis'][0]['device'] == 'snmp v3 127.0.0.1:%d, user pifleet, PoE group 1 port 1' % agent.port
        result = call(run_module, state='off', pis=pis[:1])
        assert power(result) == [('pi-v3', 'on', 'off', True)] and agent.state(1, 1) == 2
        result = call(run_module, state='status', pis=[dict(pis[0], device=v3_device(agent, 1, auth_key='Wr0ng-auth'))])
        assert result['failed'] and 'Authentication failure' in result['msg'] and 'check device.group' in result['msg']
    finally:
        agent.close()


@pytest.mark.skipif(not NET_SNMP, reason='needs the snmp package (net-snmp tools)')
def test_snmpv3_keys_stay_out_of_the_output(tmp_path):
    """In a real module process: auth_key and priv_key are no_log, even inside pis."""
    agent = SnmpAgent(tmp_path / 'v3', {(1, 1): 2}, users=[V3_USER])
    try:
        args = {'state': 'cycled', 'cycle_delay': 0, 'pis': [{'name': 'pi-v3', 'driver': 'snmp',
                                                              'device': v3_device(agent, 1)}]}
        result = run_process('pi_power', args, diff=True)
        assert not result.get('failed'), result.get('msg')
        assert agent.state(1, 1) == 1
        assert 'Sw0rdf1sh' not in repr(result)
        device = result['invocation']['module_args']['pis'][0]['device']
        assert device['auth_key'] == device['priv_key'] == 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER'
    finally:
        agent.close()


def test_snmpv3_without_net_snmp_on_the_bakery_fails_its_pi_alone(run_module, plugs, monkeypatch, tmp_path):
    monkeypatch.setenv('PATH', str(tmp_path))  # no snmpget anywhere the module looks
    v3 = dict(V3_USER, host='127.0.0.1', port_index=1, version=3)
    pis = [http_item(plugs, 'pi-01', 'shelly1'), {'name': 'pi-v3', 'driver': 'snmp', 'device': v3}]
    result = call(run_module, state='status', pis=pis)
    assert result['failed'] and result['msg'].startswith(
        "program snmpget not found for pi-v3 (driver snmp): it is not an executable file on"), result['msg']
    assert "install net-snmp's tools on the bakery (Debian package snmp" in result['msg']
    assert result['pis'][0]['power'] == 'off' and 'error' not in result['pis'][0]
