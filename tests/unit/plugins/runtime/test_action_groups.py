# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""meta/runtime.yml's action groups: module_defaults set once reach every module of a group, and only modules
that take the group's options are in it (module_defaults would hand them an option they refuse)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[4]
BIN = Path(sys.executable).parent
# The options each group stands for (meta/runtime.yml says the same in its comments).
GROUP_OPTIONS = {'store': {'store'}, 'lock': {'lock_file', 'lock_timeout'}}
MODULES = sorted(path.stem for path in (REPO / 'plugins' / 'modules').glob('*.py') if not path.stem.startswith('_'))


def environment(tmp_path):
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build' / 'collections'),
                ANSIBLE_COLLECTIONS_SCAN_SYS_PATH='false', ANSIBLE_NOCOLOR='1', ANSIBLE_LOCALHOST_WARNING='false',
                ANSIBLE_INVENTORY_UNPARSED_WARNING='false', ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'))


def test_each_group_holds_exactly_the_modules_that_take_its_options(tmp_path):
    groups = yaml.safe_load((REPO / 'meta' / 'runtime.yml').read_text())['action_groups']
    assert set(groups) == set(GROUP_OPTIONS)
    proc = subprocess.run([str(BIN / 'ansible-doc'), '--json', '-t', 'module',
                           *('pifleet.netboot.%s' % name for name in MODULES)],
                          env=environment(tmp_path), capture_output=True, text=True, check=True)
    options = {name.rsplit('.', 1)[1]: set(doc['doc']['options']) for name, doc in json.loads(proc.stdout).items()}
    for group, wanted in GROUP_OPTIONS.items():
        assert sorted(groups[group]) == sorted(name for name in MODULES if wanted <= options[name]), group


def play(tmp_path, tasks, check_mode, **defaults):
    """Run ``tasks`` (each registered under its name) on localhost with the groups' module_defaults; the results."""
    names = list(tasks)
    tasks = [{'name': name, 'pifleet.netboot.%s' % module: args, 'register': name, 'ignore_errors': True}
             for name, (module, args) in tasks.items()]
    tasks.append({'name': 'Keep the results', 'check_mode': False, 'ansible.builtin.copy': {
        'dest': str(tmp_path / 'results.json'), 'mode': '0644',
        'content': '{{ {%s} | to_json }}' % ', '.join("'%s': %s" % (name, name) for name in names)}})
    (tmp_path / 'play.yml').write_text(yaml.safe_dump([{
        'hosts': 'localhost', 'connection': 'local', 'gather_facts': False, 'check_mode': check_mode,
        'vars': {'ansible_python_interpreter': sys.executable},
        'module_defaults': {'group/pifleet.netboot.%s' % group: values for group, values in defaults.items()},
        'tasks': tasks}]))
    proc = subprocess.run([str(BIN / 'ansible-playbook'), '-i', 'localhost,', str(tmp_path / 'play.yml')],
                          env=environment(tmp_path), capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads((tmp_path / 'results.json').read_text())


def test_the_store_set_once_reaches_every_module_that_takes_it(tmp_path):
    store = str(tmp_path / 'bakeforms')
    pi = {'prefix': '1234abcd', 'name': 'pi-01', 'bakeform': 'nosuch', 'nfsroot': '10.99.1.2:/srv/roots/1234abcd'}
    results = play(tmp_path, {
        'bakeform': ('bakeform', {'name': 'demo', 'state': 'absent'}),
        'pi_root': ('pi_root', {'pis': [{'serial': '1234abcd', 'bakeform': 'nosuch'}],
                                'roots_dir': str(tmp_path / 'roots'), 'allow_root_filesystem': True}),
        'pi_boot': ('pi_boot', {'pis': [pi], 'boot_dir': str(tmp_path / 'pis'), 'map_path': str(tmp_path / 'm.json')}),
    }, check_mode=True, store={'store': store})
    assert results['bakeform']['path'] == store + '/demo'
    # Each looked for the bakeform in the store it was given.
    assert '%s/nosuch has no bakeform.json' % store in results['pi_root']['msg'], results['pi_root']
    assert 'has no bakeform.json in %s/nosuch' % store in results['pi_boot']['msg'], results['pi_boot']


def test_the_lock_set_once_reaches_every_module_that_takes_it(tmp_path):
    """The test holds the lock the group names: each module waits lock_timeout for that very file, then fails."""
    lock = tmp_path / 'pifleet.lock'
    exported = tmp_path / 'exported'
    exported.mkdir()
    with open(lock, 'w') as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        results = play(tmp_path, {
            'bakeform': ('bakeform', {'name': 'demo', 'state': 'absent', 'store': str(tmp_path / 'store')}),
            'pi_root': ('pi_root', {'state': 'absent', 'pis': [], 'roots_dir': str(tmp_path / 'roots')}),
            'nfs_export': ('nfs_export', {'backend': 'kernel', 'exports_file': str(tmp_path / 'pifleet.exports'),
                                          'reload': False, 'allow_shared_filesystem': True,
                                          'exports': [{'path': str(exported), 'clients': ['10.99.1.1']}]}),
        }, check_mode=False, lock={'lock_file': str(lock), 'lock_timeout': 1})
    for name, result in results.items():
        assert 'held the bakery lock %s for more than 1 s' % lock in result.get('msg', ''), (name, result)
