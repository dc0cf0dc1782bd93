# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX project of docs/awx.md, run as AWX runs it: with ansible-runner, from the collection tarball.

A private data directory as AWX makes one per job: project/ holds the shipped docs/awx/project files (wrapper
playbooks, the boot_events source) and the example inventory as inventory/; the collection is installed as a
project update installs collections/requirements.yml (pointed at the built tarball, there is no network here). Then,
on a fresh Debian 12 bakery container (lab/nspawnlab.py): `site --check` (no failed event, no vault password
needed), `status` with the Vault credential's password answered at the prompt (its SNMPv3 keys decrypted, never
shown), and both inventory sources through `ansible-inventory --list --export`: the fleet from the project (inline
vaulted values survive a sync without the password; a whole vaulted file does not) and discovered Pis read over SSH
from the bakery's event log with the custom credential type's injected settings (plain values, not
{"__ansible_unsafe": ...} dicts). Not shipped in the tarball (it builds one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ansible_runner
import pytest
import yaml
from awxjob import awx_inject

from lab import nspawnlab

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAB_NAME, LAB_SUBNET = 'pfawx', '10.99.45'
VAULT_PASSWORD = 'pifleet-example'  # the example inventory's inline values (inventories/example/group_vars/all)
PROMPT = r'Vault password:\s*?$'


def clean_env():
    """A shell with no checkout on any path: no ANSIBLE_* settings, no PYTHONPATH."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(('ANSIBLE_', 'PYTHONPATH', 'PIFLEET_'))}


def galaxy(*args):
    subprocess.run([str(BIN / 'ansible-galaxy'), 'collection', *args], check=True, capture_output=True,
                   env=clean_env())


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    """(private data dir, installed collections dir): the project as a user sets it up from the tarball."""
    top = tmp_path_factory.mktemp('awx')
    dist = top / 'dist'
    galaxy('build', '--output-path', str(dist), str(REPO))
    (tarball,) = dist.glob('pifleet-netboot-*.tar.gz')
    # The docs and the example come from the installed collection, as a user who never cloned the repository has them.
    unpacked = top / 'unpacked'
    galaxy('install', '--offline', '-p', str(unpacked), str(tarball))
    shipped = unpacked / 'ansible_collections' / 'pifleet' / 'netboot'
    data = top / 'job'
    shutil.copytree(shipped / 'docs' / 'awx' / 'project', data / 'project')
    shutil.copytree(shipped / 'inventories' / 'example', data / 'project' / 'inventory')
    requirements = data / 'project' / 'collections' / 'requirements.yml'
    names = [item['name'] for item in yaml.safe_load(requirements.read_text())['collections']]
    assert names == ['pifleet.netboot'], names
    # AWX's project update: the same file, its source the tarball (no network in the lab).
    requirements.write_text(yaml.safe_dump({'collections': [{'name': str(tarball), 'type': 'file'}]}))
    collections = top / 'requirements_collections'
    galaxy('install', '--offline', '-r', str(requirements), '-p', str(collections))
    assert (collections / 'ansible_collections' / 'pifleet' / 'netboot' / 'MANIFEST.json').is_file()
    return data, collections


@pytest.fixture(scope='module')
def bakery(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip('the bakery container needs root')
    state = tmp_path_factory.mktemp('lab')
    try:
        yield nspawnlab.up(LAB_NAME, LAB_SUBNET, state, pis=0)
    finally:
        nspawnlab.down(state)


@pytest.fixture
def job_env(project, monkeypatch):
    """What the execution environment has: the installed collections, this venv's ansible, no checkout."""
    _data, collections = project
    for key in [key for key in os.environ if key.startswith(('ANSIBLE_', 'PYTHONPATH', 'PIFLEET_'))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv('PATH', '%s:%s' % (BIN, os.environ['PATH']))
    return {'ANSIBLE_COLLECTIONS_PATH': str(collections), 'ANSIBLE_COLLECTIONS_SCAN_SYS_PATH': 'false',
            'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_HOST_KEY_CHECKING': 'false'}


def reach(bakery):
    """How the job reaches this bakery (in AWX: the Machine credential and the host's address)."""
    return {'ansible_host': bakery['addresses']['bakery'], 'ansible_user': 'root', 'ansible_become_method': 'su',
            'ansible_ssh_private_key_file': bakery['ssh_key'], 'ansible_ssh_common_args': bakery['ssh_common_args'],
            'ansible_python_interpreter': '/usr/bin/python3',
            # The test bakery (a container) keeps /srv/pifleet on its root file system, which a real bakery would not.
            'pifleet_allow_root_filesystem': True}


def job(project, env, playbook, bakery, *, cmdline='', passwords=None):
    """One AWX job: ansible-runner on the project's playbook with the project's inventory."""
    data, _collections = project
    started = time.monotonic()
    runner = ansible_runner.run(private_data_dir=str(data), playbook=playbook, inventory=str(data / 'project' /
                                'inventory'), envvars=env, extravars=reach(bakery), cmdline=cmdline,
                                passwords=passwords or {}, quiet=True, timeout=1200,
                                # AWX gives each job a fresh env/: ansible-runner otherwise keeps the first job's
                                # cmdline and passwords there and reuses them when a later job gives none.
                                suppress_env_files=True)
    events = list(runner.events)
    output = ''.join(event.get('stdout', '') + '\n' for event in events)
    print('%s %s: %s in %.1f s' % (playbook, cmdline, runner.status, time.monotonic() - started))
    return runner, events, output


def failed_events(events):
    return [event for event in events if event['event'] in ('runner_on_failed', 'runner_on_unreachable')
            and not event.get('event_data', {}).get('ignore_errors')]


def test_site_check_runs_from_the_project_without_a_vault_password(project, job_env, bakery):
    runner, events, output = job(project, job_env, 'site.yml', bakery, cmdline='--check --diff')
    assert runner.status == 'successful' and runner.rc == 0, output[-4000:]
    assert failed_events(events) == [], output[-4000:]
    stats = runner.stats
    assert stats['changed'].get('bakery01.lab.example.org', 0) > 0 and not stats['failures'], stats
    assert 'change-me-please' not in output


def test_status_with_the_vault_credential(project, job_env, bakery):
    """status reads pi_power: the inline vaulted SNMPv3 keys and plug password are decrypted, never shown."""
    runner, events, output = job(project, job_env, 'status.yml', bakery, cmdline='--ask-vault-pass',
                                 passwords={PROMPT: VAULT_PASSWORD})
    assert runner.status == 'successful', output[-4000:]
    assert failed_events(events) == [], output[-4000:]
    table = next(event['event_data']['res']['msg'] for event in events if event['event'] == 'runner_on_ok'
                 and event['event_data'].get('task') == 'Show the fleet')
    rows = {row.split()[0]: row.split() for row in table[1:] if row.startswith('pi-')}
    assert sorted(rows) == ['pi-01', 'pi-02', 'pi-03', 'pi-04', 'pi-05'], table
    assert all(row[3] == 'missing' for row in rows.values()), table  # check mode made nothing
    # No device of the example exists here: each Pi's power is an error with its reason, read with its secrets.
    shown = 'POWER ERROR pi-03: power status failed for pi-03 (snmp v3 10.0.0.2:161, user pifleet'
    assert rows['pi-03'][5] == 'error' and any(shown in row for row in table), table
    assert 'change-me-please' not in output and 'change-me-please' not in json.dumps(events)
    # Without the Vault credential the same job cannot read them.
    # Every Pi is still shown (its POWER ERROR says why), then the job ends failed with one summary.
    runner, events, output = job(project, job_env, 'status.yml', bakery)
    assert runner.status == 'failed' and 'vault' in output.lower(), output[-3000:]
    table = next(event['event_data']['res']['msg'] for event in events if event['event'] == 'runner_on_ok'
                 and event['event_data'].get('task') == 'Show the fleet')
    assert sum(row.startswith('POWER ERROR pi-') and 'undecryptable' in row for row in table) == 5, table
    (summary,) = [event['event_data']['res']['msg'] for event in failed_events(events)]
    assert summary == ('status could not ask the power devices of the Pis of bakery01.lab.example.org (their '
                       'POWER ERROR lines say why; a vaulted value needs the Vault credential in AWX, or '
                       '--ask-vault-pass)'), summary


def export(project, env, source):
    """ansible-inventory --list --export of an inventory source, as an AWX inventory update runs it."""
    data, _collections = project
    response, error, rc = ansible_runner.run_command(
        executable_cmd='ansible-inventory', cmdline_args=['-i', str(source), '--list', '--export'],
        envvars=env, runner_mode='subprocess', private_data_dir=str(data), quiet=True)
    return rc, response, error


def test_the_fleet_inventory_syncs_without_the_vault_password(project, job_env, tmp_path):
    data, _collections = project
    inventory = data / 'project' / 'inventory'
    rc, response, error = export(project, job_env, inventory)
    assert rc == 0, error
    listed = json.loads(response)
    assert sorted(listed['pis']['hosts']) == ['pi-01', 'pi-02', 'pi-03', 'pi-04', 'pi-05']
    secret = listed['all']['vars']['vault_poe_auth_key']
    assert set(secret) == {'__ansible_vault'} and secret['__ansible_vault'].startswith('$ANSIBLE_VAULT;')
    # What docs/awx.md warns about: a vault-encrypted whole file fails the same sync.
    whole = tmp_path / 'inventory'
    shutil.copytree(inventory, whole)
    secrets = whole / 'group_vars' / 'all' / 'secrets.yml'
    secrets.write_text('vault_poe_auth_key: change-me-please\n')
    (tmp_path / 'password').write_text(VAULT_PASSWORD + '\n')
    subprocess.run([str(BIN / 'ansible-vault'), 'encrypt', '--vault-password-file', str(tmp_path / 'password'),
                    str(secrets)], check=True, capture_output=True, env=clean_env())
    rc, _response, error = export(project, job_env, whole)
    assert rc != 0 and 'vault' in error.lower(), error


def event_line(seconds, request, outcome='unknown_prefix'):
    prefix, path = request.split('/', 1)
    return json.dumps({'time': '2026-12-01T10:00:%02d+00:00' % seconds, 'client': '%s.66' % LAB_SUBNET, 'port': 49152,
                       'server': '%s.2' % LAB_SUBNET, 'request': request, 'prefix': prefix, 'path': path, 'name': None,
                       'known': False, 'outcome': outcome, 'bytes': 0})


def test_discovered_pis_come_through_the_credential_type_as_plain_values(project, job_env, bakery):
    data, _collections = project
    template = "{{ lookup('pipe', 'touch /tmp/pifleet-awx-ran') }}"
    lines = [event_line(1, '3a4b5c6d/start4.elf'), event_line(2, '3a4b5c6d/' + template)]
    subprocess.run(nspawnlab.ssh_argv(bakery, 'install -d -m 0755 /var/log/pifleet && cat > '
                                      '/var/log/pifleet/boot-events.jsonl'),
                   input=''.join(line + '\n' for line in lines), text=True, check=True, timeout=60)
    host_key = subprocess.run(nspawnlab.ssh_argv(bakery, 'cat /etc/ssh/ssh_host_ed25519_key.pub'), capture_output=True,
                              text=True, check=True, timeout=60).stdout.split()[:2]
    credential_type = yaml.safe_load((REPO / 'docs' / 'awx' / 'boot_events_credential_type.yml').read_text())
    injected = awx_inject(credential_type, {
        'ssh_host': bakery['addresses']['bakery'], 'ssh_port': '', 'ssh_user': 'root',
        'ssh_private_key': Path(bakery['ssh_key']).read_text(),
        'known_hosts': '%s %s' % (bakery['addresses']['bakery'], ' '.join(host_key))}, data)
    # The lab's bakery is reached through its namespace: the only setting AWX would not inject.
    injected['PIFLEET_BOOT_EVENTS_SSH_ARGS'] += ',-o,ProxyCommand=ip netns exec %s socat STDIO TCP:127.0.0.1:22' % (
        bakery['namespaces']['bakery'])
    rc, response, error = export(project, dict(job_env, **injected), data / 'project' / 'discovered.boot_events.yml')
    assert rc == 0, error
    listed = json.loads(response)
    assert listed['discovered']['hosts'] == ['discovered_serial_3a4b5c6d'], listed
    variables = listed['_meta']['hostvars']['discovered_serial_3a4b5c6d']
    assert variables['pi_serial'] == '3a4b5c6d' and variables['pi_model'] == 4
    assert variables['pifleet_address'] == '%s.66' % LAB_SUBNET and variables['pifleet_requests'] == 2
    assert variables['pifleet_last_file'] == {'__ansible_unsafe': template}  # the one string that could be a template
    plain = {key: value for key, value in variables.items() if key != 'pifleet_last_file'}
    assert not [key for key, value in plain.items() if isinstance(value, dict)], plain
    assert not os.path.exists('/tmp/pifleet-awx-ran')
