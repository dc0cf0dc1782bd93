# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""power.netsnmp: SNMPv3 through net-snmp's snmpget/snmpset, against Debian's real snmpd with USM users made by
its own createUser (SHA/AES and the other protocols net-snmp offers), on loopback. The keys never reach a command
line and the private config directory is gone after each request."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest
from powerfakes import SnmpAgent

from ansible_collections.pifleet.netboot.plugins.module_utils.power import netsnmp
from ansible_collections.pifleet.netboot.plugins.module_utils.power import power as _power
from ansible_collections.pifleet.netboot.plugins.module_utils.power import snmp as _snmp

TOOLS = {name: shutil.which(name) for name in ('snmpget', 'snmpset', 'env')}
needs_tools = pytest.mark.skipif(not all(TOOLS.values()) or not shutil.which('snmpd', path='/usr/sbin:/usr/bin'),
                                 reason='needs snmpd and snmp (net-snmp tools)')
PETH = '1.3.6.1.2.1.105.1.1.1.3.1.%d'
# One user per pair of protocols; keys with what a config line must survive (spaces, quotes, backslash, #).
USERS = [
    {'user': 'pf-sha', 'auth_protocol': 'SHA', 'auth_key': 'a "quoted" #key\\1', 'priv_protocol': 'AES',
     'priv_key': "priv key 'one'"},
    {'user': 'pf-256', 'auth_protocol': 'SHA-256', 'auth_key': 'auth-key-256', 'priv_protocol': 'AES-256',
     'priv_key': 'priv-key-256'},
    {'user': 'pf-512', 'auth_protocol': 'SHA-512', 'auth_key': 'auth-key-512', 'priv_protocol': 'AES-192',
     'priv_key': 'priv-key-192'},
    {'user': 'pf-md5', 'auth_protocol': 'MD5', 'auth_key': 'auth-key-md5', 'priv_protocol': 'DES',
     'priv_key': 'priv-key-des'},
    {'user': 'pf-auth', 'auth_protocol': 'SHA', 'auth_key': 'auth-only-key'},
    {'user': 'pf-ro', 'auth_protocol': 'SHA', 'auth_key': 'read-only-key', 'priv_protocol': 'AES',
     'priv_key': 'read-only-priv', 'write': False},
]


def settings(who, **changes):
    device = {'host': '127.0.0.1', 'port_index': 1, 'version': 3, 'user': who['user'],
              'auth_protocol': who['auth_protocol'], 'auth_key': who['auth_key']}
    if who.get('priv_key'):
        device.update(priv_protocol=who['priv_protocol'], priv_key=who['priv_key'])
    else:
        device['security_level'] = 'authNoPriv'
    return dict(device, **changes)


class Recorder:
    """A runner as pi_power's (rc 124 on a timeout) that keeps every argv it ran."""

    def __init__(self):
        self.argvs = []

    def __call__(self, argv, timeout):
        self.argvs.append(list(argv))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return 124, '', ''
        return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope='module')
def agent(tmp_path_factory):
    if not all(TOOLS.values()):
        pytest.skip('needs the snmp package (net-snmp tools)')
    snmpd = SnmpAgent(tmp_path_factory.mktemp('agent'), {(1, port): 2 for port in range(1, 8)}, users=USERS)
    yield snmpd
    snmpd.close()


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Where the client makes its config directories, to see them go."""
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    return tmp_path


def client(agent, device, recorder, timeout=2.0, retries=1):
    checked = _power.SnmpDriver.settings(dict(device, port=agent.port))
    return netsnmp.NetSnmpClient(checked, timeout, retries, TOOLS, recorder)


@needs_tools
@pytest.mark.parametrize('index', range(5))
def test_get_and_set_with_each_protocol_pair(agent, private_tmp, index):
    user = USERS[index]
    recorder = Recorder()
    snmp = client(agent, settings(user), recorder)
    port = index + 1
    assert snmp.get(PETH % port) == 2
    assert snmp.set(PETH % port, 1) == 1
    assert agent.state(1, port) == 1 and snmp.get(PETH % port) == 1
    for argv in recorder.argvs:  # what any local user of the bakery could read in /proc
        assert not any(user[key] in ' '.join(argv) for key in ('auth_key', 'priv_key') if user.get(key))
        assert user['user'] not in argv
    assert list(private_tmp.iterdir()) == []  # the config with the keys is gone


@needs_tools
@pytest.mark.parametrize('change, expected', [
    ({'auth_key': 'wrong-auth-key'}, 'Authentication failure'),
    ({'user': 'pf-nobody'}, 'Unknown user name'),
    ({'auth_protocol': 'SHA-512'}, 'Authentication failure'),
])
def test_wrong_credentials_are_named(agent, private_tmp, change, expected):
    snmp = client(agent, settings(USERS[1], **change), Recorder())
    with pytest.raises(_snmp.SnmpError) as raised:
        snmp.get(PETH % 1)
    assert expected in str(raised.value) and not isinstance(raised.value, _snmp.SnmpTimeout)
    assert 'auth-key' not in str(raised.value) and 'priv-key' not in str(raised.value)


@needs_tools
def test_a_wrong_privacy_key_goes_unanswered(agent, private_tmp):
    snmp = client(agent, settings(USERS[1], priv_key='wrong-priv-key'), Recorder(), timeout=0.5, retries=0)
    with pytest.raises(_snmp.SnmpTimeout):
        snmp.get(PETH % 1)


@needs_tools
def test_a_read_only_user_cannot_switch(agent, private_tmp):
    snmp = client(agent, settings(USERS[5]), Recorder())
    assert snmp.get(PETH % 7) == 2
    with pytest.raises(_snmp.SnmpError) as raised:
        snmp.set(PETH % 7, 1)
    assert 'noAccess' in str(raised.value) or 'notWritable' in str(raised.value) or 'authorization' in str(
        raised.value).lower(), raised.value
    assert agent.state(1, 7) == 2


@needs_tools
def test_no_such_port(agent, private_tmp):
    snmp = client(agent, settings(USERS[1]), Recorder())
    with pytest.raises(_snmp.SnmpError) as raised:
        snmp.get(PETH % 42)
    assert 'No Such' in str(raised.value)


def test_config_lines_quote_what_net_snmp_reads():
    device = {'user': 'pf"x', 'security_level': 'authPriv', 'auth_protocol': 'SHA-256', 'auth_key': 'a b\\"c',
              'priv_protocol': 'AES', 'priv_key': 'p#q', 'context': 'bridge1'}
    text = netsnmp.config(device, '/run/x y')
    assert text.splitlines() == [
        'defVersion 3', 'defSecurityName "pf\\"x"', 'defSecurityLevel authPriv', 'defAuthType SHA-256',
        'defAuthPassphrase "a b\\\\\\"c"', 'defPrivType AES', 'defPrivPassphrase "p#q"', 'defContext "bridge1"',
        'persistentDir "/run/x y"', 'noPersistentLoad yes', 'noPersistentSave yes', 'mibs :']
    assert 'defPriv' not in netsnmp.config(dict(device, security_level='authNoPriv'), '/d')


@pytest.mark.parametrize('device, error', [
    ({'auth_key': 'short'}, 'device.auth_key is too short: SNMPv3 pass phrases have at least 8 characters'),
    ({'priv_key': None}, 'device.priv_key is missing'),
    ({'auth_key': 'two\nlines-key'}, 'device.auth_key holds a control character'),
    ({'auth_protocol': 'SHA3'}, "device.auth_protocol is 'SHA3': use one of MD5, SHA, SHA-224, SHA-256"),
    ({'priv_protocol': '3DES'}, "device.priv_protocol is '3DES': use one of DES, AES, AES-192, AES-256"),
    ({'user': None}, 'device.user missing'),
    ({'community': 'public'}, 'device.community is a setting of SNMPv2c'),
    ({'version': 1}, "device.version is 1: use 2c or 3"),
    ({'security_level': 'noAuthNoPriv'}, "device.security_level is 'noAuthNoPriv': use authPriv or authNoPriv"),
    ({'version': '2c', 'auth_key': 'auth-key-256'}, 'device.auth_key is a setting of SNMPv3: set version: 3'),
])
def test_settings_refuse_what_would_fail_later(device, error):
    with pytest.raises(ValueError) as raised:
        _power.SnmpDriver.settings(settings(USERS[1], **device))
    assert str(raised.value).startswith(error), raised.value


def test_v3_settings_and_the_programs_it_runs():
    checked = _power.SnmpDriver.settings(settings(USERS[1], auth_protocol='sha-256', version='v3'))
    assert checked['version'] == '3' and checked['auth_protocol'] == 'SHA-256' and 'community' not in checked
    assert sorted(_power.SnmpDriver.programs(checked)) == ['env', 'snmpget', 'snmpset']
    assert _power.SnmpDriver.programs(_power.SnmpDriver.settings({'host': 'h', 'port_index': 1})) == {}
    assert netsnmp.agent('fe80::1', 161) == 'udp6:[fe80::1]:161' and netsnmp.agent('sw1', 1161) == 'udp:sw1:1161'
