# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real fakes of the devices pi_power drives, all on loopback or in a temporary directory.

- ``PlugServer``: an HTTP server speaking Shelly Gen1, Shelly Gen2+ RPC (SHA-256 digest authentication
  when a password is set) and Tasmota, with per-plug state and failure modes.
- ``PpiFake``: a PPI program (``<prog> -c <config>``, JSON on stdin, ``ok`` on stdout) keeping state in a file.
- ``UhubctlFake``: a ``uhubctl`` printing the real output format from a state file.
- ``SnmpAgent``: Debian's real ``snmpd`` on 127.0.0.1, with a writable pethPsePortAdminEnable column
  served by a ``pass_persist`` script backed by a state file; started and killed by its PID.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ansible_collections.pifleet.netboot.plugins.module_utils.power import snmp as _snmp

PETH = '.1.3.6.1.2.1.105.1.1.1.3'


class Plug:
    def __init__(self, name, api, channels=1, on=False, username='admin', password=None, mode='ok', status=500,  # noqa: PLR0917
                 delay=0.0):
        self.name, self.api, self.state, self.delay = name, api, [on] * channels, delay
        self.username, self.password, self.mode, self.status = username, password, mode, status
        self.realm = '%s-fake%s' % ('shellyplus1pm' if api == 'shelly2' else api, name)
        self.nonces, self.sets, self.requests = set(), 0, []


class PlugServer:
    """One server, many plugs: plug ``name`` lives under ``/d/<name>``, its base URL is ``url(name)``."""

    def __init__(self, address='127.0.0.1'):
        """Listens on ``address`` in the network namespace of the calling thread (a lab LAN's router, say)."""
        self.plugs, self.lock, self.stopping = {}, threading.Lock(), threading.Event()
        self.server = ThreadingHTTPServer((address, 0), _PlugHandler)
        self.server.daemon_threads = True
        self.server.fake = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, name, api, **settings):
        """Settings: channels, on, username, password, delay (seconds before answering), and ``mode``:
        'ok', 'timeout' (accepts, never answers), 'garbage' (200, not JSON) or 'refuse' (answers HTTP ``status``,
        500 unless given)."""
        self.plugs[name] = Plug(name, api, **settings)
        return self.url(name)

    def url(self, name):
        return 'http://%s:%d/d/%s' % (*self.server.server_address[:2], name)

    def close(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


class _PlugHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        fake = self.server.fake
        match = re.match(r'^/d/([^/]+)(/[^?]*)(?:\?(.*))?$', self.path)
        plug = fake.plugs.get(match.group(1)) if match else None
        if plug is None:
            return self.send_error(404)
        path, query = match.group(2), urllib.parse.parse_qs(match.group(3) or '')
        with fake.lock:
            plug.requests.append(path + ('?' + match.group(3) if match.group(3) else ''))
        if plug.delay:
            time.sleep(plug.delay)
        if plug.mode == 'timeout':
            fake.stopping.wait(60)
            return None
        if plug.mode == 'garbage':
            return self.answer(200, '<html><body>Welcome to nginx!</body></html>', 'text/html')
        if plug.mode == 'refuse':
            return self.answer(plug.status, '{"code": -1, "message": "refused by the fake"}')
        if not self.authorised(plug, query):
            return None
        getattr(self, plug.api)(plug, path, query)
        return None

    def answer(self, code, body, kind='application/json', headers=()):
        data = body.encode('utf-8')
        self.send_response(code)
        self.send_header('Content-Type', kind)
        self.send_header('Content-Length', str(len(data)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def authorised(self, plug, query):  # noqa: PLR0911
        if not plug.password:
            return True
        header = self.headers.get('Authorization', '')
        if plug.api == 'shelly1':
            token = base64.b64encode(('%s:%s' % (plug.username, plug.password)).encode()).decode()
            if header == 'Basic ' + token:
                return True
            self.answer(401, '401 Unauthorized', 'text/plain', [('WWW-Authenticate', 'Basic realm="%s"' % plug.realm)])
            return False
        if plug.api == 'tasmota':
            if query.get('user') == [plug.username] and query.get('password') == [plug.password]:
                return True
            self.answer(200, '{"WARNING":"Need user=<username>&password=<password>"}')
            return False
        if header.startswith('Digest ') and self.digest_ok(plug, header[7:]):
            return True
        nonce = secrets.token_hex(8)
        plug.nonces.add(nonce)
        challenge = 'Digest qop="auth", realm="%s", nonce="%s", algorithm=SHA-256' % (plug.realm, nonce)
        self.answer(401, '', 'text/plain', [('WWW-Authenticate', challenge)])
        return False

    def digest_ok(self, plug, text):
        """RFC 7616 with SHA-256, as Shelly Gen2+ checks it (user is always admin)."""
        fields = {key: quoted or bare for key, quoted, bare in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', text)}

        def sha(value):
            return hashlib.sha256(value.encode()).hexdigest()
        if fields.get('username') != plug.username or fields.get('nonce') not in plug.nonces:
            return False
        if fields.get('uri') != self.path or fields.get('algorithm', 'MD5').upper() != 'SHA-256':
            return False
        ha1 = sha('%s:%s:%s' % (plug.username, plug.realm, plug.password))
        ha2 = sha('GET:%s' % self.path)
        expected = sha(':'.join([ha1, fields['nonce'], fields.get('nc', ''), fields.get('cnonce', ''),
                                 fields.get('qop', ''), ha2]))
        return secrets.compare_digest(expected, fields.get('response', ''))

    def switch(self, plug, channel, on):
        with self.server.fake.lock:
            before = plug.state[channel]
            plug.state[channel] = on
            plug.sets += 1
        return before

    def shelly1(self, plug, path, query):
        match = re.match(r'^/relay/(\d+)$', path)
        channel = int(match.group(1)) if match else -1
        if not 0 <= channel < len(plug.state):
            return self.answer(404, 'Not Found', 'text/plain')
        if 'turn' in query:
            self.switch(plug, channel, query['turn'][0] == 'on')
        return self.answer(200, json.dumps({'ison': plug.state[channel], 'has_timer': False, 'timer_started': 0,
                                            'timer_duration': 0, 'timer_remaining': 0, 'source': 'http'}))

    def shelly2(self, plug, path, query):
        channel = int(query.get('id', ['0'])[0])
        if path not in ('/rpc/Switch.GetStatus', '/rpc/Switch.Set'):
            return self.answer(404, '{"code":404,"message":"No handler for %s"}' % path)
        if not 0 <= channel < len(plug.state):
            return self.answer(500, '{"code":-105,"message":"Argument \'id\', value %d not found!"}' % channel)
        if path == '/rpc/Switch.Set':
            was_on = self.switch(plug, channel, query.get('on') == ['true'])
            return self.answer(200, json.dumps({'was_on': was_on}))
        return self.answer(200, json.dumps({'id': channel, 'source': 'init', 'output': plug.state[channel],
                                            'temperature': {'tC': 41.2, 'tF': 106.2}}))

    def tasmota(self, plug, path, query):
        match = re.match(r'^power(\d*)(?: (on|off|1|0))?$', query.get('cmnd', [''])[0].strip(), re.I)
        if path != '/cm' or not match:
            return self.answer(200, '{"Command":"Unknown"}')
        channel = int(match.group(1) or 1) - 1
        if not 0 <= channel < len(plug.state):
            return self.answer(200, '{"Command":"Unknown"}')
        if match.group(2):
            self.switch(plug, channel, match.group(2).lower() in ('on', '1'))
        key = 'POWER' if len(plug.state) == 1 else 'POWER%d' % (channel + 1)
        return self.answer(200, json.dumps({key: 'ON' if plug.state[channel] else 'OFF'}))


def _write_script(path, body):
    path.write_text('#!%s\n%s' % (sys.executable, body))
    path.chmod(0o755)
    return str(path)


def _load(path):
    return json.loads(Path(path).read_text())


def _store(path, data):
    tmp = Path(str(path) + '.tmp')
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


PPI_SCRIPT = r'''import fcntl, json, sys, time
config = json.load(open(sys.argv[sys.argv.index('-c') + 1]))
request = json.loads(sys.stdin.read())
pi, action = request.get('piId'), request.get('action')
mode = config.get('fail', {}).get(pi)
if mode == 'hang':
    time.sleep(60)
if mode == 'exit':
    sys.stderr.write('relay board did not answer\n')
    sys.exit(3)
with open(config['state'] + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    state = json.load(open(config['state']))
    if pi not in state['pis'] or action not in ('poweron', 'poweroff'):
        sys.stderr.write('unknown pi or action: %r\n' % (request,))
        sys.exit(2)
    state['pis'][pi] = 'on' if action == 'poweron' else 'off'
    state['calls'].append([pi, action])
    with open(config['state'], 'w') as out:
        json.dump(state, out)
if mode == 'stderr':
    sys.stderr.write('warning: slow relay\n')
print('done' if mode == 'garbage' else 'ok')
'''


class PpiFake:
    def __init__(self, top, pis):
        top = Path(top)
        self.state_file, self.config = top / 'ppi-state.json', str(top / 'ppi.json')
        self.program = _write_script(top / 'ppi', PPI_SCRIPT)
        _store(self.state_file, {'pis': dict(pis), 'calls': []})
        self.fail({})

    def fail(self, modes):
        """``modes``: pi_id -> 'exit' | 'stderr' | 'garbage' | 'hang'."""
        _store(self.config, {'state': str(self.state_file), 'fail': modes})

    def state(self, pi_id):
        return _load(self.state_file)['pis'][pi_id]

    def calls(self):
        return _load(self.state_file)['calls']


UHUBCTL_SCRIPT = r'''import fcntl, json, os, sys, time
args = sys.argv[1:]
opt = {args[i]: args[i + 1] for i in range(0, len(args) - 1, 2)}
path = __file__ + '.json'
# Pis on one hub are switched in parallel: one uhubctl at a time reads and rewrites the state.
lock = open(path + '.lock', 'w')
fcntl.flock(lock, fcntl.LOCK_EX)
state = json.load(open(path))
hub = state['hubs'].get(opt.get('-l'))
if hub is None:
    sys.stderr.write('No compatible devices detected at location %s!\nRun with -h to get usage info.\n' % opt.get('-l'))
    sys.exit(1)
if hub.get('hang'):
    lock.close()  # a hung hub must not hold up the others
    time.sleep(60)
ports = [p for p in opt.get('-p', ','.join(hub['ports'])).split(',') if p in hub['ports']]
desc = '2109:3431 VIA Labs, Inc. USB2.0 Hub, USB 2.10, %d ports, ppps' % len(hub['ports'])
def show(title):
    print('%s status for hub %s [%s]' % (title, opt['-l'], desc))
    for port in ports:
        on = hub['ports'][port] == 'on'
        print('  Port %s: %s' % (port, '0503 power highspeed enable connect [0424:ec00]' if on else '0000 off'))
show('Current')
if '-a' in opt:
    for port in ports:
        hub['ports'][port] = 'on' if opt['-a'] in ('on', '1') else 'off'
    state['calls'].append([opt['-l'], ports, opt['-a']])
    with open(path + '.tmp', 'w') as out:
        json.dump(state, out)
    os.replace(path + '.tmp', path)
    print('Sent power %s request' % ('on' if opt['-a'] in ('on', '1') else 'off'))
    show('New')
'''


class UhubctlFake:
    def __init__(self, top, hubs):
        """``hubs``: location -> {port number: 'on' | 'off'}."""
        self.program = _write_script(Path(top) / 'uhubctl', UHUBCTL_SCRIPT)
        self.state_file = self.program + '.json'
        _store(self.state_file, {'hubs': {loc: {'ports': {str(p): s for p, s in ports.items()}}
                                          for loc, ports in hubs.items()}, 'calls': []})

    def state(self, location, port):
        return _load(self.state_file)['hubs'][location]['ports'][str(port)]

    def hang(self, location):
        data = _load(self.state_file)
        data['hubs'][location]['hang'] = True
        _store(self.state_file, data)

    def calls(self):
        return _load(self.state_file)['calls']


PETH_SCRIPT = r'''import json, os, sys
BASE, path = '%s', sys.argv[1]
def load():
    return {tuple(int(x) for x in k.split('.')): v for k, v in json.load(open(path)).items()}
def key(oid):
    if oid == BASE:
        return ()
    if not oid.startswith(BASE + '.'):
        return None
    return tuple(int(x) for x in oid[len(BASE) + 1:].split('.'))
def out(*lines):
    sys.stdout.write(''.join(line + '\n' for line in lines))
    sys.stdout.flush()
while True:
    line = sys.stdin.readline()
    if not line:
        break
    command = line.strip()
    if not command:
        continue  # snmpd ends a set with an empty line
    if command == 'PING':
        out('PONG')
        continue
    oid = sys.stdin.readline().strip()
    wanted, table = key(oid), load()
    if command == 'get':
        out(oid, 'integer', str(table[wanted])) if wanted in table else out('NONE')
    elif command == 'getnext':
        later = sorted(k for k in table if wanted is not None and k > wanted)
        out(BASE + '.' + '.'.join(map(str, later[0])), 'integer', str(table[later[0]])) if later else out('NONE')
    elif command == 'set':
        kind, _unused, value = sys.stdin.readline().strip().partition(' ')
        if wanted not in table:
            out('not-writable')
        elif kind != 'integer':
            out('wrong-type')
        elif value not in ('1', '2'):
            out('wrong-value')
        else:
            table[wanted] = int(value)
            with open(path + '.tmp', 'w') as f:
                json.dump({'.'.join(map(str, k)): v for k, v in table.items()}, f)
            os.replace(path + '.tmp', path)
            out('DONE')
    else:
        out('NONE')
''' % PETH


def _snmpd_quoted(text):
    return '"%s"' % text.replace('\\', '\\\\').replace('"', '\\"')


def _user_lines(user):
    """createUser and rwuser/rouser lines of snmpd.conf for one SNMPv3 user."""
    create = 'createUser %s %s %s' % (user['user'], user.get('auth_protocol', 'SHA'), _snmpd_quoted(user['auth_key']))
    if user.get('priv_key'):
        create += ' %s %s' % (user.get('priv_protocol', 'AES'), _snmpd_quoted(user['priv_key']))
    access = 'rwuser' if user.get('write', True) else 'rouser'
    return '%s\n%s %s %s\n' % (create, access, user['user'], 'priv' if user.get('priv_key') else 'auth')


def _free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class SnmpAgent:
    """snmpd on 127.0.0.1:<free port> serving pethPsePortAdminEnable for ``ports`` {(group, port): 1|2}.

    ``users``: SNMPv3 users, each {user, auth_protocol, auth_key, priv_protocol, priv_key (none: authNoPriv),
    write (default true)}, made with snmpd's own createUser (USM, as a switch has them) beside the v2c community.
    """

    def __init__(self, top, ports, community='private', users=()):
        self.snmpd = shutil.which('snmpd') or '/usr/sbin/snmpd'
        if not os.access(self.snmpd, os.X_OK):
            raise RuntimeError('snmpd not installed: apt-get install snmpd')
        top = Path(top)
        top.mkdir(parents=True, exist_ok=True)
        self.top, self.community, self.state_file = top, community, top / 'peth.json'
        self.users = list(users)
        _store(self.state_file, {'%d.%d' % key: value for key, value in ports.items()})
        self.script = _write_script(top / 'peth.py', PETH_SCRIPT)
        (top / 'persist').mkdir(exist_ok=True)
        self.process = None
        for _attempt in range(5):  # another process may take the free port before snmpd binds it
            self.port = _free_udp_port()
            if self._start():
                return
        raise RuntimeError('snmpd did not start: %s' % (top / 'snmpd.log').read_text()[-2000:])

    def _start(self):
        conf = self.top / 'snmpd.conf'
        conf.write_text('agentaddress udp:127.0.0.1:%d\nrwcommunity %s 127.0.0.1\npass_persist %s %s %s %s\n%s'
                        % (self.port, self.community, PETH, sys.executable, self.script, self.state_file,
                           ''.join(_user_lines(user) for user in self.users)))
        env = dict(os.environ, SNMP_PERSISTENT_DIR=str(self.top / 'persist'), MIBS='')
        with open(self.top / 'snmpd.log', 'ab') as log:
            self.process = subprocess.Popen([self.snmpd, '-f', '-Lo', '-C', '-c', str(conf)], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self._answers():
                return True
            time.sleep(0.1)
        self.close()
        return False

    def _answers(self):
        try:
            _snmp.SnmpClient('127.0.0.1', self.port, self.community, 0.2, 0).get('1.3.6.1.2.1.1.1.0')
        except _snmp.SnmpError:
            return False
        return True

    def state(self, group, port):
        return _load(self.state_file)['%d.%d' % (group, port)]

    def close(self):
        """Stop snmpd and its pass_persist child (its own session, killed by our PID as group leader)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
