# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_disk's main(): argument errors, duplicates, check mode, diff and the list form (fstype none).

ext4 disks, grow with resize2fs and the 20-disk fleet run are in tests/integration/test_pi_disk.py.
"""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.pifleet.netboot.plugins.modules import pi_disk

MIB = 1024 * 1024
SERIAL = '3a4b5c6d'


def tree(top):
    """Every path below ``top`` with its size: what "nothing written" compares."""
    found = {}
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(base, name)
            found[os.path.relpath(path, top)] = os.lstat(path).st_size if name in files else 'dir'
    return found


@pytest.fixture
def disks_dir(tmp_path):
    path = tmp_path / 'disks'
    path.mkdir()
    return path


def args(disks_dir, **extra):
    return dict({'disks_dir': str(disks_dir)}, **extra)


INVALID = [
    ({'name': 'data', 'size': '1G'}, 'serial missing for the disk'),
    ({'serial': SERIAL, 'size': '1G'}, 'name missing for the disk'),
    ({'serial': 'pi-one', 'name': 'data', 'size': '1G'}, 'invalid serial for the disk: serial \'pi-one\''),
    ({'serial': SERIAL, 'name': '../etc', 'size': '1G'}, 'invalid name for the disk: disk name \'../etc\''),
    ({'serial': SERIAL, 'name': 'data'}, 'size missing for disk data of Pi 3a4b5c6d'),
    ({'serial': SERIAL, 'name': 'data', 'size': '12Q'}, 'invalid size for disk data of Pi 3a4b5c6d: size \'12Q\''),
    ({'serial': SERIAL, 'name': 'data', 'size': '4M', 'fstype': 'ext4'}, 'too small for ext4'),
    ({'serial': SERIAL, 'name': 'data', 'size': '1G', 'fstype': 'xfs'}, 'value of fstype must be one of'),
    ({'disks': [{'serial': SERIAL, 'name': 'a', 'size': '1M'}, {'name': 'b', 'size': '1M'}]},
     'serial missing for disks[1]'),
    ({'disks': [{'serial': SERIAL, 'name': 'a', 'size': '1M', 'colour': 'red'}]}, 'colour'),
    ({'size': '1M', 'disks': [{'serial': SERIAL, 'name': 'a'}, {'serial': 'ffff0000', 'name': 'a'},
                              {'serial': '100000003A4B5C6D', 'name': 'a'}]},
     'duplicate disks in disks: 3a4b5c6d/a each given more than once'),
]


@pytest.mark.parametrize(('extra', 'message'), INVALID)
def test_invalid_arguments_fail_clearly_and_write_nothing(run_module, disks_dir, extra, message):
    result = run_module(pi_disk.main, args(disks_dir, **extra))
    assert result.failed
    assert message in result.result['msg']
    assert tree(disks_dir) == {}


def test_check_mode_plans_writes_nothing_then_real_run_matches(run_module, disks_dir):
    task = args(disks_dir, serial=SERIAL, name='data', size='1.5G')
    planned = run_module(pi_disk.main, task, check_mode=True, diff=True)
    assert not planned.failed and planned.result['changed'] is True
    assert tree(disks_dir) == {}
    [disk] = planned.result['disks']
    assert disk == {'serial': SERIAL, 'name': 'data', 'path': str(disks_dir / SERIAL / 'data' / 'disk.img'),
                    'changed': True, 'action': 'created', 'apparent_size': 1536 * MIB, 'allocated_size': 0,
                    'fstype': 'none'}
    [diff] = planned.result['diff']
    assert diff['before'] == '' and diff['before_header'] == str(disks_dir / SERIAL / 'disks.json')

    done = run_module(pi_disk.main, task, diff=True)
    assert done.result['changed'] is True and done.result['diff'] == planned.result['diff']
    assert (disks_dir / SERIAL / 'disks.json').read_text() == diff['after']
    image = disks_dir / SERIAL / 'data' / 'disk.img'
    assert image.stat().st_size == 1536 * MIB and image.stat().st_blocks == 0
    assert done.result['disks'][0]['allocated_size'] == 0

    for check_mode in (True, False):
        again = run_module(pi_disk.main, task, check_mode=check_mode, diff=True)
        assert again.result['changed'] is False and again.result['diff'] == []
        assert again.result['disks'][0]['action'] == 'unchanged'


def test_list_form_groups_by_serial_and_top_level_defaults(run_module, disks_dir):
    task = args(disks_dir, size='2M', disks=[
        {'serial': 'aaaa0001', 'name': 'b'}, {'serial': 'aaaa0002', 'name': 'a', 'size': 3 * MIB},
        {'serial': '10000000aaaa0001', 'name': 'a'}])
    result = run_module(pi_disk.main, task)
    assert not result.failed, result.result
    assert [(d['serial'], d['name'], d['apparent_size']) for d in result.result['disks']] == [
        ('aaaa0001', 'b', 2 * MIB), ('aaaa0002', 'a', 3 * MIB), ('aaaa0001', 'a', 2 * MIB)]
    index = json.loads((disks_dir / 'aaaa0001' / 'disks.json').read_text())
    assert index['serial'] == 'aaaa0001' and [d['name'] for d in index['disks']] == ['a', 'b']
    assert index['disks'][0] == {'name': 'a', 'file': str(disks_dir / 'aaaa0001' / 'a' / 'disk.img'),
                                 'size': 2 * MIB, 'fstype': 'none', 'nfs_path': str(disks_dir / 'aaaa0001' / 'a')}


def test_refused_item_changes_nothing_at_all(run_module, disks_dir):
    run_module(pi_disk.main, args(disks_dir, serial=SERIAL, name='data', size='8M'))
    before = tree(disks_dir)
    result = run_module(pi_disk.main, args(disks_dir, disks=[
        {'serial': 'bbbb0001', 'name': 'new', 'size': '1M'},
        {'serial': SERIAL, 'name': 'data', 'size': '4M'}]))
    assert result.failed and 'shrinking disk data of Pi 3a4b5c6d refused' in result.result['msg']
    assert tree(disks_dir) == before


def test_absent_needs_force_for_data_and_cleans_up(run_module, disks_dir):
    task = args(disks_dir, serial=SERIAL, name='data', size='1M')
    run_module(pi_disk.main, task)
    run_module(pi_disk.main, dict(task, name='empty'))
    image = disks_dir / SERIAL / 'data' / 'disk.img'
    with open(image, 'r+b') as handle:
        handle.write(b'data')
    refused = run_module(pi_disk.main, dict(task, state='absent'))
    assert refused.failed and 'holds data' in refused.result['msg'] and image.exists()

    empty = run_module(pi_disk.main, dict(task, name='empty', state='absent'), diff=True)
    assert empty.result['changed'] is True and empty.result['disks'][0]['action'] == 'removed'
    assert sorted(os.listdir(disks_dir / SERIAL)) == ['data', 'disks.json']
    assert [d['name'] for d in json.loads(empty.result['diff'][0]['after'])['disks']] == ['data']

    forced = run_module(pi_disk.main, dict(task, state='absent', force=True), check_mode=True, diff=True)
    assert forced.result['changed'] is True and image.exists()
    assert forced.result['diff'][0]['after'] == ''
    forced = run_module(pi_disk.main, dict(task, state='absent', force=True))
    assert forced.result['changed'] is True and os.listdir(disks_dir) == []
    again = run_module(pi_disk.main, dict(task, state='absent'))
    assert again.result['changed'] is False and again.result['disks'][0]['action'] == 'unchanged'


def test_symlinked_disk_directory_is_refused(run_module, disks_dir, tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    (disks_dir / SERIAL).symlink_to(outside)
    result = run_module(pi_disk.main, args(disks_dir, serial=SERIAL, name='data', size='1M'))
    assert result.failed and 'is a symbolic link' in result.result['msg']
    assert os.listdir(outside) == []


def test_lost_index_is_rebuilt_from_the_disks(run_module, disks_dir):
    task = args(disks_dir, serial=SERIAL, name='data', size='1M')
    run_module(pi_disk.main, task)
    index = disks_dir / SERIAL / 'disks.json'
    text = index.read_text()
    index.write_text('{broken')
    result = run_module(pi_disk.main, task)
    assert result.result['changed'] is True and result.result['disks'][0]['action'] == 'unchanged'
    assert index.read_text() == text
