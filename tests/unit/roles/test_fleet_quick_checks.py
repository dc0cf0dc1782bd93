# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet role's checks before any work, each one cheap call on every run (roles/fleet/tasks/main.yml, space.yml).

- The tools the modules run: dpkg's database says whether they are all there; the package task runs only when one
  is missing or dpkg cannot tell (an unknown name), so a re-run does not open apt's cache.
- The store, roots and disks directories on the bakery's own root file system: one stat(1) for all the paths (a
  directory not made yet judged by its parent) instead of a stat module call per path; the refusal stays.

Real ansible-playbook runs on this host, nothing installed or written outside the test's temp dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
TASKS = REPO / 'roles' / 'fleet' / 'tasks'
BIN = Path(sys.executable).parent


def run(tmp_path, tasks, variables, check=False):
    play = [{'hosts': 'localhost', 'gather_facts': False, 'vars': variables, 'tasks': tasks}]
    (tmp_path / 'play.yml').write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build' / 'collections'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'))
    argv = [str(BIN / 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', '-e',
            'ansible_python_interpreter=' + sys.executable, str(tmp_path / 'play.yml')] + (['--check'] if check else [])
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=300, cwd=tmp_path)
    return proc.returncode, proc.stdout + proc.stderr


def package_tasks():
    """main.yml's two package tasks, the install itself in check mode (this host is not to be changed)."""
    tasks = yaml.safe_load((TASKS / 'main.yml').read_text())
    query, install = [task for task in tasks if 'the tools the fleet modules run' in task['name']]
    return [query, dict(install, check_mode=True)]


def task_line(output, name):
    """The line after ``TASK [<name>...]``: ok, skipping, fatal ..."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if line.startswith('TASK [' + name):
            return next(text for text in lines[index + 1:] if text.strip())
    raise AssertionError('no task %r in:\n%s' % (name, output[-3000:]))


@pytest.mark.skipif(not shutil.which('dpkg-query'), reason='dpkg-query: a Debian host')
def test_installed_tools_skip_the_package_manager(tmp_path):
    rc, output = run(tmp_path, package_tasks(), {'fleet_packages': ['coreutils', 'dpkg']})
    assert rc == 0, output[-3000:]
    assert task_line(output, 'Look for the tools').startswith('ok:'), output
    assert task_line(output, 'Install the tools').startswith('skipping:'), output


@pytest.mark.skipif(not shutil.which('dpkg-query'), reason='dpkg-query: a Debian host')
def test_a_tool_dpkg_does_not_know_goes_to_the_package_manager(tmp_path):
    rc, output = run(tmp_path, package_tasks(), {'fleet_packages': ['coreutils', 'pifleet-no-such-package']})
    assert rc != 0, output[-3000:]  # the package manager says it has no such package, as before
    assert not task_line(output, 'Install the tools').startswith('skipping:'), output
    assert "No package matching 'pifleet-no-such-package'" in output, output[-3000:]


def space_tasks():
    return [{'ansible.builtin.import_tasks': str(TASKS / 'space.yml')}]


def space_vars(store, roots, disks, allow=False):
    return {'fleet_store': str(store), 'fleet_roots_dir': str(roots), 'fleet_disks_dir': str(disks),
            'fleet_allow_root_filesystem': allow}


def other_file_system():
    """A directory on a file system other than /'s (None when this host has none to use)."""
    for path in ('/dev/shm', '/run', '/proc'):
        if os.path.isdir(path) and os.stat(path).st_dev != os.stat('/').st_dev:
            return Path(path)
    return None


@pytest.mark.parametrize('check', [False, True], ids=['run', 'check mode'])
def test_directories_on_the_root_file_system_are_refused(tmp_path, check):
    if os.stat(tmp_path).st_dev != os.stat('/').st_dev:
        pytest.skip('the temp dir is not on the root file system')
    elsewhere = other_file_system()
    if elsewhere is None:
        pytest.skip('no other file system to compare with')
    (tmp_path / 'roots dir').mkdir()  # exists: judged itself; its name has a space
    # The store is not made yet (judged by its parent, the temp dir); the disks' directory and its parent are not
    # there at all (the modules judge it).
    paths = space_vars(tmp_path / 'store', tmp_path / 'roots dir', elsewhere / 'pifleet-no-such' / 'disks')
    rc, output = run(tmp_path, space_tasks(), paths, check=check)
    assert rc != 0, output[-3000:]
    assert "%s, %s would lie on the bakery's root file system (/)" % (tmp_path / 'store', tmp_path / 'roots dir') \
        in output, output[-3000:]
    assert 'pifleet-no-such' not in output.split('would lie')[0].rsplit('\n', 1)[-1]


def test_directories_elsewhere_or_allowed_pass(tmp_path):
    elsewhere = other_file_system()
    if elsewhere is None:
        pytest.skip('no other file system to compare with')
    rc, output = run(tmp_path, space_tasks(), space_vars(elsewhere / 'a', elsewhere / 'b', elsewhere / 'c d'))
    assert rc == 0, output[-3000:]
    rc, output = run(tmp_path, space_tasks(), space_vars(tmp_path, tmp_path, tmp_path, allow=True))
    assert rc == 0, output[-3000:]
    assert task_line(output, 'Look up the file systems').startswith('skipping:'), output


def ca_tasks():
    return [{'ansible.builtin.include_tasks': str(TASKS / 'hostca.yml')},
            {'ansible.builtin.debug': {'msg': 'CA ready={{ fleet_host_ca_ready }}'}}]


def ca_run(tmp_path, ca, check=False):
    return run(tmp_path, ca_tasks(), {'fleet_host_ca': str(ca), 'fleet_bakery_host': 'bak1'}, check=check)


def test_the_host_ca_is_made_once_and_kept_root_only(tmp_path):
    ca = tmp_path / 'ssh dir' / 'host_ca'
    rc, output = ca_run(tmp_path, ca, check=True)  # check mode makes nothing, and says the CA is not there yet
    assert rc == 0, output[-3000:]
    assert not ca.parent.exists() and 'CA ready=False' in output, output[-3000:]
    rc, output = ca_run(tmp_path, ca)
    assert rc == 0, output[-3000:]
    public = (tmp_path / 'ssh dir' / 'host_ca.pub').read_text().strip()
    assert 'CA ready=True' in output and public.endswith(' pifleet host CA of bak1'), output[-3000:]
    assert (ca.parent.stat().st_mode & 0o7777, ca.stat().st_mode & 0o7777) == (0o700, 0o600)
    key = ca.read_bytes()
    rc, output = ca_run(tmp_path, ca)  # in order: one stat, nothing else (pi_root reads the public key)
    assert rc == 0 and 'changed=0' in output, output[-3000:]
    for name in ('Make the directory', 'Make the fleet', 'Keep the CA'):
        assert task_line(output, name).startswith('skipping:'), output
    ca.chmod(0o644)
    ca.parent.chmod(0o755)
    rc, output = ca_run(tmp_path, ca)  # modes put right, the key itself kept
    assert rc == 0, output[-3000:]
    assert (ca.parent.stat().st_mode & 0o7777, ca.stat().st_mode & 0o7777) == (0o700, 0o600)
    assert ca.read_bytes() == key and 'CA ready=True' in output


def test_site_looks_at_the_ca_in_the_space_checks_stat(tmp_path):
    """site (main.yml) hands hostca.yml the lines of space.yml's stat, which looked at the CA too: no stat here."""
    elsewhere = other_file_system()
    if elsewhere is None:
        pytest.skip('no other file system to compare with')
    ca = tmp_path / 'ssh: dir' / 'host_ca'  # a colon and a space in the path, as stat prints it
    tasks = [*space_tasks(),
             {'ansible.builtin.include_tasks': str(TASKS / 'hostca.yml'),
              'vars': {'fleet_host_ca_looked_up': '{{ fleet_homes_stat.stdout_lines | default([]) }}'}},
             *ca_tasks()[1:]]
    variables = dict(space_vars(elsewhere / 'a', elsewhere / 'b', elsewhere / 'c'), fleet_host_ca=str(ca),
                     fleet_bakery_host='bak1')
    rc, output = run(tmp_path, tasks, variables)
    assert rc == 0 and 'CA ready=True' in output, output[-3000:]
    assert task_line(output, "Look at the CA's directory").startswith('skipping:'), output
    assert (ca.parent.stat().st_mode & 0o7777, ca.stat().st_mode & 0o7777) == (0o700, 0o600)
    rc, output = run(tmp_path, tasks, variables)
    assert rc == 0 and 'changed=0' in output and 'CA ready=True' in output, output[-3000:]
    for name in ("Look at the CA's directory", 'Make the directory', 'Make the fleet', 'Keep the CA'):
        assert task_line(output, name).startswith('skipping:'), output
    ca.chmod(0o640)
    rc, output = run(tmp_path, tasks, variables)
    assert rc == 0 and ca.stat().st_mode & 0o7777 == 0o600, output[-3000:]
