# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic


def child_holding_scratch(parent, label):
    """Start a process that makes a scratch dir, reports its path and waits to be killed."""
    code = ('import sys, time\n'
            'from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic\n'
            's = _atomic.ScratchDir(sys.argv[1], sys.argv[2])\n'
            'open(s.join("payload"), "w").write("x")\n'
            'print(s.path, flush=True)\n'
            'time.sleep(60)\n')
    proc = subprocess.Popen([sys.executable, '-c', code, str(parent), label], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_scratch_dir_is_removed_on_exit(tmp_path):
    with _atomic.ScratchDir(str(tmp_path), 'x') as scratch:
        assert os.path.basename(scratch.path).startswith('.pifleet-tmp-x-%d-' % os.getpid())
        path = scratch.path
    assert not os.path.exists(path)
    assert os.listdir(tmp_path) == []


def test_sweep_keeps_live_builders_and_removes_dead_ones(tmp_path):
    proc, path = child_holding_scratch(tmp_path, 'live')
    try:
        assert _atomic.sweep_stale(str(tmp_path), lambda label: None) == []
        assert os.path.isdir(path)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _atomic.sweep_stale(str(tmp_path), lambda label: None) == [os.path.basename(path)]
        assert os.listdir(tmp_path) == []
    finally:
        proc.kill()
        proc.wait()


def test_sweep_restores_the_old_tree_of_a_half_done_swap(tmp_path):
    proc, path = child_holding_scratch(tmp_path, 'thing')
    proc.kill()
    proc.wait()
    # The builder died after moving the old tree aside and before moving the new one in.
    os.mkdir(os.path.join(path, 'old'))
    open(os.path.join(path, 'old', 'data'), 'w').write('precious')
    _atomic.sweep_stale(str(tmp_path), lambda label: str(tmp_path / label))
    assert (tmp_path / 'thing' / 'data').read_text() == 'precious'
    assert sorted(os.listdir(tmp_path)) == ['thing']


def test_install_new_and_replace(tmp_path):
    dest = str(tmp_path / 'dest')
    for content in ('one', 'two'):
        with _atomic.ScratchDir(str(tmp_path), 'dest') as scratch:
            built = scratch.join('build')
            os.mkdir(built)
            open(os.path.join(built, 'f'), 'w').write(content)
            _atomic.install(scratch, built, dest)
        assert open(os.path.join(dest, 'f')).read() == content
    assert sorted(os.listdir(tmp_path)) == ['dest']


def test_install_without_exchange_uses_two_renames(tmp_path, monkeypatch):
    monkeypatch.setattr(_atomic, 'exchange', lambda a, b: False)
    dest = tmp_path / 'dest'
    dest.mkdir()
    with _atomic.ScratchDir(str(tmp_path), 'dest') as scratch:
        os.mkdir(scratch.join('build'))
        _atomic.install(scratch, scratch.join('build'), str(dest))
        assert os.path.isdir(scratch.join('old'))
    assert sorted(os.listdir(tmp_path)) == ['dest']


def test_exchange_swaps(tmp_path):
    (tmp_path / 'a').write_text('a')
    (tmp_path / 'b').write_text('b')
    assert _atomic.exchange(str(tmp_path / 'a'), str(tmp_path / 'b'))
    assert (tmp_path / 'a').read_text() == 'b'


def test_mounts_under_unescapes(monkeypatch, tmp_path):
    table = ('36 35 98:0 / /mnt/with\\040space rw - ext4 /dev/x rw\n'
             '37 35 98:0 / /other rw - ext4 /dev/y rw\n')
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == '/proc/self/mountinfo':
            return io.StringIO(table)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr('builtins.open', fake_open)
    assert _atomic.mounts_under('/mnt/with space') == ['/mnt/with space']


@pytest.mark.parametrize('path, expected', [
    ('/srv/roots/.pifleet-x 1', ['/srv/roots/.pifleet-x 1/mnt/a\\b', '/srv/roots/.pifleet-x 1/mnt']),
    ('/srv/roots/.pifleet-x', []),  # a prefix of another directory's name, not a parent: parsed, nothing found
    ('/srv/roots/.pifleet-y', []),  # not in the table at all: nothing parsed
    ('/srv/tab\there', ['/srv/tab\there']),
])
def test_mounts_under_finds_escaped_points_deepest_first(tmp_path, path, expected):
    info = tmp_path / 'mountinfo'
    info.write_text('24 1 8:1 / / rw - ext4 /dev/sda1 rw\n'
                    '40 24 7:1 / /srv/roots/.pifleet-x\\0401/mnt rw - ext4 /dev/loop1 rw\n'
                    '41 40 7:2 / /srv/roots/.pifleet-x\\0401/mnt/a\\134b rw - ext4 /dev/loop2 rw\n'
                    '42 24 7:3 / /srv/roots/.pifleet-xz rw - ext4 /dev/loop3 rw\n'
                    '43 24 7:4 / /srv/tab\\011here rw - ext4 /dev/loop4 rw\n')
    assert _atomic.mounts_under(path, str(info)) == expected


def test_mounts_under_parses_nothing_when_the_path_is_not_in_mountinfo(tmp_path):
    info = tmp_path / 'mountinfo'
    info.write_text('24 1 8:1 / / rw - ext4 /dev/sda1 rw\na line no parser takes\n')
    assert _atomic.mounts_under('/srv/roots/.pifleet-y', str(info)) == []
    with pytest.raises(ValueError):  # once the path is there, every line is parsed
        _atomic.mounts_under('/', str(info))


def test_a_tree_of_one_file_system_holds_no_other(tmp_path):
    (tmp_path / 'a' / 'b').mkdir(parents=True)
    (tmp_path / 'a' / 'file').write_text('x')
    (tmp_path / 'a' / 'to-proc').symlink_to('/proc')  # a symlink inside is not followed
    assert not _atomic.holds_other_file_systems(str(tmp_path))
    assert not _atomic.holds_other_file_systems(str(tmp_path / 'a' / 'file'))
    assert not _atomic.holds_other_file_systems(str(tmp_path / 'missing'))
    assert _atomic.holds_other_file_systems(str(tmp_path / 'a' / 'to-proc'))  # itself one: mountinfo decides
    assert _atomic.holds_other_file_systems('/proc')  # a mount point itself


def test_discard_is_never_restored(tmp_path):
    (tmp_path / 'thing').mkdir()
    (tmp_path / 'thing' / 'f').write_text('x')
    removed = []
    _atomic.discard(str(tmp_path), 'thing', str(tmp_path / 'thing'), remove=removed.append)
    assert os.listdir(tmp_path) == []
    assert removed and removed[0].endswith('/trash')
    # A killed delete leaves 'trash' in a stale scratch dir: the sweep deletes it, it does not restore it.
    proc, path = child_holding_scratch(tmp_path, 'thing')
    proc.kill()
    proc.wait()
    os.mkdir(os.path.join(path, 'trash'))
    _atomic.sweep_stale(str(tmp_path), lambda label: str(tmp_path / label))
    assert os.listdir(tmp_path) == []


def test_write_text_keeps_mode_and_write_or_remove_puts_back(tmp_path):
    target = tmp_path / 'f'
    _atomic.write_text(str(target), 'one\n')
    assert target.read_text() == 'one\n' and target.stat().st_mode & 0o777 == 0o644
    target.chmod(0o600)
    _atomic.write_text(str(target), 'two\n')
    assert target.read_text() == 'two\n' and target.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ['f']
    _atomic.write_or_remove(str(target), 'one\n')
    assert target.read_text() == 'one\n'
    _atomic.write_or_remove(str(target), None)
    assert not target.exists()
    _atomic.write_or_remove(str(target), None)  # nothing there: nothing to do
    _atomic.write_or_remove(str(target), 'new\n', 0o600)
    assert target.stat().st_mode & 0o777 == 0o600


def test_read_text(tmp_path):
    target = tmp_path / 'f'
    assert _atomic.read_text(str(target)) is None
    assert _atomic.read_text(str(target / 'below-a-missing-file')) is None
    target.write_bytes(b'a\r\nb \xff\n')
    assert _atomic.read_text(str(target)) == 'a\r\nb \ufffd\n'
    assert _atomic.read_text(str(target), universal_newlines=True) == 'a\nb \ufffd\n'
    with pytest.raises(UnicodeDecodeError):
        _atomic.read_text(str(target), errors='strict')
    target.write_text('x')
    assert _atomic.read_text(str(target / 'below-a-file')) is None
    with pytest.raises(IsADirectoryError) as info:
        _atomic.read_text(str(tmp_path))
    assert info.value.filename == str(tmp_path)  # os.read does not say which file: read_text does


def test_write_new_and_make_dir_ignore_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        folder = tmp_path / 'a' / 'b'
        _atomic.make_dir(str(folder))
        _atomic.write_new(str(folder / 'cmdline.txt'), 'console=tty1\n')
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / 'cmdline.txt').stat().st_mode & 0o777 == 0o644
    assert (folder / 'cmdline.txt').read_text() == 'console=tty1\n'
    with pytest.raises(FileExistsError):
        _atomic.write_new(str(folder / 'cmdline.txt'), 'again\n')


def test_sync_file_system_flushes_that_one_not_every_mounted_one(tmp_path, monkeypatch):
    """syncfs(2) for the file system holding the path; os.sync() (every file system: a bakery mounts one per Pi
    root) only when that cannot be done."""
    synced = []
    monkeypatch.setattr(_atomic.os, 'sync', lambda: synced.append('all'))
    _atomic.sync_file_system(str(tmp_path))
    assert synced == []  # Linux and glibc: syncfs
    _atomic.sync_file_system(str(tmp_path / 'not-there'))
    assert synced == ['all']
