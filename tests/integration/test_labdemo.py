# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo` end to end: tests/tools/labdemo.py on the built-in lab, with its state in a temp dir.

The bakery container runs site with inventories/lab (then again: changed=0), the three virtual Pis
of the inventory boot through it (DHCP from the router, "Raspberry Pi Boot" and TFTP from the
bakery, NFS root from their own address), the outsider is refused, the status table lists every Pi
with its last boot file, and nothing of the lab is left running afterwards.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from nfslab import missing_tools

REPO = Path(__file__).resolve().parents[2]
MISSING = missing_tools(('ip', 'systemd-nspawn', 'debootstrap', 'socat', 'ssh', 'dnsmasq', 'nfs-ls'))


def namespaces():
    return subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True, check=True).stdout


pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason='missing %s' % ', '.join(MISSING)),
    pytest.mark.skipif(sys.platform != 'linux' or not Path('/run').exists(), reason='Linux only'),
]


def test_demo_boots_every_pi_of_the_lab_inventory(tmp_path):
    if 'pflab-' in namespaces():
        pytest.skip('a lab from `make demo DEMO_ARGS=--keep` is running; take it down first')
    proc = subprocess.run([sys.executable, str(REPO / 'tests/tools/labdemo.py'), '--state', str(tmp_path / 'lab')],
                          capture_output=True, text=True, timeout=1200, check=False, stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    pis = yaml.safe_load((REPO / 'inventories/lab/hosts.yml').read_text())['pis']['hosts']
    assert len(pis) == 3 and {facts['pi_model'] for facts in pis.values()} == {3, 4, 5}
    recaps = re.findall(r'^\s*lab-bakery\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0', output, re.M)
    assert len(recaps) == 3 and int(recaps[0]) > 0 and recaps[1:] == ['0', '0'], recaps  # site, site, status
    for name, facts in pis.items():
        booted = re.search(r'^demo: %s \(Pi %d, [0-9a-f:]+\): DHCP %s, PXE answer from 10\.99\.0\.2; TFTP (\d+) files'
                           r'.*NFS root readable$' % (name, facts['pi_model'], re.escape(facts['pi_ip'])), output, re.M)
        assert booted and int(booted.group(1)) >= 4, (name, output[-4000:])
        row = re.search(r'"%s\s+%d\s+raspios-sample\s+yes\s+(\d+)\s+-\s+\S+Z\s+(\S+)\s+ok"' % (name, facts['pi_model']),
                        output)
        assert row and int(row.group(1)) == len(facts.get('pi_disks', [])), (name, output[-3000:])
    assert re.search(r'^demo: the outsider 10\.99\.0\.60 is refused nfs://', output, re.M), output[-3000:]
    assert 'pflab-' not in namespaces()
    leftovers = subprocess.run(['pgrep', '-f', str(tmp_path)], capture_output=True, text=True, check=False).stdout
    assert not leftovers.strip(), leftovers
