# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet plan catches an inventory's mistakes as a user writes them, before any work: `site` on this host as the
bakery, with an inventory file written as text (so YAML itself reads `00123456` as octal), stops at the plan naming
every problem. make cores runs this file on each core."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's own ansible-core
REPO = Path(__file__).resolve().parents[4]

INVENTORY = """\
bakery:
  hosts:
    lab-bakery: {ansible_connection: local, ansible_python_interpreter: %(python)s, ansible_become: false}
  vars:
    pifleet_nfs_server: 10.99.35.2
    pifleet_bakeforms:
      - name: lite
        url: https://images.example.org/lite.img.xz
        checksum: "sha256:0000000000000000000000000000000000000000000000000000000000000000"
      - name: own
        url: https://images.example.org/own.img.xz
        chksum: sha256:https://images.example.org/own.img.xz.sha256
pis:
  vars:
    pi_bakeform: lite
  hosts:
    pi-01: {pi_serial: 00123456, pi_model: 4, pi_ip: 10.99.35.51, pi_disk: [{name: data, size: 8G}]}
    pi-02:
      pi_serial: "3a4b5c6d"
      pi_model: 4
      pi_ip: 10.99.35.52
      pi_disks:
        - {name: data, size: 32 gigs, fstype: ext4}
        - {name: scratch, size: -5G}
    pi-03: {pi_serial: "4b5c6d7e", pi_mac: 12:34:56:01:02:03, pi_model: 4, pi_ip: 10.99.35.53}
"""
EXPECTED = [
    'pifleet_bakeforms: bakeform lite: checksum sha256:0000000000000000000000000000000000000000000000000000000000000000'
    ' is the all-zero placeholder',
    'pifleet_bakeforms: bakeform own: chksum is not a key of a bakeform, did you mean checksum?',
    'pifleet_bakeforms: bakeform own: a download needs checksum',
    'pi-01: pi_disk is not a variable of pifleet.netboot, did you mean pi_disks?',
    'pi-01: pi_serial is the number 42798, not text: YAML reads unquoted digits as a number (with a leading 0 in '
    'octal, with colons in base 60) and the value is lost; quote it: pi_serial: "00123456"',
    "pi-02: disk data: size '32 gigs' is not a size: give bytes (an integer) or a number with a unit: K, M, G, T",
    "pi-02: disk scratch: size '-5G' is not a size",
    'pi-03: pi_mac is the number 9783939723, not text',
    'quote it: pi_mac: "12:34:56:01:02:03"',
]


def test_site_stops_at_the_plan_naming_every_mistake(tmp_path):
    (tmp_path / 'hosts.yml').write_text(INVENTORY % {'python': sys.executable})
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build' / 'collections'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'))
    proc = subprocess.run([str(BIN / 'ansible-playbook'), '-i', str(tmp_path / 'hosts.yml'), 'pifleet.netboot.site',
                           '--tags', 'fleet', '--check'], env=env, capture_output=True, text=True, check=False,
                          timeout=300, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "TASK [pifleet.netboot.fleet : Validate the inventory and plan this bakery's Pis]" in output
    assert 'TASK [pifleet.netboot.fleet : Register the bakeforms]' not in output  # before any work
    flat = ' '.join(output.replace('\\n', ' ').replace('\\"', '"').split())  # before 2.19 the message is JSON
    missing = [text for text in EXPECTED if ' '.join(text.split()) not in flat]
    assert missing == [], output[-5000:]
    assert 'the fleet inventory has 8 problem(s)' in flat, output[-5000:]
