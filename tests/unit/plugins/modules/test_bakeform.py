# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bakeform's main(): argument handling, decisions and check mode, on a store made by hand.

Real ingests of real images are in tests/integration/test_bakeform.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.store import bakeform as _bakeform
from ansible_collections.pifleet.netboot.plugins.modules import bakeform


@pytest.fixture
def store(tmp_path):
    """A store holding bakeform 'golden' ingested from tmp/src.img (content b'image-one')."""
    src = tmp_path / 'src.img'
    src.write_bytes(b'image-one')
    dest = tmp_path / 'store' / 'golden'
    dest.mkdir(parents=True)
    manifest = {
        'name': 'golden', 'source': str(src), 'sha256': hashlib.sha256(b'image-one').hexdigest(),
        'source_stat': _bakeform.source_stat(str(src)), 'models': ['4'], 'format': 2,
    }
    (dest / 'manifest.json').write_text(json.dumps(manifest))
    (dest / 'boot').mkdir()
    (dest / 'root.img').write_bytes(b'golden root file system')
    (dest / 'boot.img').write_bytes(b'boot file system')
    return tmp_path


def args(store, **extra):
    return dict({'name': 'golden', 'store': str(store / 'store'), 'lock_file': str(store / 'pifleet.lock')}, **extra)


INVALID = [
    ({'name': 'Bad Name', 'src': '/x'}, 'bakeform name \'Bad Name\' is not valid'),
    ({'checksum': 'md5:abc', 'src': '/x'}, 'not of the form "sha256:<64 hex digits>"'),
    ({'url': 'http://127.0.0.1:9/x.img'}, 'missing parameter(s) required by \'url\': checksum'),
    ({'url': 'http://127.0.0.1:9/x.img', 'src': '/x', 'checksum': 'sha256:' + 'a' * 64}, 'mutually exclusive'),
    ({}, 'state is present but any of the following are missing: src, url'),
    ({'src': '/nonexistent/image.img.xz'}, 'source of bakeform golden not found: /nonexistent/image.img.xz'),
]


@pytest.mark.parametrize(('extra', 'message'), INVALID)
def test_invalid_arguments_fail_clearly(run_module, store, extra, message):
    before = sorted(p.name for p in (store / 'store').rglob('*'))
    result = run_module(bakeform.main, args(store, **extra))
    assert result.failed
    assert message in result.result['msg']
    assert sorted(p.name for p in (store / 'store').rglob('*')) == before


def test_same_source_is_unchanged_without_reading(run_module, store):
    result = run_module(bakeform.main, args(store, src=str(store / 'src.img')))
    assert not result.failed and result.result['changed'] is False
    assert result.result['manifest']['name'] == 'golden'


def test_same_checksum_is_unchanged_even_for_a_url(run_module, store):
    # Port 9 on loopback: nothing listens; a fetch would fail, so this proves no fetch happens.
    digest = hashlib.sha256(b'image-one').hexdigest()
    result = run_module(bakeform.main, args(store, url='http://127.0.0.1:9/img.xz', checksum='sha256:' + digest))
    assert not result.failed and result.result['changed'] is False


def test_different_content_needs_force(run_module, store):
    other = store / 'other.img'
    other.write_bytes(b'image-two')
    result = run_module(bakeform.main, args(store, src=str(other)))
    assert result.failed
    assert 'already holds another image' in result.result['msg']
    assert 'force: true' in result.result['msg']
    assert hashlib.sha256(b'image-two').hexdigest() in result.result['msg']


def test_check_mode_predicts_replace_with_diff(run_module, store):
    other = store / 'other.img'
    other.write_bytes(b'image-two')
    result = run_module(bakeform.main, args(store, src=str(other), force=True), check_mode=True, diff=True)
    assert not result.failed and result.result['changed'] is True
    diff = result.result['diff']
    assert diff['before']['sha256'] == hashlib.sha256(b'image-one').hexdigest()
    assert diff['after']['sha256'] == hashlib.sha256(b'image-two').hexdigest()
    assert json.loads((store / 'store/golden/manifest.json').read_text())['sha256'] == diff['before']['sha256']


def test_check_mode_new_bakeform_writes_nothing(run_module, store):
    params = args(store, name='fresh', src=str(store / 'src.img'))
    result = run_module(bakeform.main, params, check_mode=True, diff=True)
    assert result.result['changed'] is True
    assert result.result['diff']['before'] == {}
    assert result.result['diff']['after']['name'] == 'fresh'
    assert not (store / 'store' / 'fresh').exists()


def test_absent(run_module, store):
    result = run_module(bakeform.main, args(store, state='absent'), check_mode=True)
    assert result.result['changed'] is True and (store / 'store/golden').exists()
    result = run_module(bakeform.main, args(store, state='absent'))
    assert result.result['changed'] is True
    assert list((store / 'store').iterdir()) == []
    result = run_module(bakeform.main, args(store, state='absent'))
    assert result.result['changed'] is False


def test_directory_without_manifest_is_not_clobbered(run_module, store):
    (store / 'store' / 'stranger').mkdir()
    result = run_module(bakeform.main, args(store, name='stranger', src=str(store / 'src.img')))
    assert result.failed and 'has no manifest.json' in result.result['msg']


def test_non_root_is_told_to_become(run_module, store, monkeypatch):
    monkeypatch.setattr(bakeform.os, 'geteuid', lambda: 1000)
    result = run_module(bakeform.main, args(store, name='fresh', src=str(store / 'src.img')))
    assert result.failed and 'add become: true' in result.result['msg']


@pytest.mark.parametrize('broken', ['root.img', 'boot.img', 'boot', 'format'])
def test_incomplete_or_older_bakeform_is_rebuilt_without_force(run_module, store, broken):
    # A manifest without root.img, boot.img or boot/, or of store format 1 (a root directory): the same
    # source means rebuild, not refuse.
    dest = store / 'store/golden'
    if broken == 'format':
        manifest = json.loads((dest / 'manifest.json').read_text())
        (dest / 'manifest.json').write_text(json.dumps(dict(manifest, format=1)))
        (dest / 'root').mkdir()
    elif broken == 'boot':
        (dest / 'boot').rmdir()
    else:
        (dest / broken).unlink()
    result = run_module(bakeform.main, args(store, src=str(store / 'src.img')), check_mode=True, diff=True)
    assert not result.failed and result.result['changed'] is True
    assert result.result['diff']['before']['sha256'] == result.result['diff']['after']['sha256']
    assert any('is incomplete or of an older store format: rebuilding it from the same source' in w
               for w in result.result['warnings'])


def test_a_failed_ingest_reports_no_change(run_module, store):
    """A source that is not an image fails, says why, and reports changed=false (nothing changed)."""
    junk = store / 'junk.img'
    junk.write_bytes(b'not an image at all' * 1000)
    result = run_module(bakeform.main, args(store, name='fresh', src=str(junk)))
    assert result.failed and result.result['changed'] is False
    assert 'no MBR boot signature' in result.result['msg'] and not (store / 'store/fresh').exists()
