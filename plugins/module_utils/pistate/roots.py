# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-Pi root file systems: where they live, how they are cloned, what state they are in.

Each Pi's root is an ext4 file system of its own, so no NFS handle it forges can reach anything else
(``loopfs``). In ``<roots_dir>`` (mode 0700):

- ``<serial>.img``  the root file system, a clone of a bakeform generation's ``root.img`` with its own UUID;
- ``<serial>.json`` the marker: what the root was made from (bakeform, generation), which fixes, host keys,
  certificate and kernel hold it has. It lives beside the image, out of the Pi's reach, so a Pi cannot
  rewrite what pi_root believes about it;
- ``mnt/<serial>/`` the mount point (``nosuid,nodev``), the directory that gets exported. ``mnt`` is a tmpfs
  that holds only mount points (``points``): a root that is not mounted exposes an empty directory there,
  never the file system of the images;
- ``<serial>.prev.img`` and ``<serial>.prev.json``: the root it had before, kept for a rollback (never mounted);
- ``<serial>.swap.json``: the journal of a move of those files, there only while one runs (``rollback``);
- ``<serial>.identity/``: the Pi's SSH host keys and machine-id, kept by the bakery (``identity``).

Clones are a reflink copy of the golden image where the file system shares extents (XFS, btrfs:
constant time, almost no space) or a plain sparse copy. External tools run through one
``run(argv)`` callable (``AnsibleModule.run_command`` in the module). No AnsibleModule here.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import re
import uuid

from ansible_collections.pifleet.netboot.plugins.module_utils.common import extuuid as _extuuid
from ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic import read_mounts
from ansible_collections.pifleet.netboot.plugins.module_utils.common.version import COLLECTION_VERSION
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.points import points_dir

METHODS = ('reflink', 'copy')
NO_REFLINK_FS = ('ext2', 'ext3', 'ext4', 'tmpfs', 'overlay')
ROOTS_MODE = 0o700
MARKER_LIMIT = 1 << 16


class RootError(Exception):
    """A problem with a Pi's root or the host; the message says what and how to fix it."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.details = details


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


class Layout:
    """The paths of one Pi's root in ``roots_dir``."""

    def __init__(self, roots_dir, serial):
        self.serial = serial
        base = os.path.join(roots_dir, serial)
        # The mount point and export: on the mount points' own tmpfs, never on the file system of the images.
        self.point = os.path.join(points_dir(roots_dir), serial)
        self.old_point = base  # where earlier pifleet releases mounted it, on the data file system (moved by pi_root)
        self.image = base + '.img'
        self.marker = base + '.json'
        # The root it had before its last rebuild, upgrade or rollback, kept whole for a rollback.
        self.prev_image = base + '.prev.img'
        self.prev_marker = base + '.prev.json'
        # Written before a change that moves more than one of the files above, removed after it (rollback.py).
        self.journal = base + '.swap.json'
        # The Pi's SSH host keys and machine-id, kept by the bakery (identity.py).
        self.identity = base + '.identity'


def load_marker(path, strict=True):
    """The marker at ``path``; None when missing (or unreadable, unless ``strict``)."""
    try:
        with open(path, encoding='utf-8') as handle:
            marker = json.loads(handle.read(MARKER_LIMIT))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError as exc:
        if not strict:
            return None
        raise RootError('marker %s is not valid JSON (%s); use state: rebuilt to make the root again'
                        % (path, exc)) from exc
    return marker if isinstance(marker, dict) else None


_MARKER_NAME = re.compile(r'([0-9a-f]{8})(\.prev)?\.json')


def references(roots_dir):
    """What every root in ``roots_dir`` was built from, read from the markers beside the images.

    One dict per marker: ``serial``, ``hostname``, ``kept`` (``current`` or ``previous``: the root kept
    for a rollback), ``bakeform``, ``generation`` (None in markers made before generations) and
    ``sha256``. Only pifleet's own markers are read, never anything inside a root (a Pi controls that).
    A generation that appears here is in use and must stay in the store.
    """
    try:
        names = sorted(os.listdir(roots_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        match = _MARKER_NAME.fullmatch(name)
        if not match:
            continue
        marker = load_marker(os.path.join(roots_dir, name), strict=False)
        if not marker or not marker.get('bakeform'):
            continue
        generation = marker.get('generation')
        found.append({'serial': match.group(1), 'hostname': marker.get('hostname'),
                      'kept': 'previous' if match.group(2) else 'current', 'bakeform': marker['bakeform'],
                      'generation': generation if isinstance(generation, int) and not isinstance(generation, bool)
                      else None, 'sha256': marker.get('bakeform_sha256')})
    return found


def marker_text(marker):
    return '' if marker is None else json.dumps(marker, indent=2, sort_keys=True) + '\n'


def plan_action(state, exists, marker):
    """What to do with one Pi's root: clone, fix, rebuild, rollback, remove, none or foreign (refuse).

    ``state: present`` never changes a root's generation; a root that was rolled back already is only
    fixed when asked to roll back again (a second run changes nothing).
    """
    if state == 'absent':
        return 'remove' if exists else 'none'
    if not exists:
        return 'clone'
    if state == 'rebuilt':
        return 'rebuild'
    if marker is None:
        return 'foreign'
    if state == 'rolledback' and not marker.get('rolled_back'):
        return 'rollback'
    return 'fix'


def marker_generation(marker, index):
    """The generation a root was built from: its marker's, or (markers made before generations) the
    generation of the index whose content (sha256) it was cloned from; None when neither says."""
    generation = (marker or {}).get('generation')
    if isinstance(generation, int) and not isinstance(generation, bool) and generation >= 1:
        return generation
    sha = (marker or {}).get('bakeform_sha256')
    for number, summary in sorted(((index or {}).get('generations') or {}).items()):
        if sha and isinstance(summary, dict) and summary.get('sha256') == sha and number.isdigit():
            return int(number)
    return None


def sha256_text(text):
    return None if text is None else hashlib.sha256(text.encode('utf-8')).hexdigest()


def new_marker(*, serial, hostname, bakeform, generation, sha256, method, fixes, keys_sha256, boot_mount, fs_uuid,
               host_keys, certificate=None, kernel_packages=None, instance_id=None, created=None):
    stamp = now()
    return {
        'serial': serial, 'hostname': hostname, 'bakeform': bakeform, 'generation': generation,
        'bakeform_sha256': sha256, 'clone_method': method, 'fixes': sorted(fixes),
        'authorized_keys_sha256': keys_sha256, 'boot_mount': boot_mount, 'fs_uuid': fs_uuid,
        'host_keys': list(host_keys), 'host_certificate': certificate is not None, 'certificate': certificate,
        'kernel_packages': kernel_packages, 'rolled_back': None, 'instance_id': instance_id,
        'created': created or stamp, 'updated': stamp, 'collection_version': COLLECTION_VERSION,
    }


def updated_marker(marker, *, hostname, fixes, keys_sha256, boot_mount, **extra):
    """The marker after in-place fixes (``extra``: other fields it records now); None when nothing changes."""
    wanted = dict(marker, hostname=hostname, boot_mount=boot_mount,
                  fixes=sorted(set(marker.get('fixes') or []) | set(fixes)), **extra)
    if keys_sha256 is not None:
        wanted['authorized_keys_sha256'] = keys_sha256
    if wanted == marker:
        return None
    wanted.update(updated=now(), collection_version=COLLECTION_VERSION)
    return wanted


# --------------------------------------------------------------------------- file systems


def mount_of(path, mountinfo='/proc/self/mountinfo'):
    """(source, fstype) of the mount holding ``path``: the longest mount point that is a prefix of it."""
    path = os.path.realpath(path)
    best, found = -1, (None, None)
    for point, fstype, source in read_mounts(mountinfo):
        inside = path == point or path.startswith(point.rstrip('/') + '/')
        if inside and len(point) >= best:
            best, found = len(point), (source, fstype)
    return found


def choose_methods(requested, golden, roots_dir, mount=mount_of):
    """The clone methods to try, in order; the first that works is used."""
    if requested == 'snapshot':
        raise RootError('clone_method snapshot is no longer offered: each root is a file system image of its own '
                        '(so a Pi cannot reach other Pis through forged NFS handles), and on btrfs or XFS '
                        'clone_method reflink (or auto) clones it in constant time')
    if requested != 'auto':
        return [requested]
    golden_fs, roots_fs = mount(golden), mount(roots_dir)
    if golden_fs != roots_fs or golden_fs[1] in NO_REFLINK_FS:
        return ['copy']  # no clone shares extents across file systems, nor on these
    return ['reflink', 'copy']


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def reflink(golden, dest):
    """Make ``dest`` (not existing yet) share all of ``golden``'s extents: what ``cp --reflink=always`` does, without a
    process of its own (a first run clones a root per Pi). OSError when the file system cannot (EOPNOTSUPP, EXDEV)."""
    with open(golden, 'rb') as src:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, os.fstat(src.fileno()).st_mode & 0o777)
        try:
            fcntl.ioctl(fd, FICLONE, src.fileno())
        finally:
            os.close(fd)


class Cloner:
    """Clone a golden image and give the clone an identity of its own (argv lists through ``run``)."""

    def __init__(self, run, which, reflink=reflink, set_uuid=_extuuid.set_uuid):
        self.run = run
        self.which = which  # which(name, required) -> path of a tool on the host (get_bin_path in the module)
        self.reflink = reflink  # tests hand in one that fails
        self.set_uuid = set_uuid  # tests hand in one that declines, so tune2fs runs

    def _check(self, argv, what):
        rc, out, err = self.run(argv)
        if rc != 0:
            raise RootError('%s failed: %s' % (what, (err or out).strip()), rc=rc, stderr=err, cmd=argv)
        return out

    def clone(self, golden, dest, methods, who):
        """Make ``dest`` (not existing yet) a copy of the image ``golden``; return the method used."""
        errors = []
        for method in methods:
            if method == 'reflink':
                try:
                    self.reflink(golden, dest)
                    return method
                except OSError as exc:
                    errors.append('reflink: %s' % (os.strerror(exc.errno) if exc.errno else exc))
            else:
                cp = [self.which('setpriv', True), '--pdeathsig', 'KILL', '--', self.which('cp', True)]
                rc, out, err = self.run([*cp, '--reflink=never', '--sparse=always', '--', golden, dest])
                if rc == 0:
                    return method
                errors.append('%s: %s' % (method, (err or out).strip()))
            if os.path.lexists(dest):
                os.unlink(dest)  # a partial copy must not be mistaken for the next attempt's work
        raise RootError('cloning %s for %s failed (%s); clone_method: copy works on any file system with enough '
                        'space' % (golden, who, '; '.join(errors)))

    def new_uuid(self, image, who):
        """A fresh UUID, so the NFS server and the kernel tell this file system from its siblings.

        Written here when the superblocks alone carry it (common/extuuid: the clone of a golden root the bakery
        made, with its checksum seed stored); tune2fs for any other layout."""
        try:
            if self.set_uuid(image, uuid.uuid4().bytes):
                return
        except OSError as exc:
            raise RootError('giving the root of %s its own UUID failed: %s' % (who, exc)) from exc
        self._check([self.which('tune2fs', True), '-U', 'random', image], 'giving the root of %s its own UUID' % who)
