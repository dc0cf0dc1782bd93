# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: a boot storm of N simulated Pi 4s against the TFTP hook service and dnsmasq's TFTP.

A LAN of network namespaces (10.99.0.0/16, ``pfstorm-``): the bakery at 10.99.50.2, N Pis from
10.99.50.100 on (one address each) and a ``pis`` host at 10.99.50.99 that holds every Pi behind one
address (as behind NAT: each Pi is then only a port, and a server must keep their transfers apart by
(address, port)). Every Pi boots at once (lab/pisim.py through bench/storm_client.py, which shares no
code with the hook: lock-step, one transfer after another, the tsize probe ended by "Early
terminate", config.txt twice, start4.elf, fixup4.dat, dtb, cmdline.txt, probe + kernel8.img, probe +
initramfs8, no windowsize), each file checked against its source. The same files are served, in the
same run, by the hook (its fleet map names each Pi's folder, then the shared boot folder; the event
log on) and by dnsmasq's own TFTP (``<serial>/`` folders of symlinks).

On a real bakery the Pis' CPUs are not the bakery's. Here they share two cores, so the bench pins
itself and every simulated Pi to one core (``--client-cpus``) and the server to the other
(``--server-cpus``): a server slower than the Pis shows in the throughput, and its cost shows
whatever the Pis can take, as the server's CPU seconds per GB served (utime + stime of the server
process and its workers, from /proc/<pid>/stat, over the storm). Also reported: how busy each core
was (/proc/stat), p50/p95 boot time per Pi, failed Pis; per layout and blksize, the hook's ratio to
dnsmasq (throughput: higher is better; CPU per GB: lower is better), median and spread over rounds.

Metrics and timelines on: beside the hook runs the real boot watcher (bench/storm_watch.py), as the
tftp_hook role deploys it: its program and the collection files it imports, the same interpreter, a
timer that starts with the storm (first run 1 s in, then every ``tftp_hook_watch_interval``, 15 s by
default, ``--watch-interval``), the role's config defaults (NFS-Ganesha asked over D-Bus, each booting
Pi asked for its SSH host key), its metrics file and state in the scratch directory, in the bakery's
namespace on the server's cores. Its CPU (each run's and its children's, from wait4) is added to the
hook's server CPU; the row says how many passes it made, read back from its metrics file, and what one
more pass after the storm counts (boots, bytes, each Pi's stage). dnsmasq's run has no watcher: a
bakery whose TFTP is dnsmasq's has no hook event log, and the watcher reads no TFTP lines of dnsmasq's,
so it would have no timeline to follow; the proxy DHCP log it reads on a real bakery (in either case)
is not part of this bench. So the whole cost of the timelines and metrics is charged to the hook.
Before each storm the bench notes the load average and how busy each core was in a quiet second (the
Pis loaded and waiting, the server idle): another job of a shared machine shows there.

Then the storm: ``--storm`` Pis (200), one address each, all at once at blksize 1024 (what the Pi 4
asks for), as a lab after a power cut; the hook must fail none.

    python bench/bench_storm.py [--pis 30] [--blksizes 1024,1468] [--layouts own,one] [--rounds 3]
        [--storm 200] [--servers dnsmasq,hook[,hook@S]] [--workers 1] [--batch-wait S] [--watch-interval 15]
        [--client-cpus 0] [--server-cpus 1]
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
sys.path[:0] = [str(REPO), str(REPO / 'tests' / 'tools'), str(REPO / 'bench')]  # the lab, the tests' helpers

from storm_watch import Watch, role_interval  # noqa: E402

from lab.nfslab import Lan, missing_tools  # noqa: E402

SERVICE = REPO / 'roles' / 'tftp_hook' / 'files' / 'pifleet_tftp_hook.py'
CLIENT = REPO / 'bench' / 'storm_client.py'
SUBNET = '10.99.50'
BAKERY = SUBNET + '.2'
NAT = SUBNET + '.99'
# A Pi 4 boot set of realistic sizes (Raspberry Pi OS Bookworm, 2025).
BOOT_SET = {'start4.elf': 2_300_000, 'fixup4.dat': 5_400, 'kernel8.img': 9_200_000,
            'initramfs8': 12_100_000, 'bcm2711-rpi-4-b.dtb': 54_000}
TRANSFERS_PER_PI = 11  # 8 files and 3 tsize probes: one event line each
TICK = os.sysconf('SC_CLK_TCK')
PYTHON = '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable  # the role's, on Debian


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


# ---------- what the CPUs did


def tree_ticks(pid):
    """(utime, stime) clock ticks of ``pid`` and every process below it, from /proc/<pid>/stat."""
    stats = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/stat' % entry) as handle:
                    fields = handle.read().rsplit(')', 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            stats[int(entry)] = (int(fields[1]), int(fields[11]), int(fields[12]))  # ppid, utime, stime
    wanted, found = {pid}, True
    while found:
        found = False
        for child, (ppid, *_ticks) in stats.items():
            if ppid in wanted and child not in wanted:
                wanted.add(child)
                found = True
    mine = [stats[p] for p in wanted if p in stats]
    return sum(s[1] for s in mine), sum(s[2] for s in mine)


def ours_ticks():
    """Clock ticks of the bench and everything below it, the ended and waited-for (Pis, watcher runs) included."""
    with open('/proc/self/stat') as handle:
        fields = handle.read().rsplit(')', 1)[1].split()
    return sum(tree_ticks(os.getpid())) + int(fields[13]) + int(fields[14])  # + cutime, cstime


def core_ticks():
    """{cpu: [user, nice, system, idle, iowait, irq, softirq, steal]} clock ticks since boot (/proc/stat)."""
    cores = {}
    with open('/proc/stat') as handle:
        for line in handle:
            name, *values = line.split()
            if name.startswith('cpu') and name != 'cpu':
                cores[int(name[3:])] = [int(v) for v in values[:8]]
    return cores


def busy_share(before, after, cpus, fields=(0, 1, 2, 5, 6, 7)):
    """The share of the cores' time spent in ``fields`` (default: all but idle and iowait)."""
    busy = sum(after[c][f] - before[c][f] for c in cpus for f in fields)
    total = sum(sum(after[c]) - sum(before[c]) for c in cpus)
    return busy / total if total else 0.0


def cpu_list(text):
    cpus = set()
    for part in text.split(','):
        low, _dash, high = part.partition('-')
        cpus.update(range(int(low), int(high or low) + 1))
    return sorted(cpus)


# ---------- the servers


class Server:
    def __init__(self, lan, argv, cpus, pidfile=None):
        pinned = ['taskset', '-c', ','.join(map(str, cpus))] if cpus else []
        # ip netns exec and taskset exec the server: the PID is the server's.
        self.proc = subprocess.Popen(lan.exec_argv('bakery', pinned + argv), stdout=subprocess.DEVNULL,
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

    def ticks(self):
        return tree_ticks(self.proc.pid)

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


def start_hook(lan, work, files, serials, args, *, name='hook'):
    boot, pis = files
    fleet_map = {'version': 1, 'default': [str(boot)],
                 'prefixes': {s: {'name': 'pi-' + s, 'dirs': [str(pis / s), str(boot)]} for s in serials}}
    (work / 'map.json').write_text(json.dumps(fleet_map))
    events = work / 'events.jsonl'
    if events.exists():
        events.unlink()
    config = {'listen': [BAKERY], 'port': 69, 'map': str(work / 'map.json'), 'roots': [str(work)],
              'events': str(events), 'max_blksize': 1468, 'workers': args.workers}
    _hook, _at, batch_wait = name.partition('@')  # hook@S: this batch_wait for this server of the run
    batch_wait = float(batch_wait) if batch_wait else args.batch_wait
    if batch_wait is not None:
        config['batch_wait'] = batch_wait
    (work / 'hook.json').write_text(json.dumps(config))
    return Server(lan, [PYTHON, '-I', str(SERVICE), '--config', str(work / 'hook.json')], args.server_cpus)


def start_dnsmasq(lan, work, dnsmasq_root, args):
    pidfile = work / 'dnsmasq.pid'
    argv = ['dnsmasq', '--keep-in-foreground', '--no-resolv', '--no-hosts', '--port=0', '--conf-file=/dev/null',
            '--listen-address=' + BAKERY, '--bind-interfaces', '--enable-tftp', '--tftp-root=' + str(dnsmasq_root),
            '--tftp-max=1000', '--pid-file=' + str(pidfile), '--log-facility=' + str(work / 'dnsmasq.log')]
    return Server(lan, argv, args.server_cpus, pidfile)


def hook_events(work):
    """{outcome: count} of the hook's event log (every transfer writes one line)."""
    counts = {}
    path = work / 'events.jsonl'
    for line in (path.read_text().splitlines() if path.exists() else []):
        outcome = json.loads(line)['outcome']
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


# ---------- one storm


def storm(lan, pis_by_host, blksize, files, server, *, watch=None):
    """Every Pi boots at once; the row: throughput, the server's CPU (and the boot watcher's, when it runs beside
    the hook), the cores, boot times, failures, and how busy the cores were in a quiet second just before."""
    boot, pis = files
    procs = []
    for host, serial in pis_by_host:
        argv = lan.exec_argv(host, [
            sys.executable, str(CLIENT), '--server', BAKERY, '--serial', serial, '--blksize', str(blksize),
            '--expect-dir', str(pis / serial), '--expect-dir', str(boot)])
        procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for proc in procs:  # all loaded and waiting
        if proc.stdout.readline().strip() != 'ready':
            raise SystemExit('a storm client failed to start')
    quiet_before = core_ticks()  # every Pi waits, the server idles: what is busy now is another job
    time.sleep(1)
    cores_before, ticks_before, ours_before = core_ticks(), server.ticks(), ours_ticks()
    quiet = {str(c): round(busy_share(quiet_before, cores_before, [c]), 3) for c in sorted(cores_before)}
    start = time.perf_counter()
    if watch:
        watch.start()  # the watcher's timer starts with the storm: its first run 1 s in, as after a restart
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
    ticks_after = server.ticks()
    cores_after = core_ticks()
    ours_after = ours_ticks()
    user, system = ((after - before) / TICK for before, after in zip(ticks_before, ticks_after))
    cpu = user + system
    watched = {}
    if watch:
        watch.stop()  # a run under way finishes and counts
        watched = watch.report(watch.run_once())  # one more run after the storm: what it saw of every boot
        cpu += watched['watch_cpu']
    good = [r for r in reports if r.get('ok')]
    total = sum(f.get('bytes', 0) for r in reports for f in r.get('files', []))
    times = sorted(r['seconds'] for r in good)
    cores = sorted(cores_after)
    # Process time on the cores (user, nice, system) that is not the bench's, its Pis' or the server's: another
    # job of the shared machine, during the storm (interrupt time is left out: it is mostly the storm's packets).
    spent = sum(cores_after[c][f] - cores_before[c][f] for c in cores_after for f in (0, 1, 2))
    foreign = max(0.0, (spent - (ours_after - ours_before)) / TICK)
    return {**watched, 'quiet': quiet, 'foreign_cpu': round(foreign, 2), 'wall': wall, 'bytes': total,
            'mbps': total / wall / 1e6, 'failed': len(reports) - len(good),
            'server_cpu': cpu, 'server_user': user, 'server_system': system,
            'cpu_per_gb': cpu / (total / 1e9) if total else None,
            'cores': {str(c): round(busy_share(cores_before, cores_after, [c]), 3) for c in cores},
            # niced work: other jobs of a shared machine, at a lower priority than the bench
            'niced': {str(c): round(busy_share(cores_before, cores_after, [c], (1,)), 3) for c in cores},
            'p50': statistics.median(times) if times else None,
            'p95': times[max(0, round(0.95 * len(times)) - 1)] if times else None,
            'errors': sorted({f['error'] for r in reports for f in r.get('files', []) + r.get('probes', [])
                              if not f.get('ok') and f.get('error')})[:5]}


# ---------- the report


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return '-'
    return '%.3g (%.3g-%.3g)' % (statistics.median(values), min(values), max(values))


def summary(results):
    lines = ['| Pis | layout | blksize | server | MB/s | server CPU s/GB | server core busy | client core busy | p95 s '
             '| failed Pis | MB/s ratio | CPU/GB ratio | watcher passes |', '|---' * 13 + '|']
    keys = sorted({(r['pis'], r['layout'], r['blksize'], r['server']) for r in results})
    for pis, layout, blksize, server in keys:
        rows = [r for r in results
                if (r['pis'], r['layout'], r['blksize'], r['server']) == (pis, layout, blksize, server)]
        ratios, cost = [], []
        for row in rows:
            base = next((r for r in results if r['server'] == 'dnsmasq' and r['layout'] == layout and r['pis'] == pis
                         and r['blksize'] == blksize and r['round'] == row['round']), None)
            if base and server != 'dnsmasq':
                ratios.append(row['mbps'] / base['mbps'])
                if row['cpu_per_gb'] and base['cpu_per_gb']:
                    cost.append(row['cpu_per_gb'] / base['cpu_per_gb'])
        lines.append('| %d | %s | %d | %s | %s | %s | %s | %s | %s | %d | %s | %s | %s |' % (
            pis, layout, blksize, server, spread([r['mbps'] for r in rows]), spread([r['cpu_per_gb'] for r in rows]),
            spread([r['server_core'] for r in rows]), spread([r['client_core'] for r in rows]),
            spread([r['p95'] for r in rows]), sum(r['failed'] for r in rows),
            spread(ratios) + 'x' if ratios else '-', spread(cost) + 'x' if cost else '-',
            ', '.join(str(r['watch_passes']) for r in rows) if 'watch_passes' in rows[0] else '-'))
    return '\n'.join(lines)


def run(args, count, layouts, blksizes, *, rounds, phase):
    """Every (round, layout, blksize, server) storm of ``count`` Pis on a LAN of its own: the rows."""
    serials = ['%08x' % (0x5a000000 + index) for index in range(count)]
    names = ['pi%d' % index for index in range(count)]
    hosts = {'bakery': BAKERY}
    if 'one' in layouts:
        hosts['pis'] = NAT
    if 'own' in layouts:
        hosts.update({n: pi_address(i) for i, n in enumerate(names)})
    work = Path(tempfile.mkdtemp(prefix='pifleet-storm-'))
    lan = Lan('pfstorm', hosts, prefixlen=16)
    results = []
    try:
        work.chmod(0o755)
        boot, pis, dnsmasq_root = make_files(work / 'files', serials)
        lan.start()
        for round_no in range(rounds):
            servers = args.servers.split(',')
            for layout in layouts:
                pis_by_host = list(zip(['pis'] * count if layout == 'one' else names, serials))
                for blksize in blksizes:
                    for name in servers if round_no % 2 == 0 else servers[::-1]:  # drift of the machine evens out
                        load = os.getloadavg()  # the 1-minute figure still holds the last storm's 30 Pis
                        server = (start_dnsmasq(lan, work, dnsmasq_root, args) if name == 'dnsmasq'
                                  else start_hook(lan, work, (boot, pis), serials, args, name=name))
                        watch = (Watch(lan, work, args.watch_interval, args.server_cpus, PYTHON)
                                 if name.startswith('hook') and args.watch_interval else None)
                        try:
                            row = storm(lan, pis_by_host, blksize, (boot, pis), server, watch=watch)
                        finally:
                            server.close()
                        row['load'] = [round(v, 2) for v in load]
                        if name.startswith('hook'):
                            row['events'] = hook_events(work)
                        row.update(server=name, blksize=blksize, layout=layout, round=round_no, phase=phase,
                                   pis=count, server_core=busy_of(row, args.server_cpus),
                                   client_core=busy_of(row, args.client_cpus))
                        results.append(row)
                        print(line(row), flush=True)
    finally:
        lan.close()
        shutil.rmtree(work, ignore_errors=True)
    return results


def pi_address(index):
    """Pi ``index``'s address in 10.99.0.0/16, from 10.99.50.100 on (a storm has more Pis than a /24)."""
    number = 100 + index
    return '10.99.%d.%d' % (50 + number // 256, number % 256)


def line(row):
    text = ('%-7s %3d Pis %-3s blksize %4d: %6.1f MB/s, server %5.2f CPU s/GB (user %.1f s, system %.1f s), '
            'cores busy %s (niced %s), p95 %5.1f s, failed %d (%.1f s)' % (
                row['server'], row['pis'], row['layout'], row['blksize'], row['mbps'], row['cpu_per_gb'] or -1,
                row['server_user'], row['server_system'], row['cores'], row['niced'], row['p95'] or -1,
                row['failed'], row['wall']))
    text += ', load at start %s, cores busy in the quiet second before %s, CPU s of other jobs in the storm %.1f' % (
        row['load'], row['quiet'], row['foreign_cpu'])
    if 'events' in row:
        text += ', events %s' % row['events']
    if 'watch_runs' in row:
        text += ('\n   boot watcher every %d s: %d runs in the storm (%d passes read back from its metrics file, %d '
                 'failed), %.2f CPU s (in the server CPU above), run times %s s; after the storm it counts %d boots, '
                 '%d bytes, stages %s, sources %s' % (
                     row['watch_interval'], row['watch_runs'], row['watch_passes'], row['watch_failed_runs'],
                     row['watch_cpu'], row['watch_seconds'], row['watch_boots'], row['watch_bytes'],
                     row['watch_stages'], row['watch_sources']))
        if row['watch_errors']:
            text += '\n   watcher errors: %s' % row['watch_errors']
    if row['errors']:
        text += '\n   errors: %s' % row['errors']
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pis', type=int, default=30)
    parser.add_argument('--blksizes', default='1024,1468')
    parser.add_argument('--layouts', default='own,one', help='own: an address per Pi; one: every Pi behind one')
    parser.add_argument('--servers', default='dnsmasq,hook',
                        help='dnsmasq, hook, hook@S (the hook with batch_wait S seconds), in each round')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--storm', type=int, default=200,
                        help='then this many Pis at once, an address each, blksize 1024, once (0: no storm)')
    parser.add_argument('--workers', type=int, default=1, help="the hook's workers")
    parser.add_argument('--batch-wait', type=float, default=None,
                        help="the hook's batch_wait in seconds (default: the hook's own; 0: off)")
    parser.add_argument('--watch-interval', type=float, default=role_interval(),
                        help="run the boot watcher beside the hook every this many seconds (default: the role's "
                             "tftp_hook_watch_interval; 0: no watcher)")
    cpus = os.cpu_count() or 1
    parser.add_argument('--client-cpus', default='0', help='cores of the bench and the simulated Pis ("" = any)')
    parser.add_argument('--server-cpus', default='1' if cpus > 1 else '', help='cores of the server ("" = any)')
    parser.add_argument('--nice', type=int, default=0,
                        help='run the bench, the Pis and the servers at this nice value (negative: other jobs of a '
                             'shared machine disturb the numbers less)')
    parser.add_argument('--out', default=str(REPO / '.build' / 'bench' / 'storm.json'))
    args = parser.parse_args()
    if os.geteuid() != 0 or missing_tools(('ip', 'dnsmasq', 'ss', 'taskset')):
        raise SystemExit('bench_storm needs root, iproute2, util-linux (taskset) and dnsmasq')
    args.client_cpus = cpu_list(args.client_cpus) if args.client_cpus else []
    args.server_cpus = cpu_list(args.server_cpus) if args.server_cpus else []
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)  # the bench and every simulated Pi it starts
    if args.nice:
        os.nice(args.nice)  # inherited by the Pis and the servers alike
    blksizes = [int(b) for b in args.blksizes.split(',')]
    results = []
    if args.rounds:
        results += run(args, args.pis, args.layouts.split(','), blksizes, rounds=args.rounds, phase='compare')
        save(args, results)
    if args.storm:
        results += run(args, args.storm, ['own'], [1024], rounds=1, phase='storm')
    print('\nhook workers %d, batch_wait %s, boot watcher %s, clients on cores %s, server on cores %s, nice %d; '
          'median (min-max) over rounds\n' % (
              args.workers, 'default' if args.batch_wait is None else args.batch_wait,
              'every %g s' % args.watch_interval if args.watch_interval else 'off',
              args.client_cpus or 'any', args.server_cpus or 'any', args.nice))
    print(summary(results))
    save(args, results)
    return 1 if any(r['failed'] for r in results if r['server'].startswith('hook')) else 0


def save(args, results):
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        'workers': args.workers, 'batch_wait': args.batch_wait, 'watch_interval': args.watch_interval,
        'nice': args.nice, 'client_cpus': args.client_cpus,
        'server_cpus': args.server_cpus,
        'results': results}, indent=1))


def busy_of(row, cpus):
    return statistics.mean(row['cores'][str(c)] for c in cpus) if cpus else None


if __name__ == '__main__':
    sys.exit(main())
