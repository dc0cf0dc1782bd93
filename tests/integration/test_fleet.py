# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet role from inventory to booting Pis (root), on this host with every path in a temp dir.

ansible-playbook applies ``pifleet.netboot.fleet`` for an inventory of three Pis (a Pi 3 by serial, a
Pi 4 with a disk, a Pi 5 by MAC prefix) and a factory image: check mode first (nothing written),
then for real, then again (changed=0). Then the result is booted for real: the TFTP hook serves the
fleet map the role wrote, NFS-Ganesha serves the exports file it wrote, and each Pi, simulated in its
own namespace on 10.99.32.0/24, fetches its boot set (its own cmdline.txt first) and reads its root
over NFS, while the outsider is refused. Finally a Pi leaves the inventory (its export goes, its
root stays) and, with pruning, its root goes too; and a broken inventory fails naming every problem.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from fstree import unmount_below
from powerfakes import PlugServer

from ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic import read_mounts
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.space import mount_of, short
from ansible_collections.pifleet.netboot.plugins.module_utils.store.generations import Bakeform
from lab.nfslab import Ganesha, Lan, missing_tools, nfs, nfs_url, run
from lab.piimage import build_image

REPO = Path(__file__).resolve().parents[2]
SERVICE = REPO / 'roles' / 'tftp_hook' / 'files' / 'pifleet_tftp_hook.py'
PISIM = ('-m', 'lab.pisim')  # run from the checkout (lab.ensure_importable puts it on PYTHONPATH)
BAKERY = '10.99.32.2'
HOSTS = {'srv': BAKERY, 'pi3': '10.99.32.50', 'pi4': '10.99.32.51', 'pi5': '10.99.32.52', 'out': '10.99.32.60'}
PIS = {
    'pi-03': {'pi_serial': '00b3b3b3', 'pi_model': 3, 'pi_ip': HOSTS['pi3']},
    'pi-04': {'pi_serial': '100000004a4a4a4a', 'pi_model': 4, 'pi_ip': HOSTS['pi4'],
              'pi_disks': [{'name': 'data', 'size': '16M', 'fstype': 'ext4'}], 'pi_config_txt': ['dtparam=audio=off'],
              'pi_cmdline_extra': 'quiet'},
    'pi-05': {'pi_serial': '5c5c5c5c', 'pi_mac': '2c:cf:67:5c:5c:5c', 'pi_tftp_prefix': 'mac', 'pi_model': 5,
              'pi_ip': HOSTS['pi5']},
}
MISSING = missing_tools(('ip', 'unshare', 'ganesha.nfsd', 'nfs-ls', 'ssh-keygen'))
# The reimages here wait for a Pi that never answers (its address is on the test's LAN, which this host cannot
# reach: each look waits out its own timeout) and power-cycle fake plugs: a look every second, a plug off for 0.5 s.
QUICK = {'pifleet_wait_interval': 1, 'pifleet_power_cycle_delay': 0.5}
# The reimage that times its wait for pi-04: its deadline and the seconds between two looks (long enough that a wait
# of about twice the deadline shows above the slack a loaded machine needs), and where each task's seconds come from.
WAIT, EVERY = 12, 2
CALLBACKS = REPO / 'bench' / 'callback_plugins'  # bench_times

pytestmark = pytest.mark.skipif(bool(MISSING), reason='missing %s' % ', '.join(MISSING))


def playbook(tmp, pis, bakery_vars=None, site=False, **extra):
    """Inventory + playbook applying the fleet role to this host, everything under ``tmp``.

    ``site``: the play is pifleet.netboot.site, so the fleet settings go into the bakery's variables.
    """
    image = tmp / 'raspios.img.xz'
    fleet = {
        'fleet_store': str(tmp / 'srv/bakeforms'), 'fleet_roots_dir': str(tmp / 'srv/roots'),
        'fleet_disks_dir': str(tmp / 'srv/disks'), 'fleet_boot_dir': str(tmp / 'srv/pis'),
        'fleet_map_path': str(tmp / 'map.json'), 'fleet_nfs_server': BAKERY, 'fleet_hook_service': '',
        'fleet_nfs_backend': 'ganesha', 'fleet_nfs_ganesha_config': str(tmp / 'ganesha/ganesha.conf'),
        'fleet_nfs_exports_file': str(tmp / 'ganesha/pifleet.conf'), 'fleet_nfs_reload': False,
        'fleet_clone_method': 'copy', 'fleet_units_dir': str(tmp / 'units'),
        'fleet_allow_root_filesystem': True,  # the test's temp dirs may lie on /
        'fleet_host_ca': str(tmp / 'ssh/host_ca'), 'fleet_known_hosts': str(tmp / 'known_hosts'),
        'fleet_bakeform_poll': 1,  # a bakeform that ingests runs async; the test's small image takes seconds
    }
    fleet.update(extra)
    host = dict({'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}, **(bakery_vars or {}))
    if site:
        host.update(fleet, ansible_become=False)  # root already; there is no sudo here
    inventory = {'bakery': {'hosts': {'lab-bakery': host},
                            'vars': {'pifleet_bakeforms': [{'name': 'raspios', 'src': str(image)}]}},
                 'pis': {'hosts': pis}}
    (tmp / 'hosts.yml').write_text(yaml.safe_dump(inventory))
    play = ([{'ansible.builtin.import_playbook': 'pifleet.netboot.site'}] if site else
            [{'name': 'Fleet', 'hosts': 'bakery', 'gather_facts': False,
              'roles': [{'role': 'pifleet.netboot.fleet', 'vars': fleet}]}])
    (tmp / 'play.yml').write_text(yaml.safe_dump(play))


def ansible(tmp, *args, host='lab-bakery', times=None):
    """(rc, recap counters of ``host``, output); with ``times`` (a path), seconds per task written there as JSON."""
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_NOCOLOR='1')
    if times:
        env.update(ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS), ANSIBLE_CALLBACKS_ENABLED='bench_times',
                   BENCH_TIMES_FILE=str(times))
    proc = subprocess.run([str(Path(sys.executable).parent / 'ansible-playbook'), '-i', str(tmp / 'hosts.yml'),
                           str(tmp / 'play.yml'), *args], capture_output=True, text=True, env=env, check=False,
                          timeout=600)
    output = proc.stdout + proc.stderr
    recap = re.search(r'^%s\s+:\s+(.*)$' % re.escape(host), proc.stdout, re.M)
    assert recap, output[-3000:]
    counters = {key: int(value) for key, value in re.findall(r'(\w+)=(\d+)', recap.group(1))}
    return proc.returncode, counters, output


@pytest.fixture(scope='module')
def bakery(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('fleet')
    tmp.chmod(0o755)  # the hook may run as another user elsewhere; here: keep paths traversable
    # Trixie-like: cloud-init beside nfs-common (pi_root refuses cloud-init settings on an image without it).
    build_image(tmp / 'raspios.img.xz', seed=7, models=(3, 4, 5), packages=('nfs-common', 'cloud-init'))
    lan = Lan('pffleet', HOSTS)
    server = Ganesha(lan, 'srv', tmp / 'ganesha')
    try:
        lan.start()
        server.dir.mkdir()
        server.write_config()
        yield tmp, lan, server
    finally:
        server.close()
        lan.close()
        unmount_below(tmp)  # each Pi's root is a mount of its own


def test_inventory_to_booting_pis(bakery):
    tmp, lan, server = bakery
    playbook(tmp, PIS)
    rc, checked, output = ansible(tmp, '--check', '--diff')
    assert rc == 0, output[-4000:]
    assert checked['changed'] > 0 and not (tmp / 'srv/roots').exists() and not (tmp / 'map.json').exists()

    rc, applied, output = ansible(tmp)
    assert rc == 0, output[-4000:]
    assert applied['changed'] >= 5  # bakeform, roots, disks, exports, boot folders + map
    check_progress(tmp, output)
    rc, again, output = ansible(tmp)
    assert rc == 0 and again['changed'] == 0, output[-4000:]
    assert 'Pre-flight' not in output, output[-4000:]  # nothing to make: neither planned nor said
    assert 'ASYNC' not in output and 'new generation' not in output, output[-4000:]  # nothing ingested: no poll
    check_source_cleared(output)
    check_ssh_trust(tmp, output)

    fleet_map = json.loads((tmp / 'map.json').read_text())
    assert sorted(fleet_map['prefixes']) == ['00b3b3b3', '2c-cf-67-5c-5c-5c', '4a4a4a4a']
    cmdline = (tmp / 'srv/pis/4a4a4a4a/cmdline.txt').read_text()
    root = tmp / 'srv/roots/mnt/4a4a4a4a'
    assert 'root=/dev/nfs nfsroot=%s:%s,vers=3,noacl rw ip=dhcp rootwait network-config=disabled' % (
        BAKERY, root) in cmdline
    assert 'proto=' not in cmdline and cmdline.rstrip().endswith('quiet')
    assert 'dtparam=audio=off' in (tmp / 'srv/pis/4a4a4a4a/config.txt').read_text()
    assert (tmp / 'srv/disks/mnt/4a4a4a4a/data/disk.img').stat().st_size == 16 << 20

    # Boot it: the hook serves the role's map, Ganesha the role's exports.
    server.start()
    config = {'listen': [BAKERY], 'map': str(tmp / 'map.json'), 'roots': [str(tmp)],
              'events': str(tmp / 'events.jsonl')}
    (tmp / 'hook.json').write_text(json.dumps(config))
    hook = subprocess.Popen(lan.exec_argv('srv', [sys.executable, '-I', str(SERVICE), '--config',
                                                  str(tmp / 'hook.json')]), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not run(lan.exec_argv('srv', ['ss', '-Hlun', 'sport = :69']), check=False).stdout.strip():
            assert hook.poll() is None and time.monotonic() < deadline, hook.stderr.read() if hook.poll() else 'slow'
            time.sleep(0.1)
        boot = Bakeform(str(tmp / 'srv/bakeforms'), 'raspios').boot_dir(1)  # the image is its first generation
        for name, host in (('pi-03', 'pi3'), ('pi-04', 'pi4'), ('pi-05', 'pi5')):
            pi = PIS[name]
            serial = pi['pi_serial'][-8:]
            prefix = fleet_map and next(p for p, e in fleet_map['prefixes'].items() if e['name'] == name)
            argv = [sys.executable, *PISIM, 'boot', '--model', str(pi['pi_model']), '--serial', serial,
                    '--server', BAKERY, '--prefix', 'mac' if prefix.count('-') == 5 else 'serial', '--json',
                    '--expect-dir', str(tmp / 'srv/pis' / prefix), '--expect-dir', str(boot),
                    '--nfs', '%s:%s' % (BAKERY, tmp / 'srv/roots/mnt' / serial)]
            if 'pi_mac' in pi:
                argv += ['--mac', pi['pi_mac']]
            proc = run(lan.exec_argv(host, argv), check=False, timeout=180)
            assert proc.returncode == 0, (name, proc.stdout[-3000:], proc.stderr[-2000:])
        refused = nfs(lan, 'out', ['nfs-ls', nfs_url(BAKERY, str(tmp / 'srv/roots/mnt/4a4a4a4a'), 3)])
        assert refused.returncode != 0
    finally:
        hook.send_signal(signal.SIGTERM)
        hook.wait(timeout=10)
    events = [json.loads(line) for line in (tmp / 'events.jsonl').read_text().splitlines()]
    assert {e['name'] for e in events if e['outcome'] == 'ok' and e['prefix']} == set(PIS)
    assert {e['path'] for e in events if e['outcome'] == 'ok' and not e['prefix']} == {'bootcode.bin'}  # the Pi 3


def check_source_cleared(output):
    """A re-run with the stored source: the role's raw look-up clears it, and no module run checks it again."""
    check = re.search(r'^TASK \[pifleet\.netboot\.fleet : Check which bakeforms[^\n]*\n(.*?)^TASK ', output,
                      re.M | re.S)
    assert check and 'skipping: [lab-bakery] => (item=raspios)' in check.group(1), output[-6000:]
    assert 'ok: [lab-bakery]' not in check.group(1), check.group(1)


def check_progress(tmp, output):
    """The first real run says what it does while it does long work. The ingest ran asynchronously (Ansible's line
    per poll while it runs). The pre-flight line before the roots are made: three new roots by copy
    (fleet_clone_method), pi-04's disks file system, and what they need at most (the golden root's size each, the
    disks file system's) on the test's file system, against its free space then; printed before pi_root makes them."""
    assert re.search(r'^ASYNC OK on lab-bakery: jid=', output, re.M), output[-4000:]
    assert 'raspios (new generation: a line every 1 s until it is made)' in output, output[-4000:]
    found = re.findall(r'"msg": "(Pre-flight: [^"]*)"', output)
    assert len(found) == 1, output[-4000:]
    line = found[0]
    golden = os.stat(Bakeform(str(tmp / 'srv/bakeforms'), 'raspios').root_image(1)).st_size
    disks = os.stat(tmp / 'srv/disks/4a4a4a4a.img').st_size
    mount, fstype = mount_of(str(tmp), read_mounts())
    assert line.startswith('Pre-flight: 3 roots to make (3 new) by copy; 1 disks file system (1 new). %s (%s): '
                           'they need %s at most (their full sizes); ' % (mount, fstype, short(3 * golden + disks))), \
        line
    free = re.search(r'allowed; ([0-9.]+) (MiB|GiB|TiB) free now$', line)
    assert free, line
    vfs = os.statvfs(str(tmp))
    now = vfs.f_bavail * vfs.f_frsize  # the roots are copies: what they hold came out of the free space since
    said = float(free.group(1)) * 1024 ** {'MiB': 2, 'GiB': 3, 'TiB': 4}[free.group(2)]
    # The test's file system is shared (make test's other lane makes and frees GiBs on it at any moment): the
    # number must be this file system's free space, not its size nor another's, give or take what others did.
    others = 3 * 2 ** 30
    assert now - others < said < now + 3 * golden + disks + others, (line, now)
    assert output.index('TASK [pifleet.netboot.fleet : Say what this run makes]') < output.index(
        "TASK [pifleet.netboot.fleet : Clone, fix or rebuild the Pis' roots]")


def check_ssh_trust(tmp, output):
    """The fleet's host CA on the bakery (root's alone, never in the output) and the controller's known_hosts."""
    ca = tmp / 'ssh/host_ca'
    assert ca.stat().st_mode & 0o777 == 0o600 and ca.parent.stat().st_mode & 0o777 == 0o700
    private = ca.read_text()
    body = ''.join(private.splitlines()[1:-1])
    assert 'PRIVATE KEY' in private and body[:40] not in output and body[-40:] not in output
    public = ' '.join((tmp / 'ssh/host_ca.pub').read_text().split()[:2])
    lines = (tmp / 'known_hosts').read_text().splitlines()
    assert lines[0] == '# BEGIN pifleet.netboot: the Pis of bakery lab-bakery' and lines[-1].startswith('# END')
    assert lines[1] == ('@cert-authority pi-03,10.99.32.50,pi-04,10.99.32.51,pi-05,10.99.32.52 %s pifleet host CA '
                        'of lab-bakery' % public)
    # The factory image's sshd has no sshd_config.d: no certificate, so plain lines with each root's own keys.
    expected = []
    for name, serial, ip in (('pi-03', '00b3b3b3', '10.99.32.50'), ('pi-04', '4a4a4a4a', '10.99.32.51'),
                             ('pi-05', '5c5c5c5c', '10.99.32.52')):
        marker = json.loads((tmp / 'srv/roots' / (serial + '.json')).read_text())
        assert marker['host_certificate'] is False and len(marker['host_keys']) == 2
        expected += ['%s,%s %s' % (name, ip, ' '.join(key.split()[:2])) for key in marker['host_keys']]
    assert lines[2:-1] == expected


def test_reimage_rebuilds_power_cycles_and_fails_a_pi_that_only_fetched_its_files(bakery):
    """Bug: reimage counted a Pi as booted once the hook had served it files, even one that panicked then;
    and it rebuilt roots with other arguments than site (root's keys went missing).

    site gives pi-04's root the keys set with the bakery; reimage must give the rebuilt root the same. Here
    pi-04 fetches its kernel after the power cycle (the hook's log says so) but no SSH server ever
    answers with its root's host key: the play fails naming it with its last boot event. The other
    half, a Pi that comes up, is the real boot in test_labdemo.py.
    """
    tmp, _lan, _server = bakery
    plugs = PlugServer()
    root = tmp / 'srv/roots/mnt/4a4a4a4a'
    keys = sorted(p.read_bytes() for p in (root / 'etc/ssh').glob('ssh_host_*_key'))
    events = tmp / 'events.jsonl'
    stop = threading.Event()

    def pi_fetches():  # what the hook logs while pi-04 fetches its files after the power cycle
        while not stop.wait(1):
            with events.open('a') as log:
                log.write(json.dumps({'time': datetime.now(timezone.utc).isoformat(), 'client': HOSTS['pi4'],
                                      'request': '4a4a4a4a/kernel8.img', 'prefix': '4a4a4a4a', 'path': 'kernel8.img',
                                      'name': 'pi-04', 'known': True, 'outcome': 'ok'}) + '\n')
    key = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPifleetReimageTestKey admin@lab'
    try:
        power = {'driver': 'http', 'api': 'shelly1', 'url': plugs.add('p4', 'shelly1', on=True)}
        pis = dict(PIS, **{'pi-04': dict(PIS['pi-04'], pi_power=power)})
        # The settings live with the bakery, as in the example inventory (a fleet_* name set there too).
        playbook(tmp, pis, site=True, fleet_ssh_authorized_keys=[key],
                 bakery_vars={'pifleet_bakeform_store': str(tmp / 'srv/bakeforms'),
                              'pifleet_roots_dir': str(tmp / 'srv/roots'), 'pifleet_events_path': str(events),
                              **QUICK})
        (tmp / 'play.yml').write_text(yaml.safe_dump([{'name': 'Fleet', 'hosts': 'bakery', 'gather_facts': False,
                                                       'roles': ['pifleet.netboot.fleet']}]))
        rc, _counters, output = ansible(tmp)
        assert rc == 0, output[-4000:]
        site_gave = {rel: (root / rel).read_text()
                     for rel in ('root/.ssh/authorized_keys', 'etc/fstab', 'etc/hostname', 'etc/hosts')}
        assert key in site_gave['root/.ssh/authorized_keys']
        (root / 'root/left-behind').write_text('not in the bakeform\n')
        (tmp / 'play.yml').write_text(yaml.safe_dump([{'ansible.builtin.import_playbook': 'pifleet.netboot.reimage'}]))
        feeder = threading.Thread(target=pi_fetches)
        feeder.start()
        rc, counters, output = ansible(tmp, '--limit', 'pi-04', '-e', 'pifleet_reimage_wait=%d' % WAIT, '-e',
                                       'pifleet_wait_interval=%d' % EVERY, host='pi-04', times=tmp / 'times.json')
    finally:
        stop.set()
        plugs.close()
    feeder.join()
    assert rc != 0 and counters['failed'] == 1, output[-4000:]
    assert ('pi-04 did not come up within %d s (no SSH server at %s answered with the host key of its rebuilt '
            'root); its last boot file and outcome since the reimage started: kernel8.img, outcome ok'
            % (WAIT, HOSTS['pi4'])) in output
    # A deadline: given up after WAIT seconds and at most about one look more (a look is cut to the time left), not
    # 2.5 to 3 times WAIT (each look waiting out its own EVERY seconds on top of the EVERY seconds between looks). The
    # bakery's one pi_wait call runs async: its start and the collection of its answer together are the wait.
    times = json.loads((tmp / 'times.json').read_text())
    waited = times["Reimage Pis: Wait until each Pi's SSH server answers with the host key of its root"] \
        + times["Reimage Pis: Collect each bakery's answer"]
    assert WAIT <= waited <= WAIT + 1 + 6, times  # 6: ansible-playbook on a busy 2-core machine; before, 2.5-3 times
    assert re.search(r'"msg": "Pre-flight: 1 root to make \(1 rebuilt\) by copy\. /\S* \(\w+\): they need ', output), \
        output[-4000:]
    assert not (root / 'root/left-behind').exists()  # a fresh clone of the bakeform
    assert sorted(p.read_bytes() for p in (root / 'etc/ssh').glob('ssh_host_*_key')) == keys  # its identity kept
    # Everything site gave the root, a reimage gives it too: the same plan, the same pi_root arguments.
    assert {rel: (root / rel).read_text() for rel in site_gave} == site_gave
    assert plugs.plugs['p4'].state == [True] and plugs.plugs['p4'].sets == 2  # off, then on


def test_a_pi_leaving_loses_its_export_and_with_prune_its_root(bakery):
    tmp, _lan, _server = bakery
    remaining = {name: PIS[name] for name in ('pi-03', 'pi-05')}
    playbook(tmp, remaining)
    rc, _counters, output = ansible(tmp)
    assert rc == 0, output[-4000:]
    exports = (tmp / 'ganesha/pifleet.conf').read_text()
    assert '4a4a4a4a' not in exports and '00b3b3b3' in exports
    assert (tmp / 'srv/roots/4a4a4a4a.json').exists() and os.path.ismount(tmp / 'srv/roots/mnt/4a4a4a4a')  # kept
    assert '4a4a4a4a' not in json.loads((tmp / 'map.json').read_text())['prefixes']
    playbook(tmp, remaining, fleet_prune=True)
    rc, _counters, output = ansible(tmp)
    assert rc == 0, output[-4000:]
    assert not (tmp / 'srv/roots/mnt/4a4a4a4a').exists() and not (tmp / 'srv/roots/4a4a4a4a.img').exists()
    assert not (tmp / 'srv/disks/4a4a4a4a/data').exists()
    assert (tmp / 'srv/roots/00b3b3b3.json').exists()


def test_a_broken_inventory_fails_up_front_naming_every_problem(bakery):
    tmp, _lan, _server = bakery
    before = sorted(str(p) for p in (tmp / 'srv').rglob('*'))
    broken = {'pi-03': PIS['pi-03'], 'pi-04': dict(PIS['pi-04'], pi_serial='00b3b3b3'),
              'pi-05': dict(PIS['pi-05'], pi_ip=None), 'pi-06': {'pi_model': 7, 'pi_ip': '10.99.32.56'}}
    playbook(tmp, {name: {k: v for k, v in pi.items() if v is not None} for name, pi in broken.items()})
    rc, counters, message = ansible(tmp)
    assert rc != 0 and counters['failed'] == 1
    assert "TASK [pifleet.netboot.fleet : Validate the inventory and plan this bakery's Pis]" in message
    assert 'TASK [pifleet.netboot.fleet : Register the bakeforms]' not in message
    for expected in ('serial 00b3b3b3 is used by pi-03, pi-04', 'pi-05: pi_ip is not set',
                     'pi-06: neither pi_serial nor pi_mac', "pi-06: pi_model 7"):
        assert expected in message, message
    assert sorted(str(p) for p in (tmp / 'srv').rglob('*')) == before


def test_site_prints_no_secret_and_needs_no_power_vault(bakery):
    """site at -vvv (its fleet part; the service roles do not read the Pis) with pi_power secrets in the inventory,
    one of them a vault variable nobody defined, as in the README's first command: no secret in the output.
    Check mode on the Pis whose roots exist (whatever ran before), so the exports it validates are there."""
    tmp, _lan, _server = bakery
    power = {'pi-03': {'driver': 'http', 'api': 'shelly2', 'url': 'http://127.0.0.1:9', 'password': 'Sw0rdf1sh-plug',
                       'username': '{{ vault_plug_user }}'},
             'pi-05': {'driver': 'snmp', 'host': '127.0.0.1', 'port_index': 1, 'community': 'Sw0rdf1sh-community'}}
    playbook(tmp, {name: dict(PIS[name], pi_power=device) for name, device in power.items()}, site=True)
    rc, _counters, output = ansible(tmp, '--tags', 'fleet', '--check', '--diff', '-vvv')
    assert rc == 0, output[-4000:]
    assert "TASK [pifleet.netboot.fleet : Validate the inventory and plan this bakery's Pis]" in output
    assert 'Sw0rdf1sh' not in output, [row for row in output.splitlines() if 'Sw0rdf1sh' in row][:5]


def test_cloud_init_user_data_never_reaches_the_output(bakery):
    """pi_cloud_init may hold passwords and tokens: at -vvv with --diff, site shows none of it, and still shows
    the rest (pi_root's result). The plan, a fact -v prints, holds none of it; pi_root's option is no_log, given the
    user data as JSON text so that only that text is hidden."""
    tmp, _lan, _server = bakery
    secret = {'write_files': [{'path': '/etc/pifleet-token', 'content': 'Sw0rdf1sh-cloud-token',
                               'permissions': '0600'}], 'packages': ['htop']}
    pis = {'pi-03': dict(PIS['pi-03'], pi_cloud_init=secret), 'pi-05': PIS['pi-05']}
    playbook(tmp, pis)
    rc, _counters, output = ansible(tmp, '--diff', '-vvv')
    assert rc == 0, output[-4000:]
    assert 'Sw0rdf1sh' not in output, [row for row in output.splitlines() if 'Sw0rdf1sh' in row][:5]
    assert '"cloud_init_from": "pi-03"' in output  # the plan says which Pi has user data, not what it is
    assert re.search(r'"serial": "00b3b3b3"', output) and 'htop' not in output  # pi_root's result is shown


def test_two_bakeries_each_make_and_reimage_their_own_pis(bakery):
    """site converges each bakery's own Pis with its own settings (pi-05 names bakery-b, pi-03 goes to the first
    bakery), and reimage rebuilds, power-cycles and waits for a Pi on its own bakery, never groups['bakery'][0]."""
    tmp, _lan, _server = bakery
    top = tmp / 'two'
    plugs = PlugServer()
    sides = {}
    for name in ('bakery-a', 'bakery-b'):
        base = top / name
        sides[name] = {
            'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable, 'ansible_become': False,
            'pifleet_bakeform_store': str(base / 'bakeforms'), 'pifleet_roots_dir': str(base / 'roots'),
            'pifleet_disks_dir': str(base / 'disks'), 'pifleet_boot_dir': str(base / 'pis'),
            'pifleet_map_path': str(base / 'map.json'), 'pifleet_events_path': str(base / 'events.jsonl'),
            'fleet_nfs_server': BAKERY, 'fleet_hook_service': '',
            'fleet_nfs_ganesha_config': str(base / 'ganesha.conf'),
            'fleet_nfs_exports_file': str(base / 'pifleet.conf'), 'fleet_nfs_reload': False,
            'fleet_clone_method': 'copy', 'fleet_units_dir': str(base / 'units'), 'fleet_packages': [],
            'pifleet_allow_root_filesystem': True,  # the test's temp dirs may lie on /
            'fleet_host_ca': str(base / 'ssh/host_ca'), 'fleet_known_hosts': str(top / 'known_hosts'),
            'pifleet_bakeform_poll': 1, **QUICK}  # each bakery ingests the small image in a second (async, polled)
    try:
        pis = {'pi-03': dict(PIS['pi-03']),
               'pi-05': dict(PIS['pi-05'], pi_bakery='bakery-b',
                             pi_power={'driver': 'http', 'api': 'shelly1', 'url': plugs.add('p5', 'shelly1', on=True)})}
        for name in sides:
            (top / name).mkdir(parents=True)
            (top / name / 'ganesha.conf').write_text('# the NFS server of %s\n' % name)
        (top / 'hosts.yml').write_text(yaml.safe_dump({
            'bakery': {'hosts': sides, 'vars': {'pifleet_bakeforms': [{'name': 'raspios',
                                                                      'src': str(tmp / 'raspios.img.xz')}]}},
            'pis': {'hosts': pis}}))
        (top / 'play.yml').write_text(yaml.safe_dump([{'ansible.builtin.import_playbook': 'pifleet.netboot.site'}]))
        rc, _counters, output = ansible(top, '--tags', 'fleet', host='bakery-b')
        assert rc == 0, output[-4000:]
        roots = {name: sorted(p.name for p in (top / name / 'roots').glob('*.json')) for name in sides}
        assert roots == {'bakery-a': ['00b3b3b3.json'], 'bakery-b': ['5c5c5c5c.json']}
        assert sorted(json.loads((top / 'bakery-b/map.json').read_text())['prefixes']) == ['2c-cf-67-5c-5c-5c']
        for name, serial in (('bakery-a', '00b3b3b3'), ('bakery-b', '5c5c5c5c')):
            (top / name / 'roots/mnt' / serial / 'root/left-behind').write_text('made after site\n')

        (top / 'play.yml').write_text(yaml.safe_dump([{'ansible.builtin.import_playbook': 'pifleet.netboot.reimage'}]))
        rc, counters, output = ansible(top, '--limit', 'pi-05', '-e', 'pifleet_reimage_wait=2', host='pi-05')
    finally:
        plugs.close()
    assert rc != 0 and counters['failed'] == 1, output[-4000:]
    assert 'pi-05 did not come up within 2 s' in output
    assert '[pi-05 -> bakery-b]' in output and '[pi-05 -> bakery-a]' not in output, output[-4000:]
    assert not (top / 'bakery-b/roots/mnt/5c5c5c5c/root/left-behind').exists()  # rebuilt on its own bakery
    assert (top / 'bakery-a/roots/mnt/00b3b3b3/root/left-behind').exists()  # the other bakery's Pi untouched
    assert plugs.plugs['p5'].sets == 2  # off, then on, by bakery-b


def test_a_pi_whose_image_lacks_what_its_settings_need_is_refused_alone(bakery):
    """site with boot_mount nfs for the bakery: pi-05's bakeform is Trixie Lite as first shipped (no nfs-common) and
    pi-04 asks for cloud-init on a Bookworm-like image without it. Each is refused alone, by name, with the package
    to add and the setting that avoids it, in the one summary at the end; pi-03 (an image with both) gets its root,
    export, boot folder and map entry; a second run says the same and changes nothing."""
    tmp, _lan, _server = bakery
    top = tmp / 'needs'
    top.mkdir()
    build_image(top / 'lite.img.xz', seed=71, models=(5,),
                packages=('cloud-init', 'network-manager', 'initramfs-tools'))
    build_image(top / 'bookworm.img.xz', seed=72, models=(4,), packages=('nfs-common', 'dhcpcd', 'initramfs-tools'))
    pis = {'pi-03': dict(PIS['pi-03'], pi_bakeform='raspios'),
           'pi-04': dict(PIS['pi-04'], pi_bakeform='bookworm', pi_cloud_init={'packages': ['htop']}),
           'pi-05': dict(PIS['pi-05'], pi_bakeform='lite')}
    playbook(top, pis, fleet_boot_mount='nfs', fleet_store=str(top / 'srv/bakeforms'),
             fleet_roots_dir=str(top / 'srv/roots'), fleet_disks_dir=str(top / 'srv/disks'),
             fleet_boot_dir=str(top / 'srv/pis'), fleet_map_path=str(top / 'map.json'),
             fleet_nfs_ganesha_config=str(top / 'ganesha/ganesha.conf'),
             fleet_nfs_exports_file=str(top / 'ganesha/pifleet.conf'), fleet_units_dir=str(top / 'units'),
             fleet_host_ca=str(top / 'ssh/host_ca'), fleet_known_hosts=str(top / 'known_hosts'))
    (top / 'ganesha').mkdir()
    (top / 'ganesha/ganesha.conf').write_text('# the NFS server\n')
    inventory = yaml.safe_load((top / 'hosts.yml').read_text())
    inventory['bakery']['vars']['pifleet_bakeforms'] = [
        {'name': 'raspios', 'src': str(tmp / 'raspios.img.xz')}, {'name': 'lite', 'src': str(top / 'lite.img.xz')},
        {'name': 'bookworm', 'src': str(top / 'bookworm.img.xz')}]
    (top / 'hosts.yml').write_text(yaml.safe_dump(inventory))
    try:
        runs = [ansible(top), ansible(top)]
        fstab = top / 'srv/roots/mnt/00b3b3b3/etc/fstab'
        fstab = fstab.read_text() if fstab.exists() else ''
    finally:
        unmount_below(top)
    for rc, counters, output in runs:
        assert rc != 0 and counters['failed'] == 1, output[-4000:]
        assert '2 Pi(s) failed, every other Pi was converged' in output, output[-4000:]
        assert re.search(r'pi-05 \(serial 5c5c5c5c\) failed at roots: root of Pi 5c5c5c5c: the image of bakeform '
                         r'lite@1 [^\n]*nfs-common[^\n]*pifleet_boot_mount', output), output[-4000:]
        assert re.search(r'pi-04 \(serial 4a4a4a4a\) failed at roots: root of Pi 4a4a4a4a: the image of bakeform '
                         r'bookworm@1 [^\n]*cloud-init', output), output[-4000:]
    assert runs[1][1]['changed'] == 0, runs[1][2][-4000:]
    assert sorted(p.name for p in (top / 'srv/roots').glob('*.json')) == ['00b3b3b3.json']
    assert sorted(json.loads((top / 'map.json').read_text())['prefixes']) == ['00b3b3b3']
    exports = (top / 'ganesha/pifleet.conf').read_text()
    assert '00b3b3b3' in exports and '5c5c5c5c' not in exports and '4a4a4a4a' not in exports
    assert ' /boot/firmware nfs ro' in fstab  # boot_mount nfs where the image can
