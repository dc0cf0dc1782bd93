# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet_hosts filter over hostvars-like mappings (the playbooks run it for real: tests/integration)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.pifleet.netboot.plugins.filter.fleet_hosts import fleet_hosts

GROUPS = {'all': ['b1', 'pi-1', 'pi-2'], 'servers': ['b1'], 'pis': ['pi-1', 'pi-2']}


def test_settings_read_from_each_hosts_own_variables():
    hostvars = {'b1': {'pifleet_bakery_group': 'servers'}, 'pi-1': {}, 'pi-2': {'pi_bakery': 'b1'}}
    found = fleet_hosts(GROUPS, hostvars, target='pis', pis='required', selected=['pi-2'])
    assert found['bakeries'] == ['b1'] and found['bakery_of'] == {'pi-1': 'b1', 'pi-2': 'b1'}


def test_problems_fail_the_filter_with_every_one_named():
    with pytest.raises(AnsibleFilterError) as raised:
        fleet_hosts(GROUPS, {'b1': {}, 'pi-1': {}, 'pi-2': {}}, pis='required')
    assert 'no bakery: the group bakery (pifleet_bakery_group, default bakery) is not in the inventory' in str(
        raised.value)


@pytest.mark.parametrize('options', [{'target': 'pi'}, {'pis': 'maybe'}])
def test_options_are_checked(options):
    with pytest.raises(AnsibleFilterError, match='target must be one of bakeries, pis and pis one of required'):
        fleet_hosts(GROUPS, {}, **options)
