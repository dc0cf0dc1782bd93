# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A broken or hostile Pi costs only itself: the fleet role and reimage fail per Pi.

``site``'s fleet part on N simulated Pis (bench/bench_sabotage.py, the fleet of bench_scale.py on an
XFS loop store; N is PIFLEET_SABOTAGE_PIS, 15 by default, the bench runs 1000) with three Pis
sabotaged as a Pi can: the other N-3 converge, the three are named in one summary and keep what
they had, a second run changes nothing. Then an upgrade wave and a reimage, each on a fleet with three
sabotaged Pis that answer and three more that never do. Then ``reimage`` of four Pis that answer SSH on
loopback (tests/tools/sshpi.py) and power through fake plugs, one of whose rebuild fails and one of which
never answers: one summary names both, each with its reason, and the other three still get the
export bounce, the power cycle and the wait.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fstree import loop_fs, unmount_below
from powerfakes import PlugServer
from sshpi import SshPis

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'bench'))

import bench_sabotage  # noqa: E402  (the proof itself; the bench runs it at 1000 Pis)
from bench_scale import WORK, build_image, fresh  # noqa: E402

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import points as pipoints  # noqa: E402
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import Layout  # noqa: E402

# Every kind of Pi bench_scale.fleet_pis makes (models 3/4/5, disks with a file system (pi-0004) and without
# (pi-0014), config.txt and cmdline extras, a MAC prefix) beside the three victims (pi-0000, pi-0001, pi-0004);
# scale is the bench's job (1000 Pis).
PIS = int(os.environ.get('PIFLEET_SABOTAGE_PIS', '15'))
# The day-two runs sabotage two threes, one that answers and one silent: two Pis with disks (4 and 14) at least.
PIS_DAY_TWO = int(os.environ.get('PIFLEET_SABOTAGE_DAY_TWO_PIS', '15'))
# Seconds the day-two playbooks give a Pi to come back, looking every second: only the silent ones wait it out (in an
# upgrade twice, on the new root and rolled back); a Pi that answers does so at once. The bench keeps the playbooks' 15.
WAIT = 3
# A bakeform that ingests runs async, polled every fleet_bakeform_poll seconds (5 by default): the tiny image takes
# less than one. A look for a Pi's host key every second (5), a fake plug off for 0.5 s in a power cycle (3).
FLEET = {'fleet_bakeform_poll': 1, 'pifleet_wait_interval': 1, 'pifleet_power_cycle_delay': 0.5}


@pytest.fixture(scope='module')
def image():
    path = WORK / 'scale-tiny.img.xz'  # the bench's, cached
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_image(path, profile='tiny', models=(3, 4, 5))
    return path


@pytest.fixture(scope='module')
def images(image):
    second = WORK / 'scale-tiny-gen2.img.xz'  # the bench's generation 2, cached
    if not second.exists():
        build_image(second, profile='tiny', models=(3, 4, 5), seed=2)
    return {1: image, 2: second}


def test_three_sabotaged_pis_fail_alone_and_every_other_pi_converges(tmp_path, image):
    with loop_fs(tmp_path, 'xfs', '16G') as scratch:
        tmp = fresh(scratch, 'sabotage')
        try:
            outcome = bench_sabotage.run(tmp, image, PIS, fleet=FLEET)
            assert bench_sabotage.verify(outcome) == [], (tmp / 'sabotaged-first.log').read_text()[-4000:]
        finally:
            unmount_below(tmp)


@pytest.mark.parametrize('playbook', ['upgrade', 'reimage'])
def test_a_day_two_run_with_three_sabotaged_pis_and_three_silent_ones(tmp_path, images, playbook):
    """The same three sabotages, done by three Pis that answer and by three more that never do, before an upgrade
    wave (or a reimage) of the whole fleet: a rebuild reads nothing of the root it replaces, so every Pi gets its
    new root and each sabotaged root is kept whole as the previous one. The three that answer are upgraded (or
    reimaged) like every other Pi; the silent three are named in the wave's one report (a rollback to a sabotaged
    root fails for that Pi alone) and every other Pi is upgraded; or in reimage's one summary (rebuilt, not back),
    every other Pi rebuilt, power-cycled (a fake plug each) and waited for. Each boot folder serves its root's
    generation, read through the hook's map: the one rolled back serves its previous generation again. Site then
    names the two disks alone and changes nothing (bench_sabotage)."""
    plugs = PlugServer() if playbook == 'reimage' else None
    with loop_fs(tmp_path, 'xfs', '16G') as scratch:
        tmp = fresh(scratch, playbook)
        try:
            outcome = bench_sabotage.run_day_two(tmp, images, PIS_DAY_TWO, playbook, silent=True, answering=True,
                                                 plugs=plugs, wait=WAIT, fleet=FLEET)
            assert bench_sabotage.verify_day_two(outcome) == [], (tmp / (playbook + '.log')).read_text()[-6000:]
        finally:
            if plugs:
                plugs.close()
            unmount_below(tmp)


# ------------------------------------------------------------------------------------------------ reimage

REIMAGE_PIS = {'pi-a': '0a0a0a0a', 'pi-b': '0b0b0b0b', 'pi-c': '0c0c0c0c', 'pi-d': '0d0d0d0d'}


def address(name):
    return '127.0.99.%d' % (11 + sorted(REIMAGE_PIS).index(name))


def reimage_inventory(tmp, image, plugs):
    fleet = {'pifleet_bakeform_store': str(tmp / 'srv/bakeforms'), 'pifleet_roots_dir': str(tmp / 'srv/roots'),
             'pifleet_disks_dir': str(tmp / 'srv/disks'), 'pifleet_boot_dir': str(tmp / 'srv/pis'),
             'pifleet_map_path': str(tmp / 'map.json'), 'pifleet_nfs_server': '10.99.0.2',
             'pifleet_events_path': str(tmp / 'events.jsonl'), 'fleet_hook_service': '', 'fleet_nfs_reload': False,
             'fleet_nfs_ganesha_config': str(tmp / 'ganesha/ganesha.conf'), 'fleet_units_dir': str(tmp / 'units'),
             'fleet_nfs_exports_file': str(tmp / 'ganesha/pifleet.conf'), 'fleet_clone_method': 'auto',
             'fleet_host_ca': str(tmp / 'ssh/host_ca'), 'fleet_known_hosts': str(tmp / 'known_hosts'),
             'pifleet_bakeform_poll': FLEET['fleet_bakeform_poll'], 'ansible_connection': 'local',
             'ansible_python_interpreter': sys.executable, 'ansible_become': False,
             **{key: value for key, value in FLEET.items() if key.startswith('pifleet_')}}
    pis = {name: {'pi_serial': serial, 'pi_model': 4, 'pi_ip': address(name),
                  'pi_power': {'driver': 'http', 'api': 'shelly1', 'url': plugs.add(name, 'shelly1', on=True)}}
           for name, serial in REIMAGE_PIS.items()}
    (tmp / 'hosts.yml').write_text(yaml.safe_dump({
        'bakery': {'hosts': {'lab-bakery': fleet}, 'vars': {'pifleet_bakeforms': [{'name': 'raspios',
                                                                                  'src': str(image)}]}},
        'pis': {'hosts': pis}}))
    (tmp / 'ganesha').mkdir(exist_ok=True)
    (tmp / 'ganesha/ganesha.conf').write_text('NFS_CORE_PARAM {\n    Protocols = 3, 4;\n}\n')


def playbook(tmp, play, *args):
    (tmp / 'play.yml').write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_NOCOLOR='1')
    proc = subprocess.run([str(Path(sys.executable).parent / 'ansible-playbook'), '-i', str(tmp / 'hosts.yml'),
                           str(tmp / 'play.yml'), *args], capture_output=True, text=True, env=env, check=False,
                          timeout=900)
    recaps = dict(re.findall(r'^(\S+)\s+:\s+(ok=.*)$', proc.stdout, re.M))
    counters = {host: {k: int(v) for k, v in re.findall(r'(\w+)=(\d+)', line)} for host, line in recaps.items()}
    return proc.returncode, counters, proc.stdout + proc.stderr


def assert_one_summary_names(output, symlink):
    """Reimage's one summary names pi-c (rebuilt, never answered), pi-d (rebuild failed) and pi-e (its bakery does not
    answer), each with its reason; the Pis that came up are not in it."""
    summary = re.search(r'"msg": "(3 of 5 Pi\(s\) were not reimaged(?:[^"\\]|\\.)*)"', output)
    assert summary, output[-4000:]
    lines = summary.group(1).split('\\n')[1:]
    assert [line.split(' ')[0] for line in lines] == ['pi-c', 'pi-d', 'pi-e'], lines
    assert lines[0].startswith('pi-c (serial 0c0c0c0c): it did not come back on raspios@1 within %d s (no SSH '
                               'server answered with the host key of its new root); last boot event: ' % WAIT), lines
    assert lines[0].endswith('its previous root is kept (pifleet.netboot.rollback puts it back)'), lines
    assert lines[1].startswith('pi-d (serial 0d0d0d0d): its new root could not be made (roots: root of Pi '
                               '0d0d0d0d: %s is a symlink' % symlink), lines
    assert lines[1].endswith('it keeps the root and export it had, not power-cycled'), lines
    assert lines[2].startswith('pi-e (serial 0e0e0e0e): its new root could not be made (bakery: its bakery '
                               'bakery-gone did not answer: '), lines
    assert lines[2].endswith('it keeps the root and export it had, not power-cycled'), lines


def add_a_silent_bakery(tmp, plugs):
    """pi-e, served by bakery-gone, which does not answer. The reimage's steps run once for all, and such a bakery
    ended the play there for every Pi; it must cost only pi-e (named), the other bakery's Pis go on."""
    inventory = yaml.safe_load((tmp / 'hosts.yml').read_text())
    inventory['bakery']['hosts']['bakery-gone'] = {'ansible_connection': 'ssh', 'ansible_host': '127.0.0.1',
                                                   'ansible_port': 1}
    inventory['pis']['hosts']['pi-e'] = {'pi_serial': '0e0e0e0e', 'pi_model': 4, 'pi_ip': '127.0.99.30',
                                         'pi_bakery': 'bakery-gone', 'pi_power': {
                                             'driver': 'http', 'api': 'shelly1',
                                             'url': plugs.add('pi-e', 'shelly1', on=True)}}
    # In this order: a Pi without pi_bakery is the first bakery's (lab-bakery's).
    (tmp / 'hosts.yml').write_text(yaml.safe_dump(inventory, sort_keys=False))


def test_reimage_names_the_pi_whose_rebuild_failed_and_cycles_and_waits_for_the_others(tmp_path, image):
    plugs = PlugServer()
    with loop_fs(tmp_path, 'xfs', '4G') as tmp:
        tmp.chmod(0o755)
        pis = None
        try:
            reimage_inventory(tmp, image, plugs)
            rc, _counters, output = playbook(tmp, [{'name': 'Fleet', 'hosts': 'bakery', 'gather_facts': False,
                                                    'roles': ['pifleet.netboot.fleet']}])
            assert rc == 0, output[-4000:]
            roots = tmp / 'srv/roots'
            point = {serial: Layout(str(roots), serial).point for serial in REIMAGE_PIS.values()}
            pis = SshPis({address(name): os.path.join(point[serial], 'etc/ssh/ssh_host_ed25519_key')
                          for name, serial in REIMAGE_PIS.items()})
            pis.up -= {address('pi-c')}  # pi-c is rebuilt and power-cycled, but never answers
            # pi-d's rebuild fails on the bakery: its mount point is no longer one pi_root may mount on. Both the
            # mount point (bare) and the points' tmpfs top are immutable: cleared for the sabotage, then set again.
            subprocess.run(['umount', point['0d0d0d0d']], check=True)
            pipoints.set_immutable(point['0d0d0d0d'], False)
            pipoints.set_immutable(os.path.dirname(point['0d0d0d0d']), False)
            os.rmdir(point['0d0d0d0d'])
            os.symlink(str(tmp / 'elsewhere'), point['0d0d0d0d'])
            pipoints.set_immutable(os.path.dirname(point['0d0d0d0d']))
            add_a_silent_bakery(tmp, plugs)
            exports_before = (tmp / 'ganesha/pifleet.conf').read_text()
            fs_before = dict(re.findall(r'Path = "([^"]*)";.*?# pifleet fs: (\S+)', exports_before, re.S))
            markers = {serial: json.loads((roots / (serial + '.json')).read_text())['fs_uuid']
                       for serial in REIMAGE_PIS.values()}

            rc, counters, output = playbook(tmp, [{'ansible.builtin.import_playbook': 'pifleet.netboot.reimage'}],
                                            '-e', 'pifleet_reimage_wait=%d' % WAIT)
            exports_after = (tmp / 'ganesha/pifleet.conf').read_text()
            # A bad power argument fails each Pi with pi_power's own words (it showed "'dict object' has no
            # attribute 'changed'"); reimage shares the power tasks with the power playbook.
            bad = playbook(tmp, [{'ansible.builtin.import_playbook': 'pifleet.netboot.reimage'}], '--limit', 'pi-a',
                           '-e', json.dumps({'pi_power': {'driver': 'nosuch'}}), '-e', 'pifleet_reimage_wait=5')
        finally:
            if pis:
                pis.close()
            plugs.close()
            unmount_below(tmp)
        assert rc != 0, output[-4000:]
        assert counters['pi-d'] == dict(counters['pi-d'], failed=1), (counters, output[-6000:])
        for name in ('pi-a', 'pi-b', 'pi-c'):
            assert counters[name] == dict(counters[name], failed=int(name == 'pi-c')), (counters, output[-4000:])
            assert plugs.plugs[name].sets == 2 and plugs.plugs[name].state == [True]  # off, then on
            assert ('%s is up (SSH answers with the host key of its root)' % name in output) is (name != 'pi-c')
        assert_one_summary_names(output, point['0d0d0d0d'])
        assert plugs.plugs['pi-d'].sets == 0  # not power-cycled onto a root it does not have
        assert counters['pi-e'] == dict(counters['pi-e'], failed=1) and plugs.plugs['pi-e'].sets == 0, counters
        assert re.search(r'fatal: \[pi-e\]: FAILED! => \{[^}]*"msg": "1 Pi\(s\) failed, every other Pi was converged'
                         r'[^"]*pi-e \(serial 0e0e0e0e\) failed at bakery: its bakery bakery-gone did not answer: ',
                         output), output[-4000:]
        assert re.search(r'fatal: \[pi-d\]: FAILED! => \{[^}]*"msg": "1 Pi\(s\) failed, every other Pi was converged'
                         r'[^"]*pi-d \(serial 0d0d0d0d\) failed at roots: root of Pi 0d0d0d0d: %s is a symlink'
                         % re.escape(point['0d0d0d0d']), output), output[-4000:]
        # The others were rebuilt (new file systems) and their exports bounced; pi-d's export is as it was.
        fs_after = dict(re.findall(r'Path = "([^"]*)";.*?# pifleet fs: (\S+)', exports_after, re.S))
        for name, serial in REIMAGE_PIS.items():
            path = point[serial]
            assert (fs_after[path] == fs_before[path]) is (name == 'pi-d'), (name, fs_before, fs_after)
        assert all(json.loads((roots / (s + '.json')).read_text())['fs_uuid'] != markers[s]
                   for s in ('0a0a0a0a', '0b0b0b0b', '0c0c0c0c'))
        rc, counters, output = bad
        assert rc != 0 and counters['pi-a'] == dict(counters['pi-a'], failed=1) and 'has no attribute' not in output
        assert re.search(r'fatal: \[pi-a\]: FAILED! => \{[^}]*"msg": "value of driver must be one of: command, http, '
                         r'snmp, uhubctl, got: nosuch', output), output[-3000:]
