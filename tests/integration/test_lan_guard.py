# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The LAN guard on a namespace LAN: a device that takes Pi A's address from another MAC is refused; A is not.

The LAN (lab/nfslab.Lan, 10.99.43.0/24, namespaces pfgd-*): the bakery 10.99.43.2 runs NFS-Ganesha (MOUNT
on the fixed port the nfs_server role sets) exporting a file system to Pi A (10.99.43.50), the TFTP hook,
and a stand-in SSH listener on port 22; Pi B is 10.99.43.51, an outsider with an address of its own
10.99.43.60, and "evil", a device that configures Pi A's address on a NIC of its own (another MAC), up only
while A is down (as when it impersonates A). The guard's table is the one the lan_guard role loads: the
``pifleet.netboot.lan_guard`` filter over an inventory of A and B, loaded with nft in the bakery's namespace.

Without the guard, evil mounts A's export (the attack is real). With it, evil's NFS, rpcbind, MOUNT and
TFTP packets are dropped (counted by the table), while A mounts, reads and fetches over TFTP as before,
the outsider is untouched (refused by the export, not by the guard), and everyone still reaches port 22.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from attack import rawnfs
from fstree import unmount_below
from modrun import run_module

from ansible_collections.pifleet.netboot.plugins.filter.lan_guard import lan_guard
from lab.nfslab import Ganesha, Lan, missing_tools, nfs, nfs_url, run

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / 'roles' / 'tftp_hook' / 'files' / 'pifleet_tftp_hook.py'
HOSTS = {'srv': '10.99.43.2', 'pia': '10.99.43.50', 'pib': '10.99.43.51', 'out': '10.99.43.60',
         'evil': '10.99.43.50'}
SERVER = HOSTS['srv']
MOUNT_PORT = 20048
TCP, UDP = [111, 2049, MOUNT_PORT], [69, 111, 2049, MOUNT_PORT]
MISSING = missing_tools(('ip', 'nft', 'unshare', 'ganesha.nfsd', 'rpcbind', 'nfs-ls', 'atftp'))

pytestmark = pytest.mark.skipif(bool(MISSING), reason='missing %s' % ', '.join(MISSING))

PROBE = '''
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print('open')
except socket.timeout:
    print('timeout')
except OSError as exc:
    print('refused' if exc.errno == 111 else 'error %s' % exc.errno)
'''


def tcp(lan, host, port, timeout=3.0):
    """'open', 'timeout' (dropped) or 'refused' for a TCP connection from ``host`` to the bakery's ``port``."""
    return run(lan.exec_argv(host, [sys.executable, '-c', PROBE, SERVER, str(port), str(timeout)]),
               check=False).stdout.strip()


def tftp(lan, host, tmp, name='bootcode.bin', timeout=8):
    out = tmp / ('got-%s' % host)
    out.unlink(missing_ok=True)
    proc = run(lan.exec_argv(host, ['timeout', str(timeout), 'atftp', '--get', '-r', name, '-l', str(out), SERVER]),
               check=False, timeout=timeout + 5)
    return proc.returncode == 0 and out.is_file() and out.read_bytes() == (tmp / 'boot' / name).read_bytes()


def mac_of(lan, host):
    link = json.loads(run(['ip', '-n', lan.ns(host), '-j', 'link', 'show', 'eth0']).stdout)
    return link[0]['address']


def link(lan, host, state):
    run(['ip', '-n', lan.ns(host), 'link', 'set', 'eth0', state])
    run(['ip', '-n', lan.ns('srv'), 'neigh', 'flush', 'all'])  # the bakery learns who has the address now


def nft(lan, *args):
    return run(lan.exec_argv('srv', ['nft', *args]))


def drops(lan):
    """Packets the guard's drop rules counted."""
    text = nft(lan, 'list', 'table', 'inet', 'pifleet_lan_guard').stdout
    return sum(int(n) for n in re.findall(r'counter packets (\d+)', text))


@pytest.fixture(scope='module')
def lan_lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('guard')
    tmp.chmod(0o755)
    export = tmp / 'export-a'
    export.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'pfgd-export', str(export)], check=True)
    (export / 'hello').write_text('files of pi A\n')
    (tmp / 'boot').mkdir()
    (tmp / 'boot' / 'bootcode.bin').write_bytes(bytes(range(256)) * 200)
    (tmp / 'map.json').write_text(json.dumps({'version': 1, 'default': [str(tmp / 'boot')], 'prefixes': {}}))
    (tmp / 'hook.json').write_text(json.dumps({'listen': [SERVER], 'map': str(tmp / 'map.json'),
                                               'roots': [str(tmp)]}))
    lan = Lan('pfgd', HOSTS)
    server = Ganesha(lan, 'srv', tmp / 'ganesha')
    hook = ssh = None
    try:
        lan.start()
        run(['ip', '-n', lan.ns('evil'), 'link', 'set', 'eth0', 'down'])
        server.dir.mkdir()
        server.write_config()
        # The nfs_server role's fixed MOUNT port, so that the guard can name it.
        fixed = 'NFS_CORE_PARAM {\n    MNT_Port = %d;\n' % MOUNT_PORT
        server.config.write_text(server.config.read_text().replace('NFS_CORE_PARAM {\n', fixed))
        server.start()
        result = run_module('nfs_export', {
            'backend': 'ganesha', 'exports_file': str(tmp / 'pifleet.conf'), 'ganesha_config': str(server.config),
            'ganesha_pidfile': str(server.pidfile), 'lock_file': str(tmp / 'run' / 'lock'),  # a 0700 dir of its own
            'path': str(export), 'clients': [HOSTS['pia']]})
        assert result.get('failed') is not True, result
        hook = subprocess.Popen(lan.exec_argv('srv', [sys.executable, '-I', str(HOOK), '--config',
                                                      str(tmp / 'hook.json')]), stderr=subprocess.DEVNULL)
        ssh = subprocess.Popen(lan.exec_argv('srv', ['socat', 'TCP-LISTEN:22,fork,reuseaddr', 'EXEC:/bin/true']),
                               stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while nfs(lan, 'pia', ['nfs-ls', nfs_url(SERVER, str(export))]).returncode != 0 or \
                not run(lan.exec_argv('srv', ['ss', '-Hlun', 'sport = :69']), check=False).stdout.strip():
            assert time.monotonic() < deadline, 'the bakery never served'
            time.sleep(0.3)
        yield tmp, lan, export
    finally:
        for proc in (hook, ssh):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)
        server.close()
        lan.close()
        unmount_below(tmp)


def guard(lan, tmp):
    """The lan_guard role's table for an inventory of Pi A and Pi B, loaded in the bakery's namespace."""
    hostvars = {'pi-a': {'pi_ip': HOSTS['pia'], 'pi_mac': mac_of(lan, 'pia')},
                'pi-b': {'pi_ip': HOSTS['pib'], 'pi_mac': mac_of(lan, 'pib')}}
    ports = run(['cat', '/proc/sys/net/ipv4/ip_local_port_range']).stdout.split()
    made = lan_guard(['pi-a', 'pi-b'], hostvars, TCP, [*UDP, '-'.join(ports)])
    rules = tmp / 'lan-guard.nft'
    rules.write_text(made['ruleset'])
    nft(lan, '-f', str(rules))
    nft(lan, '-f', str(rules))  # loading it again replaces it whole (the role's reload)
    return made


def evil_mounts(lan, export):
    """Whether the device posing as A gets a handle for A's export (MOUNT through rpcbind): status or 'dropped'."""
    try:
        return rawnfs(lan, 'evil', 'handle3', {'server': SERVER, 'export': str(export)}, timeout=40)['status']
    except AssertionError:
        return 'dropped'


def test_a_device_taking_a_pis_address_is_refused_and_the_pi_is_not(lan_lab):
    tmp, lan, export = lan_lab
    # Without the guard the attack is real: evil, with A's address and its own MAC, mounts A's export.
    link(lan, 'pia', 'down')
    link(lan, 'evil', 'up')
    assert mac_of(lan, 'evil') != mac_of(lan, 'pia')
    assert evil_mounts(lan, export) == 0
    assert tftp(lan, 'evil', tmp)

    made = guard(lan, tmp)
    assert [(p['name'], p['ip']) for p in made['pairs']] == [('pi-a', HOSTS['pia']), ('pi-b', HOSTS['pib'])]
    assert drops(lan) == 0
    assert [tcp(lan, 'evil', port) for port in TCP] == ['timeout'] * 3
    assert evil_mounts(lan, export) == 'dropped'
    assert not tftp(lan, 'evil', tmp)
    assert tcp(lan, 'evil', 22) == 'open'  # never locked out of SSH
    counted = drops(lan)
    assert counted > 0

    # The Pi itself, from its own MAC: everything as before.
    link(lan, 'evil', 'down')
    link(lan, 'pia', 'up')
    assert [tcp(lan, 'pia', port) for port in TCP] == ['open'] * 3
    listing = nfs(lan, 'pia', ['nfs-cat', nfs_url(SERVER, str(export / 'hello'))])
    assert listing.returncode == 0 and listing.stdout == 'files of pi A\n'
    assert tftp(lan, 'pia', tmp) and tcp(lan, 'pia', 22) == 'open'
    # Another Pi and an outsider with addresses of their own: not the guard's business (the export refuses them).
    assert tcp(lan, 'out', 2049) == 'open' and tcp(lan, 'pib', 2049) == 'open'
    assert rawnfs(lan, 'out', 'handle3', {'server': SERVER, 'export': str(export)})['status'] == 13  # MNT3ERR_ACCES
    assert drops(lan) == counted
    nft(lan, 'delete', 'table', 'inet', 'pifleet_lan_guard')
