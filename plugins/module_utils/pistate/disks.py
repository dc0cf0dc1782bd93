# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Extra disks for Pis: names, sizes, the container each Pi's disks live in, planning and the index.

Layout in ``<disks_dir>`` (mode 0700, out of every Pi's reach):

- ``<serial>.img``   the Pi's disks file system: a sparse ext4 image, sized for all its disks;
- ``<serial>.json``  the index pi_disk trusts (name, file, size, fstype, nfs_path of each disk);
- ``mnt/<serial>/``  the mount point (``nosuid,nodev,noexec``) and the one export of the Pi's disks,
  holding ``<name>/disk.img``. The Pi can write anything in there, so nothing read from it is trusted.
  ``mnt`` is a tmpfs that holds only mount points (``points``).

A Pi can forge NFS handles naming any inode of the file system it is exported; a file system of
its own holding only its disks is all such a handle can reach (``loopfs``). Pure functions here;
``diskfiles`` touches files, ``diskwork`` plans and applies. No AnsibleModule here.

A ``disk.img`` is the Pi's, written raw: the bakery never parses it (no superblock read, no
``e2fsck``, ``resize2fs``, ``debugfs``, ``blkid`` or ``mount`` on it), because a parser run as root
on bytes a Pi chose is the Pi's way into the bakery (and an ``e2fsck`` waiting on the MMP interval
the Pi set stops every module behind the lock). What pi_disk knows of a disk is what the bakery
itself knows: the file's size and allocation (``fstat``) and what its index recorded when it made
it. Growing a disk grows the file; the Pi grows its own file system.
"""

from __future__ import annotations

import json
import os

from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import is_name
from ansible_collections.pifleet.netboot.plugins.module_utils.common.sizes import MIB, human
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.points import points_dir

NAME_MAX = 64
IMAGE = 'disk.img'
LEGACY_INDEX = 'disks.json'  # where older pifleet kept the index, inside the Pi's directory
DISKS_MODE = 0o700
INDEX_LIMIT = 1 << 20
MIN_EXT4 = 8 * MIB
# Containers are whole ext4 block groups (4 KiB blocks), so resize2fs always fills them exactly.
GROUP = 128 * MIB
JOURNAL = 32 * MIB
PER_DISK = MIB  # the disk's directory and the extent tree of a fully written disk.img
FIXED = 16 * MIB  # superblock, descriptors, bitmaps, root and lost+found of a small container
SLACK = 64 * MIB
MIN_INODES = 256  # two per disk; ext4 cannot add inodes later except by growing
INODE_RATIO = 4 * MIB  # mke2fs -T largefile4: disk images are few and large


class DiskError(Exception):
    """A request that cannot be met; the message says what, for which disk, why and how to fix it."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.details = details


class Layout:
    """The paths of one Pi's disks in ``disks_dir``."""

    def __init__(self, disks_dir, serial):
        self.serial = serial
        base = os.path.join(disks_dir, serial)
        # The mount point and export: on the mount points' own tmpfs, never on the file system of the images.
        self.point = os.path.join(points_dir(disks_dir), serial)
        self.old_point = base  # where earlier pifleet releases mounted it, on the data file system (moved by pi_disk)
        self.image = base + '.img'
        self.index = base + '.json'

    def disk(self, name):
        return os.path.join(self.point, name, IMAGE)


def check_name(name):
    if not is_name(name) or len(name) > NAME_MAX or name == LEGACY_INDEX:
        return ('disk name %r is not valid: use up to %d lower-case letters, digits, ".", "_" and "-", starting '
                'with a letter or digit, not %r (for example "data" or "scratch-1")' % (name, NAME_MAX, LEGACY_INDEX))
    return None


# --------------------------------------------------------------------------- the container


def container_size(sizes):
    """Bytes of a container that holds disks of these sizes fully written, with ext4's overhead and slack.

    ext4 metadata grows with the size (bitmaps, inode tables, descriptors: about 0.03% measured with
    these mke2fs options); 0.1% is allowed for it, on top of the journal and a fixed part.
    """
    total = sum(sizes)
    need = total + len(sizes) * PER_DISK + JOURNAL + FIXED + SLACK + -(-total // 1024)
    return -(-need // GROUP) * GROUP


def inode_count(capacity):
    return max(MIN_INODES, capacity // INODE_RATIO)


# --------------------------------------------------------------------------- disks


def has_data(current):
    """Whether removing a disk could lose something: what ``absent`` without force refuses.

    Told from the file alone, never from its content: ``none``, any allocated block (a fresh sparse
    file has none); ``ext4``, more blocks allocated than its blank file system had when pi_disk made it
    (``blank`` in the index: a Pi that only mounted it counts as having written, which errs on the safe
    side), or no such record (a disk made before pifleet kept it: it cannot tell). Either: other files
    the Pi put in the disk's directory.
    """
    if current.get('extra'):
        return True
    if current['fstype'] == 'ext4':
        blank = current.get('blank')
        return blank is None or current['allocated'] > blank
    return current['allocated'] > 0


def plan_disk(want, current, dir_exists=False):
    """The action that takes one disk from ``current`` (see diskfiles.inspect) to ``want``; DiskError if refused.

    Returns ``created``, ``grown`` (the file by a hole; the Pi grows its file system), ``unchanged`` or
    ``removed``. Only the file's size decides: the file system inside it is the Pi's.
    """
    what = 'disk %s of Pi %s' % (want['name'], want['serial'])
    if want['state'] == 'absent':
        return _plan_absent(want, current, dir_exists, what)
    size, fstype = want['size'], want['fstype']
    if fstype == 'ext4' and size < MIN_EXT4:
        raise DiskError('size %s of %s is too small for ext4: an ext4 disk needs at least %s; ask for more, or '
                        'use fstype: none' % (human(size), what, human(MIN_EXT4)))
    if current is None:
        return {'action': 'created', 'size': size}
    if current['fstype'] not in (None, fstype):  # None: an index lost and rebuilt cannot say
        raise DiskError('changing the file system of %s from %s to %s refused: disks are never reformatted (that '
                        'would destroy their data); keep fstype: %s, or remove the disk (state: absent) and create '
                        'it again' % (what, current['fstype'], fstype, current['fstype']))
    if size < current['size']:
        now = human(current['size'])
        raise DiskError('shrinking %s refused: its disk.img is %s and size asks for %s; disks never shrink (data '
                        'would be cut off). Keep size at %s or more, or create a new disk under another name; if the '
                        'Pi made its disk.img bigger itself, shrink it back on the Pi (its own file system first) or '
                        'remove the disk with force: true' % (what, now, human(size), now))
    if size == current['size']:
        return {'action': 'unchanged'}
    return {'action': 'grown', 'size': size}


def _plan_absent(want, current, dir_exists, what):
    if current is None:
        return {'action': 'removed' if dir_exists else 'unchanged'}
    if not want['force'] and has_data(current):
        if current['fstype'] == 'ext4' and current.get('blank') is None:
            why = 'pifleet has no record of how it looked blank (it was made before pifleet kept one)'
        else:
            why = '%s file system, %s allocated' % (current['fstype'], human(current['allocated']))
            if current['fstype'] == 'ext4':
                why += ', %s when pi_disk made it blank' % human(current['blank'])
        extra = ', and other files in its directory' if current.get('extra') else ''
        raise DiskError('removing %s refused: it may hold data (%s%s); pi_disk never reads inside it to make sure. '
                        'Set force: true to delete it with its data' % (what, why, extra))
    return {'action': 'removed'}


# --------------------------------------------------------------------------- the index


def parse_index(text):
    """``{name: {'size', 'fstype'[, 'blank']}}`` from an index's text; None when it is not one (rebuilt then).

    ``blank``: bytes an ext4 disk had allocated when pi_disk made it (its blank file system), see ``has_data``.
    """
    try:
        entries = json.loads(text).get('disks', [])
        found = {}
        for entry in entries:
            name, size, fstype = entry['name'], entry['size'], entry.get('fstype')
            if check_name(name) is None and isinstance(size, int) and size > 0 and fstype in ('none', 'ext4'):
                found[name] = {'size': size, 'fstype': fstype}
                blank = entry.get('blank')
                if isinstance(blank, int) and not isinstance(blank, bool) and blank >= 0:
                    found[name]['blank'] = blank
        return found
    except (ValueError, AttributeError, TypeError, KeyError):
        return None


def load_index(path):
    """(text, entries) of the index at ``path``: ('', {}) when there is none, (text, None) when unreadable."""
    try:
        with open(path, encoding='utf-8') as handle:
            text = handle.read(INDEX_LIMIT + 1)
    except FileNotFoundError:
        return '', {}
    if len(text) > INDEX_LIMIT:
        return text[:200], None
    return text, parse_index(text)


def render_index(layout, entries):
    """The index text for ``{name: {'size', 'fstype'}}``; '' (no file) when the Pi has no disk.

    ``nfs_path`` is the export (the Pi's disks file system); the disk is ``<name>/disk.img`` in it.
    """
    if not entries:
        return ''
    disks = [dict({'name': name, 'file': layout.disk(name), 'size': entry['size'], 'fstype': entry['fstype'] or 'none',
                   'nfs_path': layout.point}, **({'blank': entry['blank']} if entry.get('blank') is not None else {}))
             for name, entry in sorted(entries.items())]
    return json.dumps({'serial': layout.serial, 'disks': disks}, indent=2, sort_keys=True) + '\n'
