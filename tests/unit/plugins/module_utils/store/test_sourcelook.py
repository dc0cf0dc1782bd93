# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet's read-only look at which bakeforms' sources are stored: the real command through /bin/sh on a real
store layout, its output read back, against what the module's own ``same_source`` decides."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.store import sourcelook as _look
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import same_source, source_stat

DIGEST = 'ab' * 32


def store_with(tmp_path, name, *manifests):
    """A store whose bakeform ``name`` holds a generation per manifest (numbered from 1)."""
    store = tmp_path / 'store'
    for number, manifest in enumerate(manifests, 1):
        gen = store / name / 'generations' / str(number)
        gen.mkdir(parents=True)
        (gen / 'manifest.json').write_text(json.dumps(manifest, indent=2))
    return store


def image(tmp_path, file_name='img.xz', content=b'image'):
    path = tmp_path / file_name
    path.write_bytes(content)
    return path


def ingested(path):
    """The manifest keys a generation ingested from ``path`` records (as bakeform writes them)."""
    return {'source': os.path.abspath(path), 'source_stat': source_stat(str(path)), 'sha256': DIGEST}


def looked(items, store):
    cmd = _look.command(items, str(store))
    if not cmd:
        return []
    proc = subprocess.run(['/bin/sh', '-c', cmd], capture_output=True, text=True, check=False, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return _look.stored(proc.stdout, items)


def test_an_unchanged_local_source_is_stored_as_the_module_finds_it(tmp_path):
    src = image(tmp_path, "an image's name with spaces.img")
    store = store_with(tmp_path, 'lite', {'source': '/elsewhere.img', 'sha256': 'cd' * 32}, ingested(src))
    items = [{'name': 'lite', 'src': str(src)}]
    assert looked(items, store) == ['lite']
    manifests = {1: {'source': '/elsewhere.img', 'sha256': 'cd' * 32}, 2: ingested(src)}
    assert same_source(manifests, str(src), None) == (2, DIGEST)  # the module's own test agrees


@pytest.mark.parametrize('change', ['touched', 'replaced', 'moved', 'removed'])
def test_a_changed_or_missing_source_is_left_to_the_module(tmp_path, change):
    src = image(tmp_path)
    store = store_with(tmp_path, 'lite', ingested(src))
    if change == 'touched':
        os.utime(src, ns=(1, 1_000_000_001))
    elif change == 'replaced':
        src.unlink()
        image(tmp_path, content=b'image')  # same content, another inode
    elif change == 'moved':
        src = src.rename(tmp_path / 'other.xz')
    else:
        src.unlink()
    assert looked([{'name': 'lite', 'src': str(src)}], store) == []


def test_mtimes_before_1970_and_to_the_nanosecond_read_as_python_does(tmp_path):
    for ns in (-1_500_000_000, 1_000_000_001, 1_796_665_724_003_935_933):
        src = image(tmp_path, 'img-%d.xz' % ns)
        os.utime(src, ns=(0, ns))
        store = store_with(tmp_path / str(ns), 'lite', ingested(src))
        assert looked([{'name': 'lite', 'src': str(src)}], store) == ['lite'], ns


def test_an_inline_checksum_settles_it_for_a_download_or_a_file(tmp_path):
    store = store_with(tmp_path, 'lite', {'source': 'https://mirror.example.org/lite.img.xz', 'sha256': DIGEST})
    items = [{'name': 'lite', 'url': 'https://mirror.example.org/new.img.xz', 'checksum': 'sha256:' + DIGEST.upper()},
             {'name': 'lite', 'src': '/nowhere.img', 'checksum': 'sha256:' + DIGEST}]
    assert looked(items, store) == ['lite', 'lite']
    other = [{'name': 'lite', 'url': 'https://mirror.example.org/new.img.xz', 'checksum': 'sha256:' + 'cd' * 32}]
    assert looked(other, store) == []


@pytest.mark.parametrize('item', [
    {'name': 'lite', 'url': 'https://m.example.org/a.img.xz', 'checksum': 'sha256:https://m.example.org/a.sha256'},
    {'name': 'lite', 'src': 'relative/a.img.xz'},
    {'name': 'lite', 'src': '~/a.img.xz'},
    {'name': 'lite', 'src': '/srv/$IMAGES/a.img.xz'},  # the module expands it; a shell would too, differently
    {'name': 'lite', 'src': '/a.img.xz', 'checksum': 'sha256:' + '0' * 64},  # a placeholder: the module refuses it
    {'name': 'lite', 'src': '/a.img.xz', 'checksum': 'md5:abc'},
    {'name': 'Bad/Name', 'src': '/a.img.xz'},
    {'name': 'lite'},
    'lite',
])
def test_what_it_cannot_tell_is_not_even_looked_up(item):
    assert _look.candidates([item]) == [] and _look.command([item], '/srv/pifleet/bakeforms') == ''


def test_a_store_without_generations_and_a_broken_manifest_clear_nothing(tmp_path):
    src = image(tmp_path)
    store = store_with(tmp_path, 'lite', ingested(src))
    (store / 'lite/generations/1/manifest.json').write_text('{"source": ')  # cut short
    items = [{'name': 'lite', 'src': str(src)}, {'name': 'fresh', 'src': str(src)}]
    assert looked(items, store) == []


def test_output_over_a_terminal_and_lines_it_does_not_know_are_read_safely(tmp_path):
    src = image(tmp_path)
    store = store_with(tmp_path, 'lite', ingested(src))
    items = [{'name': 'lite', 'src': str(src)}]
    proc = subprocess.run(['/bin/sh', '-c', _look.command(items, str(store))], capture_output=True, text=True,
                          check=True)
    noisy = 'Welcome to the bakery\r\n' + proc.stdout.replace('\n', '\r\n') + 'stat: complaint\r\n'
    assert _look.stored(noisy, items) == ['lite']
    # A line that names an item it was not asked about, or a stat in another shape, clears nothing.
    assert _look.stored(proc.stdout.replace(_look.ITEM + '0', _look.ITEM + '7'), items) == []
    assert _look.stored(proc.stdout.replace(_look.STAT, _look.STAT + 'x '), items) == []
    assert _look.stored('', items) == [] and _look.stored(None, items) == []
