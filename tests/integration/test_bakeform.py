# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bakeform on real factory images: faithful extraction, idempotence, bad input, kill -9, URLs."""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fstree import describe, expected_tree, loop_fs, loops_backed_by, mounts_below, snapshot
from modrun import module_argv, run_module
from piimage import build_image

REPO = Path(__file__).resolve().parents[2]


def sidecar(image):
    return Path(image['path'] + '.sha256').read_text().strip()


@pytest.mark.parametrize('method', ['kernel', 'fuse'])
def test_ingest_is_faithful_and_idempotent(images, store, method):
    image = images['good-xz']
    args = {'name': 'bookworm', 'src': image['path'], 'store': str(store), 'root_extract': method}

    planned = run_module('bakeform', args, check=True, diff=True)
    assert planned['changed'] is True, planned
    assert planned['diff']['after']['sha256'] == image['sha256'].split(':')[1]
    assert os.listdir(store) == []

    done = run_module('bakeform', args, diff=True)
    assert done['changed'] is True, done
    manifest = done['manifest']
    assert manifest['sha256'] == image['sha256'].split(':')[1]
    assert manifest['models'] == ['3', '4', '5']
    assert manifest['kernels'] == ['kernel8.img', 'kernel_2712.img']
    assert manifest['pretty_name'] == 'Debian GNU/Linux 12 (bookworm)'
    assert manifest['root_extract'] == method
    assert manifest['partition_table'] == {'type': 'mbr', 'disk_id': image['disk_id']}
    assert [(p['start'], p['size']) for p in manifest['partitions']] == [
        (image['boot_offset'], image['boot_size']), (image['root_offset'], image['root_size'])]
    assert sorted(os.listdir(store)) == ['bookworm']
    dest = store / 'bookworm'
    assert sorted(os.listdir(dest)) == ['boot', 'manifest.json', 'root']

    # Boot files: every one, byte for byte, readable by an unprivileged TFTP service.
    assert manifest['boot_files'] == sorted(image['boot_files'])
    for rel, digest in image['boot_files'].items():
        path = dest / 'boot' / rel
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, rel
        assert path.stat().st_mode & 0o777 == 0o644

    # Golden root: entry by entry as the factory built it (owners, modes, links, devices, xattrs).
    got, want = describe(dest / 'root'), expected_tree(image['expect'])
    assert sorted(got) == sorted(want)
    for path, entry in want.items():
        assert got[path] == entry, path
    assert got['usr/bin/ping']['xattrs']['security.capability']  # the capability survived
    assert len(got['usr/bin/busybox']['links']) == 3
    assert (dest / 'root/var/lib/sparse/big.bin').stat().st_blocks * 512 < 1024 * 1024  # still sparse

    again = run_module('bakeform', args, check=True)
    assert again['changed'] is False
    again = run_module('bakeform', args)
    assert again['changed'] is False
    assert again['manifest']['created'] == manifest['created']  # not re-extracted


def test_raw_image_and_checksum(images, store):
    image = images['good-img']
    result = run_module('bakeform', {'name': 'raw', 'src': image['path'], 'checksum': sidecar(image),
                                     'store': str(store)})
    assert result['changed'] is True, result
    assert result['manifest']['image_size'] == result['manifest']['source_size'] == os.path.getsize(image['path'])


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
    good = run_module('bakeform', {'name': 'keep', 'src': images['other-xz']['path'], 'store': str(store)})
    assert good['changed'] is True, good
    before = snapshot(store)
    image = images[variant]
    args = {'name': 'broken', 'src': image['path'], 'store': str(store)}
    if variant == 'bad-checksum':
        args['checksum'] = sidecar(image)
    result = run_module('bakeform', args)
    assert result.get('failed') is True, result
    assert message in result['msg']
    assert 'broken' in result['msg']
    if variant != 'bad-checksum':
        assert image['path'] in result['msg']  # names the file
    assert snapshot(store) == before


def test_random_raw_bytes_are_not_an_image(images, store, tmp_path):
    raw = tmp_path / 'noise.img'
    raw.write_bytes(os.urandom(4096).replace(b'\xfd7zXZ', b'xxxxx'))
    result = run_module('bakeform', {'name': 'noise', 'src': str(raw), 'store': str(store)})
    assert result.get('failed') and 'no MBR boot signature' in result['msg'] and str(raw) in result['msg']
    assert os.listdir(store) == []


def test_same_name_other_content_needs_force(images, store):
    first, second = images['good-xz'], images['other-xz']
    run_module('bakeform', {'name': 'bf', 'src': first['path'], 'store': str(store)})
    before = snapshot(store)
    refused = run_module('bakeform', {'name': 'bf', 'src': second['path'], 'store': str(store)})
    assert refused.get('failed') and 'force: true' in refused['msg']
    assert snapshot(store) == before
    replaced = run_module('bakeform', {'name': 'bf', 'src': second['path'], 'store': str(store), 'force': True},
                          diff=True)
    assert replaced['changed'] is True
    assert replaced['diff']['before']['models'] == ['3', '4', '5']
    assert replaced['manifest']['models'] == ['4']
    assert sorted(os.listdir(store)) == ['bf']
    assert not (store / 'bf/boot/start.elf').exists()


def test_absent_removes(images, store):
    run_module('bakeform', {'name': 'bf', 'src': images['other-xz']['path'], 'store': str(store)})
    assert run_module('bakeform', {'name': 'bf', 'state': 'absent', 'store': str(store)}, check=True)['changed']
    assert (store / 'bf').exists()
    assert run_module('bakeform', {'name': 'bf', 'state': 'absent', 'store': str(store)})['changed']
    assert os.listdir(store) == []
    assert not run_module('bakeform', {'name': 'bf', 'state': 'absent', 'store': str(store)})['changed']


def test_sigkill_mid_ingest_leaves_store_as_it_was(tmp_path, store):
    # Enough files that the root copy takes a while, so the kill lands inside it.
    image = build_image(tmp_path / 'big.img', profile='realistic', root_files=4000, root_mb=100, seed=5)
    before = snapshot(store)
    argv = module_argv('bakeform', {'name': 'big', 'src': image['path'], 'store': str(store)})
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            scratch = [n for n in os.listdir(store) if n.startswith('.pifleet-tmp-')]
            if scratch and (store / scratch[0] / 'build/root/usr').exists():
                break
            time.sleep(0.005)
        assert proc.poll() is None, 'the ingest finished before it could be killed'
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    # The copy dies with the module and the private mount namespace with it: nothing leaks.
    deadline = time.monotonic() + 10
    while (loops_backed_by(store) or mounts_below(store)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loops_backed_by(store) == [] and mounts_below(store) == []
    assert [n for n in os.listdir(store) if not n.startswith('.')] == []
    leftovers = [n for n in os.listdir(store) if n.startswith('.pifleet-tmp-big-')]
    assert len(leftovers) == 1  # invisible until the next run sweeps it
    assert {k: v for k, v in snapshot(store).items() if not k.startswith('.pifleet-tmp-')} == before

    result = run_module('bakeform', {'name': 'big', 'src': image['path'], 'store': str(store)})
    assert result['changed'] is True, result
    assert result['swept'] == leftovers
    assert sorted(os.listdir(store)) == ['big']


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests = 0

    def do_GET(self):
        type(self).requests += 1
        super().do_GET()

    def log_message(self, *args):
        pass


def test_url_source_is_streamed_and_not_refetched(images, store):
    image = images['other-xz']
    handler = type('Handler', (CountingHandler,), {})
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), lambda *a: handler(*a, directory=os.path.dirname(image['path'])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = 'http://127.0.0.1:%d/%s' % (server.server_port, os.path.basename(image['path']))
        args = {'name': 'net', 'url': url, 'checksum': sidecar(image), 'store': str(store)}
        first = run_module('bakeform', args)
        assert first['changed'] is True, first
        assert first['manifest']['source'] == url
        assert handler.requests == 1
        assert run_module('bakeform', args)['changed'] is False
        assert handler.requests == 1  # known checksum: nothing fetched
        wrong = dict(args, name='net2', checksum='sha256:' + '0' * 64)
        failed = run_module('bakeform', wrong)
        assert failed.get('failed') and 'checksum mismatch' in failed['msg']
        missing = dict(args, name='net3', url=url + '.nope')
        failed = run_module('bakeform', missing)
        assert failed.get('failed') and 'HTTP status 404' in failed['msg']
        assert sorted(os.listdir(store)) == ['net']
    finally:
        server.shutdown()
        server.server_close()


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


@pytest.fixture
def btrfs_store(tmp_path):
    """A store on a btrfs file system in a loop file."""
    with loop_fs(tmp_path, 'btrfs', size='512M') as mnt:
        yield mnt / 'store'


def test_golden_root_is_a_subvolume_on_btrfs(images, btrfs_store):
    image = images['good-xz']
    args = {'name': 'bf', 'src': image['path'], 'store': str(btrfs_store)}
    result = run_module('bakeform', args)
    assert result['changed'] is True, result
    assert result['manifest']['root_subvolume'] is True
    root = btrfs_store / 'bf' / 'root'
    assert subprocess.run(['btrfs', 'subvolume', 'show', str(root)], capture_output=True, check=False).returncode == 0
    assert describe(root) == expected_tree(image['expect'])
    replaced = run_module('bakeform', dict(args, src=images['other-xz']['path'], force=True))
    assert replaced['changed'] is True and replaced['manifest']['root_subvolume'] is True
    assert run_module('bakeform', dict(args, state='absent'))['changed'] is True
    assert os.listdir(btrfs_store) == []
    listed = subprocess.run(['btrfs', 'subvolume', 'list', str(btrfs_store.parent)],
                            capture_output=True, text=True, check=True)
    assert listed.stdout.strip() == ''  # no orphaned subvolumes


def test_golden_root_is_a_plain_directory_elsewhere(images, store):
    result = run_module('bakeform', {'name': 'bf', 'src': images['other-xz']['path'], 'store': str(store)})
    assert result['manifest']['root_subvolume'] is False
