# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The upgrade and rollback playbooks on simulated Pis: waves, the failure budget, the automatic rollback.

Five Pis, their roots on an XFS loop file system, power through fake plugs (tests/tools/powerfakes.py) and
an SSH server each on loopback (tests/tools/sshpi.py) that shows the host key of the Pi's root, and only
while the root's marker names a generation the test calls good: a new generation that "never boots".
The tests run in order on one fleet: site on generation 1; a second image is generation 2 and site moves
no Pi; an upgrade in waves (a canary, then 50%, then the rest) moves every Pi, one pi_root call per wave;
site then changes nothing; generation 3 never answers: the canary is rolled back and comes back, the
budget (0) stops the run with one report, and the later waves are untouched; rollback.yml alone takes a
Pi back to its previous generation. The controller's known_hosts is checked after every step.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from fstree import loop_fs, unmount_below
from powerfakes import PlugServer
from sshpi import SshPis

from lab.nfslab import missing_tools
from lab.piimage import build_image

PIS = {'pi-a': '0a0a0a0a', 'pi-b': '0b0b0b0b', 'pi-c': '0c0c0c0c', 'pi-d': '0d0d0d0d', 'pi-e': '0e0e0e0e'}
MISSING = missing_tools(('ssh-keygen', 'ssh-keyscan', 'mkfs.xfs'))

pytestmark = pytest.mark.skipif(bool(MISSING), reason='missing %s' % ', '.join(MISSING))


def address(name):
    return '127.0.98.%d' % (11 + sorted(PIS).index(name))


class Alive:
    """``SshPis.up``: a Pi answers while its root's marker names a generation in ``good``."""

    def __init__(self, roots, good):
        self.roots, self.good = roots, set(good)
        self.serial = {address(name): serial for name, serial in PIS.items()}

    def __contains__(self, addr):
        try:
            marker = json.loads((self.roots / (self.serial[addr] + '.json')).read_text())
        except (OSError, ValueError, KeyError):
            return False
        return marker.get('generation') in self.good


class Fleet:
    def __init__(self, tmp, plugs):
        self.tmp, self.plugs = tmp, plugs
        self.roots = tmp / 'srv/roots'
        self.events = tmp / 'events.jsonl'
        self.images = {n: tmp / ('gen%d.img.xz' % n) for n in (1, 2, 3)}
        self.power = {name: plugs.add(name, 'shelly1', on=True) for name in PIS}

    def inventory(self, image):
        fleet = {'pifleet_bakeform_store': str(self.tmp / 'srv/bakeforms'), 'pifleet_roots_dir': str(self.roots),
                 'pifleet_disks_dir': str(self.tmp / 'srv/disks'), 'pifleet_boot_dir': str(self.tmp / 'srv/pis'),
                 'pifleet_map_path': str(self.tmp / 'map.json'), 'pifleet_nfs_server': '10.99.0.2',
                 'pifleet_events_path': str(self.events), 'fleet_hook_service': '', 'fleet_nfs_reload': False,
                 'fleet_nfs_ganesha_config': str(self.tmp / 'ganesha/ganesha.conf'),
                 'fleet_units_dir': str(self.tmp / 'units'), 'pifleet_boot_mount': 'nfs',
                 'fleet_nfs_exports_file': str(self.tmp / 'ganesha/pifleet.conf'), 'fleet_clone_method': 'auto',
                 'pifleet_host_ca': str(self.tmp / 'ssh/host_ca'), 'pifleet_known_hosts': str(self.tmp / 'known_hosts'),
                 'pifleet_bakeform_poll': 1,  # a new generation ingests async, polled: the tiny image takes a second
                 # a look for a Pi's host key every second; a fake plug is off for 0.5 s in a power cycle
                 'pifleet_wait_interval': 1, 'pifleet_power_cycle_delay': 0.5,
                 'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable, 'ansible_become': False}
        pis = {name: {'pi_serial': serial, 'pi_model': 4, 'pi_ip': address(name),
                      'pi_power': {'driver': 'http', 'api': 'shelly1', 'url': self.power[name]}}
               for name, serial in PIS.items()}
        (self.tmp / 'hosts.yml').write_text(yaml.safe_dump({
            'bakery': {'hosts': {'lab-bakery': fleet},
                       'vars': {'pifleet_bakeforms': [{'name': 'raspios', 'src': str(self.images[image])}]}},
            'pis': {'hosts': pis}}))

    def play(self, play, *args):
        if isinstance(play, str):
            play = [{'ansible.builtin.import_playbook': 'pifleet.netboot.%s' % play}]
        (self.tmp / 'play.yml').write_text(yaml.safe_dump(play))
        env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_NOCOLOR='1')
        proc = subprocess.run([str(Path(sys.executable).parent / 'ansible-playbook'), '-i', str(self.tmp / 'hosts.yml'),
                               str(self.tmp / 'play.yml'), *args], capture_output=True, text=True, env=env,
                              check=False, timeout=900)
        recaps = dict(re.findall(r'^(\S+)\s+:\s+(ok=.*)$', proc.stdout, re.M))
        counters = {host: {k: int(v) for k, v in re.findall(r'(\w+)=(\d+)', line)} for host, line in recaps.items()}
        return proc.returncode, counters, proc.stdout + proc.stderr

    def site(self):
        return self.play([{'name': 'Fleet', 'hosts': 'bakery', 'gather_facts': False,
                           'roles': ['pifleet.netboot.fleet']}])

    def generations(self):
        return {name: json.loads((self.roots / (serial + '.json')).read_text()).get('generation')
                for name, serial in PIS.items()}

    def previous(self):
        found = {}
        for name, serial in PIS.items():
            path = self.roots / (serial + '.prev.json')
            found[name] = json.loads(path.read_text()).get('generation') if path.exists() else None
        return found

    def cycles(self):
        return {name: self.plugs.plugs[name].sets for name in PIS}

    def map_generation(self, name):
        entry = next(e for e in json.loads((self.tmp / 'map.json').read_text())['prefixes'].values()
                     if e['name'] == name)
        return [int(m.group(1)) for d in entry['dirs'] for m in [re.search(r'/generations/(\d+)/boot$', d)] if m]

    def boot_exports(self):
        text = (self.tmp / 'ganesha/pifleet.conf').read_text()
        found = {}
        for path, clients in re.findall(r'Path = "([^"]*/generations/(?:\d+)/boot-nfs)";.*?Clients = ([^;]*);',
                                        text, re.S):
            found[int(re.search(r'/generations/(\d+)/', path).group(1))] = sorted(
                c.strip().strip('"') for c in clients.split(','))
        return found


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    top = tmp_path_factory.mktemp('upgrade')
    plugs = PlugServer()
    with loop_fs(top, 'xfs', '4G') as tmp:
        tmp.chmod(0o755)
        (tmp / 'ganesha').mkdir()
        (tmp / 'ganesha/ganesha.conf').write_text('NFS_CORE_PARAM {\n    Protocols = 3, 4;\n}\n')
        state = Fleet(tmp, plugs)
        for number, path in state.images.items():
            build_image(path, profile='tiny', seed=40 + number, models=(4,))
        state.inventory(1)
        rc, _counters, output = state.site()
        assert rc == 0, output[-4000:]
        state.alive = Alive(state.roots, {1, 2})
        state.ssh = SshPis({address(name): str(state.roots / 'mnt' / serial / 'etc/ssh/ssh_host_ed25519_key')
                            for name, serial in PIS.items()})
        state.ssh.up = state.alive
        try:
            yield state
        finally:
            state.ssh.close()
            plugs.close()
            unmount_below(tmp)


def known_hosts(fleet):
    return (fleet.tmp / 'known_hosts').read_text()


def test_a_new_image_is_a_new_generation_and_site_moves_no_pi(fleet):
    assert set(fleet.generations().values()) == {1}
    before = known_hosts(fleet)
    assert '@cert-authority pi-a,127.0.98.11,pi-b,127.0.98.12' in before
    fleet.inventory(2)
    rc, _counters, output = fleet.site()
    assert rc == 0, output[-4000:]
    assert set(fleet.generations().values()) == {1}  # site never changes a Pi's generation
    assert fleet.boot_exports() == {1: sorted(address(n) for n in PIS)}
    assert known_hosts(fleet) == before


def test_upgrade_in_waves_a_canary_first_then_site_changes_nothing(fleet):
    keys_before = known_hosts(fleet)
    waves = json.dumps({'upgrade_waves': [1, '50%', '100%'], 'upgrade_timeout': 30})
    rc, counters, output = fleet.play('upgrade', '-e', waves)
    assert rc == 0, output[-6000:]
    assert all(counters[name]['failed'] == 0 for name in PIS), counters
    # One pi_root call per wave, for the wave's Pis: the canary alone, then two, then two.
    batches = re.findall(r'^included: \S+/bakery_step\.yml for (.*)$', output, re.M)
    assert [sorted(w.split(', ')) for w in batches] == [['pi-a'], ['pi-b', 'pi-c'], ['pi-d', 'pi-e']], batches
    assert output.count("TASK [pifleet.netboot.fleet : Clone, fix or rebuild the Pis' roots]") == 3
    assert fleet.generations() == dict.fromkeys(PIS, 2) and fleet.previous() == dict.fromkeys(PIS, 1)
    assert all(fleet.map_generation(name) == [2] for name in PIS)
    assert fleet.boot_exports() == {2: sorted(address(n) for n in PIS)}  # generation 1's export is gone
    assert fleet.cycles() == dict.fromkeys(PIS, 2)  # off, then on, once each
    assert known_hosts(fleet) == keys_before  # the identity was kept: the same host keys
    rc, counters, output = fleet.site()
    assert rc == 0 and counters['lab-bakery']['changed'] == 0, output[-4000:]
    assert fleet.generations() == dict.fromkeys(PIS, 2)


def test_a_generation_that_never_answers_is_rolled_back_and_the_budget_stops_the_run(fleet):
    fleet.inventory(3)
    rc, _counters, output = fleet.site()
    assert rc == 0, output[-4000:]
    cycles = fleet.cycles()
    stop = threading.Event()

    def canary_fetches():  # what the hook logs while pi-a fetches its kernel, then panics (no SSH)
        while not stop.wait(1):
            with fleet.events.open('a') as log:
                log.write(json.dumps({'time': datetime.now(timezone.utc).isoformat(), 'client': address('pi-a'),
                                      'request': '0a0a0a0a/kernel8.img', 'prefix': '0a0a0a0a', 'path': 'kernel8.img',
                                      'name': 'pi-a', 'known': True, 'outcome': 'ok'}) + '\n')
    feeder = threading.Thread(target=canary_fetches)
    feeder.start()
    try:
        waves = json.dumps({'upgrade_waves': [1, '100%'], 'upgrade_timeout': 2})  # the canary waits it out
        rc, counters, output = fleet.play('upgrade', '-e', waves)
    finally:
        stop.set()
        feeder.join()
    assert rc != 0, output[-6000:]
    assert counters['pi-a']['failed'] == 1, counters
    report = re.search(r'1 of 1 Pi\(s\) of this wave were not upgraded \(failure budget 0\): the budget is exceeded, '
                       r'the upgrade stops here and later waves are left as they are\\npi-a \(serial 0a0a0a0a\): it '
                       r'did not come back on raspios@3 within the timeout \(no SSH server answered with its host '
                       r'key\); last boot event: kernel8.img, outcome ok; rolled back from raspios@3 to raspios@2 '
                       r'\(root, boot folder, boot export\), power-cycled: it is back up', output)
    assert report, output[-6000:]
    # The canary is back on generation 2 (root, boot folder, export), its generation 3 root kept as the previous.
    assert fleet.generations() == dict.fromkeys(PIS, 2)
    assert fleet.previous() == dict(dict.fromkeys(PIS, 1), **{'pi-a': 3})
    assert fleet.map_generation('pi-a') == [2] and fleet.boot_exports() == {2: sorted(address(n) for n in PIS)}
    # Power-cycled twice (onto generation 3, then back); the later wave untouched.
    assert fleet.cycles() == dict(cycles, **{'pi-a': cycles['pi-a'] + 4})
    assert 'bakery_step.yml for pi-b' not in output


def test_rollback_alone_takes_a_pi_back_to_its_previous_root(fleet):
    cycles = fleet.cycles()
    rc, counters, output = fleet.play('rollback', '-e', 'rollback_target=pi-b', '-e', 'rollback_timeout=30')
    assert rc == 0, output[-4000:]
    assert 'pi-b is up on raspios@1' in output
    assert fleet.generations() == dict(dict.fromkeys(PIS, 2), **{'pi-b': 1})
    assert fleet.previous()['pi-b'] == 2 and fleet.map_generation('pi-b') == [1]
    assert fleet.boot_exports() == {1: [address('pi-b')], 2: sorted(address(n) for n in PIS if n != 'pi-b')}
    assert fleet.cycles() == dict(cycles, **{'pi-b': cycles['pi-b'] + 2})
    # Site keeps it there, and changes nothing.
    rc, counters, output = fleet.site()
    assert rc == 0 and counters['lab-bakery']['changed'] == 0, output[-4000:]
    assert fleet.generations()['pi-b'] == 1
