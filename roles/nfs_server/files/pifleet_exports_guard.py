# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pifleet exports guard: NFS-Ganesha never loads an export whose Pi file system is not mounted.

Each Pi's root and disks are exported at their mount point. A mount that failed at boot leaves the
bare mount point, and Ganesha would export it: kernel nfsd has the exports(5) option ``mp`` against
that, Ganesha has nothing alike. pifleet.netboot's nfs_export writes ``mp`` into each export's
``# pifleet options:`` line; this guard, run by systemd before Ganesha starts and before it reloads
(the nfs_server role's drop-in), writes each such EXPORT block as a comment (every line prefixed
``#| ``) while no file system is mounted at its Path, and as a block again once one is. The other
exports are served: one broken Pi does not stop the NFS service.

The file format is nfs_export's (plugins/module_utils/pistate/exports.py, ``render_ganesha``);
tests/unit/roles/test_exports_guard.py holds both to it. Standard library only; imports nothing of
the collection. Exit 0 when the file is as it should be (or absent); 1 when it cannot be read or
written, so that systemd does not start Ganesha on a file it could not check.

Run: ``python3 -I pifleet_exports_guard.py --exports /etc/ganesha/pifleet.conf [--check]``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

WITHHELD = '#| '
MOUNTED_ONLY = 'mp'
_BLOCK = re.compile(r'^(?:#\| )?EXPORT \{\n.*?^(?:#\| )?\}$', re.M | re.S)
_PREFIX = re.compile(r'^#\| ', re.M)
_PATH = re.compile(r'^\s*Path = "([^"]*)";', re.M)
_OPTIONS = re.compile(r'^\s*# pifleet options: (\S+)', re.M)
_OCTAL = re.compile(r'\\([0-7]{3})')


def mount_roots(mountinfo='/proc/self/mountinfo'):
    """{mount point: the path inside its file system mounted there}; the top mount wins."""
    roots = {}
    with open(mountinfo, encoding='utf-8', errors='surrogateescape') as info:
        for line in info:
            fields = line.split()
            roots[_unescape(fields[4])] = _unescape(fields[3])
    return roots


def _unescape(field):
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def guarded(text, is_mounted):
    """``text`` with each ``mp`` block withheld unless ``is_mounted(path)``; (new text, withheld paths)."""
    withheld = []

    def flip(match):
        block = _PREFIX.sub('', match.group(0))
        path, options = _PATH.search(block), _OPTIONS.search(block)
        if not path or not options or MOUNTED_ONLY not in options.group(1).split(','):
            return block
        if is_mounted(path.group(1)):
            return block
        withheld.append(path.group(1))
        return '\n'.join(WITHHELD + line for line in block.split('\n'))

    return _BLOCK.sub(flip, text), withheld


def mounted_check(roots):
    return lambda path: roots.get(os.path.realpath(path)) == '/'


def write_if_unchanged(path, text, seen):
    """Replace ``path`` by ``text`` unless it changed since it was read (nfs_export wrote it meanwhile)."""
    directory = os.path.dirname(path) or '.'
    fd, tmp = tempfile.mkstemp(prefix='.pifleet-guard-', dir=directory)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, seen.st_mode & 0o7777)
        now = os.stat(path)
        if (now.st_ino, now.st_mtime_ns, now.st_size) != (seen.st_ino, seen.st_mtime_ns, seen.st_size):
            return False
        os.replace(tmp, path)
        tmp = None
        return True
    finally:
        if tmp is not None:
            os.unlink(tmp)


def read(path):
    """(stat, text) of the exports file; (None, None) when there is none."""
    try:
        with open(path, encoding='utf-8') as handle:
            return os.fstat(handle.fileno()), handle.read()
    except FileNotFoundError:
        return None, None


def guard(path, mountinfo, check=False):
    """Withhold what must be; raises OSError or UnicodeDecodeError when the file cannot be read or written."""
    for _attempt in range(3):
        seen, text = read(path)
        if text is None:
            return
        new, withheld = guarded(text, mounted_check(mount_roots(mountinfo)))
        for export in withheld:
            print('pifleet exports guard: %s withheld, nothing is mounted there' % export, file=sys.stderr)
        if new == text or check or write_if_unchanged(path, new, seen):
            return
    raise OSError('%s kept changing while it was checked' % path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--exports', required=True, help="the Ganesha exports file pifleet's nfs_export writes")
    parser.add_argument('--check', action='store_true', help='report what would be withheld; change nothing')
    parser.add_argument('--mountinfo', default='/proc/self/mountinfo', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        guard(args.exports, args.mountinfo, args.check)
    except (OSError, UnicodeDecodeError) as exc:
        print('pifleet exports guard: cannot check %s, so Ganesha is not given it: %s' % (args.exports, exc),
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
