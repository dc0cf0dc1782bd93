# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot watcher as installed (its program beside bootlogs.py and timeline.py), run after run on logs that
grow and rotate: counters only grow, each boot and each stall counts once, the textfile passes promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from bootwatch import load

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import disks as _disks
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as ours

NOW = time.time()
PROMTOOL = shutil.which('promtool')


def event(at, request, outcome='ok', client='10.9.0.51', size=1000, *, port=4000):
    prefix, path = request.split('/', 1) if '/' in request else ('', request)
    return json.dumps({'time': time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime(at)), 'client': client,
                       'port': port, 'request': request, 'prefix': prefix, 'path': path, 'name': None, 'known': True,
                       'outcome': outcome, 'bytes': size if outcome == 'ok' else 0, 'duration': 0.5,
                       'retransmits': 1, 'error': None}) + '\n'


def dhcp(at, mac, xid=7):
    stamp = time.strftime('%b %e %H:%M:%S', time.localtime(at))
    return '%s dnsmasq-dhcp[9]: %d PXE(eth0) %s proxy\n' % (stamp, xid, mac)


def boot_set(at, prefix='1234abcd'):
    return (event(at, prefix + '/start4.elf', 'probe') + event(at + 1, prefix + '/config.txt')
            + event(at + 2, prefix + '/kernel8.img', size=5_000_000))


@pytest.fixture
def watch(tmp_path):
    program = load(tmp_path / 'lib')
    roots = tmp_path / 'roots'
    roots.mkdir()
    (roots / '1234abcd.json').write_text(json.dumps({'hostname': 'pi-01', 'bakeform': 'lite', 'generation': 1}))
    (tmp_path / 'map.json').write_text(json.dumps({'version': 1, 'prefixes': {
        '1234abcd': {'name': 'pi-01', 'dirs': []}, 'dc-a6-32-00-00-02': {'name': 'pi-"02"', 'dirs': []},
        '00c0ffe3': {'name': 'pi-03', 'dirs': []}}}))
    config = dict(program.DEFAULTS, events=str(tmp_path / 'events.jsonl'), dhcp_log=str(tmp_path / 'dnsmasq.log'),
                  map=str(tmp_path / 'map.json'), roots_dir=str(roots), disks_dir=str(tmp_path / 'disks'),
                  store=str(tmp_path), textfile=str(tmp_path / 'textfile' / 'pifleet.prom'),
                  state=str(tmp_path / 'state' / 'state.json'), nfs='none', ssh=False)
    (tmp_path / 'config.json').write_text(json.dumps(config))
    program.test_config = program.load_config(str(tmp_path / 'config.json'))
    return program


def metrics(program):
    text = open(program.test_config['textfile'], encoding='utf-8').read()
    found = {}
    for line in text.splitlines():
        if not line.startswith('#'):
            name, value = line.rsplit(' ', 1)
            found[name] = float(value)
    return text, found


def counters(found):
    return {name: value for name, value in found.items() if re.match(r'\w+_total\b', name)}


def append(path, text):
    with open(path, 'a', encoding='utf-8') as handle:
        handle.write(text)


def test_boots_and_stalls_count_once_across_runs_and_rotation(watch, tmp_path):
    events, leases = tmp_path / 'events.jsonl', tmp_path / 'dnsmasq.log'
    append(leases, dhcp(NOW - 600, 'dc:a6:32:00:00:02', 1))  # pi-"02" (a MAC prefix) never asks for a file
    append(leases, dhcp(NOW - 590, 'b8:27:eb:c0:ff:e3', 3))  # pi-03: a Pi 3's serial tells its MAC
    append(events, boot_set(NOW - 500))
    watch.run(watch.test_config, NOW)
    _text, found = metrics(watch)
    assert found['pifleet_boots_total{pi="pi-01"}'] == 1 and found['pifleet_boots_total{pi="pi-\\"02\\""}'] == 1
    assert found['pifleet_boot_stage{pi="pi-01",stage="tftp"}'] == 1
    assert found['pifleet_boots_stalled_total{pi="pi-\\"02\\"",stage="dhcp"}'] == 1  # 600 s without a file
    assert found['pifleet_tftp_bytes_total{pi="pi-01"}'] == 5_001_000
    assert found['pifleet_tftp_requests_total{outcome="probe",pi="pi-01"}'] == 1
    assert found['pifleet_pi_generation{bakeform="lite",pi="pi-01"}'] == 1
    assert found['pifleet_dhcp_answers_total{pi="pi-\\"02\\""}'] == 1
    assert found['pifleet_dhcp_answers_total{pi="pi-03"}'] == 1
    assert found['pifleet_dhcp_unattributed_answers_total'] == 0
    # Nothing new: nothing counted again.
    watch.run(watch.test_config, NOW + 1)
    assert counters(metrics(watch)[1]) == counters(found)
    # The events file is rotated mid-boot: the rest of the old file and the new file are read, once.
    append(events, event(NOW - 400, '1234abcd/initramfs8'))
    os.rename(events, str(events) + '.1')
    append(events, event(NOW - 100, 'deadbeef/start4.elf', 'unknown_prefix', client='10.9.0.77'))
    append(leases, dhcp(NOW - 60, 'dc:a6:32:00:00:99', 2))  # nobody's MAC
    append(events, boot_set(NOW - 50))  # pi-01 again: the boot before never mounted its root
    watch.run(watch.test_config, NOW + 2)
    _text, found = metrics(watch)
    assert found['pifleet_boots_total{pi="pi-01"}'] == 2
    assert found['pifleet_boots_stalled_total{pi="pi-01",stage="nfs"}'] == 1
    assert found['pifleet_tftp_requests_total{outcome="ok",pi="pi-01"}'] == 5
    assert found['pifleet_tftp_unknown_prefix_requests_total'] == 1 and found['pifleet_tftp_unknown_prefixes'] == 1
    assert found['pifleet_dhcp_unattributed_answers_total'] == 1
    assert found['pifleet_boot_stalled{pi="pi-01"}'] == 0  # the new boot is still in time
    watch.run(watch.test_config, NOW + 3)
    assert metrics(watch)[1]['pifleet_boots_total{pi="pi-01"}'] == 2
    state = json.loads(open(watch.test_config['state'], encoding='utf-8').read())
    assert [entry['stalled'] for entry in state['pis']['pi-01']] == ['nfs', None]


def test_a_pi_taken_out_of_the_map_leaves_the_metrics(watch, tmp_path):
    append(tmp_path / 'events.jsonl', boot_set(NOW - 30))
    watch.run(watch.test_config, NOW)
    (tmp_path / 'map.json').write_text(json.dumps({'version': 1, 'prefixes': {}}))
    watch.run(watch.test_config, NOW + 1)
    assert 'pi-01' not in metrics(watch)[0]


def test_series_stay_the_same_whatever_files_ports_and_prefixes_are_asked_for(watch, tmp_path):
    """Labels are per Pi, stage, outcome, fs, path, source and bakeform: hundreds of requests for new file names,
    from new client ports and addresses, under unknown prefixes and with outcomes the watcher does not know, add
    no series."""
    events = tmp_path / 'events.jsonl'
    append(events, boot_set(NOW - 250) + event(NOW - 249, 'deadbeef/start4.elf', 'unknown_prefix', client='10.9.0.77'))
    watch.run(watch.test_config, NOW - 240)
    _text, before = metrics(watch)
    outcomes = ('ok', 'not_found', 'timeout', 'aborted', 'error', 'probe')
    asked = ''.join(event(NOW - 230 + i / 10, '1234abcd/overlays/f%03d.dtbo' % i, outcomes[i % 6], port=40000 + i)
                    for i in range(200))
    odd = ''.join(event(NOW - 200 + i / 10, '1234abcd/x%02d' % i, 'odd-%d' % i, port=45000 + i) for i in range(20))
    strangers = ''.join(event(NOW - 190 + i / 10, '%08x/start4.elf' % (0xa0000000 + i), 'unknown_prefix',
                              client='10.9.1.%d' % (i + 1), port=50000 + i) for i in range(100))
    append(events, asked + odd + strangers)
    watch.run(watch.test_config, NOW)
    text, after = metrics(watch)
    assert sorted(after) == sorted(before)
    assert after['pifleet_tftp_requests_total{outcome="ok",pi="pi-01"}'] == 2 + 34
    assert after['pifleet_tftp_requests_total{outcome="other",pi="pi-01"}'] == 20
    assert after['pifleet_tftp_unknown_prefix_requests_total'] == 101
    pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', text)
    config = watch.test_config
    bounded = {'pi': {'pi-01', 'pi-\\"02\\"', 'pi-03'}, 'stage': set(watch.timeline.STAGES),
               'outcome': {*watch.boot_metrics.OUTCOMES, 'other'}, 'fs': set(watch.boot_metrics.FS_KINDS),
               'path': {config['store'], config['roots_dir'], config['disks_dir']},
               'source': {'tftp', 'dhcp', 'nfs', 'ssh'}, 'bakeform': {'lite'}}
    assert [(key, value) for key, value in pairs if value not in bounded.get(key, ())] == []


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus package)")
def test_promtool_accepts_the_textfile(watch, tmp_path):
    append(tmp_path / 'events.jsonl', boot_set(NOW - 30))
    watch.run(watch.test_config, NOW)
    text = metrics(watch)[0]
    proc = subprocess.run([PROMTOOL, 'check', 'metrics'], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(re.findall(r'^# TYPE (\S+)', text, re.M)) <= set(watch.boot_metrics.HELP)


def test_the_program_runs_as_installed(watch, tmp_path):
    """python3 -I, as the unit runs it: its directory is not on the path unless it puts it there."""
    program = os.path.join(os.path.dirname(watch.__file__), 'pifleet_boot_watch.py')
    proc = subprocess.run([sys.executable, '-I', program, '--config', str(tmp_path / 'config.json')],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert 'pifleet_watch_last_run_timestamp_seconds' in metrics(watch)[0]
    (tmp_path / 'bad.json').write_text(json.dumps({'textfile': 'relative.prom'}))
    proc = subprocess.run([sys.executable, '-I', program, '--config', str(tmp_path / 'bad.json'), '--check'],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and 'textfile must be an absolute path' in proc.stderr


def test_a_finished_boot_keeps_little_in_the_state(watch, tmp_path):
    """A boot that stalled keeps its first record, its kernel's and its last few: a fleet's state stays small."""
    many = ''.join(event(NOW - 900 + i, '1234abcd/overlays/o%02d.dtbo' % i) for i in range(40))
    append(tmp_path / 'events.jsonl', boot_set(NOW - 1000) + many)
    watch.run(watch.test_config, NOW)
    state = json.loads(open(watch.test_config['state'], encoding='utf-8').read())
    kept = [record['path'] for record in state['records']['pi-01']]
    assert state['pis']['pi-01'][0]['stalled'] == 'nfs' and len(kept) == 12
    assert kept[:2] == ['start4.elf', 'kernel8.img'] and kept[-1] == 'overlays/o39.dtbo'
    append(tmp_path / 'events.jsonl', boot_set(NOW - 5))  # the next boot still starts where it should
    watch.run(watch.test_config, NOW + 1)
    assert metrics(watch)[1]['pifleet_boots_total{pi="pi-01"}'] == 2


def test_generations_are_read_as_the_modules_read_the_store(watch, tmp_path):
    """The store through the collection's generations.py installed beside the watcher: the current generation
    from the index when that generation is complete, behind for any other; an unfinished generation counts not."""
    bakeform = ours.Bakeform(str(tmp_path), 'lite')
    for number in (1, 2, 3):
        os.makedirs(bakeform.boot_dir(number))
        for path in (bakeform.manifest_path(number), bakeform.root_image(number), bakeform.boot_image(number)):
            if number < 3 or path.endswith('manifest.json'):  # generation 3: a build that never finished
                open(path, 'w', encoding='utf-8').close()
    ours.write_index(bakeform, dict(ours.new_index('lite'), current=2, next=4))
    append(tmp_path / 'events.jsonl', boot_set(NOW - 30))
    watch.run(watch.test_config, NOW)
    found = metrics(watch)[1]
    assert found['pifleet_pi_generation{bakeform="lite",pi="pi-01"}'] == 1
    assert found['pifleet_pi_generation_behind{pi="pi-01"}'] == 1
    assert found['pifleet_bakeform_current_generation{bakeform="lite"}'] == 2
    assert found['pifleet_bakeform_generations{bakeform="lite"}'] == 2
    # The watcher's copy is its own: the collection's module a test (or a host) imported is left in place.
    assert watch.boot_metrics.generations is not ours and sys.modules[ours.__name__] is ours
    ours.write_index(bakeform, dict(ours.new_index('lite'), current=1, next=4))  # set back to pi-01's
    watch.run(watch.test_config, NOW + 1)
    assert metrics(watch)[1]['pifleet_pi_generation_behind{pi="pi-01"}'] == 0


def test_a_marker_made_before_generations_gets_the_generation_of_its_content(watch, tmp_path):
    """A root marker from before generations names its image by content only (bakeform_sha256): the gauge is the
    oldest generation of that content, as pi_status says it; a content the store no longer has gives no gauge."""
    bakeform = ours.Bakeform(str(tmp_path), 'lite')
    for number in (1, 2, 3):
        os.makedirs(bakeform.boot_dir(number))
        for path in (bakeform.manifest_path(number), bakeform.root_image(number), bakeform.boot_image(number)):
            open(path, 'w', encoding='utf-8').close()
    ours.write_index(bakeform, dict(ours.new_index('lite'), current=3, next=4, generations={
        '1': {'sha256': 'a' * 64}, '2': {'sha256': 'b' * 64}, '3': {'sha256': 'b' * 64}}))
    roots = tmp_path / 'roots'
    (roots / '1234abcd.json').write_text(json.dumps({'hostname': 'pi-01', 'bakeform': 'lite',
                                                     'bakeform_sha256': 'b' * 64}))
    (roots / '00c0ffe3.json').write_text(json.dumps({'hostname': 'pi-03', 'bakeform': 'lite',
                                                     'bakeform_sha256': 'c' * 64}))
    watch.run(watch.test_config, NOW)
    found = metrics(watch)[1]
    assert found['pifleet_pi_generation{bakeform="lite",pi="pi-01"}'] == 2
    assert found['pifleet_pi_generation_behind{pi="pi-01"}'] == 1
    assert not any('pi="pi-03"' in name and 'generation' in name for name in found)
    assert found['pifleet_bakeform_current_generation{bakeform="lite"}'] == 3
    # The same answer as pi_status's reading, through the same function.
    index = bakeform.load_index()
    assert ours.marker_generation(index, json.loads((roots / '1234abcd.json').read_text())) == 2


def test_the_watcher_looks_for_roots_and_disks_where_pi_root_and_pi_disk_mount_them(watch):
    assert watch.boot_metrics.mount_point('/r', '3a4b5c6d') == _roots.Layout('/r', '3a4b5c6d').point
    assert watch.boot_metrics.mount_point('/d', '3a4b5c6d') == _disks.Layout('/d', '3a4b5c6d').point
