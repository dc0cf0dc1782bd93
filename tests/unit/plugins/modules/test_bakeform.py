# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bakeform's main(): arguments, generations, current, pinned, retention, removal and migration decisions, check
mode and diff, on stores made by hand (files that stand for images: nothing here reads them as file systems).

Real ingests, captures and migrations of real images are in tests/integration/test_bakeform.py and
test_generations.py.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from modrun import run_module as run_process

from ansible_collections.pifleet.netboot.plugins.module_utils.store import bakeform as _bakeform
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as gen
from ansible_collections.pifleet.netboot.plugins.module_utils.store.checksum import without_credentials
from ansible_collections.pifleet.netboot.plugins.modules import bakeform

ZERO = 'sha256:' + '0' * 64


def sha(content):
    return hashlib.sha256(content).hexdigest()


def add_generation(store, name, number, content, *, src=None, origin=None):
    """Generation ``number`` of bakeform ``name``, ingested from ``content`` (at ``src`` when given)."""
    bakeform_ = gen.Bakeform(str(store), name)
    path = bakeform_.gen_dir(number)
    os.makedirs(os.path.join(path, 'boot'))
    manifest = {'name': name, 'bakeform': name, 'generation': number, 'format': 3, 'sha256': sha(content),
                'source': str(src) if src else '/images/%d.img' % number, 'created': '2026-01-0%dT00:00:00Z' % number,
                'origin': origin or {'kind': 'image'}, 'models': ['4'],
                'source_stat': _bakeform.source_stat(str(src)) if src else None}
    with open(os.path.join(path, 'manifest.json'), 'w') as handle:
        json.dump(manifest, handle)
    for name_ in ('root.img', 'boot.img'):
        with open(os.path.join(path, name_), 'wb') as handle:
            handle.write(b'file system of generation %d' % number)
    return manifest


def make_store(top, name='golden', count=1, current=None, pinned=()):
    """A format-3 store with ``count`` generations (content b'image-<N>'); generation 1 came from top/src.img."""
    src = top / 'src.img'
    src.write_bytes(b'image-1')
    store = top / 'store'
    index = gen.new_index(name)
    for number in range(1, count + 1):
        manifest = add_generation(store, name, number, b'image-%d' % number, src=src if number == 1 else None)
        index['generations'][str(number)] = gen.entry(manifest)
    index.update(current=current or count, next=count + 1, pinned=list(pinned))
    gen.write_index(gen.Bakeform(str(store), name), index)
    return store


def marker(top, serial, bakeform_name, generation=None, *, previous=False, hostname=None, content=None):
    roots = top / 'roots'
    roots.mkdir(exist_ok=True)
    data = {'serial': serial, 'hostname': hostname, 'bakeform': bakeform_name, 'generation': generation,
            'bakeform_sha256': sha(content) if content else None}
    (roots / ('%s%s.json' % (serial, '.prev' if previous else ''))).write_text(json.dumps(data))


def args(top, **extra):
    return dict({'name': 'golden', 'store': str(top / 'store'), 'lock_file': str(top / 'pifleet.lock'),
                 'roots_dir': str(top / 'roots'), 'units_dir': str(top / 'units')}, **extra)


def index_of(top, name='golden'):
    return json.loads((top / 'store' / name / 'bakeform.json').read_text())


def tree(top):
    return sorted(str(p.relative_to(top)) for p in (top / 'store').rglob('*'))


@pytest.fixture
def top(tmp_path):
    make_store(tmp_path)
    (tmp_path / 'roots').mkdir()
    return tmp_path


INVALID = [
    ({'name': 'Bad Name', 'src': '/x'}, 'bakeform name \'Bad Name\' is not valid'),
    ({'checksum': 'md5:abc', 'src': '/x'}, 'not of the form "sha256:<64 hex digits>"'),
    ({'checksum': ZERO, 'src': '/x'}, 'is a placeholder (all zeros), not the checksum of an image: put the sha256'),
    ({'checksum': 'sha256:ftp:/x', 'src': '/x'}, 'or "sha256:<URL of a checksum file>"'),
    ({'url': 'http://127.0.0.1:9/x.img'}, 'missing parameter(s) required by \'url\': checksum'),
    ({'url': 'http://127.0.0.1:9/x.img', 'src': '/x', 'checksum': 'sha256:' + 'a' * 64}, 'mutually exclusive'),
    ({'capture': {'serial': '3a4b5c6d'}, 'checksum': 'sha256:' + 'a' * 64}, 'mutually exclusive: capture|checksum'),
    ({'src': '/x', 'generation': 1}, 'generation is for state: absent'),
    ({'src': '/x', 'keep': 0}, 'keep must be at least 1'),
    ({'current': 0}, 'current: 0 is not a generation number'),
    ({'pinned': [1, -2]}, 'pinned: generation numbers are 1, 2, 3'),
    ({'src': '/nonexistent/image.img.xz'}, 'source of bakeform golden not found: /nonexistent/image.img.xz'),
    ({'name': 'fresh'}, 'bakeform fresh does not exist in'),
    ({'current': 7}, 'current: generation golden@7 not found: the generations of bakeform golden are 1'),
    ({'capture': {'serial': 'xyz'}}, 'capture: serial \'xyz\' is not a Pi serial'),
    ({'capture': {'serial': '3a4b5c6d'}}, 'capture: Pi 3a4b5c6d has no root made by pifleet.netboot.pi_root'),
]


@pytest.mark.parametrize(('extra', 'message'), INVALID)
def test_invalid_arguments_fail_clearly_and_change_nothing(run_module, top, extra, message):
    before = tree(top)
    result = run_module(bakeform.main, args(top, **extra))
    assert result.failed, result.result
    assert message in result.result['msg']
    assert result.result.get('changed', False) is False
    assert tree(top) == before


def test_the_zero_placeholder_fails_before_any_download(run_module, top):
    # Port 9 on loopback: nothing listens; the message must be the placeholder's, not a failed fetch.
    result = run_module(bakeform.main, args(top, url='http://127.0.0.1:9/x.img.xz', checksum=ZERO))
    assert result.failed and 'placeholder' in result.result['msg'] and 'nothing was fetched' in result.result['msg']


def test_same_source_is_unchanged_without_reading(run_module, top):
    result = run_module(bakeform.main, args(top, src=str(top / 'src.img')))
    assert not result.failed and result.result['changed'] is False
    assert (result.result['generation'], result.result['current']) == (1, 1)
    assert result.result['manifest']['generation'] == 1
    assert [g['label'] for g in result.result['generations']] == ['golden@1']


def test_same_checksum_is_unchanged_even_for_a_url(run_module, top):
    # Port 9 on loopback: nothing listens; a fetch would fail, so this proves no fetch happens.
    result = run_module(bakeform.main, args(top, url='http://127.0.0.1:9/img.xz', checksum='sha256:' + sha(b'image-1')))
    assert not result.failed and result.result['changed'] is False and result.result['generation'] == 1


def test_an_older_generations_source_changes_nothing(run_module, tmp_path):
    make_store(tmp_path, count=3)
    old = tmp_path / 'two.img'
    old.write_bytes(b'image-2')
    before = index_of(tmp_path)
    result = run_module(bakeform.main, args(tmp_path, src=str(old)))
    assert not result.failed and result.result['changed'] is False
    assert (result.result['generation'], result.result['current']) == (2, 3)
    assert index_of(tmp_path) == before


def test_check_mode_plans_the_next_generation_with_diff(run_module, top):
    other = top / 'other.img'
    other.write_bytes(b'image-two')
    before = tree(top)
    result = run_module(bakeform.main, args(top, src=str(other)), check_mode=True, diff=True)
    assert not result.failed and result.result['changed'] is True
    assert (result.result['generation'], result.result['current'], result.result['manifest']) == (2, 2, {})
    diff = result.result['diff']
    assert diff['before']['current'] == 'golden@1' and diff['after']['current'] == 'golden@2'
    assert diff['after']['generations']['golden@2']['sha256'] == sha(b'image-two')
    assert diff['before_header'].endswith('/store/golden/bakeform.json')
    assert tree(top) == before


def test_check_mode_on_a_new_bakeform_writes_nothing(run_module, top):
    result = run_module(bakeform.main, args(top, name='fresh', src=str(top / 'src.img')), check_mode=True, diff=True)
    assert result.result['changed'] is True and result.result['generation'] == 1
    assert result.result['diff']['before'] == {}
    assert result.result['diff']['after']['current'] == 'fresh@1'
    assert not (top / 'store' / 'fresh').exists()


def test_current_chooses_what_new_roots_get(run_module, tmp_path):
    make_store(tmp_path, count=3)
    planned = run_module(bakeform.main, args(tmp_path, current=2), check_mode=True)
    assert planned.result['changed'] is True and index_of(tmp_path)['current'] == 3
    done = run_module(bakeform.main, args(tmp_path, current=2), diff=True)
    assert done.result['changed'] is True and done.result['current'] == 2 and index_of(tmp_path)['current'] == 2
    diff = done.result['diff']
    assert (diff['before']['current'], diff['after']['current']) == ('golden@3', 'golden@2')
    assert [g['current'] for g in done.result['generations']] == [False, True, False]
    assert run_module(bakeform.main, args(tmp_path, current=2)).result['changed'] is False
    assert run_module(bakeform.main, args(tmp_path)).result['changed'] is False  # current stays until told


def test_pinned_is_recorded_and_unknown_ones_warned(run_module, tmp_path):
    make_store(tmp_path, count=2)
    result = run_module(bakeform.main, args(tmp_path, pinned=[1, 9]))
    assert result.result['changed'] is True and index_of(tmp_path)['pinned'] == [1]
    assert any('has no generation 9' in w for w in result.result['warnings'])
    assert [g['pinned'] for g in result.result['generations']] == [True, False]
    assert run_module(bakeform.main, args(tmp_path, pinned=[1])).result['changed'] is False
    assert run_module(bakeform.main, args(tmp_path)).result['changed'] is False  # not given: the index's stay


# (count, current, pinned, keep, markers as (serial, generation, previous), removed)
RETENTION = [
    (5, 5, [], 2, [('3a4b5c6d', 1, True)], [2, 3]),
    (5, 5, [], 3, [], [1, 2]),
    (5, 5, [2], 1, [('3a4b5c6d', 4, False)], [1, 3]),
    (5, 2, [], 2, [], [1, 3, 4]),  # the current one counted; the newest other one stays
    (3, 3, [], 1, [('0000000a', 1, False), ('0000000b', 2, True)], []),
    (2, 2, [], 3, [], []),
]


@pytest.mark.parametrize('case', RETENTION)
def test_retention(run_module, tmp_path, case):
    count, current, pinned, keep, markers, removed = case
    make_store(tmp_path, count=count, current=current, pinned=pinned)
    (tmp_path / 'roots').mkdir()
    for serial, number, previous in markers:
        marker(tmp_path, serial, 'golden', number, previous=previous, hostname='pi-%s' % serial[-2:])
    planned = run_module(bakeform.main, args(tmp_path, keep=keep), check_mode=True)
    assert planned.result['removed'] == removed and planned.result['changed'] is bool(removed)
    assert gen.Bakeform(str(tmp_path / 'store'), 'golden').ids() == list(range(1, count + 1))
    done = run_module(bakeform.main, args(tmp_path, keep=keep))
    assert done.result['removed'] == removed and done.result['changed'] is bool(removed)
    left = [n for n in range(1, count + 1) if n not in removed]
    assert gen.Bakeform(str(tmp_path / 'store'), 'golden').ids() == left
    assert sorted(int(k) for k in index_of(tmp_path)['generations']) == left
    assert [g['id'] for g in done.result['generations']] == left
    again = run_module(bakeform.main, args(tmp_path, keep=keep))
    assert again.result['changed'] is False and again.result['removed'] == []


def test_retention_keeps_a_generation_a_legacy_marker_names_by_content(run_module, tmp_path):
    make_store(tmp_path, count=3)
    marker(tmp_path, '3a4b5c6d', 'golden', content=b'image-1', hostname='old-pi')  # made before generations
    result = run_module(bakeform.main, args(tmp_path, keep=1))
    assert result.result['removed'] == [2]
    assert result.result['generations'][0]['used_by'] == [
        {'serial': '3a4b5c6d', 'hostname': 'old-pi', 'root': 'current'}]


def test_retention_without_a_roots_dir_removes_nothing(run_module, tmp_path):
    make_store(tmp_path, count=4)
    result = run_module(bakeform.main, args(tmp_path, keep=1))
    assert result.result['changed'] is False and result.result['removed'] == []
    assert any('roots_dir does not exist' in w and 'nothing was removed' in w for w in result.result['warnings'])


def test_removing_a_used_generation_is_refused_naming_each_pi(run_module, tmp_path):
    make_store(tmp_path, count=3)
    marker(tmp_path, '3a4b5c6d', 'golden', 1, hostname='pi-01')
    marker(tmp_path, '0000000a', 'golden', 1, previous=True)
    marker(tmp_path, '0000000b', 'other', 1, hostname='elsewhere')  # another bakeform's generation 1
    before = tree(tmp_path)
    result = run_module(bakeform.main, args(tmp_path, state='absent', generation=1))
    assert result.failed and result.result['changed'] is False
    assert ('generation golden@1 cannot be removed: golden@1 is used by Pi 0000000a (previous root), '
            'pi-01 (3a4b5c6d, current root)') in result.result['msg']
    assert 'elsewhere' not in result.result['msg']
    whole = run_module(bakeform.main, args(tmp_path, state='absent'))
    assert whole.failed and 'bakeform golden cannot be removed: golden@1 is used by' in whole.result['msg']
    assert tree(tmp_path) == before


@pytest.mark.parametrize(('number', 'message'), [(3, 'is the current one'), (2, 'is pinned')])
def test_removing_the_current_or_a_pinned_generation_is_refused(run_module, tmp_path, number, message):
    make_store(tmp_path, count=3, pinned=[2])
    (tmp_path / 'roots').mkdir()
    result = run_module(bakeform.main, args(tmp_path, state='absent', generation=number))
    assert result.failed and message in result.result['msg']


def test_absent_one_generation_then_the_bakeform(run_module, tmp_path):
    make_store(tmp_path, count=2)
    (tmp_path / 'roots').mkdir()
    planned = run_module(bakeform.main, args(tmp_path, state='absent', generation=1), check_mode=True, diff=True)
    assert planned.result['changed'] is True and planned.result['removed'] == [1]
    assert list(planned.result['diff']['after']['generations']) == ['golden@2']
    assert (tmp_path / 'store/golden/generations/1').exists()
    done = run_module(bakeform.main, args(tmp_path, state='absent', generation=1))
    assert done.result['changed'] is True and not (tmp_path / 'store/golden/generations/1').exists()
    assert list(index_of(tmp_path)['generations']) == ['2']
    assert run_module(bakeform.main, args(tmp_path, state='absent', generation=1)).result['changed'] is False
    assert run_module(bakeform.main, args(tmp_path, state='absent'), check_mode=True).result['changed'] is True
    gone = run_module(bakeform.main, args(tmp_path, state='absent'))
    assert gone.result['changed'] is True and gone.result['removed'] == [2]
    assert os.listdir(tmp_path / 'store') == []
    assert run_module(bakeform.main, args(tmp_path, state='absent')).result['changed'] is False


def test_a_generation_made_by_a_killed_run_is_recorded(run_module, tmp_path):
    """Killed after the rename of generation 3, before the index: the next run adds it as the current one."""
    make_store(tmp_path, count=2)
    add_generation(tmp_path / 'store', 'golden', 3, b'image-3')
    result = run_module(bakeform.main, args(tmp_path))
    assert result.result['changed'] is True and result.result['current'] == 3
    assert (index_of(tmp_path)['current'], index_of(tmp_path)['next']) == (3, 4)


def format2(top, name='golden', content=b'image-one'):
    """A bakeform of store format 2, as the code before generations laid it out (files standing for images)."""
    src = top / 'src.img'
    src.write_bytes(content)
    dest = top / 'store' / name
    (dest / 'boot' / 'overlays').mkdir(parents=True)
    (dest / 'boot' / 'start4.elf').write_bytes(b'firmware')
    (dest / 'boot' / 'overlays' / 'a.dtbo').write_bytes(b'overlay')
    (dest / 'root.img').write_bytes(b'golden root file system')
    (dest / 'boot.img').write_bytes(b'boot file system')
    manifest = {'name': name, 'source': str(src), 'sha256': sha(content), 'models': ['4'], 'format': 2,
                'source_stat': _bakeform.source_stat(str(src)), 'created': '2025-12-01T00:00:00Z'}
    (dest / 'manifest.json').write_text(json.dumps(manifest))
    return dest, manifest


def test_a_format2_bakeform_becomes_generation_1(run_module, tmp_path):
    dest, manifest = format2(tmp_path)
    inodes = {name: os.stat(dest / name).st_ino for name in ('root.img', 'boot.img', 'boot/start4.elf')}
    before = tree(tmp_path)
    planned = run_module(bakeform.main, args(tmp_path, src=str(tmp_path / 'src.img')), check_mode=True, diff=True)
    assert planned.result['changed'] is True and planned.result['migrated'] is True
    assert (planned.result['generation'], planned.result['current']) == (1, 1)
    assert planned.result['diff']['before']['format'] == 2 and planned.result['diff']['after']['format'] == 3
    assert tree(tmp_path) == before
    done = run_module(bakeform.main, args(tmp_path, src=str(tmp_path / 'src.img')))
    assert done.result['changed'] is True and done.result['migrated'] is True and done.result['generation'] == 1
    assert sorted(os.listdir(dest)) == ['bakeform.json', 'generations']
    one = dest / 'generations' / '1'
    assert sorted(os.listdir(one)) == ['boot', 'boot.img', 'manifest.json', 'root.img']
    # The same files under their new names: nothing copied.
    assert {name: os.stat(one / name).st_ino for name in inodes} == inodes
    assert (one / 'boot/overlays/a.dtbo').read_bytes() == b'overlay'
    new = json.loads((one / 'manifest.json').read_text())
    assert new == dict(manifest, format=3, bakeform='golden', generation=1, origin={'kind': 'image'})
    assert index_of(tmp_path)['generations'] == {'1': {'sha256': manifest['sha256'], 'created': manifest['created'],
                                                       'source': manifest['source'], 'origin': {'kind': 'image'}}}
    assert not [n for n in os.listdir(tmp_path / 'store') if n.startswith('.pifleet-tmp-')]
    again = run_module(bakeform.main, args(tmp_path, src=str(tmp_path / 'src.img')))
    assert again.result['changed'] is False and again.result['migrated'] is False


def test_a_format2_bakeform_migrates_without_a_source_and_can_be_removed(run_module, tmp_path):
    format2(tmp_path)
    marker(tmp_path, '3a4b5c6d', 'golden', content=b'image-one', hostname='pi-01')
    refused = run_module(bakeform.main, args(tmp_path, state='absent'))
    assert refused.failed and 'golden@1 is used by pi-01 (3a4b5c6d, current root)' in refused.result['msg']
    assert (tmp_path / 'store/golden/manifest.json').exists()  # refused before anything changed
    done = run_module(bakeform.main, args(tmp_path))
    assert done.result['migrated'] is True
    assert done.result['generations'][0]['used_by'][0]['serial'] == '3a4b5c6d'


def test_a_broken_older_bakeform_needs_a_source(run_module, tmp_path):
    dest, _manifest = format2(tmp_path)
    (dest / 'boot.img').unlink()
    result = run_module(bakeform.main, args(tmp_path))
    assert result.failed and 'incomplete or of an older store format' in result.result['msg']


def test_a_directory_that_is_no_bakeform_is_not_clobbered(run_module, top):
    (top / 'store' / 'stranger').mkdir()
    (top / 'store' / 'stranger' / 'data').write_text('mine')
    result = run_module(bakeform.main, args(top, name='stranger', src=str(top / 'src.img')))
    assert result.failed and 'pifleet.netboot.bakeform did not make it' in result.result['msg']


def test_non_root_is_told_to_become(run_module, top, monkeypatch):
    monkeypatch.setattr(bakeform.os, 'geteuid', lambda: 1000)
    result = run_module(bakeform.main, args(top, name='fresh', src=str(top / 'src.img')))
    assert result.failed and 'add become: true' in result.result['msg']


def test_a_failed_ingest_reports_no_change(run_module, top):
    """A source that is not an image fails, says why, and reports changed=false (nothing changed)."""
    junk = top / 'junk.img'
    junk.write_bytes(b'not an image at all' * 1000)
    before = tree(top)
    result = run_module(bakeform.main, args(top, src=str(junk)))
    assert result.failed and result.result['changed'] is False
    assert 'no MBR boot signature' in result.result['msg']
    assert tree(top) == before


def test_a_format2_bakeform_with_files_of_someone_else_is_not_migrated(run_module, tmp_path):
    dest, _manifest = format2(tmp_path)
    (dest / 'NOTES.txt').write_text('mine')
    before = tree(tmp_path)
    for check_mode in (True, False):
        result = run_module(bakeform.main, args(tmp_path), check_mode=check_mode)
        assert result.failed and 'holds NOTES.txt, which pifleet did not put there' in result.result['msg']
        assert result.result['changed'] is False
    assert tree(tmp_path) == before


def test_a_current_that_cannot_be_fails_before_anything_is_made(run_module, top):
    other = top / 'other.img'
    other.write_bytes(b'not an image, but it is never read')
    before = tree(top)
    result = run_module(bakeform.main, args(top, src=str(other), current=5))
    assert result.failed and 'current: generation golden@5 not found' in result.result['msg']
    assert result.result['changed'] is False and tree(top) == before


@pytest.mark.parametrize(('field', 'url'), [
    ('url', 'http://mirror-user:s3cr3t-Pass@127.0.0.1:9/x.img.xz'),
    ('url', 'http://s3cr3t-Pass@127.0.0.1:9/x.img.xz'),  # a token alone, as user name
    ('checksum', 'http://mirror-user:s3cr3t-Pass@127.0.0.1:9/x.img.xz.sha256'),
])
def test_credentials_in_a_url_reach_no_output(tmp_path, field, url):
    """The module as its own process (Ansible's own masking of what it returns, its arguments included). Port 9 on
    loopback: nothing listens, so the fetch fails and its message names the URL."""
    given = {'url': url, 'checksum': 'sha256:' + 'a' * 64} if field == 'url' else {
        'url': 'http://127.0.0.1:9/x.img.xz', 'checksum': 'sha256:' + url}
    result = run_process('bakeform', args(tmp_path, **given))
    assert result.get('failed') and '127.0.0.1:9' in result['msg'], result
    assert 's3cr3t-Pass' not in json.dumps(result), result
    if field == 'url':  # the source is named by its URL without the credentials, not only masked
        assert 'mirror-user' not in result['msg'], result['msg']


def test_a_url_is_recorded_without_its_credentials():
    assert without_credentials('https://u:p%40ss@mirror.example.org:8443/a.img.xz?x=1') == (
        'https://mirror.example.org:8443/a.img.xz?x=1', ['p%40ss', 'p@ss'])
    assert without_credentials('https://tok@mirror.example.org/a') == ('https://mirror.example.org/a', ['tok'])
    assert without_credentials('https://mirror.example.org/a') == ('https://mirror.example.org/a', [])
    assert without_credentials(None) == (None, []) and without_credentials('/srv/a.img') == ('/srv/a.img', [])
    assert without_credentials('http://u:p@[::1/a.img') == ('http://[::1/a.img', ['p'])  # too broken to fetch


@pytest.mark.parametrize(('given', 'key'), [
    ({'url': 'http://u:s3cr3t@[::1/x.img.xz', 'checksum': 'sha256:' + 'a' * 64}, 'url'),
    ({'url': 'http://127.0.0.1:9/x.img.xz', 'checksum': 'sha256:http://u:s3cr3t@[::1/x.sha256'}, 'checksum'),
])
def test_a_malformed_url_fails_with_a_message_not_a_traceback(run_module, tmp_path, given, key):
    result = run_module(bakeform.main, args(tmp_path, **given))
    assert result.failed and result.result['msg'].startswith('%s: ' % key), result.result
    assert 'not a URL that can be fetched' in result.result['msg'] and 'nothing was fetched' in result.result['msg']
    assert 's3cr3t' not in result.result['msg']
    assert not (tmp_path / 'store').exists()
