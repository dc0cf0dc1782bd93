# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service as a process: map reloads with transfers in flight, signals, the event log, the HTTP hook."""

from __future__ import annotations

import http.server
import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest


def _config(tftp, tmp, made, **extra):
    config = {'listen': ['127.0.0.1'], 'port': tftp.free_port(), 'map': str(made['map']),
              'roots': [str(made['root'])], 'events': str(tmp / 'events.jsonl'), 'timeout': 0.3, 'map_poll': 0}
    config.update(extra)
    return config


def _write_map(made, prefixes):
    fleet = {'version': 1, 'default': [str(made['boot'])], 'prefixes': prefixes}
    tmp = made['map'].with_suffix('.tmp')
    tmp.write_text(json.dumps(fleet))
    tmp.rename(made['map'])


def _until(check, timeout=5.0):
    """The first true result of check(); exceptions and false results are retried until the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except Exception:
            if time.monotonic() > deadline:
                raise
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, 'timed out waiting for %r' % check
        time.sleep(0.05)


def test_sighup_reload_keeps_transfers_in_flight(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made))
    swapped = []

    def swap_map(block, _tid):
        if block == 10:  # mid-transfer: 1234abcd now means pi-02's folder only
            _write_map(made, {'1234abcd': {'name': 'pi-02', 'dirs': [str(made['pi2'])]}})
            server.signal(signal.SIGHUP)
            time.sleep(0.3)
            swapped.append(block)

    got = server.client().get('1234abcd/start4.elf', on_data=swap_map)
    assert swapped == [10]
    assert got['data'] == made['files']['start4.elf']
    assert server.client().get('1234abcd/cmdline.txt')['data'] == b'pi-02\n'
    with pytest.raises(tftp.TftpError):
        server.client().get('1234abcd/start4.elf')
    outcomes = [(e['request'], e['outcome'], e['name']) for e in server.wait_events(3)]
    assert outcomes == [('1234abcd/start4.elf', 'ok', 'pi-01'), ('1234abcd/cmdline.txt', 'ok', 'pi-02'),
                        ('1234abcd/start4.elf', 'not_found', 'pi-02')]
    made['map'].write_text('{"version": 1, "prefixes": ')  # a broken map keeps the old one
    server.signal(signal.SIGHUP)
    _until(lambda: 'keeping the previous map' in server.stderr())
    assert server.client().get('1234abcd/cmdline.txt')['data'] == b'pi-02\n'
    assert server.stop() == 0


def test_map_file_change_is_polled(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made, map_poll=0.2))
    with pytest.raises(tftp.TftpError):
        server.client().get('cafef00d/cmdline.txt')
    _write_map(made, {'cafef00d': {'name': 'pi-09', 'dirs': [str(made['pi2'])]}})
    started = time.monotonic()
    assert _until(lambda: server.client(timeout=0.5).get('cafef00d/cmdline.txt'))['data'] == b'pi-02\n'
    assert time.monotonic() - started < 2.0


def test_a_request_right_after_a_map_change_is_served_from_the_new_map(tmp_path, tftp, start_server):
    """No poll in between (an hour apart): each request sees the map as it is on disk, so a Pi power-cycled right
    after the map moved it to another generation fetches every file of its boot set from that generation."""
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made, map_poll=3600))
    with pytest.raises(tftp.TftpError):
        server.client().get('cafef00d/cmdline.txt')
    _write_map(made, {'cafef00d': {'name': 'pi-09', 'dirs': [str(made['pi2'])]}})
    assert server.client().get('cafef00d/cmdline.txt')['data'] == b'pi-02\n'
    _write_map(made, {'cafef00d': {'name': 'pi-09', 'dirs': [str(made['pi1'])]}})
    assert server.client().get('cafef00d/cmdline.txt')['data'] == b'console=serial0 root=/dev/nfs pi-01\n'
    assert server.stop() == 0


def test_sigterm_exits_0_and_logs_the_transfer(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made))
    client = server.client()
    packet, _tid, _oack = client.start('1234abcd/start4.elf')
    assert packet[:4] == b'\0\3\0\1'
    assert server.stop() == 0
    assert [(e['outcome'], e['error']) for e in server.events()] == [('error', 'service stopped')]
    assert 'Traceback' not in server.stderr()


def test_event_log_reopened_after_rotation(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made))
    events = Path(server.config['events'])
    server.client().get('1234abcd/cmdline.txt')
    _until(lambda: events.read_text().count('\n') == 1)
    events.rename(events.with_suffix('.1'))  # what logrotate does (no copytruncate)
    time.sleep(1.3)  # the service looks at the file once a second
    server.client().get('1234abcd/config.txt')
    _until(lambda: json.loads(events.read_text())['path'] == 'config.txt')
    events.rename(events.with_suffix('.2'))
    server.signal(signal.SIGHUP)  # or at once, on SIGHUP
    _until(events.exists)
    server.client().get('1234abcd/cmdline.txt')
    _until(lambda: json.loads(events.read_text())['path'] == 'cmdline.txt')


class _Hook(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == '/tftp/x/slow.bin':
            time.sleep(2.5)  # under the server's hook_timeout (3.0), well over what a map fetch takes
        if self.path in ('/tftp/x/hello.txt', '/tftp/x/slow.bin', '/tftp/x/sp%20ace.txt'):
            body = ('hook says %s' % self.path).encode() * 300
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404 if self.path != '/tftp/x/fail' else 500)

    def log_message(self, *args):
        pass


@pytest.fixture
def hook_http():
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Hook)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield 'http://127.0.0.1:%d/tftp' % httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_hook_url(tmp_path, tftp, start_server, hook_http):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made, hook_url=hook_http, hook_timeout=3.0))
    assert server.client().get('x/hello.txt', tsize=True)['data'] == b'hook says /tftp/x/hello.txt' * 300
    assert server.client().get('x/sp ace.txt')['data'] == b'hook says /tftp/x/sp%20ace.txt' * 300
    assert server.client().get('1234abcd/cmdline.txt')['data'].endswith(b'pi-01\n')  # the map comes first
    slow, results = server.client(), []
    thread = threading.Thread(target=lambda: results.append(slow.get('x/slow.bin')))
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert server.client().get('1234abcd/start4.elf')['data'] == made['files']['start4.elf']
    assert time.monotonic() - started < 2.0  # the loop does not wait for the hook (it answers 2.3 s from here)
    thread.join(10)
    assert results[0]['data'].startswith(b'hook says /tftp/x/slow.bin')
    for name, code in (('x/missing', 1), ('x/fail', 0), ('1234abcd/missing', 1)):
        with pytest.raises(tftp.TftpError) as caught:
            server.client().get(name)
        assert caught.value.code == code
    events = {e['request']: e for e in server.wait_events(8)}
    assert (events['x/hello.txt']['source'], events['x/hello.txt']['outcome']) == ('hook', 'ok')
    assert events['x/hello.txt']['size'] == events['x/hello.txt']['bytes'] == 27 * 300
    assert events['x/missing']['outcome'] == 'unknown_prefix'
    assert events['1234abcd/missing']['outcome'] == 'not_found'
    assert (events['x/fail']['outcome'], events['x/fail']['error']) == ('error', 'hook answered HTTP 500')


def test_max_transfers(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made, max_transfers=2))
    busy = [server.client() for _i in range(2)]
    for each in busy:
        assert each.start('1234abcd/start4.elf')[0][:4] == b'\0\3\0\1'
    with pytest.raises(tftp.TftpError) as caught:
        server.client().get('1234abcd/start4.elf')
    assert (caught.value.code, caught.value.message) == (0, 'Server busy')
    for each in busy:
        each.send(b'\0\5\0\0bye\0', _tid_of(each))
    assert server.client().get('1234abcd/cmdline.txt')['data'].endswith(b'pi-01\n')
    outcomes = sorted(e['outcome'] for e in server.wait_events(4))
    assert outcomes == ['aborted', 'aborted', 'error', 'ok']


def _tid_of(client):
    """The TID of the client's transfer: the sender of the DATA it received (retransmits come from it too)."""
    client.sock.settimeout(3.0)
    return client.recv()[1]


def test_a_crashing_transfer_is_contained(hook, tmp_path, tftp, monkeypatch, capsys):
    made = tftp.make_tree(tmp_path)
    config = hook.Config(dict(_config(tftp, tmp_path, made), cache_bytes=0))  # every block read through PREADV
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    service = hook.Service(config)  # in this process: a fault can be injected
    thread = threading.Thread(target=service.run)
    real = hook.PREADV

    def failing(fd, buffers, offset):
        if offset >= 3 * 512:
            raise RuntimeError('disk on fire')
        return real(fd, buffers, offset)

    monkeypatch.setattr(hook, 'PREADV', failing)
    thread.start()
    try:
        with pytest.raises(tftp.TftpError) as caught:
            tftp.Client(config.port).get('1234abcd/start4.elf')
        assert (caught.value.code, caught.value.message) == (0, 'internal error')
        monkeypatch.setattr(hook, 'PREADV', real)
        assert tftp.Client(config.port).get('1234abcd/start4.elf')['data'] == made['files']['start4.elf']
        _until(lambda: Path(config.events).read_text().count('\n') == 2)  # the last ACK is in
    finally:
        service.stopping = True
        thread.join(5)
        signal.set_wakeup_fd(-1)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert not thread.is_alive()
    events = [json.loads(line) for line in Path(config.events).read_text().splitlines()]
    assert [e['outcome'] for e in events] == ['error', 'ok']
    assert events[0]['error'] == "internal error: RuntimeError('disk on fire')"
    stderr = capsys.readouterr().err
    assert "transfer of '1234abcd/start4.elf' for 127.0.0.1 port" in stderr
    assert 'RuntimeError: disk on fire' in stderr


def test_wildcard_listen_answers_from_the_address_asked(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made, listen=['0.0.0.0', '::']))
    client = server.client()
    client.server = ('127.0.0.2', server.port)  # another loopback address: the reply must come from it
    got = client.get('1234abcd/cmdline.txt')
    assert got['tid'][0] == '127.0.0.2'
    assert got['data'].endswith(b'pi-01\n')
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as six:
        six.settimeout(3)
        six.sendto(b'\0\1bootcode.bin\0octet\0', ('::1', server.port))
        packet, addr = six.recvfrom(600)
        assert (packet[:4], addr[0]) == (b'\0\3\0\1', '::1')
        six.sendto(b'\0\5\0\0enough\0', addr)
    events = server.wait_events(2)
    assert [(e['server'], e['client'], e['outcome']) for e in events] == [
        ('127.0.0.2', '127.0.0.1', 'ok'), ('::1', '::1', 'aborted')]


def test_batch_wait_spaces_rounds_only_during_a_storm(tmp_path, tftp, start_server, hook):
    """batch_wait spaces the loop's rounds once BATCH_FROM transfers run, never for fewer: a lone Pi does not wait."""
    made = tftp.make_tree(tmp_path)
    wait, kernel = 0.01, made['files']['start4.elf']  # the largest batch_wait, so each waited round shows
    server = start_server(tmp_path, _config(tftp, tmp_path, made, batch_wait=wait, first_ack_timeout=30.0, timeout=5))
    started = time.monotonic()
    assert server.client().get('1234abcd/start4.elf')['data'] == kernel
    assert time.monotonic() - started < (len(kernel) // 512) * wait / 2  # 586 rounds; had they waited: 5.9 s

    # BATCH_FROM lock-step transfers at once: a block per transfer per round, each round after a wait.
    clients = [server.client(timeout=10) for _index in range(hook.BATCH_FROM)]
    starts = [client.start('1234abcd/start4.elf', blksize=1468) for client in clients]  # every slot held first
    got = {}

    def fetch(index, client, tid, oack):
        client.ack(0, tid)
        got[index] = client.receive(None, tid, oack)['data']

    threads = [threading.Thread(target=fetch, args=(index, client, tid, oack))
               for index, (client, (_none, tid, oack)) in enumerate(zip(clients, starts))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    took = time.monotonic() - started
    assert [got.get(index) for index in range(len(clients))] == [kernel] * len(clients)
    assert took >= (len(kernel) // 1468) * wait * 0.75  # 205 blocks: the first to finish waited ~2 s
    assert [e['outcome'] for e in server.wait_events(1 + len(clients))] == ['ok'] * (1 + len(clients))
    assert server.stop() == 0
