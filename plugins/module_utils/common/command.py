# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""External tools run with a deadline: a hung tool costs only the Pi it was run for.

``run(argv, timeout)`` starts the tool in a process group of its own, waits at most ``timeout``
seconds, and on expiry kills the whole group (the tool and whatever it started) and answers
rc ``TIMED_OUT`` with "timed out after N s" as its stderr, which every caller's message passes on.
It is safe to call from several threads at once (no ``preexec_fn``), so the thread pools use it too.
No AnsibleModule here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

TIMED_OUT = 124  # what coreutils timeout(1) answers: callers that know it need not look at the text
DEFAULT_TIMEOUT = 600
LANG_C = {'LANG': 'C', 'LC_ALL': 'C'}  # for commands whose output is parsed
_DRAIN = 5  # seconds to collect what a killed group left in the pipes


def timed_out(argv, timeout):
    return 'timed out after %g s: %s was killed (with what it started)' % (timeout, os.path.basename(argv[0]))


def run(argv, timeout=DEFAULT_TIMEOUT, data=None, *, pass_fds=(), env_update=None, binary=False):
    """(rc, stdout, stderr) of ``argv``; rc TIMED_OUT and a "timed out after" stderr when it ran too long.

    A program that cannot be started is rc 127 with the reason (never an exception: worker threads
    call this). ``data`` (bytes or text) goes to its stdin; ``pass_fds`` are open files it gets
    (``/proc/self/fd/N``). Output is text (undecodable bytes replaced) unless ``binary``.
    """
    env = dict(os.environ, **(env_update if env_update is not None else LANG_C))
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                                pass_fds=tuple(pass_fds), env=env, start_new_session=True)
    except OSError as exc:
        return 127, b'' if binary else '', str(exc)
    if isinstance(data, str):
        data = data.encode('utf-8')
    try:
        out, err = proc.communicate(data, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=_DRAIN)
        except subprocess.TimeoutExpired:  # something left the group and holds the pipes: stop reading
            proc.kill()
            out, err = b'', b''
            for pipe in (proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()
            proc.wait()
        rc = TIMED_OUT
        said = (err or b'').decode('utf-8', errors='replace').strip()[-300:]
        err = (timed_out(argv, timeout) + ('; it had said: %s' % said if said else '')).encode('utf-8')
    if binary:
        return rc, out, err.decode('utf-8', errors='replace')
    return rc, out.decode('utf-8', errors='replace'), err.decode('utf-8', errors='replace')
