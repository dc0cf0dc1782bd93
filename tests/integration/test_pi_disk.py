# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_disk as a real process on real files: sparse images, real ext4, grow, refusals, a fleet in one call."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from fstree import snapshot
from modrun import run_module

MIB = 1024 * 1024


@pytest.fixture
def disks_dir(tmp_path):
    path = tmp_path / 'disks'
    path.mkdir()
    return path


def tool(*argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=dict(os.environ, LANG='C', LC_ALL='C'))
    assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    return proc.stdout


def superblock(image):
    """dumpe2fs -h as a dict: the file system as e2fsprogs sees it, not as the module reports it."""
    fields = {}
    for line in tool('dumpe2fs', '-h', str(image)).splitlines():
        key, sep, value = line.partition(':')
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def fs_bytes(image):
    info = superblock(image)
    return int(info['Block count']) * int(info['Block size'])


def test_sparse_ext4_disk_created_grown_and_never_shrunk(disks_dir):
    task = {'serial': '100000003A4B5C6D', 'name': 'data', 'size': '64M', 'fstype': 'ext4', 'disks_dir': str(disks_dir)}
    image = disks_dir / '3a4b5c6d' / 'data' / 'disk.img'

    planned = run_module('pi_disk', task, check=True, diff=True)
    assert planned['changed'] is True and planned['disks'][0]['action'] == 'created', planned
    assert os.listdir(disks_dir) == []

    done = run_module('pi_disk', task, diff=True)
    assert done['changed'] is True, done
    assert done['diff'] == planned['diff']
    st = image.stat()
    assert st.st_size == 64 * MIB and st.st_mode & 0o777 == 0o600
    assert done['disks'][0]['apparent_size'] == st.st_size
    assert done['disks'][0]['allocated_size'] == st.st_blocks * 512 < 4 * MIB  # sparse: metadata only
    assert (image.parent.stat().st_mode & 0o777, image.parent.parent.stat().st_mode & 0o777) == (0o755, 0o755)
    info = superblock(image)
    assert info['Filesystem volume name'] == 'data' and info['Filesystem state'] == 'clean'
    assert 'has_journal' in info['Filesystem features'] and fs_bytes(image) == 64 * MIB
    tool('e2fsck', '-n', '-f', str(image))
    index = json.loads((disks_dir / '3a4b5c6d' / 'disks.json').read_text())
    assert index == {'serial': '3a4b5c6d', 'disks': [{
        'name': 'data', 'file': str(image), 'size': 64 * MIB, 'fstype': 'ext4', 'nfs_path': str(image.parent)}]}
    assert (disks_dir / '3a4b5c6d' / 'disks.json').stat().st_mode & 0o777 == 0o644

    again = run_module('pi_disk', task)
    assert again['changed'] is False and again['disks'][0]['action'] == 'unchanged'

    # A file the Pi wrote must survive the grow.
    with open('/etc/hostname', 'rb') as handle:
        hostname = handle.read()
    tool('debugfs', '-w', '-R', 'write /etc/hostname hello', str(image))
    before = snapshot(disks_dir)
    shrink = run_module('pi_disk', dict(task, size='32M'))
    assert shrink.get('failed') and 'disks never shrink' in shrink['msg'] and '64 MiB' in shrink['msg'], shrink
    assert snapshot(disks_dir) == before  # byte-identical

    grow = dict(task, size='128M')
    planned = run_module('pi_disk', grow, check=True)
    assert planned['changed'] is True and planned['disks'][0]['action'] == 'grown'
    assert snapshot(disks_dir) == before
    grown = run_module('pi_disk', grow)
    assert grown['changed'] is True and grown['disks'][0]['action'] == 'grown', grown
    assert image.stat().st_size == 128 * MIB and fs_bytes(image) == 128 * MIB
    assert image.stat().st_blocks * 512 < 8 * MIB  # still sparse after the grow
    tool('e2fsck', '-n', '-f', str(image))
    assert tool('debugfs', '-R', 'cat /hello', str(image)).encode() == hostname
    assert json.loads((disks_dir / '3a4b5c6d' / 'disks.json').read_text())['disks'][0]['size'] == 128 * MIB
    assert run_module('pi_disk', grow)['changed'] is False


def test_fstype_none_is_a_hole_and_fstype_cannot_change(disks_dir):
    task = {'serial': 'c0ffee00', 'name': 'raw', 'size': '0.25G', 'disks_dir': str(disks_dir)}
    done = run_module('pi_disk', task)
    image = disks_dir / 'c0ffee00' / 'raw' / 'disk.img'
    assert done['disks'][0]['apparent_size'] == image.stat().st_size == 256 * MIB
    assert done['disks'][0]['allocated_size'] == image.stat().st_blocks * 512 == 0
    with open(image, 'rb') as handle:
        assert handle.read(4096) == bytes(4096)  # blank: never formatted
    before = snapshot(disks_dir)
    changed = run_module('pi_disk', dict(task, fstype='ext4'))
    assert changed.get('failed') and 'never reformatted' in changed['msg'], changed
    assert snapshot(disks_dir) == before


@pytest.mark.parametrize('fstype', ['none', 'ext4'])
def test_absent_refuses_a_disk_with_data_unless_forced(disks_dir, fstype):
    task = {'serial': 'dddd0001', 'name': 'keep', 'size': '16M', 'fstype': fstype, 'disks_dir': str(disks_dir)}
    assert run_module('pi_disk', task)['changed'] is True
    assert run_module('pi_disk', dict(task, name='spare'))['changed'] is True
    image = disks_dir / 'dddd0001' / 'keep' / 'disk.img'
    if fstype == 'ext4':
        tool('debugfs', '-w', '-R', 'write /etc/hostname hello', str(image))
    else:
        with open(image, 'r+b') as handle:
            handle.seek(5 * MIB)
            handle.write(b'precious')

    before = snapshot(disks_dir)
    refused = run_module('pi_disk', dict(task, state='absent'))
    assert refused.get('failed') and 'holds data' in refused['msg'] and 'force: true' in refused['msg'], refused
    assert snapshot(disks_dir) == before

    spare = run_module('pi_disk', dict(task, name='spare', state='absent'))  # fresh: no force needed
    assert spare['changed'] is True and spare['disks'][0]['action'] == 'removed', spare
    assert [d['name'] for d in json.loads((disks_dir / 'dddd0001' / 'disks.json').read_text())['disks']] == ['keep']

    forced = run_module('pi_disk', dict(task, state='absent', force=True))
    assert forced['changed'] is True and forced['disks'][0]['action'] == 'removed', forced
    assert os.listdir(disks_dir) == []  # last disk gone: disks.json and the serial directory too
    assert run_module('pi_disk', dict(task, state='absent'))['changed'] is False


def test_fleet_of_20_disks_for_5_pis_in_one_call(disks_dir):
    serials = ['f1ee7%03x' % n for n in range(5)]
    disks = [{'serial': serial, 'name': name, 'size': size}
             for serial in serials for name, size in (('data', '64M'), ('logs', '16M'), ('swap', '128M'), ('raw', 3))]
    for item in disks:
        if item['name'] in ('data', 'logs'):
            item['fstype'] = 'ext4'
    task = {'disks_dir': str(disks_dir), 'disks': disks}

    planned = run_module('pi_disk', task, check=True, diff=True)
    assert planned['changed'] is True and len(planned['diff']) == 5
    assert os.listdir(disks_dir) == []

    started = time.monotonic()
    done = run_module('pi_disk', task, diff=True)
    elapsed = time.monotonic() - started
    assert done['changed'] is True, done
    assert done['diff'] == planned['diff']
    assert [(d['serial'], d['name'], d['action']) for d in done['disks']] == [
        (d['serial'], d['name'], 'created') for d in disks]
    for result, item in zip(done['disks'], disks):
        st = os.stat(result['path'])
        assert result['apparent_size'] == st.st_size and result['allocated_size'] == st.st_blocks * 512
        assert st.st_blocks * 512 < st.st_size  # sparse
        if item.get('fstype') == 'ext4':
            assert superblock(result['path'])['Filesystem volume name'] == item['name']
    for serial in serials:
        index = json.loads((disks_dir / serial / 'disks.json').read_text())
        assert [(d['name'], d['size'], d['fstype']) for d in index['disks']] == [
            ('data', 64 * MIB, 'ext4'), ('logs', 16 * MIB, 'ext4'), ('raw', MIB, 'none'), ('swap', 128 * MIB, 'none')]
    print('pi_disk created 20 disks (10 ext4) in %.2f s' % elapsed)
    assert elapsed < 60, 'creating 20 disks took %.1f s' % elapsed

    before = snapshot(disks_dir)
    again = run_module('pi_disk', task, diff=True)
    assert again['changed'] is False and again['diff'] == []
    assert {d['action'] for d in again['disks']} == {'unchanged'}
    assert snapshot(disks_dir) == before
