# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real modules run as real processes on real images, loop devices and file systems (as root)."""

from __future__ import annotations

import os

import pytest
from fstree import loops_backed_by, mounts_below

from lab.piimage import VARIANTS, build_image

if os.geteuid() != 0:
    pytest.skip('integration tests need root (loop devices, owners, device nodes)', allow_module_level=True)


@pytest.fixture(scope='session')
def images(tmp_path_factory):
    """Factory images shared by the session: good ones and every broken variant."""
    top = tmp_path_factory.mktemp('images')
    built = {
        'good-xz': build_image(top / 'good.img.xz', seed=1),
        'good-img': build_image(top / 'good.img', seed=1),
        'other-xz': build_image(top / 'other.img.xz', seed=2, models=(4,)),
    }
    for variant in VARIANTS:
        if variant != 'good':
            built[variant] = build_image(top / ('%s.img' % variant), variant=variant, seed=3)
    built['truncated-xz'] = build_image(top / 'truncated.img.xz', variant='truncated', seed=3)
    return built


@pytest.fixture
def store(tmp_path):
    path = tmp_path / 'store'
    path.mkdir()
    yield path
    assert mounts_below(tmp_path) == [], 'a test left mounts behind'
    assert loops_backed_by(tmp_path) == [], 'a test left loop devices behind'


# Seconds per test file (setup, call and teardown of its tests), for the terminal summary: `make test` runs the
# integration files in two lanes against a time budget, and a file that grows shows here in every run's log.
FILE_SECONDS = {}


def pytest_runtest_logreport(report):
    name = report.nodeid.split('::', 1)[0]
    FILE_SECONDS[name] = FILE_SECONDS.get(name, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if len(FILE_SECONDS) < 2:
        return
    terminalreporter.write_sep('=', 'seconds per file')
    for name, seconds in sorted(FILE_SECONDS.items(), key=lambda item: -item[1]):
        terminalreporter.write_line('%8.1f  %s' % (seconds, name))
