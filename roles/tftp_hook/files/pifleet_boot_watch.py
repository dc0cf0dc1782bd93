# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pifleet boot watcher: each Pi's boots followed stage by stage, and Prometheus metrics of them.

Run by a systemd timer every few seconds (``python3 -I pifleet_boot_watch.py --config <file>``). Each run
reads what the TFTP hook and dnsmasq wrote since the last run (following their rotation), notes when each
booting Pi's root came into use (NFS-Ganesha's export list over D-Bus) and when its SSH server answered with
a host key its root was given (ssh-keyscan), counts boots and stalls, and writes:

- the metrics, in node_exporter's textfile-collector format, atomically (docs/formats.md lists them);
- its state (read positions, counters, each Pi's recent boots with the times it saw), which the status
  playbook reads for the exact times of the nfs and running stages.

Reads only pifleet's own files (the map, root markers, disk indexes), the logs and statvfs of the Pis'
mounts; never a file inside a Pi's root or disks. The boot logic is the collection's: bootlogs.py and
timeline.py, installed beside this file. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's directory off the path
import boot_metrics  # installed beside this file, as are the collection's bootlogs.py and timeline.py
import bootlogs
import timeline

STATE_VERSION = 1
KEPT_BOOTS = 5  # per Pi in the state: the status playbook looks for its last boot among them
KEPT_RECORDS = 400  # records of a Pi's current boot kept between runs (a boot is some 10-40 requests)
KEPT_WHEN_DONE = 10  # of a boot that ran or stalled: its first record, its kernel's and the last few
BOOTING_FOR = 86400  # seconds a boot that has not come up is still asked about
UNKNOWN_WINDOW = 3600  # seconds an unknown prefix counts as waiting
UNKNOWN_LIMIT = 1000
_MARKER = re.compile(r'([0-9a-f]{8})\.json')
DEFAULTS = {'events': '/var/log/pifleet/boot-events.jsonl', 'dhcp_log': '/var/log/pifleet/dnsmasq.log',
            'map': '/var/lib/pifleet/tftp/map.json', 'roots_dir': '/srv/pifleet/roots',
            'disks_dir': '/srv/pifleet/disks',
            'store': '/srv/pifleet/bakeforms', 'textfile': '/var/lib/prometheus/node-exporter/pifleet.prom',
            'state': '/var/lib/pifleet/watch/state.json', 'nfs': 'ganesha', 'ssh': True, 'ssh_timeout': 3,
            'limits': {}, 'max_bytes': 16 * 1024 * 1024}


class ConfigError(Exception):
    pass


def load_config(path):
    try:
        with open(path, encoding='utf-8') as handle:
            given = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError('cannot read the config %s: %s' % (path, exc)) from None
    unknown = sorted(set(given) - set(DEFAULTS))
    if not isinstance(given, dict) or unknown:
        raise ConfigError('%s: unknown keys %s (known: %s)' % (path, unknown, ', '.join(sorted(DEFAULTS))))
    config = dict(DEFAULTS, **given)
    for key in ('events', 'map', 'roots_dir', 'disks_dir', 'store', 'textfile', 'state'):
        if not isinstance(config[key], str) or not config[key].startswith('/'):
            raise ConfigError('%s: %s must be an absolute path' % (path, key))
    if set(config['limits']) - set(timeline.LIMITS) or config['nfs'] not in ('ganesha', 'none'):
        raise ConfigError('%s: limits takes %s; nfs is ganesha or none' % (path, ', '.join(sorted(timeline.LIMITS))))
    return config


# ---------------------------------------------------------------- logs, followed across rotation


def follow(path, position, max_bytes):
    """(new text since ``position``, new position). A log moved away (logrotate) is finished from ``<path>.1``;
    a first run starts ``max_bytes`` before the end."""
    try:
        st = os.stat(path)
    except OSError:
        return '', position  # between logrotate's rename and the new file: finish the old one next time
    here = {'dev': st.st_dev, 'ino': st.st_ino}
    chunks, start = [], 0
    if position and (position['dev'], position['ino']) == (st.st_dev, st.st_ino) and position['offset'] <= st.st_size:
        start = position['offset']
    elif position:
        chunks.append(_rest_of_rotated(path, position))
    else:
        start = max(0, st.st_size - max_bytes)
    with open(path, 'rb') as handle:
        handle.seek(start)
        data = handle.read(max_bytes)
    end = data.rfind(b'\n') + 1  # a line being written is read next time
    text = data[:end]
    if start and not position:
        text = text[text.find(b'\n') + 1:]
    chunks.append(text)
    return bootlogs.text_of(b''.join(chunks)), dict(here, offset=start + end)


def _rest_of_rotated(path, position):
    try:
        st = os.stat(path + '.1')
        if (st.st_dev, st.st_ino) != (position['dev'], position['ino']):
            return b''
        with open(path + '.1', 'rb') as handle:
            handle.seek(position['offset'])
            data = handle.read()
    except OSError:
        return b''
    return data[:data.rfind(b'\n') + 1]


# ---------------------------------------------------------------- the fleet, from pifleet's own files


read_json = boot_metrics.read_json


def fleet(config, state, tftp):
    """Each Pi of the map: its prefixes, MACs, address, serial, root marker (by the marker's hostname).

    A Pi's DHCP requests are known by its MAC: a MAC prefix is one; a serial prefix gives a Pi 3's; the bakery's
    neighbour table gives the MAC of the address a Pi asked for files from, remembered in the state.
    """
    fleet_map = read_json(config['map']) or {}
    prefixes = fleet_map.get('prefixes') if isinstance(fleet_map.get('prefixes'), dict) else {}
    pis = {}
    for prefix, entry in prefixes.items():
        name = entry.get('name') if isinstance(entry, dict) else None
        if isinstance(name, str) and name:
            pi = pis.setdefault(name, {'name': name, 'prefixes': [], 'macs': [], 'marker': None, 'serial': None})
            pi['prefixes'].append(prefix.lower())
            pi['macs'].extend(mac for mac in [bootlogs.mac_of_prefix(prefix)] if mac)
    try:
        names = os.listdir(config['roots_dir'])
    except OSError:
        names = []
    for file_name in names:
        match = _MARKER.fullmatch(file_name)
        marker = read_json(os.path.join(config['roots_dir'], file_name)) if match else None
        if marker and marker.get('hostname') in pis:
            pis[marker['hostname']].update(marker=marker, serial=match.group(1))
    by_prefix = {prefix: pi['name'] for pi in pis.values() for prefix in pi['prefixes']}
    for record in tftp:
        if record['prefix'].lower() in by_prefix:
            state['addresses'][by_prefix[record['prefix'].lower()]] = record['client']
    neighbours = bootlogs.parse_neighbours(_read('/proc/net/arp'))
    for name, pi in pis.items():
        pi['address'] = state['addresses'].get(name)
        if pi['address'] in neighbours:
            state['macs'][name] = neighbours[pi['address']]
        if state['macs'].get(name):
            pi['macs'].append(state['macs'][name])
    return pis


def _read(path):
    try:
        with open(path, encoding='utf-8', errors='replace') as handle:
            return handle.read()
    except OSError:
        return ''


# ---------------------------------------------------------------- one run


def fresh_state():
    return {'version': STATE_VERSION, 'files': {}, 'pis': {}, 'records': {}, 'counters': {}, 'addresses': {},
            'macs': {}, 'unknown': {}, 'totals': {'unknown_prefix_requests': 0, 'unattributed_dhcp_answers': 0}}


def load_state(path):
    state = read_json(path)
    return state if state and state.get('version') == STATE_VERSION else fresh_state()


counters_of = boot_metrics.counters_of


def count_records(state, name, records):
    counters = counters_of(state, name)
    for record in records:
        if record['kind'] == 'dhcp':
            counters['dhcp_answers'] += 1
            continue
        outcome = record['outcome'] if record['outcome'] in boot_metrics.OUTCOMES else 'other'
        counters['requests'][outcome] += 1
        counters['tftp_bytes'] += record['bytes'] if record['outcome'] == 'ok' else 0
        counters['tftp_retransmits'] += record['retransmits']


def count_strays(state, strays, now):
    state['totals']['unattributed_dhcp_answers'] += len(strays['dhcp'])
    for record in strays['tftp']:
        if record['outcome'] == 'unknown_prefix':
            state['totals']['unknown_prefix_requests'] += 1
            state['unknown'][record['prefix'].lower()[:64]] = record['time']
    state['unknown'] = {prefix: seen for prefix, seen in sorted(state['unknown'].items(), key=lambda kv: -kv[1])
                        [:UNKNOWN_LIMIT] if now - seen <= UNKNOWN_WINDOW}


def _first_missing(entry, records):
    """The step a boot that ended without running stalled at, from what was seen of it."""
    tftp = [r for r in records if r['kind'] == 'tftp']
    if not tftp:
        return 'dhcp'
    if not any(r['outcome'] == 'ok' and timeline.KERNEL.fullmatch(r['path'].rsplit('/', 1)[-1]) for r in tftp):
        return 'tftp'
    return 'running' if entry.get('nfs') else 'nfs'


def track_boots(state, name, new, limits):
    """Note the boots of one Pi (what was kept of its current boot, then the new records); a boot that a new one
    replaced before it ran counts as stalled, once. Returns the current boot's records."""
    entries = state['pis'].setdefault(name, [])
    kept = state['records'].get(name) or []
    boots = timeline.segment(kept + sorted(new, key=lambda r: r['time']), limits['boot_gap'], joined=len(kept))
    for index, boot in enumerate(boots):
        start = boot[0]['time']
        entry = next((e for e in entries if abs(e['start'] - start) < 1), None)
        if entry is None:
            counters_of(state, name)['boots'] += 1
            entry = {'start': start, 'nfs': None, 'running': None, 'stalled': None}
            entries.append(entry)
        if index < len(boots) - 1 and not entry['running'] and not entry['stalled']:
            entry['stalled'] = _first_missing(entry, boot)
            counters_of(state, name)['stalled'][entry['stalled']] += 1
    entries.sort(key=lambda e: e['start'])
    del entries[:-KEPT_BOOTS]
    state['records'][name] = boots[-1][-KEPT_RECORDS:] if boots else []
    return boots[-1] if boots else None


def keep_little(records):
    """What a boot that ran or stalled still needs between runs: where it started (the next boot's gap and the
    stage it reached), its kernel, its last records; so the state of a big fleet stays small."""
    kernel = [r for r in records if r['kind'] == 'tftp' and r['outcome'] == 'ok'
              and timeline.KERNEL.fullmatch(r['path'].rsplit('/', 1)[-1])][:1]
    kept = records[:1] + kernel + records[-KEPT_WHEN_DONE:]
    return sorted({id(r): r for r in kept}.values(), key=lambda r: r['time'])


def observe(config, booting, addresses):
    """(exports, clients) of NFS-Ganesha and {address: keys} of the Pis still booting, with when they were asked."""
    exports = clients = None
    if config['nfs'] == 'ganesha':
        try:
            exports = bootlogs.parse_ganesha_exports(_run(bootlogs.ganesha_argv('exports')))
            clients = bootlogs.parse_ganesha_clients(_run(bootlogs.ganesha_argv('clients')))
        except (OSError, ValueError, subprocess.SubprocessError):
            exports = clients = None
    keys, checked = {}, None
    wanted = sorted({addresses[name] for name in booting if addresses.get(name)})
    if config['ssh'] and wanted:
        checked = time.time()
        try:
            keys = bootlogs.parse_keyscan(_run(bootlogs.keyscan_argv(wanted, config['ssh_timeout']), check=False))
        except (OSError, subprocess.SubprocessError):
            checked = None
    return exports, clients, keys, checked


def _run(argv, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, LANG='C', LC_ALL='C'))
    if check and proc.returncode != 0:
        raise ValueError(proc.stderr.strip())
    return proc.stdout


def read_new(config, state, now):
    """(DHCP answers, TFTP records, which sources could be read) written since the last run."""
    sources = {}
    text, state['files']['events'] = follow(config['events'], state['files'].get('events'), config['max_bytes'])
    tftp, _malformed = bootlogs.parse_hook_events(text)
    sources['tftp'] = state['files']['events'] is not None
    dhcp = []
    if config['dhcp_log']:
        text, state['files']['dhcp'] = follow(config['dhcp_log'], state['files'].get('dhcp'), config['max_bytes'])
        dhcp = bootlogs.parse_dhcp_log(text, now)
        sources['dhcp'] = state['files']['dhcp'] is not None
    return dhcp, tftp, sources


def judge(state, name, boot, seen, *, now, limits):
    """Note what the bakery sees of one Pi's current boot now; its summary. A stall counts once."""
    entry = state['pis'][name][-1]
    observed = dict(seen)
    nfs = observed.get('nfs') or {}
    if nfs.get('used') and nfs['last'] >= boot[0]['time'] and not entry['nfs']:
        entry['nfs'] = now
    if (observed.get('ssh') or {}).get('verdict') in ('yes', 'unverified') and not entry['running']:
        entry['running'] = now
        entry['nfs'] = entry['nfs'] or now
    observed['seen'] = {key: entry[key] for key in ('nfs', 'running') if entry[key]}
    summary = timeline.summarise(boot, now, limits, observed)
    if summary['state'] == 'stalled' and not entry['stalled'] and not entry['running']:
        entry['stalled'] = summary['stalled_at']
        counters_of(state, name)['stalled'][summary['stalled_at']] += 1
    if entry['running'] or entry['stalled']:
        state['records'][name] = keep_little(state['records'][name])
    return summary


def run(config, now=None):
    """One run: read, follow the boots, write the state and the metrics. Returns the state."""
    now = time.time() if now is None else now
    limits = dict(timeline.LIMITS, **config['limits'])
    state = load_state(config['state'])
    dhcp, tftp, sources = read_new(config, state, now)
    pis = fleet(config, state, tftp)
    for table in ('pis', 'records', 'counters', 'addresses', 'macs'):  # Pis taken out of the map leave the metrics
        state[table] = {name: value for name, value in state[table].items() if name in pis}
    mine, strays = timeline.attribute(dhcp, tftp, list(pis.values()))
    count_strays(state, strays, now)
    last_boots, booting = {}, []
    for name, records in mine.items():
        count_records(state, name, records)
        last_boots[name] = track_boots(state, name, records, limits)
        entry = (state['pis'].get(name) or [{}])[-1]
        # Asked until it runs (a slow boot counted as stalled may still come up), for a day at most.
        if last_boots[name] and not entry.get('running') and now - entry['start'] < BOOTING_FOR:
            booting.append(name)
    exports, clients, keys, checked = observe(config, booting, state['addresses'])
    sources.update(nfs=exports is not None, ssh=checked is not None or not booting)
    summaries = {}
    for name, boot in last_boots.items():
        if boot is None:
            continue
        pi, address = pis[name], state['addresses'].get(name)
        verdict = bootlogs.key_verdict(keys.get(address, set()), (pi['marker'] or {}).get('host_keys') or [])
        export = boot_metrics.mount_point(config['roots_dir'], pi['serial']) if pi['serial'] else None
        seen = timeline.observation(
            root_export=export, address=address,
            exports=exports, clients=clients, verdict=verdict if name in booting and checked else None,
            checked=checked if name in booting else None)
        summaries[name] = judge(state, name, boot, seen, now=now, limits=limits)
    write_atomically(config['textfile'], boot_metrics.render(state, pis, summaries, config=config, now=now,
                                                             sources=sources))
    write_atomically(config['state'], json.dumps(state, sort_keys=True) + '\n')
    return state


def write_atomically(path, text):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, scratch = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename: a power cut leaves the old state or the new one
        os.chmod(scratch, 0o644)
        os.replace(scratch, path)  # node_exporter never sees half a file
    except BaseException:
        os.unlink(scratch)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--config', default='/etc/pifleet/boot-watch.json')
    parser.add_argument('--check', action='store_true', help='check the config and exit')
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print('pifleet-boot-watch: %s' % exc, file=sys.stderr)
        return 2
    if not args.check:
        run(config)
    return 0


if __name__ == '__main__':
    sys.exit(main())
