# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for the pi_disk integration tests (as root): a bakery's paths, and looks at its file systems
with e2fsprogs and util-linux rather than through the module."""

from __future__ import annotations

import hashlib
import os
import subprocess

from fstree import release_below, snapshot

SERIAL = '3a4b5c6d'


def bakery(tmp_path):
    """Paths for one bakery (a fixture's body); every file system pi_disk mounted below is unmounted afterwards,
    its loop devices freed."""
    srv = tmp_path / 'srv'  # what the module changes; the lock file (the holder's pid) is beside it
    srv.mkdir()
    # points: where pi_disk mounts (and the Pis mount) each Pi's disks, the mount points' tmpfs.
    yield {'top': srv, 'disks': srv / 'disks', 'points': srv / 'disks' / 'mnt', 'units': srv / 'units',
           'lock': tmp_path / 'lock'}
    assert release_below(tmp_path) == []


def state(lab):
    """snapshot() of what pi_disk manages; a mounted file system's image only by its size (the kernel writes
    superblock times, lazy inode-table init and atimes to it on its own)."""
    found = snapshot(lab['top'])
    for rel in found:
        if rel.startswith('disks/') and rel.endswith('.img') and rel.count('/') == 1:
            found[rel] = found[rel][3]
    return found


def base(lab, **extra):
    return dict({'disks_dir': str(lab['disks']), 'units_dir': str(lab['units']), 'lock_file': str(lab['lock']),
                 'allow_root_filesystem': True}, **extra)  # the test's temp dirs may lie on /


def tool(*argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=dict(os.environ, LANG='C', LC_ALL='C'))
    assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    return proc.stdout


def superblock(image):
    """dumpe2fs -h as a dict: the file system as e2fsprogs sees it, not as the module reports it."""
    fields = {}
    for line in tool('dumpe2fs', '-h', str(image)).splitlines():
        key, sep, value = line.partition(':')
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def fs_bytes(image):
    info = superblock(image)
    return int(info['Block count']) * int(info['Block size'])


def device(point):
    """The loop device mounted at ``point``: its superblock is current, the image file's may lag behind."""
    return tool('findmnt', '-n', '-o', 'SOURCE', '--mountpoint', str(point)).strip()


def mount_options(point):
    return tool('findmnt', '-n', '-o', 'OPTIONS', '--mountpoint', str(point)).strip().split(',')


def sha(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()
