# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The playbooks on Pis (reimage, upgrade, rollback) run the fleet role delegated to each bakery in turn with that
bakery's settings, exactly as site would see them there, and nothing of the bakery before it.

They used to copy each bakery's settings into facts, one bakery after another: a setting one bakery had and the next
did not stayed for the next (its exports file, its roots directory). playbooks/tasks/bakery_share.yml now gives the
role each of its settings as a variable of the include, the bakery's own or the role's default; this holds that list
to roles/fleet/defaults/main.yml, by rendering both for bakeries that set different things.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from rolevars import trusted

REPO = Path(__file__).resolve().parents[3]
SHARE = REPO / 'playbooks' / 'tasks' / 'bakery_share.yml'
DEFAULTS = REPO / 'roles' / 'fleet' / 'defaults' / 'main.yml'
# What the step itself decides, not a setting of the bakery.
PER_STEP = {'fleet_bakery_host', 'fleet_rebuild', 'fleet_rebuild_state', 'fleet_rebuild_generation'}

BAKERIES = {
    'nothing set': {},
    'pifleet settings': {
        'pifleet_pis_group': 'fleet', 'pifleet_bakery_group': 'servers', 'pifleet_bakeform_store': '/data/store',
        'pifleet_roots_dir': '/data/roots', 'pifleet_disks_dir': '/data/disks', 'pifleet_boot_dir': '/data/pis',
        'pifleet_map_path': '/data/map.json', 'pifleet_bakeforms': [{'name': 'raspios', 'url': 'http://x/y.img.xz'}],
        'pifleet_nfs_server': '10.0.0.2', 'pifleet_export_scope': '10.0.0.0/24', 'pifleet_boot_mount': 'nfs',
        'pifleet_overcommit': 1.5, 'pifleet_allow_root_filesystem': True,
        'pifleet_ssh_authorized_keys': ['ssh-ed25519 AAAA admin'], 'pifleet_prune': True,
        'pifleet_host_ca': '', 'pifleet_known_hosts': '/tmp/known_hosts'},
    'fleet settings over pifleet ones': {
        'pifleet_roots_dir': '/data/roots', 'fleet_roots_dir': '/other/roots', 'fleet_nfs_exports_file': '/x.conf',
        'fleet_nfs_ganesha_config': '/g.conf', 'fleet_nfs_reload': False, 'fleet_clone_method': 'copy',
        'fleet_host_key_types': ['ed25519'], 'fleet_units_dir': '/run/units', 'fleet_packages': [],
        'fleet_hook_service': '', 'fleet_default_bakeform': 'raspios', 'fleet_nfs_backend': 'kernel'},
    'only its address': {'ansible_default_ipv4': {'address': '10.0.0.7'}},
}


def load(path):
    return yaml.safe_load(path.read_text(encoding='utf-8'))


def share_vars():
    task = next(t for t in load(SHARE) if 'ansible.builtin.include_role' in t)
    return task['vars']


def render(variables, name):
    templar = Templar(loader=DataLoader(), variables=variables)
    return templar.template(trust_as_template('{{ %s }}' % name))


def as_site_sees(bakery, name):
    """The role's variable ``name`` on a bakery with these host variables (they beat the role's defaults)."""
    variables = dict(trusted(load(DEFAULTS)), **bakery)
    return render(variables, name)


def as_the_share_gives(hostvars, bakery, name):
    """The same variable as bakery_share.yml gives it when the step is at ``bakery``, seen from a Pi that sets none
    of the bakery's settings."""
    variables = dict(trusted(share_vars()), hostvars=hostvars, pifleet_step_bakery=bakery, pifleet_step_pis=['pi-01'],
                     pifleet_step_state='rebuilt', pifleet_step_generation='')
    return render(variables, name)


def test_every_setting_of_the_role_is_given():
    given = set(share_vars()) - {'pifleet_share_vars'}
    assert given == set(load(DEFAULTS)), 'bakery_share.yml and roles/fleet/defaults/main.yml list other settings'


@pytest.mark.parametrize('case', sorted(BAKERIES))
def test_each_setting_is_the_bakerys_own_or_the_roles_default(case):
    bakery = BAKERIES[case]
    for name in sorted(set(load(DEFAULTS)) - PER_STEP):
        assert as_the_share_gives({'b1': bakery}, 'b1', name) == as_site_sees(bakery, name), name


def test_a_setting_of_one_bakery_never_reaches_the_next():
    """The order of the loop in bakery_step.yml: b1 sets everything, b2 nothing, then b3 only fleet_* ones."""
    hostvars = {'b1': BAKERIES['pifleet settings'], 'b2': {}, 'b3': BAKERIES['fleet settings over pifleet ones']}
    names = sorted(set(load(DEFAULTS)) - PER_STEP)
    seen = {bakery: {name: as_the_share_gives(hostvars, bakery, name) for name in names} for bakery in hostvars}
    assert seen['b1']['fleet_roots_dir'] == '/data/roots' and seen['b1']['fleet_boot_mount'] == 'nfs'
    assert seen['b2'] == {name: as_site_sees({}, name) for name in names}
    assert seen['b2']['fleet_roots_dir'] == '/srv/pifleet/roots' and seen['b2']['fleet_boot_mount'] == 'none'
    assert seen['b3']['fleet_roots_dir'] == '/other/roots' and seen['b3']['fleet_boot_mount'] == 'none'
    assert seen['b3']['fleet_host_ca'] == '/var/lib/pifleet/ssh/host_ca'  # b1's '' (no CA) stayed with b1


def test_the_step_names_its_bakery_and_pis():
    variables = {'hostvars': {'b1': {'fleet_bakery_host': 'elsewhere', 'fleet_rebuild': ['pi-09']}}}
    assert as_the_share_gives(variables['hostvars'], 'b1', 'fleet_bakery_host') == 'b1'
    assert as_the_share_gives(variables['hostvars'], 'b1', 'fleet_rebuild') == ['pi-01']
    assert as_the_share_gives(variables['hostvars'], 'b1', 'fleet_rebuild_state') == 'rebuilt'
