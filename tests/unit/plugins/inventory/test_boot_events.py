# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot_events inventory plugin, run for real: ``ansible-inventory --list`` on event logs written here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from ansible.release import __version__ as CORE_VERSION
from awxjob import awx_inject

from ansible_collections.pifleet.netboot.plugins.inventory.boot_events import DOCUMENTATION, EXAMPLES

REPO = Path(__file__).resolve().parents[4]
BIN = Path(sys.executable).parent  # the venv's own ansible-core: make cores runs this file on each core
INVENTORY = str(BIN / 'ansible-inventory')
T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)

# A stand-in for the bakery reached over ssh: it records its argv, then runs the remote command the
# way sshd would (one shell string) on this machine. Host "unreachable" fails like ssh does (255).
FAKE_SSH = '''#!%s
import json, os, sys
args = sys.argv[1:]
with open(os.environ['FAKE_SSH_LOG'], 'a') as handle:
    handle.write(json.dumps(args) + '\\n')
while args and args[0] != '--':
    args = args[2:] if args[0] in ('-o', '-p', '-i') else args[1:]
host, command = args[1], args[2]
if host.endswith('unreachable'):
    sys.stderr.write('ssh: connect to host unreachable port 22: Connection refused\\n')
    sys.exit(255)
os.execv('/bin/sh', ['sh', '-c', command])
'''


def event(when, client, request, known=False, outcome='ok', *, name=None):
    """An event line as the hook writes it; ``when`` is seconds after T0 or a datetime."""
    moment = when if isinstance(when, datetime) else T0 + timedelta(seconds=when)
    prefix, path = request.split('/', 1) if '/' in request else ('', request)
    return json.dumps({'time': moment.isoformat(), 'client': client, 'port': 49152, 'server': '10.99.40.2',
                       'request': request, 'prefix': prefix, 'path': path, 'name': name, 'known': known,
                       'source': None, 'outcome': outcome, 'bytes': 0, 'size': None, 'blksize': 1024,
                       'windowsize': 1, 'tsize': True, 'duration': 0.1, 'retransmits': 0, 'error': None}) + '\n'


BOOT = [
    event(0, '10.99.40.50', 'bootcode.bin'),
    event(1, '10.99.40.50', '3a4b5c6d/start.elf', outcome='unknown_prefix'),
    event(2, '10.99.40.51', 'dc-a6-32-01-36-c2/start4.elf', outcome='probe'),
    event(3, '10.99.40.52', '1234abcd/start4.elf', known=True, name='pi-01'),
    event(4, '10.99.40.53', 'bootcode.bin'),
    event(5, '10.99.40.51', 'dc-a6-32-01-36-c2/config.txt', outcome='unknown_prefix'),
]


def plain(value):
    """ansible-inventory marks strings from plugins as unsafe (data it will never template): unwrap."""
    if isinstance(value, dict):
        if set(value) == {'__ansible_unsafe'}:
            return value['__ansible_unsafe']
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def squash(text):
    """Warnings without the line wrapping of older cores (which may break a path at its dashes)."""
    return re.sub(r'\s+', '', text)


def environment(tmp_path, env=None):
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build' / 'collections'),
                ANSIBLE_COLLECTIONS_SCAN_SYS_PATH='false', ANSIBLE_NOCOLOR='1',
                ANSIBLE_INVENTORY_UNPARSED_FAILED='true', ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'),
                ANSIBLE_LOCALHOST_WARNING='false', **(env or {}))


def write_source(tmp_path, config, name='x.boot_events.yml'):
    source = tmp_path / name
    source.write_text(yaml.safe_dump(dict({'plugin': 'pifleet.netboot.boot_events'}, **config)))
    return source


def run_inventory(tmp_path, config, *extra, env=None, ok=True, name='x.boot_events.yml', sources=None, raw=False):
    """``ansible-inventory --list`` of the plugin's config (after the inventory ``sources``, if any); ``raw``: the
    JSON as printed, unsafe strings still as {"__ansible_unsafe": ...}."""
    source = write_source(tmp_path, config, name)
    inventories = [arg for path in (sources or [source]) for arg in ('-i', str(path))]
    proc = subprocess.run([INVENTORY, *inventories, '--list', *extra], env=environment(tmp_path, env),
                          capture_output=True, text=True, check=False, timeout=120)
    if not ok:
        assert proc.returncode != 0, proc.stdout
        return None, squash(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    return (listed if raw else plain(listed)), squash(proc.stderr)


def hosts_of(result, group):
    return sorted(result.get(group, {}).get('hosts', []))


def write_log(tmp_path, lines, name='boot-events.jsonl'):
    path = tmp_path / name
    path.write_text(''.join(lines))
    return str(path)


def test_discovered_pis_with_their_variables(tmp_path):
    events = write_log(tmp_path, [*BOOT[:3], 'garbage\n', '{"time": "never"}\n', *BOOT[3:]])
    result, stderr = run_inventory(tmp_path, {'events': events})
    assert hosts_of(result, 'discovered') == ['discovered_ip_10-99-40-53', 'discovered_mac_dc-a6-32-01-36-c2',
                                              'discovered_serial_3a4b5c6d']
    assert squash('skipped 2 malformed line(s)') in stderr
    hostvars = result['_meta']['hostvars']
    assert hostvars['discovered_serial_3a4b5c6d'] == {
        'pi_serial': '3a4b5c6d', 'pi_mac': 'b8:27:eb:4b:5c:6d', 'pi_tftp_prefix': 'serial', 'pi_model': 3,
        'pifleet_prefix': '3a4b5c6d', 'pifleet_known': False, 'pifleet_address': '10.99.40.50',
        'pifleet_first_seen': (T0).isoformat(), 'pifleet_last_seen': (T0 + timedelta(seconds=1)).isoformat(),
        'pifleet_requests': 2, 'pifleet_last_file': 'start.elf', 'pifleet_last_outcome': 'unknown_prefix'}
    pi4 = hostvars['discovered_mac_dc-a6-32-01-36-c2']
    assert (pi4['pi_mac'], pi4['pi_tftp_prefix'], pi4['pi_model'], pi4['pifleet_requests']) == \
        ('dc:a6:32:01:36:c2', 'mac', 4, 2)
    assert pi4['pifleet_last_file'] == 'config.txt' and 'pi_serial' not in pi4
    assert 'pifleet_prefix' not in hostvars['discovered_ip_10-99-40-53']
    assert 'known_serial_1234abcd' not in hostvars


def unsafe_dicts(value, path=''):
    """Where ``value`` holds {"__ansible_unsafe": ...} dicts, as paths."""
    if isinstance(value, dict):
        if set(value) == {'__ansible_unsafe'}:
            return [path]
        return [found for key, item in value.items() for found in unsafe_dicts(item, '%s/%s' % (path, key))]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in unsafe_dicts(item, '%s/%d' % (path, index))]
    return []


def test_export_prints_plain_values_for_awx(tmp_path):
    """What AWX runs for an inventory source: every variable of an ordinary log is a plain value (AWX stored the
    {"__ansible_unsafe": ...} dicts as host variables), on every core."""
    events = write_log(tmp_path, BOOT)
    listed, _unused = run_inventory(tmp_path, {'events': events, 'include_known': True}, '--export', raw=True)
    assert unsafe_dicts(listed) == []
    assert listed['_meta']['hostvars']['discovered_serial_3a4b5c6d']['pifleet_last_file'] == 'start.elf'
    assert listed['_meta']['hostvars']['known_serial_1234abcd']['pifleet_name'] == 'pi-01'


def test_missing_log_is_an_empty_inventory_with_a_warning(tmp_path):
    result, stderr = run_inventory(tmp_path, {'events': str(tmp_path / 'absent.jsonl')})
    assert result['_meta']['hostvars'] == {}
    assert squash('no event log at %s' % (tmp_path / 'absent.jsonl')) in stderr


def test_fleet_map_and_include_known(tmp_path):
    events = write_log(tmp_path, BOOT)
    fleet_map = tmp_path / 'map.json'
    fleet_map.write_text(json.dumps({'version': 1, 'default': [], 'prefixes': {
        'DC-A6-32-01-36-C2': {'name': 'pi-02', 'dirs': []}}}))
    result, _unused = run_inventory(tmp_path, {'events': events, 'fleet_map': str(fleet_map)})
    assert hosts_of(result, 'discovered') == ['discovered_ip_10-99-40-53', 'discovered_serial_3a4b5c6d']
    assert 'known' not in result
    result, _unused = run_inventory(tmp_path, {'events': events, 'fleet_map': str(fleet_map), 'include_known': True})
    assert hosts_of(result, 'known') == ['known_mac_dc-a6-32-01-36-c2', 'known_serial_1234abcd']
    known = result['_meta']['hostvars']
    assert known['known_mac_dc-a6-32-01-36-c2']['pifleet_known'] is True
    assert known['known_mac_dc-a6-32-01-36-c2']['pifleet_name'] == 'pi-02'
    assert known['known_serial_1234abcd']['pi_serial'] == '1234abcd'
    assert known['known_serial_1234abcd']['pifleet_name'] == 'pi-01'
    fleet_map.write_text('{not json')
    _unused, stderr = run_inventory(tmp_path, {'events': events, 'fleet_map': str(fleet_map)}, ok=False)
    assert 'notJSON' in stderr


def test_since_iso_and_relative(tmp_path):
    now = datetime.now(timezone.utc)
    events = write_log(tmp_path, [event(now - timedelta(days=3), '10.99.40.50', 'aaaaaaaa/start4.elf'),
                                  event(now - timedelta(hours=2), '10.99.40.51', 'bbbbbbbb/start4.elf')])
    result, _unused = run_inventory(tmp_path, {'events': events, 'since': '1d'})
    assert hosts_of(result, 'discovered') == ['discovered_serial_bbbbbbbb']
    result, _unused = run_inventory(tmp_path, {'events': events, 'since': (now - timedelta(days=4)).isoformat()})
    assert hosts_of(result, 'discovered') == ['discovered_serial_aaaaaaaa', 'discovered_serial_bbbbbbbb']
    _unused, stderr = run_inventory(tmp_path, {'events': events, 'since': 'last week'}, ok=False)
    assert squash('neither an ISO time') in stderr


def test_max_bytes_reads_only_the_end_and_skips_the_cut_line(tmp_path):
    old = [event(index, '10.99.40.50', 'aaaaaaaa/start4.elf') for index in range(200)]
    new = [event(1000, '10.99.40.51', 'bbbbbbbb/start4.elf'), event(1001, '10.99.40.51', 'bbbbbbbb/config.txt')]
    events = write_log(tmp_path, old + new)
    window = len(''.join(new)) + len(old[-1]) // 2  # starts in the middle of the last old line
    result, stderr = run_inventory(tmp_path, {'events': events, 'max_bytes': window})
    assert hosts_of(result, 'discovered') == ['discovered_serial_bbbbbbbb']
    assert result['_meta']['hostvars']['discovered_serial_bbbbbbbb']['pifleet_requests'] == 2
    assert 'malformed' not in stderr
    # A window that starts exactly on a line keeps that line.
    result, stderr = run_inventory(tmp_path, {'events': events, 'max_bytes': len(''.join(new)) + len(old[-1])})
    assert hosts_of(result, 'discovered') == ['discovered_serial_aaaaaaaa', 'discovered_serial_bbbbbbbb']
    assert result['_meta']['hostvars']['discovered_serial_aaaaaaaa']['pifleet_requests'] == 1


def test_compose_groups_and_keyed_groups(tmp_path):
    events = write_log(tmp_path, BOOT)
    config = {'events': events,
              'compose': {'pifleet_label': "'Pi ' ~ (pi_model | default('?') | string) ~ ' at ' ~ pifleet_address",
                          'pi_hostname': "'rpi-' ~ pifleet_address.split('.')[-1]"},
              'groups': {'needs_serial': "pi_serial is not defined and pi_mac is not defined"},
              'keyed_groups': [{'key': "pi_model | default('unknown') | string", 'prefix': 'model'},
                               {'key': 'pi_tftp_prefix', 'prefix': 'by'}]}
    result, _unused = run_inventory(tmp_path, config)
    hostvars = result['_meta']['hostvars']
    assert hostvars['discovered_mac_dc-a6-32-01-36-c2']['pifleet_label'] == 'Pi 4 at 10.99.40.51'
    assert hostvars['discovered_serial_3a4b5c6d']['pi_hostname'] == 'rpi-50'
    assert hosts_of(result, 'needs_serial') == ['discovered_ip_10-99-40-53']
    assert hosts_of(result, 'model_3') == ['discovered_ip_10-99-40-53', 'discovered_serial_3a4b5c6d']
    assert hosts_of(result, 'model_4') == ['discovered_mac_dc-a6-32-01-36-c2']
    assert hosts_of(result, 'by_mac') == ['discovered_mac_dc-a6-32-01-36-c2']
    assert hosts_of(result, 'by_serial') == ['discovered_serial_3a4b5c6d']


def test_the_documented_examples_work(tmp_path):
    """The EXAMPLES of the plugin, pointed at a log here, parse and compose as documented."""
    events = write_log(tmp_path, BOOT)
    for example in yaml.safe_load_all(EXAMPLES):
        config = {key: value for key, value in example.items()
                  if not key.startswith(('ssh_', 'cache', 'plugin', 'since'))}
        result, _unused = run_inventory(tmp_path, dict(config, events=events, fleet_map=str(tmp_path / 'none.json')))
        assert 'discovered_serial_3a4b5c6d' in result['_meta']['hostvars']
        for host in result['_meta']['hostvars'].values():
            assert 'ansible_host' not in host


def test_cache_serves_until_flushed(tmp_path):
    events = write_log(tmp_path, BOOT[:2])
    config = {'events': events, 'cache': True, 'cache_plugin': 'ansible.builtin.jsonfile',
              'cache_connection': str(tmp_path / 'cache'), 'cache_timeout': 3600}
    first, _unused = run_inventory(tmp_path, config)
    assert hosts_of(first, 'discovered') == ['discovered_serial_3a4b5c6d']
    assert list((tmp_path / 'cache').iterdir())
    write_log(tmp_path, BOOT)
    cached, _unused = run_inventory(tmp_path, config)
    assert cached == first
    if CORE_VERSION.startswith(('2.17.', '2.18.')):  # their ansible-inventory has no --flush-cache
        (tmp_path / 'noop.yml').write_text('[{hosts: localhost, gather_facts: false, tasks: []}]\n')
        subprocess.run([str(BIN / 'ansible-playbook'), '-i', str(tmp_path / 'x.boot_events.yml'), '--flush-cache',
                        str(tmp_path / 'noop.yml')], env=environment(tmp_path), check=True, capture_output=True)
        fresh, _unused = run_inventory(tmp_path, config)
    else:
        fresh, _unused = run_inventory(tmp_path, config, '--flush-cache')
    assert hosts_of(fresh, 'discovered') == ['discovered_ip_10-99-40-53', 'discovered_mac_dc-a6-32-01-36-c2',
                                             'discovered_serial_3a4b5c6d']


def test_other_file_names_are_not_ours(tmp_path):
    _unused, stderr = run_inventory(tmp_path, {'events': write_log(tmp_path, BOOT)}, ok=False, name='pifleet.yml')
    assert 'pifleet.yml' in stderr


@pytest.fixture
def fake_ssh(tmp_path):
    """A fake ``ssh`` first on PATH (a stand-in for the bakery), and the file it records its argv in."""
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    program = bindir / 'ssh'
    program.write_text(FAKE_SSH % sys.executable)
    program.chmod(0o755)
    calls = tmp_path / 'ssh-calls.jsonl'
    env = {'PATH': '%s:%s' % (bindir, os.environ['PATH']), 'FAKE_SSH_LOG': str(calls)}

    def recorded():
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return env, recorded


def test_ssh_reads_the_log_and_map_on_the_bakery(tmp_path, fake_ssh):
    env, recorded = fake_ssh
    remote = tmp_path / 'bakery dir'  # a space: the remote command must quote the path
    remote.mkdir()
    events = write_log(remote, BOOT)
    fleet_map = remote / 'map.json'
    fleet_map.write_text(json.dumps({'version': 1, 'prefixes': {'3a4b5c6d': {'name': 'pi-03', 'dirs': []}}}))
    # dnsmasq's log, in the bakery's local time (date +%z over the same ssh says which): a Pi 5 that asked DHCP only.
    asked = datetime.now().replace(microsecond=0)
    (remote / 'dnsmasq.log').write_text(
        '%s dnsmasq-dhcp[1]: 5 vendor class: PXEClient:Arch:00000:UNDI:002001\n' % asked.strftime('%b %e %H:%M:%S')
        + '%s dnsmasq-dhcp[1]: 5 PXE(eth0) 2c:cf:67:00:00:05 proxy\n' % asked.strftime('%b %e %H:%M:%S')
        + '%s dnsmasq-dhcp[1]: 5 sent size: 17 option: 97 client-machine-id  '
          '00:52:50:69:35:70:41:d0:00:67:00:00:05:05...\n' % asked.strftime('%b %e %H:%M:%S'))
    config = {'events': events, 'fleet_map': str(fleet_map), 'ssh_host': 'bakery.example.net',
              'ssh_user': 'pifleet', 'ssh_port': 2222, 'ssh_private_key_file': '/keys/id_ed25519',
              'ssh_args': ['-o', 'StrictHostKeyChecking=accept-new'], 'max_bytes': 1 << 20,
              'dhcp_log': str(remote / 'dnsmasq.log')}
    result, _unused = run_inventory(tmp_path, config, env=env)
    assert hosts_of(result, 'discovered') == ['discovered_ip_10-99-40-53', 'discovered_mac_2c-cf-67-00-00-05',
                                              'discovered_mac_dc-a6-32-01-36-c2']
    pi5 = result['_meta']['hostvars']['discovered_mac_2c-cf-67-00-00-05']
    assert (pi5['pi_mac'], pi5['pi_model'], pi5['pifleet_board']) == ('2c:cf:67:00:00:05', 5, 'Pi 5 8GB')
    assert datetime.fromisoformat(pi5['pifleet_first_seen']) == asked.astimezone()
    calls = recorded()
    assert len(calls) == 4  # the map, the log, dnsmasq's log, the neighbour table
    for argv in calls:
        assert argv[:8] == ['-o', 'BatchMode=yes', '-p', '2222', '-i', '/keys/id_ed25519',
                            '-o', 'StrictHostKeyChecking=accept-new']
        assert argv[8:10] == ['--', 'pifleet@bakery.example.net']
    assert "tail -c %d -- '%s'" % ((1 << 20) + 1, events) in calls[1][10]
    assert "date +%%z; exec tail -c %d -- '%s'" % ((1 << 20) + 1, remote / 'dnsmasq.log') in calls[2][10]
    assert calls[3][10].endswith('exec cat -- /proc/net/arp')


def test_ssh_missing_log_warns_and_unreachable_host_fails(tmp_path, fake_ssh):
    env, recorded = fake_ssh
    config = {'events': str(tmp_path / 'absent.jsonl'), 'ssh_host': 'bakery.example.net'}
    result, stderr = run_inventory(tmp_path, config, env=env)
    assert result['_meta']['hostvars'] == {}
    assert squash('no event log at bakery.example.net:%s' % (tmp_path / 'absent.jsonl')) in stderr
    assert recorded()[0][:4] == ['-o', 'BatchMode=yes', '--', 'bakery.example.net']
    config['ssh_host'] = 'unreachable'
    _unused, stderr = run_inventory(tmp_path, config, env=env, ok=False)
    assert 'rc=255' in stderr and 'Connectionrefused' in stderr


def test_the_awx_credential_type_gives_the_plugin_its_ssh_settings(tmp_path, fake_ssh):
    """docs/awx: an inventory source gets no machine credential; the custom type injects what the plugin reads."""
    credential_type = yaml.safe_load((REPO / 'docs' / 'awx' / 'boot_events_credential_type.yml').read_text())
    assert credential_type['kind'] == 'cloud'  # the kinds an AWX inventory source accepts: cloud and custom
    fields = {field['id']: field for field in credential_type['inputs']['fields']}
    assert all(field['type'] in ('string', 'boolean') and field['label'] for field in fields.values())
    assert set(credential_type['inputs']['required']) <= set(fields)
    assert fields['ssh_private_key']['secret'] and fields['ssh_private_key']['format'] == 'ssh_private_key'
    documented = {env['name'] for option in yaml.safe_load(DOCUMENTATION)['options'].values()
                  for env in option.get('env', [])}
    assert set(credential_type['injectors']['env']) <= documented

    key = tmp_path / 'awx_key'
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', str(key)], check=True)
    inputs = {'ssh_host': 'bakery.example.net', 'ssh_port': '', 'ssh_user': 'pifleet',
              'ssh_private_key': key.read_text().rstrip('\n'),  # as pasted into the form
              'known_hosts': 'bakery.example.net ' + ' '.join(key.with_suffix('.pub').read_text().split()[:2])}
    injected = awx_inject(credential_type, inputs, tmp_path / 'job')
    env, recorded = fake_ssh
    # The AWX example of the plugin, reading a log here (the fake ssh runs the remote command locally).
    source = next(example for example in yaml.safe_load_all(EXAMPLES) if 'compose' in example)
    source = {key: value for key, value in source.items() if not key.startswith(('cache', 'plugin'))}
    result, _unused = run_inventory(tmp_path, dict(source, events=write_log(tmp_path, BOOT),
                                                   fleet_map=str(tmp_path / 'none.json')),
                                    env=dict(env, **injected), name='awx.boot_events.yml')
    assert hosts_of(result, 'discovered') == ['discovered_ip_10-99-40-53', 'discovered_mac_dc-a6-32-01-36-c2',
                                              'discovered_serial_3a4b5c6d']
    key_file, known_hosts = tmp_path / 'job/env/ssh_key', tmp_path / 'job/env/known_hosts'
    assert recorded()[-1][:12] == ['-o', 'BatchMode=yes', '-p', '22', '-i', str(key_file),
                                   '-o', 'UserKnownHostsFile=%s' % known_hosts, '-o', 'StrictHostKeyChecking=yes',
                                   '--', 'pifleet@bakery.example.net']
    # What ssh will find: a key OpenSSH loads (it needs the trailing newline) and the pinned host key.
    derived = subprocess.run(['ssh-keygen', '-y', '-f', str(key_file)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == key.with_suffix('.pub').read_text().split()[:2]
    assert known_hosts.read_text() == inputs['known_hosts']
    assert oct(key_file.stat().st_mode & 0o777) == '0o600'


# -- what the LAN can send: file names are data, a device cannot become a fleet host --------------------------

TEMPLATE = "{{ lookup('pipe', 'touch %s') }}"
# A template with no brace: Jinja's override header, which changes the start and end strings (not wrapped).
OVERRIDE = "#jinja2:variable_start_string:'[[', variable_end_string:']]'\n[[ lookup('pipe', 'touch %s') ]]"


def hostile_log(tmp_path):
    """Lines as the hook writes them for devices asking for templates; ``marks`` exist only if one ran."""
    marks = {what: tmp_path / ('ran-' + what) for what in ('file', 'outcome', 'name', 'prefix', 'client', 'override')}
    lines = [event(0, '10.99.40.66', 'bbbb2222/' + TEMPLATE % marks['file'], outcome='unknown_prefix'),
             event(1, '10.99.40.66', 'cccc3333/start4.elf', outcome=TEMPLATE % marks['outcome']),
             event(2, '10.99.40.66', '1234abcd/config.txt', known=True, name=TEMPLATE % marks['name']),
             event(3, '10.99.40.66', TEMPLATE % marks['prefix'] + '/x', outcome='unknown_prefix'),
             event(4, TEMPLATE % marks['client'], 'dddd4444/x', outcome='unknown_prefix'),
             event(5, '10.99.40.66', 'eeee5555/start4.elf', outcome=OVERRIDE % marks['override'])]
    return write_log(tmp_path, lines), marks


def test_file_names_from_the_lan_never_run_as_templates(tmp_path):
    """Every string from the log reaches the inventory and a play verbatim, and no command runs."""
    events, marks = hostile_log(tmp_path)
    config = {'events': events, 'include_known': True,
              'compose': {'pifleet_note': "pifleet_last_file ~ ' ' ~ pifleet_last_outcome ~ ' ' ~ "
                                          "(pifleet_name | default(''))"},
              'groups': {'odd': "pifleet_last_file is search('lookup')"},
              'keyed_groups': [{'key': 'pifleet_last_outcome', 'prefix': 'outcome'}]}
    result, stderr = run_inventory(tmp_path, config)
    assert [mark.name for mark in marks.values() if mark.exists()] == [], 'a file name ran as a template'
    assert squash('skipped 1 malformed line(s)') in stderr  # the client that is not an address
    hostvars = result['_meta']['hostvars']
    assert sorted(hostvars) == ['discovered_serial_bbbb2222', 'discovered_serial_cccc3333',
                                'discovered_serial_eeee5555', 'known_serial_1234abcd']
    assert hostvars['discovered_serial_bbbb2222']['pifleet_last_file'] == TEMPLATE % marks['file']
    assert hostvars['discovered_serial_eeee5555']['pifleet_last_outcome'] == OVERRIDE % marks['override']
    assert hostvars['discovered_serial_cccc3333']['pifleet_last_outcome'] == TEMPLATE % marks['outcome']
    assert hostvars['known_serial_1234abcd']['pifleet_name'] == TEMPLATE % marks['name']
    assert hostvars['discovered_serial_bbbb2222']['pifleet_note'].startswith(TEMPLATE % marks['file'])
    assert hosts_of(result, 'odd') == ['discovered_serial_bbbb2222']

    # A play that reads, copies and re-reads every variable (older cores template a plain string on each use).
    copy = {'copied': '{{ pifleet_last_file }} {{ pifleet_last_outcome }} {{ pifleet_note }}',
            'every': '{{ hostvars[inventory_hostname] | dict2items | map(attribute="value") | list }}'}
    (tmp_path / 'play.yml').write_text(yaml.safe_dump([{
        'name': 'Use what the plugin found', 'hosts': 'discovered:known', 'gather_facts': False,
        'tasks': [{'name': 'Copy', 'ansible.builtin.set_fact': copy},
                  {'name': 'Show', 'ansible.builtin.debug': {'msg': '{{ copied }} {{ every }}'}}]}]))
    proc = subprocess.run([str(BIN / 'ansible-playbook'), '-i', str(tmp_path / 'x.boot_events.yml'),
                           str(tmp_path / 'play.yml')], env=environment(tmp_path), capture_output=True, text=True,
                          check=False, timeout=300)
    assert [mark.name for mark in marks.values() if mark.exists()] == [], 'a file name ran as a template'
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert TEMPLATE % marks['file'] in proc.stdout and TEMPLATE % marks['outcome'] in proc.stdout
    assert "[[ lookup('pipe', 'touch %s') ]]" % marks['override'] in proc.stdout

    # What AWX stores (--export): the strings that could be templates stay marked (the override header too, which
    # has no brace), the validated ones are plain values.
    listed, _unused = run_inventory(tmp_path, config, '--export', raw=True)
    wrapped = unsafe_dicts(listed['_meta']['hostvars'])
    assert {'/discovered_serial_bbbb2222/pifleet_last_file', '/known_serial_1234abcd/pifleet_name',
            '/discovered_serial_eeee5555/pifleet_last_outcome'} <= set(wrapped)
    assert not [path for path in wrapped if '/pi_' in path or path.endswith(('_seen', '_address', '_prefix'))]
    assert listed['_meta']['hostvars']['discovered_serial_cccc3333']['pifleet_last_file'] == 'start4.elf'
    assert [mark.name for mark in marks.values() if mark.exists()] == [], 'a file name ran as a template'


FLEET = {'pis': {'hosts': {
    'pi-bbbb2222': {'pi_serial': 'bbbb2222', 'pi_model': 4, 'pi_ip': '10.99.40.20', 'ansible_host': '10.99.40.20'},
    'pi-01': {'pi_serial': '1234abcd', 'pi_model': 4, 'pi_ip': '10.99.40.21', 'ansible_host': '10.99.40.21'},
}}}


@pytest.mark.parametrize('plugin_first', [False, True])
def test_a_device_cannot_take_over_a_fleet_host(tmp_path, plugin_first):
    """Prefixes made to sanitise into fleet names, and a known serial asked from elsewhere, under the old compose
    example (ansible_host from the log): the fleet hosts keep exactly their own variables, in either source order."""
    fleet = tmp_path / 'fleet.yml'
    fleet.write_text(yaml.safe_dump(FLEET))
    fleet_map = tmp_path / 'map.json'
    fleet_map.write_text(json.dumps({'version': 1, 'prefixes': {'bbbb2222': {'name': 'pi-bbbb2222', 'dirs': []},
                                                                '1234abcd': {'name': 'pi-01', 'dirs': []}}}))
    events = write_log(tmp_path, [event(0, '10.99.40.66', prefix + '/start4.elf', outcome='unknown_prefix')
                                  for prefix in ('bbbb2222.', 'bbbb2222-', 'pi-bbbb2222', 'pi-01', 'BBBB2222:')]
                       + [event(1, '10.99.40.66', '1234abcd/start4.elf', known=True, name='pi-01')])
    config = {'events': events, 'fleet_map': str(fleet_map), 'include_known': True,
              'compose': {'ansible_host': 'pifleet_address', 'pi_tftp_prefix': "pifleet_prefix | default('x')"}}
    source = write_source(tmp_path, config)
    result, _unused = run_inventory(tmp_path, config, sources=[source, fleet] if plugin_first else [fleet, source])
    hostvars = result['_meta']['hostvars']
    for name, declared in FLEET['pis']['hosts'].items():
        assert hostvars[name] == declared, name
    assert hosts_of(result, 'pis') == ['pi-01', 'pi-bbbb2222']
    taken = sorted(set(hostvars) - set(FLEET['pis']['hosts']))
    assert len(taken) == 6 and hosts_of(result, 'known') == ['known_serial_1234abcd']
    assert all(hostvars[name]['ansible_host'] == '10.99.40.66' for name in taken)
    assert hostvars['known_serial_1234abcd']['pifleet_name'] == 'pi-01'


def test_a_host_already_in_the_inventory_gets_nothing(tmp_path):
    """Whatever name a Pi gets, a host an earlier source declared is left as it is (and said so)."""
    fleet = tmp_path / 'fleet.yml'
    declared = {'discovered_serial_eeee5555': {'ansible_host': '10.99.40.30'}}
    fleet.write_text(yaml.safe_dump({'all': {'hosts': declared}}))
    config = {'events': write_log(tmp_path, [event(0, '10.99.40.66', 'eeee5555/start4.elf')]),
              'compose': {'ansible_host': 'pifleet_address'}, 'keyed_groups': [{'key': 'pi_serial', 'prefix': 's'}]}
    result, stderr = run_inventory(tmp_path, config, sources=[fleet, write_source(tmp_path, config)])
    assert result['_meta']['hostvars']['discovered_serial_eeee5555'] == {'ansible_host': '10.99.40.30'}
    assert hosts_of(result, 'discovered') == [] and 's_eeee5555' not in result
    assert squash('left 1 host(s) already in the inventory untouched: discovered_serial_eeee5555') in stderr


def test_pi_variables_come_from_validated_values_only(tmp_path):
    """A prefix no Pi boots by (colons, too long) gives no pi_* variable; a MAC only in the form a Pi asks for."""
    events = write_log(tmp_path, [event(0, '10.99.40.66', 'dc:a6:32:01:36:c2/start4.elf'),
                                  event(1, '10.99.40.66', ('a' * 40) + '/start4.elf'),
                                  event(2, '10.99.40.67', 'dc-a6-32-01-36-c3/start4.elf')])
    result, _unused = run_inventory(tmp_path, {'events': events})
    hostvars = result['_meta']['hostvars']
    assert len(hostvars) == 3
    for name, variables in hostvars.items():
        pi_vars = {key: value for key, value in variables.items() if key.startswith('pi_')}
        if name == 'discovered_mac_dc-a6-32-01-36-c3':
            assert pi_vars == {'pi_mac': 'dc:a6:32:01:36:c3', 'pi_tftp_prefix': 'mac', 'pi_model': 4}
        else:
            assert pi_vars == {'pi_model': 4}, name
