# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The TFTP hook's event log (one JSON object per RRQ per line): parse it and summarise it per Pi.

Pure functions, shared by the ``boot_events`` inventory plugin, the ``boot_events_summary`` filter
and the status/discover playbooks. A "Pi" is a TFTP prefix (``1234abcd``, ``dc-a6-32-01-36-c2`` or
any string the fleet chose); root-level requests (Pi 3 ``bootcode.bin``) carry no prefix and are
credited to the next prefix the same client asks for, else grouped by client address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from datetime import datetime, timedelta, timezone

from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import (
    is_logged_prefix,
    normalise_mac,
    prefix_kind,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.bootlogs import identify, iso_utc, parse_time

_RELATIVE = re.compile(r'\s*(\d+)\s*([smhdw])\s*')
_UNITS = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}
# Files only one model asks for (docs/netboot.md §3): start.elf/bootcode.bin are the Pi 3 firmware,
# start4.elf/fixup4.dat the Pi 4's, the Pi 5 has no start*.elf and asks for *_2712 files.
_MODEL_HINTS = (
    (5, re.compile(r'(?:kernel_2712\.img|initramfs_2712|bcm2712.*)')),
    (4, re.compile(r'(?:start4\w*\.elf|fixup4\w*\.dat|bcm2711.*)')),
    (3, re.compile(r'(?:bootcode\.bin|start\.elf|fixup\.dat|bcm2710.*)')),
)
PI3_OUI = 'b8:27:eb'
# Outcomes that say nothing about a Pi: hostile or broken requests, and the hook's count of refusals
# it did not log one by one (``suppressed``, docs/tftp-hook-lan-limits.md; its client may be ``*``).
_IGNORED_OUTCOMES = frozenset(['denied', 'suppressed'])


def parse_since(text, now=None):
    """``since`` as an aware datetime: an ISO time, or a relative age like ``30m``, ``24h``, ``7d``, ``2w``."""
    now = now or datetime.now(timezone.utc)
    match = _RELATIVE.fullmatch(str(text))
    if match:
        return now - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        return parse_time(str(text))
    except ValueError:
        raise ValueError('since %r is neither an ISO time (2026-11-23T10:00:00+00:00) nor an age '
                         '(30m, 24h, 7d, 2w)' % (text,)) from None


def tail_window(data, max_bytes):
    """Keep the whole lines of the last ``max_bytes`` bytes of a log.

    ``data`` is the end of the file: the whole file, or its last ``max_bytes + 1`` bytes when the
    file is bigger. The extra byte says whether the window starts on a line boundary: everything
    up to and including the first newline is a partial line (or that extra byte) and is dropped.
    """
    if max_bytes is None or len(data) <= max_bytes:
        return data
    newline = data.find(b'\n' if isinstance(data, bytes) else '\n')
    return data[newline + 1:] if newline >= 0 else data[:0]


def _address(value):
    """An IP address in its canonical form, or None (also for scoped IPv6 addresses: no Pi boots by one)."""
    try:
        address = str(ipaddress.ip_address(value or ''))
    except ValueError:
        return None
    return None if '%' in address else address


def parse_event(line):
    """One log line as an event dict with a parsed ``_time``; None if it is not an event."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    try:
        event['_time'] = parse_time(event.get('time'))
    except (ValueError, TypeError):
        return None
    for key in ('client', 'request', 'prefix', 'path'):
        if event.get(key) is not None and not isinstance(event[key], str):
            return None
    # The hook logs the peer's address; anything else is not its line (and may end up in a host name).
    event['client'] = _address(event.get('client'))
    if event['client'] is None:
        return None
    if event.get('prefix') is None:
        request = event.get('request') or ''
        event['prefix'] = request.split('/', 1)[0] if '/' in request else ''
    return event


def parse_events(data):
    """Parse JSON-lines text (str or bytes) into ``(events, malformed)``.

    Blank lines are not counted. An unterminated last line that does not parse is a write in
    progress, not damage: it is dropped without being counted.
    """
    if isinstance(data, bytes):
        data = data.decode('utf-8', errors='replace')
    lines = data.split('\n')
    events, malformed = [], 0
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        event = parse_event(line)
        if event is not None:
            events.append(event)
        elif index < len(lines) - 1:
            malformed += 1
    return events, malformed


def known_prefixes(fleet_map):
    """The prefixes of a fleet map (hook map JSON as a dict), lower-cased, mapped to their Pi names."""
    prefixes = (fleet_map or {}).get('prefixes') or {}
    if not isinstance(prefixes, dict):
        raise ValueError('fleet map "prefixes" is a %s, not a mapping of prefix to {name, dirs}'
                         % type(prefixes).__name__)
    return {str(key).lower(): (value or {}).get('name') if isinstance(value, dict) else None
            for key, value in prefixes.items()}


def guess_model(paths):
    """The Pi model (3, 4, 5) that asks for these files, or None. The newest model hinted wins."""
    for model, pattern in _MODEL_HINTS:
        for path in paths:
            if pattern.fullmatch(path.rsplit('/', 1)[-1].lower()):
                return model
    return None


def mac_from_prefix(prefix, model=None):
    """The Pi's MAC as ``dc:a6:32:01:36:c2`` if the prefix tells it, else None.

    A MAC prefix is the MAC. A serial tells the MAC only on a Pi 3 (``b8:27:eb`` + its low 3 bytes).
    """
    kind = prefix_kind(prefix)
    if kind == 'mac':
        return normalise_mac(prefix).replace('-', ':')
    if model == 3 and kind == 'serial':
        return PI3_OUI + ''.join(':' + prefix[i:i + 2] for i in (2, 4, 6))
    return None


def _digest(text, size):
    return hashlib.sha256(text.encode('utf-8')).hexdigest()[:size]


def host_name(prefix, client, known=False):
    """The inventory name of a Pi seen under ``prefix`` (or, without one, from ``client``).

    One name per prefix (lower-cased), whatever else the log holds: ``discovered_serial_1234abcd``,
    ``discovered_mac_dc-a6-32-01-36-c2``, ``discovered_prefix_<prefix sanitised>_<its hash>``,
    ``discovered_ip_10-99-40-50`` (``known_...`` for known Pis). The ``_`` keeps them out of the
    fleet's names (RFC 1123 labels), so a device cannot name itself after a fleet host.
    """
    key = prefix.lower()  # the grouping key (_group): names must not depend on the casing seen first
    kind = prefix_kind(key) if key else None
    if kind in ('serial', 'mac'):
        tail = '%s_%s' % (kind, key)
    elif prefix:
        tail = 'prefix_%s_%s' % (re.sub(r'[^a-z0-9]+', '-', key).strip('-')[:32] or 'x', _digest(key, 12))
    else:  # a validated address (parse_event): digits, hex, dots and colons only
        tail = 'ip_' + re.sub(r'[.:]', '-', client)
    return '%s_%s' % ('known' if known else 'discovered', tail)


def suggested_name(prefix):
    """A fleet host name (RFC 1123 label) for pasting a Pi of this prefix, or None if no Pi boots by it."""
    key = prefix.lower()
    kind = prefix_kind(key) if key else None
    if kind in ('serial', 'mac'):
        return 'pi-' + key
    if kind:  # hashed: 'a.b' and 'a-b' are two Pis
        return 'pi-%s-%s' % (re.sub(r'[^a-z0-9]+', '-', key).strip('-') or 'x', _digest(key, 8))
    return None


def _new_entry(prefix, address_key=None):
    return {'prefix': prefix, 'client_key': address_key, 'events': [], 'known': False, 'name': None}


def _group(events, names):
    """Events per Pi key: prefix (lower-cased), or ``@<client>`` for root requests nobody followed."""
    entries, pending = {}, {}
    for event in events:
        client = event.get('client') or ''
        prefix = event['prefix']
        if not prefix:
            pending.setdefault(client, []).append(event)
            continue
        if not is_logged_prefix(prefix):
            continue
        key = prefix.lower()
        entry = entries.setdefault(key, _new_entry(prefix))
        entry['events'].extend(pending.pop(client, []))
        entry['events'].append(event)
        if event.get('known') is True or key in names:
            entry['known'] = True
            entry['name'] = entry['name'] or event.get('name') or names.get(key)
    for client, root_events in pending.items():
        entries['@' + client] = _new_entry('', client)
        entries['@' + client]['events'] = root_events
    return entries


def _summary(entry, dhcp_by_mac=None, neighbours=None):
    events = entry['events']
    last = events[-1]
    prefix = entry['prefix']
    paths = [event.get('path') or event.get('request') or '' for event in events]
    model = guess_model(paths)
    outcomes = {}
    for event in events:
        outcome = str(event.get('outcome'))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    key = prefix.lower()  # the hook matches prefixes regardless of case: so do the Pi's variables
    kind = prefix_kind(key) if key else None
    summary = {
        'host': host_name(prefix, entry['client_key'], entry['known']),
        'suggested_name': None if entry['known'] else suggested_name(prefix),
        'prefix': prefix,
        'known': entry['known'],
        'name': entry['name'],
        'tftp_prefix': kind,
        'serial': key if kind == 'serial' else None,
        'mac': mac_from_prefix(key, model) if key else None,
        'model': model,
        'address': last['client'],
        'first_seen': events[0]['_time'].astimezone(timezone.utc).isoformat(),  # parsed: never the raw text
        'last_seen': last['_time'].astimezone(timezone.utc).isoformat(),
        'requests': len(events),
        'last_file': paths[-1],
        'last_outcome': last.get('outcome'),
        'outcomes': outcomes,
    }
    _add_dhcp(summary, dhcp_by_mac or {}, neighbours or {}, model)
    summary['pi_vars'] = inventory_vars(summary)
    return summary


def _add_dhcp(summary, dhcp_by_mac, neighbours, files_model):
    """What the Pi's DHCP requests said (dnsmasq's log): its MAC (when the prefix did not tell it, through the
    bakery's neighbour table), the model and board in its client id, a Pi 3's serial. The client id's model beats
    the files asked for, which beat the MAC prefix."""
    mac = summary['mac'] or neighbours.get(summary['address'])
    records = dhcp_by_mac.get(mac) if mac else None
    found = identify(mac, records[-1].get('client_id') if records else None)
    summary.update(board=found['board'], model_from='files' if files_model else None, dhcp=None)
    if records:
        summary['mac'] = mac
        summary['dhcp'] = {'answers': len(records), 'first_seen': iso_utc(records[0]['time']),
                           'last_seen': iso_utc(records[-1]['time']), 'vendor_class': records[-1]['vendor_class'],
                           'client_id': records[-1]['client_id']}
    if found['model_from'] == 'dhcp client id' or (files_model is None and found['model'] is not None):
        summary.update(model=found['model'], model_from=found['model_from'])
    if summary['serial'] is None and found['serial']:
        summary['serial'] = found['serial']


def _dhcp_only(mac, records, known):
    """A Pi that asked DHCP and never for a file: what its requests say, if they say it is a Pi."""
    found = identify(mac, records[-1].get('client_id'))
    if found['model'] is None:
        return None  # a PC's PXE firmware, say: not a Pi
    dashed = mac.replace(':', '-')
    summary = {
        'host': host_name(dashed, None, known), 'suggested_name': None if known else suggested_name(dashed),
        'prefix': '', 'known': known, 'name': None, 'tftp_prefix': None, 'serial': found['serial'], 'mac': mac,
        'model': found['model'], 'model_from': found['model_from'], 'board': found['board'], 'address': None,
        'first_seen': iso_utc(records[0]['time']), 'last_seen': iso_utc(records[-1]['time']), 'requests': 0,
        'last_file': None, 'last_outcome': None, 'outcomes': {},
        'dhcp': {'answers': len(records), 'first_seen': iso_utc(records[0]['time']),
                 'last_seen': iso_utc(records[-1]['time']), 'vendor_class': records[-1]['vendor_class'],
                 'client_id': records[-1]['client_id']},
    }
    summary['pi_vars'] = inventory_vars(summary)
    return summary


def summarise(events, fleet_map=None, include_known=False, since=None, *, dhcp=None, neighbours=None, known_macs=()):
    """Per-Pi summaries of parsed events, oldest first seen first.

    A Pi is discovered when its prefix is neither marked ``known`` by the hook nor in ``fleet_map``;
    known Pis are left out unless ``include_known``. Events before ``since`` (aware datetime) and
    denied requests are ignored. Host names depend on the prefix alone (see host_name), never on
    which device came first.

    ``dhcp``: the proxy DHCP's answers (bootlogs.parse_dhcp_log), joined to a Pi by its MAC (from its prefix, or
    from ``neighbours``, the bakery's {address: MAC}); a Pi that asked DHCP and no file is summarised on its own
    (host ``discovered_mac_<mac>``) unless its MAC is in ``known_macs``.
    """
    names = known_prefixes(fleet_map)
    chosen = [event for event in events
              if (since is None or event['_time'] >= since) and event.get('outcome') not in _IGNORED_OUTCOMES]
    # A stable sort: the log is in completion order, which ties and small clock steps may disturb.
    chosen.sort(key=lambda event: event['_time'])
    dhcp_by_mac = {}
    for record in dhcp or []:
        if since is None or record['time'] >= since.timestamp():
            dhcp_by_mac.setdefault(record['mac'], []).append(record)
    entries = sorted(_group(chosen, names).values(),
                     key=lambda entry: (entry['events'][0]['_time'], entry['prefix'], entry['client_key'] or ''))
    summaries, claimed = [], set()
    for entry in entries:
        summary = _summary(entry, dhcp_by_mac, neighbours)
        claimed.add(summary['mac'])
        if include_known or not entry['known']:
            summaries.append(summary)
    known = {str(mac).lower().replace('-', ':') for mac in known_macs or ()}
    for mac, records in dhcp_by_mac.items():
        if mac not in claimed and (include_known or mac not in known):
            summary = _dhcp_only(mac, records, mac in known)
            if summary is not None:
                summaries.append(summary)
    summaries.sort(key=lambda summary: summary['first_seen'])
    return summaries


def inventory_vars(summary):
    """The fleet inventory variables of a summary, all validated: what a Pi's entry under ``pis`` needs."""
    pairs = (
        ('pi_serial', summary['serial']),
        ('pi_mac', summary['mac']),
        ('pi_tftp_prefix', summary['tftp_prefix'] if summary['tftp_prefix'] != 'serial' else None),
        ('pi_model', summary['model']),
    )
    return {key: value for key, value in pairs if value is not None}


def host_vars(summary):
    """The inventory plugin's variables of a summary; unknowns omitted.

    ``pi_*`` carry validated values only (8-hex serial, MAC, a prefix the fleet accepts, model 3-5);
    the ``pifleet_*`` ones say what the log said.
    """
    pairs = (
        ('pi_serial', summary['serial']),
        ('pi_mac', summary['mac']),
        ('pi_tftp_prefix', summary['tftp_prefix']),
        ('pi_model', summary['model']),
        ('pifleet_prefix', summary['prefix'] or None),
        ('pifleet_known', summary['known']),
        ('pifleet_name', summary['name']),
        ('pifleet_address', summary['address']),
        ('pifleet_first_seen', summary['first_seen']),
        ('pifleet_last_seen', summary['last_seen']),
        ('pifleet_requests', summary['requests']),
        ('pifleet_last_file', summary['last_file']),
        ('pifleet_last_outcome', summary['last_outcome']),
        ('pifleet_board', summary.get('board')),
        ('pifleet_dhcp', summary.get('dhcp')),
    )
    return {key: value for key, value in pairs if value is not None}
