# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The TFTP hook service on a LAN of namespaces (root): 20 simulated Pi 4s through loss, 100 at once.

The LAN (lab/nfslab.Lan, 10.99.31.0/24, namespaces pfhook-*): the bakery 10.99.31.2 runs the
service as the role installs it (``python3 -I pifleet_tftp_hook.py --config``); Pis from .100, or all
20 in one namespace behind one address, .99, as behind NAT (each Pi is then only a port). Every
host's link drops 5 % and duplicates 1 % of what it sends, so a transfer meets lost
DATA, lost ACKs, duplicate DATA, duplicate ACKs and duplicate requests. Each Pi checks every file's
bytes against the source (its own folder first, then the boot set), and the service's event log must
show every file served ``ok``.

Loss and duplication come from an nftables ``netdev`` egress chain (``numgen random`` drop and
``dup to``), the same effect as ``tc netem loss 5% duplicate 1%``: kernels without sch_netem (like
the CI machines') have nf_tables.

The storm: 100 Pi 4s, one address each, boot at once from a hook with two workers (a lab after a
power cut; the full-size storm of 200 is in bench/bench_storm.py), and none may fail.
"""

from __future__ import annotations

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

from lab.nfslab import Lan, missing_tools, run

REPO = Path(__file__).resolve().parents[2]
SERVICE = REPO / 'roles' / 'tftp_hook' / 'files' / 'pifleet_tftp_hook.py'
PISIM = ('-m', 'lab.pisim')  # run from the checkout (lab.ensure_importable puts it on PYTHONPATH)
BAKERY = '10.99.31.2'
PIS = {'pi%02d' % index: ('10.99.31.%d' % (100 + index), '%08x' % (0x7e570000 + index)) for index in range(20)}
# Small, so lock-step transfers through 5 % loss stay short; odd sizes end in a partial block.
BOOT_SET = {'start4.elf': 120_001, 'fixup4.dat': 5_447, 'bcm2711-rpi-4-b.dtb': 52_000, 'kernel8.img': 300_003,
            'initramfs8': 200_000, 'config.txt': 60}
MISSING = missing_tools(('ip', 'nft'))

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='needs root (network namespaces)'),
    pytest.mark.skipif(bool(MISSING), reason='needs iproute2 and nftables: missing %s' % ', '.join(MISSING)),
]


LOSSY = '''
table netdev pifleet_lossy {
  chain egress {
    type filter hook egress device "eth0" priority 0; policy accept;
    numgen random mod 100 < 5 drop
    numgen random mod 100 < 1 dup to "eth0"
  }
}
'''


NAT_ADDRESS = '10.99.31.99'


@pytest.fixture(params=['own-addresses', 'one-address'])
def lossy_lan(request):
    """The lossy LAN; ``lan.where[pi]`` is the namespace a Pi runs in, ``lan.address[pi]`` its address."""
    shared = request.param == 'one-address'
    hosts = {'bakery': BAKERY, 'nat': NAT_ADDRESS} if shared else {
        'bakery': BAKERY, **{name: address for name, (address, _serial) in PIS.items()}}
    lan = Lan('pfhook', hosts)
    lan.where = {name: 'nat' if shared else name for name in PIS}
    lan.address = {name: NAT_ADDRESS if shared else address for name, (address, _serial) in PIS.items()}
    try:
        lan.start()
        for name in hosts:
            subprocess.run(['ip', 'netns', 'exec', lan.ns(name), 'nft', '-f', '-'], input=LOSSY, text=True,
                           check=True)
        yield lan
    finally:
        lan.close()


def make_boot_tree(pis, bakery=BAKERY):
    # Not under pytest's 0700 base temp: the service may run as another user in other tests.
    top = Path(tempfile.mkdtemp(prefix='pfhook-'))
    top.chmod(0o755)
    boot = top / 'bakeforms' / 'lab' / 'boot'
    boot.mkdir(parents=True)
    for name, size in BOOT_SET.items():
        (boot / name).write_bytes(os.urandom(size))
    for _address, serial in pis.values():
        own = top / 'pis' / serial
        own.mkdir(parents=True)
        (own / 'cmdline.txt').write_text('root=/dev/nfs nfsroot=%s:/srv/pifleet/roots/%s,vers=3 rw ip=dhcp '
                                         'rootwait\n' % (bakery, serial))
    return top


@pytest.fixture
def boot_tree():
    top = make_boot_tree(PIS)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def start_service(lan, top, pis=PIS, bakery=BAKERY, **settings):
    fleet_map = {'version': 1, 'default': [str(top / 'bakeforms/lab/boot')],
                 'prefixes': {serial: {'name': name, 'dirs': [str(top / 'pis' / serial),
                                                              str(top / 'bakeforms/lab/boot')]}
                              for name, (_address, serial) in pis.items()}}
    (top / 'map.json').write_text(json.dumps(fleet_map))
    # A short retransmit timeout keeps 20 lossy boots within seconds; the logic is the same at 1 s. Many retries:
    # the loss costs a few, and the rest lets either side go without the CPU for seconds (make test runs this
    # lane niced beside the real boots' emulated CPUs) without a transfer being given up for it.
    config = {'listen': [bakery], 'map': str(top / 'map.json'), 'roots': [str(top)],
              'events': str(top / 'events.jsonl'), 'timeout': 0.2, 'retries': 40, **settings}
    (top / 'hook.json').write_text(json.dumps(config))
    python = '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable
    proc = subprocess.Popen(lan.exec_argv('bakery', [python, '-I', str(SERVICE), '--config', str(top / 'hook.json')]),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if run(lan.exec_argv('bakery', ['ss', '-Hlun', 'sport = :69']), check=False).stdout.strip():
            return proc
        time.sleep(0.1)
    proc.kill()
    raise AssertionError('the service did not bind UDP 69')


def stop_service(service):
    service.send_signal(signal.SIGTERM)
    try:
        service.wait(timeout=10)
    except subprocess.TimeoutExpired:
        service.kill()
        service.wait()
    return service.returncode


def test_twenty_pis_boot_through_loss_and_duplication(lossy_lan, boot_tree):
    service = start_service(lossy_lan, boot_tree)
    try:
        boots = {}
        for name, (_address, serial) in PIS.items():
            argv = [sys.executable, *PISIM, 'boot', '--model', '4', '--serial', serial, '--server', BAKERY,
                    '--timeout', '0.2', '--retries', '40', '--json',  # 8 s of silence: see start_service
                    '--expect-dir', str(boot_tree / 'pis' / serial),
                    '--expect-dir', str(boot_tree / 'bakeforms/lab/boot')]
            boots[name] = subprocess.Popen(lossy_lan.exec_argv(lossy_lan.where[name], argv), stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
        reports = {}
        for name, proc in boots.items():
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, '%s failed: %s %s' % (name, out[-2000:], err[-2000:])
            reports[name] = json.loads(out.strip().splitlines()[-1])
        assert service.poll() is None, 'the service died: %s' % service.stderr.read()
    finally:
        stop_service(service)
    assert service.returncode == 0
    expected = {'config.txt', 'start4.elf', 'fixup4.dat', 'bcm2711-rpi-4-b.dtb', 'cmdline.txt', 'kernel8.img',
                'initramfs8'}
    retransmits = 0
    for name, report in reports.items():
        assert report['ok'], report
        got = {f['request'].split('/', 1)[1] for f in report['files'] if f['ok']}
        assert got == expected, (name, got)
        retransmits += sum(f.get('retransmits', 0) for f in report['files'])
    assert retransmits > 0, 'netem lost nothing: the test did not test loss'
    events = [json.loads(line) for line in (boot_tree / 'events.jsonl').read_text().splitlines()]
    for name, (_address, serial) in PIS.items():
        address = lossy_lan.address[name]
        mine = [e for e in events if e['client'] == address and e['prefix'] == serial]
        served = {e['path'] for e in mine if e['outcome'] == 'ok'}
        # A lost final ACK is confirmed by the Pi's next request or its closed port; only after its very
        # last file (initramfs8) can both signs be lost too (the ICMP crosses the lossy link as well).
        assert expected - served <= {'initramfs8'}, (name, expected - served)
        assert all(e['outcome'] in ('ok', 'probe') for e in mine if e['path'] != 'initramfs8'), [
            (e['path'], e['outcome'], e['error']) for e in mine if e['outcome'] not in ('ok', 'probe')]
        assert all(e['name'] == name for e in mine)
    assert {e['client'] for e in events} == set(lossy_lan.address.values())


STORM_BAKERY = '10.99.32.2'
STORM = {'pi%03d' % index: ('10.99.32.%d' % (10 + index), '%08x' % (0x5707e000 + index)) for index in range(100)}


def test_a_hundred_pis_at_once_with_two_workers():
    """A power cut in a lab: every Pi boots at the same moment; two workers share the port; none may fail."""
    lan = Lan('pfhks', {'bakery': STORM_BAKERY, **{name: address for name, (address, _serial) in STORM.items()}})
    top = make_boot_tree(STORM, STORM_BAKERY)
    try:
        lan.start()
        service = start_service(lan, top, STORM, STORM_BAKERY, workers=2, timeout=1.0, retries=5)
        try:
            boots = {}
            for name, (_address, serial) in STORM.items():  # the Pi 4's own settings: 1 s, 5 retries
                argv = [sys.executable, *PISIM, 'boot', '--model', '4', '--serial', serial, '--server', STORM_BAKERY,
                        '--json', '--expect-dir', str(top / 'pis' / serial),
                        '--expect-dir', str(top / 'bakeforms/lab/boot')]
                boots[name] = subprocess.Popen(lan.exec_argv(name, argv), stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True)
            failed = {}
            for name, proc in boots.items():
                out, err = proc.communicate(timeout=300)
                report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {'ok': False}
                if proc.returncode or not report['ok']:
                    failed[name] = [(f['request'], f['error']) for f in report.get('files', []) + report.get(
                        'probes', []) if not f['ok']] or err[-500:]
            assert service.poll() is None, 'the service died: %s' % service.stderr.read()
        finally:
            assert stop_service(service) == 0
        assert failed == {}, '%d of %d Pis failed: %r' % (len(failed), len(STORM), failed)
        events = [json.loads(line) for line in (top / 'events.jsonl').read_text().splitlines()]
        by_client = {}
        for event in events:
            by_client.setdefault(event['client'], []).append(event)
        assert sorted(by_client) == sorted(address for address, _serial in STORM.values())
        for name, (address, serial) in STORM.items():
            mine = by_client[address]
            # 8 files and 3 tsize probes (the optional initramfs is asked for when expected), one line each
            assert sorted(e['outcome'] for e in mine) == ['ok'] * 8 + ['probe'] * 3, (name, mine)
            assert {(e['prefix'], e['name']) for e in mine} == {(serial, name)}
    finally:
        lan.close()
        shutil.rmtree(top, ignore_errors=True)
