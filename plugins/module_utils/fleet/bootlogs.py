# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the bakery's boot services say about the Pis, read as data (docs/formats.md).

- dnsmasq's DHCP log (``log-dhcp`` into ``log-facility=<file>``): the proxy's PXE answers, with the
  MAC, the vendor class and the client id (option 97) each Pi sent;
- the TFTP hook's event lines;
- NFS-Ganesha's export and client lists (``ShowExports``/``ShowClients`` over D-Bus, as ``busctl --json``);
- ``ssh-keyscan``'s output and the kernel's neighbour table (``/proc/net/arp``).

Records are plain dicts with times as Unix seconds (UTC). Every string comes from the LAN (a device
chooses its MAC, vendor class, client id and file names): MACs, addresses and hex are validated,
the rest is clipped and stays data.

Standard library only, and no import of the collection: the boot watcher on the bakery
(roles/tftp_hook/files/pifleet_boot_watch.py) runs this file as it is, beside timeline.py; so every reader
of what the boot services say stays in this one file (a little over 400 lines), with no helper elsewhere.
"""

from __future__ import annotations

import base64
import calendar
import ipaddress
import json
import os
import re
import time
from datetime import datetime, timezone

MONTHS = {name: number for number, name in enumerate(
    ('Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'), start=1)}
# "Dec  6 10:20:06 dnsmasq-dhcp[20211]: 3806698939 PXE(eth0) dc:a6:32:ff:ee:04 proxy"
_DNSMASQ = re.compile(r'(?P<mon>[A-Z][a-z]{2}) +(?P<day>[0-9]{1,2}) (?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2}) '
                      r'dnsmasq-dhcp\[[0-9]+\]: (?P<xid>[0-9]{1,10}) (?P<msg>.*)')
_MAC = r'[0-9a-f]{2}(?::[0-9a-f]{2}){5}'
_PROXY = re.compile(r'PXE\([^)]{0,32}\) (?P<mac>%s) proxy' % _MAC)
_AUTHORITATIVE = re.compile(r'DHCP(?P<what>OFFER|ACK)\([^)]{0,32}\) (?P<ip>[0-9.]{7,15}) (?P<mac>%s)(?: .*)?' % _MAC)
_VENDOR = re.compile(r'vendor class: (?P<text>.*)')
# dnsmasq shows at most the first 14 bytes of an option it sends, then "...".
_CLIENT_ID = re.compile(r'sent size: *[0-9]+ option: *97 client-machine-id +(?P<hex>[0-9a-f]{2}(?::[0-9a-f]{2})*)'
                        r'(?P<cut>\.\.\.)?')
TEXT_LIMIT = 128
PENDING_LIMIT = 4096  # transactions remembered while their lines arrive (a flood must not grow it)
# MAC prefixes of the Raspberry Pi boards (docs/netboot.md): the weakest hint of a model.
OUI_MODELS = {'b8:27:eb': 3, 'dc:a6:32': 4, 'e4:5f:01': 4, '2c:cf:67': 5, 'd8:3a:dd': 5}
# New-style board revision codes: type (bits 4-11) -> (board, model family); memory (bits 20-22).
BOARD_TYPES = {
    0x08: ('3B', 3), 0x0a: ('CM3', 3), 0x0d: ('3B+', 3), 0x0e: ('3A+', 3), 0x10: ('CM3+', 3),
    0x11: ('4B', 4), 0x13: ('400', 4), 0x14: ('CM4', 4), 0x15: ('CM4S', 4),
    0x17: ('5', 5), 0x18: ('CM5', 5), 0x19: ('500', 5), 0x1a: ('CM5 Lite', 5),
}
MEMORY = ('256MB', '512MB', '1GB', '2GB', '4GB', '8GB', '16GB', '32GB')
FOURCC_MODELS = {b'RPi4': 4, b'RPi5': 5}
# Outcomes of the hook that say nothing about a Pi (docs/formats.md).
IGNORED_OUTCOMES = frozenset(['denied', 'suppressed'])
_KEY_TYPE = re.compile(r'(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)|sk-[a-z0-9@.-]+)')
_BASE64 = re.compile(r'[A-Za-z0-9+/]+={0,2}')


def clip(value, limit=TEXT_LIMIT):
    text = str(value)
    return text if len(text) <= limit else text[:limit] + '...'


def address(value):
    """An IP address in canonical form (IPv4-mapped IPv6 as IPv4), or None; scoped addresses are None."""
    try:
        parsed = ipaddress.ip_address(str(value or '').strip())
    except ValueError:
        return None
    if parsed.version == 6 and parsed.ipv4_mapped:
        parsed = parsed.ipv4_mapped
    text = str(parsed)
    return None if '%' in text else text


def parse_time(text):
    """An ISO 8601 time as an aware datetime; naive times are UTC. ValueError if it is not one."""
    if not isinstance(text, str):
        raise ValueError('time %r is not a string' % (text,))
    value = text.strip()
    if value.endswith(('Z', 'z')):  # fromisoformat() takes 'Z' only from Python 3.11
        value = value[:-1] + '+00:00'
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def epoch_of(text):
    """Unix seconds of an ISO 8601 time (naive = UTC); ValueError if it is not one."""
    return parse_time(text).timestamp()


def iso(seconds):
    """Unix seconds as ``2026-11-23T10:00:02Z`` (None stays None)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(int(seconds), timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def iso_utc(seconds):
    """Unix seconds as ``datetime.isoformat()`` in UTC (``2026-11-23T10:00:02+00:00``), as the event summaries show."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def text_of(data):
    return data.decode('utf-8', errors='replace') if isinstance(data, bytes) else data


def whole_lines(data, skip_first=False):
    """The lines of ``data``; the first is dropped when the data starts mid-line (a tail), an unterminated
    last one (a write in progress) always."""
    lines = text_of(data).split('\n')
    lines.pop()  # '' after the last newline, or the unterminated last line
    return lines[1:] if skip_first else lines


def _read_end(path, max_bytes):
    """The last ``max_bytes`` of a file as whole lines (bytes), or None when it is not there."""
    try:
        with open(path, 'rb') as handle:
            size = os.fstat(handle.fileno()).st_size
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read(max_bytes)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if start:
        newline = data.find(b'\n')
        data = data[newline + 1:] if newline >= 0 else b''
    return data


def read_tail(path, max_bytes):
    """The end of a log and of its first rotation (``<path>.1``, uncompressed with delaycompress) together, oldest
    first, at most ``max_bytes``, as text of whole lines; None when neither file is there."""
    current = _read_end(path, max_bytes)
    rotated = _read_end(path + '.1', max_bytes - len(current or b'')) if len(current or b'') < max_bytes else None
    if current is None and rotated is None:
        return None
    return text_of((rotated or b'') + (current or b''))


def usage(path):
    """``{size, used, avail, percent}`` of the file system holding ``path`` (as df counts), None if not there."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    size, free, avail = st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize, st.f_bavail * st.f_frsize
    used = size - free
    return {'size': size, 'used': used, 'avail': avail,
            'percent': round(100.0 * used / (used + avail), 1) if used + avail else 0.0}


# ---------------------------------------------------------------------------------- dnsmasq


def _log_time(match, now, to_epoch):
    """dnsmasq stamps its file lines with local time and no year: the latest such time not after now + 1 day."""
    month = MONTHS.get(match.group('mon'))
    if month is None:
        return None
    fields = [int(match.group(k)) for k in ('day', 'h', 'm', 's')]
    year = time.gmtime(now).tm_year  # the local year is this one, or one off around New Year
    for candidate in (year + 1, year, year - 1):
        try:
            seconds = to_epoch((candidate, month, fields[0], fields[1], fields[2], fields[3], 0, 0, -1))
        except (OverflowError, ValueError):
            return None
        if seconds <= now + 86400:
            return float(seconds)
    return None


def utc_offset_epoch(offset):
    """A to_epoch for parse_dhcp_log reading local times at a UTC offset (``+0100``, ``-05:30``); None: this host's
    own time zone. ValueError when it is not an offset."""
    if offset in (None, ''):
        return None
    match = re.fullmatch(r'([+-])([0-9]{2}):?([0-9]{2})', str(offset).strip())
    if not match:
        raise ValueError('utc_offset %r is not a UTC offset such as +0100 (date +%%z on the bakery)' % (offset,))
    seconds = (int(match.group(2)) * 3600 + int(match.group(3)) * 60) * (1 if match.group(1) == '+' else -1)
    return lambda fields: calendar.timegm(fields) - seconds


def parse_dhcp_log(data, now=None, to_epoch=None):
    """dnsmasq's DHCP log (str or bytes) -> the PXE/DHCP answers it gave, oldest first.

    One record per answer: ``kind`` ``dhcp``, ``time``, ``mac``, ``xid``, ``answer`` (``proxy`` for the
    proxy's PXE answer, ``offer``/``ack`` in authoritative mode), ``address`` (authoritative only),
    ``vendor_class`` and ``client_id`` (option 97 as hex, ``client_id_cut`` when dnsmasq shortened it).
    ``to_epoch`` turns a local time tuple into Unix seconds (``time.mktime``: the bakery's time zone,
    which dnsmasq writes in).
    """
    now = time.time() if now is None else now
    to_epoch = to_epoch or time.mktime
    records, pending = [], {}
    for line in text_of(data).splitlines():
        match = _DNSMASQ.fullmatch(line.rstrip())
        if not match:
            continue
        xid, message = match.group('xid'), match.group('msg')
        state = pending.get(xid)
        vendor = _VENDOR.fullmatch(message)
        if vendor:
            if len(pending) >= PENDING_LIMIT:
                pending.pop(next(iter(pending)))
            pending[xid] = state = {'vendor_class': clip(vendor.group('text')), 'record': None}
            continue
        answer = _PROXY.fullmatch(message) or _AUTHORITATIVE.fullmatch(message)
        if answer:
            when = _log_time(match, now, to_epoch)
            if when is None:
                continue
            fields = answer.groupdict()
            record = {'kind': 'dhcp', 'time': when, 'mac': fields['mac'], 'xid': xid,
                      'answer': fields['what'].lower() if fields.get('what') else 'proxy',
                      'address': address(fields.get('ip')), 'vendor_class': (state or {}).get('vendor_class'),
                      'client_id': None, 'client_id_cut': False}
            records.append(record)
            if len(pending) >= PENDING_LIMIT and xid not in pending:
                pending.pop(next(iter(pending)))
            pending[xid] = dict(state or {'vendor_class': None}, record=record)
            continue
        client_id = _CLIENT_ID.match(message)
        if client_id and state and state.get('record') is not None and state['record']['client_id'] is None:
            state['record'].update(client_id=client_id.group('hex'), client_id_cut=bool(client_id.group('cut')))
    records.sort(key=lambda record: record['time'])
    return records


def board_of(revision):
    """``(board, model)`` of a new-style revision code (``0x00c03111`` -> ``('4B 4GB', 4)``), or (None, None)."""
    if not revision & 0x800000:
        return None, None
    board = BOARD_TYPES.get((revision >> 4) & 0xFF)
    if board is None:
        return None, None
    return '%s %s' % (board[0], MEMORY[(revision >> 20) & 7]), board[1]


def mac_of_prefix(prefix):
    """The MAC a TFTP prefix tells: a MAC prefix is one; a serial is a Pi 3's (``b8:27:eb`` and its low 3 bytes;
    another model with that serial has another MAC, so no harm). None for other prefixes."""
    text = str(prefix or '').lower()
    if re.fullmatch(r'[0-9a-f]{2}(?:-[0-9a-f]{2}){5}', text):
        return text.replace('-', ':')
    if re.fullmatch(r'[0-9a-f]{8}', text):
        return 'b8:27:eb:%s:%s:%s' % (text[2:4], text[4:6], text[6:8])
    return None


def identify(mac, client_id=None):
    """What a Pi's DHCP request says about it: ``model`` (3-5), ``model_from``, ``board``, ``revision``, ``serial``.

    Option 97 of the Pi 4/5 EEPROM is type 0, ``RPi4``/``RPi5``, the board revision (little-endian), the
    low MAC bytes and the serial; older bootloaders (the Pi 3 ROM) send the serial four times. dnsmasq's
    log keeps the first 14 bytes: model and revision, and the whole serial only in the four-times form.
    The MAC prefix is the weakest hint. Unknown values are None.
    """
    found = {'model': None, 'model_from': None, 'board': None, 'revision': None, 'serial': None}
    try:
        raw = bytes.fromhex((client_id or '').replace(':', ''))
    except ValueError:
        raw = b''
    if len(raw) >= 5 and raw[0] == 0:
        model = FOURCC_MODELS.get(raw[1:5])
        if model is not None:
            found.update(model=model, model_from='dhcp client id')
            if len(raw) >= 9:
                revision = int.from_bytes(raw[5:9], 'little')
                board, _family = board_of(revision)
                found.update(revision='%x' % revision, board=board and 'Pi %s' % board)
        elif len(raw) >= 13 and raw[1:5] == raw[5:9] == raw[9:13] and raw[1:5] != b'\0\0\0\0':
            found['serial'] = raw[1:5].hex()
    oui_model = OUI_MODELS.get((mac or '')[:8])
    if found['model'] is None and oui_model is not None:
        found.update(model=oui_model, model_from='mac prefix')
    return found


# ---------------------------------------------------------------------------------- the hook's events


def _int(value, default=0):
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def hook_record(event):
    """One hook event (a dict from its JSON line) as a record, or None when it is not a usable event."""
    if not isinstance(event, dict) or event.get('outcome') in IGNORED_OUTCOMES:
        return None
    try:
        when = epoch_of(event.get('time'))
    except (TypeError, ValueError):
        return None
    client = address(event.get('client'))
    if client is None:
        return None
    texts = {}
    for key in ('request', 'prefix', 'path', 'outcome', 'name', 'error'):
        value = event.get(key)
        if value is not None and not isinstance(value, str):
            return None
        texts[key] = value
    request = texts['request'] or ''
    prefix = texts['prefix']
    if prefix is None:
        prefix = request.split('/', 1)[0] if '/' in request else ''
    duration = event.get('duration')
    duration = float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool) and \
        0 <= duration < 86400 else 0.0
    return {'kind': 'tftp', 'time': when, 'client': client, 'prefix': prefix,
            'path': texts['path'] if texts['path'] is not None else request, 'request': request,
            'outcome': texts['outcome'] or 'unknown', 'known': event.get('known') is True, 'name': texts['name'],
            'bytes': _int(event.get('bytes')), 'duration': duration, 'retransmits': _int(event.get('retransmits')),
            'error': texts['error']}


def parse_hook_events(data, skip_first=False):
    """The hook's JSON lines -> ``(records, malformed)``; lines about no Pi (denied, suppressed) are left out."""
    records, malformed = [], 0
    for line in whole_lines(data, skip_first):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            malformed += 1
            continue
        record = hook_record(event)
        if record is not None:
            records.append(record)
        elif not (isinstance(event, dict) and event.get('outcome') in IGNORED_OUTCOMES):
            malformed += 1
    records.sort(key=lambda record: record['time'])
    return records, malformed


# ---------------------------------------------------------------------------------- NFS-Ganesha

GANESHA = ('org.ganesha.nfsd', '/org/ganesha/nfsd/')
GANESHA_FLAGS = ('NFSv3', 'MNT', 'NLMv4', 'RQUOTA', 'NFSv40', 'NFSv41', 'NFSv42', '9P')
NFS_FLAGS = ('NFSv3', 'NFSv40', 'NFSv41', 'NFSv42')


def ganesha_argv(what):
    """busctl's call of Ganesha's ``ShowExports`` (``exports``) or ``ShowClients`` (``clients``)."""
    path, interface, method = {'exports': ('ExportMgr', 'exportmgr', 'ShowExports'),
                               'clients': ('ClientMgr', 'clientmgr', 'ShowClients')}[what]
    return ['busctl', '--json=short', 'call', GANESHA[0], GANESHA[1] + path, 'org.ganesha.nfsd.' + interface, method]


def _flags(raw):
    """Ganesha's protocol flags: ``[[name, bool], ...]`` (4.x) or plain booleans in GANESHA_FLAGS order."""
    flags = {}
    for index, item in enumerate(raw if isinstance(raw, list) else []):
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
            flags[item[0]] = item[1] is True
        elif isinstance(item, bool) and index < len(GANESHA_FLAGS):
            flags[GANESHA_FLAGS[index]] = item
    return flags


def _stamp(raw):
    if isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, int) for v in raw) and raw[0] > 0:
        return raw[0] + raw[1] / 1e9
    return None


def _ganesha_rows(text):
    try:
        reply = json.loads(text_of(text))
        rows = reply['data'][1]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValueError('not a busctl --json reply of Ganesha: %s' % clip(text, 200)) from None
    return rows if isinstance(rows, list) else []


def parse_ganesha_exports(text):
    """``ShowExports`` -> {export path: {'nfs': served NFS since Ganesha started, 'last': last activity}}."""
    found = {}
    for row in _ganesha_rows(text):
        if isinstance(row, list) and len(row) == 4 and isinstance(row[1], str):
            flags = _flags(row[2])
            found[row[1]] = {'nfs': any(flags.get(f) for f in NFS_FLAGS), 'last': _stamp(row[3])}
    return found


def parse_ganesha_clients(text):
    """``ShowClients`` -> {client address: {'nfs': used NFS, 'mount': asked MOUNT, 'last': last activity}}."""
    found = {}
    for row in _ganesha_rows(text):
        if isinstance(row, list) and len(row) == 3:
            client = address(row[0])
            if client is not None:
                flags = _flags(row[1])
                found[client] = {'nfs': any(flags.get(f) for f in NFS_FLAGS), 'mount': flags.get('MNT', False),
                                 'last': _stamp(row[2])}
    return found


# ---------------------------------------------------------------------------------- SSH and neighbours


def keyscan_argv(addresses, timeout=5):
    """One ssh-keyscan for many hosts: it asks them in parallel, each within ``timeout`` seconds."""
    return ['ssh-keyscan', '-T', str(int(timeout)), '-t', 'rsa,ecdsa,ed25519', '--', *addresses]


def host_key(text):
    """``<type> <base64>`` of a public key line (options and comment dropped), or None when it is not one."""
    fields = str(text).split()
    for index, field in enumerate(fields[:-1]):
        if _KEY_TYPE.fullmatch(field) and _BASE64.fullmatch(fields[index + 1]):
            try:
                base64.b64decode(fields[index + 1], validate=True)
            except ValueError:
                return None
            return '%s %s' % (field, fields[index + 1])
    return None


def parse_keyscan(text):
    """ssh-keyscan's output -> {host address: set of ``<type> <base64>``}; comment lines skipped."""
    found = {}
    for line in text_of(text).splitlines():
        fields = line.split()
        if len(fields) < 3 or line.startswith('#'):
            continue
        host = address(fields[0])
        key = host_key(' '.join(fields[1:3]))
        if host and key:
            found.setdefault(host, set()).add(key)
    return found


def key_verdict(seen, known):
    """``yes`` (one of its keys), ``wrong key``, ``unverified`` (nothing recorded to compare) or ``no`` (silent)."""
    if not seen:
        return 'no'
    if not known:
        return 'unverified'
    wanted = {host_key(key) for key in known} - {None}
    return 'yes' if set(seen) & wanted else 'wrong key'


def parse_neighbours(text):
    """``/proc/net/arp`` -> {address: MAC} of complete entries (flag 0x2)."""
    found = {}
    for line in text_of(text).splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        host, mac = address(fields[0]), fields[3].lower()
        try:
            complete = int(fields[2], 16) & 0x2
        except ValueError:
            continue
        if host and complete and re.fullmatch(_MAC, mac) and mac != '00:00:00:00:00:00':
            found[host] = mac
    return found
