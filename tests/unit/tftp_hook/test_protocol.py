# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service as a process, spoken to with raw UDP: transfers, options, retransmits, the block wrap, events."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

SIZES = ['0', '1', 'bs-1', 'bs', 'bs+1', '3M']


def own_events(server, port):
    """Events of the client on ``port`` (not of an earlier, closed client that had the same port)."""
    return [e for e in server.events()[server.first_event.get(port, 0):] if e['port'] == port]


def event_for(server, port, timeout=5.0):
    """The one event of the request from client ``port`` (waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = own_events(server, port)
        if found or time.monotonic() > deadline:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.02)


def drain(client, seconds):
    """Packets that arrive within ``seconds``."""
    client.sock.settimeout(seconds)
    got = []
    try:
        while True:
            got.append(client.recv())
    except socket.timeout:
        pass
    client.sock.settimeout(3.0)
    return got


@pytest.mark.parametrize('blksize', [None, 512, 1024, 1468])
@pytest.mark.parametrize('size', SIZES)
def test_full_transfer(running, tftp, blksize, size):
    block = blksize or 512
    length = {'0': 0, '1': 1, 'bs-1': block - 1, 'bs': block, 'bs+1': block + 1, '3M': 3 * 1024 * 1024}[size]
    name = 'size-%d.bin' % length
    path = running.tree['boot'] / name
    if not path.exists():
        path.write_bytes(os.urandom(length))
    client = running.client()
    got = client.get('1234abcd/' + name, blksize=blksize)
    assert tftp.sha256(got['data']) == tftp.sha256(path.read_bytes())
    assert got['oack'] == ({'blksize': blksize} if blksize else {})
    assert got['packets'] == length // block + 1
    event = event_for(running, client.port)
    assert (event['outcome'], event['bytes'], event['size'], event['blksize']) == ('ok', length, length, block)
    assert event['source'] == str(path)


def test_tsize_probe_then_full_request(running, tftp):
    want = running.tree['files']['start4.elf']
    client = running.client()
    packet, tid, oack = client.start('1234abcd/start4.elf', tsize=True, blksize=1024)
    assert packet is None
    assert oack == {'tsize': len(want), 'blksize': 1024}
    client.send(b'\0\5\0\0Early terminate\0', tid)
    got = client.get('1234abcd/start4.elf', blksize=1024)  # the same port right away, as a Pi does
    assert got['data'] == want
    assert got['tid'] != tid
    deadline = time.monotonic() + 5
    while len(events := own_events(running, client.port)) < 2:
        assert time.monotonic() < deadline, events
        time.sleep(0.02)
    assert [(e['outcome'], e['tsize'], e['bytes']) for e in events] == [('probe', True, 0), ('ok', False, len(want))]


def test_windowsize(running):
    want = running.tree['files']['bootcode.bin']
    client = running.client()
    _packet, tid, oack = client.start('1234abcd/bootcode.bin', windowsize=4, options=[('timeout', 5)])
    assert oack == {'windowsize': 4, 'timeout': 5}
    client.ack(0, tid)
    blocks = [struct.unpack('!H', client.recv()[0][2:4])[0] for _i in range(4)]
    assert blocks == [1, 2, 3, 4]
    assert drain(client, 0.3) == []  # a full window is out: nothing more before an ACK
    client.ack(2, tid)  # blocks 3 and 4 "lost": the next window starts at 3
    again = [client.recv()[0] for _i in range(4)]
    assert [struct.unpack('!H', p[2:4])[0] for p in again] == [3, 4, 5, 6]
    assert again[2][4:] == want[4 * 512:5 * 512]
    client.send(b'\0\5\0\0done\0', tid)
    event = event_for(running, client.port)
    assert (event['outcome'], event['windowsize'], event['bytes'], event['retransmits']) == ('aborted', 4, 1024, 2)
    assert event['error'] == 'client error 0: done'
    whole = running.client().get('1234abcd/bootcode.bin', windowsize=4, blksize=1024)
    assert whole['data'] == want


def test_retransmit_after_dropped_ack(running):
    want = running.tree['files']['start4.elf']
    client = running.client()
    got = client.get('1234abcd/start4.elf', skip_ack=5)
    assert got['data'] == want
    assert got['duplicates'] >= 1
    event = event_for(running, client.port)
    assert event['outcome'] == 'ok'
    assert event['retransmits'] >= 1


def test_duplicate_acks_do_not_resend(running):
    client = running.client()
    _packet, tid, _oack = client.start('1234abcd/start4.elf', options=[('timeout', 5)])
    client.ack(0, tid)
    assert client.recv()[0][:4] == b'\0\3\0\1'
    client.ack(1, tid)
    assert client.recv()[0][:4] == b'\0\3\0\2'
    for _i in range(5):
        client.ack(1, tid)
    assert drain(client, 0.3) == []
    client.ack(2, tid)
    assert [p[:4] for p, _addr in drain(client, 0.3)] == [b'\0\3\0\3']
    client.send(b'\0\5\0\0bye\0', tid)
    assert event_for(running, client.port)['outcome'] == 'aborted'


def test_wrong_tid_is_dropped_and_harmless(running, tftp):
    # Transfer sockets are connected to their client: another TID's ACK or ERROR never reaches the
    # transfer (RFC 1350 lets a server discard it), so it can neither end nor disturb it.
    client, stranger = running.client(), running.client()
    replies = []

    def meddle(block, tid):
        if block == 3:
            stranger.ack(3, tid)
            stranger.send(b'\0\5\0\0go away\0', tid)
            replies.extend(drain(stranger, 0.3))

    got = client.get('1234abcd/start4.elf', on_data=meddle)
    assert got['data'] == running.tree['files']['start4.elf']
    assert replies == []
    assert event_for(running, client.port)['outcome'] == 'ok'


def test_duplicate_rrq_is_ignored(running):
    client = running.client()
    packet, tid, _oack = client.start('1234abcd/start4.elf')
    assert packet[:4] == b'\0\3\0\1'
    client.rrq('1234abcd/start4.elf')  # the same request again, from the same port
    assert all(addr == tid for _p, addr in drain(client, 0.2))
    client.send(b'\0\5\0\0bye\0', tid)
    assert event_for(running, client.port)['outcome'] == 'aborted'


def test_block_counter_wraps(running, tftp):
    path = running.tree['boot'] / 'wrap.img'
    size = 65536 * 512 + 100
    with open(path, 'wb') as handle:  # sparse, with data where the counter wraps
        handle.truncate(size)
        for offset in (0, 65534 * 512, 65535 * 512 - 7, 65536 * 512 - 3, size - 100):
            handle.seek(offset)
            handle.write(os.urandom(100))
    client = running.client(timeout=5.0)
    got = client.get('1234abcd/wrap.img')
    assert got['packets'] == 65537
    assert tftp.sha256(got['data']) == tftp.sha256(path.read_bytes())
    event = event_for(running, client.port)
    assert (event['outcome'], event['bytes']) == ('ok', size)


REFUSED = [
    # request, error code, outcome, prefix, path, name, known
    ('1234abcd/missing.bin', 1, 'not_found', '1234abcd', 'missing.bin', 'pi-01', True),
    ('DEADBEEF/start4.elf', 1, 'unknown_prefix', 'DEADBEEF', 'start4.elf', None, False),
    ('bootsig.bin', 1, 'not_found', '', 'bootsig.bin', None, False),
    ('start4.elf', 1, 'not_found', '', 'start4.elf', None, False),
    ('outside/secret.txt', 1, 'not_found', 'outside', 'secret.txt', 'evil', True),  # its dir was dropped
    ('1234abcd/../secret.txt', 2, 'denied', '1234abcd', '../secret.txt', None, False),
    ('1234abcd/escape.txt', 2, 'denied', '1234abcd', 'escape.txt', 'pi-01', True),
    ('1234abcd/fifo', 2, 'denied', '1234abcd', 'fifo', 'pi-01', True),
]


@pytest.mark.parametrize('case', REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_requests(running, tftp, case):
    client = running.client()
    with pytest.raises(tftp.TftpError) as caught:
        client.get(case[0])
    assert caught.value.code == case[1]
    event = event_for(running, client.port)
    assert (event['outcome'], event['prefix'], event['path'], event['name'], event['known']) == case[2:]
    assert (event['source'], event['bytes'], event['size']) == (None, 0, None)


def test_write_request_is_denied(running):
    client = running.client()
    client.send(b'\0\2upload.bin\0octet\0')
    packet, _addr = client.recv()
    assert packet == b'\0\5\0\2Access violation\0'
    event = event_for(running, client.port)
    assert (event['outcome'], event['error']) == ('denied', 'write request')
    assert not (running.tree['boot'] / 'upload.bin').exists()


def test_events_carry_the_spec_fields(running, tftp):
    client = running.client()
    client.get('1234ABCD/cmdline.txt', tsize=True)
    event = event_for(running, client.port)
    assert set(event) == tftp.EVENT_KEYS
    size = len(b'console=serial0 root=/dev/nfs pi-01\n')
    assert event == dict(event, client='127.0.0.1', port=client.port, server='127.0.0.1',
                         request='1234ABCD/cmdline.txt', prefix='1234abcd', path='cmdline.txt', name='pi-01',
                         known=True, source=str(running.tree['pi1'] / 'cmdline.txt'), outcome='ok', bytes=size,
                         size=size, blksize=512, windowsize=1, tsize=True, retransmits=0, error=None)
    assert event['time'].endswith('+00:00')
    assert 0 <= event['duration'] < 5
    with open(running.config['events'], encoding='utf-8') as handle:
        assert handle.read().endswith('}\n')
    assert all(set(e) == tftp.EVENT_KEYS for e in running.events())


@pytest.mark.parametrize('evidence', ['next request', 'closed port'])
def test_lost_final_ack_is_ok_once_the_client_moves_on(running, evidence):
    # The last block arrived but its ACK was lost: the client's next request (from a new port), or
    # the ICMP "port unreachable" for its closed port, shows the transfer did succeed.
    client = running.client()
    packet, _tid, _oack = client.start('1234abcd/cmdline.txt')
    assert packet[:4] == b'\0\3\0\1' and len(packet) - 4 < 512  # the one and last block; no ACK sent
    if evidence == 'next request':
        assert running.client().get('1234abcd/start4.elf')['data'] == running.tree['files']['start4.elf']
    else:
        client.close()
    event = event_for(running, client.port)
    assert event['outcome'] == 'ok'
    assert event['bytes'] == event['size'] == len(packet) - 4
    assert event['error'].startswith('the final ACK was lost')


@pytest.mark.parametrize('port', ['new', 'same'])
def test_probe_whose_early_terminate_was_lost_is_still_a_probe(running, port):
    prober = running.client()
    packet, _tid, oack = prober.start('1234abcd/start4.elf', blksize=1024, tsize=True)
    assert packet is None and oack['tsize'] == len(running.tree['files']['start4.elf'])
    # The "Early terminate" ERROR never arrives; the Pi's real request does, from a new port or the same.
    asker = running.client() if port == 'new' else prober
    assert asker.get('1234abcd/start4.elf', blksize=1024)['data'] == running.tree['files']['start4.elf']
    events = own_events(running, prober.port)
    if port == 'new':  # the probe's own transfer ends on its timer: another port's request never ends it
        event = event_for(running, prober.port)
    else:  # the same port's next request supersedes it (the same TID); then the file is served
        event = next(e for e in events if e['tsize'])
        assert event['error'] == 'superseded by a new request from the same port'
    assert (event['outcome'], event['bytes']) == ('probe', 0)
