# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-Pi root file systems: where they live, how they are cloned, what state they are in.

Each Pi's root is an ext4 file system of its own, so no NFS handle it forges can reach anything else
(``loopfs``). In ``<roots_dir>`` (mode 0700):

- ``<serial>.img``  the root file system, a clone of the bakeform's ``root.img`` with its own UUID;
- ``<serial>.json`` the marker: what the root was made from and which fixes it has. It lives beside
  the image, out of the Pi's reach, so a Pi cannot rewrite what pi_root believes about it;
- ``mnt/<serial>/`` the mount point (``nosuid,nodev``), the directory that gets exported. ``mnt`` is a tmpfs
  that holds only mount points (``points``): a root that is not mounted exposes an empty directory there,
  never the file system of the images.

Clones are a reflink copy of the golden image where the file system shares extents (XFS, btrfs:
constant time, almost no space) or a plain sparse copy. External tools run through one
``run(argv)`` callable (``AnsibleModule.run_command`` in the module). No AnsibleModule here.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic import ScratchDir, read_mounts
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError
from ansible_collections.pifleet.netboot.plugins.module_utils.common.version import COLLECTION_VERSION
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.points import points_dir

METHODS = ('reflink', 'copy')
DEFAULT_KEY_TYPES = ('ed25519', 'ecdsa')
SSH_DIR = 'etc/ssh'
_HOST_KEY = re.compile(r'ssh_host_([a-z0-9]+)_key')
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


def plan_action(state, exists, marker, golden_sha256):
    """What to do with one Pi's root: clone, fix, drift, rebuild, remove, none or foreign (refuse)."""
    if state == 'absent':
        return 'remove' if exists else 'none'
    if not exists:
        return 'clone'
    if state == 'rebuilt':
        return 'rebuild'
    if marker is None:
        return 'foreign'
    if marker.get('bakeform_sha256') != golden_sha256:
        return 'drift'
    return 'fix'


def sha256_text(text):
    return None if text is None else hashlib.sha256(text.encode('utf-8')).hexdigest()


def new_marker(*, serial, hostname, bakeform, sha256, method, fixes, keys_sha256, boot_mount, fs_uuid,
               instance_id=None, created=None):
    stamp = now()
    return {
        'serial': serial, 'hostname': hostname, 'bakeform': bakeform, 'bakeform_sha256': sha256,
        'clone_method': method, 'fixes': sorted(fixes), 'authorized_keys_sha256': keys_sha256,
        'boot_mount': boot_mount, 'fs_uuid': fs_uuid, 'instance_id': instance_id, 'created': created or stamp,
        'updated': stamp, 'collection_version': COLLECTION_VERSION,
    }


def updated_marker(marker, *, hostname, fixes, keys_sha256, boot_mount):
    """The marker after in-place fixes; None when nothing it records changes."""
    wanted = dict(marker, hostname=hostname, boot_mount=boot_mount,
                  fixes=sorted(set(marker.get('fixes') or []) | set(fixes)))
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


class Cloner:
    """Clone a golden image and give the clone an identity of its own (argv lists through ``run``)."""

    def __init__(self, run, which):
        self.run = run
        self.which = which  # which(name, required) -> path of a tool on the host (get_bin_path in the module)

    def _check(self, argv, what):
        rc, out, err = self.run(argv)
        if rc != 0:
            raise RootError('%s failed: %s' % (what, (err or out).strip()), rc=rc, stderr=err, cmd=argv)
        return out

    def clone(self, golden, dest, methods, who):
        """Make ``dest`` (not existing yet) a copy of the image ``golden``; return the method used."""
        errors = []
        cp = [self.which('setpriv', True), '--pdeathsig', 'KILL', '--', self.which('cp', True)]
        for method in methods:
            extra = ['--reflink=always'] if method == 'reflink' else ['--reflink=never', '--sparse=always']
            rc, out, err = self.run([*cp, *extra, '--', golden, dest])
            if rc == 0:
                return method
            errors.append('%s: %s' % (method, (err or out).strip()))
            if os.path.lexists(dest):
                os.unlink(dest)  # a partial copy must not be mistaken for the next attempt's work
        raise RootError('cloning %s for %s failed (%s); clone_method: copy works on any file system with enough '
                        'space' % (golden, who, '; '.join(errors)))

    def new_uuid(self, image, who):
        """A fresh UUID, so the NFS server and the kernel tell this file system from its siblings."""
        self._check([self.which('tune2fs', True), '-U', 'random', image], 'giving the root of %s its own UUID' % who)


# --------------------------------------------------------------------------- SSH host keys


def host_keys(tree, types, make_key, carry=None):
    """Give the root in ``tree`` its own SSH host keys: carried ones when rebuilding, new ones otherwise.

    ``carry`` is {type: (private bytes, public bytes, uid, gid, mode)} read from the old root;
    ``make_key(kind)`` returns the path of a new private key (its ``.pub`` beside it). The golden
    image's keys are removed whatever their type: a key set is never shared. Returns the types made.
    """
    for name in tree.listdir(SSH_DIR):
        if _HOST_KEY.fullmatch(name.replace('.pub', '')):
            tree.unlink('%s/%s' % (SSH_DIR, name))
    made = []
    for kind in types:
        rel = '%s/ssh_host_%s_key' % (SSH_DIR, kind)
        if carry and kind in carry:
            private, public, uid, gid, mode = carry[kind]
            tree.write_bytes(rel, private, mode, force_owner=True, uid=uid, gid=gid)
            tree.write_bytes(rel + '.pub', public, 0o644, force_owner=True, uid=uid, gid=gid)
            continue
        key = make_key(kind)
        with open(key, 'rb') as private, open(key + '.pub', 'rb') as public:
            tree.write_bytes(rel, private.read(), 0o600, force_owner=True)
            tree.write_bytes(rel + '.pub', public.read(), 0o644, force_owner=True)
        made.append(kind)
    return made


def read_carry(tree, types):
    """The host keys of an old root to carry over on rebuild, read without following any symlink.

    Returns ({type: key material}, problem): a Pi that made its etc/ssh (or a key) a symlink gets new
    keys, never the target's (a symlink to the bakery's own /etc/ssh must not hand it our keys).
    """
    carried = {}
    try:
        names = tree.listdir(SSH_DIR)
    except ConfinedError as exc:
        return {}, str(exc)
    for kind in types:
        rel = '%s/ssh_host_%s_key' % (SSH_DIR, kind)
        if 'ssh_host_%s_key' % kind not in names:
            continue
        fd = tree.open_file(rel)
        if fd is None:
            continue
        try:
            st = os.fstat(fd)
            private = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        public = tree.read_bytes(rel + '.pub', 1 << 16)
        if private and public:
            carried[kind] = (private, public, st.st_uid, st.st_gid, st.st_mode & 0o7777)
    return carried, None


def keygen_argv(keygen, kind, hostname, key):
    return [keygen, '-q', '-N', '', '-t', kind, '-C', 'root@%s' % hostname, '-f', key]


def run_in_thread(argv):
    """(rc, stdout, stderr) of ``argv``, safe to call from several threads at once (run_command's preexec_fn is not)."""
    proc = subprocess.run(argv, capture_output=True, text=True, errors='replace', check=False, close_fds=True,
                          env=dict(os.environ, LANG='C', LC_ALL='C'))
    return proc.returncode, proc.stdout, proc.stderr


class KeyForge:
    """SSH host keys of the roots about to be cloned, made ahead and several at a time.

    ssh-keygen is CPU-bound while cloning waits on the disk, so the forge runs it on at most
    ``workers`` threads (default: the CPU count) into a locked scratch directory of ``parent``,
    while the clones go on in order; ``take()`` waits for one root's keys. A key that could not be
    made is left out, so ``host_keys`` makes it itself and fails with the usual message.
    ``run(argv)`` must be thread-safe; ``setpriv`` (if given) kills a key's ssh-keygen with its module.
    """

    def __init__(self, parent, keygen, run=run_in_thread, setpriv=None, workers=None):
        self.keygen, self.run = keygen, run
        self.prefix = [setpriv, '--pdeathsig', 'KILL', '--'] if setpriv else []
        self.scratch = ScratchDir(parent, 'keys')
        self.pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
        self.orders = {}  # label -> {kind: future}

    def order(self, label, hostname, kinds):
        """Start making the ``kinds`` of keys for ``label`` (a serial), commented root@``hostname``."""
        folder = self.scratch.join(label)
        os.mkdir(folder, 0o700)
        self.orders[label] = {kind: self.pool.submit(self._make, os.path.join(folder, 'ssh_host_%s_key' % kind),
                                                     kind, hostname) for kind in kinds}

    def _make(self, key, kind, hostname):
        rc, _out, _err = self.run([*self.prefix, *keygen_argv(self.keygen, kind, hostname, key)])
        return key if rc == 0 else None

    def key(self, label, hostname, kind):
        """The private key path of ``kind`` for ``label``: the one ordered ahead, else made now."""
        future = self.orders.get(label, {}).pop(kind, None)
        try:
            key = future.result() if future else None
        except Exception:  # made again below, with the usual error if it fails
            key = None
        if key:
            return key
        folder = self.scratch.join(label)
        os.makedirs(folder, 0o700, exist_ok=True)
        key = os.path.join(folder, 'ssh_host_%s_key' % kind)
        for stale in (key, key + '.pub'):
            if os.path.lexists(stale):
                os.unlink(stale)
        rc, out, err = self.run([*self.prefix, *keygen_argv(self.keygen, kind, hostname, key)])
        if rc != 0:
            raise RootError('generating the %s SSH host key for %s failed: %s' % (kind, hostname, (err or out).strip()))
        return key

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.scratch.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
