# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Power drivers for Pis without a BMC: the bakery's PPI program, smart plugs, PoE switch ports, USB hubs.

Each driver is a small class with ``status()`` ('on', 'off' or 'unknown') and ``set(on)`` (returns what
the device then reports, 'unknown' if it cannot say). ``converge()`` turns a wanted state into reads
and writes; the parsers of device answers are pure functions, tested on their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from ansible_collections.pifleet.netboot.plugins.module_utils.power import netsnmp as _netsnmp
from ansible_collections.pifleet.netboot.plugins.module_utils.power import snmp as _snmp

PETH_ADMIN_ENABLE = '1.3.6.1.2.1.105.1.1.1.3'  # POWER-ETHERNET-MIB pethPsePortAdminEnable.<group>.<port>
SNMP_TRUE, SNMP_FALSE = 1, 2  # TruthValue
HTTP_APIS = ('shelly1', 'shelly2', 'tasmota')
UHUBCTL_PORT = re.compile(r'^\s*Port (\d+): ([0-9a-fA-F]{4})\b(.*)$')
UHUBCTL_HUB = re.compile(r'^(?:Current|New) status for hub (\S+)')
REQUIRED = object()  # a device key without a default


class PowerError(Exception):
    """Why a device operation failed and what to do; ``transient`` failures are worth retrying."""

    def __init__(self, why, hint=None, transient=False, retries=0):
        super().__init__(why)
        self.why, self.hint, self.transient, self.retries = why, hint, transient, retries
        self.action, self.changed = None, False

    def reason(self):
        return '%s (%d retries)' % (self.why, self.retries) if self.retries else self.why


def with_retries(operation, retries, pause=0.2):
    """Run ``operation``; transient failures are retried ``retries`` times."""
    for attempt in range(retries + 1):
        try:
            return operation()
        except PowerError as exc:
            if not exc.transient or attempt == retries:
                exc.retries = attempt
                raise
        time.sleep(pause)
    raise AssertionError('unreachable')


def short(text, limit=80):
    text = text if isinstance(text, str) else text.decode('utf-8', 'replace')
    text = text.strip().replace('\n', ' | ')
    return repr(text if len(text) <= limit else text[:limit] + '...')


def parse_json(text):
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise PowerError('answered something that is not a JSON object: %s' % short(text),
                         'check device.api matches the plug (shelly1, shelly2 or tasmota) and device.url points at it')
    return answer


def as_state(value, where):
    if isinstance(value, bool):
        return 'on' if value else 'off'
    raise PowerError('answer has no boolean %s' % where, 'check device.api and device.channel match the plug')


def parse_shelly1(text):
    """Shelly Gen1 ``/relay/<ch>``: {"ison": true, ...}."""
    return as_state(parse_json(text).get('ison'), '"ison"')


def parse_shelly2(text):
    """Shelly Gen2+ ``Switch.GetStatus``: {"id": 0, "output": true, ...}."""
    return as_state(parse_json(text).get('output'), '"output"')


def parse_tasmota(text, channel):
    """Tasmota ``/cm?cmnd=Power<n>``: {"POWER<n>": "ON"}; a single relay answers {"POWER": "ON"}."""
    answer = parse_json(text)
    if 'WARNING' in answer:
        raise PowerError('the plug wants credentials: %s' % short(str(answer['WARNING'])),
                         'set device.username and device.password (Tasmota WebPassword)')
    keys = ['POWER%d' % (channel + 1)] + (['POWER'] if channel == 0 else [])
    for key in keys:
        if key in answer and str(answer[key]).upper() in ('ON', 'OFF'):
            return str(answer[key]).lower()
    raise PowerError('answer has no %s: %s' % (' or '.join(keys), short(text)),
                     'check device.channel (0 is the first relay) and device.api')


def check_ppi(rc, out, err):
    """PPI success: exit 0, nothing on stderr, stdout exactly ``ok`` (one trailing newline allowed)."""
    if rc == 0 and not err and (out[:-1] if out.endswith('\n') else out) == 'ok':
        return
    raise PowerError('PPI program answered rc=%s, stdout %s, stderr %s' % (rc, short(out), short(err)),
                     'check the program, its config and the pi_id it knows the Pi by', transient=rc != 0)


def parse_uhubctl(text, location, port):
    """The power of ``port`` on hub ``location`` as uhubctl last printed it ('on' or 'off')."""
    state, hub = None, None
    for line in text.splitlines():
        header = UHUBCTL_HUB.match(line)
        if header:
            hub = header.group(1)
            continue
        match = UHUBCTL_PORT.match(line)
        if match and hub == location and int(match.group(1)) == port:
            flags = match.group(3).split()
            if 'off' in flags:
                state = 'off'
            elif 'power' in flags:
                state = 'on'
            else:
                raise PowerError('uhubctl printed port %d as %s, neither power nor off' % (port, short(line)))
    if state is None:
        raise PowerError('uhubctl shows no port %d on hub %s: %s' % (port, location, short(text, 160)),
                         'check device.location and device.port (uhubctl without options lists hubs and ports)')
    return state


def snmp_state(value):
    if value == SNMP_TRUE:
        return 'on'
    if value == SNMP_FALSE:
        return 'off'
    raise PowerError('pethPsePortAdminEnable is %r, expected 1 (true) or 2 (false)' % (value,),
                     'check device.group and device.port_index name a PoE port')


class Sha256DigestAuthHandler(urllib.request.HTTPDigestAuthHandler):
    """urllib's digest auth knows MD5 and SHA-1; Shelly Gen2+ challenges with SHA-256 (RFC 7616)."""

    def get_algorithm_impls(self, algorithm):
        if algorithm.upper() == 'SHA-256':
            def digest(text):
                return hashlib.sha256(text.encode('utf-8')).hexdigest()
            return digest, lambda secret, data: digest('%s:%s' % (secret, data))
        return super().get_algorithm_impls(algorithm)


class Driver:
    KEYS = {}  # device key -> default; REQUIRED when it has none
    can_query = True
    timed = False  # runs programs on the bakery, bounded by coreutils timeout
    hint = 'check the device is reachable from the bakery'

    @classmethod
    def programs(cls, settings):
        """{settings key: (program, how to get it)} of the programs this device runs on the bakery."""
        if 'program' in settings:
            return {'program': (settings['program'], 'install it or set device.program to its path')}
        return {}

    def __init__(self, device, timeout, retries, runner=None):
        self.device, self.timeout, self.retries, self.runner = device, timeout, retries, runner

    @classmethod
    def settings(cls, device):
        """The driver's keys from ``device`` with defaults; ValueError names a missing or foreign key."""
        given = {key: value for key, value in (device or {}).items() if value is not None}
        foreign = sorted(set(given) - set(cls.KEYS))
        if foreign:
            raise ValueError('device.%s is not a setting of this driver (it takes %s)'
                             % (foreign[0], ', '.join(sorted(cls.KEYS))))
        settings = dict(cls.KEYS, **given)
        missing = [key for key, value in settings.items() if value is REQUIRED]
        if missing:
            raise ValueError('device.%s missing: this driver needs %s'
                             % (missing[0], ', '.join(key for key in cls.KEYS if cls.KEYS[key] is REQUIRED)))
        return settings

    def execute(self, argv, data=None):
        """Run a device program through the runner; rc 124 is the runner's timeout firing."""
        rc, out, err = self.runner(argv, data, self.timeout)
        if rc == 124:
            raise PowerError('timed out after %gs' % self.timeout, transient=True)
        return rc, out, err


class CommandDriver(Driver):
    """The bakery's PPI program: ``<program> -c <config>`` with a JSON request on stdin; no status query."""
    KEYS = {'program': REQUIRED, 'config': REQUIRED, 'pi_id': REQUIRED}
    can_query = False
    timed = True
    hint = 'check the PPI program and its config'

    def describe(self):
        return 'command %s, pi_id %s' % (self.device['program'], self.device['pi_id'])

    def status(self):
        return 'unknown'

    def set(self, on):
        request = json.dumps({'piId': str(self.device['pi_id']), 'action': 'poweron' if on else 'poweroff'})
        argv = [self.device['program'], '-c', self.device['config']]
        with_retries(lambda: check_ppi(*self.execute(argv, request)), self.retries)
        return 'unknown'


class HttpDriver(Driver):
    KEYS = {'url': REQUIRED, 'api': REQUIRED, 'channel': 0, 'username': None, 'password': None}
    hint = 'check the plug is reachable from the bakery'

    def __init__(self, device, timeout, retries, runner=None):
        super().__init__(device, timeout, retries, runner)
        self.base = device['url'].rstrip('/')
        handlers = [urllib.request.ProxyHandler({})]  # plugs sit on the bakery's LAN: never through a proxy
        self.headers = {}
        password = device.get('password')
        username = device.get('username') or 'admin'
        if password and device['api'] == 'shelly2':
            manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            manager.add_password(None, self.base, username, password)
            handlers.append(Sha256DigestAuthHandler(manager))
        elif password and device['api'] == 'shelly1':
            token = base64.b64encode(('%s:%s' % (username, password)).encode('utf-8')).decode('ascii')
            self.headers['Authorization'] = 'Basic %s' % token
        self.opener = urllib.request.build_opener(*handlers)

    @classmethod
    def settings(cls, device):
        settings = super().settings(device)
        if settings['api'] not in HTTP_APIS:
            raise ValueError('device.api is %r: use one of %s' % (settings['api'], ', '.join(HTTP_APIS)))
        if not re.match(r'^https?://[^/?#]+', settings['url']):
            raise ValueError('device.url is %r: give the plug as http://host[:port]' % settings['url'])
        if settings['channel'] < 0:
            raise ValueError('device.channel is %d: channels count from 0' % settings['channel'])
        return settings

    def describe(self):
        return 'http %s %s, channel %d' % (self.device['api'], self.base, self.device['channel'])

    def fetch(self, path):
        return with_retries(lambda: self._fetch_once(path), self.retries)

    def _fetch_once(self, path):
        request = urllib.request.Request(self.base + path, headers=self.headers)
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return response.read(65536).decode('utf-8', 'replace')
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise PowerError('the plug refused the credentials (HTTP %d)' % exc.code,
                                 'check device.username and device.password') from None
            detail = exc.read(512).decode('utf-8', 'replace') if exc.fp else ''
            raise PowerError('HTTP %d %s%s' % (exc.code, exc.reason, ': %s' % short(detail) if detail.strip() else ''),
                             transient=exc.code >= 500) from None
        except (socket.timeout, TimeoutError):
            raise PowerError('timed out after %gs' % self.timeout, transient=True) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                raise PowerError('timed out after %gs' % self.timeout, transient=True) from None
            raise PowerError('cannot connect: %s' % exc.reason, transient=True) from None
        except (OSError, ValueError) as exc:  # reset connections, broken status lines
            raise PowerError('the connection failed: %s' % exc, transient=True) from None

    def status(self):
        api, channel = self.device['api'], self.device['channel']
        if api == 'shelly1':
            return parse_shelly1(self.fetch('/relay/%d' % channel))
        if api == 'shelly2':
            return parse_shelly2(self.fetch('/rpc/Switch.GetStatus?id=%d' % channel))
        return parse_tasmota(self.fetch(self.tasmota('Power%d' % (channel + 1))), channel)

    def set(self, on):
        api, channel = self.device['api'], self.device['channel']
        if api == 'shelly1':
            return parse_shelly1(self.fetch('/relay/%d?turn=%s' % (channel, 'on' if on else 'off')))
        if api == 'shelly2':
            parse_json(self.fetch('/rpc/Switch.Set?id=%d&on=%s' % (channel, 'true' if on else 'false')))
            return self.status()  # Switch.Set answers was_on, the state before
        return parse_tasmota(self.fetch(self.tasmota('Power%d %s' % (channel + 1, 'On' if on else 'Off'))), channel)

    def tasmota(self, command):
        """Tasmota takes its WebPassword as query arguments, not as HTTP authentication."""
        query = [('cmnd', command)]
        if self.device.get('password'):
            query = [('user', self.device.get('username') or 'admin'), ('password', self.device['password']), *query]
        return '/cm?' + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


class SnmpDriver(Driver):
    """A PoE switch port: POWER-ETHERNET-MIB pethPsePortAdminEnable over SNMPv2c (built-in client) or SNMPv3
    (net-snmp's snmpget/snmpset: USM with the authentication and privacy protocols net-snmp offers)."""
    KEYS = {'host': REQUIRED, 'port': 161, 'version': '2c', 'community': 'private', 'group': 1, 'port_index': REQUIRED,
            'user': None, 'auth_protocol': 'SHA', 'auth_key': None, 'priv_protocol': 'AES', 'priv_key': None,
            'security_level': 'authPriv', 'context': None}
    V3_KEYS = ('user', 'auth_protocol', 'auth_key', 'priv_protocol', 'priv_key', 'security_level', 'context')
    hint = 'check the switch is reachable from the bakery and the community is right (agents ignore a wrong one)'
    hint_v3 = ('check the switch is reachable from the bakery; a wrong priv_key or priv_protocol also goes unanswered '
               '(the agent cannot decrypt the request)')

    def __init__(self, device, timeout, retries, runner=None):
        super().__init__(device, timeout, retries, runner)
        self.oid = '%s.%d.%d' % (PETH_ADMIN_ENABLE, device['group'], device['port_index'])
        self.v3 = device['version'] == '3'
        if self.v3:
            self.timed, self.hint = True, self.hint_v3
            tools = {name: device[name] for name in ('snmpget', 'snmpset', 'env')}
            self.client = _netsnmp.NetSnmpClient(device, timeout, retries, tools,
                                                 lambda argv, limit: runner(argv, None, limit))
        else:
            self.client = _snmp.SnmpClient(device['host'], device['port'], device['community'], timeout, retries)

    @classmethod
    def settings(cls, device):
        given = {key for key, value in (device or {}).items() if value is not None}
        settings = super().settings(device)
        version = str(settings['version']).strip().lower().lstrip('v')
        if version not in ('2c', '3'):
            raise ValueError('device.version is %r: use 2c or 3' % (settings['version'],))
        settings['version'] = version
        if version == '2c':
            v3 = sorted(given & set(cls.V3_KEYS))
            if v3:
                raise ValueError('device.%s is a setting of SNMPv3: set version: 3 (user, auth_key, priv_key ...)'
                                 % v3[0])
            return {key: value for key, value in settings.items() if key not in cls.V3_KEYS}
        if 'community' in given:
            raise ValueError('device.community is a setting of SNMPv2c: SNMPv3 uses user, auth_key and priv_key')
        del settings['community']
        return _netsnmp.check(settings)

    @classmethod
    def programs(cls, settings):
        if settings['version'] != '3':
            return {}
        how = "install net-snmp's tools on the bakery (Debian package snmp; the fleet role's fleet_packages has it)"
        return {'snmpget': ('snmpget', how), 'snmpset': ('snmpset', how), 'env': ('env', 'install coreutils')}

    def describe(self):
        version = 'v3 ' if self.v3 else ''
        user = ', user %s' % self.device['user'] if self.v3 else ''
        return 'snmp %s%s:%d%s, PoE group %d port %d' % (version, self.device['host'], self.device['port'], user,
                                                         self.device['group'], self.device['port_index'])

    def call(self, method, *args):
        try:
            return method(self.oid, *args)
        except _snmp.SnmpTimeout:
            raise PowerError('timed out after %gs' % self.timeout, retries=self.retries) from None
        except _snmp.SnmpError as exc:
            if self.v3:
                access = ('check device.group and device.port_index name a PoE port, device.user, auth_protocol and '
                          'auth_key, and that the user may write (rwuser on net-snmp)')
            else:
                access = ('check device.group and device.port_index name a PoE port, and that the community may write '
                          '(rwcommunity)')
            raise PowerError('the switch answered: %s' % exc, access) from None

    def status(self):
        return snmp_state(self.call(self.client.get))

    def set(self, on):
        self.call(self.client.set, SNMP_TRUE if on else SNMP_FALSE)
        return self.status()  # the SET answer echoes the request; read back what the switch did


class UhubctlDriver(Driver):
    """A USB hub port with per-port power switching, through uhubctl."""
    KEYS = {'location': REQUIRED, 'port': REQUIRED, 'program': 'uhubctl'}
    timed = True
    hint = 'check the hub location and port (uhubctl without options lists them)'

    def describe(self):
        return 'uhubctl hub %s port %d' % (self.device['location'], self.device['port'])

    def run(self, extra=()):
        argv = [self.device['program'], '-l', self.device['location'], '-p', str(self.device['port']), *extra]

        def once():
            rc, out, err = self.execute(argv)
            if rc != 0:
                raise PowerError('uhubctl failed (rc=%s): %s' % (rc, short(err or out)))
            return out
        return parse_uhubctl(with_retries(once, self.retries), self.device['location'], self.device['port'])

    def status(self):
        return self.run()

    def set(self, on):
        return self.run(('-a', 'on' if on else 'off'))


DRIVERS = {'command': CommandDriver, 'http': HttpDriver, 'snmp': SnmpDriver, 'uhubctl': UhubctlDriver}


def _step(action, operation, changed=False):
    try:
        return operation()
    except PowerError as exc:
        exc.action, exc.changed = action, changed
        raise


def _switch(driver, on, changed):
    wanted = 'on' if on else 'off'
    seen = _step(wanted, lambda: driver.set(on), changed)
    if seen not in (wanted, 'unknown'):
        error = PowerError('the device reports %s after power %s' % (seen, wanted),
                           'check the device.channel or port really feeds this Pi')
        error.action, error.changed = wanted, True
        raise error


def converge(driver, state, check_mode=False, cycle_delay=3.0, sleep=time.sleep):
    """Bring one Pi to ``state``: dict with previous, power and changed. Raises PowerError with .action set."""
    previous = _step('status', driver.status) if driver.can_query or state == 'status' else 'unknown'
    if state == 'status':
        return {'previous': previous, 'power': previous, 'changed': False}
    if state in ('on', 'off') and previous == state:
        return {'previous': previous, 'power': previous, 'changed': False}
    if not check_mode:
        if state == 'cycled' and previous != 'off':
            _switch(driver, False, False)
            sleep(cycle_delay)
        _switch(driver, state != 'off', state == 'cycled' and previous != 'off')
    return {'previous': previous, 'power': 'off' if state == 'off' else 'on', 'changed': True}
