# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Pi bootloader simulator lab/pisim.py without root: packets, DHCP parsing, and the TFTP
client and model sequences against a small TFTP server thread on 127.0.0.1 that can drop, duplicate
and misdirect packets."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab import pisim

TOOL = Path(pisim.__file__)
SERIAL = '1234abcd'


class MiniServer(threading.Thread):
    """One transfer at a time (a Pi asks sequentially). ``requests`` logs (filename, options, outcome)."""

    def __init__(self, files, *, drop=(), dup=(), stray=False, options=True, grant=None):
        super().__init__(daemon=True)
        self.files, self.drop, self.dup = dict(files), set(drop), set(dup)
        self.stray, self.options, self.grant = stray, options, grant
        self.requests, self.stray_got = [], []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(('127.0.0.1', 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stopping = False

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.join(5)
        self.sock.close()

    def run(self):
        while not self.stopping:
            try:
                packet, client = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            fields = packet[2:].split(b'\0')
            name = fields[0].decode()
            options = pisim.parse_options(b'\0'.join(fields[2:])) if len(fields) > 3 else {}
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tid:
                tid.bind(('127.0.0.1', 0))
                tid.settimeout(0.3)
                outcome = self.serve(tid, client, name, options)
            self.requests.append((name, options, outcome))

    def serve(self, tid, client, name, options):
        if name not in self.files:
            tid.sendto(pisim.error_packet(1, 'File not found'), client)
            return 'not_found'
        data = self.files[name]
        blksize, window = 512, 1
        if options and self.options:
            reply = {}
            if 'blksize' in options:
                blksize = reply['blksize'] = self.grant or int(options['blksize'])
            if 'windowsize' in options:
                window = reply['windowsize'] = int(options['windowsize'])
            if 'tsize' in options:
                reply['tsize'] = len(data)
            oack = struct.pack('!H', pisim.OACK) + b''.join(b'%s\0%d\0' % (k.encode(), v) for k, v in reply.items())
            got = self.exchange(tid, client, [oack], 0)
            if got != 0:
                return 'probe' if got == 'error' else 'timeout'
        count = len(data) // blksize + 1
        base = 1
        while base <= count:
            if self.stray and base == 2:
                # Once the client knows our TID, a packet from another port must get ERROR 5 and change nothing.
                self.stray = False
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                    other.settimeout(1)
                    other.sendto(struct.pack('!HH', pisim.DATA, 2) + b'x', client)
                    self.stray_got.append(other.recv(100))
            blocks = range(base, min(base + window, count + 1))
            packets = [struct.pack('!HH', pisim.DATA, b & 0xFFFF) + data[(b - 1) * blksize:b * blksize] for b in blocks]
            got = self.exchange(tid, client, packets, base, blocks)
            if not isinstance(got, int):
                return got
            base = got + 1
        return 'ok'

    def exchange(self, tid, client, packets, base, blocks=None):
        """Send a window, wait for an ACK inside it; returns the absolute block ACKed, 'error' or 'timeout'."""
        for _attempt in range(6):
            for index, packet in enumerate(packets):
                block = blocks[index] if blocks else 0
                if block in self.drop:
                    self.drop.discard(block)
                    continue
                tid.sendto(packet, client)
                if block in self.dup:
                    self.dup.discard(block)
                    tid.sendto(packet, client)
            # A deadline, not a per-recv timeout: the client's own retransmits must not postpone ours.
            deadline = time.monotonic() + 0.3
            while True:
                tid.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    reply = tid.recv(65536)
                except socket.timeout:
                    break
                if reply[1] == pisim.ERROR:
                    return 'error'
                acked = struct.unpack('!H', reply[2:4])[0]
                # Map the 16-bit ACK back into the window (the counter wraps past 65535).
                for block in range(base - 1, base + len(packets)):
                    if block & 0xFFFF == acked and (block >= base or not blocks):
                        return block
        return 'timeout'


def blob(size, seed=0):
    return bytes((i * 7 + seed * 13 + i // 251) & 0xFF for i in range(size))


def boot_set(folder=SERIAL, root=True):
    names = ['start4.elf', 'fixup4.dat', 'config.txt', 'bcm2711-rpi-4-b.dtb', 'cmdline.txt', 'kernel8.img',
             'start.elf', 'fixup.dat', 'bcm2710-rpi-3-b.dtb', 'kernel_2712.img', 'bcm2712-rpi-5-b.dtb']
    files = {('%s/%s' % (folder, n) if folder else n): blob(3000 + 517 * i, i) for i, n in enumerate(names)}
    if root:
        files['bootcode.bin'] = blob(5000, 99)
    return files


# ---- packets and identity --------------------------------------------------------------------

def test_packets():
    assert pisim.rrq_packet('1234abcd/start4.elf', {'tsize': 0, 'blksize': 1024}) == (
        b'\x00\x011234abcd/start4.elf\x00octet\x00tsize\x000\x00blksize\x001024\x00')
    assert pisim.ack_packet(65536 + 5) == b'\x00\x04\x00\x05'
    assert pisim.parse_error(pisim.error_packet(1, 'File not found')) == (1, 'File not found')
    assert pisim.parse_options(b'BLKSIZE\x001468\x00tsize\x0042\x00') == {'blksize': '1468', 'tsize': '42'}
    with pytest.raises(pisim.TftpError):
        pisim.parse_options(b'blksize\x00')


@pytest.mark.parametrize(('accepted', 'problem'), [
    ({'blksize': '1024', 'tsize': '9'}, None),
    ({'blksize': '2048'}, 'blksize'),
    ({'windowsize': '4'}, 'unrequested'),
    ({'tsize': 'x'}, 'bad value'),
])
def test_check_oack(accepted, problem):
    result = pisim._check_oack(accepted, {'blksize': '1024', 'tsize': '0'})
    assert (result is None) if problem is None else (problem in result)


@pytest.mark.parametrize(('model', 'mac', 'prefix'), [
    (3, 'b8:27:eb:34:ab:cd', '1234abcd'),
    (4, 'dc:a6:32:34:ab:cd', '1234abcd'),
    (5, '2c:cf:67:34:ab:cd', '1234abcd'),
])
def test_identity(model, mac, prefix):
    assert pisim.default_mac(model, '100000001234ABCD') == mac
    assert pisim.tftp_prefix('serial', '100000001234abcd', mac) == prefix
    assert pisim.tftp_prefix('mac', SERIAL, 'DC-A6-32-01-36-C2') == 'dc-a6-32-01-36-c2'
    assert pisim.tftp_prefix('rack1-pi', SERIAL, mac) == 'rack1-pi'
    assert pisim.normalise_mac('dca6320136c2') == 'dc:a6:32:01:36:c2'
    for bad in ('12345', 'xyz12345'):
        with pytest.raises(ValueError):
            pisim.normalise_serial(bad)


def test_guid():
    guid = pisim.client_guid(4, SERIAL, 'dc:a6:32:01:36:c2')
    assert len(guid) == 17 and guid[0] == 0
    assert guid[1:5] == b'RPi4' and struct.unpack('<I', guid[1:5])[0] == 0x34695052
    assert struct.unpack('<I', guid[5:9])[0] == 0x00C03111
    assert guid[9:13] == bytes.fromhex('320136c2') and struct.unpack('<I', guid[13:17])[0] == 0x1234ABCD
    assert pisim.client_guid(5, SERIAL, 'dc:a6:32:01:36:c2')[1:5] == b'RPi5'
    assert pisim.client_guid(3, SERIAL, 'b8:27:eb:34:ab:cd') == b'\0' + bytes.fromhex(SERIAL) * 4


# ---- DHCP ----------------------------------------------------------------------------------

# The proxy's option 43 as dnsmasq sends it (LAB.md), Pi 3B form with three trailing spaces too.
OPTION43 = bytes.fromhex('0601030a0400505845091400001152') + b'aspberry Pi Boot' + b'\xff'


def offer_bytes(yiaddr, siaddr, options):
    header = struct.pack('!BBBBIHH', 2, 1, 6, 0, 0x1234, 0, 0) + socket.inet_aton('0.0.0.0')
    header += socket.inet_aton(yiaddr) + socket.inet_aton(siaddr) + socket.inet_aton('0.0.0.0')
    header += b'\xdc\xa6\x32\x01\x36\xc2' + b'\0' * (10 + 64 + 128)
    return header + pisim.DHCP_MAGIC + pisim.encode_options(options)


def test_pxe_menu():
    assert pisim.parse_pxe_menu(OPTION43) == 'Raspberry Pi Boot'
    spaced = bytes.fromhex('0601030917000014') + b'Raspberry Pi Boot   ' + b'\xff'
    assert pisim.parse_pxe_menu(spaced) == 'Raspberry Pi Boot   '
    assert pisim.parse_pxe_menu(b'\x06\x01\x03\xff') is None
    assert pisim.parse_pxe_menu(b'\x09\x20\x00') is None  # truncated: no crash


def test_parse_offers_and_choose():
    proxy = pisim.parse_offer(offer_bytes('0.0.0.0', '10.99.30.2', [
        (53, b'\x02'), (54, socket.inet_aton('10.99.30.2')), (60, b'PXEClient'), (43, OPTION43)]))
    router = pisim.parse_offer(offer_bytes('10.99.30.120', '0.0.0.0', [
        (53, b'\x02'), (54, socket.inet_aton('10.99.30.1')), (1, socket.inet_aton('255.255.255.0'))]))
    assert proxy['pxe_menu'] == 'Raspberry Pi Boot' and proxy['server_id'] == '10.99.30.2'
    assert proxy['vendor_class'] == 'PXEClient' and proxy['siaddr'] == '10.99.30.2'
    assert router['yiaddr'] == '10.99.30.120' and router['options'][1] == '255.255.255.0'
    assert router['pxe_menu'] is None and router['vendor_class'] is None
    assert pisim.choose([router, proxy]) == (router, proxy, '10.99.30.2')
    named = pisim.parse_offer(offer_bytes('0.0.0.0', '0.0.0.0', [(43, OPTION43), (66, b'10.99.30.9')]))
    assert pisim.choose([router, named])[2] == '10.99.30.9'
    assert pisim.choose([router]) == (router, None, None)
    with pytest.raises(ValueError):
        pisim.parse_offer(b'\0' * 100)


@pytest.mark.parametrize('until_answered', [False, True])
def test_discover_until_answered_stops_at_a_lease_and_a_pxe_answer(monkeypatch, until_answered):
    """The scapy call is faked (no LAN here): the replies go through its stop_filter as scapy's sniffer does."""
    pytest.importorskip('scapy')
    from scapy import sendrecv  # noqa: PLC0415
    from scapy.layers.dhcp import BOOTP  # noqa: PLC0415
    from scapy.layers.inet import IP, UDP  # noqa: PLC0415
    from scapy.layers.l2 import Ether  # noqa: PLC0415

    router = offer_bytes('10.99.30.120', '0.0.0.0', [(53, b'\x02'), (54, socket.inet_aton('10.99.30.1'))])
    proxy = offer_bytes('0.0.0.0', '10.99.30.2', [(53, b'\x02'), (60, b'PXEClient'), (43, OPTION43)])
    heard = []

    def fake_srp(discover, *, stop_filter, **_kwargs):
        xid = struct.pack('!I', discover[BOOTP].xid)
        answered = []
        for raw, own in ((router, False), (router, True), (proxy, True), (router, True)):  # a stranger's, ours...
            reply = Ether() / IP() / UDP(sport=67, dport=68) / BOOTP(raw[:4] + (xid if own else b'zzzz') + raw[8:])
            heard.append(reply)
            if own:
                answered.append((discover, reply))
            if stop_filter is not None and stop_filter(reply):
                break
        return answered, []
    monkeypatch.setattr(sendrecv, 'srp', fake_srp)
    offers = pisim.dhcp_discover('eth0', pisim.default_mac(4, SERIAL), serial=SERIAL, until_answered=until_answered)
    assert [o['yiaddr'] for o in offers] == ['10.99.30.120', '0.0.0.0'] + ([] if until_answered else ['10.99.30.120'])
    assert len(heard) == (3 if until_answered else 4)  # the stranger's lease alone never stops it


@pytest.mark.parametrize(('model', 'pxe'), [(3, True), (4, True), (5, True), (4, False)])
def test_discover_packet(model, pxe):
    pytest.importorskip('scapy')
    mac = pisim.default_mac(model, SERIAL)
    packet = pisim.build_discover(mac, model, SERIAL, pxe=pxe, xid=0xBEEF)
    raw = bytes(packet)
    assert raw[:12] == b'\xff' * 6 + bytes.fromhex(mac.replace(':', ''))
    bootp = raw[14 + 20 + 8:]
    assert struct.unpack('!HH', raw[34:38]) == (68, 67)
    assert bootp[0] == 1 and struct.unpack('!I', bootp[4:8])[0] == 0xBEEF and bootp[10] & 0x80
    assert bootp[28:34] == bytes.fromhex(mac.replace(':', ''))
    options = dict(pisim.iter_tlv(bootp[240:]))
    assert options[53] == b'\x01'
    if pxe:
        assert options[60] == b'PXEClient:Arch:00000:UNDI:002001'
        assert options[93] == b'\x00\x00' and options[94] == b'\x01\x02\x01'
        assert options[97] == pisim.client_guid(model, SERIAL, mac) and len(options[97]) == 17
    else:
        assert not {60, 93, 94, 97} & set(options)


# ---- TFTP client ---------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs', [{}, {'blksize': 1024, 'tsize': True}, {'blksize': 1468, 'windowsize': 4}])
@pytest.mark.parametrize('size', [0, 511, 512, 4096, 70001])
def test_get_sizes(size, kwargs):
    files = {'f': blob(size, size)}
    with MiniServer(files) as server:
        got = pisim.tftp_get('127.0.0.1', 'f', port=server.port, timeout=0.5, **kwargs)
    assert got.data == files['f'] and got.retransmits == 0
    assert server.requests[0][2] == 'ok'
    assert got.options == ({} if not kwargs else {k: str(size if k == 'tsize' else v) for k, v in kwargs.items()})


def test_get_recovers_from_loss_and_duplicates():
    files = {'f': blob(60000)}
    with MiniServer(files, drop={1, 7, 30}, dup={2, 9, 31}) as server:
        got = pisim.tftp_get('127.0.0.1', 'f', blksize=1024, port=server.port, timeout=0.2)
    assert got.data == files['f']
    # At least three ACKs resent on timeout and three duplicates re-ACKed (more when the machine is slow).
    assert 6 <= got.retransmits <= 12


def test_get_server_without_options():
    files = {'f': blob(2000)}
    with MiniServer(files, options=False) as server:
        got = pisim.tftp_get('127.0.0.1', 'f', blksize=1024, tsize=True, port=server.port, timeout=0.5)
    assert got.data == files['f'] and got.options == {}


def test_get_answers_a_stranger_and_keeps_going():
    files = {'f': blob(3000)}
    with MiniServer(files, stray=True) as server:
        got = pisim.tftp_get('127.0.0.1', 'f', port=server.port, timeout=0.5)
    assert got.data == files['f']
    assert server.stray_got and pisim.parse_error(server.stray_got[0])[0] == 5


def test_get_block_counter_wraps():
    # Windowed only to keep the test quick: lock-step uses the same counter code, one ACK per block.
    files = {'big': blob(8 * 65540 + 3)}  # 65541 blocks of 8 bytes: block 65535 is followed by block 0
    with MiniServer(files) as server:
        got = pisim.tftp_get('127.0.0.1', 'big', blksize=8, windowsize=32, port=server.port, timeout=1)
    assert hashlib.sha256(got.data).digest() == hashlib.sha256(files['big']).digest()


def test_get_errors():
    with MiniServer({}) as server:
        with pytest.raises(pisim.TftpError) as caught:
            pisim.tftp_get('127.0.0.1', 'missing', port=server.port, timeout=0.5)
    assert caught.value.code == 1 and 'File not found' in str(caught.value)
    with MiniServer({'f': blob(10)}, grant=2048) as server:  # more than the client asked for
        with pytest.raises(pisim.TftpError) as caught:
            pisim.tftp_get('127.0.0.1', 'f', blksize=1024, port=server.port, timeout=0.5)
    assert caught.value.code == 8 and server.requests[0][2] == 'probe'  # the client said ERROR after the OACK
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(('127.0.0.1', 0))
    try:
        with pytest.raises(pisim.TftpError) as caught:
            pisim.tftp_get('127.0.0.1', 'f', port=silent.getsockname()[1], timeout=0.05, retries=2)
        assert caught.value.code == 0 and 'timed out' in caught.value.message
        assert len([silent.recv(100) for _i in range(3)]) == 3  # the RRQ and two retransmits
    finally:
        silent.close()


def test_probe():
    files = {'p/start4.elf': blob(12345)}
    with MiniServer(files) as server:
        assert pisim.tftp_probe('127.0.0.1', 'p/start4.elf', port=server.port, timeout=0.5) == 12345
        with pytest.raises(pisim.TftpError) as caught:
            pisim.tftp_probe('127.0.0.1', 'p/nothing', port=server.port, timeout=0.5)
    assert caught.value.code == 1
    assert [(r[0], r[1], r[2]) for r in server.requests] == [
        ('p/start4.elf', {'tsize': '0', 'blksize': '1024'}, 'probe'),
        ('p/nothing', {'tsize': '0', 'blksize': '1024'}, 'not_found')]


# ---- model sequences -----------------------------------------------------------------------

def sequence(model, p, initramfs=False):
    """The requests of docs/netboot.md §3, written out by hand: (request, server outcome)."""
    if model == 3:
        return [('bootcode.bin', 'ok'), ('bootsig.bin', 'not_found'), (p + 'start.elf', 'probe'),
                *[(p + n, 'ok') for n in ('start.elf', 'fixup.dat', 'config.txt', 'bcm2710-rpi-3-b.dtb',
                                          'cmdline.txt', 'kernel8.img')]]
    if model == 4:
        steps = [(p + 'start4.elf', 'probe'), *[(p + n, 'ok') for n in (
            'config.txt', 'start4.elf', 'fixup4.dat', 'config.txt', 'bcm2711-rpi-4-b.dtb', 'cmdline.txt')],
            (p + 'kernel8.img', 'probe'), (p + 'kernel8.img', 'ok')]
        return steps + ([(p + 'initramfs8', 'probe'), (p + 'initramfs8', 'ok')] if initramfs else [])
    steps = [(p + 'config.txt', 'ok'), (p + 'cmdline.txt', 'ok'), (p + 'kernel_2712.img', 'probe'),
             (p + 'kernel_2712.img', 'ok'), (p + 'bcm2712-rpi-5-b.dtb', 'ok')]
    return steps + ([(p + 'initramfs_2712', 'ok')] if initramfs else [])


@pytest.mark.parametrize('initramfs', [False, True])
@pytest.mark.parametrize('model', [3, 4, 5])
def test_boot_sequence(model, initramfs):
    files = boot_set()
    if initramfs:
        files.update({SERIAL + '/initramfs8': blob(7000, 5), SERIAL + '/initramfs_2712': blob(7100, 6)})
    with MiniServer(files) as server:
        report = pisim.boot(model, '127.0.0.1', serial=SERIAL, expect=files.get, port=server.port, timeout=0.5)
    assert [(r[0], r[2]) for r in server.requests] == sequence(model, SERIAL + '/', initramfs)
    assert report['ok'], report
    blksizes = {r[1].get('blksize') for r in server.requests if r[0] != 'bootsig.bin'}
    assert blksizes == ({None} if model == 3 else {'1024'})  # the Pi 3 ROM asks for no options
    for entry in report['files']:
        want = files.get(entry['request'])
        assert entry['ok'] and entry['sha256'] == (want and hashlib.sha256(want).hexdigest())
    assert report['bytes'] == sum(len(files[f['request']]) for f in report['files'] if f['request'] in files)
    assert all(p['ok'] and p['bytes'] == len(files[p['request']]) for p in report['probes'])


def test_boot_prefixes_and_blksize():
    mac_files = boot_set('dc-a6-32-01-36-c2')
    with MiniServer(mac_files) as server:
        report = pisim.boot(4, '127.0.0.1', serial=SERIAL, mac='dc:a6:32:01:36:c2', prefix='mac', blksize=1468,
                            expect=mac_files.get, port=server.port, timeout=0.5)
    assert report['ok'] and report['prefix'] == 'dc-a6-32-01-36-c2'
    assert {r[1]['blksize'] for r in server.requests} == {'1468'}


def test_boot_drops_a_missing_prefix():
    """No <serial>/start4.elf: the bootloader asks for everything at the root (docs/netboot.md §4)."""
    files = boot_set(folder='')
    with MiniServer(files) as server:
        report = pisim.boot(4, '127.0.0.1', serial=SERIAL, expect=files.get, port=server.port, timeout=0.5)
    assert report['ok'], report
    assert [(r[0], r[2]) for r in server.requests] == [(SERIAL + '/start4.elf', 'not_found'),
                                                       *sequence(4, '')[1:]]


def test_boot_fails_on_wrong_or_missing_files():
    files = boot_set()
    served = dict(files)
    served[SERIAL + '/kernel8.img'] = files[SERIAL + '/kernel8.img'][:-1] + b'!'  # same size, one byte off
    del served[SERIAL + '/cmdline.txt']
    served['bootsig.bin'] = b'sig'  # expected absent
    with MiniServer(served) as server:
        report = pisim.boot(3, '127.0.0.1', serial=SERIAL, expect=files.get, port=server.port, timeout=0.5)
    bad = {f['request']: f['error'] for f in report['files'] if not f['ok']}
    assert not report['ok']
    assert set(bad) == {'bootsig.bin', SERIAL + '/cmdline.txt', SERIAL + '/kernel8.img'}
    assert 'content differs' in bad[SERIAL + '/kernel8.img'] and 'File not found' in bad[SERIAL + '/cmdline.txt']
    assert 'expected to be absent' in bad['bootsig.bin']


def test_boot_without_expect_accepts_what_arrives():
    files = boot_set()
    with MiniServer(files) as server:
        assert pisim.boot(3, '127.0.0.1', serial=SERIAL, port=server.port, timeout=0.5)['ok']
        del server.files[SERIAL + '/fixup.dat']
        assert not pisim.boot(3, '127.0.0.1', serial=SERIAL, port=server.port, timeout=0.5)['ok']


# ---- CLI and NFS ---------------------------------------------------------------------------

def write_tree(top, files):
    for name, data in files.items():
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def cli(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_cli_boot(tmp_path):
    """--expect-dir: the Pi's own folder first, then the shared boot folder (the service's lookup order)."""
    served = boot_set()
    own, shared = tmp_path / 'pi', tmp_path / 'boot'
    write_tree(shared, {k.split('/', 1)[-1]: v for k, v in served.items()})
    write_tree(own, {'config.txt': served[SERIAL + '/config.txt']})
    (shared / 'config.txt').write_bytes(b'the shared config, shadowed by the Pi one\n')
    with MiniServer(served) as server:
        args = ['boot', '--model', '5', '--serial', SERIAL, '--server', '127.0.0.1', '--port', str(server.port),
                '--timeout', '0.5', '--expect-dir', str(own), '--expect-dir', str(shared), '--json']
        good = cli(*args)
        (own / 'cmdline.txt').write_bytes(b'console=tty1 root=/dev/nfs\n')  # the Pi's own file now differs
        bad = cli(*args)
    assert good.returncode == 0, good.stdout + good.stderr
    report = json.loads(good.stdout)
    assert report['ok'] and len(good.stdout.splitlines()) == 1
    assert [f['request'] for f in report['files']] == [SERIAL + '/' + n for n in (
        'config.txt', 'cmdline.txt', 'kernel_2712.img', 'bcm2712-rpi-5-b.dtb')]
    assert bad.returncode == 1
    assert [f['request'] for f in json.loads(bad.stdout)['files'] if not f['ok']] == [SERIAL + '/cmdline.txt']


def test_cli_needs_a_server():
    proc = cli('boot', '--model', '4')
    assert proc.returncode == 1 and 'no TFTP server' in json.loads(proc.stdout)['error']
    assert cli('boot', '--model', '6').returncode == 2


def test_nfs_check(tmp_path, monkeypatch):
    """nfs_check runs nfs-ls on the nfs:// URL: a stand-in nfs-ls records its argument."""
    fake = tmp_path / 'nfs-ls'
    fake.write_text('#!/bin/sh\necho "$1" >> "%s/calls"\ncase "$1" in *ok*) exit 0;; esac\nexit 1\n' % tmp_path)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv('PATH', '%s%s%s' % (tmp_path, os.pathsep, os.environ['PATH']))
    assert pisim.nfs_check('10.99.30.2', '/srv/ok')
    assert not pisim.nfs_check('10.99.30.2', '/srv/denied', version=4)
    assert (tmp_path / 'calls').read_text().split() == ['nfs://10.99.30.2/srv/ok',
                                                        'nfs://10.99.30.2/srv/denied?version=4']
