# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Pi bootloader simulator on a real LAN (root): a home router's DHCP, our proxy DHCP, dnsmasq's TFTP.

The LAN (lab/nfslab.Lan, 10.99.30.0/24, namespaces pfsim-*): the router 10.99.30.1 runs an
authoritative dnsmasq (range .100-.150); the bakery 10.99.30.2 runs dnsmasq as proxy DHCP with
"Raspberry Pi Boot" and its own TFTP as a stand-in for the hook service; one Pi namespace per model
starts without an address; an outsider 10.99.30.60 sends a plain DISCOVER and boots with a fixed
server. Every boot file is random bytes, so only a faithful transfer matches.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lab import pisim
from lab.nfslab import Lan, missing_tools, run

HOSTS = {'router': '10.99.30.1', 'bakery': '10.99.30.2', 'pi3': '10.99.30.50', 'pi4': '10.99.30.51',
         'pi5': '10.99.30.52', 'out': '10.99.30.60'}
PIS = ('pi3', 'pi4', 'pi5')
BAKERY = HOSTS['bakery']
RANGE = (ipaddress.ip_address('10.99.30.100'), ipaddress.ip_address('10.99.30.150'))
SERIALS = {3: '00b3b3b3', 4: '4a4a4a4a', 5: '5c5c5c5c'}
# Sizes keep lock-step transfers short but span many blocks, a partial last block and an exact multiple.
FILES = {
    3: {'start.elf': 300_001, 'fixup.dat': 7_168, 'config.txt': 120, 'bcm2710-rpi-3-b.dtb': 25_000,
        'cmdline.txt': 90, 'kernel8.img': 1_200_000},
    4: {'start4.elf': 400_000, 'fixup4.dat': 5_447, 'config.txt': 150, 'bcm2711-rpi-4-b.dtb': 52_000,
        'cmdline.txt': 100, 'kernel8.img': 1_500_003, 'initramfs8': 1_024_000},
    5: {'config.txt': 140, 'cmdline.txt': 110, 'kernel_2712.img': 1_600_017, 'bcm2712-rpi-5-b.dtb': 80_000},
}
TOOL = str(Path(pisim.__file__))
MISSING = missing_tools(('ip', 'dnsmasq'))

pytestmark = pytest.mark.skipif(bool(MISSING), reason='needs iproute2 and dnsmasq: missing %s' % ', '.join(MISSING))
pytest.importorskip('scapy')

ROUTER_CONF = """\
port=0
bind-interfaces
listen-address={router}
dhcp-authoritative
# Without it the router pings each candidate address for ~3 s before offering; a real Pi resends its
# DISCOVER, the simulator sends one, so the test router answers at once.
no-ping
dhcp-range=10.99.30.100,10.99.30.150,255.255.255.0,1h
dhcp-leasefile={work}/router.leases
log-dhcp
log-facility={work}/router.log
"""

BAKERY_CONF = """\
port=0
listen-address={bakery}
bind-interfaces
dhcp-range=10.99.30.0,proxy
pxe-service=0,"Raspberry Pi Boot"
dhcp-boot=bootcode.bin,,{bakery}
dhcp-leasefile={work}/bakery.leases
log-dhcp
log-facility={work}/bakery.log
enable-tftp
tftp-root={work}/tftp
"""


class Dnsmasq:
    """dnsmasq in the foreground in a namespace, stopped by its own PID."""

    def __init__(self, lan, host, work, conf):
        self.lan, self.host, self.work = lan, host, Path(work)
        self.conf = self.work / ('%s.conf' % host)
        self.conf.write_text(conf.format(router=HOSTS['router'], bakery=BAKERY, work=work))
        self.proc = None

    def start(self, timeout=15):
        argv = self.lan.exec_argv(self.host, ['dnsmasq', '--keep-in-foreground', '--conf-file=%s' % self.conf,
                                              '--pid-file=%s/%s.pid' % (self.work, self.host)])
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('dnsmasq in %s exited: %s' % (self.host, self.proc.stderr.read()))
            if run(self.lan.exec_argv(self.host, ['ss', '-Hlun', 'sport = :67']), check=False).stdout.strip():
                return self
            time.sleep(0.1)
        raise RuntimeError('dnsmasq in %s did not open port 67 in %ds' % (self.host, timeout))

    def log(self):
        path = self.work / ('%s.log' % self.host)
        return path.read_text(errors='replace') if path.exists() else ''

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ip netns exec` exec()s dnsmasq: this PID is dnsmasq
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def make_boot_set(tftp):
    """Random files: bootcode.bin at the root (the Pi 3 ROM), each model's set in its serial's folder."""
    tftp.mkdir(mode=0o755)
    (tftp / 'bootcode.bin').write_bytes(os.urandom(52_000))
    for model, files in FILES.items():
        folder = tftp / SERIALS[model]
        folder.mkdir(mode=0o755)
        for name, size in files.items():
            (folder / name).write_bytes(os.urandom(size))
    for path in tftp.rglob('*'):
        path.chmod(0o755 if path.is_dir() else 0o644)  # dnsmasq serves as an unprivileged user


@pytest.fixture(scope='module')
def lab():
    # Not tmp_path: pytest's base temp is 0700 and dnsmasq's TFTP drops root, so the tree must be world-readable.
    work = Path(tempfile.mkdtemp(prefix='pfsim-', dir='/tmp'))
    work.chmod(0o755)
    lan = Lan('pfsim', HOSTS)
    servers = []
    try:
        lan.start()
        for pi in PIS:  # a Pi starts with no address: DHCP gives it one
            run(['ip', '-n', lan.ns(pi), 'addr', 'flush', 'dev', 'eth0'])
        make_boot_set(work / 'tftp')
        for host, conf in (('router', ROUTER_CONF), ('bakery', BAKERY_CONF)):
            servers.append(Dnsmasq(lan, host, work, conf).start())
        yield lan, work, dict(zip(('router', 'bakery'), servers))
    finally:
        for server in servers:
            server.close()
        lan.close()
        shutil.rmtree(work, ignore_errors=True)


def pisim_cli(lan, host, *args, timeout=120):
    proc = run(lan.exec_argv(host, [sys.executable, TOOL, *args, '--json']), check=False, timeout=timeout)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        detail = (proc.returncode, proc.stdout, proc.stderr)
        raise AssertionError('pisim printed no JSON (rc %d): %s %s' % detail) from None


def ipv4_of(lan, host):
    out = run(['ip', '-n', lan.ns(host), '-4', '-o', 'addr', 'show', 'dev', 'eth0']).stdout.split()
    return out[3].split('/')[0] if len(out) > 3 else None


def test_pi_discover_gets_lease_and_pxe_answer(lab):
    lan, _work, _servers = lab
    rc, report = pisim_cli(lan, 'pi5', 'dhcp', '--iface', 'eth0', '--model', '5', '--serial', SERIALS[5],
                           '--timeout', '3')
    offers = report['offers']
    leases = [o for o in offers if o['yiaddr'] != '0.0.0.0']
    proxies = [o for o in offers if o['server_id'] == BAKERY]
    assert rc == 0 and report['mac'].startswith('2c:cf:67:')
    assert len(leases) == 1 and leases[0]['server_id'] == HOSTS['router'], offers
    assert RANGE[0] <= ipaddress.ip_address(leases[0]['yiaddr']) <= RANGE[1]
    assert len(proxies) == 1, offers
    assert proxies[0]['pxe_menu'] == 'Raspberry Pi Boot' and proxies[0]['siaddr'] == BAKERY
    assert proxies[0]['vendor_class'] == 'PXEClient' and proxies[0]['yiaddr'] == '0.0.0.0'


def test_plain_discover_gets_no_proxy_answer(lab):
    lan, _work, _servers = lab
    rc, report = pisim_cli(lan, 'out', 'dhcp', '--iface', 'eth0', '--no-pxe', '--mac', '02:00:00:00:00:60',
                           '--timeout', '3')
    offers = report['offers']
    assert rc == 0 and [o['server_id'] for o in offers] == [HOSTS['router']], offers  # the DISCOVER went out
    assert all(o['pxe_menu'] is None and o['vendor_class'] is None for o in offers)


@pytest.mark.parametrize('model', [3, 4, 5])
def test_boot_with_dhcp(lab, model):
    lan, work, servers = lab
    host, serial, tftp = 'pi%d' % model, SERIALS[model], work / 'tftp'
    assert ipv4_of(lan, host) is None
    rc, report = pisim_cli(lan, host, 'boot', '--model', str(model), '--serial', serial, '--dhcp', 'eth0',
                           '--dhcp-timeout', '3', '--expect-dir', str(tftp / serial), '--expect-dir', str(tftp))
    assert rc == 0 and report['ok'], json.dumps(report, indent=1)
    dhcp = report['dhcp']
    assert dhcp['server'] == BAKERY and dhcp['pxe_menu'] == 'Raspberry Pi Boot'
    assert ipv4_of(lan, host) == dhcp['address'] and RANGE[0] <= ipaddress.ip_address(dhcp['address']) <= RANGE[1]
    # Independent of pisim's own judgement: every file of the set arrived with the generated bytes.
    wanted = {'%s/%s' % (serial, n): tftp / serial / n for n in FILES[model]}
    if model == 3:
        wanted['bootcode.bin'] = tftp / 'bootcode.bin'
    got = {f['request']: f['sha256'] for f in report['files'] if f['sha256']}
    assert got == {r: hashlib.sha256(p.read_bytes()).hexdigest() for r, p in wanted.items()}
    if model != 5:
        probe = '%s/%s' % (serial, 'start.elf' if model == 3 else 'start4.elf')
        assert report['probes'][0]['request'] == probe and report['probes'][0]['ok']
    # dnsmasq saw the Pi's requests come from the leased address.
    assert 'to %s' % dhcp['address'] in servers['bakery'].log()


def test_boot_detects_a_corrupted_file(lab):
    lan, work, _servers = lab
    tftp, serial = work / 'tftp', SERIALS[4]
    expected = work / 'expected-pi4'
    shutil.copytree(tftp / serial, expected)
    kernel = bytearray((expected / 'kernel8.img').read_bytes())
    kernel[len(kernel) // 2] ^= 0xFF
    (expected / 'kernel8.img').write_bytes(bytes(kernel))
    rc, report = pisim_cli(lan, 'out', 'boot', '--model', '4', '--serial', serial, '--server', BAKERY,
                           '--blksize', '1468', '--expect-dir', str(expected))
    assert rc == 1 and not report['ok']
    assert [f['request'] for f in report['files'] if not f['ok']] == ['%s/kernel8.img' % serial]
    assert report['blksize'] == 1468
