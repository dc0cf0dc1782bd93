# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Moving a Pi's roots as pairs: install, keep the previous one, swap, and recovery after a kill at every step.

The images are small real ext4 file systems (mke2fs on files: no mount), so each has the UUID its marker
names. A kill is simulated by stopping the move before its k-th step (a rename, link, marker or journal
write), for every k; ``recover`` must then leave whole pairs: a current root with its own marker, and a
previous root (if any) with its own, never the same image twice and never a Pi without a root. The same
with real SIGKILLs of pi_root is in tests/integration/test_pi_root_generations.py.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rollback, roots

pytestmark = pytest.mark.skipif(subprocess.run(['which', 'mke2fs'], capture_output=True, check=False).returncode,
                                reason='needs e2fsprogs')


class Killed(Exception):
    """The simulated SIGKILL."""


def image(path):
    subprocess.run(['mke2fs', '-q', '-F', '-t', 'ext4', str(path), '2M'], check=True, capture_output=True)
    return {'serial': '3a4b5c6d', 'fs_uuid': rollback.fs_uuid(str(path)), 'generation': path.name}


@pytest.fixture
def pis(tmp_path):
    """Generation P as the previous root, A as the current one, B built in a scratch directory."""
    lay = roots.Layout(str(tmp_path), '3a4b5c6d')
    scratch = atomic.ScratchDir(str(tmp_path), '3a4b5c6d')
    made = {name: image(tmp_path / name) for name in ('P', 'A')}
    made['B'] = image(tmp_path / 'B')
    os.rename(tmp_path / 'P', lay.prev_image)
    os.rename(tmp_path / 'A', lay.image)
    os.rename(tmp_path / 'B', scratch.join('new.img'))
    rollback.write_marker(lay.prev_marker, made['P'])
    rollback.write_marker(lay.marker, made['A'])
    yield lay, scratch, made
    scratch.close()


def pairs(lay):
    """``(current, previous)`` generation names as the markers say, after checking every pair is whole."""
    assert not os.path.exists(lay.journal)
    assert os.path.isfile(lay.image), 'a Pi without a root'
    current = roots.load_marker(lay.marker)
    assert current['fs_uuid'] == rollback.fs_uuid(lay.image)
    previous = roots.load_marker(lay.prev_marker) if os.path.lexists(lay.prev_marker) else None
    if os.path.isfile(lay.prev_image):
        assert not os.path.samefile(lay.image, lay.prev_image), 'two names of one root'
        assert previous and previous['fs_uuid'] == rollback.fs_uuid(lay.prev_image)
    else:
        assert previous is None, 'a marker without its image'
    return current['generation'], previous and previous['generation']


def test_install_keeps_the_previous_root_or_not(pis):
    lay, scratch, made = pis
    inode = os.stat(lay.image).st_ino
    rollback.install(lay, scratch, scratch.join('new.img'), made['B'], current=made['A'], keep_previous=True)
    assert pairs(lay) == ('B', 'A') and os.stat(lay.prev_image).st_ino == inode  # renamed, not copied
    rollback.swap(lay, made['B'], made['A'])
    assert pairs(lay) == ('A', 'B')


def test_install_without_keeping_leaves_the_previous_root_alone(pis):
    lay, scratch, made = pis
    rollback.install(lay, scratch, scratch.join('new.img'), made['B'], current=made['A'], keep_previous=False)
    assert pairs(lay) == ('B', 'P')


def test_a_first_root_needs_no_journal(tmp_path):
    lay = roots.Layout(str(tmp_path), '3a4b5c6d')
    with atomic.ScratchDir(str(tmp_path), 'x') as scratch:
        marker = image(tmp_path / 'new.img')
        rollback.install(lay, scratch, str(tmp_path / 'new.img'), marker)
    assert pairs(lay) == ('new.img', None)


def killing(monkeypatch, after):
    """Let ``after`` steps of a move happen, then stop it as a SIGKILL would."""
    steps = [0]

    def step(func):
        def wrapped(*args, **kwargs):
            if steps[0] >= after:
                raise Killed()
            steps[0] += 1
            return func(*args, **kwargs)
        return wrapped
    for name in ('rename', 'link', 'unlink'):
        monkeypatch.setattr(rollback.os, name, step(getattr(os, name)))
    monkeypatch.setattr(rollback, 'write_marker', step(rollback.write_marker))
    monkeypatch.setattr(rollback, 'write_journal', step(rollback.write_journal))
    monkeypatch.setattr(rollback._atomic, 'exchange', step(atomic.exchange))
    return steps


MOVES = {
    'keep': (lambda lay, scratch, made: rollback.install(lay, scratch, scratch.join('new.img'), made['B'],
                                                         current=made['A'], keep_previous=True),
             {('A', 'P'), ('A', None), ('B', 'A')}),
    'replace': (lambda lay, scratch, made: rollback.install(lay, scratch, scratch.join('new.img'), made['B'],
                                                            current=made['A'], keep_previous=False),
                {('A', 'P'), ('B', 'P')}),
    'swap': (lambda lay, scratch, made: rollback.swap(lay, made['A'], dict(made['P'], rolled_back=True)),
             {('A', 'P'), ('P', 'A')}),
}


@pytest.mark.parametrize('move', sorted(MOVES))
def test_a_kill_at_any_step_leaves_whole_pairs(tmp_path, monkeypatch, move):
    do, allowed = MOVES[move]
    seen, after = set(), 0
    while True:
        top = tmp_path / str(after)
        top.mkdir()
        lay = roots.Layout(str(top), '3a4b5c6d')
        with atomic.ScratchDir(str(top), '3a4b5c6d') as scratch:
            made = {name: image(top / name) for name in 'PAB'}
            os.rename(top / 'P', lay.prev_image)
            os.rename(top / 'A', lay.image)
            os.rename(top / 'B', scratch.join('new.img'))
            rollback.write_marker(lay.prev_marker, made['P'])
            rollback.write_marker(lay.marker, made['A'])
            with monkeypatch.context() as patch:
                killing(patch, after)
                try:
                    do(lay, scratch, made)
                    finished = True
                except Killed:
                    finished = False
            rollback.recover(lay)  # the next run, before anything else
            result = pairs(lay)
        assert result in allowed, (move, after, result)
        seen.add(result)
        if finished:
            break
        after += 1
    assert after >= 4 and len(seen) >= 2, (after, seen)  # the kills did land in the middle
    assert rollback.recover(lay) == []  # nothing left to do


def test_recover_drops_what_no_marker_names(pis):
    lay, _scratch, made = pis
    rollback.write_journal(lay, [made['A']])
    os.unlink(lay.prev_marker)  # a previous image being replaced when the run died
    done = rollback.recover(lay)
    assert done == ['removed a previous root no marker names'] and pairs(lay) == ('A', None)
