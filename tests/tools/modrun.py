# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run pifleet.netboot modules as their own processes, the way Ansible does (tests, benchmarks).

``ensure_importable()`` (from the lab package) makes the checkout importable as
ansible_collections.pifleet.netboot, for this process and its children, wherever the checkout sits.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile

try:
    from lab import COLLECTIONS, ensure_importable  # the checkout
except ImportError:  # an installed collection: importable where it is installed
    COLLECTIONS = None

    def ensure_importable():
        return None

__all__ = ['COLLECTIONS', 'ensure_importable', 'module_argv', 'run_module']


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def module_argv(name, args, check=False, diff=False):
    """The command that runs a module with ``args``, passed in a file (an argv string caps at ~128 KiB
    and ansible-core tries it as a path first, which fails beyond 4 KiB). The file lives until exit."""
    payload = {'ANSIBLE_MODULE_ARGS': dict(args, _ansible_check_mode=check, _ansible_diff=diff)}
    handle = tempfile.NamedTemporaryFile('w', prefix='pifleet-args-', suffix='.json', delete=False)
    with handle:
        json.dump(payload, handle)
    atexit.register(_remove, handle.name)
    return [sys.executable, '-m', 'ansible_collections.pifleet.netboot.plugins.modules.' + name, handle.name]


def run_module(name, args, check=False, diff=False, timeout=3600):
    """Invoke pifleet.netboot.<name>; return its JSON result."""
    ensure_importable()
    argv = module_argv(name, args, check, diff)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    finally:
        _remove(argv[-1])
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('module %s printed no JSON (rc %d):\n%s\n%s'
                             % (name, proc.returncode, proc.stdout, proc.stderr)) from None


def open_count(pid, path):
    """How many file descriptors of process ``pid`` are open on ``path``; 0 once it is gone."""
    fds = '/proc/%d/fd' % pid
    try:
        names = os.listdir(fds)
    except OSError:
        return 0
    count = 0
    for name in names:
        try:
            count += os.readlink(os.path.join(fds, name)) == path
        except OSError:
            continue
    return count


def has_open(pid, path):
    """Whether process ``pid`` holds ``path`` open (a module run opens the bakery lock just before it tries it);
    False once it is gone."""
    return open_count(pid, path) > 0


def opened_elsewhere(path):
    """Whether a process other than this one holds ``path`` open (for a module run whose pid is not known)."""
    target = os.path.realpath(path)
    return any(has_open(int(pid), target) for pid in os.listdir('/proc') if pid.isdigit() and int(pid) != os.getpid())
