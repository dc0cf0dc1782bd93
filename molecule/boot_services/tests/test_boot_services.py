# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verify the converged bakery from inside (testinfra over ssh) and from the LAN (the host's namespaces).

Host-side checks run ``ip netns exec pfmol-<host> ...`` with facts from the lab's lab.json: pi1 boots
through the simulator (DHCP proxy answer, every file intact through the hook, NFS root readable),
a non-PXE client gets no proxy answer, the outsider is refused the export; then a run of the boot watcher
(``tftp_hook_watch: true``) counts pi1's boot in its textfile.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ['MOLECULE_INVENTORY_FILE']).get_hosts('all')

REPO = Path(__file__).resolve().parents[3]
EPHEMERAL = Path(os.environ['MOLECULE_EPHEMERAL_DIRECTORY'])
BOOTSET = EPHEMERAL / 'bootset'
BAKERY = '10.99.40.2'
SERIAL = '1234abcd'
HOOK_USER = 'pifleet-tftp'
HOOK_SERVICE = 'pifleet-tftp-hook'
EVENTS = '/var/log/pifleet/boot-events.jsonl'
WATCH = 'pifleet-boot-watch'
TEXTFILE_DIR = '/var/lib/prometheus/textfile'  # converge.yml's tftp_hook_watch_textfile_dir


@pytest.fixture(scope='module')
def lab():
    return json.loads((EPHEMERAL / 'lab' / 'lab.json').read_text())


def netns(lab, host, argv, timeout=120):
    # From the checkout, so that python -m lab.pisim finds the lab package.
    return subprocess.run(['ip', 'netns', 'exec', lab['namespaces'][host], *argv], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=timeout)


def show(host, unit, *props):
    """The unit's properties; a property systemd lists once per command (ExecReload=...) is joined, in order."""
    out = host.check_output('systemctl show %s %s' % (unit, ' '.join('-p ' + p for p in props)))
    found = {}
    for key, _sep, value in (line.partition('=') for line in out.splitlines() if '=' in line):
        found[key] = found[key] + ' ' + value if key in found else value
    return found


# ---------------------------------------------------------------- inside the bakery


@pytest.mark.parametrize('unit', ['dnsmasq', HOOK_SERVICE, 'nfs-ganesha', 'rpcbind'])
def test_service_active_and_enabled(host, unit):
    service = host.service(unit)
    assert service.is_running, host.run('systemctl status --no-pager %s' % unit).stdout
    assert service.is_enabled


def test_ganesha_needs_the_mount_points_and_withholds_what_is_not_mounted(host):
    """The nfs_server role's drop-in: the mount points' tmpfs required, the exports guard before start and reload."""
    props = show(host, 'nfs-ganesha', 'ExecStartPre', 'ExecReload', 'RequiresMountsFor')
    guard = '/usr/local/lib/pifleet/pifleet_exports_guard.py --exports /etc/ganesha/pifleet.conf'
    assert guard in props['ExecStartPre'], props
    assert guard in props['ExecReload'] and '-HUP' in props['ExecReload'], props
    assert props['ExecReload'].index(guard) < props['ExecReload'].index('-HUP'), props
    assert {'/srv/pifleet/roots/mnt', '/srv/pifleet/disks/mnt'} <= set(props['RequiresMountsFor'].split()), props
    assert host.run('systemctl reload nfs-ganesha').rc == 0 and host.service('nfs-ganesha').is_running


def test_mount_listens_on_the_fixed_port(host):
    ports = {line.split()[3] for line in host.check_output('rpcinfo -p').splitlines() if line.endswith('mountd')}
    assert ports == {'20048'}, ports


def test_hook_unit_hardening(host):
    props = show(host, HOOK_SERVICE, 'User', 'DynamicUser', 'CapabilityBoundingSet', 'AmbientCapabilities',
                 'ProtectSystem', 'ReadOnlyPaths', 'NoNewPrivileges', 'MainPID')
    assert props['User'] == HOOK_USER or props['DynamicUser'] == 'yes', props
    assert props['CapabilityBoundingSet'] == 'cap_net_bind_service', props
    assert props['AmbientCapabilities'] == 'cap_net_bind_service', props
    # Read-only boot folders: the whole OS read-only, or the pifleet tree named read-only.
    assert props['ProtectSystem'] == 'strict' or '/var/lib/pifleet' in props['ReadOnlyPaths'].split(), props
    assert props['NoNewPrivileges'] == 'yes', props
    user = host.check_output('ps -o user= -p %s' % props['MainPID']).strip()
    assert user != 'root', props


@pytest.mark.parametrize('path', ['/etc/dnsmasq.d/pifleet.conf', '/etc/pifleet/tftp-hook.json',
                                  '/etc/ganesha/pifleet.conf', '/usr/local/lib/pifleet/pifleet_tftp_hook.py',
                                  '/etc/systemd/system/%s.service' % HOOK_SERVICE, '/etc/pifleet/boot-watch.json',
                                  '/usr/local/lib/pifleet/boot-watch/pifleet_boot_watch.py',
                                  '/etc/systemd/system/%s.service' % WATCH, '/etc/systemd/system/%s.timer' % WATCH])
def test_config_owned_by_root_and_not_writable_by_others(host, path):
    config = host.file(path)
    assert config.is_file, path
    assert config.user == 'root', (path, config.user)
    assert config.mode & 0o022 == 0, (path, oct(config.mode))


def test_hook_config_readable_by_hook_user(host):
    assert host.run('runuser -u %s -- cat /etc/pifleet/tftp-hook.json' % HOOK_USER).rc == 0


def test_dnsmasq_config_is_proxy_without_dns_or_tftp(host):
    lines = host.file('/etc/dnsmasq.d/pifleet.conf').content_string.splitlines()
    assert 'port=0' in lines
    assert not [line for line in lines if line.startswith('enable-tftp')]
    assert [line for line in lines if line.startswith('dhcp-range=') and 'proxy' in line.split(',')], lines


def test_event_log_dir_writable_by_hook_only(host):
    logdir = host.file('/var/log/pifleet')
    assert logdir.is_directory
    assert logdir.user == HOOK_USER, logdir.user
    assert logdir.mode & 0o002 == 0, oct(logdir.mode)


@pytest.mark.parametrize('top', ['/var/lib/pifleet', '/etc/pifleet'])
def test_nothing_world_writable(host, top):
    found = host.check_output('find %s -perm -0002 ! -type l' % top)
    assert found == '', found


def test_dnsmasq_serves_no_dns(host):
    assert host.check_output("ss -Hlnu 'sport = :53'") == ''
    assert host.check_output("ss -Hlnt 'sport = :53'") == ''


def test_mount_is_on_the_pinned_port_and_nothing_else_is_registered(host):
    """The firewall of the README can name every NFS port: MOUNT on nfs_server_mount_port, no NLM, no RQUOTA."""
    table = host.check_output('rpcinfo -p 127.0.0.1')
    names = {(line.split()[4], line.split()[2], int(line.split()[3])) for line in table.splitlines()[1:]}
    assert ('mountd', 'tcp', 20048) in names and ('nfs', 'tcp', 2049) in names, table
    # No NLM and no RQUOTA from the server. rpc.statd ("status", NLM's peer monitor) comes with Debian's
    # nfs-common on the bakery, not with Ganesha; the Pis mount with nolock and never talk to it.
    assert not {name for name, _proto, _port in names} & {'nlockmgr', 'rquotad'}, table


def test_udp_69_bound_by_hook_user(host):
    sockets = host.check_output("ss -Hlnup 'sport = :69'")
    assert '%s:69' % BAKERY in sockets, sockets
    pids = {int(part.split('=')[1]) for part in sockets.replace(',', ' ').split() if part.startswith('pid=')}
    assert pids, sockets
    users = {host.check_output('ps -o user= -p %d' % pid).strip() for pid in pids}
    assert users == {HOOK_USER}, (sockets, users)
    assert 'dnsmasq' not in sockets


# ---------------------------------------------------------------- from the LAN


@pytest.fixture(scope='module')
def boot(lab):
    """pi1 boots once through the simulator; several tests read its report and the events it left."""
    argv = [sys.executable, '-m', 'lab.pisim', 'boot', '--model', '4', '--serial', SERIAL,
            '--mac', lab['pis']['pi1']['mac'], '--dhcp', 'eth0',
            '--expect-dir', str(BOOTSET / 'pis/pi1'), '--expect-dir', str(BOOTSET / 'demo/boot'),
            '--nfs', '%s:/srv/pifleet/roots/pi1' % BAKERY, '--json']
    proc = netns(lab, 'pi1', argv, timeout=300)
    return proc


def offers(report):
    """The DHCP offers wherever the simulator's report keeps them."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if 'siaddr' in node:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(report)
    return found


def test_pi1_boots_through_the_bakery(boot):
    assert boot.returncode == 0, boot.stdout + boot.stderr
    report = json.loads(boot.stdout)
    proxy = [o for o in offers(report) if o.get('pxe_menu') == 'Raspberry Pi Boot']
    assert proxy, report
    assert {o['siaddr'] for o in proxy} == {BAKERY}, proxy
    files = report['files']
    assert files and all(f['ok'] for f in files if f.get('bytes')), files
    requested = {f['request'] for f in files if f['ok']}
    for name in ('start4.elf', 'fixup4.dat', 'config.txt', 'bcm2711-rpi-4-b.dtb', 'cmdline.txt', 'kernel8.img'):
        assert '%s/%s' % (SERIAL, name) in requested, (name, files)


def test_boot_files_on_bakery_match_host_copies(host):
    for rel, remote in (('demo/boot/kernel8.img', '/var/lib/pifleet/bakeforms/demo/boot/kernel8.img'),
                        ('pis/pi1/cmdline.txt', '/var/lib/pifleet/tftp/pis/pi1/cmdline.txt')):
        assert host.file(remote).sha256sum == hashlib.sha256((BOOTSET / rel).read_bytes()).hexdigest(), rel


def test_events_logged_for_pi1(host, boot, lab):
    assert boot.returncode == 0, boot.stdout + boot.stderr
    events = [json.loads(line) for line in host.file(EVENTS).content_string.splitlines() if line.strip()]
    pinned = lab['pis']['pi1']['pinned']
    mine = [e for e in events if e['client'] == pinned and e['prefix'] == SERIAL]
    ok = {e['path'] for e in mine if e['outcome'] == 'ok'}
    assert {'start4.elf', 'fixup4.dat', 'config.txt', 'cmdline.txt', 'kernel8.img'} <= ok, mine
    assert any(e['outcome'] == 'probe' for e in mine), mine
    assert all(e['name'] == 'pi1' and e['known'] for e in mine), mine
    own = [e for e in mine if e['path'] == 'cmdline.txt' and e['outcome'] == 'ok']
    assert all(e['source'] == '/var/lib/pifleet/tftp/pis/pi1/cmdline.txt' for e in own), own


def test_non_pxe_discover_gets_no_proxy_answer(lab):
    # A laptop-like client: the router answers it (so the probe can hear answers), the bakery must not.
    proc = netns(lab, 'pi1', [sys.executable, '-m', 'lab.pisim', 'dhcp', '--iface', 'eth0',
                              '--mac', '02:00:00:00:40:99', '--no-pxe', '--json'], timeout=60)
    report = json.loads(proc.stdout)
    servers = {offer['server_id'] for offer in report['offers']}
    assert lab['addresses']['router'] in servers, report
    assert BAKERY not in servers, report
    assert not [offer for offer in report['offers'] if offer['pxe_menu']], report


def test_nfs_root_readable_by_pi1_only(lab, boot):
    url = 'nfs://%s/srv/pifleet/roots/pi1/etc/pifleet-marker' % BAKERY
    allowed = netns(lab, 'pi1', ['nfs-cat', url], timeout=60)
    assert allowed.returncode == 0 and allowed.stdout == 'pi1 root\n', allowed.stderr
    for version in ('', '?version=4'):
        refused = netns(lab, 'outsider', ['nfs-ls', 'nfs://%s/srv/pifleet/roots/pi1%s' % (BAKERY, version)],
                        timeout=60)
        assert refused.returncode != 0, (version, refused.stdout)


def test_dnsmasq_logs_the_pxe_answer_to_its_own_file(host, boot, lab):
    """The dnsmasq role's log file (pifleet_dhcp_log_path): the proxy's answer to pi1, with what pi1 sent."""
    log = host.file('/var/log/pifleet/dnsmasq.log')
    assert log.is_file and log.group == 'adm', (log.is_file, log.group)
    text = log.content_string
    assert 'PXE(' in text and '%s proxy' % lab['pis']['pi1']['mac'] in text, text[-2000:]
    assert 'vendor class: PXEClient:Arch:00000:UNDI:002001' in text
    assert host.file('/etc/logrotate.d/pifleet-dnsmasq').contains('systemctl kill --kill-whom=main --signal=USR2')


# ---------------------------------------------------------------- the boot watcher


def test_boot_watcher_timer_enabled_and_its_service_writes_the_textfile_dir_only(host):
    timer = host.service(WATCH + '.timer')
    assert timer.is_enabled and timer.is_running, host.run('systemctl status --no-pager %s.timer' % WATCH).stdout
    props = show(host, WATCH + '.service', 'Type', 'ExecStart', 'ReadWritePaths', 'ProtectSystem')
    assert props['Type'] == 'oneshot' and '--config /etc/pifleet/boot-watch.json' in props['ExecStart'], props
    assert props['ProtectSystem'] == 'strict' and TEXTFILE_DIR in props['ReadWritePaths'].split(), props


def test_a_run_of_the_boot_watcher_counts_pi1s_boot_in_its_textfile(host, boot):
    """The watcher's service started by hand after pi1 booted (a oneshot: start returns when the run ended). Started
    twice: the first start may join a run the timer began before the boot; the second's run began after it."""
    assert boot.returncode == 0, boot.stdout + boot.stderr
    began = int(host.check_output('date +%s'))
    for _run in range(2):
        started = host.run('systemctl start %s.service' % WATCH)
        assert started.rc == 0, host.run('journalctl -u %s.service --no-pager -n 30' % WATCH).stdout
    prom = host.file(TEXTFILE_DIR + '/pifleet.prom')
    assert prom.user == 'root' and prom.mode == 0o644, (prom.user, oct(prom.mode))
    assert host.check_output('ls -A %s' % TEXTFILE_DIR) == 'pifleet.prom'  # no scratch file left beside it
    samples = dict(line.rsplit(' ', 1) for line in prom.content_string.splitlines() if not line.startswith('#'))
    assert float(samples['pifleet_watch_last_run_timestamp_seconds']) >= began, samples
    assert int(samples['pifleet_boots_total{pi="pi1"}']) >= 1, samples
    assert int(samples['pifleet_tftp_requests_total{outcome="ok",pi="pi1"}']) >= 5, samples
    assert samples['pifleet_watch_source_up{source="tftp"}'] == samples['pifleet_watch_source_up{source="dhcp"}'] == '1'
