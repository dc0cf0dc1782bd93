# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Raspberry Pi bootloader simulator for tests, the demo and benchmarks (docs/netboot.md §1-§5).

Plays a Pi 3, 4 or 5 on a test LAN: the PXE DHCPDISCOVER of the bootloader (scapy, imported only
for DHCP), then the TFTP request sequence of the model (tsize probes answered with "Early
terminate", blksize 512/1024/1468, the serial/MAC/custom prefix), checking every file against the
expected bytes and timing it; optionally an NFS root check with the userspace client (nfs-ls).

Run it inside a Pi's namespace::

    ip netns exec pfsim-pi4 python3 -m lab.pisim boot --model 4 --serial 1234abcd \\
        --dhcp eth0 --expect-dir /srv/pis/pi-01 --expect-dir /srv/boot --json

It prints one JSON report and exits 0 only when every expected file arrived intact (and the DHCP and
NFS checks passed when asked for). The TFTP client is stdlib-only and lean per packet: 50 of these
run at once in bench/bench_storm.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections import namedtuple

RRQ, DATA, ACK, ERROR, OACK = 1, 3, 4, 5, 6
VENDOR_CLASS = b'PXEClient:Arch:00000:UNDI:002001'
DHCP_MAGIC = b'\x63\x82\x53\x63'
OUIS = {3: 'b8:27:eb', 4: 'dc:a6:32', 5: '2c:cf:67'}
# Option 97 of the EEPROM bootloaders: fourcc, board revision, low MAC bytes, serial (bcm2711-bootloader.adoc).
BOARDS = {4: (b'RPi4', 0x00C03111), 5: (b'RPi5', 0x00D04170)}
# Requests per model (docs/netboot.md §3). Kinds: root = root-level get, root? = root-level get that
# may be "not found", probe! = prefix probe (not found -> the bootloader drops the prefix),
# probe = tsize probe, get = get, get? = get only when the file is expected.
SEQUENCES = {
    3: [('root', 'bootcode.bin'), ('root?', 'bootsig.bin'), ('probe!', 'start.elf'), ('get', 'start.elf'),
        ('get', 'fixup.dat'), ('get', 'config.txt'), ('get', 'bcm2710-rpi-3-b.dtb'), ('get', 'cmdline.txt'),
        ('get', 'kernel8.img')],
    4: [('probe!', 'start4.elf'), ('get', 'config.txt'), ('get', 'start4.elf'), ('get', 'fixup4.dat'),
        ('get', 'config.txt'), ('get', 'bcm2711-rpi-4-b.dtb'), ('get', 'cmdline.txt'), ('probe', 'kernel8.img'),
        ('get', 'kernel8.img'), ('probe?', 'initramfs8'), ('get?', 'initramfs8')],
    5: [('get', 'config.txt'), ('get', 'cmdline.txt'), ('probe', 'kernel_2712.img'), ('get', 'kernel_2712.img'),
        ('get', 'bcm2712-rpi-5-b.dtb'), ('get?', 'initramfs_2712')],
}
TEXT_OPTIONS = {12, 15, 56, 60, 66, 67}
ADDRESS_OPTIONS = {1, 3, 6, 28, 54}

Transfer = namedtuple('Transfer', 'data seconds options retransmits')


class TftpError(Exception):
    """An ERROR packet from the server (code 1 = file not found), or code 0 for local failures."""

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self):
        return 'TFTP error %s: %s' % (self.code, self.message)


# ---- TFTP packets -------------------------------------------------------------------------------

def rrq_packet(filename, options=None):
    parts = [struct.pack('!H', RRQ), filename.encode(), b'\0octet\0']
    for key, value in (options or {}).items():
        parts += [key.encode(), b'\0', str(value).encode(), b'\0']
    return b''.join(parts)


def ack_packet(block):
    return struct.pack('!HH', ACK, block & 0xFFFF)


def error_packet(code, message):
    return struct.pack('!HH', ERROR, code) + message.encode() + b'\0'


def parse_options(payload):
    """The NUL-separated name/value pairs of an OACK (or RRQ) body, names lower-cased."""
    fields = bytes(payload).split(b'\0')
    if fields and fields[-1] == b'':
        fields.pop()
    if len(fields) % 2:
        raise TftpError(8, 'malformed options %r' % bytes(payload))
    return {fields[i].decode('ascii', 'replace').lower(): fields[i + 1].decode('ascii', 'replace')
            for i in range(0, len(fields), 2)}


def parse_error(packet):
    packet = bytes(packet)
    code = struct.unpack('!H', packet[2:4])[0] if len(packet) >= 4 else 0
    return code, packet[4:].split(b'\0', 1)[0].decode('utf-8', 'replace')


def _check_oack(accepted, asked):
    """RFC 2347: the server may only confirm options we asked for, and never raise blksize/windowsize."""
    for key, value in accepted.items():
        if key not in asked:
            return 'unrequested option %s' % key
        if not value.isdigit():
            return 'bad value %r for %s' % (value, key)
        if key in ('blksize', 'windowsize') and not 0 < int(value) <= int(asked[key]):
            return '%s %s outside 1..%s' % (key, value, asked[key])
    return None


def _open(server, timeout):
    family = socket.AF_INET6 if ':' in server else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # A kernel receive timeout on a blocking socket: no poll() per packet as settimeout() would add
        # (~15 % of the client's CPU per block). A timeout then surfaces as BlockingIOError (EAGAIN).
        whole = int(timeout)
        micro = max(int((timeout - whole) * 1e6), 0 if whole else 1000)  # 0/0 would mean "wait forever"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack('ll', whole, micro))
    except (OSError, struct.error):
        sock.settimeout(timeout)
    return sock


def _options(blksize, tsize, windowsize):
    options = {}
    if blksize:
        options['blksize'] = int(blksize)
    if tsize:
        options['tsize'] = 0
    if windowsize:
        options['windowsize'] = int(windowsize)
    return options


def tftp_get(server, filename, *, blksize=None, tsize=False, windowsize=None, timeout=1.0, retries=5, port=69):
    """Fetch ``filename`` lock-step (or windowed) like a bootloader; returns a Transfer, raises TftpError."""
    asked = _options(blksize, tsize, windowsize)
    sock = _open(server, timeout)
    start = time.monotonic()
    try:
        data, accepted, retransmits = _receive(sock, (server, port), rrq_packet(filename, asked),
                                               {k: str(v) for k, v in asked.items()}, retries)
    finally:
        sock.close()
    if 'tsize' in accepted and int(accepted['tsize']) != len(data):
        raise TftpError(0, 'received %d bytes but the server announced tsize %s' % (len(data), accepted['tsize']))
    return Transfer(bytes(data), time.monotonic() - start, accepted, retransmits)


def _receive(sock, dest, packet, asked, retries):  # noqa: PLR0912, PLR0915 - flat on purpose: no calls per block
    """The receive loop: kept flat and allocation-poor, it runs once per block."""
    buf = bytearray(65536 + 4)
    view = memoryview(buf)
    out = bytearray()
    host, tid = dest[0], None
    size, window, in_window, reacked = 512, 1, 0, False
    block, tries, retransmits, accepted = 1, 0, 0, {}
    recv, send = sock.recvfrom_into, sock.sendto
    send(packet, dest)
    while True:
        try:
            n, addr = recv(buf)
        except (socket.timeout, BlockingIOError):
            tries += 1
            if tries > retries:
                raise TftpError(0, 'timed out waiting for block %d (%d retransmits)' % (block, retransmits)) from None
            send(packet, dest)  # the RRQ or our last ACK, as a real bootloader does
            retransmits += 1
            in_window = 0
            continue
        if tid is None:
            if addr[0] != host:
                continue  # a stray packet from another host; the server has not answered yet
            tid = dest = addr
        elif addr != tid:
            send(error_packet(5, 'Unknown transfer ID'), addr)  # RFC 1350: tell the stranger, keep going
            continue
        if n < 4 or buf[0]:
            continue
        opcode = buf[1]
        if opcode == DATA:
            if ((buf[2] << 8) | buf[3]) == block & 0xFFFF:
                out += view[4:n]
                tries, reacked = 0, False
                in_window += 1
                last = n - 4 < size
                if last or in_window >= window:
                    packet = ack_packet(block)
                    send(packet, dest)
                    in_window = 0
                if last:
                    return out, accepted, retransmits
                block += 1
            elif window == 1 or not reacked:
                # A duplicate (our ACK was lost) or a gap in a window: ACK the last block we hold, once per gap.
                packet = ack_packet(block - 1)
                send(packet, dest)
                retransmits += 1
                in_window, reacked = 0, True
        elif opcode == OACK and block == 1 and not out:
            accepted = parse_options(view[2:n])
            problem = _check_oack(accepted, asked)
            if problem:
                send(error_packet(8, problem), dest)
                raise TftpError(8, 'bad OACK: %s' % problem)
            size = int(accepted.get('blksize', 512))
            window = int(accepted.get('windowsize', 1))
            packet = ack_packet(0)
            send(packet, dest)
            tries = 0
        elif opcode == ERROR:
            raise TftpError(*parse_error(view[:n]))
        elif opcode != OACK:
            send(error_packet(4, 'Illegal TFTP operation'), dest)
            raise TftpError(4, 'unexpected opcode %d from the server' % opcode)


def tftp_probe(server, filename, *, blksize=1024, timeout=1.0, port=69, retries=5):
    """The Pi 4 size probe: RRQ with tsize 0, read the OACK's tsize, answer ERROR 0 "Early terminate"."""
    asked = _options(blksize, True, None)
    sock = _open(server, timeout)
    try:
        packet, dest = rrq_packet(filename, asked), (server, port)
        sock.sendto(packet, dest)
        for _attempt in range(retries + 1):
            try:
                while True:
                    data, addr = sock.recvfrom(65536)
                    if addr[0] == server and len(data) >= 4:
                        break
            except (socket.timeout, BlockingIOError):
                sock.sendto(packet, dest)
                continue
            opcode = data[1]
            if opcode == ERROR:
                raise TftpError(*parse_error(data))
            sock.sendto(error_packet(0, 'Early terminate'), addr)
            if opcode != OACK:
                raise TftpError(8, 'the server answered the tsize probe with opcode %d, not OACK' % opcode)
            tsize = parse_options(data[2:]).get('tsize')
            if tsize is None or not tsize.isdigit():
                raise TftpError(8, 'the OACK carries no tsize')
            return int(tsize)
        raise TftpError(0, 'timed out waiting for the OACK of %s' % filename)
    finally:
        sock.close()


# ---- Identity -----------------------------------------------------------------------------------

def normalise_serial(serial):
    """8 lower-case hex digits (the low 32 bits of the 16-digit /proc/cpuinfo form)."""
    text = str(serial).strip().lower()
    if not re.fullmatch(r'[0-9a-f]{8}|[0-9a-f]{16}', text):
        raise ValueError('serial %r is not 8 or 16 hex digits' % serial)
    return text[-8:]


def normalise_mac(mac):
    digits = re.sub(r'[:.-]', '', str(mac).strip().lower())
    if not re.fullmatch(r'[0-9a-f]{12}', digits):
        raise ValueError('MAC %r is not 6 hex bytes' % mac)
    return ':'.join(digits[i:i + 2] for i in range(0, 12, 2))


def default_mac(model, serial):
    """The model's OUI + the low 3 bytes of the serial (the real rule on the Pi 3; stable for 4/5)."""
    low = normalise_serial(serial)[2:]
    return normalise_mac(OUIS[int(model)] + low)


def tftp_prefix(prefix, serial, mac):
    """The request folder: 'serial' (8 hex), 'mac' (dc-a6-32-01-36-c2) or a custom string as is."""
    if prefix == 'serial':
        return normalise_serial(serial)
    if prefix == 'mac':
        return normalise_mac(mac).replace(':', '-')
    return prefix


def client_guid(model, serial, mac):
    """Option 97: type 0 + 16 bytes; RPi4/RPi5 fourcc form, or the serial four times (older bootloaders)."""
    serial_bytes = bytes.fromhex(normalise_serial(serial))
    if int(model) in BOARDS:
        fourcc, revision = BOARDS[int(model)]
        mac_low = bytes.fromhex(normalise_mac(mac).replace(':', ''))[2:]
        return b'\0' + fourcc + struct.pack('<I', revision) + mac_low + serial_bytes[::-1]
    return b'\0' + serial_bytes * 4


# ---- DHCP ---------------------------------------------------------------------------------------

def encode_options(options):
    return b''.join(struct.pack('BB', code, len(value)) + value for code, value in options) + b'\xff'


def discover_options(model, serial, mac, pxe=True):
    options = [(53, b'\x01'), (55, bytes([1, 3, 6, 43, 54, 60, 66, 67]))]
    if pxe:
        options += [(60, VENDOR_CLASS), (93, b'\x00\x00'), (94, b'\x01\x02\x01'), (97, client_guid(model, serial, mac))]
    return options


def iter_tlv(data):
    """(code, value) of DHCP options or PXE sub-options; stops at END, skips PAD, tolerates truncation."""
    i = 0
    while i < len(data):
        code = data[i]
        if code == 255:
            return
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            return
        length = data[i + 1]
        yield code, bytes(data[i + 2:i + 2 + length])
        i += 2 + length


def parse_pxe_menu(option43):
    """The description of the first boot menu item (PXE sub-option 9: type, length, text), or None."""
    for code, value in iter_tlv(option43):
        if code == 9 and len(value) >= 3:
            return value[3:3 + value[2]].decode('ascii', 'replace')
    return None


def _option_value(code, value):
    if code in ADDRESS_OPTIONS and value and len(value) % 4 == 0:
        addresses = [socket.inet_ntoa(value[i:i + 4]) for i in range(0, len(value), 4)]
        return addresses[0] if len(addresses) == 1 else addresses
    if code in TEXT_OPTIONS:
        return value.rstrip(b'\0').decode('ascii', 'replace')
    return value.hex()


def parse_offer(bootp):
    """An offer dict from the raw BOOTP message (fixed header, magic cookie, options)."""
    bootp = bytes(bootp)
    if len(bootp) < 240 or bootp[236:240] != DHCP_MAGIC:
        raise ValueError('not a DHCP message (%d bytes)' % len(bootp))
    raw = dict(iter_tlv(bootp[240:]))
    return {
        'server_id': socket.inet_ntoa(raw[54]) if len(raw.get(54, b'')) == 4 else None,
        'siaddr': socket.inet_ntoa(bootp[20:24]),
        'yiaddr': socket.inet_ntoa(bootp[16:20]),
        'vendor_class': raw[60].decode('ascii', 'replace') if 60 in raw else None,
        'pxe_menu': parse_pxe_menu(raw[43]) if 43 in raw else None,
        'options': {code: _option_value(code, value) for code, value in sorted(raw.items())},
    }


def build_discover(mac, model=4, serial='1234abcd', pxe=True, xid=None):
    """The DISCOVER as a scapy packet (Ether/IP/UDP/BOOTP with our own option bytes)."""
    from scapy.layers.dhcp import BOOTP  # noqa: PLC0415 - scapy is slow to import and only DHCP needs it
    from scapy.layers.inet import IP, UDP  # noqa: PLC0415
    from scapy.layers.l2 import Ether  # noqa: PLC0415

    mac = normalise_mac(mac)
    chaddr = bytes.fromhex(mac.replace(':', '')) + b'\0' * 10
    bootp = BOOTP(op=1, xid=random.getrandbits(32) if xid is None else xid, flags=0x8000, chaddr=chaddr,
                  options=DHCP_MAGIC + encode_options(discover_options(model, serial, mac, pxe)))
    return (Ether(src=mac, dst='ff:ff:ff:ff:ff:ff') / IP(src='0.0.0.0', dst='255.255.255.255')
            / UDP(sport=68, dport=67) / bootp)


def dhcp_discover(iface, mac, *, model=4, serial='1234abcd', timeout=6, pxe=True, until_answered=False):
    """Broadcast a Pi's DISCOVER on ``iface`` and return every offer heard within ``timeout`` seconds; with
    ``until_answered``, only until an address offer and a PXE answer are both in (as a Pi's bootloader goes on
    then), instead of always waiting the whole ``timeout``."""
    from scapy.config import conf  # noqa: PLC0415
    from scapy.layers.dhcp import BOOTP  # noqa: PLC0415
    from scapy.sendrecv import srp  # noqa: PLC0415

    conf.checkIPaddr = False  # offers come from the servers' addresses, not the broadcast we sent to
    discover = build_discover(mac, model, serial, pxe)
    got = {'lease': False, 'pxe': False}

    def enough(packet):  # called after scapy has taken the packet as an answer
        if BOOTP not in packet or packet[BOOTP].op != 2 or packet[BOOTP].xid != discover[BOOTP].xid:
            return False
        try:
            offer = parse_offer(bytes(packet[BOOTP]))
        except ValueError:
            return False
        got['lease'] = got['lease'] or offer['yiaddr'] != '0.0.0.0'
        got['pxe'] = got['pxe'] or offer['pxe_menu'] is not None
        return got['lease'] and got['pxe']
    answered, _unanswered = srp(discover, iface=iface, multi=True, timeout=timeout, verbose=0,
                                stop_filter=enough if until_answered else None)
    offers = []
    for _sent, reply in answered:
        if BOOTP in reply:
            offers.append(parse_offer(bytes(reply[BOOTP])))
    return offers


def choose(offers):
    """(address offer, PXE offer, TFTP server) from a list of offers; None where missing."""
    lease = next((o for o in offers if o['yiaddr'] != '0.0.0.0'), None)
    pxe = next((o for o in offers if o['pxe_menu'] is not None), None)
    server = None
    for offer in ([pxe] if pxe else []) + offers:
        server = offer['options'].get(66) or (offer['siaddr'] if offer['siaddr'] != '0.0.0.0' else None)
        if server:
            break
    return lease, pxe, server


def _ip(*args):
    tool = shutil.which('ip', path=os.pathsep.join([os.environ.get('PATH', ''), '/usr/sbin', '/sbin']))
    return subprocess.run([tool or 'ip', *args], capture_output=True, text=True, check=False)


def has_ipv4(iface):
    return bool(_ip('-4', '-o', 'addr', 'show', 'dev', iface).stdout.strip())


def configure(iface, mac, address, mask):
    """Give a bare interface the Pi's MAC and the router's offered address (the Pi's lease)."""
    prefixlen = bin(struct.unpack('!I', socket.inet_aton(mask or '255.255.255.0'))[0]).count('1')
    for args in (('link', 'set', 'dev', iface, 'address', mac), ('addr', 'add', '%s/%d' % (address, prefixlen),
                 'dev', iface), ('link', 'set', 'dev', iface, 'up')):
        proc = _ip(*args)
        if proc.returncode:
            raise RuntimeError('ip %s failed: %s' % (' '.join(args), proc.stderr.strip()))


def dhcp_step(iface, mac, model, serial, timeout, *, until_answered=False):
    """DISCOVER, pick the lease and the PXE answer, give the interface the address if it has none."""
    report = {'ok': False, 'address': None, 'server': None, 'pxe_menu': None, 'error': None}
    bare = not has_ipv4(iface)
    offers = dhcp_discover(iface, mac, model=model, serial=serial, timeout=timeout, until_answered=until_answered)
    report['offers'] = offers
    lease, pxe, server = choose(offers)
    report.update(address=lease and lease['yiaddr'], server=server, pxe_menu=pxe and pxe['pxe_menu'])
    if lease is None or pxe is None or server is None:
        report['error'] = 'no %s among %d offers' % ('address' if lease is None else 'PXE answer' if pxe is None
                                                     else 'TFTP server', len(offers))
    elif pxe['pxe_menu'].rstrip() != 'Raspberry Pi Boot':
        report['error'] = 'PXE menu is %r, not "Raspberry Pi Boot"' % pxe['pxe_menu']
    else:
        if bare:
            configure(iface, mac, lease['yiaddr'], lease['options'].get(1))
        report['ok'] = True
    return report


# ---- Boot ---------------------------------------------------------------------------------------

def _entry(request):
    return {'request': request, 'bytes': 0, 'sha256': None, 'seconds': 0.0, 'retransmits': 0, 'ok': False,
            'error': None}


def _judge(entry, kind, want, *, data, exc, checking):
    """Whether a get or probe gave what the expected boot set says (``want`` None = expected absent)."""
    if exc is not None:
        entry['error'] = str(exc)
        missing = isinstance(exc, TftpError) and exc.code == 1
        return missing and (want is None if checking else kind == 'root?')
    if not checking:
        return True
    if want is None:
        entry['error'] = 'served, but the file is expected to be absent'
        return False
    if isinstance(data, int):
        ok = data == len(want)
        entry['error'] = None if ok else 'tsize %d, expected %d' % (data, len(want))
        return ok
    if data != want:
        entry['error'] = 'content differs from the expected file (sha256 %s expected)' % (
            hashlib.sha256(want).hexdigest())
        return False
    return True


def boot(model, server, *, serial, mac=None, prefix='serial', blksize=None, expect=None, port=69, timeout=1.0,
         retries=5):
    """Play the model's TFTP sequence against ``server``; the report's ``ok`` is True when all went as expected."""
    model = int(model)
    mac = normalise_mac(mac or default_mac(model, serial))
    folder = tftp_prefix(prefix, serial, mac)
    if blksize is None and model != 3:
        blksize = 1024  # what the Pi 4/5 EEPROM asks for; the Pi 3 ROM asks for nothing (512)
    report = {'model': model, 'serial': normalise_serial(serial), 'mac': mac, 'prefix': folder, 'server': server,
              'blksize': blksize, 'files': [], 'probes': []}
    start = time.monotonic()
    for kind, name in SEQUENCES[model]:
        request = name if kind.startswith('root') or not folder else '%s/%s' % (folder, name)
        want = expect(request) if expect else None
        if kind.endswith('?') and not kind.startswith('root') and (expect is None or want is None):
            continue  # optional files (initramfs) are asked for only when config.txt would name them
        entry = _entry(request)
        data = exc = None
        began = time.monotonic()
        try:
            if kind.startswith('probe'):
                data = tftp_probe(server, request, blksize=blksize, timeout=timeout, port=port, retries=retries)
            else:
                got = tftp_get(server, request, blksize=blksize, tsize=model != 3, timeout=timeout, retries=retries,
                               port=port)
                data, entry['retransmits'] = got.data, got.retransmits
        except (TftpError, OSError) as error:
            exc = error
        entry['seconds'] = round(time.monotonic() - began, 6)
        if isinstance(data, bytes):
            entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        elif data is not None:
            entry['bytes'] = data  # a probe: the size the server announced
        entry['ok'] = _judge(entry, kind, want, data=data, exc=exc, checking=expect is not None)
        report['probes' if kind.startswith('probe') else 'files'].append(entry)
        if kind == 'probe!' and isinstance(exc, TftpError) and exc.code == 1:
            folder = ''  # the bootloader retries everything without the prefix
    report['seconds'] = round(time.monotonic() - start, 6)
    report['bytes'] = sum(f['bytes'] for f in report['files'])
    report['ok'] = all(f['ok'] for f in report['files'] + report['probes'])
    return report


def expect_from_dirs(dirs):
    """expect(request) for boot(): the path after the prefix, looked up in ``dirs`` in order (the service's order)."""
    cache = {}

    def expect(request):
        rel = request.split('/', 1)[1] if '/' in request else request
        if rel not in cache:
            cache[rel] = None
            for folder in dirs:
                path = os.path.join(folder, rel)
                if os.path.isfile(path):
                    with open(path, 'rb') as handle:
                        cache[rel] = handle.read()
                    break
        return cache[rel]

    return expect


def nfs_url(server, path, version=3):
    url = 'nfs://%s%s' % (server, path)
    return url + '?version=4' if int(version) == 4 else url


def _nfs_ls(server, path, version=3, timeout=30):
    try:
        proc = subprocess.run(['nfs-ls', nfs_url(server, path, version)], capture_output=True, text=True,
                              check=False, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return proc.returncode == 0, proc.stderr.strip() or None


def nfs_check(server, path, version=3):
    """Whether this namespace can list ``server:path`` with the userspace NFS client."""
    return _nfs_ls(server, path, version)[0]


# ---- CLI ----------------------------------------------------------------------------------------

def run_boot(args):
    mac = normalise_mac(args.mac or default_mac(args.model, args.serial))
    server, dhcp = args.server, None
    if args.dhcp:
        try:
            dhcp = dhcp_step(args.dhcp, mac, args.model, args.serial, args.dhcp_timeout,
                             until_answered=args.dhcp_until_answered)
        except (OSError, RuntimeError, ImportError) as exc:
            dhcp = {'ok': False, 'error': '%s: %s' % (type(exc).__name__, exc)}
        server = server or dhcp.get('server')
    if server is None:
        report = {'ok': False, 'error': 'no TFTP server: give --server or --dhcp IFACE', 'files': [], 'probes': []}
    else:
        expect = expect_from_dirs(args.expect_dir) if args.expect_dir else None
        report = boot(args.model, server, serial=args.serial, mac=mac, prefix=args.prefix, blksize=args.blksize,
                      expect=expect, port=args.port, timeout=args.timeout, retries=args.retries)
    if dhcp is not None:
        report['dhcp'] = dhcp
        report['ok'] = report['ok'] and dhcp['ok']
    if args.nfs:
        host, _colon, path = args.nfs.partition(':')
        ok, detail = _nfs_ls(host, path, args.nfs_version)
        report['nfs'] = {'url': nfs_url(host, path, args.nfs_version), 'ok': ok, 'error': None if ok else detail}
        report['ok'] = report['ok'] and ok
    return report


def run_dhcp(args):
    mac = normalise_mac(args.mac or default_mac(args.model, args.serial))
    offers = dhcp_discover(args.iface, mac, model=args.model, serial=args.serial, timeout=args.timeout,
                           pxe=not args.no_pxe)
    return {'ok': bool(offers), 'mac': mac, 'offers': offers}


def parser():
    top = argparse.ArgumentParser(prog='pisim', description='Play a Raspberry Pi bootloader on a test LAN.')
    sub = top.add_subparsers(dest='command', required=True)
    for name in ('boot', 'dhcp'):
        cmd = sub.add_parser(name)
        cmd.add_argument('--model', type=int, choices=(3, 4, 5), default=4)
        cmd.add_argument('--serial', default='1234abcd', help='8 or 16 hex digits')
        cmd.add_argument('--mac', help='default: the model OUI + the low 3 bytes of the serial')
        cmd.add_argument('--json', action='store_true', help='one compact line instead of indented JSON')
    boot_cmd, dhcp_cmd = sub.choices['boot'], sub.choices['dhcp']
    boot_cmd.add_argument('--dhcp', metavar='IFACE', help='DISCOVER on IFACE first; its PXE answer names the server')
    boot_cmd.add_argument('--dhcp-timeout', type=float, default=6.0)
    boot_cmd.add_argument('--dhcp-until-answered', action='store_true',
                          help='stop listening once an address offer and a PXE answer are in (default: the whole '
                          '--dhcp-timeout, every offer)')
    boot_cmd.add_argument('--server', help='TFTP server (overrides the DHCP answer)')
    boot_cmd.add_argument('--port', type=int, default=69)
    boot_cmd.add_argument('--prefix', default='serial', help='serial, mac or a custom string')
    boot_cmd.add_argument('--blksize', type=int)
    boot_cmd.add_argument('--timeout', type=float, default=1.0, help='seconds before a retransmit')
    boot_cmd.add_argument('--retries', type=int, default=5)
    boot_cmd.add_argument('--expect-dir', action='append', default=[], help='per-Pi dir first, then the boot dir')
    boot_cmd.add_argument('--nfs', metavar='SERVER:/PATH')
    boot_cmd.add_argument('--nfs-version', type=int, choices=(3, 4), default=3)
    dhcp_cmd.add_argument('--iface', required=True)
    dhcp_cmd.add_argument('--timeout', type=float, default=6.0)
    dhcp_cmd.add_argument('--no-pxe', action='store_true', help='a plain DISCOVER: no vendor class, no PXE options')
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        report = run_boot(args) if args.command == 'boot' else run_dhcp(args)
    except ValueError as exc:
        report = {'ok': False, 'error': str(exc)}
    print(json.dumps(report, separators=(',', ':')) if args.json else json.dumps(report, indent=2))
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
