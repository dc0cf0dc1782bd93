# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot watcher beside the hook during a storm (bench_storm.py), as the tftp_hook role deploys it.

The role installs roles/tftp_hook/files/pifleet_boot_watch.py with the collection's files it imports in one
directory and runs it as a oneshot service from a timer (``OnActiveSec=1s``, then ``OnUnitActiveSec`` =
``tftp_hook_watch_interval``, 15 s by default, counted from the start of each run; a run never overlaps the
last). ``Watch`` does the same: the same files (tests/tools/bootwatch.py copies them as the role does), the
same interpreter and ``-I``, a config with the role's keys and defaults (nfs ganesha, ssh on) pointing at the
hook's map and event log, its metrics file and state in the storm's scratch directory; each run in the
bakery's namespace (the ARP table and the Pis it asks over SSH are there) on the server's cores. The CPU of
each run (and of what it starts: busctl, ssh-keyscan) comes from wait4(); how many runs it made is read back
from its metrics file (``pifleet_watch_last_run_timestamp_seconds`` changes with each run).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import bootwatch  # tests/tools: the watcher's files, copied as the role installs them

DEFAULTS = Path(__file__).resolve().parent.parent / 'roles' / 'tftp_hook' / 'defaults' / 'main.yml'
FIRST_RUN = 1.0  # the timer's OnActiveSec
_SAMPLE = re.compile(r'^([a-z_]+)(?:\{([^}]*)\})? (\S+)$')


def role_interval():
    """``tftp_hook_watch_interval`` of the role's defaults (seconds)."""
    match = re.search(r'^tftp_hook_watch_interval:\s*(\d+)\s*$', DEFAULTS.read_text(), re.M)
    return int(match.group(1))


def samples(text):
    """[(metric, {label: value}, value)] of a textfile (the watcher writes plain quoted labels)."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ''))
            found.append((match.group(1), labels, float(match.group(3))))
    return found


class Watch:
    """The watcher's timer for one storm: start() when the storm starts, stop() when it ends, then final()."""

    def __init__(self, lan, work, interval, cpus, python):
        self.dir = work / 'watch'
        program = bootwatch.install(self.dir / 'boot-watch')
        self.textfile, self.state = self.dir / 'textfile' / 'pifleet.prom', self.dir / 'state' / 'state.json'
        for leftover in (self.textfile, self.state):  # each storm's watcher starts as on a fresh bakery
            if leftover.exists():
                leftover.unlink()
        config = {'events': str(work / 'events.jsonl'), 'map': str(work / 'map.json'),
                  # no proxy DHCP in the bench: the log it would read is absent (its source reads as down)
                  'dhcp_log': str(self.dir / 'dnsmasq.log'),
                  'roots_dir': str(self.dir / 'roots'), 'disks_dir': str(self.dir / 'disks'),
                  'store': str(self.dir / 'bakeforms'), 'textfile': str(self.textfile), 'state': str(self.state)}
        for empty in ('roots', 'disks', 'bakeforms'):
            (self.dir / empty).mkdir(exist_ok=True)
        (self.dir / 'boot-watch.json').write_text(json.dumps(config))
        pinned = ['taskset', '-c', ','.join(map(str, cpus))] if cpus else []
        config_path = str(self.dir / 'boot-watch.json')
        self.argv = lan.exec_argv('bakery', [*pinned, python, '-I', str(program), '--config', config_path])
        self.interval = interval
        self.runs = []  # {'start', 'seconds', 'cpu', 'rc', 'stamp'}
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._timer, daemon=True)
        self._thread.start()

    def stop(self):
        """Stop the timer; a run under way finishes (its CPU counts, as the storm paid for it)."""
        self._stop.set()
        self._thread.join()

    def _timer(self):
        due = time.monotonic() + FIRST_RUN
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            started = time.monotonic()
            self.runs.append(self.run_once())
            due = started + self.interval

    def run_once(self):
        started = time.monotonic()
        proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = proc.stderr.read()
        _pid, status, usage = os.wait4(proc.pid, 0)  # the run and the children it waited for
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stderr.close()
        return {'start': started, 'seconds': time.monotonic() - started, 'cpu': usage.ru_utime + usage.ru_stime,
                'rc': proc.returncode, 'stamp': self.stamp(), 'error': err.decode(errors='replace')[-300:]}

    def stamp(self):
        try:
            text = self.textfile.read_text()
        except OSError:
            return None
        return next((v for m, _l, v in samples(text) if m == 'pifleet_watch_last_run_timestamp_seconds'), None)

    def report(self, final):
        """The storm's runs (distinct run stamps read from the metrics file), their CPU, and what the final run
        after the storm saw: boots, bytes, each Pi's stage, which sources it read."""
        text = self.textfile.read_text() if self.textfile.exists() else ''
        found = samples(text)
        stages = {}
        for metric, labels, value in found:
            if metric == 'pifleet_boot_stage' and value == 1:
                stages[labels['stage']] = stages.get(labels['stage'], 0) + 1
        return {'watch_interval': self.interval,
                'watch_runs': len(self.runs),
                'watch_passes': len({r['stamp'] for r in self.runs if r['stamp'] is not None}),
                'watch_failed_runs': sum(1 for r in self.runs if r['rc'] != 0),
                'watch_cpu': sum(r['cpu'] for r in self.runs),
                'watch_seconds': [round(r['seconds'], 2) for r in self.runs],
                'watch_final_ok': final['rc'] == 0 and final['stamp'] is not None,
                'watch_errors': sorted({r['error'] for r in [*self.runs, final] if r['rc'] != 0})[:2],
                'watch_boots': sum(v for m, _l, v in found if m == 'pifleet_boots_total'),
                'watch_bytes': sum(v for m, _l, v in found if m == 'pifleet_tftp_bytes_total'),
                'watch_stages': stages,
                'watch_sources': {lab['source']: int(v) for m, lab, v in found if m == 'pifleet_watch_source_up'}}
