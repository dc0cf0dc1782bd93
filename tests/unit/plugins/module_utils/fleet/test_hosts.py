# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""fleet.hosts: the bakeries and Pis of an inventory from the group settings wherever they are set."""

from __future__ import annotations

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.hosts import HostsError, find, owner


def inventory(groups, variables=None):
    """(groups with 'all', value(host, name)) for an inventory of ``groups`` and per-host ``variables``."""
    hosts = []
    for members in groups.values():
        hosts.extend(host for host in members if host not in hosts)
    variables = variables or {}
    return dict(groups, all=hosts), lambda host, name: variables.get(host, {}).get(name)


def problems(groups, variables=None, **options):
    with pytest.raises(HostsError) as raised:
        find(*inventory(groups, variables), **options)
    return raised.value.problems


def test_the_defaults():
    found = find(*inventory({'bakery': ['b1'], 'pis': ['pi-1', 'pi-2']}))
    assert found == {'bakeries': ['b1'], 'bakery_group': 'bakery', 'pi_groups': {'b1': 'pis'}, 'pis': ['pi-1', 'pi-2'],
                     'bakery_of': {'pi-1': 'b1', 'pi-2': 'b1'}, 'pis_of': {'b1': ['pi-1', 'pi-2']}}


@pytest.mark.parametrize('where', ['all', 'bakeries only'])
def test_group_names_set_where_users_put_them(where):
    """group_vars/all: every host sees them; the bakery group's own group_vars: only the bakeries do."""
    groups = {'servers': ['b1'], 'fleet': ['pi-1', 'pi-2'], 'other': ['x']}
    settings = {'pifleet_bakery_group': 'servers', 'pifleet_pis_group': 'fleet'}
    hosts = ['b1', 'pi-1', 'pi-2', 'x'] if where == 'all' else ['b1']
    found = find(*inventory(groups, {host: settings for host in hosts}))
    assert found['bakeries'] == ['b1'] and found['pis'] == ['pi-1', 'pi-2'] and found['bakery_group'] == 'servers'


def test_several_bakeries_each_pi_to_its_own():
    groups = {'bakery': ['b2', 'b1'], 'pis': ['pi-1', 'pi-2', 'pi-3']}
    found = find(*inventory(groups, {'pi-2': {'pi_bakery': 'b1'}}))
    assert found['bakeries'] == ['b2', 'b1']  # the group's order: the first is the default bakery
    assert found['bakery_of'] == {'pi-1': 'b2', 'pi-2': 'b1', 'pi-3': 'b2'}
    assert found['pis_of'] == {'b2': ['pi-1', 'pi-3'], 'b1': ['pi-2']}
    assert owner(None, found['bakeries']) == 'b2' and owner('b1', found['bakeries']) == 'b1'


def test_a_pi_group_per_bakery():
    groups = {'bakery': ['b1', 'b2'], 'room1': ['pi-1'], 'room2': ['pi-2', 'pi-3']}
    variables = {'b1': {'pifleet_pis_group': 'room1'}, 'b2': {'pifleet_pis_group': 'room2'},
                 'pi-2': {'pi_bakery': 'b2'}, 'pi-3': {'pi_bakery': 'b2'}}
    found = find(*inventory(groups, variables))
    assert found['pi_groups'] == {'b1': 'room1', 'b2': 'room2'}
    assert found['pis_of'] == {'b1': ['pi-1'], 'b2': ['pi-2', 'pi-3']}
    # pi-3 without pi_bakery belongs to the first bakery, whose Pis are room1: no bakery would plan it.
    variables['pi-3'] = {}
    assert problems(groups, variables) == [
        'pi-3 is in group room2 (the Pis of bakery b2) but is served by bakery b1 (the first bakery), whose Pis are '
        'group room1: set pi_bakery: b2, or put it in group room1']


@pytest.mark.parametrize('groups, variables, expected', [
    ({'pis': ['pi-1']}, {}, 'no bakery: the group bakery (pifleet_bakery_group, default bakery) is not in the '
                            'inventory. Put the bakery in group bakery'),
    ({'bakery': [], 'pis': ['pi-1']}, {}, 'no bakery: the group bakery (pifleet_bakery_group, default bakery) has '
                                          'no hosts'),
    ({'bakeries': ['b1'], 'pis': ['pi-1']}, {'pi-1': {'pifleet_bakery_group': 'bakerys'}},
     'no bakery: the group bakery (pifleet_bakery_group, default bakery) is not in the inventory; the group bakerys '
     '(pifleet_bakery_group) is not in the inventory.'),
    ({'bakery': ['b1'], 'fleet': ['pi-1']}, {}, 'the group pis (pifleet_pis_group of bakery b1) is not in the '
                                                'inventory: set pifleet_pis_group to the group that holds the Pis'),
    ({'bakery': ['b1'], 'pis': ['pi-1']}, {'pi-1': {'pi_bakery': 'b9'}},
     "pi-1: pi_bakery 'b9' is not a bakery of the inventory (bakeries: b1)"),
    ({'bakery': ['b1', 'b2'], 'pis': []}, {'b2': {'pifleet_bakery_group': 'bakery2'}, 'bakery2': {}},
     None),
])
def test_problems_are_named(groups, variables, expected):
    if expected is None:  # b2 names a group it is not in: it is no bakery; b1 is
        assert find(*inventory(groups, variables))['bakeries'] == ['b1']
        return
    found = problems(groups, variables)
    assert any(problem.startswith(expected) for problem in found), found


def test_bakeries_must_agree_on_their_group():
    groups = {'bakery': ['b1'], 'servers': ['b2'], 'pis': []}
    variables = {'b2': {'pifleet_bakery_group': 'servers'}}
    assert problems(groups, variables) == [
        'the bakeries name different groups in pifleet_bakery_group (b1: bakery, b2: servers); set it once, in '
        'group_vars/all']


def test_pis_required_group_or_ignored():
    groups = {'bakery': ['b1'], 'pis': []}
    assert find(*inventory(groups), pis='group')['pis'] == []  # a fleet of none: site still converges the bakery
    assert problems(groups, pis='required') == ['no Pis: the group pis (pifleet_pis_group) has no hosts']
    assert find(*inventory({'bakery': ['b1']}), pis='ignored')['pis'] == []  # discover needs no Pi group


def test_the_limit_must_select_what_the_playbook_runs_on():
    groups = {'bakery': ['b1'], 'pis': ['pi-1', 'pi-2']}
    assert find(*inventory(groups), target='pis', selected=['pi-2'])['pis'] == ['pi-1', 'pi-2']
    assert problems(groups, target='pis', selected=['b1']) == [
        'the limit selects none of the pis (pi-1, pi-2): this playbook runs on the Pis; widen --limit']
    assert problems(groups, target='bakeries', selected=['pi-1']) == [
        'the limit selects none of the bakeries (b1): this playbook runs on the bakeries; widen --limit']


def test_each_hosts_variables_are_read_once_per_name():
    groups, value = inventory({'bakery': ['b1'], 'pis': ['pi-%d' % i for i in range(50)]})
    reads = []
    find(groups, lambda host, name: reads.append((host, name)) or value(host, name))
    assert len(reads) == len(set(reads)) and ('pi-7', 'pi_bakery') in reads
