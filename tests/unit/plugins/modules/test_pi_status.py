# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_status: the module's main() on a bakery made in a temp dir (markers, a bakeform index, the map, the logs),
and its gatherer (statuswork) with a host that answers for busctl and ssh-keyscan as they answer on a bakery
(the real ones run in tests/integration/test_boot_timeline.py)."""

from __future__ import annotations

import json
import time

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import bootlogs
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.statuswork import FleetStatus
from ansible_collections.pifleet.netboot.plugins.modules import pi_status

ED = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl'
OTHER = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA=='


def stamp(seconds):
    return time.strftime('%b %e %H:%M:%S', time.localtime(seconds))  # dnsmasq's local time, no year


def hook(at, client, request, outcome='ok', *, size=1000, duration=0.2):
    prefix, path = request.split('/', 1) if '/' in request else ('', request)
    return json.dumps({'time': bootlogs.iso(at), 'client': client, 'port': 4000, 'request': request,
                       'prefix': prefix, 'path': path, 'name': None, 'known': True, 'outcome': outcome,
                       'bytes': size if outcome == 'ok' else 0, 'duration': duration, 'retransmits': 0,
                       'error': None}) + '\n'


@pytest.fixture
def bakery(tmp_path):
    """Three Pis: pi-01 booted well, pi-02 fetched its kernel long ago and never mounted, pi-03 only asked DHCP."""
    now = time.time()
    roots, disks, store = tmp_path / 'roots', tmp_path / 'disks', tmp_path / 'bakeforms'
    for path in (roots, disks, store / 'lite' / 'generations'):
        path.mkdir(parents=True)
    for number in (1, 2):
        gen = store / 'lite' / 'generations' / str(number)
        (gen / 'boot').mkdir(parents=True)
        for name in ('manifest.json', 'root.img', 'boot.img'):
            (gen / name).write_text('{}')
    (store / 'lite' / 'bakeform.json').write_text(json.dumps({
        'format': 3, 'name': 'lite', 'current': 2, 'next': 3, 'pinned': [],
        'generations': {'1': {'sha256': 'a' * 64}, '2': {'sha256': 'b' * 64}}}))
    (roots / '1234abcd.json').write_text(json.dumps({'bakeform': 'lite', 'generation': 1, 'host_keys': [ED]}))
    (roots / '1234abce.json').write_text(json.dumps({'bakeform': 'lite', 'bakeform_sha256': 'b' * 64}))
    (roots / '1234abcd.img').write_text('')
    (disks / '1234abcd.json').write_text('{}')
    (tmp_path / 'map.json').write_text(json.dumps({'version': 1, 'prefixes': {
        '1234abcd': {'name': 'pi-01', 'dirs': []}, 'custom-02': {'name': 'pi-02', 'dirs': []}}}))
    (tmp_path / 'dnsmasq.log').write_text(
        '%s dnsmasq-dhcp[7]: 11 vendor class: PXEClient:Arch:00000:UNDI:002001\n' % stamp(now - 100)
        + '%s dnsmasq-dhcp[7]: 11 PXE(eth0) dc:a6:32:00:00:01 proxy\n' % stamp(now - 100)
        + '%s dnsmasq-dhcp[7]: 12 PXE(eth0) dc:a6:32:00:00:03 proxy\n' % stamp(now - 500))
    (tmp_path / 'events.jsonl').write_text(
        hook(now - 99, '10.9.0.51', '1234abcd/start4.elf', 'probe')
        + hook(now - 98, '10.9.0.51', '1234abcd/kernel8.img')
        + hook(now - 3000, '10.9.0.52', 'custom-02/config.txt')
        + hook(now - 2999, '10.9.0.52', 'custom-02/kernel8.img')
        + hook(now - 10, '10.9.0.77', 'deadbeef/start4.elf', 'unknown_prefix'))
    return {'now': now, 'args': {
        'pis': [{'name': 'pi-01', 'serial': '1234abcd', 'mac': 'dc:a6:32:00:00:01', 'ip': '10.9.0.51'},
                {'name': 'pi-02', 'serial': '1234abce'},
                {'name': 'pi-03', 'serial': '1234abcf', 'mac': 'DC-A6-32-00-00-03'}],
        'roots_dir': str(roots), 'disks_dir': str(disks), 'store': str(store), 'map_path': str(tmp_path / 'map.json'),
        'events_path': str(tmp_path / 'events.jsonl'), 'dhcp_log_path': str(tmp_path / 'dnsmasq.log'),
        'watch_state': str(tmp_path / 'none.json')}}


def test_module_reports_each_pi(run_module, bakery):
    result = run_module(pi_status.main, dict(bakery['args'], ssh=False, nfs_server='none'), check_mode=True).result
    assert result['changed'] is False
    pis = {pi['name']: pi for pi in result['pis']}
    assert [pi['name'] for pi in result['pis']] == ['pi-01', 'pi-02', 'pi-03']
    one = pis['pi-01']
    assert (one['label'], one['current_generation'], one['behind'], one['host_keys']) == ('lite@1', 2, True, 1)
    assert one['root'] == {'marker': True, 'image': True, 'usage': None} and one['disks'] == {'usage': None}
    assert one['boot']['stage'] == 'tftp' and one['boot']['dhcp']['answers'] == 1 and one['up'] == 'unchecked'
    assert one['boot']['seconds']['dhcp_to_tftp'] == pytest.approx(1, abs=1.01)
    # A marker without a generation counts as the generation its image came from.
    assert (pis['pi-02']['label'], pis['pi-02']['behind']) == ('lite@2', False)
    assert pis['pi-02']['boot']['state'] == 'stalled' and pis['pi-02']['boot']['stalled_at'] == 'nfs'
    assert 'the NFS server in use does not say whether it mounted its root' in pis['pi-02']['boot']['hint']
    assert pis['pi-03']['boot']['stalled_at'] == 'dhcp' and pis['pi-03']['root']['marker'] is False
    assert result['strays'] == {'dhcp_answers': 0, 'tftp_requests': 1}
    assert result['sources']['nfs'].startswith('not observed') and result['sources']['ssh'] == 'not asked'
    assert result['data_filesystems'][0]['path'] == bakery['args']['store']
    # Each bakeform of the store: its generations, the current one, the Pis whose roots use each.
    # Generations made before bakeform recorded what their root can do say so (their Pis are not checked).
    unknown = 'not recorded'
    listed = [
        {'id': 1, 'label': 'lite@1', 'current': False, 'pinned': False,
         'used_by': [{'serial': '1234abcd', 'hostname': None, 'root': 'current'}], 'netboot': unknown},
        {'id': 2, 'label': 'lite@2', 'current': True, 'pinned': False,
         'used_by': [{'serial': '1234abce', 'hostname': None, 'root': 'current'}], 'netboot': unknown}]
    assert result['bakeforms'] == [{'name': 'lite', 'layout': 'generations', 'current': 2, 'current_label': 'lite@2',
                                    'generations': listed}]


def test_behind_is_any_generation_but_the_current_one(run_module, bakery, tmp_path):
    """After the bakeform's current went back to an older generation, a root on the newer one is behind too (as
    pi_root says); a generation directory that is incomplete is no generation; a format-2 bakeform is listed."""
    store, roots = tmp_path / 'bakeforms', tmp_path / 'roots'
    index = json.loads((store / 'lite' / 'bakeform.json').read_text())
    (store / 'lite' / 'bakeform.json').write_text(json.dumps(dict(index, current=1, pinned=[2])))
    (store / 'lite' / 'generations' / '3' / 'boot').mkdir(parents=True)  # no images: a build that never finished
    (roots / '1234abce.json').write_text(json.dumps({'hostname': 'pi-02', 'bakeform': 'lite', 'generation': 2}))
    (roots / '1234abce.prev.json').write_text(json.dumps({'hostname': 'pi-02', 'bakeform': 'lite', 'generation': 1}))
    (store / 'old').mkdir()
    (store / 'old' / 'manifest.json').write_text('{"format": 2}')
    (store / '.pifleet-tmp-lite-1-x').mkdir()  # a run's scratch directory: no bakeform
    (store / 'scratch').mkdir()  # nor is a directory of anything else
    (roots / '1234abcf.json').write_text(json.dumps({'hostname': 'pi-03', 'bakeform': 'gone', 'generation': 4}))
    result = run_module(pi_status.main, dict(bakery['args'], ssh=False, nfs_server='none')).result
    pis = {pi['name']: pi for pi in result['pis']}
    assert (pis['pi-01']['label'], pis['pi-01']['behind']) == ('lite@1', False)
    assert (pis['pi-02']['label'], pis['pi-02']['current_generation'], pis['pi-02']['behind']) == ('lite@2', 1, True)
    gone, lite, old = result['bakeforms']
    assert (gone['name'], gone['layout'], gone['current'], gone['generations']) == ('gone', 'none', None, [])
    assert (pis['pi-03']['label'], pis['pi-03']['behind']) == ('gone@4', False)
    assert [(g['label'], g['current'], g['pinned']) for g in lite['generations']] == [
        ('lite@1', True, False), ('lite@2', False, True)]
    assert lite['generations'][0]['used_by'] == [{'serial': '1234abcd', 'hostname': None, 'root': 'current'},
                                                 {'serial': '1234abce', 'hostname': 'pi-02', 'root': 'previous'}]
    assert (old['name'], old['layout'], old['current'], old['generations']) == ('old', 'format2', None, [])


@pytest.mark.parametrize('args, message', [
    ({'pis': [{'name': 'a', 'serial': 'xyz'}]}, "pis[0] (a): serial 'xyz' is not a Pi serial"),
    ({'pis': [{'name': 'a', 'ip': '10.0.0.300'}]}, "pis[0] (a): ip '10.0.0.300' is not an IP address"),
    ({'pis': [{'name': 'a'}, {'name': 'a'}]}, 'the name(s) a appear more than once'),
    ({'pis': [], 'limits': {'nfs': 0}}, 'every value is a number of seconds above 0'),
    ({'pis': [], 'limits': {'kernel': 5}}, 'unknown key(s) kernel'),
])
def test_module_refuses_bad_arguments(run_module, args, message):
    outcome = run_module(pi_status.main, args)
    assert outcome.failed and message in outcome.result['msg']


def test_a_roots_dir_that_cannot_be_read_fails_with_its_path(run_module, bakery, tmp_path):
    """A path that is there and cannot be read (here a symlink loop; on a bakery an I/O error or a stale NFS
    handle) is a clear failure naming it, not a traceback, so status shows that bakery's line."""
    (tmp_path / 'loop').symlink_to(tmp_path / 'loop')
    args = dict(bakery['args'], roots_dir=str(tmp_path / 'loop'), ssh=False, nfs_server='none')
    outcome = run_module(pi_status.main, args)
    assert outcome.failed and outcome.result['msg'] == (
        'pi_status could not read %s/1234abcd.json on this bakery: Too many levels of symbolic links; check that the '
        'file systems of roots_dir, disks_dir and store are mounted and readable' % (tmp_path / 'loop'))


class Host:
    """Answers for busctl and ssh-keyscan as they answer on a bakery; records what was run."""

    def __init__(self, exports, clients, keyscan):
        self.replies = {'ShowExports': exports, 'ShowClients': clients, 'ssh-keyscan': keyscan}
        self.ran = []

    def which(self, name, required=False):
        return '/usr/bin/' + name

    def run(self, argv):
        self.ran.append(argv)
        key = argv[0] if argv[0] == 'ssh-keyscan' else argv[-1]
        return 0, self.replies[key], ''


def ganesha(rows, kind):
    return json.dumps({'type': kind, 'data': [[1, 0], rows]})


def test_nfs_and_ssh_make_the_stages(bakery, tmp_path):
    now = bakery['now']
    exports = ganesha([[3, bakery['args']['roots_dir'] + '/1234abcd', [['NFSv3', True]], [int(now - 60), 0]],
                       [4, bakery['args']['roots_dir'] + '/1234abce', [['NFSv3', False]], [0, 0]]], 'a(qs...)')
    clients = ganesha([['::ffff:10.9.0.52', [['NFSv3', False], ['MNT', True]], [int(now - 2990), 0]]], 'a(s...)')
    host = Host(exports, clients, '10.9.0.51 %s\n10.9.0.52 %s\n' % (ED, OTHER))
    (tmp_path / 'watch.json').write_text(json.dumps({'version': 1, 'pis': {'pi-01': [
        {'start': int(now - 100), 'nfs': now - 80, 'running': now - 70}]}}))
    params = dict(bakery['args'], ssh=True, ssh_timeout=3, nfs_server='ganesha', max_bytes=1 << 20, limits={},
                  watch_state=str(tmp_path / 'watch.json'))
    params['pis'][1]['ip'] = '10.9.0.52'
    result = FleetStatus(host, params).gather()
    pis = {pi['name']: pi for pi in result['pis']}
    assert pis['pi-01']['up'] == 'yes' and pis['pi-01']['boot']['state'] == 'running'
    assert pis['pi-01']['boot']['seconds']['to_running'] == pytest.approx(30, abs=1.01)
    assert pis['pi-02']['up'] == 'unverified'  # its marker records no keys
    assert pis['pi-02']['boot']['stage'] == 'running'
    assert pis['pi-03']['up'] == 'unchecked'  # no address to ask
    keyscan = [argv for argv in host.ran if argv[0] == 'ssh-keyscan']
    assert len(keyscan) == 1 and keyscan[0][-2:] == ['10.9.0.51', '10.9.0.52']  # one call for every Pi
    host.replies['ssh-keyscan'] = '10.9.0.52 %s\n' % OTHER
    params['pis'][1]['serial'] = '1234abcd'  # pi-02 now claims pi-01's root, whose keys differ from what answers
    result = FleetStatus(host, dict(params, pis=params['pis'][1:2])).gather()
    assert result['pis'][0]['up'] == 'wrong key'
