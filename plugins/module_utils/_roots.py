# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-Pi root file systems: where they live, how they are cloned, what state they are in.

A Pi's root is ``<roots_dir>/<serial>`` (the tree that gets exported) with a marker
``.pifleet.json`` at its top. Clones are made from a bakeform's golden root the cheapest faithful
way: a btrfs snapshot, a reflink copy (XFS, btrfs), or a plain ``cp -a``. External tools run
through one ``run(argv)`` callable (``AnsibleModule.run_command`` in the module). No AnsibleModule here.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.pifleet.netboot.plugins.module_utils._atomic import ScratchDir, read_mounts
from ansible_collections.pifleet.netboot.plugins.module_utils._version import COLLECTION_VERSION

MARKER = '.pifleet.json'
METHODS = ('snapshot', 'reflink', 'copy')
DEFAULT_KEY_TYPES = ('ed25519', 'rsa', 'ecdsa')
SSH_DIR = 'etc/ssh'
_HOST_KEY = re.compile(r'ssh_host_([a-z0-9]+)_key')
BTRFS_SUBVOL_INO = 256
NO_REFLINK_FS = ('ext2', 'ext3', 'ext4', 'tmpfs')


class RootError(Exception):
    """A problem with a Pi's root or the host; the message says what and how to fix it."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.details = details


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def root_path(roots_dir, serial):
    """``<roots_dir>/<serial>``, refusing one that resolves anywhere else (a symlink planted there)."""
    path = os.path.join(roots_dir, serial)
    if os.path.lexists(path) and os.path.realpath(path) != os.path.join(os.path.realpath(roots_dir), serial):
        raise RootError('root of Pi %s: %s resolves to %s, outside %s; refusing to touch it. Remove that link by hand'
                        % (serial, path, os.path.realpath(path), roots_dir))
    return path


def load_marker(root, strict=True):
    """The marker of a root; None when missing (or unreadable, unless ``strict``)."""
    try:
        with open(os.path.join(root, MARKER), encoding='utf-8') as handle:
            marker = json.load(handle)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError as exc:
        if not strict:
            return None
        raise RootError('marker %s is not valid JSON (%s); use state: rebuilt to make the root again'
                        % (os.path.join(root, MARKER), exc)) from exc
    return marker if isinstance(marker, dict) else None


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


def new_marker(*, serial, hostname, bakeform, sha256, method, fixes, keys_sha256, boot_mount, created=None):
    stamp = now()
    return {
        'serial': serial, 'hostname': hostname, 'bakeform': bakeform, 'bakeform_sha256': sha256,
        'clone_method': method, 'fixes': sorted(fixes), 'authorized_keys_sha256': keys_sha256,
        'boot_mount': boot_mount, 'created': created or stamp, 'updated': stamp,
        'collection_version': COLLECTION_VERSION,
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
    """(source, fstype) of the mount holding ``path``: the longest mount point that is a prefix of it.

    btrfs gives each subvolume its own st_dev and statvfs f_fsid, so neither tells two
    subvolumes of one file system apart from two file systems; the mount's source does.
    """
    path = os.path.realpath(path)
    best, found = -1, (None, None)
    for point, fstype, source in read_mounts(mountinfo):
        inside = path == point or path.startswith(point.rstrip('/') + '/')
        if inside and len(point) >= best:
            best, found = len(point), (source, fstype)
    return found


def is_subvolume(path):
    """A btrfs subvolume's top directory: inode 256 and a device number of its own."""
    try:
        st, parent = os.lstat(path), os.lstat(os.path.dirname(os.path.abspath(path)))
    except FileNotFoundError:
        return False
    return st.st_ino == BTRFS_SUBVOL_INO and st.st_dev != parent.st_dev


def choose_methods(requested, golden, roots_dir, mount=mount_of, subvolume=is_subvolume):
    """The clone methods to try, in order; the first that works is used."""
    if requested != 'auto':
        return [requested]
    golden_fs, roots_fs = mount(golden), mount(roots_dir)
    if golden_fs != roots_fs:
        return ['copy']  # no clone shares extents across file systems
    if golden_fs[1] == 'btrfs' and subvolume(golden):
        return ['snapshot']
    if golden_fs[1] in NO_REFLINK_FS:
        return ['copy']  # known not to share extents: skip the doomed attempt (and predict right in check mode)
    return ['reflink', 'copy']


class Cloner:
    """Clone a golden root and remove Pi roots with the host's tools (argv lists through ``run``)."""

    def __init__(self, run, which):
        self.run = run
        self.which = which  # which(name, required) -> path of a tool on the host (get_bin_path in the module)

    def _check(self, argv, what):
        rc, out, err = self.run(argv)
        if rc != 0:
            raise RootError('%s failed: %s' % (what, (err or out).strip()), rc=rc, stderr=err, cmd=argv)
        return out

    def _cp(self, extra):
        # pdeathsig: a SIGKILLed module takes cp with it, so no orphan keeps writing into a swept scratch dir.
        return [self.which('setpriv', True), '--pdeathsig', 'KILL', '--', self.which('cp', True), '-a', *extra, '--']

    def clone(self, golden, dest, methods, who):
        """Make ``dest`` (not existing yet) a faithful copy of ``golden``; return the method used."""
        errors = []
        for method in methods:
            if method == 'snapshot':
                rc, out, err = self.run([self.which('btrfs', True), 'subvolume', 'snapshot', golden, dest])
            else:
                # cp -a reflinks by default (coreutils 9); 'copy' means blocks of its own.
                extra = ['--reflink=always'] if method == 'reflink' else ['--reflink=never']
                rc, out, err = self.run([*self._cp(extra), golden + '/.', dest])
            if rc == 0:
                return method
            errors.append('%s: %s' % (method, (err or out).strip()))
            self.remove(dest)  # a partial copy must not be mistaken for the next attempt's work
        raise RootError('cloning %s for %s failed (%s); clone_method: copy works on any file system with enough '
                        'space' % (golden, who, '; '.join(errors)))

    def remove(self, path):
        """Remove a tree; a btrfs subvolume with ``btrfs subvolume delete`` (no file-by-file walk)."""
        if not os.path.lexists(path):
            return
        if self.remove_subvolume(path):
            return
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def remove_subvolume(self, path):
        """Delete ``path`` if it is a btrfs subvolume (at once, not file by file); True when done."""
        btrfs = self.which('btrfs', False) if is_subvolume(path) else None
        return bool(btrfs) and self.run([btrfs, 'subvolume', 'delete', path])[0] == 0

    def host_keys(self, root, hostname, types, carry_from=None, forged=None):
        """Give the root its own SSH host keys: the old root's when rebuilding, new ones otherwise.

        ``forged`` ({type: private key path}, from a ``KeyForge``) holds keys made ahead for this root;
        a type it lacks is generated here. Returns the key types freshly generated.
        """
        ssh = os.path.join(root, SSH_DIR)
        for name in os.listdir(ssh) if os.path.isdir(ssh) else []:
            if _HOST_KEY.fullmatch(name.replace('.pub', '')):
                os.unlink(os.path.join(ssh, name))
        carried = set()
        old_ssh = os.path.join(carry_from, SSH_DIR) if carry_from else None
        if old_ssh and os.path.isdir(old_ssh):
            for name in sorted(os.listdir(old_ssh)):
                match = _HOST_KEY.fullmatch(name.replace('.pub', ''))
                src = os.path.join(old_ssh, name)
                if match and is_regular(src):
                    shutil.copy2(src, os.path.join(ssh, name))
                    st = os.lstat(src)
                    os.chown(os.path.join(ssh, name), st.st_uid, st.st_gid)
                    carried.add(match.group(1))
        made = []
        for kind in types:
            key = os.path.join(ssh, 'ssh_host_%s_key' % kind)
            if kind in carried and os.path.exists(key):
                continue
            os.makedirs(ssh, 0o755, exist_ok=True)
            if not take_forged(forged, kind, key):
                self._check(keygen_argv(self.which('ssh-keygen', True), kind, hostname, key),
                            'generating the %s SSH host key for %s' % (kind, hostname))
            made.append(kind)
        return made


def is_regular(path):
    return os.path.isfile(path) and not os.path.islink(path)


def keygen_argv(keygen, kind, hostname, key):
    return [keygen, '-q', '-N', '', '-t', kind, '-C', 'root@%s' % hostname, '-f', key]


def take_forged(forged, kind, key):
    """Move the ``kind`` key pair made ahead to ``key`` (and ``key``.pub); False when there is none."""
    made = (forged or {}).get(kind)
    if not made or not os.path.isfile(made) or not os.path.isfile(made + '.pub'):
        return False
    shutil.move(made + '.pub', key + '.pub')  # a rename, or a copy into a btrfs snapshot (another subvolume)
    shutil.move(made, key)
    return True


def run_in_thread(argv):
    """(rc, stdout, stderr) of ``argv``, safe to call from several threads at once (run_command's preexec_fn is not)."""
    proc = subprocess.run(argv, capture_output=True, text=True, errors='replace', check=False, close_fds=True,
                          env=dict(os.environ, LANG='C', LC_ALL='C'))
    return proc.returncode, proc.stdout, proc.stderr


class KeyForge:
    """SSH host keys of the roots about to be cloned, made ahead and several at a time.

    ssh-keygen is CPU-bound (an RSA key takes about a second) while cloning waits on the disk, so a
    first run of a fleet would spend a second per Pi on keys, one after the other. The forge runs
    them on at most ``workers`` threads (default: the CPU count) into a locked scratch directory of
    ``parent``, while the clones go on in order; ``take()`` waits for one root's keys. A key that
    could not be made is left out, so ``Cloner.host_keys`` makes it itself and fails as it always did.
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

    def take(self, label):
        """{kind: private key path} of the keys made for ``label``, once they are all done."""
        made = {}
        for kind, future in self.orders.pop(label, {}).items():
            try:
                key = future.result()
            except Exception:  # the key is then made in place, with the usual error if it fails
                key = None
            if key:
                made[kind] = key
        return made

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.scratch.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def host_key_types(root):
    """Key types the golden root ships host keys for (those are the ones sshd there is set up for)."""
    ssh = os.path.join(root, SSH_DIR)
    found = sorted({m.group(1) for m in (_HOST_KEY.fullmatch(n) for n in os.listdir(ssh)) if m}) \
        if os.path.isdir(ssh) else []
    return found or list(DEFAULT_KEY_TYPES)


def sweep_subvolumes(cloner, scratch_path):
    """Delete subvolumes in a scratch directory before it is removed (rmtree would walk them file by file)."""
    for name in ('root', 'old'):
        cloner.remove_subvolume(os.path.join(scratch_path, name))
