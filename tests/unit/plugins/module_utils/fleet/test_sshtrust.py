# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.pifleet.netboot.plugins.filter.fleet_known_hosts import fleet_known_hosts
from ansible_collections.pifleet.netboot.plugins.filter.fleet_plan import fleet_plan
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import sshtrust

CA = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostCaKeyOfBakery01xxxxxxxxxxxxxxxxxxxx pifleet host CA'
KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPiThreeHostKeyyyyyyyyyyyyyyyyyyyyyyyyy'
ECDSA = 'ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= root@pi-03'


def plan():
    hostvars = {'pi-01': {'pi_serial': '00000001', 'pi_ip': '10.0.0.51', 'pi_hostname': 'kitchen'},
                'pi-02': {'pi_serial': '00000002', 'pi_ip': '10.0.0.52', 'ansible_host': 'pi-02.lab.example'},
                'pi-03': {'pi_serial': '00000003', 'pi_ip': '10.0.0.53', 'ansible_host': 'bad host,*'}}
    return fleet_plan(sorted(hostvars), hostvars, [{'name': 'bw', 'src': '/srv/images/bw.img'}], nfs_server='10.0.0.2')


def test_principals_are_every_name_the_controller_may_use():
    whole = plan()
    assert [pi['principals'] for pi in whole['pis']] == [
        ['pi-01', 'kitchen', '10.0.0.51'], ['pi-02', '10.0.0.52', 'pi-02.lab.example'], ['pi-03', '10.0.0.53']]
    assert whole['roots'][0]['principals'] == ['pi-01', 'kitchen', '10.0.0.51']
    assert sshtrust.principals('a', 'a', None, '') == ['a']


def test_one_cert_authority_line_and_plain_lines_for_roots_without_a_certificate():
    roots = [{'serial': '00000001', 'host_certificate': True, 'host_keys': ['ssh-ed25519 AAAAone']},
             {'serial': '00000002', 'host_certificate': True, 'host_keys': ['ssh-ed25519 AAAAtwo']},
             {'serial': '00000003', 'host_certificate': False, 'host_keys': [KEY, ECDSA]}]
    lines = fleet_known_hosts(plan(), list(reversed(roots)), CA + '\n', 'bakery01')
    assert lines == [
        '@cert-authority pi-01,kitchen,10.0.0.51,pi-02,10.0.0.52,pi-02.lab.example,pi-03,10.0.0.53 '
        'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostCaKeyOfBakery01xxxxxxxxxxxxxxxxxxxx bakery01',
        'pi-03,10.0.0.53 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPiThreeHostKeyyyyyyyyyyyyyyyyyyyyyyyyy',
        'pi-03,10.0.0.53 ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY=']
    # Without a CA every Pi gets plain lines.
    assert len(fleet_known_hosts(plan(), roots)) == 4


def test_a_thousand_pis_make_lines_of_bounded_length():
    pis = [{'name': 'pi-%04d' % n, 'serial': '%08x' % n,
            'principals': ['pi-%04d' % n, '10.1.%d.%d' % (n // 250, n % 250)]} for n in range(1000)]
    lines = sshtrust.known_hosts({'pis': pis}, [], CA)
    assert len(lines) == 2000 // sshtrust.PER_LINE + 1
    assert sum(line.split(' ')[1].count(',') + 1 for line in lines) == 2000


def test_what_is_no_key_is_refused():
    with pytest.raises(AnsibleFilterError, match='not an SSH public key'):
        fleet_known_hosts(plan(), [], 'ssh-ed25519 AAAA\n@cert-authority * evil')
    with pytest.raises(AnsibleFilterError, match='not an SSH public key'):
        fleet_known_hosts(plan(), [{'serial': '00000001', 'host_keys': ['* ssh-ed25519 AAAA']}], None)
