# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_wait: the module's main() with the real ssh-keyscan against SSH servers on loopback (tests/tools/sshpi.py,
paramiko, one ed25519 host key each, on a free port): its own key is up, another key is not, a closed port is
not, a device that trickles bytes does not hold the wait past its deadline; and what the module refuses."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time

import pytest
from sshpi import SshPis

from ansible_collections.pifleet.netboot.plugins.modules import pi_wait

pytestmark = pytest.mark.skipif(not shutil.which('ssh-keyscan'), reason='no ssh-keyscan')
UP = '127.0.0.1'  # ansible-lint reads a module-level tuple assignment here as a module's docs and warns
WRONG = '127.0.0.2'
CLOSED = '127.0.0.3'
TRICKLE = '127.0.0.4'


def free_port():
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def key_file(tmp_path, name):
    path = tmp_path / name
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', str(path)], check=True)
    return path, (tmp_path / (name + '.pub')).read_text().strip()


@pytest.fixture
def lan(tmp_path):
    if not shutil.which('ssh-keygen'):
        pytest.skip('no ssh-keygen')
    port = free_port()
    own, own_pub = key_file(tmp_path, 'own')
    other, _other_pub = key_file(tmp_path, 'other')
    _never, never_pub = key_file(tmp_path, 'never')
    pis = SshPis({UP: str(own), WRONG: str(other)}, port=port)
    try:
        yield {'port': port, 'own': own_pub, 'never': never_pub}
    finally:
        pis.close()


@contextlib.contextmanager
def trickler(port):
    """A device that answers byte by byte, never ending its greeting."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((TRICKLE, port))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        conns = []
        while not stop.is_set():
            with contextlib.suppress(socket.timeout, OSError):
                conns.append(server.accept()[0])
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.send(b'S')
        for conn in conns:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_own_key_is_up_other_key_and_closed_port_are_not(run_module, lan):
    pis = [{'name': 'pi-up', 'address': UP, 'host_keys': [lan['own']]},
           {'name': 'pi-wrong', 'address': WRONG, 'host_keys': [lan['own']]},
           {'name': 'pi-closed', 'address': CLOSED, 'host_keys': [lan['own']]}]
    started = time.monotonic()
    outcome = run_module(pi_wait.main, {'pis': pis, 'timeout': 3, 'interval': 1, 'port': lan['port']})
    took = time.monotonic() - started
    assert not outcome.failed and not outcome.result['changed'], outcome.result
    results = {pi['name']: pi for pi in outcome.result['pis']}
    assert results['pi-up'] == dict(results['pi-up'], up=True, key_type='ssh-ed25519', reason=None)
    assert 0 <= results['pi-up']['seconds'] < 3
    assert results['pi-wrong'] == dict(results['pi-wrong'], up=False, seconds=None, key_type=None)
    assert results['pi-wrong']['reason'].startswith('an SSH server answered at 127.0.0.2 with none of its root')
    assert results['pi-closed']['reason'] == 'no SSH server answered at 127.0.0.3 within 3 s'
    assert 3 <= took <= 3 + 1 + 1, took  # the deadline, and at most one look (a second) more: not 2.5 times 3
    assert outcome.result['rounds'] >= 2 and outcome.result['waited'] is True


def test_the_wait_ends_when_every_pi_is_up(run_module, lan):
    started = time.monotonic()
    outcome = run_module(pi_wait.main, {'pis': [{'name': 'pi-up', 'address': UP, 'host_keys': [lan['own']]}],
                                        'timeout': 60, 'port': lan['port']})
    assert outcome.result['pis'][0]['up'] and outcome.result['rounds'] == 1
    assert time.monotonic() - started < 10


def test_a_device_that_trickles_bytes_does_not_hold_the_wait(run_module, lan):
    pis = [{'name': 'pi-slow', 'address': TRICKLE, 'host_keys': [lan['own']]},
           {'name': 'pi-never', 'address': UP, 'host_keys': [lan['never']]}]
    with trickler(lan['port']):
        started = time.monotonic()
        outcome = run_module(pi_wait.main, {'pis': pis, 'timeout': 2, 'interval': 1, 'port': lan['port']})
        took = time.monotonic() - started
    assert [pi['up'] for pi in outcome.result['pis']] == [False, False]
    assert took <= 2 + 1 + 3 + 1, took  # a round held by a blocking read is killed GRACE seconds after its look


def test_check_mode_waits_for_nothing(run_module, lan):
    started = time.monotonic()
    outcome = run_module(pi_wait.main, {'pis': [{'name': 'pi-up', 'address': UP, 'host_keys': [lan['own']]}],
                                        'timeout': 30, 'port': lan['port']}, check_mode=True)
    assert time.monotonic() - started < 2
    assert outcome.result['waited'] is False and outcome.result['rounds'] == 0
    assert outcome.result['pis'] == [{'name': 'pi-up', 'up': False, 'seconds': None, 'key_type': None,
                                      'reason': 'not looked for: check mode waits for nothing'}]


@pytest.mark.parametrize('args, message', [
    ({'pis': [{'name': 'a', 'address': '-oProxyCommand=touch /tmp/x', 'host_keys': []}], 'timeout': 5},
     "pis[0] (a): address '-oProxyCommand=touch /tmp/x' is not an IP address or a host name"),
    ({'pis': [{'name': 'a', 'address': '10.0.0.1,10.0.0.2', 'host_keys': []},
              {'name': 'b', 'address': '10.0.0.3', 'host_keys': []},
              {'name': 'b', 'address': '10.0.0.4', 'host_keys': []}],
      'timeout': -1, 'interval': 0},
     "4 problems in the arguments: pis[0] (a): address '10.0.0.1,10.0.0.2' is not an IP address or a host name; "
     "timeout must be 0 or more seconds, not -1; interval must be 1 or more seconds, not 0; pis: the name(s) b "
     "appear more than once; give each Pi once"),
])
def test_module_refuses_bad_arguments(run_module, args, message):
    outcome = run_module(pi_wait.main, args)
    assert outcome.failed and outcome.result['msg'] == message
