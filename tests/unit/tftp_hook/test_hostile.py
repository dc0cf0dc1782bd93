# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile input: traversal, absolute paths, NUL, symlink escapes, bad options, bad packets, ACK storms, fuzz.

Afterwards the service is still up, serves a normal transfer, never sent a byte of the secret outside its
roots, and wrote no traceback.
"""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest

CLIENTS = []  # every client of this module: all they received is checked for the secret marker


@pytest.fixture
def client(running):
    def make(timeout=2.0):
        made = running.client(timeout)
        CLIENTS.append(made)
        return made

    return make


def exchange(client, packet, wait=0.3):
    """Send one packet to the service port; return what came back (following any DATA to the end)."""
    client.send(packet)
    got, blksize = [], 512
    client.sock.settimeout(wait)
    try:
        while True:
            reply, addr = client.recv()
            got.append(reply)
            if reply[:2] == b'\0\6':
                fields = reply[2:].split(b'\0')
                blksize = int(fields[fields.index(b'blksize') + 1]) if b'blksize' in fields[::2] else 512
                client.ack(0, addr)
            elif reply[:2] == b'\0\3':
                client.ack(struct.unpack('!H', reply[2:4])[0], addr)
                if len(reply) < 4 + blksize:
                    break
            else:
                break
    except socket.timeout:
        pass
    return got


def rrq(name, mode=b'octet', *options):
    return b'\0\1' + name + b'\0' + mode + b'\0' + b''.join(o + b'\0' for o in options)


def hostile_names(tree):
    secret = str(tree['secret']).encode()
    return [
        b'../secret.txt', b'1234abcd/../../secret.txt', b'1234abcd/../../../../../../../../etc/passwd', b'..',
        b'/etc/passwd', secret, b'/' + secret, b'1234abcd/escape.txt', b'1234abcd/up/secret.txt', b'escape.txt',
        b'outside/secret.txt', b'1234abcd\\..\\..\\secret.txt', b'1234abcd/./../secret.txt', b'1234abcd/..',
        b'%2e%2e/secret.txt', b'\xc0\xae\xc0\xae/secret.txt', b'1234abcd/\xff', b'1234abcd/fifo',
        b'1234abcd/kernel.lnk', b'1234abcd/' + b'a' * 300, b'a/' * 600, b'1234abcd/start4.elf\n', b'1234abcd/\x1b[2J',
        b'1234abcd/' + b'x' * 60000,
        b'1234abcd//etc/passwd', b'~/secret.txt', b'1234abcd/up', b'1234abcd/overlays/../../secret.txt',
    ]


def test_traversal_and_escapes_are_refused(running, client):
    for name in hostile_names(running.tree):
        got = exchange(client(), rrq(name))
        assert len(got) == 1, (name, got)
        assert got[0][:4] in (b'\0\5\0\1', b'\0\5\0\2'), (name, got)


NUL_PACKETS = [
    b'\0\1' + b'1234abcd/escape.txt\0../secret.txt\0octet\0',
    b'\0\1' + b'\0../secret.txt\0octet\0',
    b'\0\1' + b'1234abcd\0/../secret.txt\0octet\0',
    b'\0\1' + b'1234abcd/start4.elf',
    b'\0\1' + b'1234abcd/start4.elf\0octet',
    b'\0\1' + b'1234abcd/start4.elf\0mail\0',
    b'\0\1' + b'\0' * 40,
]


def test_nul_and_malformed_requests(running, client):
    for packet in NUL_PACKETS:
        got = exchange(client(), packet)
        assert got and got[0][:2] == b'\0\5', (packet, got)
        assert all(p[:2] != b'\0\3' for p in got)
    # after the mode, a path is just an unknown option without a value: ignored, the file is served
    got = exchange(client(), b'\0\1' + b'1234abcd/bootcode.bin\0octet\0../../secret.txt\0')
    assert b''.join(p[4:] for p in got) == running.tree['files']['bootcode.bin']


OPTIONS = [
    [b'blksize', b'99999999999'], [b'blksize', b'0'], [b'blksize', b'-1'], [b'blksize', b'abc'], [b'blksize', b''],
    [b'blksize', b'9' * 600], [b'tsize', b'x'], [b'tsize', b'7' * 600], [b'timeout', b'0'], [b'timeout', b'1000'],
    [b'windowsize', b'0'], [b'windowsize', b'100000'], [b'blksize'], [b'x' * 600, b'y' * 600],
    [b'blksize', b'512', b'blksize', b'65464'], [b'opt%d' % i for i in range(200)],
    [b'\xff\xfe', b'\x01'], [b'tsize', b'0', b'blksize', b'1468', b'windowsize', b'64', b'timeout', b'1'],
]


def test_bad_options_are_ignored(running, client):
    want = running.tree['files']['bootcode.bin']
    for options in OPTIONS:
        got = exchange(client(), rrq(b'1234abcd/bootcode.bin', b'octet', *options), wait=2.0)
        data = b''.join(p[4:] for p in got if p[:2] == b'\0\3')
        assert data == want, options


def test_bad_packets_to_the_service_port(client):
    cases = [
        (b'\0\0junk', b'\0\5\0\4'), (b'\0\7junk', b'\0\5\0\4'), (b'\0\xff', b'\0\5\0\4'),
        (b'\xff\xff' * 300, b'\0\5\0\4'),
        (b'\0\3\0\1data', b'\0\5\0\5'), (b'\0\4\0\1', b'\0\5\0\5'), (b'\0\6blksize\x00512\0', b'\0\5\0\5'),
        (b'\0\5\0\0error\0', None), (b'\0\5', None), (b'', None), (b'\0', None), (b'\x01', None),
        (b'\0\1', b'\0\5\0\4'), (b'\0\1\0', b'\0\5\0\4'), (b'\0\2x\0octet\0', b'\0\5\0\2'),
    ]
    for packet, reply in cases:
        got = exchange(client(), packet, wait=0.15)
        assert [p[:4] for p in got] == ([reply] if reply else []), packet


def _udp_backlog(port, table='/proc/net/udp'):
    """Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:``port`` (0 when none)."""
    local = '0100007F:%04X' % port
    with open(table, encoding='ascii') as handle:
        for line in handle.readlines()[1:]:
            fields = line.split()
            if fields[1] == local:
                return int(fields[4].split(':')[1], 16)
    return 0


def test_ack_storm(running, client):
    rng = random.Random(4)
    talker = client()

    def storm(block, tid):
        if block == 2:  # 10k ACKs that are duplicates or not yet due: none may trigger a DATA
            for index in range(10000):
                talker.ack(1 if index % 2 else rng.choice((0, rng.randrange(3, 65536))), tid)
            # Let the service drain the flood first: a full socket buffer would drop the real ACK that
            # follows (loss the service handles by its 10 s retransmit, longer than the client waits).
            deadline = time.monotonic() + 5
            while _udp_backlog(tid[1]) and time.monotonic() < deadline:
                time.sleep(0.01)

    got = talker.get('1234abcd/start4.elf', on_data=storm, options=[('timeout', 10)])
    assert got['data'] == running.tree['files']['start4.elf']
    assert got['duplicates'] == 0


def test_error_packets_end_only_their_transfer(running, client):
    talker, stranger = client(), client()
    # A 10 s retransmit timeout: a block sent again while the test waits (a loaded machine) would read as the next.
    packet, tid, oack = talker.start('1234abcd/start4.elf', options=[('timeout', 10)])
    assert packet is None and oack == {'timeout': 10}
    talker.ack(0, tid)
    assert talker.recv()[0][:4] == b'\0\3\0\1'
    stranger.send(b'\0\5\0\0stop\0', tid)
    stranger.sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        stranger.recv()  # another TID is dropped: no answer, and the transfer goes on
    talker.ack(1, tid)
    assert talker.recv()[0][:4] == b'\0\3\0\2'
    talker.send(b'\0\5\0\3disk full\0', tid)
    time.sleep(0.1)
    talker.send(b'\0\4\0\2', tid)  # the transfer is gone: nothing answers any more
    time.sleep(0.3)
    assert _pending(talker) == []
    events = [e for e in running.events()[running.first_event.get(talker.port, 0):] if e['port'] == talker.port]
    assert [(e['outcome'], e['error']) for e in events] == [('aborted', 'client error 3: disk full')]


def _mutate(rng, packet):
    data = bytearray(packet)
    for _i in range(rng.randint(1, 4)):
        kind, at = rng.randrange(7), rng.randrange(len(data) + 1)
        if kind == 0 and data:
            data[at % len(data)] = rng.randrange(256)
        elif kind == 1:
            data[at:at] = bytes([rng.randrange(256)])
        elif kind == 2:
            del data[at:at + rng.randint(1, 8)]
        elif kind == 3:
            data[at:at] = rng.choice([b'..', b'/', b'\0', b'../', b'\\', b'escape.txt', b'secret.txt'])
        elif kind == 4:
            data = data[:at]
        elif kind == 5:
            data[at:at] = data[rng.randrange(len(data) + 1):][:rng.randint(1, 40)]
        else:
            data[at:at] = rng.choice([b'blksize\x00', b'tsize\x000\0', b'windowsize\x0064\0', b'9' * 30])
    return bytes(data)


def _fuzz_packets(rng, templates, count):
    for _i in range(count):
        pick = rng.random()
        if pick < 0.2:
            yield bytes(rng.randrange(256) for _j in range(rng.randint(0, 600)))
        elif pick < 0.3:
            yield struct.pack('!H', rng.randrange(65536)) + bytes(rng.randrange(256) for _j in range(rng.randrange(20)))
        else:
            yield _mutate(rng, rng.choice(templates))


def test_fuzz(running, client, tftp):
    rng = random.Random(20261123)
    templates = [rrq(n) for n in hostile_names(running.tree)[:25]] + NUL_PACKETS + [
        rrq(b'1234abcd/bootcode.bin', b'octet', b'blksize', b'1468', b'tsize', b'0'), rrq(b'bootcode.bin'),
        rrq(b'1234abcd/config.txt', b'netascii', b'windowsize', b'4'), b'\0\4\0\1', b'\0\5\0\0x\0', b'\0\3\0\1abc']
    senders = [client(0.001) for _i in range(8)]
    tids = []
    for index, packet in enumerate(_fuzz_packets(rng, templates, 3000)):
        sender = senders[index % len(senders)]
        sender.send(packet, rng.choice(tids) if tids and rng.random() < 0.15 else None)
        if index % 25 == 0:
            for each in senders:
                for reply, addr in _pending(each):
                    assert reply[:2] in (b'\0\3', b'\0\5', b'\0\6'), reply[:8]
                    if addr[1] != running.port and addr not in tids:
                        tids.append(addr)
    assert running.proc.poll() is None
    deadline = time.monotonic() + 5  # the flood drained first: the request below is not retransmitted
    while _udp_backlog(running.port) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client().get('1234abcd/start4.elf', blksize=1024)['data'] == running.tree['files']['start4.elf']


def _pending(sender):
    got = []
    sender.sock.settimeout(0.0)  # only what has arrived already
    try:
        while True:
            got.append(sender.recv())
    except (socket.timeout, BlockingIOError):
        return got


def test_zz_nothing_leaked_and_no_traceback(running, client, tftp):
    """Last in this module: the service is up, nothing of the secret went out, stderr has no traceback."""
    time.sleep(0.5)
    for each in CLIENTS:
        _pending(each)
    assert running.proc.poll() is None
    assert client().get('bootcode.bin')['data'] == running.tree['files']['bootcode.bin']
    received = [p for each in CLIENTS for p in each.received]
    assert len(received) > 3000
    assert not any(tftp.MARKER in p for p in received)
    stderr = running.stderr()
    assert stderr.count('Traceback') == stderr.count('crashed:\n') == 0, stderr[-3000:]
    for each in CLIENTS:
        each.close()
