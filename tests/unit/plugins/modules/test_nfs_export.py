# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nfs_export's main(): merging, exclusive lists, check and diff mode, reload and restore, on temp files.

exportfs and the Ganesha signal are replaced here; the real ones run in tests/integration/test_nfs_export.py.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest
from ansible.module_utils import basic
from modrun import open_count  # tests/tools

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import exports as ex
from ansible_collections.pifleet.netboot.plugins.modules import nfs_export

pytestmark = pytest.mark.skipif(not ex.HAS_NETADDR, reason='netaddr is not installed')


@pytest.fixture
def warnings(monkeypatch):
    """The module's warnings (the test harness's exit_json does not collect them)."""
    seen = []
    monkeypatch.setattr(basic.AnsibleModule, 'warn', lambda self, msg: seen.append(msg))
    return seen


@pytest.fixture
def lab(tmp_path):
    for name in ('pi-a', 'pi-b', 'boot'):
        (tmp_path / name).mkdir()
    (tmp_path / 'exports.d').mkdir()
    return tmp_path


def kernel(lab, **extra):
    # The temp dirs here are not file systems of their own: the rule against that is tested on its own below.
    return dict({'exports_file': str(lab / 'exports.d' / 'pifleet.exports'), 'reload': False,
                 'allow_shared_filesystem': True, 'lock_file': str(lab / 'lock')}, **extra)


def lines(target):
    """The export lines of a managed file (no header, no file system notes)."""
    return [line for line in target.read_text().splitlines() if not line.startswith('#')]


def ganesha(lab, **extra):
    config = lab / 'ganesha.conf'
    if not config.exists():
        config.write_text('# mine\nEXPORT { Export_Id = 100; Path = /elsewhere; }\n')
    return dict({'backend': 'ganesha', 'exports_file': str(lab / 'pifleet.conf'), 'ganesha_config': str(config),
                 'ganesha_pidfile': str(lab / 'ganesha.pid'), 'allow_shared_filesystem': True,
                 'lock_file': str(lab / 'lock')}, **extra)


def test_single_export_check_then_real_then_unchanged(run_module, lab):
    args = kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50'])
    target = lab / 'exports.d' / 'pifleet.exports'
    checked = run_module(nfs_export.main, args, check_mode=True, diff=True).result
    assert checked['changed'] is True and not target.exists()
    line = '%s 10.99.20.50(rw,sync,no_subtree_check,no_root_squash)' % (lab / 'pi-a')
    note = ex.FS_NOTE + ex.fs_identity(str(lab / 'pi-a'))
    assert checked['diff'] == [{'before': '', 'after': ex.HEADER + '\n' + note + '\n' + line + '\n',
                                'before_header': str(target), 'after_header': str(target)}]
    real = run_module(nfs_export.main, args, diff=True).result
    assert real['changed'] is True and real['reloaded'] is False and real['diff'] == checked['diff']
    assert target.read_text() == checked['diff'][0]['after']
    assert real['exports'] == [{'path': str(lab / 'pi-a'), 'clients': ['10.99.20.50'],
                                'options': ['rw', 'sync', 'no_subtree_check', 'no_root_squash'],
                                'fs': ex.fs_identity(str(lab / 'pi-a'))}]
    again = run_module(nfs_export.main, args, diff=True).result
    assert again['changed'] is False and again['diff'] == [] and again['results'][0]['changed'] is False


def test_calls_merge_by_path_and_exclusive_replaces(run_module, lab):
    target = lab / 'exports.d' / 'pifleet.exports'
    run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50']))
    run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-b'), clients=['10.99.20.51']))
    assert [line.split()[0] for line in lines(target)] == [str(lab / 'pi-a'), str(lab / 'pi-b')]
    # Same path again: its entry is replaced, not duplicated.
    run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-b'), clients=['10.99.20.52'], options=['ro']))
    assert lines(target)[1] == '%s 10.99.20.52(ro)' % (lab / 'pi-b')
    result = run_module(nfs_export.main, kernel(lab, exclusive=True, options=['ro', 'sync'], exports=[
        {'path': str(lab / 'boot'), 'clients': ['10.99.20.50', '10.99.20.51']},
        {'path': str(lab / 'pi-a'), 'clients': ['10.99.20.50'], 'options': ['rw', 'sync']},
    ])).result
    assert result['changed'] is True
    assert lines(target) == [
        '%s 10.99.20.50(ro,sync) 10.99.20.51(ro,sync)' % (lab / 'boot'), '%s 10.99.20.50(rw,sync)' % (lab / 'pi-a')]
    removed = run_module(nfs_export.main, kernel(lab, path=str(lab / 'gone'), state='absent')).result
    assert removed['changed'] is False
    removed = run_module(nfs_export.main, kernel(lab, path=str(lab / 'boot'), state='absent')).result
    assert removed['changed'] is True and [e['path'] for e in removed['exports']] == [str(lab / 'pi-a')]


def test_absent_on_a_fresh_host_creates_nothing(run_module, lab):
    result = run_module(nfs_export.main, kernel(lab, path='/srv/none', state='absent')).result
    assert result['changed'] is False and os.listdir(lab / 'exports.d') == []


INVALID = [
    ({'path': 'PI', 'clients': ['*']}, 'exports to the world'),
    ({'path': 'PI', 'clients': ['10.99.20.50 (rw)']}, 'a space before "(" exports to the whole world'),
    ({'path': 'PI', 'clients': ['0.0.0.0/0']}, 'set allow_world: true'),
    ({'path': 'PI', 'clients': ['10.99.20.50'], 'options': ['rw', 'bogus']}, 'option bogus of export'),
    ({'path': 'PI'}, 'clients missing for export'),
    ({'path': '/nonexistent/pi', 'clients': ['10.99.20.50']}, 'is not a directory'),
    ({'exports': [{'path': 'PI', 'clients': ['h']}, {'path': 'PI', 'state': 'absent'}]}, 'more than once'),
    ({'clients': ['h']}, 'one of the following is required: path, exports'),
]


@pytest.mark.parametrize(('extra', 'message'), INVALID)
def test_invalid_arguments_fail_and_write_nothing(run_module, lab, extra, message):
    extra = {k: (str(lab / 'pi-a') if v == 'PI' else v) for k, v in extra.items()}
    if 'exports' in extra:
        extra['exports'] = [dict(i, path=str(lab / 'pi-a')) for i in extra['exports']]
    result = run_module(nfs_export.main, kernel(lab, **extra))
    assert result.failed and message in result.result['msg']
    assert os.listdir(lab / 'exports.d') == []


def test_a_bad_entry_keeps_its_export_and_the_others_are_written(run_module, lab):
    """Fail per Pi: Pi A's entry is wrong this time (its directory went, as a root whose mount failed); it keeps
    the export it had, even with exclusive, while Pi B's changes and Pi C's new export are written; the task then
    fails naming Pi A by its serial. Pi D, kept (state keep), stays as it was too."""
    target = lab / 'exports.d' / 'pifleet.exports'
    for name in ('pi-c', 'pi-d'):
        (lab / name).mkdir()
    first = [{'path': str(lab / n), 'clients': [ip]} for n, ip in (('pi-a', '10.99.20.50'), ('pi-b', '10.99.20.51'),
                                                                   ('pi-d', '10.99.20.53'))]
    run_module(nfs_export.main, kernel(lab, exclusive=True, exports=first))
    had = {line.split()[0]: line for line in lines(target)}
    (lab / 'pi-a').rmdir()
    result = run_module(nfs_export.main, kernel(lab, exclusive=True, exports=[
        {'path': str(lab / 'pi-a'), 'clients': ['10.99.20.0/24'], 'serial': '0000000a', 'hostname': 'pi-a'},
        {'path': str(lab / 'pi-b'), 'clients': ['10.99.20.52'], 'serial': '0000000b'},
        {'path': str(lab / 'pi-c'), 'clients': ['10.99.20.54'], 'serial': '0000000c'},
        {'path': str(lab / 'pi-d'), 'state': 'keep', 'serial': '0000000d'},
    ]))
    assert result.failed and result.result['changed'] is True, result.result
    assert result.result['msg'] == ('nfs_export failed for 1 Pi(s): pi-a: path %s of an export is not a directory '
                                    'on this host; create it first (a Pi root or boot directory) or correct the '
                                    'path' % (lab / 'pi-a'))
    assert result.result['failed_pis'] == [{'serial': '0000000a', 'hostname': 'pi-a', 'path': str(lab / 'pi-a'),
                                            'msg': result.result['failed_exports'][0]['msg']}]
    now = {line.split()[0]: line for line in lines(target)}
    assert now[str(lab / 'pi-a')] == had[str(lab / 'pi-a')]  # kept as it was: not removed, not widened
    assert now[str(lab / 'pi-d')] == had[str(lab / 'pi-d')]
    assert now[str(lab / 'pi-b')].startswith('%s 10.99.20.52(' % (lab / 'pi-b'))
    assert now[str(lab / 'pi-c')].startswith('%s 10.99.20.54(' % (lab / 'pi-c'))
    assert [(r['path'], r.get('failed', False)) for r in result.result['results']] == [
        (str(lab / n), n == 'pi-a') for n in ('pi-a', 'pi-b', 'pi-c', 'pi-d')]
    # A Pi without an export keeps none: keep never adds one.
    again = run_module(nfs_export.main, kernel(lab, exclusive=True, exports=[
        {'path': str(lab / 'pi-b'), 'clients': ['10.99.20.52']}, {'path': str(lab / 'pi-e'), 'state': 'keep'}]))
    assert not again.failed and [line.split()[0] for line in lines(target)] == [str(lab / 'pi-b')]


def test_nfs_export_reads_and_writes_under_the_lock(run_module, lab):
    """It read the file before it took the lock: another run's change between the two was lost."""
    (lab / 'run').mkdir()
    (lab / 'run').chmod(0o755)  # a lock directory others may enter: refused before the file is even read
    result = run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50'],
                                                lock_file=str(lab / 'run' / 'pifleet.lock')))
    assert result.failed and "the bakery lock's directory" in result.result['msg']
    assert os.listdir(lab / 'exports.d') == []
    checked = run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50'],
                                                 lock_file=str(lab / 'run' / 'pifleet.lock')), check_mode=True)
    assert not checked.failed and checked.result['changed'] is True  # check mode takes no lock


def test_a_change_made_while_it_waits_for_the_lock_is_kept(run_module, lab):
    """Another run writes pi-b's export while this one waits for the lock: this one must read the file after it
    holds the lock and keep that export (read before the lock, it would write the file back without it)."""
    target = lab / 'exports.d' / 'pifleet.exports'
    other = lab / 'other.exports'  # what the other run writes, made by the module itself beforehand
    run_module(nfs_export.main, kernel(lab, exports_file=str(other), path=str(lab / 'pi-b'), clients=['10.99.20.51']))
    lock = os.open(str(lab / 'lock'), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # flock: another open of the file waits, in this process too
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(run_module(
        nfs_export.main, kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50']))))
    try:
        waiter.start()
        deadline = time.monotonic() + 30
        while open_count(os.getpid(), os.path.realpath(lab / 'lock')) < 2:  # the test's own and the module's
            assert time.monotonic() < deadline, 'the module never opened the lock file'
            time.sleep(0.02)
        time.sleep(0.3)  # it holds the lock file open and is polling the lock
        assert waiter.is_alive()
        target.write_text(other.read_text())  # the other run's write, while this one waits
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
        waiter.join(30)
    assert not outcome[0].failed, outcome[0].result
    assert {line.split()[0] for line in lines(target)} == {str(lab / 'pi-a'), str(lab / 'pi-b')}


def test_allow_world_lets_star_through(run_module, lab):
    result = run_module(nfs_export.main, kernel(lab, path=str(lab / 'boot'), clients=['*'], options=['ro'],
                                                allow_world=True)).result
    assert result['exports'][0]['clients'] == ['*']


def test_rw_to_a_network_warns(run_module, lab, warnings):
    run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.0/24']))
    assert any('read-write to 10.99.20.0/24: every host there can write' in w for w in warnings)
    warnings.clear()
    run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.0/24'], options=['ro']))
    assert warnings == []


def test_manual_lines_are_dropped_with_a_warning(run_module, lab, warnings):
    target = lab / 'exports.d' / 'pifleet.exports'
    target.write_text('/manual host (rw)\n')
    result = run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50'])).result
    assert result['changed'] is True and '/manual' not in target.read_text()
    assert any('/manual host (rw)' in w for w in warnings)


@pytest.fixture
def fake_exportfs(monkeypatch):
    calls = []

    def run(argv, timeout, **kwargs):
        assert timeout == 600  # command_timeout's default: exportfs never hangs the bakery
        calls.append(list(argv))
        return calls_rc.pop(0) if calls_rc else (0, '', '')

    calls_rc = []
    monkeypatch.setattr(nfs_export._command, 'run', run)
    monkeypatch.setattr(basic.AnsibleModule, 'get_bin_path', lambda self, name, **kw: '/usr/sbin/' + name)
    return calls, calls_rc


def test_kernel_reload_runs_exportfs_only_on_change(run_module, lab, fake_exportfs):
    calls, _unused = fake_exportfs
    args = kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50'], reload=True)
    assert run_module(nfs_export.main, args).result['reloaded'] is True
    assert calls == [['/usr/sbin/exportfs', '-ra']]
    assert run_module(nfs_export.main, args).result['reloaded'] is False
    assert len(calls) == 1


def test_exportfs_failure_restores_the_previous_file(run_module, lab, fake_exportfs):
    calls, rcs = fake_exportfs
    target = lab / 'exports.d' / 'pifleet.exports'
    run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50']))
    before = target.read_text()
    rcs.append((1, '', 'exportfs: bad things'))
    result = run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-b'), clients=['10.99.20.51'], reload=True))
    assert result.failed and 'exportfs -ra failed for %s: exportfs: bad things' % target in result.result['msg']
    assert target.read_text() == before
    assert calls == [['/usr/sbin/exportfs', '-ra']] * 2  # the second one re-applies the restored file


def test_ganesha_writes_include_once_and_keeps_ids(run_module, lab, monkeypatch, warnings):
    config = lab / 'ganesha.conf'
    args = ganesha(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50'])
    original = config.read_text()
    result = run_module(nfs_export.main, args, diff=True).result
    assert result['changed'] is True and result['reloaded'] is False  # no live ganesha.nfsd
    assert any('NFS-Ganesha is not running' in w for w in warnings)
    assert config.read_text() == original + '%%include "%s"\n' % (lab / 'pifleet.conf')
    assert [d['after_header'] for d in result['diff']] == [str(lab / 'pifleet.conf'), str(config)]
    assert result['exports'][0]['export_id'] == 101  # 100 is the user's own in ganesha.conf
    hups = []
    monkeypatch.setattr(ex, 'ganesha_pid', lambda pidfile: 4242)
    monkeypatch.setattr(os, 'kill', lambda pid, sig: hups.append((pid, sig)))
    result = run_module(nfs_export.main, ganesha(lab, path=str(lab / 'boot'), clients=['10.99.20.51'],
                                                 options=['ro'])).result
    assert result['reloaded'] is True and hups == [(4242, 1)]
    assert {e['path']: e['export_id'] for e in result['exports']} == {str(lab / 'pi-a'): 101, str(lab / 'boot'): 102}
    assert config.read_text().count('%include') == 1
    again = run_module(nfs_export.main, ganesha(lab, path=str(lab / 'boot'), clients=['10.99.20.51'],
                                                options=['ro'])).result
    assert again['changed'] is False and hups == [(4242, 1)]


def test_ganesha_check_mode_writes_nothing(run_module, lab):
    config = lab / 'ganesha.conf'
    args = ganesha(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50'])
    original = config.read_text()
    result = run_module(nfs_export.main, args, check_mode=True, diff=True).result
    assert result['changed'] is True and len(result['diff']) == 2
    assert config.read_text() == original and not (lab / 'pifleet.conf').exists()


def test_ganesha_refuses_what_it_cannot_express(run_module, lab):
    result = run_module(nfs_export.main, ganesha(lab, path=str(lab / 'pi-a'), clients=['h'], options=['rw', 'async']))
    assert result.failed and 'cannot be expressed for NFS-Ganesha' in result.result['msg']


def test_ganesha_missing_config_fails(run_module, lab):
    args = ganesha(lab, path=str(lab / 'pi-a'), clients=['h'], ganesha_config=str(lab / 'none.conf'))
    result = run_module(nfs_export.main, args)
    assert result.failed and 'NFS-Ganesha config %s not found' % (lab / 'none.conf') in result.result['msg']


def test_kernel_file_outside_exports_d_naming_warns(run_module, lab, warnings):
    args = kernel(lab, path=str(lab / 'pi-a'), clients=['h'], exports_file=str(lab / 'exports.d' / 'pifleet.conf'))
    assert run_module(nfs_export.main, args).result['changed'] is True
    assert any('exportfs reads only *.exports files' in w for w in warnings)


def test_relative_exports_file_fails(run_module, lab):
    result = run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-a'), clients=['h'], exports_file='x.exports'))
    assert result.failed and 'is not an absolute path' in result.result['msg']


def test_a_directory_inside_a_larger_file_system_is_refused(run_module, lab):
    """Without allow_shared_filesystem only the top of a file system may be exported (forged handles)."""
    args = kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50'], allow_shared_filesystem=False)
    result = run_module(nfs_export.main, args)
    assert result.failed and 'is a directory inside the file system of' in result.result['msg']
    assert 'forge NFS file handles' in result.result['msg'] and os.listdir(lab / 'exports.d') == []
    for option in ('crossmnt', 'nohide'):
        result = run_module(nfs_export.main, kernel(lab, path=str(lab / 'pi-a'), clients=['h'],
                                                    options=['rw', option], allow_shared_filesystem=False))
        assert result.failed and 'extends the export into the file systems mounted below it' in result.result['msg']


def test_a_changed_file_system_is_unexported_first(run_module, lab, fake_exportfs, monkeypatch):
    """A path whose file system changed (a rebuilt root) is dropped from the kernel server before -ra."""
    calls, _unused = fake_exportfs
    args = kernel(lab, path=str(lab / 'pi-a'), clients=['10.99.20.50'], reload=True)
    run_module(nfs_export.main, args)
    monkeypatch.setattr(ex, 'fs_identity', lambda path: 'feed:2')
    result = run_module(nfs_export.main, args).result
    assert result['changed'] is True and result['bounced'] == [str(lab / 'pi-a')]
    assert calls[-2:] == [['/usr/sbin/exportfs', '-u', '10.99.20.50:%s' % (lab / 'pi-a')],
                          ['/usr/sbin/exportfs', '-ra']]
    again = run_module(nfs_export.main, args).result
    assert again['changed'] is False and again['bounced'] == []


def test_each_own_file_system_export_is_served_only_while_mounted(run_module, lab, monkeypatch, warnings):
    """mp on every export that must be a file system of its own; Ganesha's withheld while nothing is mounted."""
    mounts = {'/': '/', str(lab / 'pi-a'): '/', str(lab / 'pi-b'): '/'}
    monkeypatch.setattr(nfs_export._loopfs, 'mount_roots', lambda: dict(mounts))
    both = [{'path': str(lab / 'pi-a'), 'clients': ['10.99.20.50']}, {'path': str(lab / 'pi-b'), 'clients': ['h']}]
    base = ganesha(lab, exports=both, allow_shared_filesystem=False)
    first = run_module(nfs_export.main, base).result
    assert [e['options'] for e in first['exports']] == [['rw', 'sync', 'no_subtree_check', 'no_root_squash', 'mp']] * 2
    assert first['withheld'] == [] and '#| ' not in (lab / 'pifleet.conf').read_text().split('\n', 3)[3]
    kernel_file = run_module(nfs_export.main, kernel(lab, exports=both, allow_shared_filesystem=False)).result
    assert lines(lab / 'exports.d' / 'pifleet.exports')[0].endswith('(rw,sync,no_subtree_check,no_root_squash,mp)')
    assert kernel_file['withheld'] == []

    del mounts[str(lab / 'pi-a')]  # A's root is no longer mounted (a failed mount unit, a swap that died)
    only_b = dict(base, exports=both[1:])
    withheld = run_module(nfs_export.main, only_b).result
    assert withheld['changed'] is True and withheld['withheld'] == [str(lab / 'pi-a')]
    text = (lab / 'pifleet.conf').read_text()
    assert '#|     Path = "%s";' % (lab / 'pi-a') in text and '\n    Path = "%s";' % (lab / 'pi-b') in text
    assert any('1 export(s) withheld' in w and str(lab / 'pi-a') in w for w in warnings)
    assert [e['path'] for e in withheld['exports']] == [str(lab / 'pi-a'), str(lab / 'pi-b')]  # still wanted
    refused = run_module(nfs_export.main, base)  # asked for by name while unmounted: refused as ever
    assert refused.failed and 'is a directory inside the file system of' in refused.result['msg']

    mounts[str(lab / 'pi-a')] = '/'
    served = run_module(nfs_export.main, base).result
    assert served['changed'] is True and served['withheld'] == []
    assert (lab / 'pifleet.conf').read_text().count('#| ') == 0
    assert run_module(nfs_export.main, base).result['changed'] is False
