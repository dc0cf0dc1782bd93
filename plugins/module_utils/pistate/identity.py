# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each Pi's identity, kept by the bakery out of the Pi's reach: its SSH host keys and its machine-id.

``<roots_dir>/<serial>.identity/`` (0700, root's) holds ``ssh_host_<type>_key`` and ``.pub`` (made
on the bakery by ``KeyForge``), ``machine-id``, and the host certificates with what they say
(``hostcert``). A root gets its identity from here whenever pi_root builds or rolls it back, never
from the root it replaces: a Pi is root on its own root and could plant keys or make a rebuild fail.

Roots made before the bakery kept identities get theirs read once from the old root (``adopt``),
through ``confined.Tree``, size-capped, and kept only when well-formed: a machine-id of 32 lower-case
hex digits; an unencrypted OpenSSH private key whose own public key (the copy in its header) is the
one in the ``.pub`` line, of the expected type. That check is a few lines of Python over at most 16
KiB: no program (ssh-keygen or any other) runs on bytes a Pi wrote. Anything else is replaced by new
keys, and the caller warns. No AnsibleModule here.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import command as _command
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.rootfix import differs

SSH_DIR = 'etc/ssh'
MACHINE_ID = 'machine-id'
CERTIFICATE = 'certificate.json'
DEFAULT_KEY_TYPES = ('ed25519', 'ecdsa')
# The key types an sshd may use, by the names ssh-keygen -t takes, and the names their public keys carry.
KEY_NAMES = {'ed25519': ('ssh-ed25519',), 'rsa': ('ssh-rsa',),
             'ecdsa': ('ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521')}
KEY_LIMIT = 16 << 10  # an RSA private key of 16384 bits is ~12 KiB
MACHINE_ID_LIMIT = 64
_HOST_KEY = re.compile(r'ssh_host_([a-z0-9]+)_key(\.pub)?')
_MACHINE_ID = re.compile(r'[0-9a-f]{32}')
_BEGIN, _END = b'-----BEGIN OPENSSH PRIVATE KEY-----', b'-----END OPENSSH PRIVATE KEY-----'
_BASE64_LINE = re.compile(rb'[A-Za-z0-9+/=]{1,76}')
_MAGIC = b'openssh-key-v1\0'


class IdentityError(Exception):
    """A key could not be made or stored; the message says which."""


def key_path(kind, suffix=''):
    return '%s/ssh_host_%s_key%s' % (SSH_DIR, kind, suffix)


# --------------------------------------------------------------------------- well-formed only


def _strings(blob, count):
    """The first ``count`` SSH wire strings of ``blob`` and what follows; ValueError when it is not that."""
    found, offset = [], 0
    for _index in range(count):
        if offset + 4 > len(blob):
            raise ValueError('truncated')
        size, = struct.unpack_from('>I', blob, offset)
        offset += 4
        if offset + size > len(blob):
            raise ValueError('truncated')
        found.append(blob[offset:offset + size])
        offset += size
    return found, blob[offset:]


def public_blob(line, kind):
    """The key blob of a ``.pub`` line of ``kind``; None unless it is one (type word and blob agree)."""
    fields = line.split()
    if len(fields) < 2 or fields[0] not in KEY_NAMES.get(kind, ()):
        return None
    try:
        blob = base64.b64decode(fields[1], validate=True)
        name, _rest = _strings(blob, 1)
    except (binascii.Error, ValueError):
        return None
    return blob if name[0].decode('ascii', 'replace') == fields[0] else None


def private_blob(data):
    """The public key blob in the header of an unencrypted OpenSSH private key; None for anything else."""
    lines = data.strip().split(b'\n')
    if len(lines) < 3 or lines[0] != _BEGIN or lines[-1] != _END:
        return None
    body = lines[1:-1]
    if not all(_BASE64_LINE.fullmatch(line) for line in body):
        return None
    try:
        raw = base64.b64decode(b''.join(body), validate=True)
        if not raw.startswith(_MAGIC):
            return None
        (cipher, _kdf, _options), rest = _strings(raw[len(_MAGIC):], 3)
        if cipher != b'none' or len(rest) < 4 or struct.unpack_from('>I', rest)[0] != 1:
            return None  # a passphrase-protected key (sshd cannot use it) or several keys in one file
        (blob,), _rest = _strings(rest[4:], 1)
    except (binascii.Error, ValueError):
        return None
    return blob


def check_key_pair(private, public, kind):
    """None when ``private`` and ``public`` (bytes) are a usable key pair of ``kind``; otherwise why not."""
    if not private or not public:
        return 'missing'
    try:
        line = public.decode('ascii').strip()
    except UnicodeDecodeError:
        return 'the public key is not ASCII'
    if '\n' in line:
        return 'the public key file holds more than one line'
    blob = public_blob(line, kind)
    if blob is None:
        return 'the public key is not an %s key line' % kind
    if private_blob(private) != blob:
        return 'the private key is not an unencrypted OpenSSH key matching the public key'
    return None


def check_machine_id(text):
    """The machine-id (32 lower-case hex digits) of a file's text; None unless it is exactly that."""
    if text is None:
        return None
    value = text[:-1] if text.endswith('\n') else text
    return value if _MACHINE_ID.fullmatch(value) else None


def normal_public(public, hostname):
    """A public key line in our own words: ``<type> <base64> root@<hostname>`` (a Pi's comment is not kept)."""
    fields = public.decode('ascii').split()
    return '%s %s root@%s\n' % (fields[0], fields[1], hostname)


# --------------------------------------------------------------------------- the identity


class Identity:
    """A Pi's machine-id, SSH host keys {kind: (private bytes, public line)} and host certificates."""

    def __init__(self, machine_id=None, keys=None, certs=None, cert_record=None):
        self.machine_id = machine_id
        self.keys = dict(keys or {})
        self.certs = dict(certs or {})  # kind -> the certificate's one line
        self.cert_record = cert_record  # what the certificates say (hostcert.record)

    def public_keys(self, kinds):
        """``"<type> <base64>"`` of each kind's public key, in the order of ``kinds``."""
        return [' '.join(self.keys[kind][1].split()[:2]) for kind in kinds if kind in self.keys]

    def missing(self, kinds):
        return [kind for kind in kinds if kind not in self.keys]

    def __eq__(self, other):
        return isinstance(other, Identity) and vars(self) == vars(other)

    __hash__ = None  # mutable


def adopt(tree, kinds, hostname):
    """The identity an old root holds, well-formed parts only: ``(Identity, [what was not usable])``.

    ``tree`` is the old root (a Pi's: every read is confined and capped). Never raises for what the Pi
    left there: a symlinked etc, a machine-id of a megabyte or keys that are no keys come back as problems.
    """
    identity, problems = Identity(), []
    try:
        text = tree.read_text('etc/machine-id', MACHINE_ID_LIMIT)
    except (ConfinedError, OSError) as exc:
        text, problems = None, ['its machine-id (%s)' % exc]
    identity.machine_id = check_machine_id(text)
    if identity.machine_id is None and not problems:
        problems.append('its machine-id (not 32 lower-case hex digits)')
    for kind in kinds:
        try:
            private = tree.read_bytes(key_path(kind), KEY_LIMIT)
            public = tree.read_bytes(key_path(kind, '.pub'), KEY_LIMIT)
        except (ConfinedError, OSError) as exc:
            problems.append('its %s host key (%s)' % (kind, exc))
            continue
        why = check_key_pair(private, public, kind)
        if why is None:
            identity.keys[kind] = (private.strip() + b'\n', normal_public(public, hostname))
        else:
            problems.append('its %s host key (%s)' % (kind, why))
    return identity, problems


def host_key_changes(tree, identity, kinds):
    """Changes (for ``rootfix.apply``) that give the root in ``tree`` exactly the host keys of ``identity``.

    Every other ``ssh_host_*_key`` there goes (the golden image's set is never shared), and a key the
    root holds already, byte for byte, root's and with the right mode, is left alone. What is there is
    read capped and compared, never shown or kept.
    """
    names = tree.listdir(SSH_DIR)
    changes = []
    for name in names:
        match = _HOST_KEY.fullmatch(name)
        if match and match.group(1) not in kinds:
            changes.append({'fix': 'ssh_host_keys', 'path': '%s/%s' % (SSH_DIR, name), 'kind': 'absent'})
    for kind in kinds:
        private, public = identity.keys[kind]
        for rel, data, mode in ((key_path(kind), private, 0o600), (key_path(kind, '.pub'), public.encode(), 0o644)):
            if differs(tree, rel, data, mode):
                changes.append({'fix': 'ssh_host_keys', 'path': rel, 'kind': 'file', 'before': None,
                                'after': data.decode('ascii'), 'mode': mode, 'force_owner': True})
    return changes


# --------------------------------------------------------------------------- the store


class IdentityStore:
    """The identities in ``roots_dir``: ``<serial>.identity/``, replaced whole (a new one built beside it)."""

    LABEL = 'identity-'

    def __init__(self, roots_dir):
        self.roots_dir = roots_dir

    def path(self, serial):
        return os.path.join(self.roots_dir, serial + '.identity')

    def exists(self, serial):
        path = self.path(serial)
        return os.path.isdir(path) and not os.path.islink(path)

    def load(self, serial):
        """The identity kept for ``serial``; None when there is none. A part that is not well-formed is left out."""
        if not self.exists(serial):
            return None
        path = self.path(serial)
        names = set(os.listdir(path))
        identity = Identity(machine_id=check_machine_id(_read(path, MACHINE_ID)))
        for name in sorted(names):
            match = _HOST_KEY.fullmatch(name)
            if match and not match.group(2) and name + '.pub' in names:
                kind = match.group(1)
                private, public = _read_bytes(path, name), _read_bytes(path, name + '.pub')
                if check_key_pair(private, public, kind) is None:
                    identity.keys[kind] = (private, public.decode('ascii'))
                    cert = _read(path, name + '-cert.pub')
                    if cert:
                        identity.certs[kind] = cert
        try:
            identity.cert_record = json.loads(_read(path, CERTIFICATE) or 'null')
        except ValueError:
            identity.cert_record = None
        return identity

    def save(self, serial, identity):
        """Replace ``serial``'s identity whole: readers (and a killed run) see the old one or the new one."""
        with _atomic.ScratchDir(self.roots_dir, self.LABEL + serial) as scratch:
            built = scratch.join('new')
            os.mkdir(built, 0o700)
            files = {MACHINE_ID: (identity.machine_id or '') + '\n'}
            for kind, (private, public) in identity.keys.items():
                files['ssh_host_%s_key' % kind] = private.decode('ascii')
                files['ssh_host_%s_key.pub' % kind] = public
                if kind in identity.certs:
                    files['ssh_host_%s_key-cert.pub' % kind] = identity.certs[kind]
            if identity.cert_record is not None:
                files[CERTIFICATE] = json.dumps(identity.cert_record, sort_keys=True) + '\n'
            for name, text in files.items():
                _atomic.write_new(os.path.join(built, name), text, 0o600)
            # The roots directory's file system only (with the new root image a build wrote beside it): not every
            # mounted one, which os.sync() meant, a thousand and more on a bakery.
            _atomic.sync_file_system(self.roots_dir)
            _atomic.install(scratch, built, self.path(serial))

    def remove(self, serial):
        if os.path.lexists(self.path(serial)):
            _atomic.discard(self.roots_dir, self.LABEL + serial, self.path(serial))

    def target(self, label):
        """The identity a scratch directory of ``label`` was replacing (sweep_stale puts it back)."""
        serial = label[len(self.LABEL):] if label.startswith(self.LABEL) else ''
        return self.path(serial) if re.fullmatch(r'[0-9a-f]{8}', serial) else None


def _read_bytes(folder, name):
    with open(os.path.join(folder, name), 'rb') as handle:
        return handle.read(KEY_LIMIT + 1)


def _read(folder, name):
    text = _atomic.read_text(os.path.join(folder, name))
    return None if text is None else text


# --------------------------------------------------------------------------- making keys


def keygen_argv(keygen, kind, hostname, key):
    return [keygen, '-q', '-N', '', '-t', kind, '-C', 'root@%s' % hostname, '-f', key]


DEFAULT_TIMEOUT = _command.DEFAULT_TIMEOUT


def run_in_thread(argv, timeout=DEFAULT_TIMEOUT):
    """(rc, stdout, stderr) of ``argv``, safe to call from several threads at once (run_command's preexec_fn is not);
    a hung ssh-keygen is killed after ``timeout`` s (rc 124, "timed out after"), costing only its Pi."""
    return _command.run(argv, timeout)


class KeyForge:
    """SSH host keys of new identities, made ahead and several at a time.

    ssh-keygen is CPU-bound while cloning waits on the disk, so the forge runs it on at most
    ``workers`` threads (default: the CPU count) into a locked scratch directory of ``parent``,
    while the clones go on in order; ``take()`` waits for one Pi's keys. A key that could not be
    made ahead is made again when taken, and fails then with its reason.
    ``run(argv)`` must be thread-safe; ``setpriv`` (if given) kills a key's ssh-keygen with its module.
    """

    def __init__(self, parent, keygen, run=run_in_thread, setpriv=None, workers=None):
        self.keygen, self.run = keygen, run
        self.prefix = [setpriv, '--pdeathsig', 'KILL', '--'] if setpriv else []
        self.scratch = _atomic.ScratchDir(parent, 'keys')
        self.pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
        self.orders = {}  # label -> {kind: future}
        self.signing = {}  # label -> future of what sign() answered

    def order(self, label, hostname, kinds, sign=None):
        """Start making the ``kinds`` of keys for ``label`` (a serial), commented root@``hostname``.

        ``sign({kind: public key file})``, when given, runs on the same threads once all of them are made (a
        first run signs every Pi's keys: a process each, which then overlaps the clones too); ``signed(label)``
        answers what it returned. Its job is queued after the keys' own jobs, so when a thread starts it they are
        running on another thread or done: it never waits for a job that waits for a thread."""
        folder = self.scratch.join(label)
        os.makedirs(folder, 0o700, exist_ok=True)
        orders, made = self.orders.setdefault(label, {}), {}
        for kind in kinds:
            made[kind] = orders[kind] = self.pool.submit(
                self._make, os.path.join(folder, 'ssh_host_%s_key' % kind), kind, hostname)
        if sign is not None and made:
            self.signing[label] = self.pool.submit(self._sign, made, sign)

    def _make(self, key, kind, hostname):
        rc, _out, _err = self.run([*self.prefix, *keygen_argv(self.keygen, kind, hostname, key)])
        return key if rc == 0 else None

    @staticmethod
    def _sign(made, sign):
        keys = {kind: future.result() for kind, future in made.items()}
        if not all(keys.values()):
            return None  # a key made again when taken is signed then
        return sign({kind: key + '.pub' for kind, key in keys.items()})

    def signed(self, label):
        """What ``sign`` answered for ``label``'s keys made ahead; None when none was asked or it failed (the caller
        signs then, and reports the failure in its own words)."""
        future = self.signing.pop(label, None)
        try:
            return future.result() if future else None
        except Exception:
            return None

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
            raise IdentityError('generating the %s SSH host key for %s failed: %s' % (kind, hostname,
                                                                                      (err or out).strip()))
        return key

    def take(self, label, hostname, kind):
        """``(private bytes, public line)`` of a new key of ``kind`` for ``label``."""
        key = self.key(label, hostname, kind)
        with open(key, 'rb') as private, open(key + '.pub', 'rb') as public:
            return private.read(), public.read().decode('ascii')

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.scratch.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
