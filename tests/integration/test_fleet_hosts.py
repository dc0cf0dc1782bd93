# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The playbooks find their hosts wherever the group settings are, and act per bakery.

ansible-playbook runs the collection's playbooks on inventories written here, this host standing in for every
bakery (local connection): group names set in the bakery group's own group_vars (the README's advice, which no
play's `hosts:` ever saw), groups that are missing or empty (a loud failure, never "no hosts matched" and green),
and two bakeries, each with its own Pis (`pi_bakery`): each bakery's Python is a wrapper that notes which Pis a
module run on it was given, so the test sees which bakery drove which Pi's power.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fstree import unmount_below
from powerfakes import PlugServer
from statustable import table

REPO = Path(__file__).resolve().parents[2]
WRAPPER = '''#!/bin/sh
# The Python of bakery %(name)s: note the Pis named in each module it runs, then run it.
for arg in "$@"; do
  case "$arg" in
    *AnsiballZ_*.py) echo "%(name)s $(basename "$arg" .py) $(grep -o 'pi-0[0-9]' "$arg" | sort -u | tr '\\n' ' ')" \
>> "%(log)s"
      grep -oE '"(boot_mount|roots_dir|host_key_types)": *("[^"]*"|\\[[^]]*\\])' "$arg" | sort -u \
| sed "s|^|%(name)s $(basename "$arg" .py) |" >> "%(log)s.args";;
  esac
done
exec "%(python)s" "$@"
'''


@pytest.fixture
def plugs():
    server = PlugServer()
    try:
        yield server
    finally:
        server.close()


def bakery(tmp, name, **variables):
    """A bakery host running modules here, through a Python wrapper that logs what it was given."""
    wrapper = tmp / ('python-' + name)
    wrapper.write_text(WRAPPER % {'name': name, 'log': tmp / 'ran.log', 'python': sys.executable})
    wrapper.chmod(0o755)
    return dict({'ansible_connection': 'local', 'ansible_python_interpreter': str(wrapper)}, **variables)


def ran(tmp):
    """{(bakery, module): [the Pis it was given]} of every module run on a bakery."""
    log = tmp / 'ran.log'
    seen = {}
    for line in (log.read_text().splitlines() if log.exists() else []):
        name, module, *pis = line.split()
        seen.setdefault((name, module.replace('AnsiballZ_', '')), []).append(sorted(pis))
    return seen


def write(tmp, hosts, group_vars=None):
    """An inventory directory: hosts.yml and group_vars/<group>.yml."""
    inventory = tmp / 'inventory'
    (inventory / 'group_vars').mkdir(parents=True, exist_ok=True)
    (inventory / 'hosts.yml').write_text(yaml.safe_dump(hosts))
    for group, variables in (group_vars or {}).items():
        (inventory / 'group_vars' / ('%s.yml' % group)).write_text(yaml.safe_dump(variables))
    return inventory


def play(tmp, name, *args):
    """(rc, recap counters per host, output) of the collection's playbook ``name``."""
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_NOCOLOR='1')
    proc = subprocess.run([str(Path(sys.executable).parent / 'ansible-playbook'), '-i', str(tmp / 'inventory'),
                           'pifleet.netboot.%s' % name, *args], capture_output=True, text=True, env=env,
                          check=False, timeout=300, cwd=tmp)
    recaps = dict(re.findall(r'^(\S+)\s+:\s+(ok=.*)$', proc.stdout, re.M))
    counters = {host: {k: int(v) for k, v in re.findall(r'(\w+)=(\d+)', line)} for host, line in recaps.items()}
    return proc.returncode, counters, proc.stdout + proc.stderr


def pis(plugs, count, owners=None):
    """Pis pi-01.. with a Shelly plug each (off); ``owners``: {Pi: its pi_bakery}."""
    found = {}
    for index in range(1, count + 1):
        name = 'pi-%02d' % index
        found[name] = {'pi_serial': '1234ab%02x' % index, 'pi_model': 4, 'pi_ip': '10.99.34.%d' % (50 + index),
                       'pi_power': {'driver': 'http', 'api': 'shelly1', 'url': plugs.add(name, 'shelly1')}}
        if owners and name in owners:
            found[name]['pi_bakery'] = owners[name]
    return found


def test_group_names_in_the_bakery_groups_own_group_vars(tmp_path, plugs):
    """The README says: set pifleet_* once, in the bakery's group_vars. Before, power and status printed "no hosts
    matched" there and ended green; the Pis, who never see those group_vars, are found through their bakery."""
    write(tmp_path, {'servers': {'hosts': {'bakery01': bakery(tmp_path, 'bakery01')}},
                     'fleet': {'hosts': pis(plugs, 2)}},
          {'servers': {'pifleet_bakery_group': 'servers', 'pifleet_pis_group': 'fleet'}})
    rc, counters, output = play(tmp_path, 'power', '-e', 'power_state=on')
    assert rc == 0 and 'no hosts matched' not in output, output[-3000:]
    assert plugs.plugs['pi-01'].state == [True] and plugs.plugs['pi-02'].state == [True]
    assert counters['pi-01']['changed'] == counters['pi-02']['changed'] == 1, counters
    rc, _counters, output = play(tmp_path, 'status')
    assert rc == 0, output[-3000:]
    assert {pi: row[5] for pi, row in table(output, 'bakery01').items()} == {'pi-01': 'on', 'pi-02': 'on'}
    rc, _counters, output = play(tmp_path, 'discover', '-e', 'pifleet_events_path=%s' % (tmp_path / 'none.jsonl'))
    assert rc == 0 and 'no event log at %s on bakery01' % (tmp_path / 'none.jsonl') in output, output[-3000:]


@pytest.mark.parametrize('case, expected', [
    ('missing bakery group', 'no bakery: the group bakery (pifleet_bakery_group, default bakery) is not in the '
                             'inventory'),
    ('empty Pi group', 'no Pis: the group pis (pifleet_pis_group) has no hosts'),
    ('typo in the Pi group', 'the group piz (pifleet_pis_group of bakery bakery01) is not in the inventory'),
    ('limit to the bakery', 'the limit selects none of the pis (pi-01): this playbook runs on the Pis'),
])
def test_a_group_that_finds_nothing_fails_loudly(tmp_path, plugs, case, expected):
    hosts = {'bakery': {'hosts': {'bakery01': bakery(tmp_path, 'bakery01')}}, 'pis': {'hosts': pis(plugs, 1)}}
    group_vars, args = {}, []
    if case == 'missing bakery group':
        hosts['bakeries'] = hosts.pop('bakery')
    elif case == 'empty Pi group':
        hosts['pis'] = {'hosts': {}}
    elif case == 'typo in the Pi group':
        group_vars = {'bakery': {'pifleet_pis_group': 'piz'}}
    else:
        args = ['--limit', 'bakery01']
    write(tmp_path, hosts, group_vars)
    rc, _counters, output = play(tmp_path, 'power', '-e', 'power_state=on', *args)
    assert rc != 0 and 'no hosts matched' not in output, output[-3000:]
    assert expected in output, output[-3000:]
    assert plugs.plugs['pi-01'].sets == 0 and not (tmp_path / 'ran.log').exists()  # nothing ran anywhere
    if case == 'missing bakery group':  # every playbook, not just power
        for name in ('site', 'status', 'discover', 'bakeforms', 'reimage'):
            rc, _counters, output = play(tmp_path, name, '--check')
            assert rc != 0 and expected in output, (name, output[-3000:])


# The bakery that does not answer: ssh to a loopback port where nothing listens (refused at once, no traffic off the
# host); its Pis have power devices, so the power query is asked of it too.
UNREACHABLE = {'ansible_connection': 'ssh', 'ansible_host': '127.0.0.1', 'ansible_port': 1}


def test_a_bakery_that_does_not_answer_costs_only_its_own_pis_their_power(tmp_path, plugs):
    """power with bakery02 unreachable: the first bakery's Pis are switched, bakery02's Pis each fail with the reason,
    and the play goes on to report every Pi (a run_once loop once ended at the unreachable bakery, for all)."""
    owners = {'pi-02': 'bakery02', 'pi-04': 'bakery02'}
    write(tmp_path, {'bakery': {'hosts': {'bakery01': bakery(tmp_path, 'bakery01'),
                                          'bakery02': dict(bakery(tmp_path, 'bakery02'), **UNREACHABLE)}},
                     'pis': {'hosts': pis(plugs, 4, owners)}})
    rc, counters, output = play(tmp_path, 'power', '-e', 'power_state=on')
    assert rc == 2, output[-3000:]
    assert plugs.plugs['pi-01'].state == [True] and plugs.plugs['pi-03'].state == [True], output[-3000:]
    assert plugs.plugs['pi-02'].sets == 0 and plugs.plugs['pi-04'].sets == 0
    assert counters['pi-01']['changed'] == 1 and counters['pi-03']['changed'] == 1, counters
    assert counters['pi-02']['failed'] == 1 and counters['pi-04']['failed'] == 1, counters
    for pi in ('pi-02', 'pi-04'):
        assert re.search(r'fatal: \[%s\]: FAILED! => \{\n\s*"msg": "[^"\n]*port 1: Connection refused' % pi,
                         output), output[-3000:]


def test_two_bakeries_each_drive_and_show_their_own_pis(tmp_path, plugs):
    """pi-01 and pi-03 belong to the first bakery (no pi_bakery), pi-02 and pi-04 to bakery02: never
    groups['bakery'][0] for all of them."""
    owners = {'pi-02': 'bakery02', 'pi-04': 'bakery02'}
    write(tmp_path, {'bakery': {'hosts': {'bakery01': bakery(tmp_path, 'bakery01'),
                                          'bakery02': bakery(tmp_path, 'bakery02')}},
                     'pis': {'hosts': pis(plugs, 4, owners)}})
    rc, counters, output = play(tmp_path, 'power', '-e', 'power_state=on')
    assert rc == 0, output[-3000:]
    every = ('pi-01', 'pi-02', 'pi-03', 'pi-04')
    assert all(plugs.plugs[pi].state == [True] and plugs.plugs[pi].sets == 1 for pi in every)
    assert ran(tmp_path) == {('bakery01', 'pi_power'): [['pi-01', 'pi-03']],
                             ('bakery02', 'pi_power'): [['pi-02', 'pi-04']]}
    assert all(counters[pi]['changed'] == 1 for pi in ('pi-01', 'pi-02', 'pi-03', 'pi-04')), counters
    # A limit to one bakery's Pi drives that bakery only.
    (tmp_path / 'ran.log').unlink()
    rc, counters, output = play(tmp_path, 'power', '-e', 'power_state=off', '--limit', 'pi-04')
    assert rc == 0 and ran(tmp_path) == {('bakery02', 'pi_power'): [['pi-04']]}, output[-3000:]
    assert plugs.plugs['pi-04'].state == [False] and plugs.plugs['pi-02'].state == [True]
    # status: each bakery's part of the table holds its own Pis, their power read by it.
    (tmp_path / 'ran.log').unlink()
    rc, counters, output = play(tmp_path, 'status')
    assert rc == 0, output[-3000:]
    assert {pi: row[5] for pi, row in table(output, 'bakery01').items()} == {'pi-01': 'on', 'pi-03': 'on'}
    assert {pi: row[5] for pi, row in table(output, 'bakery02').items()} == {'pi-02': 'on', 'pi-04': 'off'}
    assert ran(tmp_path)[('bakery01', 'pi_power')] == [['pi-01', 'pi-03']]
    assert ran(tmp_path)[('bakery02', 'pi_power')] == [['pi-02', 'pi-04']]


@pytest.mark.parametrize('cause', ['roots dir unreadable', 'no Python on the bakery', 'the bakery does not answer'])
def test_a_bakery_that_cannot_be_read_is_a_line_and_the_others_are_shown(tmp_path, plugs, cause):
    """One bakery's pi_status fails for a real cause (its roots directory cannot be read: a symlink loop stands in
    for an I/O error or a stale NFS handle; or its Python is not there; or it does not answer at all, which once
    ended the play at the power query, before any table): its BAKERY line says why, the other bakery's Pis are in
    the table and in the JSON file, and the play ends failed with one summary."""
    owners = {'pi-02': 'bakery02', 'pi-04': 'bakery02'}
    (tmp_path / 'loop').symlink_to(tmp_path / 'loop')
    broken = {'roots dir unreadable': {'pifleet_roots_dir': str(tmp_path / 'loop')},
              'no Python on the bakery': {'ansible_python_interpreter': str(tmp_path / 'none' / 'python3')},
              'the bakery does not answer': UNREACHABLE}[cause]
    write(tmp_path, {'bakery': {'hosts': {'bakery01': bakery(tmp_path, 'bakery01'),
                                          'bakery02': dict(bakery(tmp_path, 'bakery02'), **broken)}},
                     'pis': {'hosts': pis(plugs, 4, owners)}})
    rc, counters, output = play(tmp_path, 'status', '-e', 'status_file=%s' % (tmp_path / 'status.json'))
    assert rc == 2, output[-3000:]
    assert {pi: row[5] for pi, row in table(output, 'bakery01').items()} == {'pi-01': 'off', 'pi-03': 'off'}
    why = {'roots dir unreadable': 'pi_status could not read %s/1234ab0' % (tmp_path / 'loop'),
           'no Python on the bakery': '%s/none/python3' % tmp_path,
           'the bakery does not answer': 'port 1: Connection refused'}[cause]
    shown = output.split('TASK [Show the fleet]')[1].split('TASK [')[0]
    line = re.search(r'^\s*"BAKERY bakery02: (.*)",?$', shown, re.M)
    assert line and why in line.group(1), shown
    if cause == 'roots dir unreadable':
        assert line.group(1).endswith('.json on this bakery: Too many levels of symbolic links; check that the file '
                                      'systems of roots_dir, disks_dir and store are mounted and readable'), shown
    document = json.loads((tmp_path / 'status.json').read_text())
    assert sorted(pi['name'] for pi in document['pis']) == ['pi-01', 'pi-03']
    assert [(b['name'], b['failed']) for b in document['bakeries']] == [('bakery01', False), ('bakery02', True)]
    assert why in document['bakeries'][1]['msg']
    summary = output.split('TASK [Fail for the bakeries that could not be read')[1]
    assert 'status could not read 1 of 2 bakeries: bakery02; their Pis are not in the status above' in summary, \
        output[-3000:]
    assert 'could not ask the power devices' not in summary, summary  # the unread bakery is named once
    assert counters['pi-01']['failed'] == 1, counters  # every task runs once, on the first Pi of the limit


def ran_with(tmp):
    """{(bakery, module): {'boot_mount: "nfs"', ...}}: some arguments of every module run on a bakery."""
    log = tmp / 'ran.log.args'
    seen = {}
    for line in (log.read_text().splitlines() if log.exists() else []):
        name, module, argument = line.split(' ', 2)
        seen.setdefault((name, module.replace('AnsiballZ_', '')), set()).add(re.sub(r'"(\w+)": *', r'\1: ', argument))
    return seen


def test_each_bakery_rebuilds_its_pis_with_its_own_settings_only(tmp_path, plugs):
    """reimage runs the fleet role for each bakery in turn, from a play on the Pis. It copied each bakery's settings
    into facts, one after the other, so bakery01's boot_mount and host key types stayed for bakery02, which set
    neither. Each bakery's modules show what they were given; the roots fail (no bakeform registered: nothing is
    built), which reimage reports per Pi."""
    owners = {'pi-02': 'bakery02', 'pi-04': 'bakery02'}

    def settings(name):
        top = tmp_path / name
        top.mkdir()
        (top / 'g.conf').write_text('NFS_CORE_PARAM {\n    Protocols = 3, 4;\n}\n')  # nfs_export includes ours
        return {'pifleet_bakeform_store': str(top / 'store'), 'pifleet_roots_dir': str(top / 'roots'),
                'pifleet_disks_dir': str(top / 'disks'), 'pifleet_boot_dir': str(top / 'pis'),
                'pifleet_map_path': str(top / 'map.json'), 'pifleet_events_path': str(top / 'events.jsonl'),
                'pifleet_host_ca': '', 'pifleet_known_hosts': str(top / 'known_hosts'),
                'pifleet_allow_root_filesystem': True, 'pifleet_bakeforms': [{'name': 'raspios', 'src': '/none'}],
                'fleet_nfs_exports_file': str(top / 'pifleet.conf'), 'fleet_nfs_ganesha_config': str(top / 'g.conf'),
                'fleet_nfs_reload': False, 'fleet_units_dir': str(top / 'units'), 'fleet_hook_service': ''}
    first = dict(settings('b1'), pifleet_boot_mount='nfs', pifleet_nfs_server='10.99.34.1',
                 fleet_host_key_types=['ed25519'])
    write(tmp_path, {'bakery': {'hosts': {'bakery01': bakery(tmp_path, 'bakery01', **first),
                                          'bakery02': bakery(tmp_path, 'bakery02', **settings('b2'))}},
                     'pis': {'hosts': pis(plugs, 4, owners)}})
    try:
        rc, counters, output = play(tmp_path, 'reimage', '-e', 'pifleet_reimage_wait=5')
    finally:
        unmount_below(tmp_path)
    assert rc != 0 and all(counters[pi]['failed'] == 1 for pi in ('pi-01', 'pi-02', 'pi-03', 'pi-04')), output[-3000:]
    # pi_root twice on each bakery, for its own Pis: the pre-flight's check-mode plan, then the rebuild
    assert ran(tmp_path)[('bakery01', 'pi_root')] == [['pi-01', 'pi-03']] * 2
    assert ran(tmp_path)[('bakery02', 'pi_root')] == [['pi-02', 'pi-04']] * 2
    given = ran_with(tmp_path)
    assert given[('bakery01', 'pi_root')] == {'boot_mount: "nfs"', 'host_key_types: ["ed25519"]',
                                              'roots_dir: "%s"' % (tmp_path / 'b1/roots')}, given
    assert given[('bakery02', 'pi_root')] == {'boot_mount: "none"', 'host_key_types: ["ed25519", "ecdsa"]',
                                              'roots_dir: "%s"' % (tmp_path / 'b2/roots')}, given
    for pi, name in (('pi-01', 'b1'), ('pi-02', 'b2')):  # each Pi named by its own bakery, with its own store
        assert re.search(r'%s \(serial [0-9a-f]+\) failed at roots: [^"]*%s' % (pi, re.escape(str(
            tmp_path / name / 'store'))), output), output[-3000:]
    assert not (tmp_path / 'ran.log').read_text().count('pi_power')  # no Pi was power-cycled
