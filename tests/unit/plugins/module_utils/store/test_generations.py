# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""generations: the layout of a bakeform's generations, its index, labels; roots.references from markers."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as gen


def make_generation(bakeform, number, files=('manifest.json', 'root.img', 'boot.img'), boot=True):
    path = bakeform.gen_dir(number)
    os.makedirs(path)
    if boot:
        os.mkdir(os.path.join(path, 'boot'))
    for name in files:
        with open(os.path.join(path, name), 'w') as handle:
            handle.write(json.dumps({'generation': number}) if name == 'manifest.json' else 'x')


@pytest.mark.parametrize(('text', 'expected'), [('bookworm-lite@3', ('bookworm-lite', 3)), (' a@1 ', ('a', 1)),
                                                ('x.y_z@120', ('x.y_z', 120))])
def test_parse_label(text, expected):
    assert gen.parse_label(text) == expected
    assert gen.label(*expected) == text.strip()


@pytest.mark.parametrize('text', ['bookworm', 'a@0', 'a@-1', 'a@01', '@3', 'A@3', 'a b@3', 'a@3@4', 'a@x', ''])
def test_parse_label_refuses(text):
    with pytest.raises(ValueError, match='is not a bakeform generation'):
        gen.parse_label(text)


@pytest.mark.parametrize(('value', 'expected'), [(1, 1), ('7', 7), (123456789, 123456789)])
def test_check_id(value, expected):
    assert gen.check_id(value) == expected


@pytest.mark.parametrize('value', [0, -1, '0', '01', 'x', True, None, 1.5, '1.0'])
def test_check_id_refuses(value):
    with pytest.raises(ValueError, match='not a generation number'):
        gen.check_id(value)


def test_paths(tmp_path):
    bakeform = gen.Bakeform(str(tmp_path), 'lite')
    assert bakeform.gen_dir(2) == str(tmp_path / 'lite' / 'generations' / '2')
    assert bakeform.boot_dir(2).endswith('/lite/generations/2/boot')
    assert bakeform.root_image(2).endswith('/lite/generations/2/root.img')
    assert bakeform.boot_image(2).endswith('/lite/generations/2/boot.img')
    assert bakeform.boot_export(2).endswith('/lite/generations/2/boot-nfs')
    assert bakeform.manifest_path(2).endswith('/lite/generations/2/manifest.json')
    assert bakeform.label(2) == 'lite@2'


def test_ids_lists_complete_generations_only(tmp_path):
    bakeform = gen.Bakeform(str(tmp_path), 'lite')
    assert bakeform.ids() == []
    assert bakeform.current() is None
    make_generation(bakeform, 1)
    make_generation(bakeform, 3)
    make_generation(bakeform, 10)
    make_generation(bakeform, 2, files=('manifest.json', 'root.img'))  # a half-made one: no boot.img
    make_generation(bakeform, 4, boot=False)
    os.makedirs(os.path.join(bakeform.generations_dir, '.pifleet-tmp-x'))
    os.makedirs(os.path.join(bakeform.generations_dir, '05'))
    assert bakeform.ids() == [1, 3, 10]
    assert bakeform.current() == 10  # no index: the newest


def test_current_follows_the_index_while_that_generation_is_there(tmp_path):
    bakeform = gen.Bakeform(str(tmp_path), 'lite')
    make_generation(bakeform, 1)
    make_generation(bakeform, 2)
    index = gen.new_index('lite')
    index.update(current=1, next=3)
    gen.write_index(bakeform, index)
    assert bakeform.load_index() == index
    assert bakeform.current() == 1
    index['current'] = 7
    gen.write_index(bakeform, index)
    assert bakeform.current() == 2


def test_a_broken_index_is_refused_with_the_fix(tmp_path):
    bakeform = gen.Bakeform(str(tmp_path), 'lite')
    os.makedirs(bakeform.dir)
    with open(bakeform.index_path, 'w') as handle:
        handle.write('{not json')
    with pytest.raises(gen.GenerationError, match='not valid JSON'):
        bakeform.load_index()
    assert bakeform.load_index(strict=False) is None
    with open(bakeform.index_path, 'w') as handle:
        json.dump({'format': 2}, handle)
    with pytest.raises(gen.GenerationError, match='not a bakeform index of format 3'):
        bakeform.load_index()


def test_require_names_the_pi_and_what_is_there(tmp_path):
    bakeform = gen.Bakeform(str(tmp_path), 'lite')
    make_generation(bakeform, 1)
    assert bakeform.require(1, 'Pi 3a4b5c6d') == {'generation': 1}
    with pytest.raises(gen.GenerationError, match=r'generation lite@4 not found for Pi 3a4b5c6d: .* in the store: 1\)'):
        bakeform.require(4, 'Pi 3a4b5c6d')


def test_references_read_current_and_previous_markers(tmp_path):
    def marker(name, **data):
        (tmp_path / name).write_text(json.dumps(data))
    marker('3a4b5c6d.json', bakeform='lite', generation=2, hostname='pi-01', bakeform_sha256='b')
    marker('3a4b5c6d.prev.json', bakeform='lite', generation=1, hostname='pi-01', bakeform_sha256='a')
    marker('0000000a.json', bakeform='old', hostname='pi-02', bakeform_sha256='c')  # before generations
    marker('0000000b.json', bakeform='lite', generation=True)  # not a number
    marker('notaserial.json', bakeform='lite', generation=1)
    (tmp_path / '0000000c.json').write_text('{broken')
    (tmp_path / '3a4b5c6d').mkdir()
    assert _roots.references(str(tmp_path)) == [
        {'serial': '0000000a', 'hostname': 'pi-02', 'kept': 'current', 'bakeform': 'old', 'generation': None,
         'sha256': 'c'},
        {'serial': '0000000b', 'hostname': None, 'kept': 'current', 'bakeform': 'lite', 'generation': None,
         'sha256': None},
        {'serial': '3a4b5c6d', 'hostname': 'pi-01', 'kept': 'current', 'bakeform': 'lite', 'generation': 2,
         'sha256': 'b'},
        {'serial': '3a4b5c6d', 'hostname': 'pi-01', 'kept': 'previous', 'bakeform': 'lite', 'generation': 1,
         'sha256': 'a'},
    ]
    assert _roots.references(str(tmp_path / 'missing')) == []


def test_layout_tells_the_formats_apart(tmp_path):
    bakeform = gen.Bakeform(str(tmp_path), 'lite')
    assert bakeform.layout() == 'none'
    os.makedirs(bakeform.dir)
    assert bakeform.layout() == 'unknown'
    with open(bakeform.legacy_manifest_path, 'w') as handle:
        handle.write('{"format": 2}')
    assert bakeform.layout() == 'format2'
    make_generation(bakeform, 1)
    assert bakeform.layout() == 'format2'  # a migration killed before its swap: the old layout still rules
    os.unlink(bakeform.legacy_manifest_path)
    assert bakeform.layout() == 'generations'  # generations without an index: the index is made again
    gen.write_index(bakeform, gen.new_index('lite'))
    assert bakeform.layout() == 'generations'


def summary(number):
    return {'sha256': 's%d' % number, 'created': 'c', 'source': 'x', 'origin': {'kind': 'image'}}


# (index as (current, next, generations listed, pinned) or None, generations there, expected current, next, pinned)
RECONCILE = [
    ((2, 3, [1, 2], []), [1, 2], 2, 3, []),                  # as it should be
    ((1, 3, [1, 2], [1]), [1, 2], 1, 3, [1]),
    ((2, 3, [1, 2], []), [1, 2, 3], 3, 4, []),               # killed after renaming 3 in, before the index
    ((2, 3, [1, 2], []), [2], 2, 3, []),                     # killed after removing 1, before the index
    ((2, 3, [1, 2], [1]), [1], 1, 3, [1]),                   # the current one gone by hand: the newest
    ((2, 5, [1, 2], []), [1, 2], 2, 5, []),                  # numbers are never reused
    (None, [3, 4], 4, 5, []),                                # no index at all
    (None, [], None, 1, []),
]


@pytest.mark.parametrize('case', RECONCILE)
def test_reconcile(tmp_path, case):
    before, there, current, next_id, pinned = case
    bakeform = gen.Bakeform(str(tmp_path), 'lite')
    for number in there:
        make_generation(bakeform, number)
    index = None
    if before:
        index = gen.new_index('lite')
        index.update(current=before[0], next=before[1], pinned=before[3],
                     generations={str(n): summary(n) for n in before[2]})
    got = gen.reconcile(bakeform, index)
    assert (got['current'], got['next'], got['pinned']) == (current, next_id, pinned)
    assert sorted(int(k) for k in got['generations']) == there
    for number in there:  # known summaries kept, unknown ones taken from the manifest
        expected = summary(number) if before and number in before[2] else gen.entry({'generation': number})
        assert got['generations'][str(number)] == expected
    assert got['format'] == 3 and got['name'] == 'lite'


def test_entry():
    manifest = {'sha256': 'a', 'created': 'c', 'source': 's', 'models': ['4']}
    assert gen.entry(manifest) == {'sha256': 'a', 'created': 'c', 'source': 's', 'origin': {'kind': 'image'}}
    capture = {'kind': 'capture', 'serial': '3a4b5c6d', 'hostname': None, 'from': 'lite@1'}
    assert gen.entry(dict(manifest, origin=capture))['origin'] == capture


@pytest.mark.parametrize('marker, expected', [
    ({'bakeform': 'lite', 'generation': 3}, 3),  # its own, even when the index does not list it
    ({'bakeform': 'lite', 'bakeform_sha256': 'b' * 64}, 2),  # before generations: the oldest of its content
    ({'bakeform': 'lite', 'bakeform_sha256': 'a' * 64}, 1),
    ({'bakeform': 'lite', 'bakeform_sha256': 'c' * 64}, None),  # content the store no longer has
    ({'bakeform': 'lite'}, None),
    ({'bakeform': 'lite', 'generation': True, 'bakeform_sha256': 'a' * 64}, 1),  # a bool is no generation
])
def test_marker_generation(marker, expected):
    index = {'generations': {'1': {'sha256': 'a' * 64}, '4': {'sha256': 'b' * 64}, '2': {'sha256': 'b' * 64},
                             'x': {'sha256': 'b' * 64}, '5': 'not a summary'}}
    assert gen.marker_generation(index, marker) == expected
    assert gen.same_content(index, 'b' * 64) == [2, 4] and gen.same_content(None, 'b' * 64) == []
