# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for the TFTP hook service: the module loaded by path, a file tree, the service as a process, a raw client.

Helpers are handed out through fixtures because test files are imported by path (pytest importlib mode).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from rolevars import trusted

ROLE = Path(__file__).resolve().parents[3] / 'roles' / 'tftp_hook'
SERVICE = ROLE / 'files' / 'pifleet_tftp_hook.py'
MARKER = b'PIFLEET-SECRET-MARKER-7f3a91'
EVENT_KEYS = {'time', 'client', 'port', 'server', 'request', 'prefix', 'path', 'name', 'known', 'source', 'outcome',
              'bytes', 'size', 'blksize', 'windowsize', 'tsize', 'duration', 'retransmits', 'error'}


def _load():
    spec = importlib.util.spec_from_file_location('pifleet_tftp_hook', SERVICE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def hook():
    return _load()


class TftpError(Exception):
    def __init__(self, code, message):
        super().__init__('TFTP error %d: %s' % (code, message))
        self.code, self.message = code, message


class Client:
    """A raw TFTP client on its own UDP socket; ``get`` does a whole transfer and reports what it saw."""

    def __init__(self, port, timeout=3.0, source='127.0.0.1'):
        self.server = ('127.0.0.1', port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))  # another 127/8 address is another LAN host
        self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]
        self.received = []  # every packet that came back, for marker checks

    def close(self):
        self.sock.close()

    def send(self, packet, addr=None):
        self.sock.sendto(packet, addr or self.server)

    def rrq(self, name, mode=b'octet', options=()):
        name = name.encode() if isinstance(name, str) else name
        packet = b'\0\1' + name + b'\0' + mode + b'\0'
        for key, value in options:
            packet += (key.encode() if isinstance(key, str) else key) + b'\0' + str(value).encode() + b'\0'
        self.send(packet)

    def recv(self):
        packet, addr = self.sock.recvfrom(70000)
        self.received.append(packet)
        return packet, addr

    def ack(self, block, tid):
        self.send(struct.pack('!HH', 4, block & 0xFFFF), tid)

    def start(self, name, *, blksize=None, tsize=False, windowsize=None, options=()):
        """Send the RRQ; returns (first DATA packet or None after an OACK, tid, oack options)."""
        opts = list(options)
        if blksize:
            opts.append(('blksize', blksize))
        if tsize:
            opts.append(('tsize', 0))
        if windowsize:
            opts.append(('windowsize', windowsize))
        self.rrq(name, options=opts)
        packet, tid = self.recv()
        if packet[:2] == b'\0\5':
            raise TftpError(struct.unpack('!H', packet[2:4])[0], packet[4:].split(b'\0')[0].decode())
        if packet[:2] != b'\0\6':
            return packet, tid, {}
        fields = packet[2:].split(b'\0')[:-1]
        return None, tid, {fields[i].decode(): int(fields[i + 1]) for i in range(0, len(fields), 2)}

    def get(self, name, *, skip_ack=None, on_data=None, **options):
        """Download ``name``: dict(data, oack, tid, packets, duplicates). ``skip_ack``: a block left unacked once."""
        packet, tid, oack = self.start(name, **options)
        if oack:
            self.ack(0, tid)
        return self.receive(packet, tid, oack, skip_ack=skip_ack, on_data=on_data)

    def receive(self, packet, tid, oack, *, skip_ack=None, on_data=None, expected=1, data=b''):
        """The rest of a download once the first packet (None: wait for it) came from ``tid``."""
        size, window = oack.get('blksize', 512), oack.get('windowsize', 1)
        data, in_window, packets, duplicates, skipped = bytearray(data), 0, 0, 0, False
        while True:
            if packet is None:
                packet, addr = self.recv()
                if addr != tid:
                    packet = None
                    continue
            op, block = struct.unpack('!HH', packet[:4])
            if op == 5:
                raise TftpError(block, packet[4:].split(b'\0')[0].decode())
            assert op == 3, packet[:8]
            packets += 1
            last = len(packet) - 4 < size
            if block == expected & 0xFFFF:
                data += packet[4:]
                if on_data:
                    on_data(expected, tid)
                in_window += 1
                if (last or in_window == window) and (skip_ack != expected or skipped):
                    in_window = 0
                    self.ack(expected, tid)
                elif last or in_window == window:
                    skipped, in_window = True, 0  # no ACK this once: the server must time out and resend
                expected += 1
                if last:
                    return {'data': bytes(data), 'oack': oack, 'tid': tid, 'packets': packets,
                            'duplicates': duplicates}
            else:
                duplicates += 1
                self.ack(expected - 1, tid)  # as RFC 1350 clients do: the server must not answer it twice
                in_window = 0
            packet = None


class Server:
    """The service as a real process with its config, map and event log in a tmp dir."""

    def __init__(self, tmp, config, wrap=()):
        self.tmp = tmp
        self.config_path = tmp / 'config.json'
        self.config = config
        self.first_event = {}  # client port -> index of the first event line that can be its own
        self.stderr_path = tmp / 'stderr.log'
        for attempt in range(3):
            if attempt:  # another process of the machine took the free port between the check and the bind
                config['port'] = free_port()
            if self._start(wrap):
                return
        raise AssertionError('service could not bind a free port 3 times: %s' % self.stderr())

    def _start(self, wrap):
        self.config_path.write_text(json.dumps(self.config))
        self.port = self.config['port']
        with open(self.stderr_path, 'wb') as stderr:
            self.proc = subprocess.Popen([*wrap, sys.executable, '-I', str(SERVICE), '--config', str(self.config_path)],
                                         stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 10
        while not _port_taken(self.port):  # bound when we can no longer bind it ourselves
            if self.proc.poll() is not None and 'Address already in use' in self.stderr():
                return False
            assert self.proc.poll() is None, self.stderr()
            assert time.monotonic() < deadline, 'service did not bind port %d' % self.port
            time.sleep(0.02)
        return True

    def client(self, timeout=3.0, source='127.0.0.1'):
        client = Client(self.port, timeout, source)
        # A closed client's port can be handed out again: its events count from here on.
        self.first_event[client.port] = len(self.events())
        return client

    def stderr(self):
        return self.stderr_path.read_text(errors='replace')

    def events(self):
        path = Path(self.config['events'])
        text = path.read_text() if path.exists() else ''
        # Only whole lines: the service may be half-way through appending the last one.
        return [json.loads(line) for line in text[:text.rfind('\n') + 1].splitlines()]

    def wait_events(self, count, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.events()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.events()

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _port_taken(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(('127.0.0.1', port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def free_port():
    """A free UDP port below the ephemeral range (32768-60999), so no client socket of a parallel test
    can be given it between this check and the service binding it."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(('127.0.0.1', port))
            except OSError:
                continue
            return port


def make_tree(tmp):
    """roots/ with a bakeform boot dir and a per-Pi dir, a secret outside the roots, symlinks both ways."""
    root = tmp / 'roots'
    boot, pi1, pi2 = root / 'boot', root / 'pis' / 'pi-01', root / 'pis' / 'pi-02'
    for directory in (boot, pi1, pi2):
        directory.mkdir(parents=True)
    secret = tmp / 'secret.txt'
    secret.write_bytes(MARKER * 10)
    files = {
        'start4.elf': os.urandom(300000), 'bootcode.bin': os.urandom(51000), 'empty.bin': b'',
        'one.bin': b'x', 'b511.bin': os.urandom(511), 'b512.bin': os.urandom(512), 'b513.bin': os.urandom(513),
        'b1468.bin': os.urandom(1468), 'big.bin': os.urandom(3 * 1024 * 1024), 'config.txt': b'[all]\nboot\n',
    }
    for name, data in files.items():
        (boot / name).write_bytes(data)
    (pi1 / 'cmdline.txt').write_bytes(b'console=serial0 root=/dev/nfs pi-01\n')
    (pi1 / 'config.txt').write_bytes(b'[all]\npi-01\n')
    (pi2 / 'cmdline.txt').write_bytes(b'pi-02\n')
    (boot / 'escape.txt').symlink_to(secret)  # leaves the roots: denied
    (pi1 / 'up').symlink_to(tmp)  # a dir link out of the roots: denied
    (pi1 / 'kernel.lnk').symlink_to('../../boot/start4.elf')  # inside a root but outside its dir: denied
    (boot / 'start.lnk').symlink_to('start4.elf')  # inside its own dir: fine
    os.mkfifo(boot / 'fifo')
    fleet = {'version': 1, 'default': [str(boot)], 'prefixes': {
        '1234abcd': {'name': 'pi-01', 'dirs': [str(pi1), str(boot)]},
        'dc-a6-32-01-36-c2': {'name': 'pi-02', 'dirs': [str(pi2), str(boot)]},
        'outside': {'name': 'evil', 'dirs': [str(tmp)]},
    }}
    (tmp / 'map.json').write_text(json.dumps(fleet))
    return {'root': root, 'boot': boot, 'pi1': pi1, 'pi2': pi2, 'files': files, 'map': tmp / 'map.json',
            'secret': secret}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path)


@pytest.fixture(scope='module')
def running(tmp_path_factory):
    """One service per test module (timeout 0.3 s so retransmit tests are quick)."""
    tmp = tmp_path_factory.mktemp('svc')
    made = make_tree(tmp)
    server = Server(tmp, {
        'listen': ['127.0.0.1'], 'port': free_port(), 'map': str(made['map']), 'roots': [str(made['root'])],
        'events': str(tmp / 'events.jsonl'), 'timeout': 0.3, 'retries': 5, 'map_poll': 0.2,
        'root_files': ['bootcode.bin', 'bootsig.bin'],
    })
    server.tree = made
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_server():
    """Start extra services (own config) that are stopped, by PID, at the end of the test."""
    started = []

    def start(tmp, config, wrap=()):
        server = Server(tmp, config, wrap)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope='session')
def tftp():
    """The helpers, as one namespace."""

    class Helpers:
        pass

    helpers = Helpers()
    helpers.Client, helpers.TftpError, helpers.MARKER, helpers.EVENT_KEYS = Client, TftpError, MARKER, EVENT_KEYS
    helpers.make_tree, helpers.free_port, helpers.sha256 = make_tree, free_port, sha256
    return helpers


@pytest.fixture(scope='session')
def role_template():
    """render(template, **overrides): a role template as Ansible renders it; template None: the role's variables."""
    loader = DataLoader()

    def render(template, **overrides):
        variables = {}
        for part in ('defaults/main.yml', 'vars/main.yml', 'vars/Debian.yml'):
            variables.update(trusted(loader.load_from_file(str(ROLE / part))))
        variables.update(ansible_managed='Ansible managed', ansible_facts={'default_ipv4': {'address': '10.99.0.2'}})
        variables.update(overrides)
        templar = Templar(loader=loader, variables=variables)
        if template is None:
            return {key: templar.template(value) for key, value in variables.items()}
        return templar.template(trust_as_template((ROLE / 'templates' / template).read_text(encoding='utf-8')))

    return render


@pytest.fixture(scope='session')
def run_tool():
    """run(argv): a system tool that must succeed; the test is skipped when the tool is not installed."""

    def run(argv):
        if shutil.which(argv[0]) is None:
            pytest.skip('%s is not installed' % argv[0])
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done

    return run
