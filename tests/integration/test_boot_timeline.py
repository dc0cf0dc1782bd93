# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot timelines from what a real bakery sees, on a LAN of network namespaces (root).

The LAN (lab/nfslab.Lan, 10.99.36.0/24, namespaces pfbt-*): a home router (authoritative dnsmasq reserving each
Pi's address); the bakery with dnsmasq as proxy DHCP (the dnsmasq role's own template: log-dhcp into a file),
the TFTP hook (the role's program), NFS-Ganesha on a D-Bus system bus of its own; three simulated Pis
(lab/pisim.py plays their bootloaders):

- ``pi-good`` (a Pi 4): DHCP, its boot set, its root listed over NFS from its own address (a real ext4 image
  mounted on the bakery, exported to it alone), then an SSH server (dropbear) answers on its address with the
  host key its root marker records. The simulator has no kernel: the SSH server stands in for the system the
  root would run; test_labdemo.py's real virtual Pi reaches ``running`` with its own sshd;
- ``pi-noexport`` (a Pi 5 by MAC prefix): DHCP and its boot set, but its root is not exported: its mount is
  refused, it stalls at NFS;
- ``pi-dhcponly`` (a Pi 4 by MAC prefix): asks DHCP and never for a file: it stalls at DHCP.

Then pi_status (the module, in the bakery's namespace), the status playbook, the boot watcher, promtool and a real
prometheus-node-exporter serving the watcher's textfile on loopback each say so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from bootwatch import install
from fstree import mounts_below
from modrun import ensure_importable, module_argv
from rolevars import trusted

from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations
from lab import pisim
from lab.nfslab import Ganesha, Lan, missing_tools, run

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / 'roles' / 'tftp_hook' / 'files' / 'pifleet_tftp_hook.py'
NET = '10.99.36'
HOSTS = {'router': NET + '.1', 'bakery': NET + '.2', 'good': NET + '.51', 'noexport': NET + '.52',
         'dhcponly': NET + '.53'}
BAKERY = HOSTS['bakery']
PIS = {  # inventory name -> (namespace, model, serial, MAC, TFTP prefix mode)
    'pi-good': ('good', 4, '7e570004', 'dc:a6:32:36:00:04', 'serial'),
    'pi-noexport': ('noexport', 5, '7e570005', '2c:cf:67:36:00:05', 'mac'),
    # By MAC prefix: the map then tells the boot watcher its MAC. A Pi asking by serial that never fetched a file is
    # no Pi of the map to the watcher (its answers count as unattributed); status knows it from its pi_mac.
    'pi-dhcponly': ('dhcponly', 4, '7e570006', 'dc:a6:32:36:00:06', 'mac'),
}
BOOT_SET = {'start4.elf': 20_000, 'fixup4.dat': 3_000, 'config.txt': 60, 'bcm2711-rpi-4-b.dtb': 9_000,
            'cmdline.txt': 90, 'kernel8.img': 200_000, 'kernel_2712.img': 210_000, 'bcm2712-rpi-5-b.dtb': 9_000}
# Short limits: a stall shows within seconds rather than minutes.
LIMITS = {'dhcp': 3, 'tftp': 5, 'nfs': 5, 'running': 20, 'boot_gap': 120}
NODE_EXPORTER = shutil.which('prometheus-node-exporter')
MISSING = missing_tools(('ip', 'unshare', 'dnsmasq', 'ganesha.nfsd', 'nfs-ls', 'dbus-daemon', 'busctl', 'dropbear',
                         'dropbearkey', 'ssh-keyscan', 'mkfs.ext4'))

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='needs root (network namespaces, mounts)'),
    pytest.mark.skipif(bool(MISSING), reason='missing %s' % ', '.join(MISSING)),
]
pytest.importorskip('scapy')

ROUTER = """\
port=0
bind-interfaces
listen-address={router}
dhcp-authoritative
no-ping
dhcp-range={net}.100,{net}.150,255.255.255.0,1h
dhcp-leasefile={work}/router.leases
{reservations}
"""
BUS = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def dnsmasq_proxy_config(log_path):
    """The dnsmasq role's own template, rendered for the bakery of this LAN."""
    role = REPO / 'roles' / 'dnsmasq'
    loader = DataLoader()
    variables = {}
    for part in ('defaults/main.yml', 'vars/main.yml', 'vars/Debian.yml'):
        variables.update(trusted(loader.load_from_file(str(role / part))))
    variables.update(ansible_managed='Ansible managed', dnsmasq_listen_address=BAKERY,
                     dnsmasq_network=NET + '.0/24', pifleet_dhcp_log_path=str(log_path))
    templar = Templar(loader=loader, variables=variables)
    return templar.template(trust_as_template((role / 'templates' / 'pifleet.conf.j2').read_text(encoding='utf-8')))


class Started:
    """Processes of the lab, stopped by their own PID (ip netns exec execs the program)."""

    def __init__(self):
        self.procs = []

    def start(self, argv, ready=None, timeout=20, **kwargs):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while ready is not None and not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('%s did not start: %s' % (argv[-1], proc.stderr.read() if proc.poll() else '?'))
            time.sleep(0.1)
        return proc

    def close(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def listening(lan, host, spec):
    return bool(run(lan.exec_argv(host, ['ss', '-Hln', spec]), check=False).stdout.strip())


@pytest.fixture(scope='module')
def bakery():  # noqa: PLR0915 - one LAN with every service, set up in the order they need
    work = Path(tempfile.mkdtemp(prefix='pfbt-', dir='/tmp'))
    work.chmod(0o755)
    lan = Lan('pfbt', HOSTS)
    started = Started()
    ganesha = None
    roots = work / 'roots'
    saved_bus = os.environ.get('DBUS_SYSTEM_BUS_ADDRESS')
    try:
        lan.start()
        for ns, _model, _serial, _mac, _mode in PIS.values():
            run(['ip', '-n', lan.ns(ns), 'addr', 'flush', 'dev', 'eth0'])  # a Pi gets its address by DHCP
        # The router reserves each Pi's address; the bakery answers PXE (the role's config, log in our file).
        reservations = '\n'.join('dhcp-host=%s,%s' % (mac, HOSTS[ns]) for ns, _m, _s, mac, _p in PIS.values())
        (work / 'router.conf').write_text(ROUTER.format(router=HOSTS['router'], net=NET, work=work,
                                                        reservations=reservations))
        (work / 'proxy.conf').write_text(dnsmasq_proxy_config(work / 'dnsmasq.log'))
        run(['dnsmasq', '--test', '--conf-file=%s' % (work / 'proxy.conf')])
        for host in ('router', 'proxy'):
            where = 'router' if host == 'router' else 'bakery'
            started.start(lan.exec_argv(where, ['dnsmasq', '--keep-in-foreground', '--conf-file=%s' % (
                work / ('%s.conf' % host)), '--pid-file=%s/%s.pid' % (work, host), '--user=root']),
                ready=lambda where=where: listening(lan, where, 'sport = :67'))
        # The store (format 3): bakeform lab, whose generation 1 the Pis boot and whose current one is 2; the
        # boot files of generation 1 and the map the fleet role would write; the hook as the role runs it.
        boot = Path(store_generations(work / 'bakeforms', 'lab', (1, 2), current=2).boot_dir(1))
        prefixes = {pisim.tftp_prefix(mode, serial, mac): {'name': name, 'dirs': [str(boot)]}
                    for name, (_ns, _model, serial, mac, mode) in PIS.items()}
        (work / 'map.json').write_text(json.dumps({'version': 1, 'default': [str(boot)], 'prefixes': prefixes}))
        (work / 'hook.json').write_text(json.dumps({'listen': [BAKERY], 'map': str(work / 'map.json'),
                                                    'roots': [str(work / 'bakeforms')],
                                                    'events': str(work / 'events.jsonl')}))
        hook = ['/usr/bin/python3', '-I', str(HOOK), '--config', str(work / 'hook.json')]
        started.start(lan.exec_argv('bakery', hook), ready=lambda: listening(lan, 'bakery', 'sport = :69'))
        # pi-good's root: an ext4 file system of its own, mounted on the bakery, with the marker beside it.
        roots.mkdir()
        (roots / 'mnt' / '7e570004').mkdir(parents=True)  # its mount point where pi_root makes it
        run(['truncate', '-s', '64M', str(roots / '7e570004.img')])
        run(['mkfs.ext4', '-q', '-F', str(roots / '7e570004.img')])
        run(['mount', '-o', 'loop,nosuid,nodev', str(roots / '7e570004.img'), str(roots / 'mnt' / '7e570004')])
        (roots / 'mnt' / '7e570004' / 'etc').mkdir()
        run(['dropbearkey', '-t', 'ed25519', '-f', str(work / 'good-key')])
        public = run(['dropbearkey', '-y', '-f', str(work / 'good-key')]).stdout
        key = 'ssh-ed25519 ' + public.split('ssh-ed25519 ', 1)[1].split('\n', 1)[0]  # the public key line
        (roots / '7e570004.json').write_text(json.dumps({'hostname': 'pi-good', 'bakeform': 'lab', 'generation': 1,
                                                         'host_keys': [key]}))
        (roots / '7e570005.json').write_text(json.dumps({'hostname': 'pi-noexport', 'bakeform': 'lab',
                                                         'generation': 1, 'host_keys': [key]}))
        (roots / 'mnt' / '7e570005').mkdir()  # its root is there, but not exported
        # NFS-Ganesha on a system bus of its own (pi_status and the watcher ask it over D-Bus), exporting only pi-good.
        (work / 'bus.conf').write_text(BUS.format(socket=work / 'bus.sock'))
        started.start(['dbus-daemon', '--config-file=%s' % (work / 'bus.conf'), '--nofork'],
                      ready=(work / 'bus.sock').exists)
        os.environ['DBUS_SYSTEM_BUS_ADDRESS'] = 'unix:path=%s' % (work / 'bus.sock')
        ganesha = Ganesha(lan, 'bakery', work / 'ganesha')
        ganesha.dir.mkdir()
        ganesha.write_config()
        with open(ganesha.config, 'a', encoding='utf-8') as config:
            config.write('EXPORT { Export_Id = 4; Path = %s; Pseudo = %s; FSAL { Name = VFS; } Protocols = 3, 4; '
                         'SecType = sys; Squash = No_Root_Squash; CLIENT { Clients = %s; Access_Type = RW; } }\n'
                         % (roots / 'mnt' / '7e570004', roots / 'mnt' / '7e570004', HOSTS['good']))
        ganesha.start()
        deadline = time.monotonic() + 20
        while run(['busctl', 'status', 'org.ganesha.nfsd'], check=False).returncode != 0:
            assert time.monotonic() < deadline, 'Ganesha is not on the bus: %s' % ganesha.log_text()[-2000:]
            time.sleep(0.2)
        yield {'lan': lan, 'work': work, 'roots': roots, 'started': started, 'key': work / 'good-key'}
    finally:
        if ganesha is not None:
            ganesha.close()
        started.close()
        for point in sorted(mounts_below(roots), key=len, reverse=True):
            subprocess.run(['umount', point], check=False)
        lan.close()
        if saved_bus is None:
            os.environ.pop('DBUS_SYSTEM_BUS_ADDRESS', None)
        else:
            os.environ['DBUS_SYSTEM_BUS_ADDRESS'] = saved_bus
        shutil.rmtree(work, ignore_errors=True)


# What bakeform records of a root that has all a netboot may need (status shows nothing more for it).
NOTHING_MISSING = {'version': 1, 'mount_nfs': True, 'cloud_init': True, 'network_manager': False, 'dhcpcd': True,
                   'netplan': False, 'packages': {}, 'initramfs': {'generator': None, 'nfs': None, 'tool': None,
                                                                   'files': []}}


def store_generations(store, name, numbers, current):
    """A bakeform of store format 3 laid out by generations.Bakeform: each generation's boot set, manifest and
    images (the images empty: nothing here reads them), and its index. The Bakeform."""
    bakeform = generations.Bakeform(str(store), name)
    index = dict(generations.new_index(name), current=current, next=max(numbers) + 1)
    for number in numbers:
        os.makedirs(bakeform.boot_dir(number))
        for file, size in BOOT_SET.items():
            Path(bakeform.boot_dir(number), file).write_bytes(os.urandom(size))
        manifest = {'format': 3, 'name': name, 'bakeform': name, 'generation': number, 'sha256': '%064x' % number,
                    'origin': {'kind': 'image'}, 'capabilities': NOTHING_MISSING}
        Path(bakeform.manifest_path(number)).write_text(json.dumps(manifest))
        Path(bakeform.root_image(number)).write_bytes(b'')
        Path(bakeform.boot_image(number)).write_bytes(b'')
        index['generations'][str(number)] = generations.entry(manifest)
    generations.write_index(bakeform, index)
    return bakeform


def pisim_run(lan, ns, *args):
    proc = run(lan.exec_argv(ns, [sys.executable, '-m', 'lab.pisim', *args, '--json']), check=False, timeout=180)
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope='module')
def booted(bakery):
    """The three Pis boot as far as each can; pi-good's "running system" (dropbear) answers afterwards."""
    lan, roots = bakery['lan'], bakery['roots']
    ns, model, serial, mac, mode = PIS['pi-good']
    rc, good = pisim_run(lan, ns, 'boot', '--model', str(model), '--serial', serial, '--mac', mac, '--prefix', mode,
                         '--dhcp', 'eth0', '--dhcp-timeout', '3', '--nfs',
                         '%s:%s' % (BAKERY, roots / 'mnt' / serial))
    assert rc == 0 and good['ok'], json.dumps(good, indent=1)[-3000:]
    bakery['started'].start(lan.exec_argv(ns, ['dropbear', '-F', '-E', '-s', '-r', str(bakery['key']),
                                               '-p', '%s:22' % HOSTS[ns], '-P', str(bakery['work'] / 'dropbear.pid')]),
                            ready=lambda: listening(lan, ns, 'sport = :22'))
    ns, model, serial, mac, mode = PIS['pi-noexport']
    rc, refused = pisim_run(lan, ns, 'boot', '--model', str(model), '--serial', serial, '--mac', mac, '--prefix',
                            mode, '--dhcp', 'eth0', '--dhcp-timeout', '3', '--nfs',
                            '%s:%s' % (BAKERY, roots / 'mnt' / serial))
    assert rc == 1 and refused['dhcp']['ok'] and all(f['ok'] for f in refused['files']), refused
    assert not refused['nfs']['ok'] and 'MNT3ERR_ACCES' in refused['nfs']['error'], refused['nfs']
    ns, model, serial, mac, _mode = PIS['pi-dhcponly']
    rc, offers = pisim_run(lan, ns, 'dhcp', '--iface', 'eth0', '--model', str(model), '--serial', serial, '--mac', mac,
                           '--timeout', '3')
    assert rc == 0 and any(o['pxe_menu'] == 'Raspberry Pi Boot' for o in offers['offers']), offers
    time.sleep(max(LIMITS['dhcp'], LIMITS['nfs']) + 1)  # past the limits: the stalled ones count as stalled
    return {'good': good, 'refused': refused}


def pis_argument():
    return [{'name': name, 'serial': serial, 'mac': mac, 'ip': HOSTS[ns],
             'prefix': pisim.tftp_prefix(mode, serial, mac)} for name, (ns, _m, serial, mac, mode) in PIS.items()]


def pi_status(bakery, **extra):
    """The module, as Ansible runs it on the bakery: a process in the bakery's namespace."""
    work = bakery['work']
    args = dict({'pis': pis_argument(), 'roots_dir': str(bakery['roots']), 'disks_dir': str(work / 'disks'),
                 'store': str(work / 'bakeforms'), 'map_path': str(work / 'map.json'),
                 'events_path': str(work / 'events.jsonl'), 'dhcp_log_path': str(work / 'dnsmasq.log'),
                 'watch_state': str(work / 'watch' / 'state.json'), 'limits': LIMITS, 'ssh_timeout': 3}, **extra)
    ensure_importable()
    proc = run(bakery['lan'].exec_argv('bakery', module_argv('pi_status', args)), check=False, timeout=120)
    result = json.loads(proc.stdout)
    assert not result.get('failed'), result
    return {pi['name']: pi for pi in result['pis']}, result


def test_each_pi_stops_where_its_boot_stopped(bakery, booted):
    pis, result = pi_status(bakery)
    assert result['sources']['nfs'].startswith('asked NFS-Ganesha'), result['sources']
    assert result['sources']['dhcp'].startswith('read ') and result['sources']['ssh'].startswith('asked 3 address')
    good = pis['pi-good']
    assert (good['up'], good['boot']['state'], good['boot']['stage']) == ('yes', 'running', 'running'), good
    assert good['boot']['dhcp']['answers'] >= 1 and good['boot']['dhcp']['mac'] == PIS['pi-good'][3]
    assert good['boot']['dhcp']['client_id'].startswith('00:52:50:69:34')  # RPi4, as the bootloader sent it
    assert good['boot']['tftp']['kernel'] == 'kernel8.img' and good['boot']['tftp']['errors'] == 0
    assert good['boot']['times']['nfs_last'] >= good['boot']['times']['tftp']
    assert 0 <= good['boot']['seconds']['dhcp_to_tftp'] < 10
    assert good['root']['usage']['size'] > 50 << 20  # statvfs of its own mount
    # Its generation from its marker; the bakeform's current one from the store: lab@2, so it is behind.
    assert (good['label'], good['current_generation'], good['behind']) == ('lab@1', 2, True), good
    lab = next(form for form in result['bakeforms'] if form['name'] == 'lab')
    assert (lab['layout'], lab['current_label']) == ('generations', 'lab@2'), lab
    assert [(gen['label'], sorted(user['hostname'] for user in gen['used_by'])) for gen in lab['generations']] == [
        ('lab@1', ['pi-good', 'pi-noexport']), ('lab@2', [])], lab
    refused = pis['pi-noexport']
    assert (refused['boot']['state'], refused['boot']['stage'], refused['boot']['stalled_at']) == (
        'stalled', 'tftp', 'nfs'), refused['boot']
    assert refused['boot']['hint'].startswith('fetched its kernel ') and 'never mounted its root (the NFS server ' \
        'refused its mount): check the export and `nfsroot=` in cmdline.txt' in refused['boot']['hint']
    assert refused['up'] == 'no' and refused['boot']['tftp']['kernel'] == 'kernel_2712.img'
    lone = pis['pi-dhcponly']
    assert (lone['boot']['state'], lone['boot']['stalled_at'], lone['boot']['tftp']['requests']) == (
        'stalled', 'dhcp', 0), lone['boot']
    assert 'never asked for a boot file' in lone['boot']['hint']


def test_the_status_playbook_says_so(bakery, booted, tmp_path):
    """ansible-playbook in the bakery's namespace (local connection), as on a bakery."""
    work = bakery['work']
    pis = {name: {'pi_serial': serial, 'pi_mac': mac, 'pi_ip': HOSTS[ns], 'pi_model': model, 'pi_tftp_prefix': mode}
           for name, (ns, model, serial, mac, mode) in PIS.items()}
    (tmp_path / 'hosts.yml').write_text(yaml.safe_dump({
        'bakery': {'hosts': {'lab-bakery': {
            # Root already, and no sudo: it would drop the private bus's address from the environment.
            'ansible_connection': 'local', 'ansible_become': False, 'ansible_python_interpreter': sys.executable,
            'pifleet_roots_dir': str(bakery['roots']), 'pifleet_disks_dir': str(work / 'disks'),
            'pifleet_bakeform_store': str(work / 'bakeforms'), 'pifleet_map_path': str(work / 'map.json'),
            'pifleet_events_path': str(work / 'events.jsonl'), 'pifleet_dhcp_log_path': str(work / 'dnsmasq.log'),
            'pifleet_boot_limits': LIMITS}}},
        'pis': {'hosts': pis}}))
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_NOCOLOR='1')
    argv = [str(Path(sys.executable).parent / 'ansible-playbook'), '-i', str(tmp_path / 'hosts.yml'),
            str(REPO / 'playbooks' / 'status.yml')]
    proc = subprocess.run(bakery['lan'].exec_argv('bakery', argv), capture_output=True, text=True, env=env,
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    at = proc.stdout.index('TASK [Show the fleet]')
    lines = json.JSONDecoder().raw_decode(proc.stdout, proc.stdout.index('=> {', at) + 3)[0]['msg']
    rows = {line.split()[0]: line for line in lines[1:4]}
    assert 'running' in rows['pi-good'] and '  yes  ' in rows['pi-good']
    assert 'stalled at nfs' in rows['pi-noexport'] and 'stalled at dhcp' in rows['pi-dhcponly']
    assert [line for line in lines if line.startswith('STALLED pi-noexport: fetched its kernel ')
            and 'never mounted its root' in line], lines
    assert [line for line in lines if line.startswith('STALLED pi-dhcponly: asked for DHCP ')], lines
    assert 'lab@1 (behind @2)' in rows['pi-good']
    assert 'BAKEFORM lab: current lab@2; generations lab@1 (2 Pis), lab@2 (current)' in lines, lines


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_watcher_metrics_pass_promtool_and_node_exporter_serves_them(bakery, booted):
    work = bakery['work']
    program = install(work / 'watch-lib')
    config = {'events': str(work / 'events.jsonl'), 'dhcp_log': str(work / 'dnsmasq.log'),
              'map': str(work / 'map.json'), 'roots_dir': str(bakery['roots']), 'disks_dir': str(work / 'disks'),
              'store': str(work / 'bakeforms'), 'textfile': str(work / 'textfile' / 'pifleet.prom'),
              'state': str(work / 'watch' / 'state.json'), 'limits': LIMITS, 'ssh_timeout': 3}
    (work / 'watch.json').write_text(json.dumps(config))
    proc = run(bakery['lan'].exec_argv('bakery', ['/usr/bin/python3', '-I', str(program), '--config',
                                                  str(work / 'watch.json')]), check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (work / 'textfile' / 'pifleet.prom').read_text()
    promtool = shutil.which('promtool')
    if promtool:
        checked = subprocess.run([promtool, 'check', 'metrics'], input=text, capture_output=True, text=True,
                                 check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    # The watcher saw pi-good's root in use and its SSH server answer: status now has those times.
    pis, _result = pi_status(bakery)
    assert pis['pi-good']['boot']['times']['running'] is not None
    assert pis['pi-good']['boot']['seconds']['to_running'] > 0
    if NODE_EXPORTER is None:
        pytest.skip('prometheus-node-exporter is not installed: promtool checked the file only')
    port = free_port()
    exporter = bakery['started'].start([NODE_EXPORTER, '--web.listen-address=127.0.0.1:%d' % port,
                                        '--collector.disable-defaults', '--collector.textfile',
                                        '--collector.textfile.directory=%s' % (work / 'textfile')],
                                       ready=lambda: answers(port))
    assert exporter.poll() is None
    with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port, timeout=10) as reply:
        scraped = reply.read().decode()
    wanted = ['pifleet_boots_total{pi="pi-good"} 1', 'pifleet_boot_stage{pi="pi-good",stage="running"} 1',
              'pifleet_boots_stalled_total{pi="pi-noexport",stage="nfs"} 1',
              'pifleet_boots_stalled_total{pi="pi-dhcponly",stage="dhcp"} 1',
              'pifleet_boot_stalled{pi="pi-dhcponly"} 1', 'pifleet_dhcp_answers_total{pi="pi-dhcponly"} 1',
              'pifleet_tftp_requests_total{outcome="ok",pi="pi-good"} 7',
              'pifleet_pi_generation{bakeform="lab",pi="pi-good"} 1', 'pifleet_pi_generation_behind{pi="pi-good"} 1',
              'pifleet_bakeform_current_generation{bakeform="lab"} 2', 'pifleet_bakeform_generations{bakeform="lab"} 2']
    assert [line for line in wanted if line not in scraped] == [], scraped[-3000:]
    assert 'node_textfile_scrape_error 0' in scraped
    served = [line for line in scraped.splitlines() if line.startswith('pifleet_tftp_bytes_total{pi="pi-good"}')]
    assert served and float(served[0].split()[-1]) == sum(f['bytes'] for f in booted['good']['files'] if f['ok'])


def answers(port):
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=1):
            return True
    except OSError:
        return False
