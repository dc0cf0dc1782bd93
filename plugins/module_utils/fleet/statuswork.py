# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the bakery knows about each of its Pis, gathered in one pass for ``status`` (the pi_status module).

Reads only what pifleet itself wrote or the boot services report (docs/formats.md): each Pi's root marker
and disks index (beside the images, out of the Pi's reach), the bakeform indexes, the fleet map, ``statvfs``
of the bakery's own mounts of each Pi's file systems, the TFTP hook's events, dnsmasq's DHCP log, the NFS
server's export and client lists, the kernel's neighbour table, the boot watcher's state; and asks each Pi's
SSH server for its host key. Never a file inside a Pi's root or disks: a Pi controls those.
"""

from __future__ import annotations

import json
import os
import time

from ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic import read_mounts, read_text
from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import is_name
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import bootlogs, timeline
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import disks as pidisks
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as piroots
from ansible_collections.pifleet.netboot.plugins.module_utils.store import capabilities, retention
from ansible_collections.pifleet.netboot.plugins.module_utils.store.generations import (
    Bakeform,
    label,
    marker_generation,
)

HISTORY = 5  # earlier boots listed per Pi
NEIGHBOURS = '/proc/net/arp'


def _json_file(path, limit=1 << 26):
    text = read_text(path) if path else None
    if text is None or len(text) > limit:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _iso_times(summary):
    """A timeline summary with its times as ISO text and its durations rounded, for module results."""
    out = dict(summary, start=bootlogs.iso(summary['start']))
    out['times'] = {key: bootlogs.iso(value) for key, value in summary['times'].items()}
    out['seconds'] = {key: None if value is None else round(value, 1) for key, value in summary['seconds'].items()}
    out['took'] = dict(summary['took'], seconds=round(summary['took']['seconds'], 1))
    return out


class FleetStatus:
    """One status pass over the Pis of one bakery (``params``: the pi_status options)."""

    def __init__(self, host, params, now=None):
        self.host, self.params = host, params
        self.now = time.time() if now is None else now
        self.sources = {}
        self.warnings = []
        self._bakeforms = {}
        self.exports = self.clients = self.checked = None
        self.keys, self.mounts = {}, set()

    # ------------------------------------------------------------------ the logs

    def records(self):
        """(DHCP answers, TFTP records) from the ends of dnsmasq's log and the hook's events."""
        limit = self.params['max_bytes']
        dhcp = []
        path = self.params.get('dhcp_log_path')
        text = bootlogs.read_tail(path, limit) if path else None
        if text is None:
            self.sources['dhcp'] = 'not read: %s' % ('no DHCP log at %s' % path if path else 'no dhcp_log_path')
        else:
            dhcp = bootlogs.parse_dhcp_log(text, self.now)
            self.sources['dhcp'] = 'read %s: %d answers' % (path, len(dhcp))
        tftp = []
        path = self.params.get('events_path')
        text = bootlogs.read_tail(path, limit) if path else None
        if text is None:
            self.sources['tftp'] = 'not read: no event log at %s' % path
        else:
            tftp, malformed = bootlogs.parse_hook_events(text)
            skipped = ', %d malformed lines skipped' % malformed if malformed else ''
            self.sources['tftp'] = 'read %s: %d events%s' % (path, len(tftp), skipped)
        return dhcp, tftp

    def nfs_lists(self):
        """(exports, clients) of the NFS server, or (None, None) when it tells nothing about its clients."""
        backend = self.params['nfs_server']
        if backend != 'ganesha':
            self.sources['nfs'] = 'not observed: nfs_server is %s' % backend
            return None, None
        if not self.host.which('busctl'):
            self.sources['nfs'] = 'not observed: no busctl on the bakery (systemd) to ask Ganesha over D-Bus'
            return None, None
        lists = []
        for what in ('exports', 'clients'):
            rc, out, err = self.host.run(bootlogs.ganesha_argv(what))
            try:
                if rc != 0:
                    raise ValueError((err or out).strip())
                lists.append((bootlogs.parse_ganesha_exports if what == 'exports' else
                              bootlogs.parse_ganesha_clients)(out))
            except ValueError as exc:
                self.sources['nfs'] = 'not observed: NFS-Ganesha did not list its %s over D-Bus (%s)' % (
                    what, bootlogs.clip(exc, 200))
                return None, None
        self.sources['nfs'] = 'asked NFS-Ganesha: %d exports, %d clients' % (len(lists[0]), len(lists[1]))
        return lists[0], lists[1]

    def keyscan(self, addresses):
        """(keys seen per address, when asked); ({}, None) when not asked."""
        if not self.params['ssh'] or not addresses:
            self.sources['ssh'] = 'not asked' if not self.params['ssh'] else 'no Pi address to ask'
            return {}, None
        if not self.host.which('ssh-keyscan'):
            self.sources['ssh'] = 'not asked: no ssh-keyscan on the bakery (install openssh-client)'
            return {}, None
        checked = time.time()
        _rc, out, _err = self.host.run(bootlogs.keyscan_argv(sorted(addresses), self.params['ssh_timeout']))
        seen = bootlogs.parse_keyscan(out)
        self.sources['ssh'] = 'asked %d address(es), %d answered' % (len(addresses), len(seen))
        return seen, checked

    # ------------------------------------------------------------------ per Pi

    def bakeform(self, name):
        """(Bakeform, index, current generation, complete generation ids) of one bakeform, read once per pass;
        None for a name that cannot be a bakeform's."""
        if not is_name(name):
            return None
        if name not in self._bakeforms:
            bakeform = Bakeform(self.params['store'], name)
            index = bakeform.load_index(strict=False)
            self._bakeforms[name] = (bakeform, index, bakeform.current(index), bakeform.ids())
        return self._bakeforms[name]

    def generation(self, marker):
        """(bakeform, generation, current generation) of a root, from its marker and its bakeform's index."""
        name = marker.get('bakeform')
        known = self.bakeform(name) if isinstance(name, str) else None
        if not known:
            return None, None, None
        _bakeform, index, current, _ids = known
        # A marker made before generations counts as the generation of the same content (contract 1).
        return name, marker_generation(index, marker), current

    def bakeforms(self):
        """Each bakeform of the store (and each a root names): its generations (label, current, pinned, the Pis
        whose current or previous root uses it, what its root lacks for a netboot) and its current one. Read from the
        indexes, the generation directories' names and manifests, and the root markers only."""
        names = {name for name, known in self._bakeforms.items() if known}
        try:
            names.update(name for name in os.listdir(self.params['store']) if is_name(name))
        except OSError:
            pass
        references = piroots.references(self.params['roots_dir'])
        found = []
        for name in sorted(names):
            bakeform, index, current, ids = self.bakeform(name)
            layout = bakeform.layout()
            if layout not in ('generations', 'format2') and not any(ref['bakeform'] == name for ref in references):
                continue  # not a bakeform (another directory beside the store's), and no root names it
            used = retention.usage(name, index, references)
            pinned = [p for p in (index or {}).get('pinned') or [] if isinstance(p, int)]
            found.append({
                'name': name, 'layout': layout, 'current': current,
                'current_label': bakeform.label(current) if current else None,
                'generations': [{'id': number, 'label': bakeform.label(number), 'current': number == current,
                                 'pinned': number in pinned, 'used_by': retention.used_by(used.get(number, [])),
                                 'netboot': capabilities.summary(
                                     (bakeform.manifest(number, strict=False) or {}).get(capabilities.KEY))}
                                for number in ids]})
        return found

    def filesystem(self, point):
        """statvfs of the bakery's own mount of a Pi's file system; None when it is not mounted there."""
        if os.path.normpath(point) not in self.mounts:
            return None
        return bootlogs.usage(point)

    def data_filesystems(self):
        """statvfs of the file systems holding the store, the roots and the disks, each once."""
        found, devices = [], set()
        for path in (self.params['store'], self.params['roots_dir'], self.params['disks_dir']):
            try:
                device = os.stat(path).st_dev
            except OSError:
                continue
            if device in devices:
                continue
            devices.add(device)
            found.append(dict(bootlogs.usage(path) or {}, path=path))
        return found

    def watched(self):
        """{name: [{start, nfs, running}, ...]}: what the boot watcher saw of recent boots (None when not there)."""
        state = _json_file(self.params.get('watch_state'))
        pis = (state or {}).get('pis')
        return pis if isinstance(pis, dict) else {}

    def gather(self):
        params = self.params
        dhcp, tftp = self.records()
        fleet_map = _json_file(params.get('map_path')) or {}
        map_prefixes = fleet_map.get('prefixes') if isinstance(fleet_map.get('prefixes'), dict) else {}
        neighbours = bootlogs.parse_neighbours(read_text(NEIGHBOURS) or '')
        specs = []
        for pi in params['pis']:
            prefixes = {p.lower() for p, entry in map_prefixes.items()
                        if isinstance(entry, dict) and entry.get('name') == pi['name']}
            prefixes.update(p.lower() for p in (pi.get('prefix'), pi.get('serial')) if p)
            told = [bootlogs.mac_of_prefix(prefix) for prefix in prefixes]  # a MAC prefix; a Pi 3's serial
            macs = {mac for mac in (pi.get('mac'), neighbours.get(pi.get('ip')), *told) if mac}
            specs.append({'name': pi['name'], 'prefixes': sorted(prefixes), 'macs': sorted(macs),
                          'address': pi.get('ip')})
        mine, strays = timeline.attribute(dhcp, tftp, specs)
        boots = {pi['name']: timeline.segment(mine[pi['name']], self.limits()['boot_gap']) for pi in params['pis']}
        addresses = {}
        for pi in params['pis']:
            last_tftp = [r for r in (boots[pi['name']] or [[]])[-1] if r['kind'] == 'tftp']
            where = pi.get('ip') or (last_tftp[-1]['client'] if last_tftp else None)
            if where:
                addresses[pi['name']] = where
        self.exports, self.clients = self.nfs_lists()
        self.keys, self.checked = self.keyscan(set(addresses.values()))
        try:
            self.mounts = {os.path.normpath(point) for point, _fstype, _source in read_mounts()}
        except OSError:
            self.mounts = set()
        watched = self.watched()
        results = [self.one(pi, boots[pi['name']], addresses.get(pi['name']), watched.get(pi['name']) or [])
                   for pi in params['pis']]
        return {
            'changed': False, 'now': bootlogs.iso(self.now), 'pis': results,
            'bakeforms': self.bakeforms(), 'data_filesystems': self.data_filesystems(), 'sources': self.sources,
            'strays': {'dhcp_answers': len(strays['dhcp']), 'tftp_requests': len(strays['tftp'])},
        }

    def limits(self):
        return dict(timeline.LIMITS, **(self.params.get('limits') or {}))

    def one(self, pi, boots, where, watched):
        """One Pi's result: its root and disks, generation, SSH answer and boots (``where``: the address asked)."""
        serial = pi.get('serial')
        result = {'name': pi['name'], 'serial': serial, 'root': None, 'disks': None, 'bakeform': None,
                  'generation': None, 'label': None, 'current_generation': None, 'behind': None,
                  'host_keys': 0, 'address': where, 'up': 'unchecked', 'boot': None, 'boots': len(boots),
                  'history': []}
        marker = None
        if serial:
            layout = piroots.Layout(self.params['roots_dir'], serial)
            marker = piroots.load_marker(layout.marker, strict=False)
            result['root'] = {'marker': marker is not None, 'image': os.path.exists(layout.image),
                              'usage': self.filesystem(layout.point)}
            disk_layout = pidisks.Layout(self.params['disks_dir'], serial)
            if os.path.exists(disk_layout.index):
                result['disks'] = {'usage': self.filesystem(disk_layout.point)}
        host_keys = [key for key in (marker or {}).get('host_keys') or [] if isinstance(key, str)]
        result['host_keys'] = len(host_keys)
        if marker:
            name, generation, current = self.generation(marker)
            # behind: not on the generation new roots get (contract 2, as pi_root says it), older or newer.
            result.update(bakeform=name, generation=generation, current_generation=current,
                          label=label(name, generation) if name and generation else name,
                          behind=bool(generation and current and generation != current))
        checked = self.checked
        verdict = None
        if checked is not None and where:
            verdict = bootlogs.key_verdict(self.keys.get(where, set()), host_keys)
        if verdict is not None:
            result['up'] = verdict
        if boots:
            start, end = boots[-1][0]['time'], max(r['time'] + r.get('duration', 0.0) for r in boots[-1])
            # The watcher's boot starting within this one: it may have seen the DHCP answer or not.
            seen = next((entry for entry in watched if isinstance(entry, dict)
                         and isinstance(entry.get('start'), (int, float)) and start - 1 <= entry['start'] <= end), None)
            export = os.path.normpath(piroots.Layout(self.params['roots_dir'], serial).point) if serial else None
            observed = timeline.observation(
                root_export=export,
                address=where, exports=self.exports, clients=self.clients, verdict=verdict, checked=checked,
                seen={key: (seen or {}).get(key) for key in ('nfs', 'running') if (seen or {}).get(key)})
            limits = self.limits()
            result['boot'] = _iso_times(timeline.summarise(boots[-1], self.now, limits, observed))
            for boot in boots[-1 - HISTORY:-1]:
                earlier = timeline.summarise(boot, self.now, limits)
                result['history'].append({'start': bootlogs.iso(earlier['start']), 'state': earlier['state'],
                                          'stage': earlier['stage'], 'stalled_at': earlier['stalled_at']})
        return result
