# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Request names: validation, resolution through the fleet map, and the checked open on a real tree."""

from __future__ import annotations

import os
import time

import pytest

NAMES_OK = [
    (b'1234abcd/start4.elf', '1234abcd/start4.elf'),
    (b'bootcode.bin', 'bootcode.bin'),
    (b'dc-a6-32-01-36-c2/overlays/vc4.dtbo', 'dc-a6-32-01-36-c2/overlays/vc4.dtbo'),
    ('pi-\u00e9t\u00e9/config.txt'.encode(), 'pi-\u00e9t\u00e9/config.txt'),
    (b'a' * 255 + b'/x', 'a' * 255 + '/x'),
    (b'...hidden/..x', '...hidden/..x'),
]

NAMES_DENIED = [
    (b'', 'empty'),
    (b'../secret.txt', '".."'),
    (b'1234abcd/../../secret.txt', '".."'),
    (b'1234abcd/..', '".."'),
    (b'./start4.elf', '".."'),
    (b'1234abcd//start4.elf', 'empty'),
    (b'1234abcd/', 'empty'),
    (b'/etc/passwd', 'absolute'),
    (b'//etc/passwd', 'absolute'),
    (b'1234abcd\\..\\secret', 'backslash'),
    (b'start\x01.elf', 'control'),
    (b'start\n.elf', 'control'),
    (b'start\x7f.elf', 'control'),
    ('start\u0085.elf'.encode(), 'control'),
    ('start\u2028.elf'.encode(), 'non-printable'),  # line and paragraph separators
    ('start\u2029.elf'.encode(), 'non-printable'),
    ('start\u202e.elf'.encode(), 'non-printable'),  # bidi override: a name that reads backwards in a log
    ('start\u200b.elf'.encode(), 'non-printable'),  # zero-width space: two names that look the same
    ('start\ufeff.elf'.encode(), 'non-printable'),
    ('start\u00a0.elf'.encode(), 'non-printable'),
    ('start\u0378.elf'.encode(), 'non-printable'),  # unassigned
    (b'\xff\xfe.bin', 'UTF-8'),
    (b'a' * 256 + b'/x', '255'),
    (b'a/' * 512 + b'b', '1024'),
]


@pytest.mark.parametrize(('raw', 'expected'), NAMES_OK)
def test_valid_names(hook, raw, expected):
    assert hook.validate_name(raw) == expected


@pytest.mark.parametrize(('raw', 'why'), NAMES_DENIED)
def test_denied_names(hook, raw, why):
    with pytest.raises(hook.Denied, match=why):
        hook.validate_name(raw)


def _map(hook):
    return hook.FleetMap(['/r/boot'], {
        '1234abcd': ('pi-01', ('/r/pis/pi-01', '/r/boot')),
        'Custom-Pi': ('pi-03', ('/r/pis/pi-03',)),
        'custom-pi': ('pi-04', ('/r/pis/pi-04',)),
    })


RESOLVE = [
    # request, root_files, (prefix, path, name, known, dirs)
    ('1234abcd/start4.elf', [], ('1234abcd', 'start4.elf', 'pi-01', True, ('/r/pis/pi-01', '/r/boot'))),
    ('1234ABCD/start4.elf', [], ('1234abcd', 'start4.elf', 'pi-01', True, ('/r/pis/pi-01', '/r/boot'))),
    ('Custom-Pi/config.txt', [], ('Custom-Pi', 'config.txt', 'pi-03', True, ('/r/pis/pi-03',))),
    ('custom-pi/config.txt', [], ('custom-pi', 'config.txt', 'pi-04', True, ('/r/pis/pi-04',))),
    ('CUSTOM-PI/config.txt', [], ('Custom-Pi', 'config.txt', 'pi-03', True, ('/r/pis/pi-03',))),
    ('1234abcd/overlays/a.dtbo', [], ('1234abcd', 'overlays/a.dtbo', 'pi-01', True, ('/r/pis/pi-01', '/r/boot'))),
    ('deadbeef/start4.elf', [], ('deadbeef', 'start4.elf', None, False, ())),
    ('bootcode.bin', ['bootcode.bin'], ('', 'bootcode.bin', None, False, ('/r/boot',))),
    ('start4.elf', ['bootcode.bin'], ('', 'start4.elf', None, False, ())),
    ('start4.elf', ['*'], ('', 'start4.elf', None, False, ('/r/boot',))),
]


@pytest.mark.parametrize(('request_name', 'root_files', 'expected'), RESOLVE)
def test_resolve(hook, request_name, root_files, expected):
    res = hook.resolve(request_name, _map(hook), frozenset(root_files))
    assert (res.prefix, res.path, res.name, res.known, tuple(res.dirs)) == expected


OPEN = [
    # request, expected: a file of the tree (the first dir wins), None (not found) or 'denied'
    ('1234abcd/cmdline.txt', 'pi1/cmdline.txt'),
    ('1234abcd/config.txt', 'pi1/config.txt'),
    ('1234abcd/start4.elf', 'boot/start4.elf'),
    ('dc-a6-32-01-36-c2/config.txt', 'boot/config.txt'),
    ('bootcode.bin', 'boot/bootcode.bin'),
    ('1234abcd/start.lnk', 'boot/start4.elf'),
    ('1234abcd/missing.bin', None),
    ('1234abcd/cmdline.txt/x', None),
    ('bootsig.bin', None),
    ('deadbeef/start4.elf', None),
    ('1234abcd/escape.txt', 'denied'),
    ('1234abcd/up/secret.txt', 'denied'),
    ('1234abcd/kernel.lnk', 'denied'),
    ('1234abcd/fifo', 'denied'),
    ('1234abcd/overlays', 'denied'),
]


@pytest.mark.parametrize(('request_name', 'expected'), OPEN)
def test_open_file(hook, tree, request_name, expected):
    (tree['boot'] / 'overlays').mkdir()
    roots = [os.path.realpath(tree['root'])]
    fleet_map, problems = hook.FleetMap.load(str(tree['map']), roots)
    assert problems == ['map prefix \'outside\': dir %s ignored: outside the configured roots' % tree['map'].parent]
    res = hook.resolve(request_name, fleet_map, frozenset(['bootcode.bin', 'bootsig.bin']))
    started = time.monotonic()
    if expected == 'denied':
        with pytest.raises(hook.Denied):
            hook.open_file(res, roots)
        assert time.monotonic() - started < 1  # a FIFO must not block
        return
    found = hook.open_file(res, roots)
    if expected is None:
        assert found is None
        return
    fd, size, _path = found
    try:
        where, name = expected.split('/')
        want = (tree[where] / name).read_bytes()
        assert size == len(want)
        assert os.pread(fd, size + 1, 0) == want
    finally:
        os.close(fd)


def test_open_file_root_through_symlink(hook, tmp_path):
    """A root given through a symlink and a dir given through another one still serve their files."""
    real = tmp_path / 'real'
    (real / 'boot').mkdir(parents=True)
    (real / 'boot' / 'a.bin').write_bytes(b'abc')
    (tmp_path / 'root-link').symlink_to(real)
    (real / 'current').symlink_to('boot')
    roots = [os.path.realpath(tmp_path / 'root-link')]
    res = hook.Resolution('p', 'a.bin', 'n', True, (str(tmp_path / 'root-link' / 'current'),))
    fd, size, _path = hook.open_file(res, roots)
    os.close(fd)
    assert size == 3
    with pytest.raises(hook.Denied):  # the same dir is refused when the roots do not hold it
        hook.open_file(res, [str(tmp_path / 'elsewhere')])


def test_open_file_unreadable_is_denied(hook, tree):
    if os.geteuid() == 0:
        pytest.skip('root reads mode 000 files')
    target = tree['pi1'] / 'cmdline.txt'
    target.chmod(0)
    res = hook.Resolution('1234abcd', 'cmdline.txt', 'pi-01', True, (str(tree['pi1']),))
    with pytest.raises(hook.Denied):
        hook.open_file(res, [os.path.realpath(tree['root'])])


def test_inside(hook):
    assert hook.inside('/a/b', '/a')
    assert hook.inside('/a', '/a')
    assert hook.inside('/a/b', '/')
    assert not hook.inside('/ab', '/a')
    assert not hook.inside('/', '/a')


def test_file_cache_serves_contents_once_and_notices_changes(hook, tmp_path):
    cache = hook.FileCache(4000)
    path = tmp_path / 'kernel8.img'
    path.write_bytes(b'a' * 900)

    def read():
        fd = os.open(path, os.O_RDONLY)
        try:
            data = cache.get(fd)
            return None if data is None else bytes(data)
        finally:
            os.close(fd)

    assert read() == b'a' * 900
    assert cache.held == 900
    assert read() == b'a' * 900 and cache.held == 900  # a hit: nothing read again
    path.write_bytes(b'b' * 950)  # rewritten in place: new size and mtime, a new entry
    assert read() == b'b' * 950
    replacement = tmp_path / 'new'
    replacement.write_bytes(b'c' * 800)
    replacement.rename(path)  # replaced by rename: a new inode
    assert read() == b'c' * 800
    assert cache.held <= 4000
    big = tmp_path / 'initramfs8'
    big.write_bytes(b'd' * 1001)  # over a quarter of the limit: served from the file, not cached
    fd = os.open(big, os.O_RDONLY)
    try:
        assert cache.get(fd) is None
    finally:
        os.close(fd)
    for index in range(6):  # least recently used contents go first
        other = tmp_path / ('f%d' % index)
        other.write_bytes(bytes([index]) * 990)
        fd = os.open(other, os.O_RDONLY)
        try:
            assert bytes(cache.get(fd)) == bytes([index]) * 990
        finally:
            os.close(fd)
    assert cache.held <= 4000
    assert len(cache.entries) == 4


def test_file_cache_off(hook, tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'x')
    fd = os.open(path, os.O_RDONLY)
    try:
        assert hook.FileCache(0).get(fd) is None
    finally:
        os.close(fd)
