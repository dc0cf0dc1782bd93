# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a pifleet.netboot module as its own process, the way Ansible does, for tests and benchmarks.

The collection must be importable (tests/conftest.py or `make` sets PYTHONPATH).
"""

from __future__ import annotations

import json
import subprocess
import sys


def module_argv(name, args, check=False, diff=False):
    payload = {'ANSIBLE_MODULE_ARGS': dict(args, _ansible_check_mode=check, _ansible_diff=diff)}
    return [sys.executable, '-m', 'ansible_collections.pifleet.netboot.plugins.modules.' + name, json.dumps(payload)]


def run_module(name, args, check=False, diff=False, timeout=3600):
    """Invoke pifleet.netboot.<name>; return its JSON result."""
    proc = subprocess.run(module_argv(name, args, check, diff), capture_output=True, text=True, check=False,
                          timeout=timeout)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('module %s printed no JSON (rc %d):\n%s\n%s'
                             % (name, proc.returncode, proc.stdout, proc.stderr)) from None
