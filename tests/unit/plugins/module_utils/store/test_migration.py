# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""migration: what a format-2 bakeform becomes, and its boot-nfs mount unit moved (or removed) with it.

The swap itself, on real images and a mounted boot-nfs, is tested in tests/integration/test_generations.py;
on files standing for images in tests/unit/plugins/modules/test_bakeform.py.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as gen
from ansible_collections.pifleet.netboot.plugins.module_utils.store import migration

LEGACY = {'name': 'lite', 'format': 2, 'sha256': 'a' * 64, 'source': '/img.xz', 'created': 'then', 'models': ['4']}


def test_generation_one_and_its_index():
    bakeform = gen.Bakeform('/s', 'lite')
    one = migration.generation_one(bakeform, LEGACY)
    assert one == dict(LEGACY, format=3, bakeform='lite', generation=1, origin={'kind': 'image'})
    index = migration.planned_index(bakeform, LEGACY)
    assert (index['current'], index['next'], index['pinned'], index['format']) == (1, 2, [], 3)
    assert index['generations'] == {'1': {'sha256': 'a' * 64, 'created': 'then', 'source': '/img.xz',
                                          'origin': {'kind': 'image'}}}


@pytest.mark.parametrize(('files', 'manifest', 'complete'), [
    (('boot', 'root.img', 'boot.img'), LEGACY, True),
    (('boot', 'root.img'), LEGACY, False),
    (('root.img', 'boot.img'), LEGACY, False),
    (('boot', 'root.img', 'boot.img'), dict(LEGACY, format=1), False),
    (('boot', 'root.img', 'boot.img'), None, False),
])
def test_is_legacy_complete(tmp_path, files, manifest, complete):
    bakeform = gen.Bakeform(str(tmp_path), 'lite')
    os.makedirs(bakeform.dir)
    for name in files:
        path = os.path.join(bakeform.dir, name)
        os.mkdir(path) if name == 'boot' else open(path, 'w').close()
    assert migration.is_legacy_complete(bakeform, manifest) is complete


UNIT = loopfs.unit_text('/s/lite/boot.img', '/s/lite/boot-nfs', ('ro', 'nosuid', 'nodev', 'noexec'),
                        'pifleet boot files of bakeform lite')


@pytest.mark.parametrize(('text', 'settings'), [
    (UNIT, (['ro', 'nosuid', 'nodev', 'noexec'], 'pifleet boot files of bakeform lite')),
    ('[Mount]\nWhat=/x\nOptions=loop,ro\n', None),  # not ours: never moved
    (None, None),
])
def test_unit_settings(text, settings):
    assert migration.unit_settings(text) == settings


def test_the_boot_nfs_unit_moves_to_generation_1_and_goes_with_it(tmp_path):
    store = tmp_path / 'store'
    bakeform = gen.Bakeform(str(store), 'lite')
    units = loopfs.Units(str(tmp_path / 'units'))
    old_point = os.path.join(str(store), 'lite', 'boot-nfs')
    old_text = loopfs.unit_text(os.path.join(str(store), 'lite', 'boot.img'), old_point,
                                ('ro', 'nosuid', 'nodev', 'noexec'), 'pifleet boot files of bakeform lite')
    units.ensure(old_point, old_text, lambda path, body: open(path, 'w').write(body))
    assert migration.finish(bakeform, None) is False
    assert migration.finish(bakeform, units) is True  # generation 1 is not there: the unit only goes
    assert units.current(old_point) == (None, False)

    units.ensure(old_point, old_text, lambda path, body: open(path, 'w').write(body))
    os.makedirs(bakeform.boot_dir(1))
    for name in ('manifest.json', 'root.img', 'boot.img'):
        open(os.path.join(bakeform.gen_dir(1), name), 'w').close()
    assert migration.finish(bakeform, units) is True
    new_point = bakeform.boot_export(1)
    text, enabled = units.current(new_point)
    assert enabled and text == loopfs.unit_text(bakeform.boot_image(1), new_point, ('ro', 'nosuid', 'nodev', 'noexec'),
                                                'pifleet boot files of bakeform lite')
    assert units.current(old_point) == (None, False)
    assert migration.finish(bakeform, units) is False  # done: nothing left to move
