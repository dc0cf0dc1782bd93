# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role documents every default in meta/argument_specs.yml, and its templates carry ansible_managed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES_DIR = Path(__file__).resolve().parents[3] / 'roles'
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / 'tasks' / 'main.yml').is_file())
TEMPLATES = sorted(str(t.relative_to(ROLES_DIR)) for t in ROLES_DIR.glob('*/templates/**/*') if t.is_file())
HEADER = '{{ ansible_managed | comment }}'


def load(path):
    with open(path, encoding='utf-8') as handle:
        return yaml.safe_load(handle)


def defaults(role):
    path = ROLES_DIR / role / 'defaults' / 'main.yml'
    return (load(path) or {}) if path.is_file() else {}


def options(role):
    spec = load(ROLES_DIR / role / 'meta' / 'argument_specs.yml')
    return spec['argument_specs']['main'].get('options') or {}


def test_the_boot_service_roles_are_found():
    assert {'dnsmasq', 'nfs_server', 'tftp_hook'} <= set(ROLES)


@pytest.mark.parametrize('role', ROLES)
def test_argument_specs_list_exactly_the_defaults(role):
    assert (ROLES_DIR / role / 'meta' / 'argument_specs.yml').is_file(), 'role %s has no meta/argument_specs.yml' % role
    documented, defined = set(options(role)), set(defaults(role))
    # Settings shared by roles and playbooks (pifleet_*) are documented where they are read; their one default is
    # checked by test_shared_settings.py.
    documented = {name for name in documented if not name.startswith('pifleet_')}
    assert documented - defined == set(), 'documented in argument_specs but missing from defaults/main.yml'
    assert defined - documented == set(), 'in defaults/main.yml but not documented in argument_specs'


@pytest.mark.parametrize('role', ROLES)
def test_every_option_has_a_description_type_and_the_real_default(role):
    values = defaults(role)
    for name, option in options(role).items():
        assert option.get('description'), '%s: %s has no description' % (role, name)
        assert option.get('type'), '%s: %s has no type' % (role, name)
        if name in values:
            assert option.get('default') == values[name], '%s: %s documents default %r, defaults/main.yml has %r' % (
                role, name, option.get('default'), values[name])


@pytest.mark.parametrize('role', ROLES)
def test_role_variables_carry_the_role_prefix(role):
    for name in defaults(role):
        assert name.startswith(role + '_'), '%s: %s lacks the prefix %s_' % (role, name, role)


@pytest.mark.parametrize('template', TEMPLATES)
def test_templates_start_with_ansible_managed(template):
    first = (ROLES_DIR / template).read_text(encoding='utf-8').splitlines()[0]
    assert first == HEADER, '%s starts with %r' % (template, first)
