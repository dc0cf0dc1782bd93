# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One name per setting: what roles and playbooks share is a pifleet_* variable, with one default everywhere.

The fleet role writes the map the TFTP hook reads and the playbooks read the events the hook writes; when
each had a name of its own (tftp_hook_map_path, pifleet_map_path), moving one moved only half of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from rolevars import trusted

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import hosts as fleet_hosts

REPO = Path(__file__).resolve().parents[3]
ROLES = sorted(p.name for p in (REPO / 'roles').iterdir() if (p / 'tasks' / 'main.yml').is_file())
YAML_FILES = sorted([*REPO.glob('roles/*/*/*.yml'), *REPO.glob('playbooks/**/*.yml')])
DEFAULT_RE = re.compile(r"""\b(pifleet_[a-z0-9_]+) *\| *default\((['"])(.*?)\2\)""")
# A role's variable, not a keyword argument (boot_events_summary(fleet_map=...)) or part of a longer name.
ROLE_VAR_RE = re.compile(r'(?<![\w.-])(?:__)?(%s)_[a-z0-9_]+(?![\w=])' % '|'.join(ROLES))
# The README's table of shared settings: | `pifleet_map_path` | `/var/lib/...` | ...
README_ROW_RE = re.compile(r'^\| `(pifleet_[a-z0-9_]+)` \| `([^`]*)` \|', re.M)


def load(path):
    return yaml.safe_load(path.read_text(encoding='utf-8')) or {}


def shared_defaults():
    """{name: {value: [where, ...]}} for every default a role or playbook gives a pifleet_* variable."""
    found = {}
    for path in YAML_FILES:
        where = str(path.relative_to(REPO))
        for name, _quote, value in DEFAULT_RE.findall(path.read_text(encoding='utf-8')):
            found.setdefault(name, {}).setdefault(value, []).append(where)
    # The first play of every playbook finds the bakeries and the Pis with these, read host by host (fleet_hosts).
    for name, value in (('pifleet_bakery_group', fleet_hosts.BAKERY_GROUP),
                        ('pifleet_pis_group', fleet_hosts.PIS_GROUP)):
        found.setdefault(name, {}).setdefault(value, []).append('plugins/module_utils/fleet/hosts.py')
    for role in ROLES:
        defaults = REPO / 'roles' / role / 'defaults' / 'main.yml'
        for name, value in (load(defaults) if defaults.is_file() else {}).items():
            if name.startswith('pifleet_'):
                found.setdefault(name, {}).setdefault(str(value), []).append('roles/%s/defaults' % role)
        options = load(REPO / 'roles' / role / 'meta' / 'argument_specs.yml')['argument_specs']['main']['options']
        for name, option in options.items():
            if name.startswith('pifleet_'):
                found.setdefault(name, {}).setdefault(str(option['default']), []).append('roles/%s/meta' % role)
    return found


def test_every_shared_setting_has_one_default():
    found = shared_defaults()
    assert {'pifleet_map_path', 'pifleet_events_path', 'pifleet_bakeform_store', 'pifleet_roots_dir'} <= set(found)
    conflicts = {name: values for name, values in found.items() if len(values) > 1}
    assert conflicts == {}, 'shared settings with different defaults: %s' % conflicts


def test_the_readme_lists_every_shared_setting_with_its_default():
    documented = dict(README_ROW_RE.findall((REPO / 'README.md').read_text(encoding='utf-8')))
    defaults = {name: next(iter(values)) for name, values in shared_defaults().items()}
    missing = sorted(set(defaults) - set(documented))
    assert missing == [], 'README.md does not list %s' % missing
    assert {name: documented[name] for name in defaults} == defaults


def interface(role):
    """What a role documents as its interface in meta/argument_specs.yml: the options of every entry point, and the
    results an entry point's description says it leaves (C(fleet_roots_result)). A playbook may pass those to
    include_role and read those back; anything else of the role is its own business."""
    names = set()
    for entry in load(REPO / 'roles' / role / 'meta' / 'argument_specs.yml')['argument_specs'].values():
        names.update(entry.get('options') or {})
        for line in entry.get('description') or []:
            if re.search(r'\b(leaves|sets)\b', line, re.I):
                names.update(re.findall(r'C\((%s_[a-z0-9_]+)\)' % re.escape(role), line))
    return names


def test_the_fleet_role_documents_what_reimage_passes_and_reads():
    assert {'fleet_bakery_host', 'fleet_rebuild', 'fleet_roots_result'} <= interface('fleet')
    assert 'fleet_plan' not in interface('fleet') and 'fleet_store' in interface('fleet')


@pytest.mark.parametrize('path', YAML_FILES, ids=[str(p.relative_to(REPO)) for p in YAML_FILES])
def test_no_role_or_playbook_reads_another_roles_variables(path):
    """Reading tftp_hook_events_path in a playbook is how the same file got two names."""
    text = re.sub(r'(?m)^\s*#.*$', '', path.read_text(encoding='utf-8'))  # comments may name anything
    parts = path.relative_to(REPO).parts
    own = parts[1] if parts[0] == 'roles' else None
    # Settings are shared through pifleet_* names, so a playbook names a role's variable only for what that role
    # documents as its interface (the inputs and results of an entry point that it includes).
    public = set().union(*(interface(role) for role in ROLES)) if own is None else set()
    foreign = sorted({match.group(0) for match in ROLE_VAR_RE.finditer(text)
                      if match.group(1) != own and match.group(0) not in public})
    assert foreign == [], '%s reads variables of another role: %s' % (path.relative_to(REPO), foreign)


def role_variables(role, **overrides):
    """A role's defaults and vars as Ansible templates them (inventory variables beat role defaults)."""
    loader = DataLoader()
    variables = {}
    for part in ('defaults/main.yml', 'vars/main.yml'):
        path = REPO / 'roles' / role / part
        if path.is_file():
            variables.update(trusted(loader.load_from_file(str(path))))
    variables.update(overrides, ansible_facts={'default_ipv4': {'address': '10.0.0.10'}})
    templar = Templar(loader=loader, variables=variables)
    return lambda name: templar.template(trust_as_template('{{ %s }}' % name))


@pytest.mark.parametrize('inventory', [
    {},
    {'pifleet_map_path': '/data/pifleet/map.json', 'pifleet_events_path': '/data/log/events.jsonl',
     'pifleet_bakeform_store': '/data/bakeforms', 'pifleet_boot_dir': '/data/pis'},
], ids=['defaults', 'moved'])
def test_the_hook_reads_what_the_fleet_writes(inventory):
    hook, fleet = role_variables('tftp_hook', **inventory), role_variables('fleet', **inventory)
    config = hook('__tftp_hook_config')
    assert config['map'] == fleet('fleet_map_path') == inventory.get('pifleet_map_path', config['map'])
    assert config['roots'] == [fleet('fleet_store'), fleet('fleet_boot_dir')]
    assert config['events'] == inventory.get('pifleet_events_path', '/var/log/pifleet/boot-events.jsonl')
    assert hook('tftp_hook_log_dir') == config['events'].rsplit('/', 1)[0]  # the only place the service writes


PLAYBOOKS = sorted(REPO.glob('playbooks/*.yml'))


@pytest.mark.parametrize('path', PLAYBOOKS, ids=[p.name for p in PLAYBOOKS])
def test_every_playbook_finds_its_hosts_from_the_settings_wherever_they_are_set(path):
    """A play's hosts: sees extra vars only, never group_vars: `hosts: "{{ pifleet_pis_group | default('pis') }}"`
    silently matched no host when the group was set in group_vars. The first play finds them (plays/hosts.yml)."""
    plays = load(path)
    first = plays[0]
    assert first.get('ansible.builtin.import_playbook') == 'plays/hosts.yml', path.name
    assert first['vars']['__pifleet_target'] in ('bakeries', 'pis')
    assert first['vars']['__pifleet_pis'] in ('required', 'group', 'ignored')
    for play in plays[1:]:
        assert 'pifleet_' not in str(play['hosts']).replace('__pifleet_', ''), (path.name, play['hosts'])
        # upgrade and rollback take a survey's target, else every Pi found
        assert play['hosts'] in (('__pifleet_bakeries',) if first['vars']['__pifleet_target'] == 'bakeries' else (
            '{{ __pifleet_pis_pattern }}', '{{ %s_target | default(__pifleet_pis_pattern, true) }}' % path.stem)), (
            path.name, play['hosts'])
    text = path.read_text(encoding='utf-8') + ''.join(p.read_text(encoding='utf-8')
                                                      for p in REPO.glob('playbooks/tasks/*.yml'))
    assert "groups[pifleet_bakery_group | default('bakery')][0]" not in text  # one bakery for every Pi
    assert not re.search(r'hosts:\s*bakery\b', text)
