# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/discover.yml run for real against this machine as the bakery (no root needed)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = str(Path(sys.executable).parent / 'ansible-playbook')


def line(seconds, client, request, known=False, outcome='ok'):
    prefix, path = request.split('/', 1) if '/' in request else ('', request)
    return json.dumps({'time': '2026-11-23T10:%02d:00+00:00' % seconds, 'client': client, 'request': request,
                       'prefix': prefix, 'path': path, 'name': None, 'known': known, 'outcome': outcome}) + '\n'


def run_discover(tmp_path, *extra, pis=None):
    inventory = tmp_path / 'hosts.yml'
    inventory.write_text(yaml.safe_dump({'bakery': {'hosts': {'lab-bakery': {
        'ansible_connection': 'local', 'ansible_become': False, 'ansible_python_interpreter': sys.executable,
        'pifleet_events_path': str(tmp_path / 'boot-events.jsonl'), 'pifleet_dhcp_log_path': str(tmp_path / 'dhcp.log'),
        'pifleet_map_path': str(tmp_path / 'map.json')}}}, 'pis': {'hosts': pis or {}}}))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build' / 'collections'),
               ANSIBLE_COLLECTIONS_SCAN_SYS_PATH='false', ANSIBLE_NOCOLOR='1', ANSIBLE_CALLBACK_RESULT_FORMAT='yaml',
               ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'), ANSIBLE_REMOTE_TEMP=str(tmp_path / 'rtmp'))
    proc = subprocess.run([PLAYBOOK, '-i', str(inventory), 'pifleet.netboot.discover', *extra], env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r'lab-bakery\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0', proc.stdout), proc.stdout
    return proc.stdout, printed_block(proc.stdout)


def seen(stdout):
    """What each device asked for: the JSON lines of the last task."""
    listing = stdout.split('TASK [Show what each device asked for]', 1)[1].split('PLAY RECAP', 1)[0]
    return [json.loads(item) for item in yaml.safe_load(listing.split('=>', 1)[1])['msg']]


def printed_block(stdout):
    """The text of the debug msg, as the yaml result format prints it (a block scalar, indented 8)."""
    kept = []
    for row in stdout.split('msg: |-\n', 1)[1].split('\n'):
        if row and not row.startswith(' ' * 8):
            break
        kept.append(row)
    return textwrap.dedent('\n'.join(kept))


def test_prints_paste_ready_inventory_of_unknown_pis(tmp_path):
    (tmp_path / 'boot-events.jsonl').write_text(
        line(0, '10.99.40.50', 'bootcode.bin') + line(1, '10.99.40.50', '3a4b5c6d/start.elf', outcome='unknown_prefix')
        + line(2, '10.99.40.51', 'dc-a6-32-01-36-c2/start4.elf', outcome='probe')
        + line(3, '10.99.40.52', 'lab-x/kernel_2712.img', outcome='not_found')
        + line(4, '10.99.40.53', '1234abcd/start4.elf', known=True) + 'torn line\n')
    (tmp_path / 'map.json').write_text(json.dumps({'version': 1, 'prefixes': {'lab-x': {'name': 'pi-x', 'dirs': []}}}))
    stdout, text = run_discover(tmp_path)
    assert yaml.safe_load(text) == {'pis': {'hosts': {
        'pi-3a4b5c6d': {'pi_serial': '3a4b5c6d', 'pi_mac': 'b8:27:eb:4b:5c:6d', 'pi_model': 3},
        'pi-dc-a6-32-01-36-c2': {'pi_mac': 'dc:a6:32:01:36:c2', 'pi_tftp_prefix': 'mac', 'pi_model': 4}}}}
    assert text.startswith('# 2 Pi(s) seen on lab-bakery (TFTP hook, proxy DHCP)')
    devices = {device['prefix']: device for device in seen(stdout)}
    assert devices['dc-a6-32-01-36-c2']['address'] == '10.99.40.51'
    assert devices['dc-a6-32-01-36-c2']['last_seen'] == '2026-11-23T10:02:00+00:00'
    assert devices['3a4b5c6d']['requests'] == 2
    # The pasted text is the inventory; the whole log fitted, so slurp read it.
    assert re.search(r'TASK \[Read the end of a big event log\] \*+\nskipping', stdout)
    (tmp_path / 'map.json').unlink()
    stdout, text = run_discover(tmp_path, '-e', 'pifleet_discover_include_known=true', '-e',
                                'pifleet_discover_since=2026-11-23T10:03:00+00:00')
    # A known Pi is already in the fleet: listed, never offered for pasting.
    assert yaml.safe_load(text)['pis']['hosts'] == {
        'pi-lab-x-' + hashlib.sha256(b'lab-x').hexdigest()[:8]: {'pi_tftp_prefix': 'lab-x', 'pi_model': 5}}
    assert sorted(device['prefix'] for device in seen(stdout)) == ['1234abcd', 'lab-x']


def test_file_names_from_the_lan_stay_out_of_the_paste_ready_block(tmp_path):
    """Templates, line separators and fake inventory lines in what devices asked for: the block holds only
    validated values, the listing escapes the rest, no command runs - on every core (make cores)."""
    marks = [tmp_path / 'ran-file', tmp_path / 'ran-outcome']
    template = "{{ lookup('pipe', 'touch %s') }}"
    fake = '\u2028    pi_serial: "deadbeef"\u2028  pi-evil:\u2028# '
    (tmp_path / 'boot-events.jsonl').write_text(
        line(0, '10.99.40.66', 'bbbb2222/' + template % marks[0] + fake, outcome='unknown_prefix')
        + line(1, '10.99.40.66', 'cccc3333./start4.elf', outcome=template % marks[1])
        + line(2, '10.99.40.66', '{{ 7 * 6 }}/start4.elf', outcome='unknown_prefix'))
    (tmp_path / 'map.json').write_text(json.dumps({'version': 1, 'prefixes': {}}))
    stdout, text = run_discover(tmp_path)
    assert [mark.name for mark in marks if mark.exists()] == [], 'a file name ran as a template'
    assert yaml.safe_load(text) == {'pis': {'hosts': {
        'pi-bbbb2222': {'pi_serial': 'bbbb2222'},
        'pi-cccc3333-' + hashlib.sha256(b'cccc3333.').hexdigest()[:8]: {'pi_tftp_prefix': 'cccc3333.', 'pi_model': 4}}}}
    assert '{{' not in text and 'lookup' not in text and 'evil' not in text and 'deadbeef' not in text
    assert [row for row in text.splitlines() if row.startswith('#')] == [
        '# 2 Pi(s) seen on lab-bakery (TFTP hook, proxy DHCP); set pi_serial if missing, pi_bakeform, pi_ip ... '
        '(what each sent: below)']
    assert '\u2028' not in stdout  # the listing is JSON: escaped
    devices = {device['prefix']: device for device in seen(stdout)}
    assert devices['bbbb2222']['last_file'] == template % marks[0] + fake
    assert devices['cccc3333.']['last_outcome'] == template % marks[1]
    assert '{{ 7 * 6 }}' not in devices and '42' not in stdout


def test_big_log_is_tailed_and_missing_log_is_reported(tmp_path):
    old = ''.join(line(0, '10.99.40.50', 'aaaaaaaa/start4.elf') for _unused in range(100))
    new = line(5, '10.99.40.51', 'bbbbbbbb/start4.elf')
    (tmp_path / 'boot-events.jsonl').write_text(old + new)
    stdout, text = run_discover(tmp_path, '-e', 'pifleet_discover_max_bytes=%d' % (len(new) + 10))
    assert re.search(r'TASK \[Read the end of a big event log\] \*+\nok', stdout)
    assert list(yaml.safe_load(text)['pis']['hosts']) == ['pi-bbbbbbbb']
    (tmp_path / 'boot-events.jsonl').unlink()
    _unused, text = run_discover(tmp_path)
    assert text.startswith('# no event log at %s' % (tmp_path / 'boot-events.jsonl'))


OPTION_97 = 'sent size: 17 option: 97 client-machine-id  %s...'


def dnsmasq_line(seconds_ago, xid, message):
    """A line of dnsmasq's DHCP log, in this host's local time (the bakery's, which date +%z tells)."""
    stamp = time.strftime('%b %e %H:%M:%S', time.localtime(time.time() - seconds_ago))
    return '%s dnsmasq-dhcp[77]: %d %s\n' % (stamp, xid, message)


def test_dhcp_requests_name_the_model_and_find_pis_that_never_asked_for_a_file(tmp_path):
    marks = tmp_path / 'ran-vendor'
    (tmp_path / 'dhcp.log').write_text(
        dnsmasq_line(60, 1, 'vendor class: PXEClient:Arch:00000:UNDI:002001')
        + dnsmasq_line(60, 1, 'PXE(eth0) 2c:cf:67:00:00:05 proxy')
        + dnsmasq_line(60, 1, OPTION_97 % '00:52:50:69:35:70:41:d0:00:67:00:00:05:05')
        + dnsmasq_line(50, 2, "vendor class: {{ lookup('pipe', 'touch %s') }}" % marks)
        + dnsmasq_line(50, 2, 'PXE(eth0) b8:27:eb:4b:5c:6d proxy')
        + dnsmasq_line(50, 2, OPTION_97 % '00:3a:4b:5c:6d:3a:4b:5c:6d:3a:4b:5c:6d:3a')
        + dnsmasq_line(40, 3, 'PXE(eth0) dc:a6:32:01:36:c2 proxy')  # a Pi of the fleet (its pi_mac)
        + dnsmasq_line(30, 4, 'PXE(eth0) 00:11:22:33:44:55 proxy'))  # a PC's PXE firmware: not a Pi
    long = 'classroom-204-bench-07-left-side'  # a TFTP_PREFIX_STR as long as the EEPROM takes (32)
    asked = line(1, '10.99.40.57', long + '/config.txt', outcome='unknown_prefix')
    (tmp_path / 'boot-events.jsonl').write_text(line(0, '10.99.40.50', 'bootcode.bin') + asked)
    (tmp_path / 'map.json').write_text(json.dumps({'version': 1, 'prefixes': {}}))
    stdout, text = run_discover(tmp_path, pis={'pi-02': {'pi_mac': 'DC-A6-32-01-36-C2', 'pi_serial': '1234abcd'}})
    assert not marks.exists(), 'a vendor class ran as a template'
    assert yaml.safe_load(text) == {'pis': {'hosts': {
        'pi-2c-cf-67-00-00-05': {'pi_mac': '2c:cf:67:00:00:05', 'pi_model': 5},
        'pi-b8-27-eb-4b-5c-6d': {'pi_serial': '3a4b5c6d', 'pi_mac': 'b8:27:eb:4b:5c:6d', 'pi_model': 3},
        'pi-%s-%s' % (long, hashlib.sha256(long.encode()).hexdigest()[:8]): {'pi_tftp_prefix': long}}}}
    devices = {device.get('mac') or device['prefix']: device for device in seen(stdout)}
    assert set(devices) == {'2c:cf:67:00:00:05', 'b8:27:eb:4b:5c:6d', long, ''}  # '': the bootcode.bin address
    pi5 = devices['2c:cf:67:00:00:05']
    assert (pi5['board'], pi5['model_from'], pi5['dhcp']['answers']) == ('Pi 5 8GB', 'dhcp client id', 1)
    assert devices['b8:27:eb:4b:5c:6d']['dhcp']['vendor_class'] == "{{ lookup('pipe', 'touch %s') }}" % marks
