# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: a boot storm of N simulated Pi 4s against the TFTP hook service and dnsmasq's TFTP.

A LAN of network namespaces (10.99.50.0/24, ``pfstorm-``): the bakery at .2 and N Pis from .100.
Every Pi boots at once (lab/pisim.py through bench/storm_client.py: tsize probe, early
terminate, config.txt twice, start4.elf, fixup4.dat, dtb, cmdline.txt, probe + kernel8.img, probe +
initramfs8) with blksize 1024 and then 1468, no windowsize, each file checked by sha256. The same
files are served, in the same run, by our hook service (its fleet map names each Pi's folder, then
the shared boot folder) and by dnsmasq's own TFTP (``<serial>/`` folders of symlinks). Reported:
aggregate throughput, p50/p95 per-Pi boot time, failed Pis; the ratio hook / dnsmasq.

``--one-address`` puts every Pi in one namespace, behind one address (as behind NAT): each Pi is then
only a port, and a server must keep their transfers apart by (address, port), as RFC 1350 says.

    python bench/bench_storm.py [--pis 50] [--blksizes 1024,1468] [--rounds 1] [--workers 1] [--one-address]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / 'tests' / 'tools')]  # the lab package, the tests' helpers

from lab.nfslab import Lan, missing_tools  # noqa: E402

SERVICE = REPO / 'roles' / 'tftp_hook' / 'files' / 'pifleet_tftp_hook.py'
CLIENT = REPO / 'bench' / 'storm_client.py'
SUBNET = '10.99.50'
BAKERY = SUBNET + '.2'
# A Pi 4 boot set of realistic sizes (Raspberry Pi OS Bookworm, 2025).
BOOT_SET = {'start4.elf': 2_300_000, 'fixup4.dat': 5_400, 'kernel8.img': 9_200_000,
            'initramfs8': 12_100_000, 'bcm2711-rpi-4-b.dtb': 54_000}


def make_files(top, serials):
    boot = top / 'boot'
    boot.mkdir(parents=True)
    for name, size in BOOT_SET.items():
        (boot / name).write_bytes(os.urandom(size))
    (boot / 'config.txt').write_text('arm_64bit=1\nenable_uart=1\n')
    (boot / 'cmdline.txt').write_text('console=serial0,115200 root=PARTUUID=0 rootwait\n')
    pis = top / 'pis'
    dnsmasq_root = top / 'dnsmasq-root'
    dnsmasq_root.mkdir()
    for serial in serials:
        own = pis / serial
        own.mkdir(parents=True)
        (own / 'cmdline.txt').write_text('console=serial0,115200 root=/dev/nfs nfsroot=%s:/srv/pifleet/roots/%s,vers=3 '
                                         'rw ip=dhcp rootwait\n' % (BAKERY, serial))
        (own / 'config.txt').write_text('arm_64bit=1\nenable_uart=1\ninitramfs initramfs8 followkernel\n')
        # dnsmasq: the same lookup (own files first, then the boot set) as a folder of symlinks.
        folder = dnsmasq_root / serial
        folder.mkdir()
        for source in [*boot.iterdir(), *own.iterdir()]:
            link = folder / source.name
            if link.is_symlink():
                link.unlink()
            link.symlink_to(source)
    for path in [top, *top.rglob('*')]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)  # dnsmasq serves as nobody
    return boot, pis, dnsmasq_root


class Server:
    def __init__(self, lan, argv, pidfile=None):
        self.proc = subprocess.Popen(lan.exec_argv('bakery', argv), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.pidfile = pidfile
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit('server exited: %s' % self.proc.stderr.read().decode(errors='replace'))
            listening = subprocess.run(lan.exec_argv('bakery', ['ss', '-Hlun', 'sport = :69']),
                                       capture_output=True, text=True, check=False).stdout
            if listening.strip():
                return
            time.sleep(0.1)
        raise SystemExit('server did not bind UDP 69')

    def close(self):
        pids = [self.proc.pid]
        if self.pidfile and self.pidfile.exists():
            pids.append(int(self.pidfile.read_text().split()[0]))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_hook(lan, work, files, serials, workers):
    boot, pis = files
    fleet_map = {'version': 1, 'default': [str(boot)],
                 'prefixes': {s: {'name': 'pi-' + s, 'dirs': [str(pis / s), str(boot)]} for s in serials}}
    (work / 'map.json').write_text(json.dumps(fleet_map))
    config = {'listen': [BAKERY], 'port': 69, 'map': str(work / 'map.json'), 'roots': [str(work)],
              'events': str(work / 'events.jsonl'), 'max_blksize': 1468, 'workers': workers}
    (work / 'hook.json').write_text(json.dumps(config))
    python = '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable
    return Server(lan, [python, '-I', str(SERVICE), '--config', str(work / 'hook.json')])


def start_dnsmasq(lan, work, dnsmasq_root):
    pidfile = work / 'dnsmasq.pid'
    argv = ['dnsmasq', '--keep-in-foreground', '--no-resolv', '--no-hosts', '--port=0', '--conf-file=/dev/null',
            '--listen-address=' + BAKERY, '--bind-interfaces', '--enable-tftp', '--tftp-root=' + str(dnsmasq_root),
            '--tftp-max=1000', '--pid-file=' + str(pidfile), '--log-facility=' + str(work / 'dnsmasq.log')]
    return Server(lan, argv, pidfile)


def storm(lan, pis_by_name, blksize, files, one_address=False):
    boot, pis = files
    procs = []
    for name, serial in pis_by_name.items():
        argv = lan.exec_argv('pis' if one_address else name, [
            sys.executable, str(CLIENT), '--server', BAKERY, '--serial', serial, '--blksize', str(blksize),
            '--expect-dir', str(pis / serial), '--expect-dir', str(boot)])
        procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for proc in procs:  # all loaded and waiting
        if proc.stdout.readline().strip() != 'ready':
            raise SystemExit('a storm client failed to start')
    start = time.perf_counter()
    for proc in procs:
        proc.stdin.write('x')
        proc.stdin.close()
    reports = []
    for proc in procs:
        out = proc.stdout.read()
        proc.wait()
        try:
            reports.append(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            reports.append({'ok': False, 'seconds': None, 'files': []})
    wall = time.perf_counter() - start
    good = [r for r in reports if r.get('ok')]
    total = sum(f.get('bytes', 0) for r in reports for f in r.get('files', []))
    times = sorted(r['seconds'] for r in good)
    return {'wall': wall, 'bytes': total, 'mbps': total / wall / 1e6, 'failed': len(reports) - len(good),
            'p50': statistics.median(times) if times else None,
            'p95': times[max(0, round(0.95 * len(times)) - 1)] if times else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pis', type=int, default=50)
    parser.add_argument('--blksizes', default='1024,1468')
    parser.add_argument('--rounds', type=int, default=1)
    parser.add_argument('--workers', type=int, default=1)
    parser.add_argument('--one-address', action='store_true', help='every Pi behind one address (NAT)')
    parser.add_argument('--out', default=str(REPO / '.build' / 'bench' / 'storm.json'))
    args = parser.parse_args()
    if os.geteuid() != 0 or missing_tools(('ip', 'dnsmasq', 'ss')):
        raise SystemExit('bench_storm needs root, iproute2 and dnsmasq')
    serials = ['%08x' % (0x5a000000 + index) for index in range(args.pis)]
    names = ['pi%d' % index for index in range(args.pis)]
    if args.one_address:
        hosts = {'bakery': BAKERY, 'pis': SUBNET + '.100'}
    else:
        hosts = {'bakery': BAKERY, **{n: '%s.%d' % (SUBNET, 100 + i) for i, n in enumerate(names)}}
    work = Path(tempfile.mkdtemp(prefix='pifleet-storm-'))
    lan = Lan('pfstorm', hosts)
    results = []
    try:
        work.chmod(0o755)
        boot, pis, dnsmasq_root = make_files(work / 'files', serials)
        lan.start()
        for round_no in range(args.rounds):
            for blksize in [int(b) for b in args.blksizes.split(',')]:
                for server in ('dnsmasq', 'hook'):
                    proc = (start_dnsmasq(lan, work, dnsmasq_root) if server == 'dnsmasq'
                            else start_hook(lan, work, (boot, pis), serials, args.workers))
                    try:
                        row = storm(lan, dict(zip(names, serials)), blksize, (boot, pis), args.one_address)
                    finally:
                        proc.close()
                    row.update(server=server, blksize=blksize, round=round_no)
                    results.append(row)
                    print('%-8s blksize %4d: %6.1f MB/s, p50 %5.1f s, p95 %5.1f s, failed %d (%.1f s)' % (
                        server, blksize, row['mbps'], row['p50'] or -1, row['p95'] or -1, row['failed'], row['wall']),
                        flush=True)
    finally:
        lan.close()
        shutil.rmtree(work, ignore_errors=True)
    print('\n| blksize | server | MB/s | p50 s | p95 s | failed | ratio (hook/dnsmasq) |')
    print('|---|---|---|---|---|---|---|')
    for row in results:
        base = next(r for r in results if r['server'] == 'dnsmasq' and r['blksize'] == row['blksize']
                    and r['round'] == row['round'])
        print('| %d | %s | %.1f | %.2f | %.2f | %d | %.2fx |' % (
            row['blksize'], row['server'], row['mbps'], row['p50'] or -1, row['p95'] or -1, row['failed'],
            row['mbps'] / base['mbps']))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({'pis': args.pis, 'workers': args.workers, 'one_address': args.one_address,
                                          'results': results}, indent=1))
    return 1 if any(r['failed'] for r in results) else 0


if __name__ == '__main__':
    sys.exit(main())
