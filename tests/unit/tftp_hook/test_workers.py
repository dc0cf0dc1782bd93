# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Several workers on one port: each client address meets one worker, so the per-client limits stay exact.

The workers share the port through SO_REUSEPORT; a classic BPF program on the group sends every
request of one address to worker (address mod workers). Other 127/8 addresses play other LAN hosts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest


def _config(tftp, tmp, made, **extra):
    config = {'listen': ['127.0.0.1'], 'port': tftp.free_port(), 'map': str(made['map']),
              'roots': [str(made['root'])], 'events': str(tmp / 'events.jsonl'), 'timeout': 0.3, 'map_poll': 0,
              'first_ack_timeout': 10.0}
    config.update(extra)
    return config


def _until(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, 'timed out waiting for %r' % check
        time.sleep(0.05)
    return result


def _children(pid):
    with open('/proc/%d/task/%d/children' % (pid, pid), encoding='ascii') as handle:
        return sorted(int(p) for p in handle.read().split())


def _owner(children, port):
    """The worker holding the UDP socket bound to ``port`` on 127.0.0.1 (a transfer's TID)."""
    inodes = set()
    with open('/proc/net/udp', encoding='ascii') as handle:
        for line in handle.readlines()[1:]:
            fields = line.split()
            if fields[1] == '0100007F:%04X' % port:
                inodes.add('socket:[%s]' % fields[9])
    for pid in children:
        for fd in os.listdir('/proc/%d/fd' % pid):
            try:
                if os.readlink('/proc/%d/fd/%s' % (pid, fd)) in inodes:
                    return pid
            except OSError:
                continue
    return None


def _ask(server, source, count):
    """``count`` requests from ``count`` ports of ``source``, left unanswered: [(client, packet, tid)]."""
    asked = []
    for _index in range(count):
        client = server.client(source=source)
        client.rrq('1234abcd/start4.elf')
        packet, tid = client.recv()
        asked.append((client, packet, tid))
    return asked


def _end(asked):
    for client, packet, tid in asked:
        if packet[:2] == b'\0\3':
            client.send(b'\0\5\0\0enough\0', tid)
        client.close()


def test_steer_by_address_sends_each_address_to_one_socket(hook):
    listeners = []
    port = None
    try:
        for _index in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(('127.0.0.1', port or 0))
            port = sock.getsockname()[1]
            hook.steer_by_address(sock, socket.AF_INET, 2)
            sock.settimeout(0.5)
            listeners.append(sock)
        sources = ['127.0.0.%d' % last for last in range(1, 7)]
        for source in sources:
            for _port in range(8):  # eight ports: the kernel's own hash would spread them over both sockets
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                    client.bind((source, 0))
                    client.sendto(b'hello', ('127.0.0.1', port))
        seen = {}
        for index, sock in enumerate(listeners):
            sock.settimeout(0.2)
            try:
                while True:
                    seen.setdefault(sock.recvfrom(64)[1][0], []).append(index)
            except TimeoutError:
                pass
    finally:
        for sock in listeners:
            sock.close()
    assert sorted(seen) == sources
    assert {source: set(indexes) for source, indexes in seen.items()} == {
        source: {int(source.rsplit('.', 1)[1]) % 2} for source in sources}
    assert all(len(indexes) == 8 for indexes in seen.values())


def test_each_address_meets_one_worker_and_its_cap_holds(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made, workers=2, max_per_client=3))
    children = _until(lambda: len(_children(server.proc.pid)) == 2 and _children(server.proc.pid))
    owners = {}
    try:
        for source in ('127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.4'):
            asked = _ask(server, source, 8)
            served = [(packet, tid) for _client, packet, tid in asked if packet[:4] == b'\0\3\0\1']
            busy = [packet for _client, packet, _tid in asked if packet[:2] == b'\0\5']
            # With the kernel's hash over (address, port), 8 ports would meet both workers: about 6 served.
            assert (len(served), busy) == (3, [b'\0\5\0\0Server busy\0'] * 5), source
            owners[source] = {_owner(children, tid[1]) for _packet, tid in served}
            _end(asked)
    finally:
        stderr = server.stderr()
    assert 'cannot steer' not in stderr, stderr
    assert all(len(pids) == 1 and None not in pids for pids in owners.values()), owners
    # address mod 2: .1 and .3 meet one worker, .2 and .4 the other
    assert owners['127.0.0.1'] == owners['127.0.0.3'] != owners['127.0.0.2'] == owners['127.0.0.4']
    events = server.wait_events(32)
    assert len(events) == 32
    assert sorted({e['outcome'] for e in events}) == ['aborted', 'error']


def test_each_worker_holds_its_share_of_max_transfers(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made, workers=2, max_transfers=4))
    _until(lambda: len(_children(server.proc.pid)) == 2)
    first = _ask(server, '127.0.0.1', 3)
    other = _ask(server, '127.0.0.2', 2)  # the other worker: its own share
    try:
        assert [p[:4] for _c, p, _t in first] == [b'\0\3\0\1', b'\0\3\0\1', b'\0\5\0\0']
        assert [p[:4] for _c, p, _t in other] == [b'\0\3\0\1', b'\0\3\0\1']
    finally:
        _end(first + other)
    errors = [e['error'] for e in server.wait_events(5) if e['outcome'] == 'error']
    assert errors == ['max_transfers reached']


def test_workers_serve_reload_and_stop_together(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made, workers=2))
    children = _until(lambda: len(_children(server.proc.pid)) == 2 and _children(server.proc.pid))
    sources = ['127.0.0.%d' % (1 + index % 4) for index in range(12)]
    clients = [server.client(source=source) for source in sources]
    results = [None] * len(clients)
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, clients[i].get('1234abcd/start4.elf')))
               for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(r['data'] == made['files']['start4.elf'] for r in results)
    server.signal(signal.SIGHUP)  # forwarded: the workers reload and live on
    time.sleep(0.3)
    assert _children(server.proc.pid) == children
    assert server.client().get('bootcode.bin')['data'] == made['files']['bootcode.bin']
    _until(lambda: len((tmp_path / 'events.jsonl').read_text().splitlines()) == 13)
    lines = (tmp_path / 'events.jsonl').read_text().splitlines()
    events = [json.loads(line) for line in lines]  # whole lines, though two processes append to the file
    assert sorted(e['client'] for e in events if e['request'] == '1234abcd/start4.elf') == sorted(sources)
    assert {e['outcome'] for e in events} == {'ok'}
    assert server.stop() == 0
    assert not any(os.path.exists('/proc/%d' % pid) for pid in children)


def test_without_steering_the_workers_still_serve_and_say_why(hook, tmp_path, tftp, monkeypatch, capsys):
    made = tftp.make_tree(tmp_path)
    config = hook.Config(_config(tftp, tmp_path, made, workers=2))

    def refused(_sock, _family, _workers):
        raise OSError(22, 'Invalid argument')

    monkeypatch.setattr(hook, 'steer_by_address', refused)
    listeners = hook.open_listeners(config)
    assert [len(own) for own in listeners] == [1, 1]  # a socket per worker, bound before any serves
    hook.close_listeners(listeners, keep=0)
    service = InProcess(hook, config, listeners[0])
    try:
        warning = 'warning: cannot steer requests by client address ([Errno 22] Invalid argument)'
        assert warning in capsys.readouterr().err
        assert tftp.Client(config.port).get('1234abcd/cmdline.txt')['data'].endswith(b'pi-01\n')
    finally:
        service.stop()


def test_event_lines_of_one_round_are_written_together(hook, tmp_path, tftp, monkeypatch):
    made = tftp.make_tree(tmp_path)
    config = hook.Config(_config(tftp, tmp_path, made))
    service = InProcess(hook, config, run=False)
    writes = []
    real_write = os.write

    def counting(fd, data):
        writes.append(bytes(data))
        return real_write(fd, data)

    try:
        monkeypatch.setattr(hook.os, 'write', counting)
        for index in range(3):
            service.service.emit({'outcome': 'ok', 'request': 'file%d' % index})
        assert not (tmp_path / 'events.jsonl').read_text()  # queued until the round ends
        service.service.write_events()
        monkeypatch.setattr(hook.os, 'write', real_write)
    finally:
        service.stop()
    assert len([w for w in writes if b'file' in w]) == 1
    assert [json.loads(line)['request'] for line in (tmp_path / 'events.jsonl').read_text().splitlines()] == [
        'file0', 'file1', 'file2']


class InProcess:
    """A Service in this process (a fault can be injected), its loop in a thread, signal handlers restored."""

    def __init__(self, hook, config, listeners=None, run=True):
        self.saved = {signum: signal.getsignal(signum) for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
        self.service = hook.Service(config, listeners)
        self.thread = threading.Thread(target=self.service.run) if run else None
        if self.thread:
            self.thread.start()

    def stop(self):
        self.service.stopping = True
        if self.thread:
            self.thread.join(5)
            assert not self.thread.is_alive()
        else:
            self.service.shutdown()
        signal.set_wakeup_fd(-1)
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)


@pytest.fixture(autouse=True)
def _loopback_addresses_answer():
    """127.0.0.2-4 must be usable as sources (Linux routes all of 127/8 to lo)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(('127.0.0.4', 0))
