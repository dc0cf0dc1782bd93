# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bakeform on real factory images: a faithful split-stream ingest, idempotence, bad input, kill -9, URLs, limits.

The golden root is the image's own root partition (generations/<N>/root.img); it is compared byte for byte
with the partition and, mounted read-only, entry by entry with what the factory built. Generations,
retention, migration and capture: test_generations.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fstree import describe, expected_tree, loop_fs, loops_backed_by, mounted_ro, mounts_below, snapshot
from httpfiles import serve as serve_file
from httpfiles import serving
from modrun import module_argv, run_module

from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import read_superblock
from lab.piimage import build_image

REPO = Path(__file__).resolve().parents[2]
SUPERBLOCK = slice(1024, 2048)  # e2fsck records its check there and tune2fs the checksum seed flag


def sidecar(image):
    return Path(image['path'] + '.sha256').read_text().strip()


def bakeform(store, check=False, diff=False, **args):
    """Run bakeform on ``store`` with a lock file of the test's own."""
    return run_module('bakeform', dict(args, store=str(store), lock_file=str(store.parent / 'pifleet.lock')),
                      check=check, diff=diff)


def root_partition(image):
    """The bytes of the image's root partition, from the raw image (unpacked by xz if it is compressed)."""
    argv = ['xz', '-dc', image['path']] if image['path'].endswith('.xz') else ['cat', image['path']]
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
        proc.stdout.read(image['root_offset'])
        data = proc.stdout.read(image['root_size'])
        proc.stdout.read()
    assert proc.returncode == 0 and len(data) == image['root_size']
    return data


def test_ingest_is_faithful_and_idempotent(images, store, tmp_path):
    image = images['good-xz']
    args = {'name': 'bookworm', 'src': image['path']}

    planned = bakeform(store, check=True, diff=True, **args)
    assert planned['changed'] is True, planned
    assert planned['diff']['after']['generations']['bookworm@1']['sha256'] == image['sha256'].split(':')[1]
    assert os.listdir(store) == []

    done = bakeform(store, diff=True, **args)
    assert done['changed'] is True, done
    manifest = done['manifest']
    assert manifest['sha256'] == image['sha256'].split(':')[1] and manifest['format'] == 3
    assert (manifest['bakeform'], manifest['generation'], manifest['origin']) == ('bookworm', 1, {'kind': 'image'})
    assert (done['generation'], done['current'], [g['label'] for g in done['generations']]) == (1, 1, ['bookworm@1'])
    assert manifest['models'] == ['3', '4', '5']
    assert manifest['kernels'] == ['kernel8.img', 'kernel_2712.img']
    assert manifest['pretty_name'] == 'Debian GNU/Linux 12 (bookworm)'
    assert manifest['partition_table'] == {'type': 'mbr', 'disk_id': image['disk_id']}
    assert [(p['start'], p['size']) for p in manifest['partitions']] == [
        (image['boot_offset'], image['boot_size']), (image['root_offset'], image['root_size'])]
    assert (manifest['root_image'], manifest['boot_image'], manifest['root_bytes']) == (
        'root.img', 'boot.img', image['root_size'])
    assert sorted(os.listdir(store)) == ['bookworm']
    assert sorted(os.listdir(store / 'bookworm')) == ['bakeform.json', 'generations']
    assert json.loads((store / 'bookworm/bakeform.json').read_text())['current'] == 1
    dest = store / 'bookworm/generations/1'
    assert sorted(os.listdir(dest)) == ['boot', 'boot.img', 'manifest.json', 'root.img']
    assert os.stat(store).st_mode & 0o7777 == 0o711
    assert [os.stat(dest / name).st_mode & 0o777 for name in ('root.img', 'boot.img')] == [0o600, 0o600]

    assert manifest['boot_files'] == sorted(image['boot_files'])
    assert_boot_files(dest, image, tmp_path)
    assert_golden_root(dest, image, manifest, tmp_path)

    before = snapshot(store)
    again = bakeform(store, check=True, **args)
    assert again['changed'] is False
    again = bakeform(store, **args)
    assert again['changed'] is False
    assert again['manifest']['created'] == manifest['created']  # not ingested again
    assert snapshot(store) == before


def assert_boot_files(dest, image, tmp_path):
    """boot/ and boot.img hold every boot file of the image, byte for byte."""
    # boot/: readable by an unprivileged TFTP service.
    for rel, digest in image['boot_files'].items():
        path = dest / 'boot' / rel
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, rel
        assert path.stat().st_mode & 0o777 == 0o644
    # boot.img, as pi_root mounts it for Pis that mount their boot files over NFS: the same files.
    with mounted_ro(dest / 'boot.img', tmp_path / 'boot-view') as view:
        assert sorted(p for p in describe(view) if (view / p).is_file()) == sorted(image['boot_files'])
        for rel, digest in image['boot_files'].items():
            assert hashlib.sha256((view / rel).read_bytes()).hexdigest() == digest, rel


def assert_golden_root(dest, image, manifest, tmp_path):
    """root.img is the image's root partition (but for its superblock) and holds what the factory built."""
    # Golden root: the image's root partition itself, byte for byte but for the primary superblock ...
    golden, partition = (dest / 'root.img').read_bytes(), root_partition(image)
    assert len(golden) == len(partition) == image['root_size']
    assert golden[:SUPERBLOCK.start] == partition[:SUPERBLOCK.start]
    assert golden[SUPERBLOCK.stop:] == partition[SUPERBLOCK.stop:]
    (tmp_path / 'partition-head').write_bytes(partition[:4096])
    sb, factory_sb = read_superblock(str(dest / 'root.img')), read_superblock(str(tmp_path / 'partition-head'))
    assert sb == dict(factory_sb, csum_seed=True)  # clones get a UUID of their own without rewriting checksums
    assert sb['uuid'] == manifest['root_uuid'] and sb['label'] == 'rootfs'
    assert (dest / 'root.img').stat().st_blocks * 512 < image['root_size'] // 2  # written sparsely
    # ... and, mounted read-only, entry by entry as the factory built it (owners, modes, links, devices, xattrs).
    with mounted_ro(dest / 'root.img', tmp_path / 'root-view') as view:
        got, want = describe(view), expected_tree(image['expect'])
        assert sorted(got) == sorted(want)
        for path, entry in want.items():
            assert got[path] == entry, path
        assert got['usr/bin/ping']['xattrs']['security.capability']  # the capability survived
        assert len(got['usr/bin/busybox']['links']) == 3
        assert (view / 'var/lib/sparse/big.bin').stat().st_blocks * 512 < 1024 * 1024  # still sparse


def test_raw_image_checksum_and_the_retired_root_extract(images, store):
    image = images['good-img']
    result = bakeform(store, name='raw', src=image['path'], checksum=sidecar(image), root_extract='fuse')
    assert result['changed'] is True, result
    assert result['manifest']['image_size'] == result['manifest']['source_size'] == os.path.getsize(image['path'])
    assert 'root_extract' in json.dumps(result.get('deprecations') or result.get('warnings'))
    golden, partition = (store / 'raw/generations/1/root.img').read_bytes(), root_partition(image)
    assert golden[SUPERBLOCK.stop:] == partition[SUPERBLOCK.stop:]
    assert read_superblock(image['path'], image['root_offset'])['uuid'] == result['manifest']['root_uuid']


BROKEN = [
    ('truncated-xz', 'truncated .xz file'),
    ('truncated', 'runs past the end of the image'),
    ('bad-checksum', 'checksum mismatch'),
    ('no-fat', 'no FAT boot partition'),
    ('gpt', 'GPT partition table'),
    ('random', 'no MBR boot signature'),
    ('empty', 'is empty'),
    ('past-end', 'partition 2 runs past the end of the image'),
]


@pytest.mark.parametrize(('variant', 'message'), BROKEN)
def test_broken_images_fail_clearly_and_change_nothing(images, store, variant, message):
    # A store that already holds a bakeform: it must come out byte for byte the same.
    good = bakeform(store, name='keep', src=images['other-xz']['path'])
    assert good['changed'] is True, good
    before = snapshot(store)
    image = images[variant]
    args = {'name': 'broken', 'src': image['path']}
    if variant == 'bad-checksum':
        args['checksum'] = sidecar(image)
    result = bakeform(store, **args)
    assert result.get('failed') is True, result
    assert result['changed'] is False
    assert message in result['msg']
    assert 'broken' in result['msg']
    if variant != 'bad-checksum':
        assert image['path'] in result['msg']  # names the file
    assert snapshot(store) == before


def test_random_raw_bytes_are_not_an_image(store, tmp_path):
    raw = tmp_path / 'noise.img'
    raw.write_bytes(os.urandom(4096).replace(b'\xfd7zXZ', b'xxxxx'))
    result = bakeform(store, name='noise', src=str(raw))
    assert result.get('failed') and 'no MBR boot signature' in result['msg'] and str(raw) in result['msg']
    assert result['changed'] is False and os.listdir(store) == []


def test_same_name_other_content_is_the_next_generation(images, store):
    """What needed force: true once is a new generation now; force is accepted, deprecated and changes nothing."""
    first, second = images['good-xz'], images['other-xz']
    first_uuid = bakeform(store, name='bf', src=first['path'])['manifest']['root_uuid']
    gen1 = snapshot(store / 'bf/generations/1')
    replaced = bakeform(store, diff=True, name='bf', src=second['path'], force=True)
    assert replaced['changed'] is True and (replaced['generation'], replaced['current']) == (2, 2)
    assert 'force' in json.dumps(replaced.get('deprecations'))
    assert replaced['diff']['before']['current'] == 'bf@1' and replaced['diff']['after']['current'] == 'bf@2'
    assert replaced['manifest']['models'] == ['4']
    assert sorted(os.listdir(store / 'bf/generations')) == ['1', '2']
    assert not (store / 'bf/generations/2/boot/start.elf').exists()
    assert (store / 'bf/generations/1/boot/start.elf').exists()
    assert snapshot(store / 'bf/generations/1') == gen1  # a generation is never changed once made
    assert read_superblock(str(store / 'bf/generations/2/root.img'))['uuid'] == replaced['manifest']['root_uuid']
    assert replaced['manifest']['root_uuid'] != first_uuid


def test_absent_removes(images, store):
    bakeform(store, name='bf', src=images['other-xz']['path'])
    assert bakeform(store, check=True, name='bf', state='absent')['changed']
    assert (store / 'bf').exists()
    assert bakeform(store, name='bf', state='absent')['changed']
    assert os.listdir(store) == []
    assert not bakeform(store, name='bf', state='absent')['changed']


def test_sigkill_mid_ingest_leaves_store_as_it_was(tmp_path, store):
    # A large root partition, so the kill lands while it streams into root.img.
    image = build_image(tmp_path / 'big.img', profile='realistic', root_files=4000, root_mb=100, seed=5)
    before = snapshot(store)
    argv = module_argv('bakeform', {'name': 'big', 'src': image['path'], 'store': str(store),
                                    'lock_file': str(tmp_path / 'pifleet.lock')})
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            scratch = [n for n in os.listdir(store) if n.startswith('.pifleet-tmp-')]
            root = store / scratch[0] / 'build' / 'root.img' if scratch else None
            if root and root.exists() and root.stat().st_blocks * 512 > (8 << 20):
                break
            time.sleep(0.002)
        assert proc.poll() is None, 'the ingest finished before it could be killed'
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    # xz and every other child die with the module (its pipe): nothing mounted, no loop device.
    assert loops_backed_by(store) == [] and mounts_below(store) == []
    assert [n for n in os.listdir(store) if not n.startswith('.')] == []
    leftovers = [n for n in os.listdir(store) if n.startswith('.pifleet-tmp-big-')]
    assert len(leftovers) == 1  # invisible until the next run sweeps it
    assert {k: v for k, v in snapshot(store).items() if not k.startswith('.pifleet-tmp-')} == before

    result = bakeform(store, name='big', src=image['path'])
    assert result['changed'] is True, result
    assert result['swept'] == leftovers
    assert sorted(os.listdir(store)) == ['big']
    assert (store / 'big/generations/1/root.img').stat().st_size == image['root_size']


@pytest.fixture
def http_dir(tmp_path):
    """An HTTP server on loopback serving ``tmp_path/www``; yields (base URL, directory, handler class)."""
    www = tmp_path / 'www'
    www.mkdir()
    with serving(www) as (base, handler):
        yield base, www, handler


def serve(www, image, name=None):
    return serve_file(www, image['path'], name)


def test_url_source_is_streamed_verified_and_not_refetched(images, store, http_dir):
    base, www, handler = http_dir
    image = images['other-xz']
    url = base + serve(www, image)
    args = {'name': 'net', 'url': url, 'checksum': sidecar(image)}
    first = bakeform(store, **args)
    assert first['changed'] is True, first
    assert first['manifest']['source'] == url and first['manifest']['source_stat'] is None
    assert handler.requests == 1 and handler.sent == os.path.getsize(image['path'])
    gen1 = store / 'net/generations/1'
    assert sorted(os.listdir(gen1)) == ['boot', 'boot.img', 'manifest.json', 'root.img']  # no download left
    assert bakeform(store, **args)['changed'] is False
    assert handler.requests == 1  # known checksum: nothing fetched
    failed = bakeform(store, name='net3', url=url + '.nope', checksum=args['checksum'])
    assert failed.get('failed') and 'HTTP status 404' in failed['msg'] and failed['changed'] is False
    assert sorted(os.listdir(store)) == ['net']


def watch(store, stop, seen):
    """Record every name that shows up in the store's scratch directories until ``stop`` is set."""
    while not stop.is_set():
        for base, dirs, files in os.walk(store):
            seen.update(os.path.relpath(os.path.join(base, n), store).split('/', 1)[-1] for n in dirs + files)
        time.sleep(0.002)


@pytest.mark.parametrize('source', ['url', 'src'])
def test_a_wrong_checksum_is_found_before_anything_is_unpacked(images, store, http_dir, source):
    """A source that is not even an image, with a wrong checksum: the checksum fails first, nothing is unpacked."""
    base, www, handler = http_dir
    good = bakeform(store, name='keep', src=images['other-xz']['path'])
    assert good['changed'] is True, good
    before = snapshot(store)
    image = images['random']  # unpacking it would fail with 'no MBR boot signature'
    args = {'name': 'wrong', 'checksum': 'sha256:' + '1' * 64}
    if source == 'url':
        handler.pause = 0.01  # the download takes a while: long enough to be watched
        args['url'] = base + serve(www, image)
    else:
        args['src'] = image['path']
    stop, seen = threading.Event(), set()
    watcher = threading.Thread(target=watch, args=(store, stop, seen))
    watcher.start()
    try:
        result = bakeform(store, **args)
    finally:
        stop.set()
        watcher.join()
    assert result.get('failed') and 'checksum mismatch for bakeform wrong' in result['msg'], result
    assert 'nothing was unpacked' in result['msg'] and result['changed'] is False
    assert not {'boot.fat', 'build/root.img'} & seen, sorted(seen)  # neither partition file was ever begun
    if source == 'url':
        assert 'download' in seen and handler.sent == os.path.getsize(image['path'])
    assert snapshot(store) == before


@pytest.fixture(scope='module')
def bomb(tmp_path_factory):
    """A small .xz: a good image followed by 2 GiB of zeros, then a stream that is not xz at all.

    An ingest that unpacked it to the end would fail on the last part ('not a valid .xz stream');
    one that stops at max_size never reaches it.
    """
    top = tmp_path_factory.mktemp('bomb')
    image = build_image(top / 'good.img', seed=31)
    path = top / 'bomb.img.xz'
    with open(path, 'wb') as out:
        subprocess.run(['xz', '-T0', '-1', '-c', image['path']], stdout=out, check=True)
        zeros = subprocess.run(['xz', '-T0', '-1', '-c'], input=bytes(256 << 20), capture_output=True,
                               check=True).stdout
        out.write(zeros * 8)
        out.write(b'\xfd7zXZ\x00' + os.urandom(64))  # an xz header, then garbage
    return {'path': str(path), 'image': image}


def test_max_size_stops_a_small_xz_that_unpacks_beyond_it(bomb, store):
    assert os.path.getsize(bomb['path']) < 8 << 20
    whole = bakeform(store, name='bomb', src=bomb['path'], max_size='4G')  # the control: unpacked to its end
    assert whole.get('failed') and 'not a valid .xz stream' in whole['msg'], whole
    assert whole['changed'] is False and os.listdir(store) == []

    limit = bomb['image']['root_offset'] + bomb['image']['root_size'] + (64 << 20)
    result = bakeform(store, name='bomb', src=bomb['path'], max_size=str(limit))
    assert result.get('failed') and 'unpacks to more than max_size (%d bytes)' % limit in result['msg'], result
    assert 'raise max_size' in result['msg'] and result['changed'] is False
    assert os.listdir(store) == []


def test_a_full_store_says_so_and_changes_nothing(images, tmp_path):
    with loop_fs(tmp_path, 'ext4', '64M') as mnt:  # the tiny image needs 112 MiB for its two partitions
        store = mnt / 'store'
        store.mkdir()
        (store / 'keep').mkdir()
        (store / 'keep/manifest.json').write_text('{}')
        before = snapshot(store)
        result = run_module('bakeform', {'name': 'bf', 'src': images['good-xz']['path'], 'store': str(store),
                                         'lock_file': str(tmp_path / 'pifleet.lock')})
        assert result.get('failed'), result
        assert 'the bakeform store %s has ' % store in result['msg'] and 'needs up to 112 MiB' in result['msg']
        assert 'nothing was changed: make room there or use a larger store' in result['msg']
        assert result['changed'] is False and snapshot(store) == before
        assert mounts_below(store) == []


def test_playbook_check_then_apply_then_idempotent(images, tmp_path):
    inventory = tmp_path / 'hosts.yml'
    inventory.write_text(
        'bakery:\n  hosts:\n    lab-bakery:\n      ansible_connection: local\n'
        '      ansible_python_interpreter: %s\n'
        '      pifleet_bakeform_store: %s\n'
        '      pifleet_bakeforms:\n        - {name: one, src: %s}\n        - {name: two, src: %s}\n'
        % (sys.executable, tmp_path / 'store', images['good-xz']['path'], images['other-xz']['path']))

    def play(*extra):
        playbook = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')
        proc = subprocess.run([playbook, '-i', str(inventory), str(REPO / 'playbooks/bakeforms.yml'), *extra],
                              capture_output=True, text=True, check=False, timeout=600,
                              env=dict(os.environ, ANSIBLE_NOCOLOR='1'))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    assert 'changed=1' in play('--check', '--diff')
    assert not (tmp_path / 'store').exists()
    assert 'changed=1' in play()
    assert sorted(os.listdir(tmp_path / 'store')) == ['one', 'two']
    assert 'changed=0' in play()
    assert 'changed=0' in play('--check', '--diff')
