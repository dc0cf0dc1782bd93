# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's real Pi has no power device: the demo (or the test) is its power switch while a playbook runs.

``run(argv, env, cycle)`` runs ansible-playbook (reimage, upgrade or rollback on the lab inventory), and
each time the playbook starts to wait for the Pi's running system (wait_up.yml's task, shared by those
three) it calls ``cycle()``, which does what ``pi_power`` does with a smart plug: the Pi is powered off
and on, and boots for real (qemu, U-Boot, the hook, its NFS root). A boot that gets stuck (a kernel
panic: the console says so) is recorded, and the Pi stays off until the playbook waits for it again
(after a rollback). The playbook alone says whether the Pi is up: it scans the Pi's SSH host key from
the bakery, as it does with a real Pi.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time

from lab import REPO, qemupi

WAIT_TASK = "TASK [Wait until each Pi's SSH server answers with the host key of its root]"


class Run:
    """What happened: the playbook's return code and output, and each boot (None: it reached ssh; else the
    BootError, e.g. a kernel panic), with the seconds from the wait task's start to the end of that boot."""

    def __init__(self):
        self.rc, self.lines, self.boots, self.seconds = None, [], [], 0.0

    @property
    def output(self):
        return ''.join(self.lines)


def run(argv, env, cycle, timeout=1800, show=print):
    """Run the ansible-playbook ``argv``, calling ``cycle()`` each time it waits for the Pi (see the module's
    text); a Run."""
    show('$ ' + ' '.join(argv[1:]))
    found, waits = Run(), queue.Queue()
    started = time.monotonic()
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, cwd=REPO) as proc:
        def read():
            for line in proc.stdout:
                found.lines.append(line)
                if line.startswith(('TASK [', 'PLAY RECAP', 'fatal:', 'failed:')) or 'msg' in line:
                    show('  ' + line.rstrip()[:300])
                if line.startswith(WAIT_TASK):
                    waits.put(time.monotonic())
            waits.put(None)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            while True:
                wait_started = waits.get(timeout=max(1, timeout - (time.monotonic() - started)))
                if wait_started is None:
                    break
                try:
                    cycle()
                    found.boots.append(None)
                except qemupi.BootError as exc:  # the playbook decides what that means
                    found.boots.append(exc)
                found.seconds += time.monotonic() - wait_started
        finally:
            try:
                found.rc = proc.wait(max(1, timeout - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                proc.kill()
                found.rc = proc.wait()
            reader.join(10)
    return found
