# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_boot's main() on a fake bakeform store in tmp: folders, map, idempotence, check/diff, exclusive, scale."""

from __future__ import annotations

import json
import os
import time

import pytest

from ansible_collections.pifleet.netboot.plugins.modules import pi_boot

BOOKWORM = ('console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes '
            'rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot splash plymouth.ignore-serial-consoles\n')
CONFIG = '# For more options see config.txt(5)\narm_64bit=1\n[pi4]\narm_boost=1\n'


def make_bakeform(store, name, models, cmdline=BOOKWORM, config=CONFIG):
    boot = store / name / 'boot'
    boot.mkdir(parents=True)
    if cmdline is not None:
        (boot / 'cmdline.txt').write_text(cmdline)
    if config is not None:
        (boot / 'config.txt').write_text(config)
    (boot / 'start4.elf').write_bytes(b'\x7fELF')
    (store / name / 'manifest.json').write_text(json.dumps({'name': name, 'models': models}))
    return boot


@pytest.fixture
def lab(tmp_path):
    store = tmp_path / 'bakeforms'
    make_bakeform(store, 'bw', ['3', '4', '5'])
    make_bakeform(store, 'old', [3, 4], cmdline=None, config=None)
    return tmp_path


def args(lab, pis, **extra):
    return dict({'store': str(lab / 'bakeforms'), 'boot_dir': str(lab / 'pis'),
                 'map_path': str(lab / 'tftp' / 'map.json'),
                 'lock_file': str(lab.parent / (lab.name + '.lock'))}, pis=pis, **extra)


def pi(number, **extra):
    return dict({'name': 'pi-%02d' % number, 'prefix': '%08x' % (0x1000 + number), 'bakeform': 'bw',
                 'nfsroot': '10.99.0.2:/srv/pifleet/roots/pi-%02d' % number}, **extra)


def snapshot(top):
    """Every file and directory below ``top`` with its content: the real state to compare."""
    state = {}
    for base, dirs, files in os.walk(top):
        for name in dirs:
            state[os.path.relpath(os.path.join(base, name), top) + '/'] = None
        for name in files:
            path = os.path.join(base, name)
            with open(path, 'rb') as handle:
                state[os.path.relpath(path, top)] = handle.read()
    return state


def read_map(lab):
    return json.loads((lab / 'tftp' / 'map.json').read_text())


def test_first_run_writes_then_nothing_to_do(run_module, lab):
    pis = [pi(1, model=4), pi(2, prefix='DC:A6:32:01:36:C2', model=5, cmdline_extra='net.ifnames=0',
                              config_txt=['dtoverlay=disable-wifi'])]
    first = run_module(pi_boot.main, args(lab, pis, default_bakeform='bw')).result
    assert first['changed'] is True and first['map'] == {'path': str(lab / 'tftp' / 'map.json'), 'changed': True,
                                                         'prefixes': 2}
    one, two = lab / 'pis' / '00001001', lab / 'pis' / 'dc-a6-32-01-36-c2'
    assert (one / 'cmdline.txt').read_text() == (
        'console=serial0,115200 console=tty1 quiet root=/dev/nfs nfsroot=10.99.0.2:/srv/pifleet/roots/pi-01,vers=3,'
        'noacl rw ip=dhcp rootwait network-config=disabled\n')
    assert not (one / 'config.txt').exists()  # the bakeform's is served
    assert (two / 'cmdline.txt').read_text().endswith('rw ip=dhcp rootwait network-config=disabled net.ifnames=0\n')
    assert (two / 'config.txt').read_text() == CONFIG + '\n# pifleet.netboot: pi-02\n[all]\ndtoverlay=disable-wifi\n'
    assert json.loads((two / '.pifleet-boot.json').read_text()) == {
        'name': 'pi-02', 'prefix': 'dc-a6-32-01-36-c2', 'bakeform': 'bw'}
    assert oct(one.stat().st_mode & 0o777) == '0o755' and oct((one / 'cmdline.txt').stat().st_mode & 0o777) == '0o644'
    boot = str(lab / 'bakeforms' / 'bw' / 'boot')
    assert read_map(lab) == {'version': 1, 'default': [boot], 'prefixes': {
        '00001001': {'name': 'pi-01', 'dirs': [str(one), boot]},
        'dc-a6-32-01-36-c2': {'name': 'pi-02', 'dirs': [str(two), boot]}}}
    assert [(p['name'], p['changed'], p['files']) for p in first['pis']] == [
        ('pi-01', True, ['.pifleet-boot.json', 'cmdline.txt']),
        ('pi-02', True, ['.pifleet-boot.json', 'cmdline.txt', 'config.txt'])]
    before = snapshot(lab)
    mtimes = {path: os.stat(lab / path).st_mtime_ns for path in before}
    again = run_module(pi_boot.main, args(lab, pis, default_bakeform='bw')).result
    assert again['changed'] is False and again['map']['changed'] is False and again['removed'] == []
    assert not any(p['changed'] for p in again['pis'])
    assert snapshot(lab) == before
    assert {path: os.stat(lab / path).st_mtime_ns for path in before} == mtimes  # nothing rewritten


def test_check_mode_writes_nothing_and_predicts_the_real_run(run_module, lab):
    (lab / 'pis' / 'stray').mkdir(parents=True)
    (lab / 'pis' / 'stray' / '.pifleet-boot.json').write_text('{"name": "gone"}')
    pis = [pi(1), pi(2, config_txt=['gpu_mem=16'])]
    before = snapshot(lab)
    checked = run_module(pi_boot.main, args(lab, pis), check_mode=True, diff=True).result
    assert snapshot(lab) == before
    real = run_module(pi_boot.main, args(lab, pis), diff=True).result
    for key in ('changed', 'pis', 'map', 'removed', 'diff'):
        assert checked[key] == real[key], key
    assert real['removed'] == [str(lab / 'pis' / 'stray')]
    diffs = {d['after_header']: d for d in real['diff']}
    map_diff = diffs[str(lab / 'tftp' / 'map.json')]
    assert map_diff['before'] == '' and map_diff['after'] == (lab / 'tftp' / 'map.json').read_text()
    config = str(lab / 'pis' / '00001002' / 'config.txt')
    assert diffs[config]['after'] == (lab / 'pis' / '00001002' / 'config.txt').read_text()
    assert diffs[str(lab / 'pis' / 'stray') + '/ (removed)']['before'] == '.pifleet-boot.json\n'
    assert len(real['diff']) == 1 + 2 + 3 + 1  # map, pi-01's two files, pi-02's three, the removal
    quiet = run_module(pi_boot.main, args(lab, pis), check_mode=True, diff=True).result
    assert quiet['changed'] is False and quiet['diff'] == []


def test_changes_are_rendered_again(run_module, lab):
    run_module(pi_boot.main, args(lab, [pi(1, config_txt=['a=1'])]))
    folder = lab / 'pis' / '00001001'
    # The Pi loses its extra lines: its config.txt goes, so the bakeform's is served again.
    dropped = run_module(pi_boot.main, args(lab, [pi(1)]), diff=True).result
    assert dropped['pis'][0]['files'] == ['config.txt'] and not (folder / 'config.txt').exists()
    assert dropped['map']['changed'] is False
    # The bakeform's cmdline.txt changes (a new image under the same name): the Pi's follows.
    (lab / 'bakeforms' / 'bw' / 'boot' / 'cmdline.txt').write_text('console=tty1 root=/dev/sda2 quiet\n')
    redone = run_module(pi_boot.main, args(lab, [pi(1)])).result
    assert redone['pis'][0]['files'] == ['cmdline.txt']
    assert (folder / 'cmdline.txt').read_text().startswith('console=tty1 quiet root=/dev/nfs ')
    # Another bakeform: marker, cmdline and map change; no cmdline.txt there, so the default consoles.
    moved = run_module(pi_boot.main, args(lab, [pi(1, bakeform='old')])).result
    assert moved['pis'][0]['files'] == ['.pifleet-boot.json', 'cmdline.txt'] and moved['map']['changed'] is True
    assert (folder / 'cmdline.txt').read_text().startswith('console=serial0,115200 console=tty1 root=/dev/nfs ')
    assert read_map(lab)['prefixes']['00001001']['dirs'][1] == str(lab / 'bakeforms' / 'old' / 'boot')


def test_exclusive_removes_only_marked_folders(run_module, lab):
    run_module(pi_boot.main, args(lab, [pi(1), pi(2), pi(3)]))
    mine = lab / 'pis' / 'handmade'
    mine.mkdir()
    (mine / 'start4.elf').write_text('keep me')
    (lab / 'pis' / 'README').write_text('a file, not a folder')
    result = run_module(pi_boot.main, args(lab, [pi(2), pi(3, state='absent')])).result
    assert result['removed'] == [str(lab / 'pis' / '00001001'), str(lab / 'pis' / '00001003')]
    assert sorted(os.listdir(lab / 'pis')) == ['00001002', 'README', 'handmade']
    assert (mine / 'start4.elf').read_text() == 'keep me'
    assert list(read_map(lab)['prefixes']) == ['00001002']
    assert [(p['name'], p['state'], p['changed']) for p in result['pis']] == [
        ('pi-02', 'present', False), ('pi-03', 'absent', True)]


def test_not_exclusive_keeps_others_and_moves_a_renumbered_pi(run_module, lab):
    run_module(pi_boot.main, args(lab, [pi(1), pi(2)], default_bakeform='bw'))
    result = run_module(pi_boot.main, args(lab, [pi(2, prefix='lab-pi-02'), pi(4)], exclusive=False)).result
    assert result['removed'] == [str(lab / 'pis' / '00001002')]
    assert sorted(os.listdir(lab / 'pis')) == ['00001001', '00001004', 'lab-pi-02']
    fleet = read_map(lab)
    assert sorted(fleet['prefixes']) == ['00001001', '00001004', 'lab-pi-02']
    assert fleet['default'] == [str(lab / 'bakeforms' / 'bw' / 'boot')]  # kept: no default_bakeform given
    gone = run_module(pi_boot.main, args(lab, [{'name': 'pi-01', 'prefix': '00001001', 'state': 'absent'}],
                                         exclusive=False)).result
    assert gone['changed'] is True and sorted(read_map(lab)['prefixes']) == ['00001004', 'lab-pi-02']


def failure(run_module, lab, pis, **extra):
    """A call refused as a whole: it fails, without failed_pis, and changes nothing."""
    before = snapshot(lab)
    outcome = run_module(pi_boot.main, args(lab, pis, **extra))
    assert outcome.failed, outcome.result
    assert snapshot(lab) == before  # a refused run changes nothing
    assert outcome.result.get('failed_pis', []) == []
    return outcome.result['msg']


def fails_alone(run_module, lab, bad):
    """pi-01 is served, then asks for ``bad``: it fails alone, keeping its folder and map entry as they were
    (exclusive as the fleet role calls it), while pi-02 (new) is written. Returns the failure's message."""
    run_module(pi_boot.main, args(lab, [pi(1, config_txt=['a=1'])], default_bakeform='bw'))
    folder = snapshot(lab / 'pis' / '00001001')
    entry = read_map(lab)['prefixes']['00001001']
    outcome = run_module(pi_boot.main, args(lab, [dict(pi(1), **bad), pi(2)], default_bakeform='bw'))
    result = outcome.result
    assert outcome.failed and result['changed'] is True, result
    assert snapshot(lab / 'pis' / '00001001') == folder and read_map(lab)['prefixes']['00001001'] == entry
    assert (lab / 'pis' / '00001002' / 'cmdline.txt').exists() and '00001002' in read_map(lab)['prefixes']
    assert [(p['name'], p['state']) for p in result['pis']] == [('pi-01', 'failed'), ('pi-02', 'present')]
    assert result['failed_pis'] == [{'serial': '00001001', 'hostname': 'pi-01', 'name': 'pi-01', 'prefix': '00001001',
                                     'msg': result['pis'][0]['msg']}]
    assert result['msg'] == 'pi_boot failed for 1 Pi(s): pi-01: %s' % result['pis'][0]['msg']
    again = run_module(pi_boot.main, args(lab, [dict(pi(1), **bad), pi(2)], default_bakeform='bw'))
    assert again.failed and again.result['changed'] is False  # the others converged: nothing more to do
    return result['pis'][0]['msg']


def test_model_mismatch_fails_that_pi_alone(run_module, lab):
    msg = fails_alone(run_module, lab, {'bakeform': 'old', 'model': 5})
    assert msg == ('pi-01 is a Pi 5 but bakeform old has boot files for Pi 3, 4 only; pick a bakeform with '
                   'kernel_2712.img')


def test_model_from_boot_files_without_manifest(run_module, lab):
    (lab / 'bakeforms' / 'old' / 'manifest.json').unlink()  # only start4.elf in its boot files
    msg = fails_alone(run_module, lab, {'bakeform': 'old', 'model': 3})
    assert 'has boot files for Pi 4 only; pick a bakeform with start.elf' in msg


def test_duplicates_fail(run_module, lab):
    msg = failure(run_module, lab, [pi(1), pi(2, prefix='00001001'), pi(3, prefix='AABBCCDD'),
                                    pi(4, prefix='aabbccdd'), pi(5, name='pi-01')])
    assert 'the prefix 00001001, aabbccdd more than once' in msg and 'the name pi-01 more than once' in msg


@pytest.mark.parametrize(('change', 'expected'), [
    ({'bakeform': 'nosuch'}, 'boot files not found: bakeform nosuch has no '),
    ({'bakeform': '../bw'}, "boot files not found: bakeform name '../bw' is not valid"),
    ({'nfsroot': '10.99.0.2:/r,proto=tcp'}, 'rejects proto='),
    ({'nfsroot': '10.99.0.2:/r,vers=4'}, 'NFS 2 and 3 only'),
    ({'config_txt': ['a=1\n[pi3]']}, 'line break'),
    ({'nfsroot': None}, 'nfsroot'),
])
def test_a_bad_item_fails_that_pi_alone(run_module, lab, change, expected):
    assert expected in fails_alone(run_module, lab, change)


@pytest.mark.parametrize(('change', 'expected'), [({'prefix': '../x'}, 'TFTP prefix'), ({'name': 'bad name'}, 'name')])
def test_an_item_that_cannot_be_named_fails_the_call(run_module, lab, change, expected):
    assert expected in failure(run_module, lab, [pi(1, **change), pi(2)])


def test_missing_default_bakeform_fails(run_module, lab):
    assert 'bakeform nosuch' in failure(run_module, lab, [pi(1)], default_bakeform='nosuch')


def test_a_folder_not_ours_is_refused(run_module, lab):
    (lab / 'pis' / '00001001').mkdir(parents=True)
    (lab / 'pis' / '00001001' / 'cmdline.txt').write_text('hand made\n')
    outcome = run_module(pi_boot.main, args(lab, [pi(1), pi(2)]))
    assert outcome.failed and outcome.result['failed_pis'][0]['msg'].startswith(
        'boot folder %s for pi-01 exists but pi_boot did not make it' % (lab / 'pis' / '00001001'))
    assert (lab / 'pis' / '00001001' / 'cmdline.txt').read_text() == 'hand made\n'
    assert list(read_map(lab)['prefixes']) == ['00001002']


def test_keep_leaves_a_pi_as_it_was_even_when_exclusive(run_module, lab):
    """What the fleet role passes for a Pi that failed an earlier step (its root, its disks)."""
    run_module(pi_boot.main, args(lab, [pi(1, config_txt=['a=1']), pi(2)], default_bakeform='bw'))
    before = snapshot(lab / 'pis' / '00001001')
    entry = read_map(lab)['prefixes']['00001001']
    result = run_module(pi_boot.main, args(lab, [{'name': 'pi-01', 'prefix': '00001001', 'state': 'keep'},
                                                 {'name': 'pi-03', 'prefix': '00001003', 'state': 'keep'}],
                                           default_bakeform='bw')).result
    assert result['changed'] is True and result['removed'] == [str(lab / 'pis' / '00001002')]  # pi-02 left
    assert snapshot(lab / 'pis' / '00001001') == before and read_map(lab)['prefixes'] == {'00001001': entry}
    assert [(p['name'], p['state'], p['changed']) for p in result['pis']] == [('pi-01', 'keep', False),
                                                                              ('pi-03', 'keep', False)]
    assert result['failed_pis'] == []


def test_pi_boot_holds_the_bakery_lock(run_module, lab):
    (lab / 'run').mkdir(mode=0o755)
    (lab / 'run').chmod(0o755)  # a lock directory others may enter: refused, nothing written
    outcome = run_module(pi_boot.main, args(lab, [pi(1)], lock_file=str(lab / 'run' / 'pifleet.lock')))
    assert outcome.failed and "the bakery lock's directory %s is owned by" % (lab / 'run') in outcome.result['msg']
    assert not (lab / 'pis').exists()


def test_readable_by_the_hook_whatever_the_umask(run_module, lab):
    old = os.umask(0o077)
    try:
        run_module(pi_boot.main, args(lab, [pi(1, config_txt=['a=1'])]))
    finally:
        os.umask(old)
    modes = {path: os.stat(lab / path).st_mode & 0o777 for path in snapshot(lab) if not path.startswith('bakeforms')}
    assert modes == {'pis/': 0o755, 'pis/00001001/': 0o755, 'pis/00001001/cmdline.txt': 0o644,
                     'pis/00001001/config.txt': 0o644, 'pis/00001001/.pifleet-boot.json': 0o644,
                     'tftp/': 0o755, 'tftp/map.json': 0o644}


def test_unreadable_state_fails_cleanly(run_module, lab):
    (lab / 'pis' / '00001001' / 'cmdline.txt').mkdir(parents=True)  # a directory where a file should be
    (lab / 'pis' / '00001001' / '.pifleet-boot.json').write_text('{"name": "pi-01"}')
    msg = failure(run_module, lab, [pi(1)])
    assert msg.startswith('reading the current boot files failed for %s: ' % (lab / 'pis' / '00001001' / 'cmdline.txt'))


def test_leftovers_of_a_killed_run_are_swept(run_module, lab):
    leftover = lab / 'pis' / '.pifleet-tmp-pi-boot-99999-abcdef'
    (leftover / '00001001').mkdir(parents=True)
    (leftover / '00001001' / 'cmdline.txt').write_text('half')
    run_module(pi_boot.main, args(lab, [pi(1)]))
    assert sorted(os.listdir(lab / 'pis')) == ['00001001']


def test_diff_is_capped(run_module, lab):
    result = run_module(pi_boot.main, args(lab, [pi(n) for n in range(40)]), check_mode=True, diff=True).result
    assert len(result['diff']) == 51 and result['diff'][-1]['after_header'] == 'and %d more files' % (1 + 80 - 50)
    assert not (lab / 'pis').exists() and not (lab / 'tftp').exists()


def test_a_thousand_pis(run_module, lab, capsys):
    pis = [pi(n, model=(3, 4, 5)[n % 3], config_txt=['dtparam=act_led_trigger=heartbeat'] if n % 10 == 0 else None)
           for n in range(1000)]
    times = []
    for run in range(3):
        start = time.perf_counter()
        result = run_module(pi_boot.main, args(lab, pis, default_bakeform='bw')).result
        times.append(time.perf_counter() - start)
        assert result['changed'] is (run == 0)
    assert len(os.listdir(lab / 'pis')) == 1000 and len(read_map(lab)['prefixes']) == 1000
    assert sum(1 for p in (lab / 'pis').glob('*/config.txt')) == 100
    with capsys.disabled():
        print('\npi_boot with 1000 Pis in main(): first run %.2f s, re-runs %.2f s, %.2f s' % tuple(times))
