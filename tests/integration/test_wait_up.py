# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/tasks/wait_up.yml (reimage, upgrade and rollback's wait) with ansible-playbook and the real ssh-keyscan:
SSH servers on loopback (tests/tools/sshpi.py), one pi_wait call per bakery, one bakery that cannot be reached and
one whose call fails, each costing only its own Pis.

pi-up answers with its root's key, pi-wrong with another key, pi-silent never answers (its address accepts no
connection: a full accept queue drops the SYNs, as a Pi that is off, so each look waits out its time), pi-00 to
pi-11 answer too (more Pis than ansible's forks: each is looked at from the first round, none given up), pi-skip is
not waited for; pi-far is up but its bakery (bakery-far) cannot be reached; pi-odd's bakery gets an address
ssh-keyscan would read as two hosts, so its call fails. The silent Pi is given up at the deadline and at most about
one look more.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from sshpi import SshPis

REPO = Path(__file__).resolve().parents[2]
WAIT_UP = Path(os.environ.get('PIFLEET_WAIT_UP_FILE', str(REPO / 'playbooks/tasks/wait_up.yml')))
ADDRESS = {'pi-up': '127.0.98.11', 'pi-wrong': '127.0.98.12', 'pi-silent': '127.0.98.13', 'pi-skip': '127.0.98.14',
           'pi-far': '127.0.98.15', 'pi-odd': '127.0.98.16,127.0.98.11'}
BAKERY = {'pi-up': 'bakery', 'pi-wrong': 'bakery', 'pi-silent': 'bakery', 'pi-skip': 'bakery', 'pi-far': 'bakery-far',
          'pi-odd': 'bakery-odd'}
# More Pis that answer than ansible has forks (5), on the same bakery: one call looks at them all in its first round.
MANY = {'pi-%02d' % number: '127.0.98.%d' % (100 + number) for number in range(12)}
ADDRESS.update(MANY)
BAKERY.update(dict.fromkeys(MANY, 'bakery'))
SERIAL = {name: '%08x' % (0xa0 + index) for index, name in enumerate(ADDRESS)}

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not all(map(shutil.which, ('ssh-keyscan', 'ssh-keygen'))),
                                reason='needs root (port 22 on loopback), ssh-keyscan and ssh-keygen')


def keygen(tmp, name):
    path = tmp / name
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', str(path)], check=True)
    return str(path), (tmp / (name + '.pub')).read_text().strip()


@contextlib.contextmanager
def silent(address, port=22):
    """An address whose SYNs go unanswered: a listener that never accepts, its one-place queue already full."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(0)
    fillers = []
    try:
        for _attempt in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((address, port))
            fillers.append(filler)
        yield
    finally:
        for sock in [*fillers, server]:
            sock.close()


def run_wait(tmp, timeout, interval, names=tuple(ADDRESS)):
    """ansible-playbook including wait_up.yml for ``names``; (rc, {name: [pifleet_up, pifleet_last_boot]}, output,
    seconds from the include to its end)."""
    keys = {name: keygen(tmp, name) for name in ('own', 'other')}
    local = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable, 'ansible_become': False,
             'pifleet_events_path': str(tmp / 'events.jsonl')}
    with contextlib.closing(socket.socket()) as sock:  # a port no one listens on: bakery-far cannot be reached
        sock.bind(('127.0.0.1', 0))
        closed = sock.getsockname()[1]
    far = {'ansible_host': '127.0.0.1', 'ansible_port': closed, 'ansible_connection': 'ssh',
           'ansible_ssh_common_args': '-o ConnectTimeout=3 -o BatchMode=yes'}
    inventory = {
        'bakeries': {'hosts': {'bakery': dict(local), 'bakery-odd': dict(local), 'bakery-far': far}},
        'pis': {'hosts': {name: {'pi_serial': SERIAL[name], 'pi_ip': ADDRESS[name], 'ansible_connection': 'local',
                                 'ansible_python_interpreter': sys.executable} for name in names}}}
    # pi-silent fetched its kernel after the power cycle, as the TFTP hook logs it (a Pi that panics does that too).
    (tmp / 'events.jsonl').write_text(json.dumps({
        'time': (datetime.now(timezone.utc) + timedelta(seconds=5)).isoformat(), 'client': ADDRESS['pi-silent'],
        'request': SERIAL['pi-silent'] + '/kernel8.img', 'prefix': SERIAL['pi-silent'], 'path': 'kernel8.img',
        'name': 'pi-silent', 'known': True, 'outcome': 'ok'}) + '\n')
    roots = [{'serial': SERIAL[name], 'host_keys': [keys['own'][1]]} for name in names]
    play = [{'name': 'Wait', 'hosts': 'pis', 'gather_facts': False,
             'vars_files': [str(REPO / 'playbooks/vars/pi_bakery.yml')],
             'vars': {'__pifleet_hosts': {'bakery_of': {name: BAKERY[name] for name in names}}},
             'tasks': [
                 {'name': 'Start', 'ansible.builtin.set_fact': {'since': "{{ now(utc=true).isoformat() }}",
                                                                'started': '{{ now().timestamp() }}'},
                  'run_once': True},
                 {'name': 'Wait', 'ansible.builtin.include_tasks': str(WAIT_UP),
                  'vars': {'pifleet_wait_roots': roots, 'pifleet_wait_timeout': timeout, 'pifleet_wait_since':
                           '{{ since }}', 'pifleet_wait_skip': "{{ inventory_hostname == 'pi-skip' }}",
                           'pifleet_wait_interval': interval}},
                 {'name': 'Time', 'ansible.builtin.copy': {
                     'dest': str(tmp / 'waited'), 'mode': '0644',
                     'content': '{{ now().timestamp() - started | float }}'}, 'delegate_to': 'localhost',
                  'run_once': True},
                 {'name': 'Say', 'ansible.builtin.copy': {
                     'dest': str(tmp / 'up-{{ inventory_hostname }}.json'), 'mode': '0644',
                     'content': '{{ [pifleet_up | default(none), pifleet_last_boot | default(none)] | to_json }}'},
                  'delegate_to': 'localhost'}]}]
    (tmp / 'hosts.yml').write_text(yaml.safe_dump(inventory))
    (tmp / 'play.yml').write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_NOCOLOR='1', ANSIBLE_HOST_KEY_CHECKING='false')
    servers = SshPis({ADDRESS['pi-up']: keys['own'][0], ADDRESS['pi-wrong']: keys['other'][0],
                      ADDRESS['pi-skip']: keys['own'][0], ADDRESS['pi-far']: keys['own'][0],
                      **{ADDRESS[name]: keys['own'][0] for name in names if name in MANY}})
    try:
        with silent(ADDRESS['pi-silent']):
            proc = subprocess.run([str(Path(sys.executable).parent / 'ansible-playbook'), '-i', str(tmp / 'hosts.yml'),
                                   str(tmp / 'play.yml'), '-v'], capture_output=True, text=True, env=env, check=False,
                                  timeout=600)
    finally:
        servers.close()
    output = proc.stdout + proc.stderr
    found = {path.stem[3:]: json.loads(path.read_text()) for path in tmp.glob('up-*.json')}
    waited = float((tmp / 'waited').read_text()) if (tmp / 'waited').exists() else None
    return proc.returncode, found, output, waited


def test_each_pi_is_up_on_its_own_key_and_a_bakery_costs_only_its_own_pis(tmp_path):
    timeout, interval = 6, 2
    rc, found, output, waited = run_wait(tmp_path, timeout, interval)
    assert rc == 0, output[-4000:]
    assert {name: up for name, (up, _boot) in found.items()} == dict(dict.fromkeys(MANY, True), **{
        'pi-up': True, 'pi-wrong': False, 'pi-silent': False, 'pi-skip': None, 'pi-far': False, 'pi-odd': False}), \
        output[-4000:]
    assert re.search(r'"msg": "bakery-far could not wait for its Pis \(pi-far\), which are not up: [^"]*Connection '
                     r'refused"', output), output[-4000:]
    odd = ("bakery-odd could not wait for its Pis (pi-odd), which are not up: pis[0] (pi-odd): address "
           "'127.0.98.16,127.0.98.11' is not an IP address or a host name")
    assert '"msg": "%s"' % odd in output, output[-4000:]
    assert found['pi-silent'][1] == 'kernel8.img, outcome ok' and found['pi-up'][1] is None, found
    # One call per bakery, made by its first Pi, whatever the number of Pis.
    calls = output.split("TASK [Wait until each Pi's SSH server answers", 1)[1].split('TASK [', 1)[0]
    assert sorted(re.findall(r'^(?:ok|fatal): \[(\S+ -> \S+)\]', calls, re.M)) == [
        'pi-00 -> bakery', 'pi-far -> bakery-far', 'pi-odd -> bakery-odd'], calls
    # The silent Pi is given up at the deadline and at most one look more (pi_wait's own seconds, -v shows them); the
    # rest of the include is ansible's own seconds for its tasks on 18 Pis, not a multiple of the timeout.
    [seconds] = re.findall(r'^ok: \[pi-00 -> bakery\] => \{[^\n]*"rounds": \d+, "seconds": ([0-9.]+)', output, re.M)
    assert timeout <= float(seconds) <= timeout + 1.5, seconds
    assert waited <= timeout + 30, waited
