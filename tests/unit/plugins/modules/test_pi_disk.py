# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_disk's main(): argument errors, duplicates, check mode and diff, a Pi failing alone, the old layout
and the lock; nothing here needs a loop device.

Containers made, mounted, grown and attacked for real are in tests/integration/test_pi_disk.py.
"""

from __future__ import annotations

import fcntl
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
    path.mkdir(mode=0o700)
    return path


def args(disks_dir, **extra):
    return dict({'disks_dir': str(disks_dir), 'units_dir': str(disks_dir.parent / 'units'),
                 'lock_file': str(disks_dir.parent / 'lock'), 'allow_root_filesystem': True}, **extra)


INVALID = [
    ({'name': 'data', 'size': '1G'}, 'serial missing for the disk'),
    ({'serial': SERIAL, 'size': '1G'}, 'name missing for the disk'),
    ({'serial': 'pi-one', 'name': 'data', 'size': '1G'}, 'invalid serial for the disk: serial \'pi-one\''),
    ({'serial': SERIAL, 'name': '../etc', 'size': '1G'}, 'invalid name for the disk: disk name \'../etc\''),
    ({'serial': SERIAL, 'name': 'lost+found', 'size': '1G'}, 'invalid name for the disk'),
    ({'serial': SERIAL, 'name': 'data'}, 'size missing for disk data of Pi 3a4b5c6d'),
    ({'serial': SERIAL, 'name': 'data', 'size': '12Q'}, 'invalid size for disk data of Pi 3a4b5c6d: size \'12Q\''),
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
    assert tree(disks_dir.parent) == {'disks': 'dir'}


def test_check_mode_plans_containers_and_index_and_writes_nothing(run_module, disks_dir):
    task = args(disks_dir, size='2M', disks=[
        {'serial': 'aaaa0001', 'name': 'b', 'size': '1.5G', 'fstype': 'ext4'}, {'serial': 'aaaa0002', 'name': 'a'},
        {'serial': '10000000aaaa0001', 'name': 'a'}])
    planned = run_module(pi_disk.main, task, check_mode=True, diff=True)
    assert not planned.failed and planned.result['changed'] is True, planned.result
    assert tree(disks_dir.parent) == {'disks': 'dir'}
    disks = planned.result['disks']
    assert [(d['serial'], d['name'], d['action'], d['apparent_size'], d['fstype']) for d in disks] == [
        ('aaaa0001', 'b', 'created', 1536 * MIB, 'ext4'), ('aaaa0002', 'a', 'created', 2 * MIB, 'none'),
        ('aaaa0001', 'a', 'created', 2 * MIB, 'none')]
    assert disks[0]['path'] == str(disks_dir / 'mnt' / 'aaaa0001' / 'b' / 'disk.img')
    pis = planned.result['pis']
    assert [(p['serial'], p['action'], p['path'], p['image']) for p in pis] == [
        ('aaaa0001', 'created', str(disks_dir / 'mnt/aaaa0001'), str(disks_dir / 'aaaa0001.img')),
        ('aaaa0002', 'created', str(disks_dir / 'mnt/aaaa0002'), str(disks_dir / 'aaaa0002.img'))]
    assert pis[0]['capacity'] >= 1540 * MIB and pis[0]['capacity'] % (128 * MIB) == 0
    first = planned.result['diff'][0]
    assert first['before'] == '' and first['before_header'] == str(disks_dir / 'aaaa0001.json')
    index = json.loads(first['after'])
    assert index['serial'] == 'aaaa0001' and [d['name'] for d in index['disks']] == ['a', 'b']
    assert index['disks'][0] == {'name': 'a', 'file': str(disks_dir / 'mnt/aaaa0001' / 'a' / 'disk.img'),
                                 'size': 2 * MIB, 'fstype': 'none', 'nfs_path': str(disks_dir / 'mnt/aaaa0001')}


def test_a_pi_that_cannot_converge_fails_alone(run_module, disks_dir, tmp_path):
    (disks_dir / (SERIAL + '.img')).mkdir()
    result = run_module(pi_disk.main, args(disks_dir, size='1M', disks=[
        {'serial': SERIAL, 'name': 'data'}, {'serial': 'bbbb0001', 'name': 'data'}]), check_mode=True)
    assert result.failed, result.result
    assert result.result['msg'].startswith('pi_disk failed for 1 Pi(s): 3a4b5c6d: the disks of Pi 3a4b5c6d: ')
    assert 'is not a regular file' in result.result['msg']
    assert [(d['serial'], d['action']) for d in result.result['disks']] == [(SERIAL, 'failed'), ('bbbb0001', 'created')]
    assert 'msg' in result.result['disks'][0] and result.result['changed'] is True


def test_a_link_at_the_old_mount_point_is_not_followed(run_module, disks_dir, tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    (disks_dir / SERIAL).symlink_to(outside)  # where earlier releases mounted a Pi's disks
    planned = run_module(pi_disk.main, args(disks_dir, size='1M', serial=SERIAL, name='data'), check_mode=True)
    assert not planned.failed and planned.result['pis'][0]['action'] == 'created', planned.result
    assert planned.result['disks'][0]['path'] == str(disks_dir / 'mnt' / SERIAL / 'data/disk.img')
    assert os.path.islink(disks_dir / SERIAL) and os.listdir(outside) == []


def legacy(disks_dir, serial=SERIAL):
    """An older pifleet's layout: a plain directory holding <name>/disk.img and disks.json."""
    top = disks_dir / serial
    (top / 'data').mkdir(parents=True)
    with open(top / 'data' / 'disk.img', 'wb') as handle:
        handle.truncate(4 * MIB)
        handle.seek(MIB)
        handle.write(b'the Pi\'s data')
    (top / 'disks.json').write_text(json.dumps({'serial': serial, 'disks': [
        {'name': 'data', 'file': str(top / 'data' / 'disk.img'), 'size': 4 * MIB, 'fstype': 'none',
         'nfs_path': str(top / 'data')}]}))
    return top


@pytest.mark.parametrize('check_mode', [True, False])
def test_old_layout_is_refused_with_the_way_out(run_module, disks_dir, check_mode):
    top = legacy(disks_dir)
    before = tree(disks_dir)
    result = run_module(pi_disk.main, args(disks_dir, serial=SERIAL, name='data', size='4M'), check_mode=check_mode)
    assert result.failed
    msg = result.result['msg']
    assert 'are in the old layout: %s is a plain directory' % top in msg and 'forged NFS handles' in msg
    assert 'shut the Pi down, then run pi_disk with migrate: true' in msg
    assert tree(disks_dir) == before


def test_old_layout_with_foreign_files_is_not_migrated(run_module, disks_dir):
    top = legacy(disks_dir)
    (top / 'data' / 'notes.txt').write_text('the Pi wrote this beside its disk')
    result = run_module(pi_disk.main, args(disks_dir, serial=SERIAL, name='data', size='4M', migrate=True),
                        check_mode=True)
    assert result.failed and 'holds what pi_disk did not make (data)' in result.result['msg']


def test_migration_is_planned_in_check_mode(run_module, disks_dir):
    legacy(disks_dir)
    before = tree(disks_dir)
    result = run_module(pi_disk.main, args(disks_dir, serial=SERIAL, name='data', size='8M', migrate=True),
                        check_mode=True, diff=True)
    assert not result.failed, result.result
    assert result.result['pis'][0]['action'] == 'migrated'
    assert [(d['action'], d['apparent_size']) for d in result.result['disks']] == [('grown', 8 * MIB)]
    [diff] = result.result['diff']
    assert diff['before'] == '' and json.loads(diff['after'])['disks'][0]['size'] == 8 * MIB
    assert tree(disks_dir) == before


def test_the_bakery_lock_is_held_for_changes_and_not_for_check_mode(run_module, disks_dir):
    task = args(disks_dir, serial=SERIAL, name='data', size='1M', lock_timeout=0)
    with open(disks_dir.parent / 'lock', 'w') as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write('pid 4242, pi_root\n')
        held.flush()
        waiting = run_module(pi_disk.main, task)
        assert waiting.failed and 'another pifleet run (pid 4242, pi_root) has held the bakery lock' in \
            waiting.result['msg']
        assert tree(disks_dir) == {}
        checked = run_module(pi_disk.main, task, check_mode=True)
        assert not checked.failed and checked.result['changed'] is True


def test_new_disks_must_fit_the_data_file_system_in_the_worst_case(run_module, disks_dir):
    task = args(disks_dir, disks=[{'serial': SERIAL, 'name': 'data', 'size': '1G'},
                                  {'serial': 'bbbb0001', 'name': 'data', 'size': '1M'}])
    vfs = os.statvfs(disks_dir)
    # An overcommit that leaves room for about 600 MiB more than is in use: the small disks fit, the 1G ones not.
    ratio = ((vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize + 600 * MIB) / (
        ((vfs.f_blocks - vfs.f_bfree) + vfs.f_bavail) * vfs.f_frsize * 0.99)
    result = run_module(pi_disk.main, dict(task, overcommit=ratio), check_mode=True)
    assert result.failed and [(p['serial'], p['action']) for p in result.result['pis']] == [
        (SERIAL, 'failed'), ('bbbb0001', 'created')], result.result
    msg = result.result['pis'][0]['msg']
    assert msg.startswith('not enough space on ') and 'for the disks of Pi 3a4b5c6d (1.12 GiB at most)' in msg, msg
    assert 'pifleet_overcommit' in msg and tree(disks_dir) == {}
    fine = run_module(pi_disk.main, task, check_mode=True)  # overcommit 1.0 on a file system with room
    assert not fine.failed or vfs.f_bavail * vfs.f_frsize < 2 * 1024 * MIB, fine.result
