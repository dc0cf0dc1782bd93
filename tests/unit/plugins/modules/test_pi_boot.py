# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_boot's main() on a fake bakeform store in tmp (generations of store format 3, laid out by genstore):
folders, map, generations, idempotence, check/diff, exclusive, a Pi that fails alone, scale."""

from __future__ import annotations

import json
import os
import time

import pytest
from genstore import add_generation

from ansible_collections.pifleet.netboot.plugins.modules import pi_boot

BOOKWORM = ('console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes '
            'rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot splash plymouth.ignore-serial-consoles\n')
CONFIG = '# For more options see config.txt(5)\narm_64bit=1\n[pi4]\narm_boost=1\n'


def make_bakeform(store, name, models, cmdline=BOOKWORM, config=CONFIG, *, current=True):
    """The next generation of ``name`` (boot files only; its images are empty files): the path of its boot/."""
    src = store.parent / ('src-%s' % name)
    boot = src / 'boot'
    boot.mkdir(parents=True)
    if cmdline is not None:
        (boot / 'cmdline.txt').write_text(cmdline)
    if config is not None:
        (boot / 'config.txt').write_text(config)
    (boot / 'start4.elf').write_bytes(b'\x7fELF')
    (src / 'manifest.json').write_text(json.dumps({'name': name, 'models': models}))
    (src / 'root.img').write_bytes(b'')
    (src / 'boot.img').write_bytes(b'')
    number = add_generation(store, name, src, current=current)
    src.rmdir()
    return store / name / 'generations' / str(number) / 'boot'


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
        'name': 'pi-02', 'prefix': 'dc-a6-32-01-36-c2', 'bakeform': 'bw', 'generation': 'bw@1'}
    assert oct(one.stat().st_mode & 0o777) == '0o755' and oct((one / 'cmdline.txt').stat().st_mode & 0o777) == '0o644'
    boot = str(lab / 'bakeforms' / 'bw' / 'generations' / '1' / 'boot')
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
    # A new generation with another cmdline.txt: the Pi is served it once its root is built from it.
    make_bakeform(lab / 'bakeforms', 'bw', ['4'], cmdline='console=tty1 root=/dev/sda2 quiet\n')
    kept = run_module(pi_boot.main, args(lab, [pi(1, generation=1)])).result
    assert kept['changed'] is False and kept['pis'][0]['generation'] == 'bw@1'
    redone = run_module(pi_boot.main, args(lab, [pi(1, generation=2)])).result
    assert redone['pis'][0]['files'] == ['.pifleet-boot.json', 'cmdline.txt'] and redone['map']['changed'] is True
    assert (folder / 'cmdline.txt').read_text().startswith('console=tty1 quiet root=/dev/nfs ')
    assert read_map(lab)['prefixes']['00001001']['dirs'][1] == str(lab / 'bakeforms/bw/generations/2/boot')
    assert run_module(pi_boot.main, args(lab, [pi(1)])).result['changed'] is False  # the current one is 2
    # Another bakeform: marker, cmdline and map change; no cmdline.txt there, so the default consoles.
    moved = run_module(pi_boot.main, args(lab, [pi(1, bakeform='old')])).result
    assert moved['pis'][0]['files'] == ['.pifleet-boot.json', 'cmdline.txt'] and moved['map']['changed'] is True
    assert (folder / 'cmdline.txt').read_text().startswith('console=serial0,115200 console=tty1 root=/dev/nfs ')
    assert read_map(lab)['prefixes']['00001001']['dirs'][1] == str(lab / 'bakeforms/old/generations/1/boot')


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
    assert fleet['default'] == [str(lab / 'bakeforms/bw/generations/1/boot')]  # kept: no default_bakeform given
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


def fails_some(run_module, lab, pis, failing, **extra):
    """A run where the Pis named ``failing`` fail alone: the others are served; returns the result."""
    outcome = run_module(pi_boot.main, args(lab, pis, **extra))
    assert outcome.failed, outcome.result
    assert [pi['hostname'] for pi in outcome.result['failed_pis']] == failing
    assert outcome.result['msg'] == 'pi_boot failed for %d Pi(s): %s' % (len(failing), '; '.join(
        '%s: %s' % (pi['hostname'], pi['msg']) for pi in outcome.result['failed_pis']))
    served = [p['name'] for p in outcome.result['pis'] if not p.get('failed') and p['state'] == 'present']
    assert sorted(read_map(lab)['prefixes'][p['prefix']]['name'] for p in outcome.result['pis']
                  if p['name'] in served) == sorted(served)
    return outcome.result


def test_model_mismatch_fails_that_pi_alone(run_module, lab):
    result = fails_some(run_module, lab, [pi(1, model=4), pi(7, bakeform='old', model=5)], ['pi-07'])
    msg = 'pi-07 is a Pi 5 but bakeform old@1 has boot files for Pi 3, 4 only; pick a bakeform with kernel_2712.img'
    assert result['failed_pis'][0] == {'serial': '00001007', 'hostname': 'pi-07', 'name': 'pi-07',
                                       'prefix': '00001007', 'msg': msg}
    assert not (lab / 'pis' / '00001007').exists() and (lab / 'pis' / '00001001' / 'cmdline.txt').exists()


def test_model_from_boot_files_without_manifest(run_module, lab):
    manifest = lab / 'bakeforms/old/generations/1/manifest.json'
    manifest.write_text('{"name": "old"}')  # no models: only start4.elf in its boot files tells
    result = fails_some(run_module, lab, [pi(7, bakeform='old', model=3)], ['pi-07'])
    assert 'has boot files for Pi 4 only; pick a bakeform with start.elf' in result['msg']


def test_a_missing_generation_fails_that_pi_alone_and_keeps_what_it_boots(run_module, lab):
    run_module(pi_boot.main, args(lab, [pi(1), pi(2)]))
    before = {path: text for path, text in snapshot(lab).items() if path.startswith('pis/00001002')}
    entry = read_map(lab)['prefixes']['00001002']
    pis = [pi(1, cmdline_extra='quiet'), pi(2, generation=9, cmdline_extra='quiet'), pi(3)]
    result = fails_some(run_module, lab, pis, ['pi-02'])
    assert result['failed_pis'][0]['msg'] == (
        'boot files not found for pi-02: generation bw@9 is not in %s (there: 1); register the image with '
        'pifleet.netboot.bakeform, or name a generation that is there' % (lab / 'bakeforms/bw/generations'))
    assert read_map(lab)['prefixes']['00001002'] == entry  # it boots what it booted
    assert {path: text for path, text in snapshot(lab).items() if path.startswith('pis/00001002')} == before
    assert (lab / 'pis/00001001/cmdline.txt').read_text().endswith(' quiet\n') and (lab / 'pis/00001003').is_dir()
    assert [p['generation'] for p in result['pis']] == ['bw@1', None, 'bw@1']


def test_a_store_before_generations_is_named(run_module, lab):
    old = lab / 'bakeforms' / 'legacy'
    (old / 'boot').mkdir(parents=True)
    (old / 'manifest.json').write_text('{"name": "legacy"}')
    result = fails_some(run_module, lab, [pi(1, bakeform='legacy'), pi(2)], ['pi-01'])
    assert 'bakeform legacy has no bakeform.json' in result['msg'] and 'becomes generation 1' in result['msg']


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


def test_duplicates_fail(run_module, lab):
    msg = failure(run_module, lab, [pi(1), pi(2, prefix='00001001'), pi(3, prefix='AABBCCDD'),
                                    pi(4, prefix='aabbccdd'), pi(5, name='pi-01')])
    assert 'the prefix 00001001, aabbccdd more than once' in msg and 'the name pi-01 more than once' in msg


@pytest.mark.parametrize(('change', 'expected'), [
    ({'bakeform': 'nosuch'}, 'boot files not found for pi-01: bakeform nosuch has no '),
    ({'bakeform': '../bw'}, "boot files not found for pi-01: bakeform name '../bw' is not valid"),
])
def test_a_pi_without_boot_files_fails_alone(run_module, lab, change, expected):
    result = fails_some(run_module, lab, [pi(1, **change), pi(2)], ['pi-01'])
    assert expected in result['msg'] and list(read_map(lab)['prefixes']) == ['00001002']


@pytest.mark.parametrize(('change', 'expected'), [
    ({'generation': 0}, 'generation of pi-01 0 is not a generation number'),
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
