# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The user's path (make tarball): the collection as `ansible-galaxy collection build` makes it, installed into a
collections dir of its own and used with no checkout on any path, as someone who never cloned the repository.

ansible-doc documents every plugin and role, ansible-builder introspect finds what an execution environment needs,
and `site --check --diff` runs with the installed example inventory as shipped (its inline vaulted secrets need no
vault password: site never reads them) on a fresh Debian 12 bakery (an nspawn container, lab/nspawnlab.py): no red
output, no failed task, no hook program in the diff.
Not shipped in the tarball (it needs the checkout to build one).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from lab import nspawnlab

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLUGIN_TYPES = {'modules': 'module', 'filter': 'filter', 'inventory': 'inventory'}
LAB_NAME, LAB_SUBNET = 'pfuser', '10.99.44'


def user_env(home):
    """What a user's shell has: the installed collections only, no checkout on PYTHONPATH, no ansible.cfg."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(('ANSIBLE_', 'PYTHONPATH', 'PIFLEET_'))}
    return dict(env, ANSIBLE_COLLECTIONS_PATH=str(home / 'collections'), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH='false',
                ANSIBLE_NOCOLOR='1', ANSIBLE_LOCAL_TEMP=str(home / 'tmp'), ANSIBLE_HOME=str(home / 'ansible-home'))


def run(home, *argv, timeout=300, check=True):
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=home, env=user_env(home), capture_output=True,
                          text=True, timeout=timeout, check=False)
    if check:
        assert proc.returncode == 0, (argv, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """(home, tarball, installed collection dir): built from the checkout, installed offline into home."""
    home = tmp_path_factory.mktemp('user')
    started = time.monotonic()
    run(home, 'ansible-galaxy', 'collection', 'build', '--output-path', str(home / 'dist'), str(REPO))
    (tarball,) = (home / 'dist').glob('pifleet-netboot-*.tar.gz')
    run(home, 'ansible-galaxy', 'collection', 'install', '--offline', '-p', str(home / 'collections'), str(tarball))
    print('build + install: %.1f s' % (time.monotonic() - started))
    collection = home / 'collections' / 'ansible_collections' / 'pifleet' / 'netboot'
    assert (collection / 'MANIFEST.json').is_file()
    return home, tarball, collection


def excluded_patterns():
    return yaml.safe_load((REPO / 'galaxy.yml').read_text())['build_ignore']


def test_the_tarball_holds_what_a_user_needs_and_nothing_of_the_developers(installed):
    _home, tarball, _collection = installed
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    for needed in ('COPYING', 'README.md', 'SECURITY.md', 'meta/runtime.yml', 'meta/execution-environment.yml',
                   'meta/ee/requirements.txt', 'meta/ee/bindep.txt', 'inventories/example/hosts.yml',
                   'inventories/example/group_vars/all/secrets.yml', 'roles/fleet/README.md',
                   'docs/awx.md', 'docs/awx/boot_events_credential_type.yml', 'docs/awx/project/site.yml',
                   'docs/awx/project/collections/requirements.yml', 'docs/awx/project/discovered.boot_events.yml',
                   'pytest.ini'):
        assert needed in names, needed
    dotted = sorted(name for name in names if any(part.startswith('.') for part in name.split('/')))
    assert dotted == []
    for gone in ('Makefile', 'molecule', 'bench', 'inventories/lab', 'tests/tarball', 'requirements-dev.txt',
                 'execution-environment.yml', 'lab', 'tests/integration', 'tests/release'):
        assert not any(name == gone or name.startswith(gone + '/') for name in names), gone


def paths_named(source):
    """Path-like strings a Python file uses: string constants (docstrings aside) and `a / 'b' / 'c'` chains."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    named = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            named.add(node.value.strip('/'))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            parts, side = [], node
            while isinstance(side, ast.BinOp) and isinstance(side.op, ast.Div):
                if isinstance(side.right, ast.Constant) and isinstance(side.right.value, str):
                    parts.insert(0, side.right.value)
                side = side.left
            named.add('/'.join(parts))
    return named


def test_no_shipped_test_needs_a_file_left_out(installed):
    """Each shipped test imports (pytest collects them from the installed tree) and uses no excluded path."""
    home, _tarball, collection = installed
    left_out = [pattern for pattern in excluded_patterns() if not any(char in pattern for char in '*?[')]
    for path in sorted((collection / 'tests').rglob('*.py')):
        named = paths_named(path.read_text(encoding='utf-8'))
        used = sorted({gone for gone in left_out for name in named if name == gone or name.startswith(gone + '/')})
        assert used == [], '%s uses %s, which the tarball leaves out' % (path.relative_to(collection), used)
    proc = subprocess.run([sys.executable, '-m', 'pytest', '--collect-only', '-q', 'tests'], cwd=collection,
                          env=user_env(home), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r'^\d+ tests collected', proc.stdout, re.M), proc.stdout[-500:]


def test_ansible_doc_covers_every_plugin_and_role(installed):
    home, _tarball, collection = installed
    for directory, kind in PLUGIN_TYPES.items():
        # A plugin file with DOCUMENTATION, or a filter's YAML doc beside the file that holds several filters.
        files = [path for path in (collection / 'plugins' / directory).iterdir() if path.suffix in ('.py', '.yml')]
        names = sorted({'pifleet.netboot.' + path.stem for path in files if path.suffix == '.yml'
                        or 'DOCUMENTATION = ' in path.read_text(encoding='utf-8')})
        assert names, directory
        docs = json.loads(run(home, 'ansible-doc', '--json', '-t', kind, *names).stdout)
        assert sorted(docs) == sorted(set(names)), kind
        for name, doc in docs.items():
            assert doc['doc']['short_description'] and str(collection) in doc['doc']['filename'], name
        listed = run(home, 'ansible-doc', '-t', kind, '-l', 'pifleet.netboot').stdout
        assert sorted(set(re.findall(r'^(pifleet\.netboot\.\w+)', listed, re.M))) == sorted(set(names)), listed
    roles = sorted(path.name for path in (collection / 'roles').iterdir() if (path / 'meta').is_dir())
    assert roles == ['dnsmasq', 'fleet', 'lan_guard', 'nfs_server', 'tftp_hook']
    docs = json.loads(run(home, 'ansible-doc', '--json', '-t', 'role', *('pifleet.netboot.' + r for r in roles)).stdout)
    assert sorted(docs) == ['pifleet.netboot.' + role for role in roles]
    assert all(doc['entry_points']['main']['options'] for doc in docs.values())


def test_ansible_builder_introspect_finds_what_an_execution_environment_needs(installed):
    home, _tarball, _collection = installed
    found = yaml.safe_load(run(home, 'ansible-builder', 'introspect', str(home / 'collections')).stdout)
    assert any(line.startswith('netaddr') for line in found['python']), found
    system = [line.split()[0] for line in found['system']]
    assert {'openssh-clients', 'sshpass'} <= set(system), found


@pytest.fixture(scope='module')
def bakery(tmp_path_factory):
    """A fresh Debian 12 bakery container; its log directory exists already (a reinstall, a partial run)."""
    if os.geteuid() != 0:
        pytest.skip('the bakery container needs root')
    state = tmp_path_factory.mktemp('lab')
    try:
        lab = nspawnlab.up(LAB_NAME, LAB_SUBNET, state, pis=0)
        subprocess.run(nspawnlab.ssh_argv(lab, 'install', '-d', '-m', '0755', '/var/log/pifleet'), check=True,
                       timeout=60)
        yield lab
    finally:
        nspawnlab.down(state)


def test_site_check_with_the_example_inventory_as_shipped(installed, bakery):
    """README's first command, as a new user runs it: the installed example inventory, no vault password (its
    secrets are inline vaulted values that only power, status and reimage decrypt)."""
    home, _tarball, collection = installed
    inventory = home / 'inventory'
    shutil.copytree(collection / 'inventories' / 'example', inventory)
    assert '$ANSIBLE_VAULT;' in (inventory / 'group_vars' / 'all' / 'secrets.yml').read_text()
    # Only how to reach this bakery differs from the example (the container, over ssh through its namespace), and
    # that its data lies on its root file system.
    (home / 'reach.yml').write_text(yaml.safe_dump({
        'ansible_host': bakery['addresses']['bakery'], 'ansible_user': 'root', 'ansible_become_method': 'su',
        'ansible_ssh_private_key_file': bakery['ssh_key'], 'ansible_ssh_common_args': bakery['ssh_common_args'],
        'ansible_python_interpreter': '/usr/bin/python3',
        # The container keeps /srv/pifleet on its root file system, which a real bakery would not.
        'pifleet_allow_root_filesystem': True}))
    started = time.monotonic()
    proc = run(home, 'ansible-playbook', '-i', str(inventory), 'pifleet.netboot.site', '--check', '--diff',
               '-e', '@' + str(home / 'reach.yml'), timeout=900, check=False)
    print('site --check --diff: %.1f s' % (time.monotonic() - started))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    recap = re.search(r'^bakery01\.lab\.example\.org\s+:\s+(.*)$', proc.stdout, re.M)
    counters = {key: int(value) for key, value in re.findall(r'(\w+)=(\d+)', recap.group(1))}
    assert counters['failed'] == counters['ignored'] == counters['unreachable'] == 0 and counters['changed'] > 0
    # What AWX would show as failed events, and what a first --diff used to print (the 1000-line hook program).
    assert not re.search(r'^(fatal|failed):|\.\.\.ignoring|\[ERROR\]', output, re.M), output[-4000:]
    shown = re.search(r'^TASK \[pifleet\.netboot\.tftp_hook : Install the TFTP hook program\].*?^TASK ', proc.stdout,
                      re.M | re.S)
    assert shown and 'changed: [bakery01' in shown.group(0) and '+++ after' not in shown.group(0), shown
    assert 'pifleet-tftp-hook.service would be enabled and started' in output
    assert 'bookworm-lite, lab-custom would be ingested first' in output
    assert 'change-me-please' not in output  # the vault's values: site never reads them
    # Check mode changed nothing on the bakery.
    seen = subprocess.run(nspawnlab.ssh_argv(bakery, 'getent passwd pifleet-tftp; ls /etc/systemd/system /etc/pifleet;'
                                             'ls -A /srv/pifleet /var/lib/pifleet /var/log/pifleet'),
                          capture_output=True, text=True, timeout=60, check=False)
    assert 'pifleet-tftp' not in seen.stdout and "cannot access '/etc/pifleet'" in seen.stderr, seen
    assert seen.stdout.split('/srv/pifleet:')[1].split() == ['/var/lib/pifleet:', '/var/log/pifleet:'], seen.stdout
