# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json

import pytest

from ansible_collections.pifleet.netboot.plugins.filter.fleet_plan import fleet_plan, fleet_unbooted
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.fleet import PlanError, plan, unbooted, user_data

SETTINGS = {'bakeforms': {'bookworm': [3, 4, 5], 'old': [3, 4]}, 'default_bakeform': None, 'export_scope': None,
            'roots_dir': '/srv/pifleet/roots', 'disks_dir': '/srv/pifleet/disks', 'nfs_server': '10.0.0.2',
            'ssh_authorized_keys': None}


def pi(**kw):
    base = {'pi_serial': '1234abcd', 'pi_model': 4, 'pi_ip': '10.0.0.50', 'pi_bakeform': 'bookworm'}
    base.update(kw)
    return {key: value for key, value in base.items() if value is not None}


def problems_of(pis, **settings):
    with pytest.raises(PlanError) as err:
        plan(pis, dict(SETTINGS, **settings))
    return err.value.problems


def test_plan_builds_module_arguments():
    result = plan({'pi-01': pi(pi_disks=[{'name': 'data', 'size': '8G', 'fstype': 'ext4'}, {'name': 'swap', 'size': 1}],
                               pi_config_txt='dtoverlay=disable-bt\n', pi_cmdline_extra='quiet'),
                   'pi-02': pi(pi_serial='5678abcd', pi_ip='10.0.0.51')}, SETTINGS)
    assert result['roots'][0] == {'serial': '1234abcd', 'hostname': 'pi-01', 'bakeform': 'bookworm',
                                  'principals': ['pi-01', '10.0.0.50']}
    # Sizes as Ansible reads them (human_to_bytes), so pi_disk makes exactly what the plan accepted.
    assert result['disks'] == [{'name': 'data', 'size': 8 << 30, 'fstype': 'ext4', 'serial': '1234abcd'},
                               {'name': 'swap', 'size': 1, 'fstype': 'none', 'serial': '1234abcd'}]
    # One export for all of a Pi's disks (its disks file system); none for a Pi without disks.
    # Each export names its Pi (serial, hostname): one that fails is named, and kept as it was.
    assert result['exports'] == [
        {'path': '/srv/pifleet/roots/mnt/1234abcd', 'clients': ['10.0.0.50'], 'serial': '1234abcd', 'hostname': 'pi-01',
         'options': ['rw', 'sync', 'no_subtree_check', 'no_root_squash']},
        {'path': '/srv/pifleet/disks/mnt/1234abcd', 'clients': ['10.0.0.50'], 'serial': '1234abcd', 'hostname': 'pi-01',
         'options': ['rw', 'sync', 'no_subtree_check', 'no_root_squash']},
        {'path': '/srv/pifleet/roots/mnt/5678abcd', 'clients': ['10.0.0.51'], 'serial': '5678abcd', 'hostname': 'pi-02',
         'options': ['rw', 'sync', 'no_subtree_check', 'no_root_squash']}]
    assert result['boot'][:1] == [{
        'name': 'pi-01', 'prefix': '1234abcd', 'serial': '1234abcd', 'bakeform': 'bookworm', 'model': 4,
        'nfsroot': '10.0.0.2:/srv/pifleet/roots/mnt/1234abcd', 'cmdline_extra': 'quiet',
        'config_txt': ['dtoverlay=disable-bt']}]


@pytest.mark.parametrize('extra, prefix', [
    ({}, '1234abcd'),
    ({'pi_serial': '100000001234ABCD'}, '1234abcd'),
    ({'pi_mac': 'DC:A6:32:01:36:C2', 'pi_tftp_prefix': 'mac'}, 'dc-a6-32-01-36-c2'),
    ({'pi_tftp_prefix': 'rack1-slot4'}, 'rack1-slot4'),
])
def test_prefix_forms(extra, prefix):
    assert plan({'pi-01': pi(**extra)}, SETTINGS)['boot'][0]['prefix'] == prefix


@pytest.mark.parametrize('pis, expected', [
    ({'pi-01': pi(pi_serial=None)}, 'neither pi_serial nor pi_mac'),
    ({'pi-01': pi(pi_serial=None, pi_mac='dc:a6:32:01:36:c2', pi_tftp_prefix='mac')}, 'needs its serial'),
    ({'pi-01': pi(pi_serial='xyz')}, 'is not a Pi serial'),
    ({'pi-01': pi(pi_mac='dc:a6:32')}, 'pi_mac'),
    ({'pi-01': pi(pi_model=6)}, 'use 3, 4 or 5'),
    ({'pi-01': pi(pi_ip='10.0.0.300')}, 'is not an IP address'),
    ({'pi-01': pi(pi_ip=None)}, 'reserve that address'),
    ({'pi-01': pi(pi_bakeform='nope')}, "'nope' is not declared"),
    ({'pi-01': pi(pi_bakeform=None)}, 'pi_bakeform is not set'),
    ({'pi-01': pi(pi_model=5, pi_bakeform='old')}, 'is a Pi 5 but bakeform old has boot files for Pi 3, 4 only'),
    ({'pi-01': pi(pi_model=3, pi_mac='b8:27:eb:34:ab:cd', pi_tftp_prefix='mac')}, 'a Pi 3 always asks'),
    ({'pi-01': pi(pi_tftp_prefix='mac')}, 'pi_mac is not set'),
    ({'pi-01': pi(pi_tftp_prefix='x' * 33)}, 'at most 32'),
    ({'pi_01': pi()}, 'RFC 1123'),
    ({'pi-01': pi(pi_disks='data')}, 'pi_disks must be a list'),
    ({'pi-01': pi(), 'pi-02': pi(pi_ip='10.0.0.51')}, 'serial 1234abcd is used by pi-01, pi-02'),
    ({'pi-01': pi(), 'pi-02': pi(pi_serial='1234abce')}, 'address 10.0.0.50 is used by pi-01, pi-02'),
    ({'pi-01': pi(pi_mac='dc:a6:32:01:36:c2'), 'pi-02': pi(pi_serial='1234abce', pi_ip='10.0.0.51',
                                                           pi_mac='dc-a6-32-01-36-c2')}, 'MAC dc-a6-32-01-36-c2'),
    ({'pi-01': pi(pi_hostname='same'), 'pi-02': pi(pi_serial='1234abce', pi_ip='10.0.0.51', pi_hostname='same')},
     'host name same is used by'),
])
def test_each_problem_is_named(pis, expected):
    problems = problems_of(pis)
    assert any(expected in p for p in problems), problems


def test_all_problems_are_reported_together():
    problems = problems_of({'pi-01': pi(pi_ip=None), 'pi-02': pi(pi_serial='zz', pi_ip='10.0.0.51'),
                            'pi-03': pi(pi_model=9, pi_serial='1234abcf', pi_ip='10.0.0.52')})
    assert [p.split(':')[0] for p in problems] == ['pi-01', 'pi-02', 'pi-03']


def test_export_scope_widens_only_when_asked():
    result = plan({'pi-01': pi(pi_ip=None)}, dict(SETTINGS, export_scope='10.0.0.0/24'))
    assert result['exports'][0]['clients'] == ['10.0.0.0/24']


def test_default_bakeform_and_unknown_models():
    settings = dict(SETTINGS, bakeforms={'new': None}, default_bakeform='new')
    assert plan({'pi-01': pi(pi_bakeform=None, pi_model=5)}, settings)['roots'][0]['bakeform'] == 'new'


@pytest.mark.parametrize('models, expected', [
    ({'bookworm': [3, 4, 5], 'old': [3, 4]}, []),
    ({'bookworm': [3, 4], 'old': [3, 4]}, ['pi-03']),  # a manifest that boots fewer models than declared
    ({'bookworm': ['4'], 'old': [4]}, ['pi-01', 'pi-03']),  # numbers as text, as a manifest may give them
    ({'bookworm': None}, []),  # a manifest that names no models: not judged
    ({'bookworm': []}, ['pi-01', 'pi-03']),  # one that boots none
    ({}, []),
])
def test_the_pis_whose_bakeform_does_not_boot_their_model(models, expected):
    pis = plan({'pi-01': pi(pi_model=3), 'pi-02': pi(pi_serial='1234abce', pi_ip='10.0.0.51', pi_bakeform='old'),
                'pi-03': pi(pi_serial='1234abcf', pi_ip='10.0.0.52', pi_model=5)}, SETTINGS)['pis']
    assert unbooted(pis, models) == expected
    assert fleet_unbooted(pis, models) == expected
    # the plan itself, given the same models, fails naming exactly those Pis
    if expected:
        found = problems_of({pi['name']: {'pi_serial': pi['serial'], 'pi_model': pi['model'], 'pi_ip': pi['ip'],
                                          'pi_bakeform': pi['bakeform']} for pi in pis},
                            bakeforms=dict(SETTINGS['bakeforms'], **{k: [int(m) for m in v] for k, v in models.items()
                                                                     if v is not None}))
        assert sorted(problem.split(' ')[0] for problem in found) == expected


def test_fleet_default_keys_and_own_keys():
    settings = dict(SETTINGS, ssh_authorized_keys=['ssh-ed25519 AAAA fleet'])
    result = plan({'pi-01': pi(), 'pi-02': pi(pi_serial='1234abce', pi_ip='10.0.0.51',
                                              pi_ssh_authorized_keys=['ssh-ed25519 BBBB own'])}, settings)
    assert [r['ssh_authorized_keys'] for r in result['roots']] == [['ssh-ed25519 AAAA fleet'], ['ssh-ed25519 BBBB own']]


def test_missing_bakery_address():
    assert any('pifleet_nfs_server' in p for p in problems_of({'pi-01': pi()}, nfs_server=''))


class _HostVars(dict):
    """hostvars of one Pi whose pi_power holds a vault variable nobody defined: reading it fails, as Ansible's
    lazy templating does."""

    def __getitem__(self, key):
        if key == 'pi_power':
            raise AssertionError("fleet_plan read pi_power: 'vault_plug_password' is undefined")
        return super().__getitem__(key)


def test_the_fleet_plan_never_reads_pi_power():
    """The fleet powers nothing: its plan holds no plug password or SNMP community, and needs no vault for them."""
    hostvars = {'pi-01': _HostVars(pi(pi_power={'driver': 'http', 'password': 'Sw0rdf1sh-pw'}))}
    result = fleet_plan(['pi-01'], hostvars, [{'name': 'bookworm', 'src': '/srv/b.img'}], nfs_server='10.0.0.2')
    assert result['serials'] == ['1234abcd']
    assert 'Sw0rdf1sh' not in repr(result) and 'power' not in repr(result)


def test_the_plan_exports_no_boot_files_of_a_bakeform():
    """Before generations the plan exported <store>/<bakeform>/boot-nfs; each generation's boot-nfs is exported
    after pi_root now (generations.boot_exports), to the Pis whose root uses it."""
    pis = {'pi-01': pi(), 'pi-02': pi(pi_serial='1234abce', pi_ip=None)}
    result = plan(pis, dict(SETTINGS, boot_mount='nfs', store='/srv/pifleet/bakeforms', export_scope='10.0.0.0/24'))
    assert not [e for e in result['exports'] if 'boot-nfs' in e['path'] or 'bakeforms' in e['path']]
    assert result['export_scope'] == '10.0.0.0/24' and plan(pis, dict(SETTINGS, export_scope='10.0.0.0/24'))


def test_cloud_init_settings_reach_the_roots_item_checked():
    result = plan({'pi-01': pi(pi_cloud_init='#cloud-config\npackages: [htop]\n', pi_cloud_init_instance=2),
                   'pi-02': pi(pi_serial='1234abce', pi_ip='10.0.0.51')}, SETTINGS)
    # The user data (it may hold secrets) stays out of the plan, a fact that -v prints: only where it comes from.
    assert result['roots'][0]['cloud_init'] == {'instance': '2'} and result['roots'][0]['cloud_init_from'] == 'pi-01'
    assert sorted(result['pis'][0]) == ['bakeform', 'ip', 'model', 'name', 'principals', 'serial']
    assert 'htop' not in json.dumps(result)
    assert 'cloud_init' not in result['roots'][1]  # pi_root seeds it from its identity alone
    # The roots step reads it then, as JSON text for pi_root's no_log option (hidden whole, nothing else).
    ready = user_data(result['roots'], {'pi-01': {'pi_cloud_init': '#cloud-config\npackages: [htop]\n'}})
    assert ready[0]['cloud_init'] == {'instance': '2', 'user_data': '{"packages": ["htop"]}'}
    assert 'cloud_init_from' not in ready[0] and ready[1] == result['roots'][1]


@pytest.mark.parametrize('extra, expected', [
    ({'pi_cloud_init': 'packages: [htop\n'}, 'pi-01: pi_cloud_init is not valid YAML'),
    ({'pi_cloud_init': ['htop']}, 'pi-01: pi_cloud_init must be a cloud-config mapping'),
    ({'pi_cloud_init': {'hostname': 'other'}}, 'pi-01: pi_cloud_init sets hostname'),
    ({'pi_cloud_init': {'network': {'version': 2}}}, 'cloud-init networking stays off'),
    ({'pi_cloud_init_instance': 'a b'}, 'pi-01: pi_cloud_init_instance'),
])
def test_cloud_init_problems_are_named(extra, expected):
    problems = problems_of({'pi-01': pi(**extra)})
    assert any(expected in p and p.startswith('pi-01: ') for p in problems), problems
