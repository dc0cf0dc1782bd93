# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Extra disks for Pis: sparse ``disk.img`` files the Pi attaches over NFS, and its ``disks.json``.

Layout: ``<disks_dir>/<serial>/<name>/disk.img`` (one directory per disk: it is what gets
exported) and ``<disks_dir>/<serial>/disks.json`` (the list the Pi reads). Parse and plan are pure
functions; ``DiskWorker`` applies a plan through one ``run(argv)`` callable. No AnsibleModule here.
"""

from __future__ import annotations

import decimal
import json
import os
import re
import stat
import struct

from ansible_collections.pifleet.netboot.plugins.module_utils import _atomic

NAME_RE = re.compile(r'[a-z0-9][a-z0-9._-]*')
NAME_MAX = 64
IMAGE = 'disk.img'
INDEX = 'disks.json'
MIB = 1024 * 1024
MIN_EXT4 = 8 * MIB
_SIZE_RE = re.compile(r'(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|b)?', re.IGNORECASE)
_UNITS = {None: 0, 'k': 1, 'm': 2, 'g': 3, 't': 4}
# ext2/3/4 superblock (1024 bytes in): the few fields planning needs, little-endian.
_EXT_MAGIC = 0xEF53
_INCOMPAT_RECOVER = 0x4
_INCOMPAT_64BIT = 0x80


class DiskError(Exception):
    """A request that cannot be met; the message says what, for which disk, why and how to fix it."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.details = details


def check_name(name):
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > NAME_MAX or name == INDEX:
        return ('disk name %r is not valid: use up to %d lower-case letters, digits, ".", "_" and "-", starting '
                'with a letter or digit, not %r (for example "data" or "scratch-1")' % (name, NAME_MAX, INDEX))
    return None


def parse_size(value):
    """Bytes of a size given as an int or as ``512M``, ``1.5G``, ``8GiB``…; rounded up to a whole MiB."""
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    elif isinstance(value, str) and _SIZE_RE.fullmatch(value.strip()):
        number, unit = _SIZE_RE.fullmatch(value.strip()).groups()
        exact = decimal.Decimal(number) * (1024 ** _UNITS[unit.lower() if unit else None])
        count = int(exact.to_integral_value(rounding=decimal.ROUND_CEILING))
    else:
        raise DiskError('size %r is not a size: give bytes (an integer) or a number with K, M, G or T '
                        '(binary units, e.g. "512M", "1.5G", "8GiB")' % (value,))
    if count <= 0:
        raise DiskError('size %r is not a size: a disk needs at least 1 MiB' % (value,))
    return -(-count // MIB) * MIB


def human(count):
    """``134217728`` → ``128 MiB (134217728 bytes)``: readable and exact in messages."""
    for unit, power in (('TiB', 4), ('GiB', 3), ('MiB', 2), ('KiB', 1)):
        if count >= 1024 ** power:
            return '%s %s (%d bytes)' % (('%.2f' % (count / 1024 ** power)).rstrip('0').rstrip('.'), unit, count)
    return '%d bytes' % count


def read_ext_super(path):
    """The ext2/3/4 superblock fields planning needs, or None when ``path`` holds no ext file system."""
    try:
        with open(path, 'rb') as handle:
            handle.seek(1024)
            block = handle.read(1024)
    except OSError:
        return None
    if len(block) < 1024 or struct.unpack_from('<H', block, 0x38)[0] != _EXT_MAGIC:
        return None
    inodes, blocks_lo, _unused_reserved, _unused_free_blocks, free_inodes = struct.unpack_from('<5I', block, 0)
    log_block, _unused_log_cluster, per_group = struct.unpack_from('<3I', block, 0x18)
    incompat = struct.unpack_from('<I', block, 0x60)[0]
    blocks_hi = struct.unpack_from('<I', block, 0x150)[0] if incompat & _INCOMPAT_64BIT else 0
    block_size = 1024 << log_block
    return {
        'block_size': block_size,
        'fs_size': ((blocks_hi << 32) | blocks_lo) * block_size,
        'group_size': per_group * block_size,
        'inodes_used': inodes - free_inodes,
        'first_inode': struct.unpack_from('<I', block, 0x54)[0],
        'needs_recovery': bool(incompat & _INCOMPAT_RECOVER),
    }


def inspect_disk(disk_dir, recorded_fstype):
    """Current state of one disk, or None when it has no ``disk.img``.

    The fstype is the one recorded in disks.json when there is one (a Pi may have put its own file
    system on a ``none`` disk), else what the file holds.
    """
    image = os.path.join(disk_dir, IMAGE)
    for path in (disk_dir, image):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise DiskError('%s is a symbolic link: pifleet disks never are (it could point outside the disks '
                            'directory); remove it or move it away' % path)
    if not stat.S_ISREG(st.st_mode):
        raise DiskError('%s is not a regular file: it is not a pifleet disk; move it away' % image)
    ext = read_ext_super(image)
    fstype = recorded_fstype or ('ext4' if ext else 'none')
    return {'size': st.st_size, 'allocated': st.st_blocks * 512, 'fstype': fstype,
            'ext': ext if fstype == 'ext4' else None}


def has_data(current):
    """Whether removing a disk would lose something: what ``absent`` without force refuses.

    ``none``: any allocated block (a fresh sparse file has none). ``ext4``: more inodes in use than
    a fresh file system (reserved inodes and lost+found), or a journal that needs recovery (mounted
    by a Pi), or an unreadable superblock (so we cannot tell).
    """
    if current['fstype'] != 'ext4':
        return current['allocated'] > 0
    ext = current['ext']
    return ext is None or ext['needs_recovery'] or ext['inodes_used'] > ext['first_inode']


def plan_disk(want, current, dir_exists=False):
    """The action that takes one disk from ``current`` (inspect_disk) to ``want``; DiskError if refused.

    Returns ``created``, ``grown`` (``resize_only`` when only the ext4 file system lags behind its
    file, after an interrupted grow), ``unchanged`` or ``removed``.
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
    if current['fstype'] != fstype:
        raise DiskError('changing the file system of %s from %s to %s refused: disks are never reformatted (that '
                        'would destroy their data); keep fstype: %s, or remove the disk (state: absent) and create '
                        'it again' % (what, current['fstype'], fstype, current['fstype']))
    if size < current['size']:
        raise DiskError('shrinking %s refused: it is %s and size asks for %s; disks never shrink (data would be '
                        'cut off); keep size at %s or more, or create a new disk under another name'
                        % (what, human(current['size']), human(size), human(current['size'])))
    if fstype == 'ext4':
        return _plan_ext4(size, current, what)
    if size == current['size']:
        return {'action': 'unchanged'}
    return {'action': 'grown', 'size': size, 'resize_only': False}


def _plan_absent(want, current, dir_exists, what):
    if current is None:
        return {'action': 'removed' if dir_exists else 'unchanged'}
    if not want['force'] and has_data(current):
        raise DiskError('removing %s refused: it holds data (%s file system, %s allocated); set force: true '
                        'to delete it with its data' % (what, current['fstype'], human(current['allocated'])))
    return {'action': 'removed'}


def _plan_ext4(size, current, what):
    ext = current['ext']
    # resize2fs leaves less than one block group unused at the end; more means a grow was interrupted.
    lagging = ext is not None and ext['fs_size'] + ext['group_size'] <= current['size']
    if size == current['size'] and not lagging:
        return {'action': 'unchanged'}
    if ext is None:
        raise DiskError('growing %s refused: its disk.img holds no readable ext4 file system; check it with '
                        'e2fsck -f, or remove the disk and create it again' % what)
    if ext['needs_recovery']:
        raise DiskError('growing %s refused: its ext4 journal needs recovery, so a Pi has it mounted (or it was '
                        'not cleanly unmounted); shut the Pi down (if it is already off, run e2fsck -f on the '
                        'disk.img), then run again' % what)
    return {'action': 'grown', 'size': size, 'resize_only': size == current['size']}


def load_index(serial_dir):
    """The disks.json of a Pi as ``(text, {name: entry})``; ``('', {})`` when there is none."""
    path = os.path.join(serial_dir, INDEX)
    try:
        with open(path, encoding='utf-8') as handle:
            text = handle.read()
    except FileNotFoundError:
        return '', {}
    try:
        entries = json.loads(text).get('disks', [])
        return text, {entry['name']: entry for entry in entries}
    except (ValueError, AttributeError, TypeError, KeyError):
        return text, {}  # unreadable: rewritten from the disks found on disk


def scan_disks(serial_dir):
    """Names of the disk directories of a Pi that hold a disk.img."""
    try:
        names = os.listdir(serial_dir)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if check_name(name) is None
                  and os.path.isfile(os.path.join(serial_dir, name, IMAGE))
                  and not os.path.islink(os.path.join(serial_dir, name)))


def index_entry(serial_dir, name, size, fstype):
    disk_dir = os.path.join(serial_dir, name)
    return {'name': name, 'file': os.path.join(disk_dir, IMAGE), 'size': size, 'fstype': fstype, 'nfs_path': disk_dir}


def render_index(serial, entries):
    """disks.json text for a Pi; '' (no file) when it has no disk."""
    if not entries:
        return ''
    data = {'serial': serial, 'disks': sorted(entries, key=lambda entry: entry['name'])}
    return json.dumps(data, indent=2, sort_keys=True) + '\n'


def make_dir(path, mode=0o755):
    """Create ``path`` root-owned with ``mode`` whatever the umask; refuse a symbolic link there."""
    if os.path.islink(path):
        raise DiskError('%s is a symbolic link: pifleet disk directories never are (it could point outside the '
                        'disks directory); remove it or move it away' % path)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise DiskError('%s exists and is not a directory; move it away' % path) from None
        return
    os.chmod(path, mode)


def write_index(serial_dir, text):
    """Replace (or remove, for '') disks.json atomically."""
    path = os.path.join(serial_dir, INDEX)
    if not text:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    _atomic.write_text(path, text, 0o644)


class DiskWorker:
    """Apply planned actions to disk files; ``run(argv)`` returns ``(rc, out, err)``, ``which(name)`` a path."""

    def __init__(self, run, which):
        self.run = run
        self.which = which

    def _check(self, argv, what, ok=(0,)):
        rc, out, err = self.run(argv)
        if rc not in ok:
            raise DiskError('%s failed: %s' % (what, (err or out).strip() or 'exit status %d' % rc),
                            rc=rc, stderr=err, cmd=argv)

    def create(self, disk_dir, name, size, fstype, what):
        """Build disk.img in a locked scratch dir beside it (sparse, formatted), then link it into place."""
        make_dir(disk_dir)
        with _atomic.ScratchDir(disk_dir, 'disk') as scratch:
            built = scratch.join(IMAGE)
            fd = os.open(built, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.ftruncate(fd, size)  # a hole, not written zeros: the file is sparse
            except OSError as exc:
                raise DiskError('creating %s failed: cannot make a %s file in %s (%s); ask for a smaller size or '
                                'use a file system that allows it' % (what, human(size), disk_dir, exc)) from exc
            finally:
                os.close(fd)
            if fstype == 'ext4':
                self._check([self.which('mkfs.ext4'), '-q', '-F', '-L', name[:16],
                             '-E', 'lazy_itable_init=1,lazy_journal_init=1,nodiscard', '--', built],
                            'formatting %s as ext4' % what)
            # link() rather than rename(): never replaces a disk.img that appeared meanwhile.
            try:
                os.link(built, os.path.join(disk_dir, IMAGE))
            except FileExistsError:
                raise DiskError('creating %s failed: %s appeared while it was being built (another run?); run '
                                'again' % (what, os.path.join(disk_dir, IMAGE))) from None

    def grow(self, image, size, fstype, resize_only, what):
        if not resize_only:
            try:
                os.truncate(image, size)  # grows by a hole: stays sparse
            except OSError as exc:
                raise DiskError('growing %s to %s failed: %s' % (what, human(size), exc)) from exc
        if fstype == 'ext4':
            # e2fsck -p exits 1 when it fixed something: still fit for resize2fs.
            self._check([self.which('e2fsck'), '-f', '-p', image], 'checking the ext4 file system of %s '
                        'before growing it (run e2fsck -f on %s by hand)' % (what, image), ok=(0, 1))
            self._check([self.which('resize2fs'), image], 'growing the ext4 file system of %s' % what)

    def remove(self, serial_dir, disk_dir, name):
        # Move it out of sight first: a crash mid-delete never leaves half a disk under its name.
        with _atomic.ScratchDir(serial_dir, name) as scratch:
            os.rename(disk_dir, scratch.join('old'))
