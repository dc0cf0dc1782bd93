# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The formats that cross a process boundary between the hook and the collection, tested end to end
(docs/formats.md).

- The fleet map: pi_boot writes it (``bootfiles.build_map`` + ``render_map``), the TFTP hook reads it
  (``FleetMap.load``). The map pi_boot would write is handed to a real hook, and each Pi's files come
  back over TFTP from the folders the map names.
- The event line: the hook writes one JSON line per request (and ``suppressed`` summaries), the
  controller reads them (``events.parse_events`` and ``summarise``, behind the boot_events inventory
  plugin, the filter and the discover, status and reimage playbooks). A real hook answers a known Pi,
  an unknown one and a flood of refusals; every line it writes must parse, and the summaries must say
  what happened: the known Pi known, the unknown one discovered, the refusals about nobody. The same lines are
  the TFTP records of the boot timeline (``bootlogs.parse_hook_events``, behind pi_status and the boot watcher).
"""

from __future__ import annotations

import json

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import bootlogs as _bootlogs
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import events as _events
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import timeline as _timeline
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import bootfiles as _bootfiles


def map_as_pi_boot_writes_it(made, path):
    entries = {'1234abcd': {'name': 'pi-01', 'dirs': [str(made['pi1']), str(made['boot'])]},
               'dc-a6-32-01-36-c2': {'name': 'pi-02', 'dirs': [str(made['pi2']), str(made['boot'])]}}
    path.write_text(_bootfiles.render_map(_bootfiles.build_map([str(made['boot'])], entries)))
    return path


def refused(server, name, tftp, source='127.0.0.1'):
    client = server.client(source=source)
    try:
        with pytest.raises(tftp.TftpError):
            client.start(name)
    finally:
        client.close()


def config(tftp, tmp, made, fleet_map):
    return {'listen': ['127.0.0.1'], 'port': tftp.free_port(), 'map': str(fleet_map), 'roots': [str(made['root'])],
            'events': str(tmp / 'events.jsonl'), 'timeout': 0.3, 'retries': 3, 'map_poll': 0.2,
            'root_files': ['bootcode.bin', 'bootsig.bin'], 'log_refusals_burst': 2, 'log_refusals_per_second': 0.5}


def test_the_map_pi_boot_writes_is_the_map_the_hook_serves(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    fleet_map = map_as_pi_boot_writes_it(made, tmp_path / 'pifleet-map.json')
    assert json.loads(fleet_map.read_text())['version'] == _bootfiles.MAP_VERSION
    server = start_server(tmp_path, config(tftp, tmp_path, made, fleet_map))
    fetched = {}
    for request in ('1234abcd/cmdline.txt', '1234abcd/start4.elf', 'DC-A6-32-01-36-C2/cmdline.txt', 'bootcode.bin'):
        fetched[request] = server.client().get(request)['data']
    assert fetched['1234abcd/cmdline.txt'] == (made['pi1'] / 'cmdline.txt').read_bytes()  # the Pi's own folder first
    assert fetched['1234abcd/start4.elf'] == made['files']['start4.elf']  # then its bakeform's
    assert fetched['DC-A6-32-01-36-C2/cmdline.txt'] == (made['pi2'] / 'cmdline.txt').read_bytes()
    assert fetched['bootcode.bin'] == made['files']['bootcode.bin']  # the map's default folders
    events = server.wait_events(4)
    assert [(e['name'], e['known'], e['outcome']) for e in events] == [
        ('pi-01', True, 'ok'), ('pi-01', True, 'ok'), ('pi-02', True, 'ok'), (None, False, 'ok')]


def test_the_events_the_hook_writes_are_the_events_the_controller_reads(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    fleet_map = map_as_pi_boot_writes_it(made, tmp_path / 'pifleet-map.json')
    server = start_server(tmp_path, config(tftp, tmp_path, made, fleet_map))
    server.client().get('1234abcd/config.txt')  # a known Pi
    for _attempt in range(12):  # a flood of refusals from one device: a few logged, the rest counted
        refused(server, 'feedbeef/../../etc/passwd', tftp)
    refused(server, '0badcafe/start4.elf', tftp, source='127.0.0.2')  # an unknown Pi (its prefix is not in the map)
    server.stop()  # writes what is still held back (the count of suppressed refusals)
    text = (tmp_path / 'events.jsonl').read_text()
    events, malformed = _events.parse_events(text)
    assert malformed == 0 and len(events) == len(text.splitlines())
    outcomes = [e['outcome'] for e in events]
    assert 'suppressed' in outcomes and outcomes.count('denied') < 12, outcomes
    suppressed = next(e for e in events if e['outcome'] == 'suppressed')
    assert sum(suppressed['dropped'].values()) + outcomes.count('denied') == 12
    seen = _events.summarise(events, json.loads(fleet_map.read_text()), include_known=True)
    assert {pi['host']: (pi['known'], pi['name'], pi['last_outcome']) for pi in seen} == {
        'known_serial_1234abcd': (True, 'pi-01', 'ok'), 'discovered_serial_0badcafe': (False, None, 'unknown_prefix')}


def test_the_events_the_hook_writes_are_the_records_of_the_boot_timeline(tmp_path, tftp, start_server):
    """The same lines, read by bootlogs for pi_status and the boot watcher: every line a record or about nobody."""
    made = tftp.make_tree(tmp_path)
    fleet_map = map_as_pi_boot_writes_it(made, tmp_path / 'pifleet-map.json')
    server = start_server(tmp_path, config(tftp, tmp_path, made, fleet_map))
    client = server.client()
    for name in ('1234abcd/start4.elf', '1234abcd/config.txt'):
        client.get(name)
    refused(server, '1234abcd/nothing-here.elf', tftp)
    for _attempt in range(6):
        refused(server, 'feedbeef/../../etc/passwd', tftp)
    server.stop()
    records, malformed = _bootlogs.parse_hook_events((tmp_path / 'events.jsonl').read_text())
    assert malformed == 0
    assert [(r['prefix'], r['path'], r['outcome']) for r in records] == [
        ('1234abcd', 'start4.elf', 'ok'), ('1234abcd', 'config.txt', 'ok'),
        ('1234abcd', 'nothing-here.elf', 'not_found')]
    assert records[0]['bytes'] == len(made['files']['start4.elf']) and records[0]['client'] == '127.0.0.1'
    mine, strays = _timeline.attribute([], records, [{'name': 'pi-01', 'prefixes': ['1234abcd'], 'macs': []}])
    assert len(mine['pi-01']) == 3 and strays == {'dhcp': [], 'tftp': []}
    boot = _timeline.summarise(_timeline.segment(mine['pi-01'])[0], records[-1]['time'] + 1)
    assert (boot['stage'], boot['tftp']['files'], boot['tftp']['refusals']) == ('tftp', 2, 1)
