# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File-system helpers for integration tests and benchmarks (as root).

Trees described entry by entry (to compare a golden root or a clone with what the factory built),
snapshots of a directory (to prove a failed run changed nothing), leak checks for mounts and loop
devices, and a loop-file file system of a given type.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from contextlib import contextmanager

MKFS = {'xfs': ['mkfs.xfs', '-q', '-m', 'reflink=1'], 'ext4': ['mkfs.ext4', '-q', '-F'], 'btrfs': ['mkfs.btrfs', '-q']}


def describe(root):
    """The golden tree entry by entry, in the factory's `expect` format (hard links as path sets)."""
    entries, groups = [], {}
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            if rel == 'lost+found':
                continue
            st = os.lstat(path)
            kind = {stat.S_IFREG: 'file', stat.S_IFDIR: 'dir', stat.S_IFLNK: 'symlink', stat.S_IFCHR: 'char',
                    stat.S_IFBLK: 'block', stat.S_IFIFO: 'fifo'}[stat.S_IFMT(st.st_mode)]
            xattrs = {}
            if kind != 'symlink':
                xattrs = {n: os.getxattr(path, n, follow_symlinks=False).hex()
                          for n in sorted(os.listxattr(path, follow_symlinks=False))}
            if kind == 'file' and st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
            entries.append({
                'path': rel, 'type': kind, 'uid': st.st_uid, 'gid': st.st_gid, 'mode': st.st_mode & 0o7777,
                'size': st.st_size if kind == 'file' else None,
                'target': os.readlink(path) if kind == 'symlink' else None,
                'rdev': [os.major(st.st_rdev), os.minor(st.st_rdev)] if kind in ('char', 'block') else None,
                'xattrs': xattrs, 'inode': (st.st_dev, st.st_ino) if kind == 'file' and st.st_nlink > 1 else None,
            })
    return normalise(entries, lambda e: e.pop('inode'))


def normalise(entries, key):
    """Replace per-tree hard-link ids by the sorted paths sharing the inode, so trees compare."""
    members = {}
    for entry in entries:
        ident = key(entry)
        if ident is not None:
            members.setdefault(ident, []).append(entry['path'])
            entry['links'] = ident
    for entry in entries:
        entry['links'] = sorted(members[entry['links']]) if entry.get('links') is not None else None
    return {entry['path']: entry for entry in entries}


def expected_tree(expect):
    entries = [dict(entry) for entry in expect if entry['path'] not in ('.', '')]
    return normalise(entries, lambda e: e.pop('inode_group'))


def snapshot(top):
    """Everything about a directory tree that a failed run must leave untouched."""
    seen = {}
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(path, 'rb') as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
            seen[os.path.relpath(path, top)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, digest)
    return seen


def mounts_below(path):
    path = os.path.realpath(path)
    with open('/proc/self/mountinfo', encoding='utf-8') as info:
        return [line.split()[4] for line in info if line.split()[4].startswith(path)]


def unmount_below(path):
    """Unmount everything mounted below ``path`` (deepest first; lazily if busy): a fixture's last word."""
    top = os.path.realpath(path)
    for point in sorted((p for p in mounts_below(path) if p != top), key=len, reverse=True):
        if subprocess.run(['umount', point], check=False, capture_output=True).returncode != 0:
            subprocess.run(['umount', '--lazy', point], check=False, capture_output=True)
    unlock_below(path)


def unlock_below(path):
    """Clear the immutable flag of the mount points' directories below ``path`` (pi_root and pi_disk make
    ``<dir>/mnt`` immutable), so that a test's temp dir can be removed after a test that failed midway."""
    for base, dirs, _files in os.walk(path):
        for name in dirs:
            if name == 'mnt' and not os.path.ismount(os.path.join(base, name)):
                subprocess.run(['chattr', '-i', os.path.join(base, name)], check=False, capture_output=True)


def loops_backed_by(path):
    """Loop devices whose backing file lives below ``path``."""
    out = subprocess.run(['losetup', '--json', '--list'], capture_output=True, text=True, check=False).stdout
    devices = json.loads(out)['loopdevices'] if out.strip() else []
    return [d['name'] for d in devices if (d.get('back-file') or '').startswith(os.path.realpath(path))]


def release_below(path):
    """Unmount everything below ``path`` (deepest first, lazily if busy) and wait for its loop devices to go.

    For fixtures around modules that leave file systems mounted by design; returns what is left (nothing).
    """
    for point in sorted(mounts_below(path), key=len, reverse=True):
        if subprocess.run(['umount', point], capture_output=True, check=False).returncode:
            subprocess.run(['umount', '--lazy', point], capture_output=True, check=False)
    unlock_below(path)
    for _attempt in range(50):  # autoclear frees a loop device once its last user lets go
        if not loops_backed_by(path):
            break
        time.sleep(0.1)
    return mounts_below(path) + loops_backed_by(path)


@contextmanager
def mounted_ro(image, point):
    """An ext4 image file mounted read-only (no journal replay: nothing is written to it) at ``point``."""
    point.mkdir(exist_ok=True)
    subprocess.run(['mount', '-t', 'ext4', '-o', 'loop,ro,noload,nosuid,nodev', str(image), str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(['umount', str(point)], check=True)  # autoclear frees the loop device
        point.rmdir()


def release_mounts(top):
    """Unmount everything mounted below ``top``, deepest first (what a test that failed midway left)."""
    for point in sorted(mounts_below(top), key=len, reverse=True):
        if point != os.path.realpath(top):
            subprocess.run(['umount', '--lazy', point], check=False)


@contextmanager
def loop_fs(top, fstype, size='2G'):
    backing, mnt = top / ('%s.img' % fstype), top / ('%s-mnt' % fstype)
    mnt.mkdir(exist_ok=True)  # a run killed before its clean-up left it (empty: nothing is mounted there)
    subprocess.run(['truncate', '-s', size, str(backing)], check=True)
    subprocess.run([*MKFS[fstype], str(backing)], check=True, capture_output=True)
    subprocess.run(['mount', '-o', 'loop', str(backing), str(mnt)], check=True)  # autoclear frees the loop device
    try:
        yield mnt
    finally:
        for _attempt in range(50):  # a process of a failed test may still hold it for a moment
            if subprocess.run(['umount', str(mnt)], check=False, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(['umount', '--lazy', str(mnt)], check=False)
        backing.unlink()
        mnt.rmdir()
        assert mounts_below(top) == [] and loops_backed_by(top) == [], 'loop file system left behind'
