# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_disk as a real process, as root: each Pi's disks file system made, loop-mounted, grown and removed;
real ext4 disks; refusals; a fleet in one call; the old layout migrated; the lock; the fleet's prune step.
A Pi attacking from inside its file system is in test_pi_disk_attacks.py, its disks over NFS in
test_pi_disk_nfs.py.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from disklab import SERIAL, bakery, base, device, fs_bytes, mount_options, sha, state, superblock, tool
from fstree import mounts_below
from modrun import opened_elsewhere, run_module

from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import unit_name
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.diskfs import make_container
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.disks import container_size

MIB = 1024 * 1024
GIB = 1024 * MIB
HOSTNAME = Path('/etc/hostname').read_text()
# The kernel grows a mounted ext4 only for CAP_SYS_RESOURCE (bit 24), which containers like this one may lack.
ONLINE_GROWTH = bool(int(Path('/proc/self/status').read_text().split('CapEff:')[1].split()[0], 16) & (1 << 24))


@pytest.fixture
def lab(tmp_path):
    yield from bakery(tmp_path)


def unblank(text):
    """An index (or the diffs of one) without ``blank``, which only a real run knows (what a new disk took)."""
    if isinstance(text, list):
        return [dict(entry, after=unblank(entry['after'])) for entry in text]
    return re.sub(r'\n\s*"blank": \d+,', '', text)  # sorted keys: it comes first, before "file"


def assert_private_file_system(lab, serial, result):
    """A private sparse image beside its mount point, mounted without exec, suid or devices, and its unit."""
    point, container = lab['points'] / serial, lab['disks'] / (serial + '.img')
    assert lab['disks'].stat().st_mode & 0o777 == 0o700
    assert container.stat().st_mode & 0o777 == 0o600 and container.stat().st_size == result['capacity']
    assert result['allocated'] == container.stat().st_blocks * 512 < 4 * MIB
    assert {'nosuid', 'nodev', 'noexec', 'rw'} <= set(mount_options(point))
    unit = lab['units'] / unit_name(str(point))
    text = unit.read_text()
    assert 'What=%s\n' % container in text and 'Where=%s\n' % point in text
    assert 'Options=loop,nosuid,nodev,noexec\n' in text
    assert os.readlink(lab['units'] / 'local-fs.target.wants' / unit.name) == str(unit)
    assert superblock(container)['Filesystem volume name'] == 'disks-' + serial
    return container


def test_ext4_disk_in_its_own_file_system_created_grown_and_never_shrunk(lab):
    task = base(lab, serial='100000003A4B5C6D', name='data', size='64M', fstype='ext4')
    disks, point = lab['disks'], lab['points'] / SERIAL
    image = point / 'data' / 'disk.img'

    planned = run_module('pi_disk', task, check=True, diff=True)
    assert planned['changed'] is True and planned['disks'][0]['action'] == 'created', planned
    assert planned['pis'][0]['action'] == 'created' and not disks.exists()

    done = run_module('pi_disk', task, diff=True)
    assert done['changed'] is True and done['pis'][0]['action'] == 'created', done
    assert unblank(done['diff']) == planned['diff']  # the real run also knows what the blank disk took
    container = assert_private_file_system(lab, SERIAL, done['pis'][0])
    # The disk inside it.
    st = image.stat()
    assert st.st_size == 64 * MIB and st.st_mode & 0o777 == 0o600
    assert done['disks'][0]['apparent_size'] == st.st_size
    assert done['disks'][0]['allocated_size'] == st.st_blocks * 512 < 4 * MIB  # sparse: metadata only
    info = superblock(image)
    assert info['Filesystem volume name'] == 'data' and info['Filesystem state'] == 'clean'
    assert 'has_journal' in info['Filesystem features'] and fs_bytes(image) == 64 * MIB
    tool('e2fsck', '-n', '-f', str(image))
    index = disks / (SERIAL + '.json')  # out of the Pi's reach, unlike its export
    assert json.loads(index.read_text()) == {'serial': SERIAL, 'disks': [
        {'name': 'data', 'file': str(image), 'size': 64 * MIB, 'fstype': 'ext4', 'nfs_path': str(point),
         'blank': st.st_blocks * 512}]}
    assert index.stat().st_mode & 0o777 == 0o600 and sorted(os.listdir(point)) == ['data', 'lost+found']

    again = run_module('pi_disk', task)
    assert again['changed'] is False and again['disks'][0]['action'] == 'unchanged'
    assert again['pis'][0]['action'] == 'unchanged'

    tool('debugfs', '-w', '-R', 'write /etc/hostname hello', str(image))  # a file the Pi wrote
    before = state(lab)
    shrink = run_module('pi_disk', dict(task, size='32M'))
    assert shrink.get('failed') and 'disks never shrink' in shrink['msg'] and '64 MiB' in shrink['msg'], shrink
    assert state(lab) == before  # byte-identical

    grow = dict(task, size='1G')  # more than the file system holds: it grows too
    planned = run_module('pi_disk', grow, check=True)
    assert planned['changed'] is True and planned['disks'][0]['action'] == 'grown'
    assert planned['pis'][0]['action'] == 'grown' and planned['pis'][0]['capacity'] >= GIB
    assert state(lab) == before
    head = sha(image)
    grown = run_module('pi_disk', grow)
    assert grown['changed'] is True and grown['disks'][0]['action'] == 'grown', grown
    assert grown['pis'][0]['action'] == 'grown' and container.stat().st_size == planned['pis'][0]['capacity']
    assert fs_bytes(device(point)) == container.stat().st_size  # the Pi's disks file system: the bakery's own
    # The disk grew as a file, by a hole; its ext4 is the Pi's and was neither read nor changed.
    assert image.stat().st_size == GIB and fs_bytes(image) == 64 * MIB
    with open(image, 'rb') as handle:
        assert hashlib.sha256(handle.read(64 * MIB)).hexdigest() == head
    assert image.stat().st_blocks * 512 < 8 * MIB  # still sparse after the grow
    assert json.loads(index.read_text())['disks'][0]['size'] == GIB
    assert {'nosuid', 'nodev', 'noexec'} <= set(mount_options(point))
    # Its file system smaller than its file is no reason to do anything again (it was, on every run).
    assert run_module('pi_disk', grow)['changed'] is False
    tool('resize2fs', str(image))  # what the Pi does (README: growing a disk on the Pi)
    assert fs_bytes(image) == GIB and tool('debugfs', '-R', 'cat /hello', str(image)) == HOSTNAME
    assert run_module('pi_disk', grow)['changed'] is False


def test_fstype_none_is_a_hole_and_fstype_cannot_change(lab):
    task = base(lab, serial='c0ffee00', name='raw', size='0.25G')
    done = run_module('pi_disk', task)
    image = lab['points'] / 'c0ffee00' / 'raw' / 'disk.img'
    assert done['disks'][0]['apparent_size'] == image.stat().st_size == 256 * MIB
    assert done['disks'][0]['allocated_size'] == image.stat().st_blocks * 512 == 0
    with open(image, 'rb') as handle:
        assert handle.read(4096) == bytes(4096)  # blank: never formatted
    before = state(lab)
    changed = run_module('pi_disk', dict(task, fstype='ext4'))
    assert changed.get('failed') and 'never reformatted' in changed['msg'], changed
    assert state(lab) == before


@pytest.mark.parametrize('fstype', ['none', 'ext4'])
def test_absent_refuses_a_disk_with_data_unless_forced_and_the_last_takes_the_file_system(lab, fstype):
    task = base(lab, serial='dddd0001', name='keep', size='16M', fstype=fstype)
    assert run_module('pi_disk', task)['changed'] is True
    assert run_module('pi_disk', dict(task, name='spare'))['changed'] is True
    image = lab['points'] / 'dddd0001' / 'keep' / 'disk.img'
    if fstype == 'ext4':
        tool('debugfs', '-w', '-R', 'write /etc/hostname hello', str(image))
    else:
        with open(image, 'r+b') as handle:
            handle.seek(5 * MIB)
            handle.write(b'precious')

    before = state(lab)
    refused = run_module('pi_disk', dict(task, state='absent'))
    assert refused.get('failed') and 'may hold data' in refused['msg'] and 'force: true' in refused['msg'], refused
    assert state(lab) == before

    spare = run_module('pi_disk', dict(task, name='spare', state='absent'))  # fresh: no force needed
    assert spare['changed'] is True and spare['disks'][0]['action'] == 'removed', spare
    index = lab['disks'] / 'dddd0001.json'
    assert [d['name'] for d in json.loads(index.read_text())['disks']] == ['keep']
    assert sorted(os.listdir(lab['points'] / 'dddd0001')) == ['keep', 'lost+found']

    forced = run_module('pi_disk', dict(task, state='absent', force=True))
    assert forced['changed'] is True and forced['disks'][0]['action'] == 'removed', forced
    assert forced['pis'][0]['action'] == 'removed'
    assert os.listdir(lab['disks']) == [] and mounts_below(lab['top']) == []  # file system, index, mount point
    assert os.listdir(lab['units'] / 'local-fs.target.wants') == [] and len(os.listdir(lab['units'])) == 1
    assert run_module('pi_disk', dict(task, state='absent'))['changed'] is False


def test_a_file_system_the_pi_left_files_in_is_kept_unless_forced(lab):
    task = base(lab, serial='dddd0002', name='only', size='16M')
    run_module('pi_disk', task)
    (lab['points'] / 'dddd0002' / 'mine.txt').write_text('the Pi wrote this at the top of its export')
    (lab['points'] / 'dddd0002' / 'x\x1b]0;owned\x07\x1b[2J').write_text('a name that would drive the terminal')
    kept = run_module('pi_disk', dict(task, state='absent'))
    assert kept['changed'] is True and kept['pis'][0]['action'] == 'kept', kept
    shown = json.dumps(kept['warnings'])  # 2.19: WarningSummary objects; JSON doubles each backslash
    assert 'holds other files (mine.txt, x\\\\x1b]0;owned\\\\x07\\\\x1b[2J): kept' in shown, shown
    assert '\\u001b' not in shown  # no raw ESC (JSON writes it \u001b): the Pi's escape never drives a terminal
    assert not (lab['disks'] / 'dddd0002.json').exists() and (lab['points'] / 'dddd0002' / 'mine.txt').exists()
    again = run_module('pi_disk', dict(task, state='absent'))
    assert again['changed'] is False and again['pis'][0]['action'] == 'kept'
    gone = run_module('pi_disk', dict(task, state='absent', force=True))
    assert gone['pis'][0]['action'] == 'removed' and os.listdir(lab['disks']) == []


def test_the_file_system_holds_its_disks_written_in_full(lab):
    sizes = {'a': 64, 'b': 100, 'c': 37}
    task = base(lab, serial='f111f111', disks=[{'name': n, 'size': '%dM' % s} for n, s in sizes.items()])
    run_module('pi_disk', task)
    point = lab['points'] / 'f111f111'
    for name, size in sizes.items():  # what a Pi does over NFS: fill its disks to the last byte
        tool('dd', 'if=/dev/urandom', 'of=%s' % (point / name / 'disk.img'), 'bs=1M', 'count=%d' % size,
             'conv=notrunc,fsync', 'status=none')
    sizes['b'] = 300
    run_module('pi_disk', dict(task, disks=[{'name': n, 'size': '%dM' % s} for n, s in sizes.items()]))
    tool('dd', 'if=/dev/urandom', 'of=%s' % (point / 'b' / 'disk.img'), 'bs=1M', 'count=300', 'conv=notrunc,fsync',
         'status=none')
    for name, size in sizes.items():
        assert (point / name / 'disk.img').stat().st_blocks * 512 >= size * MIB


@pytest.mark.parametrize('sizes', [[16 * MIB], [GIB, GIB, 3 * MIB], [8 * GIB] * 4, [1024 * GIB]],
                         ids=['16M', '2G+3M', '4x8G', '1T'])
def test_container_size_covers_ext4_overhead_and_costs_little(tmp_path, sizes):
    """mke2fs on the sparse file: the free space holds the disks at full size; few blocks are allocated."""
    path = tmp_path / 'c.img'

    def run(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    capacity = container_size(sizes)
    make_container(run, lambda name, _required=False: name, str(path), capacity, 'measure')
    info = superblock(path)
    free, allocated = int(info['Free blocks']) * 4096, path.stat().st_blocks * 512
    assert free >= sum(sizes) + len(sizes) * MIB, info
    assert 'meta_bg' in info['Filesystem features'] and info['Reserved block count'] == '0'
    assert allocated < 1 * MIB + capacity // 50000, allocated
    print('container for %s: capacity %d, overhead %d (ext4 %d), allocated %d bytes' % (
        '+'.join(str(s) for s in sizes), capacity, capacity - sum(sizes), capacity - free, allocated))


def test_fleet_of_20_disks_for_5_pis_in_one_call(lab):
    serials = ['f1ee7%03x' % n for n in range(5)]
    disks = [{'serial': serial, 'name': name, 'size': size}
             for serial in serials for name, size in (('data', '64M'), ('logs', '16M'), ('swap', '128M'), ('raw', 3))]
    for item in disks:
        if item['name'] in ('data', 'logs'):
            item['fstype'] = 'ext4'
    task = base(lab, disks=disks)

    planned = run_module('pi_disk', task, check=True, diff=True)
    assert planned['changed'] is True and len(planned['diff']) == 5
    assert not lab['disks'].exists()

    started = time.monotonic()
    done = run_module('pi_disk', task, diff=True)
    first = time.monotonic() - started
    assert done['changed'] is True, done
    assert unblank(done['diff']) == planned['diff']
    assert [(d['serial'], d['name'], d['action']) for d in done['disks']] == [
        (d['serial'], d['name'], 'created') for d in disks]
    for result, item in zip(done['disks'], disks):
        st = os.stat(result['path'])
        assert result['apparent_size'] == st.st_size and result['allocated_size'] == st.st_blocks * 512
        assert st.st_blocks * 512 < st.st_size  # sparse
        if item.get('fstype') == 'ext4':
            assert superblock(result['path'])['Filesystem volume name'] == item['name']
    for serial in serials:
        index = json.loads((lab['disks'] / (serial + '.json')).read_text())
        assert [(d['name'], d['size'], d['fstype']) for d in index['disks']] == [
            ('data', 64 * MIB, 'ext4'), ('logs', 16 * MIB, 'ext4'), ('raw', MIB, 'none'), ('swap', 128 * MIB, 'none')]
    assert len({tool('findmnt', '-n', '-o', 'SOURCE', str(lab['points'] / s)) for s in serials}) == 5

    before = state(lab)
    started = time.monotonic()
    again = run_module('pi_disk', task, diff=True)
    second = time.monotonic() - started
    assert again['changed'] is False and again['diff'] == []
    assert {d['action'] for d in again['disks']} == {'unchanged'}
    assert state(lab) == before
    print('pi_disk: 20 disks (10 ext4) for 5 Pis in %.2f s, second run %.2f s' % (first, second))


def test_an_unmounted_file_system_is_looked_at_read_only_then_mounted(lab):
    task = base(lab, serial='0badcafe', name='data', size='16M', fstype='ext4')
    run_module('pi_disk', task)
    point = lab['points'] / '0badcafe'
    tool('umount', str(point))  # a bakery rebooted without its mount units
    planned = run_module('pi_disk', task, check=True)
    assert planned['changed'] is True and planned['pis'][0]['action'] == 'mounted', planned
    assert planned['disks'][0]['action'] == 'unchanged' and planned['disks'][0]['apparent_size'] == 16 * MIB
    assert mounts_below(lab['top']) == [str(lab['points'])]  # the read-only look is gone
    done = run_module('pi_disk', task)
    assert done['pis'][0]['action'] == 'mounted' and (point / 'data' / 'disk.img').exists()
    assert run_module('pi_disk', task)['changed'] is False


def test_growing_a_busy_file_system(lab):
    """Online when the kernel lets us; else offline, which a busy file system (an NFS server) refuses clearly."""
    task = base(lab, serial='b0b0b0b0', name='data', size='16M')
    run_module('pi_disk', task)
    point = lab['points'] / 'b0b0b0b0'
    holder = os.open(point, os.O_RDONLY)  # what Ganesha does with an export's root
    try:
        before = (lab['disks'] / 'b0b0b0b0.json').read_text()
        grown = run_module('pi_disk', dict(task, size='2G'))
    finally:
        os.close(holder)
    if ONLINE_GROWTH:
        assert not grown.get('failed') and grown['pis'][0]['action'] == 'grown', grown
        return
    assert grown.get('failed') and 'CAP_SYS_RESOURCE' in grown['msg'] and 'cannot be unmounted' in grown['msg'], grown
    assert (lab['disks'] / 'b0b0b0b0.json').read_text() == before
    assert (point / 'data' / 'disk.img').stat().st_size == 16 * MIB
    done = run_module('pi_disk', dict(task, size='2G'))  # no longer busy: grown offline
    assert done['pis'][0]['action'] == 'grown' and (point / 'data' / 'disk.img').stat().st_size == 2 * GIB


def test_never_grown_offline_while_another_mount_namespace_holds_it(lab):
    """An NFS server in a private mount namespace (as nfslab starts Ganesha) keeps the file system mounted
    there after it is unmounted here: e2fsck or resize2fs on the image then would corrupt it."""
    task = base(lab, serial='b0b0b0b1', name='data', size='16M')
    run_module('pi_disk', task)
    point = lab['points'] / 'b0b0b0b1'
    holder = subprocess.Popen(['unshare', '--mount', '--propagation', 'private', 'sleep', '60'])
    try:
        time.sleep(0.5)  # its copy of our mounts is made
        before = (lab['disks'] / 'b0b0b0b1.json').read_text()
        grown = run_module('pi_disk', dict(task, size='2G'))
        if ONLINE_GROWTH:
            assert not grown.get('failed') and grown['pis'][0]['action'] == 'grown', grown
            return
        assert grown.get('failed') and 'still in use through /dev/loop' in grown['msg'], grown
        assert (lab['disks'] / 'b0b0b0b1.json').read_text() == before
        assert mounts_below(point) == [str(point)] and (point / 'data' / 'disk.img').stat().st_size == 16 * MIB
        assert fs_bytes(device(point)) == 256 * MIB  # its ext4 untouched; only the file grew, by a hole
    finally:
        holder.kill()
        holder.wait()
    done = run_module('pi_disk', dict(task, size='2G'))  # the other namespace is gone: grown offline
    assert done['pis'][0]['action'] == 'grown' and (point / 'data' / 'disk.img').stat().st_size == 2 * GIB, done


def legacy(disks_dir, serial):
    """Disks as an older pifleet kept them: <serial>/<name>/disk.img in a plain directory, disks.json inside."""
    top = disks_dir / serial
    (top / 'data').mkdir(parents=True)
    (top / 'raw').mkdir()
    tool('truncate', '-s', '64M', str(top / 'data' / 'disk.img'))
    tool('mkfs.ext4', '-q', '-F', '-L', 'data', str(top / 'data' / 'disk.img'))
    tool('debugfs', '-w', '-R', 'write /etc/hostname hello', str(top / 'data' / 'disk.img'))
    with open(top / 'raw' / 'disk.img', 'wb') as handle:
        handle.truncate(32 * MIB)
        handle.seek(7 * MIB)
        handle.write(os.urandom(MIB))
    entries = [{'name': name, 'file': str(top / name / 'disk.img'), 'size': size, 'fstype': fstype,
                'nfs_path': str(top / name)} for name, size, fstype in (('data', 64 * MIB, 'ext4'),
                                                                        ('raw', 32 * MIB, 'none'))]
    (top / 'disks.json').write_text(json.dumps({'serial': serial, 'disks': entries}))
    return top


def test_old_layout_is_refused_then_migrated_with_its_data(lab):
    lab['disks'].mkdir(mode=0o700)
    old = legacy(lab['disks'], SERIAL)
    sums = {name: sha(old / name / 'disk.img') for name in ('data', 'raw')}
    items = [{'serial': SERIAL, 'name': 'data', 'size': '64M', 'fstype': 'ext4'},
             {'serial': SERIAL, 'name': 'raw', 'size': '32M'}, {'serial': 'bbbb0003', 'name': 'new', 'size': '8M'}]
    refused = run_module('pi_disk', base(lab, disks=items))
    assert refused.get('failed') and 'migrate: true' in refused['msg'] and refused['msg'].count('3a4b5c6d:') == 1
    assert {p['serial']: p['action'] for p in refused['pis']} == {SERIAL: 'failed', 'bbbb0003': 'created'}
    assert sha(old / 'raw' / 'disk.img') == sums['raw'] and not (lab['disks'] / (SERIAL + '.img')).exists()

    items[1]['size'] = '48M'  # migrated and grown in one run
    before = state(lab)
    planned = run_module('pi_disk', base(lab, disks=items, migrate=True), check=True)
    assert [p['action'] for p in planned['pis']] == ['migrated', 'unchanged'], planned
    assert state(lab) == before
    done = run_module('pi_disk', base(lab, disks=items, migrate=True))
    assert not done.get('failed'), done
    assert [p['action'] for p in done['pis']] == ['migrated', 'unchanged']
    assert [d['action'] for d in done['disks']] == ['unchanged', 'grown', 'unchanged']
    point = lab['points'] / SERIAL
    assert mounts_below(point) == [str(point)] and sorted(os.listdir(point)) == ['data', 'lost+found', 'raw']
    assert sha(point / 'data' / 'disk.img') == sums['data']
    with open(point / 'raw' / 'disk.img', 'rb') as handle:
        head = handle.read(32 * MIB)
    assert hashlib.sha256(head).hexdigest() == sums['raw'] and (point / 'raw' / 'disk.img').stat().st_size == 48 * MIB
    assert (point / 'raw' / 'disk.img').stat().st_blocks * 512 < 4 * MIB  # its holes kept
    assert tool('debugfs', '-R', 'cat /hello', str(point / 'data' / 'disk.img')) == HOSTNAME
    assert json.loads((lab['disks'] / (SERIAL + '.json')).read_text())['disks'][1]['size'] == 48 * MIB
    assert [n for n in os.listdir(lab['disks']) if n.startswith('.')] == []  # the old directory is gone
    assert run_module('pi_disk', base(lab, disks=items, migrate=True))['changed'] is False


def test_a_migration_killed_between_its_renames_is_undone(lab):
    lab['disks'].mkdir(mode=0o700)
    old = legacy(lab['disks'], SERIAL)
    scratch = lab['disks'] / ('.pifleet-tmp-%s-999999-dead' % SERIAL)
    scratch.mkdir()
    os.rename(old, scratch / 'old')  # what a run killed after its first rename leaves
    result = run_module('pi_disk', base(lab, serial=SERIAL, name='data', size='64M', fstype='ext4'))
    assert result['swept'] == [scratch.name] and (old / 'data' / 'disk.img').exists()
    assert result.get('failed') and 'old layout' in result['msg']


def release_once_opened(held, path, hold, timeout=120.0):
    """Close ``held`` (releasing its lock) ``hold`` seconds after another process has ``path`` open."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not opened_elsewhere(path):
            time.sleep(0.05)
        time.sleep(hold)
    finally:
        held.close()


def test_the_bakery_lock_makes_a_second_run_wait(lab):
    task = base(lab, serial='10c10c10', name='data', size='16M')
    lab['lock'].write_text('')
    held = open(lab['lock'], 'r+')  # closed by the timer, which releases the lock
    fcntl.flock(held, fcntl.LOCK_EX)
    held.write('pid 4242, pi_root\n')
    held.flush()
    # Released 1.5 s after the module has opened the lock file (and so started its clock), not after a fixed time
    # from here: a loaded machine can take longer than that to start the module at all.
    releaser = threading.Thread(target=release_once_opened, args=(held, lab['lock'], 1.5))
    releaser.start()
    done = run_module('pi_disk', task)
    releaser.join()
    assert not done.get('failed'), done
    assert done['lock_waited'] >= 1.0 and 'held by another pifleet run (pid 4242, pi_root)' in json.dumps(
        done['warnings'])


def test_fleet_prune_removes_the_disks_its_indexes_list(lab, tmp_path):
    """The fleet role's prune step: departed Pis' disks, listed from the indexes (not from their exports)."""
    items = [{'serial': serial, 'name': name, 'size': '8M'} for serial in ('aaaa0099', 'bbbb0099')
             for name in ('one', 'two')]
    run_module('pi_disk', base(lab, disks=items))
    (lab['points'] / 'bbbb0099' / 'three').mkdir()  # what a departed Pi made in its export is not a disk list
    (tmp_path / 'roots').mkdir()
    play = tmp_path / 'prune.yml'
    play.write_text(json.dumps([{'name': 'Prune', 'hosts': 'localhost', 'gather_facts': False, 'vars': {
        'fleet_roots_dir': str(tmp_path / 'roots'), 'fleet_disks_dir': str(lab['disks']),
        'fleet_plan': {'serials': ['aaaa0099']}}, 'tasks': [{'ansible.builtin.include_tasks': str(
            Path(__file__).resolve().parents[2] / 'roles' / 'fleet' / 'tasks' / 'prune.yml')}]}]))
    proc = subprocess.run([str(Path(sys.executable).parent / 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
                           '-e', 'ansible_python_interpreter=%s' % sys.executable, str(play)],
                          capture_output=True, text=True, check=False, timeout=300,
                          env=dict(os.environ, ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_NOCOLOR='1'))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(lab['disks'])) == ['aaaa0099.img', 'aaaa0099.json', 'mnt']
    assert sorted(os.listdir(lab['points'] / 'aaaa0099')) == ['lost+found', 'one', 'two']


@pytest.mark.parametrize('damage', ['lost', 'garbled'])
def test_an_index_lost_or_garbled_is_rebuilt_from_the_disks(lab, damage):
    task = base(lab, serial=SERIAL, disks=[{'name': 'data', 'size': '16M', 'fstype': 'ext4'},
                                           {'name': 'raw', 'size': '8M'}])
    run_module('pi_disk', task)
    index = lab['disks'] / (SERIAL + '.json')
    text = index.read_text()
    if damage == 'lost':
        index.unlink()
    else:
        index.write_text('{"disks": [')
    one = run_module('pi_disk', dict(task, disks=task['disks'][:1]))  # a call naming one disk of two
    assert one['changed'] is True and one['disks'][0]['action'] == 'unchanged', one
    # Both disks, as they are in the Pi's file system; what the blank ext4 disk took is lost with the index (it is
    # never read from the disk), so removing it now needs force.
    assert index.read_text() == unblank(text)
    assert ('is unreadable: rebuilt' in json.dumps(one.get('warnings'))) is (damage == 'garbled')
    assert run_module('pi_disk', task)['changed'] is False


def test_a_pi_failing_half_way_keeps_an_index_of_what_was_done(lab, tmp_path, monkeypatch):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'mkfs.ext4').write_text('#!/bin/sh\necho "mkfs.ext4: no space left (a test)" >&2\nexit 1\n')
    (bin_dir / 'mkfs.ext4').chmod(0o755)
    monkeypatch.setenv('PATH', '%s:%s' % (bin_dir, os.environ['PATH']))
    items = [{'serial': SERIAL, 'name': 'good', 'size': '8M'},
             {'serial': SERIAL, 'name': 'bad', 'size': '16M', 'fstype': 'ext4'},
             {'serial': 'bbbb0005', 'name': 'other', 'size': '8M'}]
    failed = run_module('pi_disk', base(lab, disks=items))
    assert failed.get('failed') and 'formatting disk bad of Pi 3a4b5c6d as ext4 failed: mkfs.ext4: no space' in \
        failed['msg'], failed
    assert [(d['name'], d['action']) for d in failed['disks']] == [('good', 'created'), ('bad', 'failed'),
                                                                   ('other', 'created')]
    assert failed['changed'] is True and [p['action'] for p in failed['pis']] == ['failed', 'created']
    index = json.loads((lab['disks'] / (SERIAL + '.json')).read_text())
    assert [d['name'] for d in index['disks']] == ['good'] and os.listdir(lab['points'] / SERIAL / 'bad') == []
    monkeypatch.setenv('PATH', os.environ['PATH'].split(':', 1)[1])
    done = run_module('pi_disk', base(lab, disks=items))
    assert [d['action'] for d in done['disks']] == ['unchanged', 'created', 'unchanged'], done


def test_disks_mounted_where_earlier_releases_did_move_to_the_mount_points_tmpfs(lab):
    """Earlier releases mounted a Pi's disks at <disks_dir>/<serial>, on the data file system. The next run
    mounts them at <disks_dir>/mnt/<serial> first, then gives the old mount point, its unit and directory up."""
    task = base(lab, serial=SERIAL, name='data', size='8M')
    assert run_module('pi_disk', task)['pis'][0]['action'] == 'created'
    new, old = lab['points'] / SERIAL, lab['disks'] / SERIAL
    (new / 'data' / 'notes').write_text('the Pi wrote this\n')
    image = lab['disks'] / (SERIAL + '.img')
    tool('umount', str(new))
    tool('umount', str(lab['points']))
    for name in os.listdir(lab['units']):
        if name.endswith('.mount'):
            os.unlink(lab['units'] / name)
            os.unlink(lab['units'] / 'local-fs.target.wants' / name)
    old.mkdir()
    tool('mount', '-o', 'loop,nosuid,nodev,noexec', str(image), str(old))
    old_unit = lab['units'] / unit_name(str(old))
    old_unit.write_text('[Mount]\nWhat=%s\nWhere=%s\n' % (image, old))

    planned = run_module('pi_disk', task, check=True)
    assert planned['pis'][0]['action'] == 'mounted' and planned['disks'][0]['action'] == 'unchanged', planned
    assert os.path.ismount(old) and not os.path.exists(new)
    moved = run_module('pi_disk', task)
    assert not moved.get('failed') and moved['pis'][0]['action'] == 'mounted', moved
    assert moved['pis'][0]['path'] == str(new) and (new / 'data' / 'notes').read_text() == 'the Pi wrote this\n'
    assert mounts_below(lab['disks']) == [str(lab['points']), str(new)] and not os.path.lexists(old)
    assert not old_unit.exists() and (lab['units'] / unit_name(str(new))).is_file()
    assert run_module('pi_disk', task)['changed'] is False
    run_module('pi_disk', dict(task, state='absent', force=True))
    assert os.listdir(lab['disks']) == []  # the mount points' tmpfs went with the last disks
