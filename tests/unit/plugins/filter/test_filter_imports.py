# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-core finds a collection's filter by loading every filter file of the collection, in each task's worker
process, compiled from source there: a filter file that imports its module_utils at the top makes every task that
names any pifleet filter import them all. The filters import them where they run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]
# The small ones that stay at the top of their filter files (a few hundred lines in all).
LIGHT = {'common.identity', 'fleet.failures', 'fleet.hosts', 'fleet.languard', 'fleet.upgrade'}

LOAD = """
import json, sys
from ansible.plugins.loader import filter_loader, init_plugin_loader
init_plugin_loader()
found = filter_loader.get(sys.argv[1])
prefix = 'ansible_collections.pifleet.netboot.plugins.module_utils.'
utils = [m[len(prefix):] for m in sys.modules if m.startswith(prefix)]
print(json.dumps({'found': found is not None, 'utils': sorted(m for m in utils if '.' in m)}))
"""


def loaded(name):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build' / 'collections'))
    proc = subprocess.run([sys.executable, '-c', LOAD, name], env=env, capture_output=True, text=True, check=True,
                          timeout=120)
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize('name', ['pifleet.netboot.fleet_healthy', 'pifleet.netboot.fleet_plan'])
def test_finding_a_filter_imports_only_the_light_module_utils(name):
    result = loaded(name)
    assert result['found']
    assert set(result['utils']) <= LIGHT, sorted(set(result['utils']) - LIGHT)
