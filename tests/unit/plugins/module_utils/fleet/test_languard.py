# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The LAN guard's pairs (which MAC may send from which Pi's address) and its nftables table."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ansible_collections.pifleet.netboot.plugins.filter.lan_guard import lan_guard
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import languard as lg

PIS = {
    'pi-a': {'pi_ip': '10.0.0.50', 'pi_mac': 'DC-A6-32-01-36-C2', 'pi_serial': '3a4b5c6d', 'pi_model': 4},
    'pi-3': {'pi_ip': '10.0.0.51', 'pi_model': 3, 'pi_serial': '0000000000c0ffee'},
    'pi-6': {'pi_ip': 'fd00::0005', 'pi_mac': '2c:cf:67:00:00:01'},
    'scoped': {'pi_mac': '2c:cf:67:00:00:02'},  # no pi_ip (pifleet_export_scope): nothing to guard
}


def test_pairs_tie_each_pis_address_to_its_mac():
    assert lg.pairs(PIS) == [
        {'name': 'pi-3', 'mac': 'b8:27:eb:c0:ff:ee', 'ip': '10.0.0.51', 'family': 4},  # a Pi 3: from its serial
        {'name': 'pi-6', 'mac': '2c:cf:67:00:00:01', 'ip': 'fd00::5', 'family': 6},
        {'name': 'pi-a', 'mac': 'dc:a6:32:01:36:c2', 'ip': '10.0.0.50', 'family': 4}]


def test_every_problem_is_named_at_once():
    broken = {'no-mac': {'pi_ip': '10.0.0.7', 'pi_model': 4}, 'bad-mac': {'pi_ip': '10.0.0.8', 'pi_mac': 'zz'},
              'bad-ip': {'pi_ip': '10.0.0.300', 'pi_mac': '2c:cf:67:00:00:03'},
              'twin-1': {'pi_ip': '10.0.0.9', 'pi_mac': '2c:cf:67:00:00:04'},
              'twin-2': {'pi_ip': '10.0.0.9', 'pi_mac': '2c:cf:67:00:00:05'}}
    with pytest.raises(lg.GuardError) as info:
        lg.pairs(broken)
    problems = info.value.problems
    assert len(problems) == 4, problems
    assert "bad-ip: pi_ip '10.0.0.300' is not an IP address" in problems
    assert any(p.startswith('bad-mac: pi_mac:') for p in problems)
    assert any(p.startswith('no-mac: pi_mac is not set, so the LAN guard would drop its own') for p in problems)
    assert 'address 10.0.0.9 is pi_ip of twin-1, twin-2; each Pi needs its own' in problems


def test_the_table_drops_guarded_ports_from_a_pis_address_unless_from_its_mac():
    text = lg.ruleset(lg.pairs(PIS), [111, 2049, 20048], [69, 111, 2049, '20048', ' 32768-60999 '], ['eth0'])
    assert text.startswith('# pifleet.netboot lan_guard')
    # Made whole in one transaction: created if missing, deleted, made again.
    assert 'table inet pifleet_lan_guard\ndelete table inet pifleet_lan_guard\ntable inet pifleet_lan_guard {' in text
    assert 'elements = { b8:27:eb:c0:ff:ee . 10.0.0.51,\n                     dc:a6:32:01:36:c2 . 10.0.0.50 }' in text
    assert 'elements = { 2c:cf:67:00:00:01 . fd00::5 }' in text
    assert 'iifname { "eth0" } ip saddr @fleet4 jump pi4' in text and 'iifname { "eth0" } ip6 saddr @fleet6' in text
    assert 'ether saddr . ip saddr @pis4 return\n        tcp dport { 111, 2049, 20048 } counter drop\n' \
           '        udp dport { 69, 111, 2049, 20048, 32768-60999 } counter drop' in text
    assert 'dport { 22' not in text and ', 22,' not in text  # the admin's SSH is never matched
    assert 'policy accept' in text and 'policy drop' not in text


def test_no_pis_still_makes_a_valid_empty_table():
    text = lg.ruleset([], [2049], [69])
    assert 'set pis4 {\n        type ether_addr . ipv4_addr\n    }' in text and 'iifname' not in text


@pytest.mark.parametrize('ports, message', [([0], 'is not a port'), (['70000'], 'is not a port'),
                                            (['200-100'], 'is not a port'), (['ssh'], 'is not a port')])
def test_bad_ports_are_refused(ports, message):
    with pytest.raises(lg.GuardError, match=message):
        lg.ruleset([], ports, [69])


def test_bad_interfaces_are_refused():
    with pytest.raises(lg.GuardError, match='is not an interface name'):
        lg.ruleset([], [2049], [69], ['eth0; flush ruleset'])


def test_the_filter_reads_only_the_pis_addresses_and_macs():
    class Vars(dict):
        def __getitem__(self, key):
            if key == 'pi_power':
                raise AssertionError('the guard must never read pi_power')
            return super().__getitem__(key)

    hostvars = {name: Vars(dict(hv, pi_power={'password': 'secret'})) for name, hv in PIS.items()}
    made = lan_guard(list(PIS), hostvars, [2049], [69])
    assert [p['name'] for p in made['pairs']] == ['pi-3', 'pi-6', 'pi-a'] and 'secret' not in made['ruleset']


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('nft'), reason='nft -c needs root and nftables')
def test_nft_accepts_the_table(tmp_path):
    path = tmp_path / 'guard.nft'
    path.write_text(lg.ruleset(lg.pairs(PIS), [111, 2049, 20048], [69, 111, 2049, 20048, '32768-60999'], ['eth0']))
    proc = subprocess.run(['nft', '-c', '-f', str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
