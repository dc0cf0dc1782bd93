# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_power: parsers of device answers (table-driven), device settings, retries, converge() on a recording
driver, and the HTTP driver against the loopback plug server (digest with SHA-256, Tasmota credentials)."""

from __future__ import annotations

import pytest
from powerfakes import PlugServer

from ansible_collections.pifleet.netboot.plugins.module_utils.power import power as _power
from ansible_collections.pifleet.netboot.plugins.module_utils.power.power import PowerError

UHUB_STATUS = """Current status for hub 1-1 [2109:3431 VIA Labs, Inc. USB2.0 Hub, USB 2.10, 4 ports, ppps]
  Port 1: 0503 power highspeed enable connect [0424:ec00]
  Port 2: 0100 power
  Port 3: 0000 off
  Port 4: 0303 power lowspeed enable connect [046d:c077 Logitech USB Optical Mouse]
"""
UHUB_SET_OFF = """Current status for hub 1-1 [2109:3431 VIA Labs, Inc. USB2.0 Hub, USB 2.10, 4 ports, ppps]
  Port 2: 0503 power highspeed enable connect [0424:ec00]
Sent power off request
New status for hub 1-1 [2109:3431 VIA Labs, Inc. USB2.0 Hub, USB 2.10, 4 ports, ppps]
  Port 2: 0000 off
"""
UHUB_DUAL = """Current status for hub 2-1 [2109:0817 VIA Labs, Inc. USB3.0 Hub, USB 3.10, 4 ports, ppps]
  Port 2: 0080 off
Current status for hub 1-1 [2109:2817 VIA Labs, Inc. USB2.0 Hub, USB 2.10, 4 ports, ppps]
  Port 2: 0100 power
"""
UHUB_USB3 = """Current status for hub 2-1 [2109:0817 VIA Labs, Inc. USB3.0 Hub, USB 3.10, 4 ports, ppps]
  Port 1: 02a0 power 5gbps Rx.Detect
"""


@pytest.mark.parametrize('parse, text, state', [
    (_power.parse_shelly1, '{"ison": true, "has_timer": false}', 'on'),
    (_power.parse_shelly1, '{"ison": false}', 'off'),
    (_power.parse_shelly2, '{"id": 0, "source": "init", "output": true}', 'on'),
    (_power.parse_shelly2, '{"id": 1, "output": false, "apower": 0.0}', 'off'),
])
def test_shelly_answers(parse, text, state):
    assert parse(text) == state


@pytest.mark.parametrize('parse, text, error', [
    (_power.parse_shelly1, '<html>nginx</html>', 'not a JSON object'),
    (_power.parse_shelly1, '[true]', 'not a JSON object'),
    (_power.parse_shelly1, '{"ison": "on"}', 'no boolean "ison"'),
    (_power.parse_shelly2, '{"was_on": true}', 'no boolean "output"'),
    (_power.parse_shelly2, '', 'not a JSON object'),
])
def test_bad_shelly_answers(parse, text, error):
    with pytest.raises(PowerError, match=error):
        parse(text)


@pytest.mark.parametrize('text, channel, state', [
    ('{"POWER":"ON"}', 0, 'on'), ('{"POWER1":"OFF"}', 0, 'off'), ('{"POWER2":"ON"}', 1, 'on'),
    ('{"POWER1":"off","POWER2":"ON"}', 0, 'off'), ('{"POWER8":"OFF"}', 7, 'off'),
])
def test_tasmota_answers(text, channel, state):
    assert _power.parse_tasmota(text, channel) == state


@pytest.mark.parametrize('text, channel, error', [
    ('{"POWER":"ON"}', 1, 'no POWER2'),
    ('{"Command":"Unknown"}', 0, 'no POWER1 or POWER'),
    ('{"POWER1":"TOGGLE"}', 0, 'no POWER1'),
    ('{"WARNING":"Need user=<username>&password=<password>"}', 0, 'wants credentials'),
    ('POWER = ON', 0, 'not a JSON object'),
])
def test_bad_tasmota_answers(text, channel, error):
    with pytest.raises(PowerError, match=error):
        _power.parse_tasmota(text, channel)


@pytest.mark.parametrize('rc, out, err, ok, transient', [
    (0, 'ok', '', True, False), (0, 'ok\n', '', True, False), (0, 'ok\n\n', '', False, False),
    (0, 'OK', '', False, False), (0, ' ok', '', False, False), (0, 'ok', 'warning: slow\n', False, False),
    (0, 'done', '', False, False), (1, 'ok', '', False, True), (3, '', 'relay board did not answer', False, True),
])
def test_ppi_answers(rc, out, err, ok, transient):
    if ok:
        _power.check_ppi(rc, out, err)
        return
    with pytest.raises(PowerError, match='PPI program answered rc=%d' % rc) as info:
        _power.check_ppi(rc, out, err)
    assert info.value.transient is transient


@pytest.mark.parametrize('text, location, port, state', [
    (UHUB_STATUS, '1-1', 1, 'on'), (UHUB_STATUS, '1-1', 2, 'on'), (UHUB_STATUS, '1-1', 3, 'off'),
    (UHUB_STATUS, '1-1', 4, 'on'), (UHUB_SET_OFF, '1-1', 2, 'off'), (UHUB_DUAL, '1-1', 2, 'on'),
    (UHUB_DUAL, '2-1', 2, 'off'), (UHUB_USB3, '2-1', 1, 'on'),
])
def test_uhubctl_output(text, location, port, state):
    assert _power.parse_uhubctl(text, location, port) == state


@pytest.mark.parametrize('text, location, port', [
    (UHUB_STATUS, '1-1', 5), (UHUB_STATUS, '1-2', 1), ('', '1-1', 1),
    ('No compatible devices detected at location 1-1!\n', '1-1', 1),
])
def test_uhubctl_output_without_the_port(text, location, port):
    with pytest.raises(PowerError, match='uhubctl shows no port %d on hub %s' % (port, location)):
        _power.parse_uhubctl(text, location, port)


@pytest.mark.parametrize('value, state', [(1, 'on'), (2, 'off'), (0, None), (3, None), (b'\x01', None), (None, None)])
def test_snmp_truth_values(value, state):
    if state:
        assert _power.snmp_state(value) == state
    else:
        with pytest.raises(PowerError, match='expected 1 \\(true\\) or 2 \\(false\\)'):
            _power.snmp_state(value)


@pytest.mark.parametrize('driver, device, expected', [
    ('snmp', {'host': 'sw1', 'port_index': 4}, {'host': 'sw1', 'port': 161, 'version': '2c', 'community': 'private',
                                                'group': 1, 'port_index': 4}),
    ('http', {'url': 'http://10.0.0.7', 'api': 'tasmota', 'password': None},
     {'url': 'http://10.0.0.7', 'api': 'tasmota', 'channel': 0, 'username': None, 'password': None}),
    ('uhubctl', {'location': '1-1', 'port': 2}, {'location': '1-1', 'port': 2, 'program': 'uhubctl'}),
    ('command', {'program': '/p', 'config': '/c', 'pi_id': '3a4b5c6d'},
     {'program': '/p', 'config': '/c', 'pi_id': '3a4b5c6d'}),
])
def test_settings_defaults(driver, device, expected):
    assert _power.DRIVERS[driver].settings(device) == expected


@pytest.mark.parametrize('driver, device, error', [
    ('snmp', {'host': 'sw1'}, r'device.port_index missing: this driver needs host, port_index'),
    ('snmp', {'host': 'sw1', 'port_index': 1, 'url': 'http://x'}, r'device.url is not a setting of this driver'),
    ('http', {'url': 'http://x', 'api': 'tasmota', 'community': 'c'}, r'device.community is not a setting'),
    ('http', {'url': '10.0.0.7', 'api': 'shelly1'}, r'give the plug as http://host\[:port\]'),
    ('http', {'url': 'http://x', 'api': 'shelly3'}, r'use one of shelly1, shelly2, tasmota'),
    ('http', {'url': 'http://x', 'api': 'shelly1', 'channel': -1}, r'channels count from 0'),
    ('command', {'program': '/p', 'config': '/c'}, r'device.pi_id missing'),
    ('uhubctl', {'port': 1}, r'device.location missing'),
])
def test_settings_errors(driver, device, error):
    with pytest.raises(ValueError, match=error):
        _power.DRIVERS[driver].settings(device)


def flaky(failures, transient=True):
    calls = []

    def operation():
        calls.append(1)
        if len(calls) <= failures:
            raise PowerError('timed out after 1s', transient=transient)
        return 'done'
    return operation, calls


@pytest.mark.parametrize('failures, retries, transient, calls, outcome', [
    (0, 2, True, 1, 'done'), (2, 2, True, 3, 'done'), (3, 2, True, 3, 'timed out after 1s (2 retries)'),
    (1, 0, True, 1, 'timed out after 1s'), (1, 5, False, 1, 'timed out after 1s'),
])
def test_with_retries(failures, retries, transient, calls, outcome):
    operation, made = flaky(failures, transient)
    if outcome == 'done':
        assert _power.with_retries(operation, retries, pause=0) == 'done'
    else:
        with pytest.raises(PowerError) as info:
            _power.with_retries(operation, retries, pause=0)
        assert info.value.reason() == outcome
    assert len(made) == calls


class Recorder:
    """A driver that records what converge() asks of it."""

    def __init__(self, power, can_query=True, after=None, fail_on=None):
        self.power, self.can_query, self.after, self.fail_on, self.calls = power, can_query, after, fail_on, []

    def status(self):
        self.calls.append('status')
        return self.power if self.can_query else 'unknown'

    def set(self, on):
        self.calls.append('on' if on else 'off')
        if self.fail_on == self.calls[-1]:
            raise PowerError('timed out after 5s', transient=True)
        self.power = self.after or ('on' if on else 'off')
        return self.power if self.can_query else 'unknown'


@pytest.mark.parametrize('start, state, check, calls, result', [
    (('off', True), 'status', False, ['status'], ('off', 'off', False)),
    (('on', True), 'on', False, ['status'], ('on', 'on', False)),
    (('off', True), 'on', False, ['status', 'on'], ('off', 'on', True)),
    (('on', True), 'off', False, ['status', 'off'], ('on', 'off', True)),
    (('off', True), 'off', False, ['status'], ('off', 'off', False)),
    (('on', True), 'cycled', False, ['status', 'off', 'sleep', 'on'], ('on', 'on', True)),
    (('off', True), 'cycled', False, ['status', 'on'], ('off', 'on', True)),
    (('off', True), 'on', True, ['status'], ('off', 'on', True)),
    (('on', True), 'cycled', True, ['status'], ('on', 'on', True)),
    (('on', True), 'on', True, ['status'], ('on', 'on', False)),
    (('on', False), 'status', False, ['status'], ('unknown', 'unknown', False)),
    (('on', False), 'on', False, ['on'], ('unknown', 'on', True)),
    (('on', False), 'off', True, [], ('unknown', 'off', True)),
    (('off', False), 'cycled', False, ['off', 'sleep', 'on'], ('unknown', 'on', True)),
])
def test_converge(start, state, check, calls, result):
    driver = Recorder(*start)  # (power, can_query)
    outcome = _power.converge(driver, state, check, 7, sleep=lambda seconds: driver.calls.append('sleep'))
    assert driver.calls == calls
    assert (outcome['previous'], outcome['power'], outcome['changed']) == result


@pytest.mark.parametrize('state, fail_on, action, changed', [
    ('on', 'on', 'on', False), ('cycled', 'off', 'off', False), ('cycled', 'on', 'on', True),
])
def test_converge_failures_say_which_step_and_whether_anything_changed(state, fail_on, action, changed):
    with pytest.raises(PowerError) as info:
        _power.converge(Recorder('on' if state == 'cycled' else 'off', fail_on=fail_on), state, sleep=lambda s: None)
    assert (info.value.action, info.value.changed) == (action, changed)


def test_converge_notices_a_device_that_did_not_switch():
    with pytest.raises(PowerError, match='the device reports off after power on') as info:
        _power.converge(Recorder('off', after='off'), 'on')
    assert (info.value.action, info.value.changed) == ('on', True)


@pytest.fixture
def plugs():
    server = PlugServer()
    yield server
    server.close()


@pytest.mark.parametrize('api', ['shelly1', 'shelly2', 'tasmota'])
def test_http_driver_with_credentials(plugs, api):
    url = plugs.add('p', api, channels=3, password='p@ss word&=', on=True)
    device = _power.HttpDriver.settings({'url': url + '/', 'api': api, 'channel': 2, 'password': 'p@ss word&='})
    driver = _power.HttpDriver(device, timeout=2, retries=0)
    assert driver.status() == 'on'
    assert driver.set(False) == 'off'
    assert plugs.plugs['p'].state == [True, True, False]
    assert driver.describe() == 'http %s %s, channel 2' % (api, url)


@pytest.mark.parametrize('api', ['shelly1', 'shelly2'])
def test_http_driver_with_a_wrong_password(plugs, api):
    url = plugs.add('p', api, password='right')
    driver = _power.HttpDriver(_power.HttpDriver.settings({'url': url, 'api': api, 'password': 'wrong'}), 2, 2)
    with pytest.raises(PowerError, match=r'refused the credentials \(HTTP 401\)') as info:
        driver.status()
    assert info.value.retries == 0  # a wrong password is not retried
