# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SSH host certificates: each Pi's host keys signed by the fleet's host CA, so the controller trusts a Pi
from its first boot on with one ``@cert-authority`` line instead of one known_hosts line per Pi and root.

The CA's private key lives on the bakery (``host_ca``, made by the fleet role). ssh-keygen signs the
bakery's own copy of each public key, kept in the Pi's identity (``identity``), never a file from the
root. The root gets ``etc/ssh/ssh_host_<type>_key-cert.pub`` and the sshd drop-in ``DROPIN`` with one
``HostCertificate`` line per key, written through ``confined.Tree``. An image whose ``sshd_config`` does
not include ``sshd_config.d/*.conf`` gets none (its sshd_config is the Pi's, never edited by us): the
controller falls back to plain known_hosts lines for it. No AnsibleModule here.
"""

from __future__ import annotations

import hashlib
import os
import re

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import identity as _identity
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.rootfix import differs

SSHD_CONFIG = 'etc/ssh/sshd_config'
DROPIN = 'etc/ssh/sshd_config.d/pifleet-host-certificate.conf'
INCLUDE = '/etc/ssh/sshd_config.d/*.conf'
VALIDITY = 'always:forever'  # re-signed whenever the key, the CA or the names change; nothing to renew
_PRINCIPAL = re.compile(r'[A-Za-z0-9._:-]{1,253}')
_FINGERPRINT = re.compile(r'\d+ (SHA256:[A-Za-z0-9+/]{43}) ')
DROPIN_HEADER = ('# Managed by pifleet.netboot pi_root: this Pi\'s host keys signed by its bakery\'s host CA,\n'
                 '# so the fleet\'s known_hosts trusts the CA instead of each key.\n')


class CertError(Exception):
    """The host CA cannot be used; the message says why and what to do."""


def cert_path(kind):
    return _identity.key_path(kind, '-cert.pub')


def takes_dropins(text):
    """Whether an sshd_config (its text) reads ``/etc/ssh/sshd_config.d/*.conf``."""
    for line in (text or '').splitlines():
        words = line.split()
        if words and words[0].lower() == 'include' and INCLUDE in words[1:]:
            return True
    return False


def check_principals(principals, who):
    """Problems of a Pi's principals (names and addresses its certificate is valid for), as messages."""
    if not principals:
        return ['%s: principals is empty; give at least its host name' % who]
    bad = [name for name in principals if not isinstance(name, str) or not _PRINCIPAL.fullmatch(name)]
    if bad:
        return ['%s: principals %s are not host names or addresses (letters, digits, ".", "-", "_", ":")'
                % (who, ', '.join(repr(name) for name in bad))]
    return []


def dropin_text(kinds):
    return DROPIN_HEADER + ''.join('HostCertificate /%s\n' % cert_path(kind) for kind in kinds)


def record(ca_fingerprint, principals, public_keys):
    """What a set of certificates says: the CA, the names, the keys signed. Equal records need no new signing."""
    keys = hashlib.sha256('\n'.join(public_keys).encode('ascii')).hexdigest()
    return {'ca': ca_fingerprint, 'principals': list(principals), 'keys_sha256': keys}


def sign_argv(keygen, ca, key_id, principals, *publics):
    """One ssh-keygen signs every public key given (each gets its ``-cert.pub`` beside it): one process per Pi."""
    return [keygen, '-q', '-s', ca, '-I', key_id, '-h', '-n', ','.join(principals), '-V', VALIDITY, '--', *publics]


def root_takes_dropins(tree):
    """Whether the root in ``tree`` can use the drop-in; a config the Pi made unreadable means no."""
    try:
        return takes_dropins(tree.read_text(SSHD_CONFIG))
    except (ConfinedError, OSError):
        return False


def changes(tree, identity, kinds, wanted):
    """Changes (for ``rootfix.apply``) that make the root hold the certificates (``wanted``) or none of ours.

    ``wanted`` False removes the drop-in and the certificates pi_root wrote; True writes those of
    ``identity`` for ``kinds``. Files that are already right are left alone.
    """
    found = []
    files = {cert_path(kind): identity.certs[kind] for kind in kinds} if wanted else {}
    if wanted:
        files[DROPIN] = dropin_text(kinds)
    for rel, text in sorted(files.items()):
        if differs(tree, rel, text.encode('ascii'), 0o644):
            found.append({'fix': 'host_certificate', 'path': rel, 'kind': 'file', 'before': None, 'after': text,
                          'mode': 0o644, 'force_owner': True})
    ours = [DROPIN] + [cert_path(kind) for kind in sorted(_identity.KEY_NAMES)]
    for rel in ours:
        if rel not in files and _present(tree, rel):
            found.append({'fix': 'host_certificate', 'path': rel, 'kind': 'absent'})
    return found


def _present(tree, rel):
    try:
        return tree.lstat(rel) is not None
    except ConfinedError:
        return False  # behind a symlink: nothing of ours is there


class HostCA:
    """The fleet's host CA on this bakery: its fingerprint (read once) and signing through ``run(argv)``."""

    def __init__(self, path, run, which):
        self.path, self.run, self.which = path, run, which
        self._fingerprint = None

    def fingerprint(self):
        """``SHA256:...`` of the CA key: a new CA means new certificates for every Pi."""
        if self._fingerprint is None:
            if not os.path.isfile(self.path):
                raise CertError('host_ca %s does not exist: create the fleet host CA there (ssh-keygen -t ed25519 -N '
                                '"" -f %s; the fleet role does) or leave host_ca unset' % (self.path, self.path))
            rc, out, err = self.run([self.which('ssh-keygen', True), '-l', '-E', 'sha256', '-f', self.path])
            match = _FINGERPRINT.match(out or '')
            if rc != 0 or not match:
                raise CertError('host_ca %s is not an SSH private key ssh-keygen can read: %s' % (
                    self.path, (err or out).strip()))
            self._fingerprint = match.group(1)
        return self._fingerprint

    def public_key(self):
        """The CA's public key line (``<host_ca>.pub``, for the controller's known_hosts); None when it is not there."""
        try:
            with open(self.path + '.pub', encoding='utf-8', errors='replace') as handle:
                return handle.read().strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CertError('host_ca %s.pub cannot be read: %s' % (self.path, exc)) from None

    def sign(self, scratch, item, principals, identity, kinds):
        """Sign the public keys of ``identity`` (its own copies, in ``scratch``) for ``item`` (serial, hostname).

        Returns {kind: certificate}."""
        serial = item['serial']
        folder = os.path.join(scratch, 'cert-' + serial)
        os.makedirs(folder, 0o700, exist_ok=True)
        publics = {}
        for kind in kinds:
            public = os.path.join(folder, 'ssh_host_%s_key.pub' % kind)
            for stale in (public, public[:-len('.pub')] + '-cert.pub'):
                if os.path.lexists(stale):
                    os.unlink(stale)
            with open(public, 'w', encoding='ascii') as handle:
                handle.write(identity.keys[kind][1])
            publics[kind] = public
        if not publics:
            return {}
        return self.sign_files(item, principals, publics)

    def sign_files(self, item, principals, publics, keygen=None):
        """Sign the public key files ``publics`` ({kind: path}) for ``item``; {kind: certificate}, each written
        beside its key as ``-cert.pub``. From other threads (``run`` must allow it), give ``keygen``: a tool the
        host cannot find fails the module, which only its main thread may do."""
        serial, hostname = item['serial'], item['hostname']
        # All of the Pi's keys in one ssh-keygen: one process per Pi, not one per key (a first run makes thousands).
        rc, out, err = self.run(sign_argv(keygen or self.which('ssh-keygen', True), self.path,
                                          '%s-%s' % (hostname, serial), principals, *publics.values()))
        if rc != 0:
            raise CertError('signing the %s host key(s) of Pi %s with host_ca %s failed: %s'
                            % (', '.join(publics), serial, self.path, (err or out).strip()))
        certs = {}
        for kind, public in publics.items():
            with open(public[:-len('.pub')] + '-cert.pub', encoding='ascii') as handle:
                certs[kind] = handle.read()
        return certs
