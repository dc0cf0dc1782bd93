# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two bakeries in the lab: one inventory, two bakery containers on two LAN segments, Pis assigned with pi_bakery.

Two nspawnlab labs (``pf2b1`` on 10.99.61.0/24, ``pf2b2`` on 10.99.62.0/24; names, namespaces, subnets, state
and cgroups of their own, so this runs beside test_labdemo's lab), both containers from the cached bakery image.
pi-a is served by bak-1 (the first bakery: no pi_bakery), pi-b by bak-2 (``pi_bakery: bak-2``). Each segment's
router also holds a Shelly plug fake (tests/tools/powerfakes.py) for the Pi of that segment: only that segment's
bakery can reach it, so a plug that switched says which bakery drove it.

- ``site`` once converges both bakeries (boot services and each one's fleet);
- each Pi boots through the simulator (lab/pisim.py: real DHCP, TFTP and NFS client traffic) from its own
  bakery, and the same Pi plugged into the other segment is refused there: no boot files, no NFS root;
- ``power`` switches each Pi through its own bakery (and ``--limit`` one bakery's Pi alone), ``status`` shows each
  bakery's Pis under its own BAKERY line, ``reimage`` rebuilds and power-cycles each Pi on its own bakery and waits
  for its running system (the test boots it and starts an SSH server with its root's host key: dropbear), and
  ``discover`` shows an undeclared Pi that asked on segment 2 under bak-2 alone.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from powerfakes import PlugServer
from statustable import table

from lab import REPO, ensure_importable, nspawnlab, pisim, powerswitch
from lab import demo as labdemo
from lab.nfslab import missing_tools
from lab.piimage import build_image

MISSING = missing_tools(('ip', 'systemd-nspawn', 'debootstrap', 'socat', 'ssh', 'dnsmasq', 'nfs-ls', 'dropbear',
                         'dropbearconvert'))
pytestmark = pytest.mark.skipif(bool(MISSING), reason='missing %s' % ', '.join(MISSING))

SEGMENTS = {'bak-1': ('pf2b1', '10.99.61'), 'bak-2': ('pf2b2', '10.99.62')}
# The Pis of the inventory, and C, which is in none: it asks on segment 2.
PIS = {
    'pi-a': {'serial': '10000000a1b2c301', 'mac': 'dc:a6:32:b2:c3:01', 'bakery': 'bak-1'},
    'pi-b': {'serial': '10000000a1b2c302', 'mac': 'dc:a6:32:b2:c3:02', 'bakery': 'bak-2'},
    'pi-c': {'serial': '10000000a1b2c3cc', 'mac': 'dc:a6:32:b2:c3:cc', 'bakery': None},
}
# Who sits on each segment (the lab's pi1, pi2, ... namespaces, in order): its own Pi first, then visitors.
SEATS = {'bak-1': ['pi-a', 'pi-b'], 'bak-2': ['pi-b', 'pi-a', 'pi-c']}
TIMINGS = {}
CLONE_NEWNET = 0x40000000


def seat(bakery, pi):
    """The namespace host name (pi1, pi2, ...) of ``pi`` on the segment of ``bakery``."""
    return 'pi%d' % (SEATS[bakery].index(pi) + 1)


def sim_pi(labs, bakery, name):
    """The Pi as lab/demo.py's boot_pi wants it, sitting on the segment of ``bakery``."""
    facts = PIS[name]
    serial = pisim.normalise_serial(facts['serial'])
    return {'name': name, 'model': 4, 'serial': facts['serial'], 'mac': facts['mac'], 'prefix': 'serial',
            'host': seat(bakery, name), 'folder': pisim.tftp_prefix('serial', serial, facts['mac']),
            'root_key': serial, 'ip': labs[bakery]['pis'][seat(bakery, name)]['pinned']}


def in_namespace(ns, function):
    """``function()`` called in a thread that joined the network namespace ``ns`` (sockets it makes stay there)."""
    done = {}

    def enter():
        libc = ctypes.CDLL('libc.so.6', use_errno=True)
        fd = os.open('/run/netns/%s' % ns, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                done['error'] = OSError(ctypes.get_errno(), 'setns %s' % ns)
                return
        finally:
            os.close(fd)
        try:
            done['value'] = function()
        except Exception as exc:  # raised again in the caller's thread
            done['error'] = exc
    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    if 'error' in done:
        raise done['error']
    return done['value']


def bakery_vars(lab):
    subnet = lab['subnet']
    proxy = 'ip netns exec %s socat STDIO TCP:127.0.0.1:22' % lab['namespaces']['bakery']
    return {
        'ansible_host': lab['addresses']['bakery'], 'ansible_ssh_private_key_file': lab['ssh_key'],
        'ansible_ssh_common_args': '-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR '
                                   '-o IdentitiesOnly=yes -o ProxyCommand="%s"' % proxy,
        'dnsmasq_listen_address': lab['addresses']['bakery'], 'dnsmasq_network': '%s.0/24' % subnet,
        'tftp_hook_listen': [lab['addresses']['bakery']], 'pifleet_nfs_server': lab['addresses']['bakery'],
    }


def write_inventory(top, labs, plugs):
    pis = {}
    for name, facts in PIS.items():
        if facts['bakery'] is None:
            continue
        pis[name] = {'pi_model': 4, 'pi_serial': facts['serial'], 'pi_mac': facts['mac'],
                     'pi_ip': labs[facts['bakery']]['pis'][seat(facts['bakery'], name)]['pinned'],
                     'pi_power': {'driver': 'http', 'api': 'shelly1',
                                  'url': plugs[facts['bakery']].add(name, 'shelly1')}}
        if facts['bakery'] != 'bak-1':
            pis[name]['pi_bakery'] = facts['bakery']
    common = {'ansible_user': 'root', 'ansible_python_interpreter': '/usr/bin/python3', 'dnsmasq_mode': 'proxy',
              'nfs_server_backend': 'ganesha', 'nfs_server_versions': [3, 4],
              'pifleet_allow_root_filesystem': True, 'pifleet_known_hosts': str(top / 'known_hosts'),
              'pifleet_bakeforms': [{'name': 'raspios-sample', 'src': '/srv/pifleet/images/raspios-sample.img.xz'}]}
    hosts = {'bakery': {'hosts': {name: bakery_vars(lab) for name, lab in labs.items()}, 'vars': common},
             'pis': {'vars': {'pi_bakeform': 'raspios-sample'}, 'hosts': pis}}
    inventory = top / 'inventory'
    inventory.mkdir()
    (inventory / 'hosts.yml').write_text(yaml.safe_dump(hosts, sort_keys=False))
    return inventory


class TwoBakeries:
    def __init__(self, top):
        self.top, self.labs, self.plugs, self.sshd = top, {}, {}, {}

    def play(self, name, *args):
        """(rc, recap counters per host, output) of pifleet.netboot.<name> on the two-bakery inventory."""
        started = time.monotonic()
        proc = subprocess.run(self.argv(name, *args), capture_output=True, text=True, env=self.env(), check=False,
                              timeout=900, cwd=REPO, stdin=subprocess.DEVNULL)
        TIMINGS.setdefault(name, []).append(round(time.monotonic() - started, 1))
        return proc.returncode, recaps(proc.stdout), proc.stdout + proc.stderr

    def argv(self, name, *args):
        return [str(Path(sys.executable).parent / 'ansible-playbook'), '-i', str(self.top / 'inventory'),
                'pifleet.netboot.%s' % name, *args]

    @staticmethod
    def env():
        ensure_importable()
        return dict(os.environ, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH='false', ANSIBLE_NOCOLOR='1',
                    ANSIBLE_PIPELINING='true', ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_FORKS='10')

    def boot(self, bakery, name):
        """Boot Pi ``name`` from its seat on ``bakery``'s segment with the simulator; its JSON report."""
        lab, pi = self.labs[bakery], sim_pi(self.labs, bakery, name)
        argv = ['ip', 'netns', 'exec', lab['namespaces'][pi['host']], sys.executable, '-m', 'lab.pisim', 'boot',
                '--model', '4', '--serial', pi['serial'], '--mac', pi['mac'], '--prefix', 'serial', '--dhcp', 'eth0',
                '--retries', '2', '--json',
                '--nfs', '%s:/srv/pifleet/roots/mnt/%s' % (lab['addresses']['bakery'], pi['root_key'])]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise AssertionError('the simulator failed (rc %d): %s' % (proc.returncode, proc.stderr[-2000:])) from None

    def running_system(self, bakery, name):
        """Pi ``name`` "runs": dropbear on its address with its root's host key (read on its bakery)."""
        lab, pi = self.labs[bakery], sim_pi(self.labs, bakery, name)
        work = self.top / name
        work.mkdir(exist_ok=True)
        key = labdemo.on_bakery(lab, 'cat /srv/pifleet/roots/mnt/%s/etc/ssh/ssh_host_ed25519_key' % pi['root_key'])
        (work / 'openssh-key').write_text(key)
        (work / 'openssh-key').chmod(0o600)
        (work / 'dropbear-key').unlink(missing_ok=True)
        subprocess.run(['dropbearconvert', 'openssh', 'dropbear', str(work / 'openssh-key'),
                        str(work / 'dropbear-key')], check=True, capture_output=True)
        self.stop_sshd(name)
        self.sshd[name] = subprocess.Popen(
            ['ip', 'netns', 'exec', lab['namespaces'][pi['host']], 'dropbear', '-F', '-E', '-s', '-r',
             str(work / 'dropbear-key'), '-p', '%s:22' % pi['ip'], '-P', str(work / 'dropbear.pid')],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def stop_sshd(self, name):
        proc = self.sshd.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def close(self):
        for name in list(self.sshd):
            self.stop_sshd(name)
        for plug in self.plugs.values():
            plug.close()
        for bakery, (_name, _subnet) in SEGMENTS.items():
            nspawnlab.down(self.top / bakery)


def recaps(output):
    found = dict(re.findall(r'^(\S+)\s+:\s+(ok=.*)$', output, re.M))
    return {host: {k: int(v) for k, v in re.findall(r'(\w+)=(\d+)', line)} for host, line in found.items()}


def start_labs(top):
    """Both labs at once (two processes: nspawnlab keeps what it started per process); {bakery: lab}."""
    procs = {}
    for bakery, (name, subnet) in SEGMENTS.items():
        macs = ','.join(PIS[pi]['mac'] for pi in SEATS[bakery])
        procs[bakery] = subprocess.Popen(
            [sys.executable, '-m', 'lab.nspawnlab', 'up', '--name', name, '--subnet', subnet, '--state',
             str(top / bakery), '--pis', str(len(SEATS[bakery])), '--macs', macs],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, stdin=subprocess.DEVNULL)
    outputs = {bakery: proc.communicate(timeout=600)[0] for bakery, proc in procs.items()}
    for bakery, proc in procs.items():
        assert proc.returncode == 0, outputs[bakery][-4000:]
    return {bakery: nspawnlab.load(top / bakery) for bakery in SEGMENTS}


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    running = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True, check=True).stdout
    if any('%s-' % name in running for name, _subnet in SEGMENTS.values()):
        pytest.skip('a two-bakery lab is running (an earlier run was killed?): take it down first with '
                    'python -m lab.nspawnlab down --state <its state dir>')
    top = tmp_path_factory.mktemp('twobakeries')
    found = TwoBakeries(top)
    started = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            image = pool.submit(build_image, top / 'raspios-sample.img.xz', models=(4,))
            found.labs = start_labs(top)
            image.result()
        TIMINGS['labs up'] = round(time.monotonic() - started, 1)
        for bakery, lab in found.labs.items():
            labdemo.put_image(lab, top / 'raspios-sample.img.xz', 'raspios-sample.img.xz')
            found.plugs[bakery] = in_namespace(lab['namespaces']['router'],
                                               lambda lab=lab: PlugServer(lab['addresses']['router']))
        write_inventory(top, found.labs, found.plugs)
        yield found
    finally:
        found.close()
        TIMINGS['whole'] = round(time.monotonic() - started, 1)
        print('\ntimings (s): %s' % json.dumps(TIMINGS))
        running = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True, check=True).stdout
        assert not any('%s-' % name in running for name, _subnet in SEGMENTS.values()), running
        assert not any(os.path.exists(path) for bakery in SEGMENTS
                       for path in nspawnlab.cgroup_dirs('%s-bakery' % SEGMENTS[bakery][0]))
        leftovers = subprocess.run(['pgrep', '-f', str(top)], capture_output=True, text=True, check=False).stdout
        assert not leftovers.strip(), leftovers


def test_each_container_has_cgroups_of_its_own(fleet):
    """Two containers in one cgroup had their two systemd instances share each unit's cgroup (nfs-ganesha's too)."""
    seen = {}
    for bakery, lab in fleet.labs.items():
        lines = Path('/proc/%d/cgroup' % lab['leader_pid']).read_text().splitlines()
        seen[bakery] = {line.split(':', 2)[1]: line.split(':', 2)[2] for line in lines}
        assert seen[bakery]['name=systemd' if 'name=systemd' in seen[bakery] else ''].startswith(
            '/pifleet-lab/%s-bakery/' % SEGMENTS[bakery][0]), seen[bakery]


def test_site_converges_both_bakeries_in_one_run(fleet):
    rc, counters, output = fleet.play('site')
    assert rc == 0, output[-6000:]
    for bakery in SEGMENTS:
        assert counters[bakery]['failed'] == 0 and counters[bakery]['changed'] > 0, counters
    for bakery, lab in fleet.labs.items():  # each bakery's fleet map holds its own Pi alone
        fleet_map = json.loads(Path(labdemo.outside(lab, '/var/lib/pifleet/tftp/map.json')).read_text())
        own = [pi for pi, facts in PIS.items() if facts['bakery'] == bakery]
        folders = sorted(sim_pi(fleet.labs, bakery, pi)['folder'] for pi in own)
        assert sorted(fleet_map['prefixes']) == folders, fleet_map


def test_each_pi_boots_from_its_own_bakery_and_the_other_refuses_it(fleet):
    for bakery, lab in fleet.labs.items():
        own = next(pi for pi, facts in PIS.items() if facts['bakery'] == bakery)
        fleet_map = json.loads(Path(labdemo.outside(lab, '/var/lib/pifleet/tftp/map.json')).read_text())
        print(labdemo.boot_pi(lab, sim_pi(fleet.labs, bakery, own), fleet_map))
    for stranger_on, pi in (('bak-2', 'pi-a'), ('bak-1', 'pi-b')):
        report = fleet.boot(stranger_on, pi)
        bakery = fleet.labs[stranger_on]['addresses']['bakery']
        folder = sim_pi(fleet.labs, stranger_on, pi)['folder']
        assert report['dhcp']['server'] == bakery and not report['ok'], report  # it asked that segment's bakery
        assert not [f for f in report['files'] if f['ok'] and f['bytes'] and f['request'].startswith(folder + '/')], \
            report  # no boot file of its folder
        assert report['nfs']['ok'] is False, report  # nor its root
        # and its own root is not there, on a bakery that exports only its own Pis
        assert 'roots/mnt/%s' % pisim.normalise_serial(PIS[pi]['serial']) not in labdemo.on_bakery(
            fleet.labs[stranger_on], 'cat /etc/ganesha/pifleet.conf')


def test_power_and_status_act_per_bakery(fleet):
    rc, counters, output = fleet.play('power', '-e', 'power_state=on')
    assert rc == 0, output[-4000:]
    for bakery, plugs in fleet.plugs.items():  # each plug answers on its own segment only: its bakery drove it
        for name, plug in plugs.plugs.items():
            assert plug.state == [True] and plug.sets == 1, (bakery, name, plug.requests)
    rc, counters, output = fleet.play('power', '-e', 'power_state=off', '--limit', 'pi-b')
    assert rc == 0 and counters['pi-b']['changed'] == 1 and 'pi-a' not in counters, output[-4000:]
    assert fleet.plugs['bak-2'].plugs['pi-b'].state == [False] and fleet.plugs['bak-1'].plugs['pi-a'].sets == 1
    rc, counters, output = fleet.play('status')
    assert rc == 0, output[-4000:]
    rows = {bakery: table(output, bakery) for bakery in SEGMENTS}
    assert {pi: row[5] for pi, row in rows['bak-1'].items()} == {'pi-a': 'on'}, output[-4000:]
    assert {pi: row[5] for pi, row in rows['bak-2'].items()} == {'pi-b': 'off'}, output[-4000:]


def test_reimage_rebuilds_cycles_and_waits_per_bakery(fleet):
    """Each bakery rebuilds its own Pi's root and power-cycles it; when the playbook waits, the test is the Pis:
    each boots (the simulator, from its bakery) and its running system answers with its root's host key."""
    before = {bakery: {name: len(plug.requests) for name, plug in plugs.plugs.items()}
              for bakery, plugs in fleet.plugs.items()}
    booted = {}

    def cycle():
        for bakery in SEGMENTS:
            own = next(pi for pi, facts in PIS.items() if facts['bakery'] == bakery)
            asked = fleet.plugs[bakery].plugs[own].requests[before[bakery][own]:]
            switched = [r.rsplit('turn=', 1)[1] for r in asked if 'turn=' in r]
            # power-cycled by its own bakery by now (pi-b was off since the power test: it is only switched on)
            assert switched == (['on'] if own == 'pi-b' else ['off', 'on']), asked
            booted[own] = fleet.boot(bakery, own)
            fleet.running_system(bakery, own)

    run = powerswitch.run(fleet.argv('reimage', '-e', 'pifleet_reimage_wait=60'), fleet.env(), cycle, timeout=900,
                          show=lambda _line: None)
    assert run.rc == 0, run.output[-6000:]
    assert run.boots == [None] and all(report['ok'] for report in booted.values()), (booted, run.output[-3000:])
    counters = recaps(run.output)
    assert counters['pi-a']['failed'] == counters['pi-b']['failed'] == 0, counters
    for bakery, plugs in fleet.plugs.items():
        assert all(plug.state == [True] for plug in plugs.plugs.values()), bakery


def test_discover_shows_an_undeclared_pi_under_the_bakery_of_its_segment(fleet):
    report = fleet.boot('bak-2', 'pi-c')
    assert report['dhcp']['server'] == fleet.labs['bak-2']['addresses']['bakery'] and not report['ok'], report
    rc, _counters, output = fleet.play('discover')
    assert rc == 0, output[-4000:]
    shown = output.split('TASK [Show the discovered Pis as inventory]')[1].split('TASK [')[0]
    blocks = dict(re.findall(r'^ok: \[(bak-\d)\] => \{\n(.*?)^\}', shown, re.M | re.S))
    serial = pisim.normalise_serial(PIS['pi-c']['serial'])
    assert serial in blocks['bak-2'] and serial not in blocks['bak-1'], shown
