# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nfs_server role's exports guard and nfs_export share one file format: what each writes, the other reads.

The guard (roles/nfs_server/files/pifleet_exports_guard.py) runs before NFS-Ganesha starts or reloads and
withholds every export with option mp that has nothing mounted at its path, exactly as nfs_export writes it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import exports as ex

GUARD = Path(__file__).resolve().parents[3] / 'roles' / 'nfs_server' / 'files' / 'pifleet_exports_guard.py'
SPEC = importlib.util.spec_from_file_location('pifleet_exports_guard', GUARD)
guard = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(guard)

ROOT = ['rw', 'sync', 'no_subtree_check', 'no_root_squash', 'mp']
ENTRIES = {
    '/srv/r/mnt/0000000a': {'path': '/srv/r/mnt/0000000a', 'clients': ['10.0.0.50'], 'options': ROOT, 'fs': '1:2'},
    '/srv/r/mnt/0000000b': {'path': '/srv/r/mnt/0000000b', 'clients': ['10.0.0.51'], 'options': ROOT},
    '/srv/shared': {'path': '/srv/shared', 'clients': ['10.0.0.0/24'], 'options': ['ro']},  # allow_shared: no mp
}
IDS = {'/srv/r/mnt/0000000a': 100, '/srv/r/mnt/0000000b': 101, '/srv/shared': 102}


def mounted_except(*paths):
    return lambda path: path not in paths


def test_the_guard_withholds_exactly_what_nfs_export_would():
    served = ex.render_ganesha(ENTRIES, IDS)
    text, withheld = guard.guarded(served, mounted_except('/srv/r/mnt/0000000a', '/srv/shared'))
    assert withheld == ['/srv/r/mnt/0000000a']  # /srv/shared has no mp: never withheld
    assert text == ex.render_ganesha(ENTRIES, IDS, {'/srv/r/mnt/0000000a'})
    assert ex.parse_ganesha(text) == (ENTRIES, IDS)  # nfs_export reads a withheld block back as it was
    assert '\n#| EXPORT {\n#|     Export_Id = 100;\n' in text and '\nEXPORT {\n    Export_Id = 101;\n' in text
    back, withheld = guard.guarded(text, mounted_except())
    assert (back, withheld) == (served, [])


def test_a_withheld_block_is_a_comment_to_ganesha():
    text = ex.render_ganesha(ENTRIES, IDS, set(ENTRIES) - {'/srv/shared'})
    live = [line for line in text.splitlines() if not line.lstrip().startswith('#')]
    assert 'Path = "/srv/shared";' in '\n'.join(live) and '0000000a' not in '\n'.join(live)


def mountinfo(tmp_path, points):
    lines = ['%d 1 0:%d %s %s rw - fs src rw' % (i + 20, i, root, point) for i, (point, root) in enumerate(points)]
    path = tmp_path / 'mountinfo'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def test_main_rewrites_the_file_in_place_and_check_changes_nothing(tmp_path):
    exports = tmp_path / 'pifleet.conf'
    exports.write_text(ex.render_ganesha(ENTRIES, IDS))
    exports.chmod(0o640)
    # B is mounted (a whole file system); A has only a bind of a directory: not its own file system.
    info = mountinfo(tmp_path, [('/', '/'), ('/srv/r/mnt', '/'), ('/srv/r/mnt/0000000b', '/'),
                                ('/srv/r/mnt/0000000a', '/some/dir')])
    before = exports.read_text()
    assert guard.main(['--exports', str(exports), '--mountinfo', info, '--check']) == 0
    assert exports.read_text() == before
    assert guard.main(['--exports', str(exports), '--mountinfo', info]) == 0
    assert exports.read_text() == ex.render_ganesha(ENTRIES, IDS, {'/srv/r/mnt/0000000a'})
    assert exports.stat().st_mode & 0o777 == 0o640
    assert [n for n in os.listdir(tmp_path) if n.startswith('.pifleet-guard-')] == []


def test_main_without_a_file_is_fine_and_an_unreadable_one_stops_the_start(tmp_path, capsys):
    assert guard.main(['--exports', str(tmp_path / 'missing.conf')]) == 0
    bad = tmp_path / 'bad.conf'
    bad.write_bytes(b'EXPORT {\xff\n}\n')
    assert guard.main(['--exports', str(bad)]) == 1
    assert 'cannot check' in capsys.readouterr().err


@pytest.mark.parametrize('options', [['rw', 'mp'], ['ro', 'sync', 'mp']])
def test_blocks_with_mp_and_no_mount_are_withheld_whatever_their_other_options(options):
    entries = {'/x': {'path': '/x', 'clients': ['10.0.0.9'], 'options': options}}
    text, withheld = guard.guarded(ex.render_ganesha(entries, {'/x': 100}), mounted_except('/x'))
    assert withheld == ['/x'] and text == ex.render_ganesha(entries, {'/x': 100}, {'/x'})
