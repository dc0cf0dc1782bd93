# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The parts of `make demo` (lab/demo.py) that run without a lab: which images it builds, where it finds a
bakeform's current generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations
from lab import demo


def test_only_the_real_images_the_inventory_boots_are_built():
    pis = demo.lab_pis()
    assert demo.used_images(pis) == {'realpi-trixie': 'trixie'}  # pi-06; the simulated Pis use the sample image
    assert demo.used_images([pi for pi in pis if pi['boot'] == 'simulator']) == {}


def make_generation(store, name, number):
    gen = generations.Bakeform(str(store), name)
    (store / name / 'generations' / str(number) / 'boot').mkdir(parents=True)
    for path in (gen.manifest_path(number), gen.root_image(number), gen.boot_image(number)):
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write('{}')
    return gen


def test_the_current_generation_comes_from_the_index(tmp_path):
    data = tmp_path / 'data'
    lab = {'data_dirs': {'/srv/pifleet': str(data)}}
    store = data / 'bakeforms'
    gen = make_generation(store, 'realpi-trixie', 1)
    make_generation(store, 'realpi-trixie', 2)
    (store / 'realpi-trixie' / generations.INDEX).write_text(json.dumps(dict(generations.new_index('realpi-trixie'),
                                                                             current=1, next=3)))
    inside, current = demo.current_generation(lab, 'realpi-trixie')
    assert current == 1  # what the index says, not the newest
    assert inside.boot_export(current) == '/srv/pifleet/bakeforms/realpi-trixie/generations/1/boot-nfs'
    assert inside.root_image(current) == '/srv/pifleet/bakeforms/realpi-trixie/generations/1/root.img'
    assert gen.boot_export(1) == demo.outside(lab, inside.boot_export(1))


@pytest.mark.parametrize('index', [None, {'current': None}, {'current': 4}])
def test_no_current_generation_is_a_clear_error(tmp_path, index):
    data = tmp_path / 'data'
    lab = {'data_dirs': {'/srv/pifleet': str(data)}}
    make_generation(data / 'bakeforms', 'realpi-trixie', 1)
    if index is not None:
        (data / 'bakeforms' / 'realpi-trixie' / generations.INDEX).write_text(
            json.dumps(dict(generations.new_index('realpi-trixie'), **index)))
    with pytest.raises(demo.DemoError, match=r'realpi-trixie has no complete current generation .*generations there: '
                                             r'\[1\]'):
        demo.current_generation(lab, 'realpi-trixie')


def test_the_first_fleet_run_plans_the_simulated_pis_alone(tmp_path):
    argv = demo.simulated_only(tmp_path, demo.lab_pis())
    assert argv[0] == '-i' and argv[2] == '-e'
    group = yaml.safe_load(Path(argv[1]).read_text())
    assert group == {demo.SIMULATED: {'hosts': {'pi-03': {}, 'pi-04': {}, 'pi-05': {}}}}
    extra = json.loads(argv[3])
    assert extra['pifleet_pis_group'] == demo.SIMULATED
    assert [b['name'] for b in extra['pifleet_bakeforms']] == ['raspios-sample']  # not the real image's bakeform
