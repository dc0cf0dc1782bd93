# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bakeform generations on real images, loop files and mounts: two images make two generations, retention keeps
what a Pi uses, a checksum URL, a store of format 2 migrated (also when killed mid-way, with its boot-nfs mounted),
and a capture of a Pi's live root that keeps none of the Pi's identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fstree import loop_fs, loops_backed_by, mounted_ro, mounts_below, release_below, snapshot
from httpfiles import serve, serving
from modrun import ensure_importable, module_argv, run_module
from pilife import find_secrets, live_in, mount_like_pi_root

from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import read_superblock
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import Layout

BOOT_OPTIONS = 'loop,ro,nosuid,nodev,noexec'


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


class Lab:
    """A store, a roots dir and a units dir on one file system (XFS: reflinks, as a bakery should have)."""

    def __init__(self, top):
        self.top = top
        self.store, self.roots, self.units = top / 'store', top / 'roots', top / 'units'
        self.roots.mkdir(mode=0o700)
        self.lock = str(top / 'run' / 'pifleet.lock')  # a directory of its own: the lock wants it 0700

    def args(self, **extra):
        return dict({'name': 'bw', 'store': str(self.store), 'roots_dir': str(self.roots),
                     'units_dir': str(self.units), 'lock_file': self.lock}, **extra)

    def bakeform(self, check=False, diff=False, **extra):
        return run_module('bakeform', self.args(**extra), check=check, diff=diff)

    def gen(self, number, name='bw'):
        return self.store / name / 'generations' / str(number)

    def index(self, name='bw'):
        return json.loads((self.store / name / 'bakeform.json').read_text())

    def marker(self, serial, generation, hostname=None, previous=False, **extra):
        data = dict({'serial': serial, 'hostname': hostname, 'bakeform': 'bw', 'generation': generation}, **extra)
        (self.roots / ('%s%s.json' % (serial, '.prev' if previous else ''))).write_text(json.dumps(data))


@pytest.fixture
def lab(tmp_path):
    with loop_fs(tmp_path, 'xfs', '3G') as mnt:
        try:
            yield Lab(mnt)
        finally:
            assert release_below(mnt / 'roots') == [] and release_below(mnt / 'store') == []


def mount_boot_nfs(image, point):
    """Mount a generation's boot.img at its boot-nfs, as pi_root does for Pis with boot_mount: nfs."""
    point.mkdir(exist_ok=True)
    subprocess.run(['mount', '-t', 'ext4', '-o', BOOT_OPTIONS, str(image), str(point)], check=True)


def pi_root_unit(units, image, point):
    """The mount unit pi_root writes for a boot-nfs (its text, enabled)."""
    text = loopfs.unit_text(str(image), str(point), ('ro', 'nosuid', 'nodev', 'noexec'), 'pifleet boot files of bw')
    loopfs.Units(str(units)).ensure(str(point), text, lambda path, body: Path(path).write_text(body))
    return loopfs.Units(str(units))


# ---------------------------------------------------------------------------------------------- generations


def test_two_images_make_two_generations_and_the_same_one_again_changes_nothing(images, lab):
    first, second = images['good-xz'], images['other-xz']
    one = lab.bakeform(src=first['path'])
    assert one['changed'] is True and (one['generation'], one['current']) == (1, 1), one
    gen1 = snapshot(lab.gen(1))

    planned = lab.bakeform(check=True, diff=True, src=second['path'])
    assert planned['changed'] is True and (planned['generation'], planned['current']) == (2, 2)
    assert planned['manifest'] == {} and not lab.gen(2).exists()
    assert list(planned['diff']['after']['generations']) == ['bw@1', 'bw@2']

    two = lab.bakeform(diff=True, src=second['path'])
    assert two['changed'] is True and (two['generation'], two['current']) == (2, 2)
    assert two['diff']['before'] == planned['diff']['before'] and two['diff']['after']['current'] == 'bw@2'
    assert two['diff']['after']['generations']['bw@1'] == planned['diff']['after']['generations']['bw@1']
    assert two['manifest']['generation'] == 2 and two['manifest']['models'] == ['4']
    assert [(g['id'], g['current'], g['sha256']) for g in two['generations']] == [
        (1, False, first['sha256'].split(':')[1]), (2, True, second['sha256'].split(':')[1])]
    assert snapshot(lab.gen(1)) == gen1  # never changed once made
    assert lab.index() == {'format': 3, 'name': 'bw', 'current': 2, 'next': 3, 'pinned': [], 'generations': {
        str(g['id']): {k: g[k] for k in ('sha256', 'created', 'source', 'origin')} for g in two['generations']}}

    before = snapshot(lab.store)
    for check in (True, False):
        again = lab.bakeform(check=check, src=first['path'])  # an older generation's image: nothing to do
        assert again['changed'] is False and (again['generation'], again['current']) == (1, 2), again
        assert again['manifest']['sha256'] == first['sha256'].split(':')[1]
    assert snapshot(lab.store) == before


def test_keep_removes_what_nobody_uses_and_never_a_used_generation(images, lab):
    assert lab.bakeform(src=images['good-xz']['path'], keep=1)['changed'] is True
    lab.marker('3a4b5c6d', 1, hostname='kitchen')  # a Pi whose root was built from generation 1
    second = lab.bakeform(src=images['other-xz']['path'], keep=1)
    assert second['changed'] is True and second['removed'] == [] and second['current'] == 2, second
    lab.marker('0badcafe', 2, previous=True)      # ... and one that keeps generation 2 for a rollback
    # Generation 2 is served over NFS (mounted by pi_root, with its unit): removing it must release both.
    mount_boot_nfs(lab.gen(2) / 'boot.img', lab.gen(2) / 'boot-nfs')
    units = pi_root_unit(lab.units, lab.gen(2) / 'boot.img', lab.gen(2) / 'boot-nfs')

    third = lab.bakeform(src=images['good-img']['path'], keep=1)
    assert third['changed'] is True and third['removed'] == [] and third['current'] == 3, third
    assert [(g['id'], g['used_by']) for g in third['generations']] == [
        (1, [{'serial': '3a4b5c6d', 'hostname': 'kitchen', 'root': 'current'}]),
        (2, [{'serial': '0badcafe', 'hostname': None, 'root': 'previous'}]), (3, [])]

    refused = lab.bakeform(state='absent', generation=1)
    assert refused.get('failed') and refused['changed'] is False
    assert 'generation bw@1 cannot be removed: bw@1 is used by kitchen (3a4b5c6d, current root)' in refused['msg']
    whole = lab.bakeform(state='absent')
    assert whole.get('failed') and 'kitchen (3a4b5c6d, current root)' in whole['msg']
    assert 'Pi 0badcafe (previous root)' in whole['msg']
    assert sorted(os.listdir(lab.store / 'bw/generations')) == ['1', '2', '3']

    (lab.roots / '0badcafe.prev.json').unlink()  # the rollback root went: generation 2 is free
    planned = lab.bakeform(check=True, keep=1)
    assert planned['changed'] is True and planned['removed'] == [2] and lab.gen(2).exists()
    done = lab.bakeform(keep=1)
    assert done['changed'] is True and done['removed'] == [2] and not lab.gen(2).exists()
    assert sorted(os.listdir(lab.store / 'bw/generations')) == ['1', '3']
    assert mounts_below(lab.store) == [] and units.current(str(lab.gen(2) / 'boot-nfs')) == (None, False)
    assert [n for n in os.listdir(lab.store) if n.startswith('.pifleet-tmp-')] == []
    assert lab.bakeform(keep=1)['changed'] is False


def test_a_checksum_url_is_read_for_the_images_file_name(images, lab, tmp_path):
    image = images['other-xz']
    www = tmp_path / 'www'
    www.mkdir()
    name = serve(www, image['path'])
    digest = image['sha256'].split(':')[1]
    (www / (name + '.sha256')).write_text('%s  %s\n' % (digest, name))
    (www / 'SHA256SUMS').write_text('%s  other.img\n%s *%s\n' % ('e' * 64, digest, name))
    (www / 'WRONG').write_text('%s  %s\n' % ('e' * 64, name))
    (www / 'NOLINE').write_text('%s  something-else.img.xz\n' % digest)
    with serving(www) as (base, handler):
        missing = lab.bakeform(url=base + name, checksum='sha256:%sNOLINE' % base)
        assert missing.get('failed') and 'has no line for %s' % name in missing['msg'], missing
        wrong = lab.bakeform(url=base + name, checksum='sha256:%sWRONG' % base)
        assert wrong.get('failed') and 'checksum mismatch for bakeform bw' in wrong['msg']
        assert handler.paths == ('/NOLINE', '/WRONG', '/' + name)  # nothing fetched without a usable checksum
        assert not lab.store.exists() or os.listdir(lab.store) == []

        done = lab.bakeform(url=base + name, checksum='sha256:%s%s.sha256' % (base, name))
        assert done['changed'] is True and done['manifest']['sha256'] == digest, done
        fetched = handler.requests
        again = lab.bakeform(url=base + name, checksum='sha256:%sSHA256SUMS' % base)
        assert again['changed'] is False and again['generation'] == 1
        assert handler.requests == fetched + 1  # the checksum file only, not the image
    src = lab.bakeform(src=image['path'], checksum='sha256:http://127.0.0.1:9/x.sha256')
    assert src.get('failed') and 'fetching the checksum file http://127.0.0.1:9/x.sha256' in src['msg']


# ---------------------------------------------------------------------------------------------- migration


def to_format2(lab, name='bw'):
    """Lay generation 1 out as the code before generations did (store format 2): the same files directly in
    <store>/<name>/, a manifest of format 2 without what format 3 added, no index."""
    top, one = lab.store / name, lab.gen(1, name)
    manifest = json.loads((one / 'manifest.json').read_text())
    for key in ('bakeform', 'generation', 'origin'):
        manifest.pop(key)
    manifest['format'] = 2
    for entry in ('boot', 'boot.img', 'root.img'):
        os.rename(one / entry, top / entry)
    (top / 'manifest.json').write_text(json.dumps(manifest, indent=2, sort_keys=True) + '\n')
    (one / 'manifest.json').unlink()
    os.rmdir(one)
    os.rmdir(top / 'generations')
    (top / 'bakeform.json').unlink()
    return manifest


@pytest.fixture
def format2(images, lab):
    """Bakeform bw of store format 2, its boot-nfs mounted and its unit written as pi_root did, a root using it."""
    assert lab.bakeform(src=images['good-xz']['path'])['changed'] is True
    manifest = to_format2(lab)
    top = lab.store / 'bw'
    mount_boot_nfs(top / 'boot.img', top / 'boot-nfs')
    pi_root_unit(lab.units, top / 'boot.img', top / 'boot-nfs')
    lab.marker('3a4b5c6d', None, hostname='kitchen', bakeform_sha256=manifest['sha256'])  # made before generations
    lab.inodes = {rel: os.stat(top / rel).st_ino for rel in ('root.img', 'boot/start4.elf', 'boot/config.txt')}
    return manifest


def assert_migrated(lab, manifest):
    top, one = lab.store / 'bw', lab.gen(1)
    assert sorted(os.listdir(top)) == ['bakeform.json', 'generations'] and sorted(os.listdir(top / 'generations')) == [
        '1']
    assert sorted(os.listdir(one)) == ['boot', 'boot-nfs', 'boot.img', 'manifest.json', 'root.img']
    assert {rel: os.stat(one / rel).st_ino for rel in lab.inodes} == lab.inodes  # the same files, nothing copied
    assert json.loads((one / 'manifest.json').read_text()) == dict(
        manifest, format=3, bakeform='bw', generation=1, origin={'kind': 'image'})
    assert lab.index()['current'] == 1 and lab.index()['next'] == 2
    # Still served: generation 1's boot.img is mounted at its boot-nfs, and the old mount point is gone.
    assert mounts_below(top) == [str(one / 'boot-nfs')]
    assert loopfs.mounted_image(str(one / 'boot-nfs')) == str(one / 'boot.img')
    assert sorted(set(os.listdir(one / 'boot-nfs')) - {'lost+found'}) == sorted(os.listdir(one / 'boot'))
    units = loopfs.Units(str(lab.units))
    assert units.current(str(top / 'boot-nfs')) == (None, False)
    text, enabled = units.current(str(one / 'boot-nfs'))
    assert enabled and 'What=%s\n' % (one / 'boot.img') in text and 'Options=%s\n' % BOOT_OPTIONS in text
    assert [n for n in os.listdir(lab.store) if n.startswith('.pifleet-tmp-')] == []


def test_a_format2_store_becomes_generation_1_and_keeps_serving(images, lab, format2):
    top = lab.store / 'bw'
    held = open(top / 'boot-nfs' / 'config.txt', 'rb')  # what an NFS server holds open through the old mount
    try:
        before = snapshot(top)
        planned = lab.bakeform(check=True, diff=True, src=images['good-xz']['path'])
        assert planned['changed'] is True and planned['migrated'] is True and planned['generation'] == 1, planned
        assert (planned['diff']['before']['format'], planned['diff']['after']['format']) == (2, 3)
        assert snapshot(top) == before and mounts_below(top) == [str(top / 'boot-nfs')]

        done = lab.bakeform(src=images['good-xz']['path'])
        assert done['changed'] is True and done['migrated'] is True and done['generation'] == 1, done
        assert done['generations'][0]['used_by'] == [{'serial': '3a4b5c6d', 'hostname': 'kitchen', 'root': 'current'}]
        assert_migrated(lab, format2)
        assert held.read().startswith(b'#')  # the old mount went lazily: what was open is still served
    finally:
        held.close()
    again = lab.bakeform(src=images['good-xz']['path'])
    assert again['changed'] is False and again['migrated'] is False
    # An image of its own for the new mount (not the old loop device under another name): a reflink on XFS.
    assert lab.bakeform(src=images['other-xz']['path'])['generation'] == 2


KILLER = '''
import os, signal, sys
from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic
real, where = atomic.install, sys.argv.pop()

def install(*args):
    if where == 'after':
        real(*args)
    os.kill(os.getpid(), signal.SIGKILL)

atomic.install = install
from ansible_collections.pifleet.netboot.plugins.modules import bakeform
bakeform.main()
'''


@pytest.mark.parametrize('where', ['before', 'after'])
def test_a_migration_killed_at_its_swap_leaves_one_layout_and_the_next_run_finishes_it(images, lab, format2, where):
    ensure_importable()
    argv = module_argv('bakeform', lab.args(src=images['good-xz']['path']))
    proc = subprocess.run([sys.executable, '-c', KILLER, argv[-1], where], capture_output=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    top = lab.store / 'bw'
    leftovers = [n for n in os.listdir(lab.store) if n.startswith('.pifleet-tmp-bw-')]
    assert len(leftovers) == 1
    if where == 'before':  # the old layout, whole, still mounted where it was
        assert sorted(os.listdir(top)) == ['boot', 'boot-nfs', 'boot.img', 'manifest.json', 'root.img']
        assert mounts_below(top) == [str(top / 'boot-nfs')]
    else:  # the new layout, whole; its unit not moved yet
        assert sorted(os.listdir(top)) == ['bakeform.json', 'generations']
        assert mounts_below(top) == [str(lab.gen(1) / 'boot-nfs')]
        assert loopfs.Units(str(lab.units)).current(str(top / 'boot-nfs'))[0] is not None
    finished = lab.bakeform(src=images['good-xz']['path'])
    assert finished['changed'] is True and finished['swept'] == leftovers, finished
    assert finished['migrated'] is (where == 'before')
    assert_migrated(lab, format2)
    assert lab.bakeform(src=images['good-xz']['path'])['changed'] is False


# ---------------------------------------------------------------------------------------------- capture


def make_pi_root(lab, serial, hostname, mounted=True):
    """A Pi's root as pi_root leaves it (a reflink clone of generation 1 with its own UUID, mounted, marker
    beside it), then lived in by the Pi. Returns what ``live_in`` says identifies it."""
    image = Path(Layout(str(lab.roots), serial).image)
    subprocess.run(['cp', '--reflink=always', str(lab.gen(1) / 'root.img'), str(image)], check=True)
    subprocess.run(['tune2fs', '-U', 'random', str(image)], check=True, capture_output=True)
    point = mount_like_pi_root(lab.roots, serial, image)
    lived = live_in(str(point), serial, hostname)
    if not mounted:
        subprocess.run(['umount', str(point)], check=True)
    lab.marker(serial, 1, hostname=hostname, bakeform_sha256=lab.index()['generations']['1']['sha256'],
               authorized_keys_sha256=lived['authorized_keys_sha256'])
    return lived


def shared_extents(path):
    out = subprocess.run(['filefrag', '-v', str(path)], capture_output=True, text=True, check=True).stdout
    return 'shared' in out


def used_bytes(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.parametrize('mounted', [True, False])
def test_a_capture_is_the_next_generation_without_the_pis_identity(images, lab, tmp_path, mounted):
    assert lab.bakeform(src=images['good-xz']['path'])['changed'] is True
    lived = make_pi_root(lab, '3a4b5c6d', 'capture-src-pi', mounted=mounted)
    pi_image, point = lab.roots / '3a4b5c6d.img', Path(Layout(str(lab.roots), '3a4b5c6d').point)
    pi_uuid = read_superblock(str(pi_image))['uuid']

    before = snapshot(lab.store)
    planned = lab.bakeform(check=True, diff=True, capture={'serial': '3a4b5c6d'})
    assert planned['changed'] is True and planned['generation'] == 2 and planned['manifest'] == {}, planned
    assert planned['diff']['after']['generations']['bw@2']['origin'] == {
        'kind': 'capture', 'serial': '3a4b5c6d', 'hostname': 'capture-src-pi', 'from': 'bw@1'}
    assert snapshot(lab.store) == before

    used, start = used_bytes(lab.top), time.monotonic()
    done = lab.bakeform(capture={'serial': '3a4b5c6d'})
    seconds, extra = time.monotonic() - start, used_bytes(lab.top) - used
    assert done['changed'] is True and (done['generation'], done['current']) == (2, 2), done
    print('\ncapture of a %s root: %.2f s, %d KiB more on XFS (root image %d KiB allocated)'
          % ('mounted' if mounted else 'unmounted', seconds, extra // 1024, pi_image.stat().st_blocks // 2))
    assert done['capture']['frozen'] is mounted
    assert set(done['capture']['taken_out']) >= {'ssh_host_keys', 'machine_id', 'cloud_init', 'hostname',
                                                 'random_seed', 'logs', 'shell_history', 'fstab', 'authorized_keys'}
    manifest, two = done['manifest'], lab.gen(2)
    assert manifest['origin'] == {'kind': 'capture', 'serial': '3a4b5c6d', 'hostname': 'capture-src-pi',
                                  'from': 'bw@1'}
    assert (manifest['format'], manifest['generation'], manifest['source']) == (3, 2, str(pi_image))
    assert manifest['sha256'] == sha256_of(two / 'root.img') == lab.index()['generations']['2']['sha256']
    one = json.loads((lab.gen(1) / 'manifest.json').read_text())
    assert (manifest['models'], manifest['boot_files'], manifest['kernels']) == (
        one['models'], one['boot_files'], one['kernels'])
    assert snapshot(two / 'boot') == snapshot(lab.gen(1) / 'boot')
    assert sha256_of(two / 'boot.img') == sha256_of(lab.gen(1) / 'boot.img')
    assert read_superblock(str(two / 'root.img'))['uuid'] not in (pi_uuid, one['root_uuid'])
    assert read_superblock(str(two / 'root.img'))['uuid'] == manifest['root_uuid']
    assert os.stat(two / 'root.img').st_mode & 0o777 == 0o600
    # Reflinks: the captured root shares its blocks with the Pi's image, the boot files with generation 1.
    assert shared_extents(two / 'root.img') and shared_extents(two / 'boot.img')
    check = subprocess.run(['e2fsck', '-f', '-n', str(two / 'root.img')], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    with mounted_ro(two / 'root.img', tmp_path / 'captured') as view:
        assert find_secrets(str(view), lived['secrets']) == []
        for rel, text in lived['kept'].items():
            assert (view / rel).read_text() == text, rel
        assert (view / 'etc/hostname').read_text() == 'raspberrypi\n'  # the golden root's
        assert (view / 'etc/machine-id').read_text() == ''
        assert not list((view / 'etc/ssh').glob('ssh_host_*'))
    # The Pi's own root is untouched, and writable again (thawed).
    if not mounted:
        subprocess.run(['mount', '-t', 'ext4', '-o', 'loop,nosuid,nodev', str(pi_image), str(point)], check=True)
    assert (point / 'etc/machine-id').read_text() == lived['machine_id'] + '\n'
    assert (point / 'etc/hostname').read_text() == 'capture-src-pi\n'
    (point / 'after-capture').write_text('still writable')
    assert read_superblock(str(pi_image))['uuid'] == pi_uuid
    assert [n for n in os.listdir(lab.store) if n.startswith('.pifleet-tmp-')] == []


def test_a_root_cloned_from_a_capture_by_pi_root_works(images, lab):
    assert lab.bakeform(src=images['good-xz']['path'])['changed'] is True
    lived = make_pi_root(lab, '3a4b5c6d', 'capture-src-pi')
    assert lab.bakeform(capture={'serial': '3a4b5c6d', 'hostname': 'lab-admin'})['generation'] == 2
    store, item = lab.store, {'serial': '0badcafe', 'hostname': 'pupil-01', 'bakeform': 'bw', 'generation': 2}
    result = run_module('pi_root', {'store': str(store), 'roots_dir': str(lab.roots), 'units_dir': str(lab.units),
                                    'lock_file': lab.lock, 'pis': [item], 'ssh_authorized_keys': []})
    assert result['changed'] is True and not result.get('failed'), result
    root = Path(Layout(str(lab.roots), '0badcafe').point)
    assert (root / 'etc/hostname').read_text() == 'pupil-01\n'
    assert (root / 'opt/lab/tool.sh').read_text() == lived['kept']['opt/lab/tool.sh']
    machine_id = (root / 'etc/machine-id').read_text().strip()
    assert len(machine_id) == 32 and machine_id != lived['machine_id']
    keys = sorted(p.name for p in (root / 'etc/ssh').glob('ssh_host_*'))
    assert keys == ['ssh_host_ecdsa_key', 'ssh_host_ecdsa_key.pub', 'ssh_host_ed25519_key', 'ssh_host_ed25519_key.pub']
    assert find_secrets(str(root), lived['secrets']) == []
    gone = run_module('pi_root', {'store': str(store), 'roots_dir': str(lab.roots), 'units_dir': str(lab.units),
                                  'lock_file': lab.lock, 'pis': [dict(item, state='absent')]})
    assert gone['changed'] is True, gone
    assert loops_backed_by(lab.roots / '0badcafe.img') == []
