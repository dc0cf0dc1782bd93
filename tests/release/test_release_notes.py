# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release notes of the next release, as `make release-notes` makes them (antsibull-changelog release on a copy of
the tree): the sections a user expects, every module, plugin, role and playbook listed, no path that is not in the
repository, valid reStructuredText. Not shipped in the tarball (it needs the checkout and its Makefile)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FRAGMENTS = REPO / 'changelogs' / 'fragments'
VERSION = yaml.safe_load((REPO / 'galaxy.yml').read_text())['version']
RELEASED = yaml.safe_load((REPO / 'changelogs' / 'changelog.yaml').read_text()).get('releases') or {}
# Against no earlier release nothing can break, be fixed for security, go or be deprecated.
NOT_IN_A_FIRST_RELEASE = ('breaking_changes', 'security_fixes', 'deprecated_features', 'removed_features')
# ``paths`` the notes may name: the repository's own folders.
TOP_DIRS = ('plugins/', 'roles/', 'playbooks/', 'lab/', 'tests/', 'docs/', 'inventories/', 'bench/', 'molecule/',
            'meta/', 'changelogs/')


@pytest.fixture(scope='module')
def notes(tmp_path_factory):
    """(CHANGELOG.rst text, changelog.yaml) of the release, made on a copy."""
    out = tmp_path_factory.mktemp('release')
    env = {key: value for key, value in os.environ.items() if not key.startswith(('ANSIBLE_', 'MAKE'))}
    env['PATH'] = '%s:%s' % (Path(sys.executable).parent, env['PATH'])  # ansible-doc lists the plugins
    proc = subprocess.run(['make', '-s', 'release-notes', 'RELEASE_DIR=%s' % out], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tree = out / 'ansible_collections' / 'pifleet' / 'netboot'
    return (tree / 'CHANGELOG.rst').read_text(), yaml.safe_load((tree / 'changelogs' / 'changelog.yaml').read_text())


def sections(text):
    """{title: body} of the release's sections (underlined with -) and their subsections (~)."""
    found, title = {}, None
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if index + 1 < len(lines) and set(lines[index + 1]) in ({'-'}, {'~'}) and len(lines[index + 1]) == len(line):
            title = line
            found[title] = []
        elif title and not set(line) <= {'-', '~'}:
            found[title].append(line)
    return {key: '\n'.join(value) for key, value in found.items()}


def test_the_fragments_of_a_first_release_hold_no_changes_against_an_earlier_one():
    if RELEASED:
        pytest.skip('released before: every section is open')
    wrong = {path.name: sorted(set(yaml.safe_load(path.read_text()) or {}) & set(NOT_IN_A_FIRST_RELEASE))
             for path in sorted(FRAGMENTS.glob('*.yml'))}
    wrong = {name: keys for name, keys in wrong.items() if keys}
    assert wrong == {}, ('%s is the first release: describe these as major_changes or minor_changes (what the '
                         'collection does), not against a release that never was: %s' % (VERSION, wrong))


def test_the_notes_have_the_sections_a_first_release_needs(notes):
    text, _changes = notes
    found = sections(text)
    assert text.startswith('=============================\npifleet.netboot Release Notes')
    assert '\nv%s\n%s\n' % (VERSION, '=' * (len(VERSION) + 1)) in text
    assert {'Release Summary', 'Major Changes', 'Minor Changes', 'New Modules', 'New Plugins', 'New Roles',
            'New Playbooks', 'Filter', 'Inventory'} <= set(found), sorted(found)
    if not RELEASED:
        absent = {'Breaking Changes / Porting Guide', 'Security Fixes', 'Deprecated Features',
                  'Removed Features (previously deprecated)'}
        assert not absent & set(found), sorted(found)


def test_every_module_plugin_role_and_playbook_is_listed(notes):
    text, _changes = notes
    found = sections(text)
    listed = {title: set(re.findall(r'^- pifleet\.netboot\.(\w+) - ', found.get(title, ''), re.M))
              for title in ('New Modules', 'Filter', 'Inventory', 'New Roles', 'New Playbooks')}
    filters = set()
    for path in (REPO / 'plugins' / 'filter').iterdir():
        if path.suffix == '.yml':
            filters.add(yaml.safe_load(path.read_text())['DOCUMENTATION']['name'])
        elif path.suffix == '.py' and 'DOCUMENTATION = ' in path.read_text():
            filters.add(path.stem)
    assert listed['New Modules'] == {p.stem for p in (REPO / 'plugins' / 'modules').glob('*.py')}
    assert listed['Filter'] == filters and {'boot_events_summary', 'fleet_plan', 'fleet_hosts'} <= filters
    assert listed['Inventory'] == {p.stem for p in (REPO / 'plugins' / 'inventory').glob('*.py')}
    assert listed['New Roles'] == {p.name for p in (REPO / 'roles').iterdir() if (p / 'tasks').is_dir()}
    assert listed['New Playbooks'] == {p.stem for p in (REPO / 'playbooks').glob('*.yml')}


def test_the_notes_name_only_paths_that_exist(notes):
    text, _changes = notes
    named = {token.rstrip('/.,') for token in re.findall(r'``([^`\s]+)``', text) if token.startswith(TOP_DIRS)}
    missing = sorted(path for path in named if not (REPO / path).exists() and not any(char in path for char in '<*'))
    assert missing == [], 'stale paths in the changelog fragments: %s' % missing


def test_the_notes_are_valid_restructuredtext(notes, tmp_path):
    text, _changes = notes
    (tmp_path / 'CHANGELOG.rst').write_text(text)
    proc = subprocess.run([str(Path(sys.executable).parent / 'rstcheck'), str(tmp_path / 'CHANGELOG.rst')],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_release_takes_every_fragment(notes):
    _text, changes = notes
    release = changes['releases'][VERSION]
    assert sorted(release['fragments']) == sorted(path.name for path in FRAGMENTS.glob('*.yml'))
    assert release['release_date'] and release['changes']['release_summary'].startswith('First release')
