# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pifleet TFTP hook service: answers each Raspberry Pi from its own folders and logs what it fetched.

Read-only TFTP (RFC 1350 RRQ with the blksize, tsize, timeout and windowsize options of RFC 2347-2349
and 7440). ``<prefix>/<path>`` is looked up in the fleet map's dirs for that prefix (the Pi's own
folder first), root-level names in the map's "default" dirs; what the map does not answer may go to
an HTTP hook. One JSON event line per request. Standard library only; one epoll loop per process,
optionally several processes sharing the port through SO_REUSEPORT ("workers").

Every device on the boot LAN is untrusted. A transfer is its client's (address, port) pair: only
packets from that pair touch it (RFC 1350), so a request from another port may label another
transfer's outcome but never ends it. A silent client holds a slot for at most
``first_ack_timeout`` seconds, an address at most ``max_per_client`` slots, an ICMP port
unreachable ends a transfer at once, and each refused request's event line is short and
rate-limited per client address (what is dropped is counted in a ``suppressed`` line).

Run: ``python3 -I pifleet_tftp_hook.py --config /etc/pifleet/tftp-hook.json [--check]``.
SIGHUP reloads the map and reopens the event log; SIGTERM/SIGINT exit 0.
"""

from __future__ import annotations

import argparse
import array
import collections
import concurrent.futures
import errno
import http.client
import json
import os
import resource
import select
import signal
import socket
import stat
import struct
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
MODES = ('octet', 'netascii')
MAX_WINDOW = 64
SCAN_INTERVAL = 0.05  # how often transfer deadlines are checked while transfers run
IDLE_INTERVAL = 1.0  # housekeeping cadence (event log rotation) otherwise
BATCH_FROM = 8  # transfers at once from which the loop lets ACKs gather for batch_wait before it looks again
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY  # a FIFO must not block the loop
IP_PKTINFO = getattr(socket, 'IP_PKTINFO', 8)
IPV6_RECVPKTINFO = getattr(socket, 'IPV6_RECVPKTINFO', 49)
IPV6_PKTINFO = getattr(socket, 'IPV6_PKTINFO', 50)
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, 'SO_ATTACH_REUSEPORT_CBPF', 51)
DEFAULTS = {
    'port': 69, 'roots': ['/srv/pifleet', '/var/lib/pifleet'], 'root_files': ['bootcode.bin', 'bootsig.bin'],
    'events': '/var/log/pifleet/boot-events.jsonl', 'hook_url': None, 'hook_timeout': 5.0,
    'hook_max_bytes': 64 * 1024 * 1024, 'max_blksize': 1468, 'timeout': 1.0, 'retries': 5,
    'max_transfers': 1000, 'map_poll': 2.0, 'workers': 1, 'cache_bytes': 256 * 1024 * 1024,
    'max_timeout': 10, 'first_ack_timeout': 5.0, 'max_per_client': 64, 'log_refusals_burst': 20,
    'log_refusals_per_second': 1.0, 'batch_wait': 0.0001,
}
# Descriptors besides the two a transfer may hold (its socket, its file): listeners, epoll, the wake
# pipe, the event log, stdio and the HTTP hook's connections. The role's LimitNOFILE uses it too.
FD_MARGIN = 64
LOG_CHARS = 256  # longer names in event lines are cut: one datagram must not make a huge line
TRUNCATED = '...[truncated, %d characters]'
MAX_TRACKED = 4096  # client addresses the refusal rate limit tracks; more share one bucket ('*')
# The one call that reads file blocks for a transfer (the cache aside): a name of its own, so a test can
# make a read fail and see the transfer fall back.
PREADV = os.preadv
RBUF = bytearray(65536)  # the loop is single-threaded: one receive buffer serves every transfer socket
FINAL_ACK_LOST = 'the final ACK was lost, but the client %s'
PORT_CLOSED = 'the client closed its port (ICMP port unreachable)'


class Log:
    """Lines on stderr (the journal), tagged with the process that writes them: the service or one worker."""

    tag = 'pifleet-tftp-hook'


def log(message):
    sys.stderr.write('%s: %s\n' % (Log.tag, message))
    sys.stderr.flush()


# ---------- errors


class ConfigError(Exception):
    pass


class MapError(Exception):
    pass


class Denied(Exception):
    pass


class Malformed(Exception):
    pass


class Refused(Exception):
    """A request answered with an ERROR packet and ended with an event, before any transfer."""

    def __init__(self, code, message, outcome, error):
        super().__init__(error)
        self.code, self.message, self.outcome, self.error = code, message, outcome, error


class TransferFailed(Exception):
    """An expected failure of one transfer (the file changed under us): error reply, no traceback."""


class ClientGone(Exception):
    """A send met the ICMP port unreachable of the client's closed port (ECONNREFUSED)."""


# ---------- configuration


def inside(path, base):
    return path == base or path.startswith(base.rstrip('/') + '/')


def _number(data, key, low, high, integer=False):
    value = data[key]
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise ConfigError('%s must be %s from %s to %s, got %r' % (
            key, 'an integer' if integer else 'a number', low, high, value))
    return value


def _str_list(data, key, absolute=False, empty=False):
    value = data[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not (value or empty) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError('%s must be a list of non-empty strings, got %r' % (key, value))
    if absolute and not all(os.path.isabs(v) for v in value):
        raise ConfigError('%s must hold absolute paths, got %r' % (key, value))
    return value


class Config:
    """The service config (JSON); every key but listen and map has a default."""

    def __init__(self, data):
        if not isinstance(data, dict):
            raise ConfigError('the config must be a JSON object')
        for key in ('listen', 'map'):
            if key not in data:
                raise ConfigError('%s is required' % key)
        unknown = sorted(set(data) - set(DEFAULTS) - {'listen', 'map'})
        self.warnings = ['unknown config key %r ignored' % key for key in unknown]
        merged = dict(DEFAULTS, **data)
        self.listen = []
        for address in _str_list(merged, 'listen'):
            for family in (socket.AF_INET, socket.AF_INET6):
                try:
                    socket.inet_pton(family, address)
                except OSError:
                    continue
                self.listen.append((family, address))
                break
            else:
                raise ConfigError('listen address %r is not an IPv4 or IPv6 address' % address)
        self.port = _number(merged, 'port', 1, 65535, integer=True)
        if not isinstance(merged['map'], str) or not os.path.isabs(merged['map']):
            raise ConfigError('map must be an absolute path, got %r' % merged['map'])
        self.map = merged['map']
        self.roots = _str_list(merged, 'roots', absolute=True)
        self.roots_real = [os.path.realpath(r) for r in self.roots]
        self.root_files = frozenset(_str_list(merged, 'root_files', empty=True))
        if any('/' in name for name in self.root_files):
            raise ConfigError('root_files must be plain names without "/", got %r' % sorted(self.root_files))
        self.events = merged['events']
        if self.events is not None and not (isinstance(self.events, str) and os.path.isabs(self.events)):
            raise ConfigError('events must be an absolute path or null, got %r' % self.events)
        self.hook_url = merged['hook_url'] or None
        if self.hook_url is not None and (not isinstance(self.hook_url, str)
                                          or urllib.parse.urlsplit(self.hook_url).scheme not in ('http', 'https')):
            raise ConfigError('hook_url must be an http:// or https:// URL or null, got %r' % self.hook_url)
        self.hook_timeout = _number(merged, 'hook_timeout', 0.1, 600)
        self.hook_max_bytes = _number(merged, 'hook_max_bytes', 1, 1 << 32, integer=True)
        self.max_blksize = _number(merged, 'max_blksize', 8, 65464, integer=True)
        self.timeout = _number(merged, 'timeout', 0.05, 255)
        self.retries = _number(merged, 'retries', 0, 100, integer=True)
        self.max_transfers = _number(merged, 'max_transfers', 1, 100000, integer=True)
        self.map_poll = _number(merged, 'map_poll', 0, 3600)
        self.workers = _number(merged, 'workers', 1, 64, integer=True)
        self.cache_bytes = _number(merged, 'cache_bytes', 0, 1 << 40, integer=True)
        self.max_timeout = _number(merged, 'max_timeout', 1, 255, integer=True)
        self.first_ack_timeout = _number(merged, 'first_ack_timeout', 0.1, 255)
        self.max_per_client = _number(merged, 'max_per_client', 1, 100000, integer=True)
        self.log_refusals_burst = _number(merged, 'log_refusals_burst', 1, 1000000, integer=True)
        self.log_refusals_per_second = _number(merged, 'log_refusals_per_second', 0.001, 1000000)
        self.batch_wait = _number(merged, 'batch_wait', 0, 0.01)

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding='utf-8') as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ConfigError('cannot read config %s: %s' % (path, exc)) from exc
        return cls(data)


# ---------- the fleet map, request names and where a file comes from


class FleetMap:
    """prefix -> (name, dirs) and the default dirs of root-level requests."""

    def __init__(self, default=(), prefixes=None):
        self.default = tuple(default)
        self.prefixes = prefixes or {}
        self.lowered = {}
        for key in sorted(self.prefixes):
            self.lowered.setdefault(key.lower(), key)

    def lookup(self, prefix):
        """The map key for a request prefix: exact match first, then compared lower-cased."""
        if prefix in self.prefixes:
            return prefix
        return self.lowered.get(prefix.lower())

    def dirs(self):
        return sorted(set(self.default).union(*(d for _name, d in self.prefixes.values())))

    @classmethod
    def load(cls, path, roots_real):
        """(map, problems); dirs outside the roots and bad entries are dropped and named in problems."""
        try:
            with open(path, encoding='utf-8') as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise MapError('cannot read map %s: %s' % (path, exc)) from exc
        if not isinstance(data, dict) or data.get('version') != 1:
            raise MapError('map %s must be a JSON object with "version": 1' % path)
        default, prefixes = data.get('default', []), data.get('prefixes', {})
        if not isinstance(default, list) or not isinstance(prefixes, dict):
            raise MapError('map %s: "default" must be a list and "prefixes" an object' % path)
        problems = []
        kept_default = _keep_dirs(default, roots_real, 'default', problems)
        kept = {}
        for key, entry in prefixes.items():
            if not key or key in ('.', '..') or any(c in key for c in '/\\') or not key.isprintable():
                problems.append('map prefix %r ignored: not a plain name' % key)
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get('dirs'), list) \
                    or not isinstance(entry.get('name'), (str, type(None))):
                problems.append('map prefix %r ignored: needs {"name": str, "dirs": [...]}' % key)
                continue
            kept[key] = (entry.get('name'), _keep_dirs(entry['dirs'], roots_real, 'prefix %r' % key, problems))
        return cls(kept_default, kept), problems


def _keep_dirs(dirs, roots_real, where, problems):
    kept = []
    for directory in dirs:
        if not isinstance(directory, str) or not os.path.isabs(directory):
            problems.append('map %s: dir %r ignored: not an absolute path' % (where, directory))
        elif not any(inside(os.path.realpath(directory), root) for root in roots_real):
            problems.append('map %s: dir %s ignored: outside the configured roots' % (where, directory))
        else:
            kept.append(directory)
    return tuple(kept)


def validate_name(raw):
    """The request name as text; raises Denied for anything that could reach outside a dir."""
    if not raw:
        raise Denied('empty file name')
    if len(raw) > 1024:
        raise Denied('file name longer than 1024 bytes')
    try:
        name = raw.decode('utf-8')
    except UnicodeDecodeError:
        raise Denied('file name is not UTF-8') from None
    if not name.isprintable():  # also U+2028/2029, bidi and other format characters, unassigned code points
        raise Denied('non-printable character in file name (control, format, separator or unassigned)')
    if '\\' in name:
        raise Denied('backslash in file name')
    if name.startswith('/'):
        raise Denied('absolute path')
    for part in name.split('/'):
        if part in ('', '.', '..'):
            raise Denied('empty, "." or ".." path component')
        if len(part.encode('utf-8')) > 255:
            raise Denied('path component longer than 255 bytes')
    return name


class Resolution:
    __slots__ = ('dirs', 'known', 'name', 'path', 'prefix')

    def __init__(self, prefix, path, name, known, dirs):
        self.prefix, self.path, self.name, self.known, self.dirs = prefix, path, name, known, dirs


def resolve(request, fleet_map, root_files):
    """Where a validated request name may be found: pure, no file system access."""
    head, sep, rest = request.partition('/')
    if not sep:
        wanted = '*' in root_files or request in root_files
        return Resolution('', request, None, False, fleet_map.default if wanted else ())
    key = fleet_map.lookup(head)
    if key is None:
        return Resolution(head, rest, None, False, ())
    name, dirs = fleet_map.prefixes[key]
    return Resolution(key, rest, name, True, dirs)


def open_file(resolution, roots_real):
    """(fd, size, path) of the first dir holding the file, None when none does; raises Denied."""
    for directory in resolution.dirs:
        path = os.path.join(directory, resolution.path)
        try:
            fd = os.open(path, OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise  # out of descriptors: the server is busy, the request is not at fault
            raise Denied('cannot open %s: %s' % (path, exc.strerror)) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Denied('%s is not a regular file' % path)
            real = os.readlink('/proc/self/fd/%d' % fd)
            if not inside(real, os.path.realpath(directory)) or not any(inside(real, r) for r in roots_real):
                raise Denied('%s leads to %s, outside its dir or the roots' % (path, real))
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size, path
    return None


# ---------- the protocol: requests, options, blocks, errors, the HTTP hook


def parse_request(packet):
    """(filename bytes, mode, [(option name, value bytes)]) of an RRQ/WRQ; raises Malformed."""
    if len(packet) < 4 or packet[-1] != 0:
        raise Malformed('request is not NUL-terminated')
    fields = packet[2:-1].split(b'\0')
    if len(fields) < 2:
        raise Malformed('request has no transfer mode')
    mode = fields[1].decode('ascii', 'replace').lower()
    if mode not in MODES:
        raise Malformed('unsupported transfer mode %r' % mode[:20])
    rest = fields[2:]
    return fields[0], mode, [(rest[i].lower(), rest[i + 1]) for i in range(0, len(rest) - 1, 2)]


def negotiate(options, max_blksize, max_timeout=255):
    """The accepted options {name: value} (client order); unknown or invalid ones are ignored.

    A timeout above ``max_timeout`` is refused (left out of the OACK, RFC 2349): the OACK must echo
    the client's value, and a long one would let a silent client hold a slot for minutes.
    """
    accepted = {}
    for name, value in options:
        if name in accepted or not 0 < len(value) <= 10 or not value.isdigit():
            continue
        number = int(value)
        if name == b'blksize' and 8 <= number <= 65464:
            accepted[name] = min(number, max_blksize)
        elif name == b'tsize':
            accepted[name] = number  # replaced by the real size in the OACK
        elif name == b'timeout' and 1 <= number <= max_timeout:
            accepted[name] = number
        elif name == b'windowsize' and 1 <= number <= 65535:
            accepted[name] = min(number, MAX_WINDOW)
    return accepted


def block_count(size, blksize):
    """DATA blocks of a file: a short (maybe empty) last block always ends the transfer."""
    return size // blksize + 1


def ack_to_absolute(block, acked, sent):
    """Absolute block number of a 16-bit ACK, or None for a duplicate or stale one."""
    diff = (block - acked) & 0xFFFF
    if diff == 0 or diff > sent - acked:
        return None
    return acked + diff


def clip(text):
    """A string from the LAN as an event field: at most LOG_CHARS characters, marked when cut."""
    if text is None or len(text) <= LOG_CHARS:
        return text
    return text[:LOG_CHARS] + TRUNCATED % len(text)


def error_packet(code, message):
    return b'\0\5' + code.to_bytes(2, 'big') + message.encode('utf-8') + b'\0'


def fetch_hook(opener, url, timeout, max_bytes):
    """('ok', body) | ('not_found', None) | ('error', why); runs in a thread."""
    try:
        with opener.open(url, timeout=timeout) as reply:
            if reply.status != 200:
                return 'error', 'hook answered HTTP %d' % reply.status
            body = reply.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        return ('not_found', None) if exc.code == 404 else ('error', 'hook answered HTTP %d' % exc.code)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return 'error', 'hook failed: %s' % exc
    if len(body) > max_bytes:
        return 'error', 'hook reply larger than hook_max_bytes'
    return 'ok', body


WAIT_HOOK, WAIT_OACK_ACK, SENDING = 0, 1, 2


# ---------- file contents shared by transfers


class FileCache:
    """Contents of recently served files, shared by transfers: a boot storm reads each file once.

    Keyed by device, inode, size and mtime of the opened file, so a file replaced or rewritten is
    read afresh; least recently used contents go first once ``limit`` bytes are held.
    """

    def __init__(self, limit):
        self.limit = limit
        self.held = 0
        self.entries = {}

    def get(self, fd):
        """The contents of the open file ``fd`` as a memoryview, or None (not cacheable: use the fd)."""
        if not self.limit:
            return None
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        data = self.entries.pop(key, None)
        if data is None:
            if st.st_size > self.limit // 4:
                return None
            chunks, offset = [], 0
            while offset < st.st_size:
                chunk = os.pread(fd, min(1 << 20, st.st_size - offset), offset)
                if not chunk:
                    return None  # shrank while read: serve from the fd, which notices
                chunks.append(chunk)
                offset += len(chunk)
            data = memoryview(b''.join(chunks))
            self.held += len(data)
            while self.held > self.limit and self.entries:
                self.held -= len(self.entries.pop(next(iter(self.entries))))
        self.entries[key] = data  # most recently used last
        return data


# ---------- one transfer: an (address, port) pair


class Transfer:
    """One request: its event fields and, once a file is found, the state machine sending it."""

    __slots__ = ('acked', 'blksize', 'buf', 'client', 'data', 'deadline', 'fd', 'first_deadline', 'full_iov', 'last',
                 'lockstep', 'moved_on', 'oack', 'opts', 'payload', 'raw', 'recv_into', 'request', 'res',
                 'retransmits', 'retries', 'send', 'sent', 'server', 'service', 'size', 'sock', 'source', 'started',
                 'state', 'timeout', 'tries', 'tsize', 'view', 'wall', 'windowsize')

    def __init__(self, service, client, server, raw):
        self.service, self.client, self.server, self.raw = service, client, server, raw
        self.started = time.monotonic()
        self.wall = datetime.now(timezone.utc).isoformat(timespec='microseconds')
        self.request = raw[2:].split(b'\0', 1)[0].decode('utf-8', 'backslashreplace')
        head, sep, rest = self.request.partition('/')
        self.res = Resolution(head if sep else '', rest if sep else head, None, False, ())
        self.sock = self.fd = self.data = self.size = self.source = self.oack = None
        self.opts = {}
        self.blksize, self.windowsize, self.tsize = 512, 1, False
        self.acked = self.sent = self.last = self.tries = self.retransmits = 0
        self.moved_on = False  # the same address sent another request meanwhile (evidence for labels only)
        self.first_deadline = None
        self.state = WAIT_HOOK
        self.lockstep = False  # SENDING with windowsize 1: what nearly every block of a Pi's boot takes
        self.timeout, self.retries = service.config.timeout, service.config.retries
        self.deadline = self.started + self.timeout

    def negotiate(self, opts):
        self.opts = opts
        self.blksize = opts.get(b'blksize', 512)
        self.windowsize = opts.get(b'windowsize', 1)
        self.timeout = opts.get(b'timeout', self.timeout)
        self.tsize = b'tsize' in opts

    def begin(self, size, fd=None, data=None):
        """Start sending: OACK if options were accepted, else the first DATA window."""
        self.size, self.fd, self.data = size, fd, data
        self.last = block_count(size, self.blksize)
        self.buf = bytearray(4 + self.blksize)
        self.buf[1] = DATA
        self.view = memoryview(self.buf)
        self.payload = self.view[4:]
        self.full_iov = [self.payload]
        if self.opts:
            if self.tsize:
                self.opts[b'tsize'] = size
            self.oack = b'\0\6' + b''.join(k + b'\0' + b'%d\0' % v for k, v in self.opts.items())
            self.state = WAIT_OACK_ACK
            self._send(self.oack)
        else:
            self.sending()
            self.send_window()
        now = self.service.now
        self.first_deadline = now + self.service.config.first_ack_timeout
        self.deadline = now + self.first_interval()

    def sending(self):
        self.state = SENDING
        self.lockstep = self.windowsize == 1

    def first_interval(self):
        """Resend time before the first ACK: at least one resend falls within first_ack_timeout."""
        return min(self.timeout, self.service.config.first_ack_timeout / 2)

    def awaiting_first_ack(self):
        """No ACK came yet: of the OACK, or of block 1 when no options were negotiated."""
        return self.state == WAIT_OACK_ACK or (self.state == SENDING and self.acked == 0 and self.oack is None)

    def _send(self, packet):
        try:
            self.send(packet)
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                raise ClientGone() from None
            # otherwise a lost datagram: the retransmit timer repairs it

    def send_window(self):
        end = min(self.acked + self.windowsize, self.last)
        for block in range(self.acked + 1, end + 1):
            self.send_block(block)
        self.sent = end
        self.deadline = self.service.now + self.timeout

    def send_block(self, block):
        offset = (block - 1) * self.blksize
        length = self.size - offset
        buf = self.buf
        buf[2] = (block >> 8) & 0xFF  # the 16-bit counter wraps 65535 -> 0
        buf[3] = block & 0xFF
        if length >= self.blksize:  # a full block: preallocated buffers, no allocation
            if self.data is not None:
                self.payload[:] = self.data[offset:offset + self.blksize]
            elif PREADV(self.fd, self.full_iov, offset) != self.blksize:
                raise TransferFailed('file changed during transfer')
            packet = self.view
        else:
            if self.data is not None:
                buf[4:4 + length] = self.data[offset:offset + length]
            elif length and PREADV(self.fd, [self.payload[:length]], offset) != length:
                raise TransferFailed('file changed during transfer')
            packet = self.view[:4 + length]
        try:
            self.send(packet)
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:  # the error the ICMP left, met by a send before a recv
                raise ClientGone() from None
            # otherwise a lost datagram: the retransmit timer repairs it

    def on_readable(self):
        # The socket is connected to the client: the kernel drops datagrams from any other TID
        # (RFC 1350 lets a server discard them), which also spares a sendto() route lookup per block.
        try:
            count = self.recv_into(RBUF)
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                self.port_closed()
            return  # otherwise (host unreachable may pass) the retransmit timer decides
        if count < 4 or RBUF[0]:
            return
        if RBUF[1] == ACK:
            if self.lockstep:  # the hot path: one ACK in, the next block out
                sent = self.sent
                if (RBUF[2] << 8 | RBUF[3]) != sent & 0xFFFF:
                    return  # duplicate ACKs never trigger resends (Sorcerer's Apprentice)
                self.acked = sent
                self.tries = 0
                if sent >= self.last:
                    self.finish('ok')
                    return
                self.sent = sent = sent + 1
                self.send_block(sent)
                self.deadline = self.service.now + self.timeout
            else:
                self.on_ack(RBUF[2] << 8 | RBUF[3])
        elif RBUF[1] == ERROR:
            message = bytes(RBUF[4:count]).split(b'\0', 1)[0].decode('utf-8', 'replace')[:200]
            if self.state == WAIT_OACK_ACK:
                self.finish('probe')
            else:
                self.finish('aborted', 'client error %d: %s' % (RBUF[2] << 8 | RBUF[3], message))

    def awaiting_final_ack(self):
        """Every block was sent and only the last ACK is missing (it may have been lost)."""
        return self.state == SENDING and self.sent >= self.last > self.acked

    def on_ack(self, block):
        if self.state == SENDING:
            absolute = ack_to_absolute(block, self.acked, self.sent)
            if absolute is None:
                return  # duplicate ACKs never trigger resends (Sorcerer's Apprentice)
            self.tries = 0
            if absolute < self.sent:
                self.retransmits += self.sent - absolute  # RFC 7440: resume after the last block received
            self.acked = absolute
            if absolute >= self.last:
                self.finish('ok')
            else:
                self.send_window()
        elif self.state == WAIT_OACK_ACK and block == 0:
            self.sending()
            self.tries = 0
            self.send_window()

    def on_deadline(self):
        if self.state == WAIT_HOOK:
            self.fail(0, 'hook failed', 'hook did not answer in time')
            return
        now = self.service.now
        first = self.awaiting_first_ack()
        if first and now >= self.first_deadline:
            self.timed_out('no ACK within first_ack_timeout (%g s)' % self.service.config.first_ack_timeout)
        elif self.tries >= self.retries:
            self.timed_out('no answer after %d retransmits' % self.tries)
        else:
            self.tries += 1
            if self.state == WAIT_OACK_ACK:
                self.retransmits += 1
                self._send(self.oack)
            else:
                self.retransmits += self.sent - self.acked
                self.send_window()
            self.deadline = min(now + self.first_interval(), self.first_deadline) if first else now + self.timeout

    def timed_out(self, why):
        """The end of a silent transfer, labelled by what the client's address did meanwhile."""
        if self.moved_on and self.awaiting_final_ack():
            self.finish('ok', FINAL_ACK_LOST % 'went on to its next request')
        elif self.moved_on and self.state == WAIT_OACK_ACK and self.tsize:
            self.finish('probe', 'the client went on to its next request')  # a Pi 4 probe whose ERROR was lost
        else:
            self.finish('timeout', why)

    def port_closed(self):
        """The client's port is closed (ICMP port unreachable): the transfer ends now, whatever its state."""
        if self.awaiting_final_ack():
            self.finish('ok', FINAL_ACK_LOST % 'closed its port')
        elif self.state == WAIT_OACK_ACK and self.tsize:
            self.finish('probe', PORT_CLOSED)
        else:
            self.finish('aborted', PORT_CLOSED)

    def fail(self, code, message, error, outcome='error', refused=False):
        """Send an ERROR packet and end with an event."""
        self.service.reply(self.sock, self.client, code, message, self.server)
        self.finish(outcome, error, refused)

    def finish(self, outcome, error=None, refused=False):
        """End with an event; a refused request's event is subject to the per-client rate limit."""
        self.service.close(self)
        if refused and not self.service.admit(self.client[0], outcome):
            return
        done = self.size if outcome == 'ok' else min(max(self.acked * self.blksize, 0), self.size or 0)
        res = self.res
        self.service.emit({
            'time': self.wall, 'client': self.client[0], 'port': self.client[1], 'server': self.server,
            'request': clip(self.request), 'prefix': clip(res.prefix), 'path': clip(res.path), 'name': res.name,
            'known': res.known, 'source': self.source, 'outcome': outcome, 'bytes': done, 'size': self.size,
            'blksize': self.blksize, 'windowsize': self.windowsize, 'tsize': self.tsize,
            'duration': round(time.monotonic() - self.started, 6), 'retransmits': self.retransmits,
            'error': clip(error)})


# ---------- the service: sockets, the event loop, limits, boot events


class Bucket:
    """The refusal events one client address may still log (a token bucket) and those it dropped."""

    __slots__ = ('dropped', 'last', 'since', 'stamp', 'started', 'tokens')

    def __init__(self, tokens, now):
        self.tokens, self.stamp = tokens, now
        self.dropped = None  # {outcome: count} since the last summary
        self.since = self.started = self.last = None


class Service:
    """The event loop of one process: listen sockets, transfers, hook results, signals, reloads."""

    def __init__(self, config, listeners=None):
        """``listeners``: this process's [(family, address, bound socket)] (default: bound here)."""
        self.config = config
        # Each worker holds its share of max_transfers, so all of them hold no more than it.
        self.max_transfers = -(-config.max_transfers // config.workers)
        self.now = time.monotonic()
        self.epoll = select.epoll()
        self.listeners = {}
        self.transfers = {}  # (client host, port) -> Transfer
        self.hosts = {}  # client host -> {(host, port): Transfer}: the per-address limit and labels
        self.refusals = {}  # client host (or '*') -> Bucket
        self.cache = FileCache(config.cache_bytes)
        self.by_fd = {}  # transfer socket fd -> Transfer
        self.stopping = self.hup = False
        self.hook_results = collections.deque()
        self.executor = None
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.events_fd = self.events_id = None
        self.lines = []  # event lines queued in this round of the loop
        self.next_scan = self.next_idle = self.next_map = 0.0  # when housekeeping is due (set by run)
        self.map_sig = None
        self.map = FleetMap()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        if listeners is None:
            listeners = open_listeners(config)[0]
        for family, address, sock in listeners:
            self.listeners[sock.fileno()] = (sock, family, address, address in ('0.0.0.0', '::'))
            self.epoll.register(sock.fileno(), select.EPOLLIN)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGHUP, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.reload_map(force=True)
        self.open_events()

    def _on_signal(self, signum, _frame):
        if signum == signal.SIGHUP:
            self.hup = True
        else:
            self.stopping = True

    def run(self):
        listeners, by_fd, wake_r, lines = self.listeners, self.by_fd, self.wake_r, self.lines
        poll, clock, sleep, transfers = self.epoll.poll, time.monotonic, time.sleep, self.transfers
        batch_wait, events = self.config.batch_wait, ()
        self.next_scan = self.next_idle = self.now
        self.next_map = self.now + self.config.map_poll if self.config.map_poll else float('inf')
        while not self.stopping:
            if events and batch_wait and len(transfers) >= BATCH_FROM:
                # A storm: the last round had work and many transfers run. Sleeping a moment (not in epoll_wait)
                # lets the ACKs of that moment gather in their sockets without waking the loop for each one;
                # the next epoll_wait takes them as one batch (what a NIC's interrupt moderation does).
                sleep(batch_wait)
            timeout = SCAN_INTERVAL if transfers else max(0.0, min(self.next_idle, self.next_map) - self.now)
            events = poll(timeout, 512)
            self.now = now = clock()
            pending = None
            for fd, _mask in events:
                transfer = by_fd.get(fd)
                if transfer is not None:
                    try:
                        transfer.on_readable()
                    except Exception as exc:
                        self.crashed(transfer, exc)
                elif fd in listeners:  # after the transfers: an ERROR ending a probe comes before the next RRQ
                    pending = [fd] if pending is None else [*pending, fd]
                elif fd == wake_r:
                    self.on_wake()
            if pending is not None:
                for fd in pending:
                    self.on_listen(listeners[fd])
            if now >= self.next_scan or self.hup:
                self.housekeeping(now)
            if lines:
                self.write_events()
        self.shutdown()
        return 0

    def housekeeping(self, now):
        """Deadlines (every SCAN_INTERVAL), signals, the map, the event log file and refusal summaries."""
        self.next_scan = now + SCAN_INTERVAL
        for transfer in [t for t in self.transfers.values() if t.deadline <= now]:
            self.guarded(transfer, transfer.on_deadline)
        if self.hup:
            self.hup = False
            self.reload_map(force=True)
            self.open_events()
        if now >= self.next_map:
            self.next_map = now + self.config.map_poll
            self.reload_map()
        if now >= self.next_idle:
            self.next_idle = now + IDLE_INTERVAL
            self.check_events_file()
            self.flush_refusals()

    def guarded(self, transfer, step):
        """Run one step of a transfer; whatever it raises ends that transfer only."""
        try:
            step()
        except Exception as exc:
            self.crashed(transfer, exc)

    def crashed(self, transfer, exc):
        if isinstance(exc, ClientGone):
            transfer.port_closed()
            return
        if isinstance(exc, TransferFailed):
            transfer.fail(0, str(exc), str(exc))
            return
        log('transfer of %r for %s port %s crashed:\n%s' % (
            transfer.request, transfer.client[0], transfer.client[1], traceback.format_exc()))
        try:
            transfer.fail(0, 'internal error', 'internal error: %r' % exc)
        except Exception:
            log('cleanup after the crash failed:\n%s' % traceback.format_exc())
            self.close(transfer)

    def on_listen(self, listener):
        sock, _family, address, wildcard = listener
        try:
            if wildcard:
                packet, ancdata, _flags, client = sock.recvmsg(65536, 256)
                server = _pktinfo_address(ancdata) or address
            else:
                packet, client = sock.recvfrom(65536)
                server = address
        except OSError:
            return
        try:
            self.on_packet(sock, packet, client[:2], server)
        except Exception:
            log('request from %s port %s crashed:\n%s' % (client[0], client[1], traceback.format_exc()))

    def on_packet(self, sock, packet, client, server):
        if len(packet) < 2:
            return
        opcode = packet[0] << 8 | packet[1]
        if opcode in (RRQ, WRQ):
            running = self.transfers.get(client)
            if running is not None:
                if running.raw == packet:
                    return  # the client resent its request: the transfer already answers it
                probe = running.state == WAIT_OACK_ACK and running.tsize
                running.finish('probe' if probe else 'aborted', 'superseded by a new request from the same port')
            # Other ports of this address are other transfers (RFC 1350 TIDs; several Pis may share an
            # address behind NAT): the request is evidence for their labels only, should they time out.
            for other in self.hosts.get(client[0], {}).values():
                other.moved_on = True
            self.start(Transfer(self, client, server, packet), opcode)
        elif opcode in (DATA, ACK, OACK):
            self.reply(sock, client, 5, 'Unknown transfer ID')
        elif opcode != ERROR:  # never answer an ERROR: two servers must not ping-pong
            self.reply(sock, client, 4, 'Illegal TFTP operation')

    def start(self, t, opcode):
        try:
            found = self.lookup(t, opcode)
            try:
                self.attach(t)
            except OSError as exc:
                if found:
                    os.close(found[0])
                raise Refused(0, 'Server error', 'error', 'cannot open a transfer socket: %s' % exc) from None
        except Refused as exc:
            self.reply(None, t.client, exc.code, exc.message, t.server)
            t.finish(exc.outcome, exc.error, refused=True)
            return
        if found is None:
            self.ask_hook(t)
            return
        fd, size, t.source = found
        t.fd = fd  # closed by close() even if begin() fails
        try:
            data = self.cache.get(fd)
        except OSError:
            data = None  # an unreadable file: the transfer reads it block by block and reports the error
        if data is not None:
            os.close(fd)
            t.fd = None
        # netascii is served as-is, byte for byte, as dnsmasq does: boot files are binary anyway.
        self.guarded(t, lambda: t.begin(size, fd=t.fd, data=data))

    def lookup(self, t, opcode):
        """(fd, size, path) of the file, None to ask the hook; raises Refused."""
        config = self.config
        try:
            filename, _mode, options = parse_request(t.raw)
        except Malformed as exc:
            raise Refused(4, 'Illegal TFTP operation', 'denied', str(exc)) from None
        if opcode == WRQ:
            raise Refused(2, 'Access violation', 'denied', 'write request')
        try:
            t.request = validate_name(filename)
            if config.map_poll:
                # The map as it is now (one stat; read again only when it changed): a Pi power-cycled right after an
                # upgrade or a rollback rewrote the map must not get its config.txt from one generation and its
                # kernel from another, which a map up to map_poll seconds old would give it.
                self.reload_map()
            t.res = resolve(t.request, self.map, config.root_files)
            t.negotiate(negotiate(options, config.max_blksize, config.max_timeout))
            if len(self.transfers) >= self.max_transfers:
                raise Refused(0, 'Server busy', 'error', 'max_transfers reached')
            if len(self.hosts.get(t.client[0], ())) >= config.max_per_client:
                raise Refused(0, 'Server busy', 'error', 'max_per_client reached for this address')
            found = open_file(t.res, config.roots_real)
        except Denied as exc:
            raise Refused(2, 'Access violation', 'denied', str(exc)) from None
        except OSError as exc:  # EMFILE/ENFILE from open_file
            raise Refused(0, 'Server busy', 'error', 'cannot open a file: %s' % exc.strerror) from None
        if found is None and config.hook_url is None:
            outcome = 'unknown_prefix' if t.res.prefix and not t.res.known else 'not_found'
            raise Refused(1, 'File not found', outcome, 'File not found')
        return found

    def attach(self, t):
        family = socket.AF_INET6 if ':' in t.server else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((t.server, 0))  # a new TID on the address the request came to
            sock.connect(t.client)
            sock.setblocking(False)
            self.epoll.register(sock.fileno(), select.EPOLLIN)
        except OSError:
            sock.close()
            raise
        t.sock = sock
        t.send, t.recv_into = sock.send, sock.recv_into  # bound once: the hot path calls them per packet
        self.transfers[t.client] = t
        self.hosts.setdefault(t.client[0], {})[t.client] = t
        self.by_fd[sock.fileno()] = t

    def close(self, t):
        if t.sock is not None:
            self.by_fd.pop(t.sock.fileno(), None)
            try:
                self.epoll.unregister(t.sock.fileno())
            except OSError:
                pass
            t.sock.close()
            t.sock = None
        if self.transfers.get(t.client) is t:
            del self.transfers[t.client]
            siblings = self.hosts[t.client[0]]
            del siblings[t.client]
            if not siblings:
                del self.hosts[t.client[0]]
        if t.fd is not None:
            os.close(t.fd)
            t.fd = None

    def reply(self, sock, addr, code, message, server=None):
        """An ERROR packet; from a fresh socket (a new TID) when sock is None."""
        packet = error_packet(code, message)
        try:
            if sock is None:
                with socket.socket(socket.AF_INET6 if ':' in server else socket.AF_INET, socket.SOCK_DGRAM) as fresh:
                    fresh.bind((server, 0))
                    fresh.sendto(packet, addr)
            else:
                sock.sendto(packet, addr)
        except OSError:
            pass

    def ask_hook(self, t):
        t.source = 'hook'
        t.deadline = self.now + self.config.hook_timeout * 2 + 1
        if self.executor is None:  # created lazily: threads must not exist before a workers fork
            self.executor = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix='hook')
        url = '%s/%s' % (self.config.hook_url.rstrip('/'), urllib.parse.quote(t.request, safe='/'))
        future = self.executor.submit(fetch_hook, self.opener, url, self.config.hook_timeout,
                                      self.config.hook_max_bytes)
        future.add_done_callback(lambda done: self._hook_done(t, done))

    def _hook_done(self, t, future):
        self.hook_results.append((t, future))
        try:
            os.write(self.wake_w, b'h')
        except BlockingIOError:
            pass  # the pipe is full, so the loop is already awake

    def on_wake(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while self.hook_results:
            t, future = self.hook_results.popleft()
            if t.sock is None or t.state != WAIT_HOOK:
                continue  # the transfer timed out or was superseded meanwhile
            if future.exception() is not None:
                kind, body = 'error', 'hook failed: %r' % future.exception()
            else:
                kind, body = future.result()
            if kind == 'ok':
                self.guarded(t, lambda t=t, body=body: t.begin(len(body), data=memoryview(body)))
            elif kind == 'not_found':
                t.source = None
                outcome = 'unknown_prefix' if t.res.prefix and not t.res.known else 'not_found'
                t.fail(1, 'File not found', 'File not found', outcome, refused=True)
            else:
                t.fail(0, 'hook failed', body)

    def reload_map(self, force=False):
        try:
            st = os.stat(self.config.map)
        except OSError as exc:
            if force or self.map_sig is not None:
                log('map %s unreadable, keeping the previous one: %s' % (self.config.map, exc))
            self.map_sig = None
            return
        sig = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if sig == self.map_sig and not force:
            return
        self.map_sig = sig
        try:
            fleet_map, problems = FleetMap.load(self.config.map, self.config.roots_real)
        except MapError as exc:
            log('%s; keeping the previous map' % exc)
            return
        for problem in problems:
            log('error: %s' % problem)
        self.map = fleet_map  # transfers in flight hold their own fds: a new map never drops them

    def open_events(self):
        if self.lines:
            self.write_events()  # into the file they belong to, rotated or not
        if self.events_fd is not None:
            os.close(self.events_fd)
            self.events_fd = self.events_id = None
        if self.config.events is None:
            return
        try:
            self.events_fd = os.open(self.config.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            log('cannot open the event log %s: %s' % (self.config.events, exc))
            return
        st = os.fstat(self.events_fd)
        self.events_id = (st.st_dev, st.st_ino)

    def check_events_file(self):
        """Reopen the event log when logrotate moved it away."""
        if self.config.events is None:
            return
        try:
            st = os.stat(self.config.events)
            current = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        if current != self.events_id:
            self.open_events()

    def admit(self, host, outcome):
        """Whether a refusal event of ``host`` is written; one that is not is counted for a summary line."""
        config, now = self.config, self.now
        bucket = self.refusals.get(host)
        if bucket is None:
            if len(self.refusals) >= MAX_TRACKED:  # spoofed sources must not grow the table without bound
                host = '*'
                bucket = self.refusals.get(host)
            if bucket is None:
                bucket = self.refusals[host] = Bucket(float(config.log_refusals_burst), now)
        tokens = min(config.log_refusals_burst, bucket.tokens + (now - bucket.stamp) * config.log_refusals_per_second)
        bucket.stamp = now
        if tokens >= 1:
            bucket.tokens = tokens - 1
            if bucket.dropped:
                self.summarise(host, bucket)  # what was dropped comes before the next line that is not
            return True
        bucket.tokens = tokens
        if not bucket.dropped:
            bucket.dropped = {}
            bucket.since = datetime.now(timezone.utc).isoformat(timespec='microseconds')
            bucket.started = now
        bucket.dropped[outcome] = bucket.dropped.get(outcome, 0) + 1
        bucket.last = now
        return False

    def summarise(self, host, bucket):
        """One ``suppressed`` line: the refusal events of ``host`` dropped since ``bucket.since``."""
        config = self.config
        count = sum(bucket.dropped.values())
        self.emit({
            'time': bucket.since, 'client': host, 'port': None, 'server': None, 'request': '', 'prefix': '',
            'path': '', 'name': None, 'known': False, 'source': None, 'outcome': 'suppressed', 'bytes': 0,
            'size': None, 'blksize': None, 'windowsize': None, 'tsize': False,
            'duration': round(bucket.last - bucket.started, 6), 'retransmits': 0,
            'error': '%d refused request%s not logged (log_refusals_burst %d, log_refusals_per_second %g)' % (
                count, '' if count == 1 else 's', config.log_refusals_burst, config.log_refusals_per_second),
            'dropped': bucket.dropped})
        bucket.dropped = bucket.since = bucket.started = bucket.last = None

    def flush_refusals(self, everything=False):
        """Summaries of clients that went quiet; forget clients whose bucket is full again."""
        config, now = self.config, self.now
        for host, bucket in list(self.refusals.items()):
            if bucket.dropped and (everything or now - bucket.last >= IDLE_INTERVAL):
                self.summarise(host, bucket)
            if not bucket.dropped and (
                    bucket.tokens + (now - bucket.stamp) * config.log_refusals_per_second >= config.log_refusals_burst):
                del self.refusals[host]

    def emit(self, record):
        """Queue one event line: each round of the loop writes the lines it queued with one write()."""
        if self.events_fd is not None:
            self.lines.append(json.dumps(record))

    def write_events(self):
        """Append the queued lines with one write(): O_APPEND keeps lines whole, whatever the other workers write."""
        data = ('\n'.join(self.lines) + '\n').encode('utf-8')
        self.lines.clear()
        if self.events_fd is not None:
            try:
                os.write(self.events_fd, data)
            except OSError as exc:
                log('cannot write the event log: %s' % exc)

    def shutdown(self):
        for t in list(self.transfers.values()):
            t.finish('error', 'service stopped')
        self.flush_refusals(everything=True)
        if self.lines:
            self.write_events()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        for sock, *_rest in self.listeners.values():
            sock.close()
        self.epoll.close()


# ---------- processes, checks and main()


def _pktinfo_address(ancdata):
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntop(socket.AF_INET, data[4:8])  # ipi_spec_dst: our address, even for a broadcast
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 16:
            return socket.inet_ntop(socket.AF_INET6, data[:16])
    return None


def bind_listener(config, family, address):
    """A UDP socket bound to (address, port) for requests; with workers, one of the port's SO_REUSEPORT group."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if address in ('0.0.0.0', '::'):  # the transfer socket must answer from the address the request came to
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        if config.workers > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((address, config.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def open_listeners(config):
    """Each worker's listeners, [(family, address, socket)] per worker, all bound and steered before any serves.

    Worker i gets the i-th socket of each address's SO_REUSEPORT group (its index in the group), so the
    steering program's choice names a worker that is already there.
    """
    groups = []
    try:
        for family, address in config.listen:
            group = []
            groups.append((family, address, group))
            for _index in range(config.workers):
                group.append(bind_listener(config, family, address))
            if config.workers > 1:
                try:
                    steer_by_address(group[0], family, config.workers)
                except OSError as exc:
                    log('warning: cannot steer requests by client address (%s): the kernel spreads them by address '
                        'and port, so one address may hold max_per_client transfers in each worker' % exc)
    except OSError:
        for _family, _address, group in groups:
            for sock in group:
                sock.close()
        raise
    return [[(family, address, group[index]) for family, address, group in groups] for index in range(config.workers)]


def steer_by_address(sock, family, workers):
    """Send every request of one client address to the same worker: (address mod workers).

    A classic BPF program on the listeners' SO_REUSEPORT group picks the socket: it loads the source
    address (IPv4, or the last 32 bits of IPv6) from the network header and returns it modulo the
    number of workers. So each client address meets one worker, whose per-client limit, refusal rate
    limit and labels (another port of the same address) see all of its requests.
    """
    load = 0x20  # BPF_LD | BPF_W | BPF_ABS, from the network header: SKF_NET_OFF (-0x100000) + offset
    source = (12 if family == socket.AF_INET else 20) - 0x100000
    code = [(load, 0, 0, source & 0xFFFFFFFF), (0x94, 0, 0, workers), (0x16, 0, 0, 0)]  # ALU MOD K; RET A
    program = array.array('B', b''.join(struct.pack('=HBBI', *insn) for insn in code))
    address, _length = program.buffer_info()  # the kernel copies the program during the call
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, struct.pack('@HP', len(code), address))


def raise_open_files_limit(max_transfers):
    """Lift the soft open-files limit to what max_transfers needs (up to the hard limit), or say it is short."""
    need = 2 * max_transfers + FD_MARGIN  # a socket and maybe a file per transfer
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < need:
        log('warning: open files limit %d is below %d (2 x max_transfers %d + %d): requests beyond it are answered '
            '"Server busy"; raise LimitNOFILE or lower max_transfers' % (soft, need, max_transfers, FD_MARGIN))


def check(config):
    """--check: problems make exit code 1; warnings (missing dirs, unknown keys) do not."""
    problems, warnings = [], list(config.warnings)
    try:
        fleet_map, map_problems = FleetMap.load(config.map, config.roots_real)
        problems.extend(map_problems)
        warnings.extend('map dir %s does not exist' % d for d in fleet_map.dirs() if not os.path.isdir(d))
    except MapError as exc:
        problems.append(str(exc))
        fleet_map = FleetMap()
    for line in ['error: %s' % p for p in problems] + ['warning: %s' % w for w in warnings]:
        print(line)
    if not problems:
        print('ok: %d prefixes, %d default dirs' % (len(fleet_map.prefixes), len(fleet_map.default)))
    return 1 if problems else 0


def close_listeners(listeners, keep=None):
    """Close the sockets of every worker but ``keep``."""
    for index, own in enumerate(listeners):
        if index != keep:
            for _family, _address, sock in own:
                sock.close()


def run_workers(config, listeners):
    """N processes, worker i serving the i-th socket of each SO_REUSEPORT group (steered by client address)."""
    handled = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)  # no signal between fork and the child's handlers
    children = []
    for index in range(config.workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                Log.tag = '%s worker %d' % (Log.tag, index)
                close_listeners(listeners, keep=index)
                service = Service(config, listeners[index])
                signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
                code = service.run()
            except OSError as exc:
                log('cannot start: %s' % exc)
            except BaseException:
                log('worker failed:\n%s' % traceback.format_exc())
            finally:
                os._exit(code)
        children.append(pid)
    close_listeners(listeners)  # each is its worker's now: a worker that is gone takes its own out of the group
    stopping = []

    def forward(signum, _frame):
        if signum != signal.SIGHUP:
            stopping.append(signum)
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    for signum in handled:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    status = 0
    while children:
        pid, wait_status = os.wait()
        children.remove(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 and not stopping:
            log('worker %d exited with %d; stopping the others' % (pid, code))
            status = 1
            forward(signal.SIGTERM, None)
    return status


def main(argv=None):
    parser = argparse.ArgumentParser(description='pifleet TFTP hook service')
    parser.add_argument('--config', required=True, help='the JSON config file')
    parser.add_argument('--check', action='store_true', help='validate the config and the map, then exit')
    args = parser.parse_args(argv)
    try:
        config = Config.load(args.config)
    except ConfigError as exc:
        print('error: %s' % exc, file=sys.stderr if not args.check else sys.stdout)
        return 1
    if args.check:
        return check(config)
    for warning in config.warnings:
        log('warning: %s' % warning)
    raise_open_files_limit(config.max_transfers)
    try:
        listeners = open_listeners(config)
        if config.workers > 1:
            return run_workers(config, listeners)
        service = Service(config, listeners[0])
    except OSError as exc:
        log('cannot start: %s' % exc)
        return 1
    return service.run()


if __name__ == '__main__':
    sys.exit(main())
