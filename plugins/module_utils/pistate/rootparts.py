# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What pi_root puts into a root besides the fixes for NFS: the Pi's identity, its host certificates and
the kernel hold, and where each generation's files are. One ``Parts`` per module run, used by ``rootwork``.

- ``generation()``: a bakeform generation a Pi needs, through ``store.generations.Bakeform`` (a store of
  format 2 is refused with what to run);
- ``identity()``: the Pi's identity, from the bakery's store (``identity``), made anew, or read once from a
  root made before the bakery kept identities;
- ``certificate()``: the host certificates the root should hold (``hostcert``), signed only when the keys,
  the names or the CA changed;
- ``hold()``: the kernel hold of the root's generation (``kernelhold``), from the golden root's package list.

No AnsibleModule here: the host adapter of ``rootwork`` (run, which, warn, check mode).
"""

from __future__ import annotations

import os

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError
from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import LoopError
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import hostcert as _hostcert
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import identity as _identity
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import kernelhold as _kernelhold
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rootfix as _rootfix
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import RootError
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as _generations
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import check_name

KEY_KINDS = {name: kind for kind, names in _identity.KEY_NAMES.items() for name in names}


def kinds_of(host_keys, wanted):
    """The key types (ed25519, ...) of ``"<type> <base64>"`` lines, in the order of ``wanted``; all of ``wanted``
    when the lines say nothing (a marker made before markers recorded them)."""
    have = {KEY_KINDS.get(line.split()[0]) for line in host_keys or [] if line.split()}
    kinds = [kind for kind in wanted if kind in have]
    return kinds or list(wanted)


class Parts:
    """Generations, identities, certificates and kernel holds for the roots of one run."""

    def __init__(self, host, *, store, roots_dir, key_types, host_ca, golden):
        self.host, self.store, self.key_types = host, store, list(key_types)
        self.identities = _identity.IdentityStore(roots_dir)
        self.ca = _hostcert.HostCA(host_ca, host.run, host.which) if host_ca else None
        self.golden = golden  # golden(bakeform, generation) -> a read-only Tree of that golden root
        self.bakeforms, self.kernels = {}, {}
        self.forge = None
        self.scratch = None  # where certificates are signed (the forge's scratch directory)

    # ------------------------------------------------------------------ generations

    def bakeform(self, name, who):
        """``(Bakeform, index)`` of a bakeform name, read once per run; RootError when it cannot be used."""
        if name not in self.bakeforms:
            problem = check_name(name)
            if problem:
                raise RootError('%s (%s)' % (problem, who))
            bake = _generations.Bakeform(self.store, name)
            try:
                index = bake.load_index()
            except _generations.GenerationError as exc:
                raise RootError('%s (%s)' % (exc, who)) from None
            if index is None:
                if os.path.isfile(os.path.join(bake.dir, _generations.MANIFEST)):
                    raise RootError(
                        'bakeform %s in %s is stored in the format before generations (%s has no %s): run '
                        'pifleet.netboot.bakeform for it once (name: %s, store: %s), which makes it generation 1, '
                        'then run this again (%s)' % (name, self.store, bake.dir, _generations.INDEX, name, self.store,
                                                      who))
                raise RootError('bakeform %s not found for %s: %s has no %s; register the image with '
                                'pifleet.netboot.bakeform (name: %s, store: %s)' % (name, who, bake.dir,
                                                                                    _generations.INDEX, name,
                                                                                    self.store))
            self.bakeforms[name] = (bake, index)
        return self.bakeforms[name]

    def generation(self, name, wanted, who):
        """``(Bakeform, generation, current)`` of ``name``: ``wanted`` or the current generation, which must exist."""
        bake, index = self.bakeform(name, who)
        current = bake.current(index)
        generation = current if wanted is None else wanted
        if generation is None:
            raise RootError('bakeform %s has no generation yet (%s): register its image with pifleet.netboot.bakeform'
                            % (name, who))
        try:
            bake.require(generation, who)
        except _generations.GenerationError as exc:
            raise RootError(str(exc)) from None
        return bake, generation, current

    # ------------------------------------------------------------------ identity

    def key_forge(self):
        if self.forge is None:
            timeout = getattr(self.host, 'timeout', None) or _identity.DEFAULT_TIMEOUT
            self.forge = _identity.KeyForge(self.identities.roots_dir, self.host.which('ssh-keygen', True),
                                            run=lambda argv: _identity.run_in_thread(argv, timeout),
                                            setpriv=self.host.which('setpriv', False))
        return self.forge

    def needs_keys(self, item, action):
        """Whether building this Pi's root makes new keys (so they are made ahead, several at a time)."""
        if action not in ('clone', 'rebuild', 'rollback'):
            return False
        return item.get('identity') == 'fresh' or not self.identities.exists(item['serial'])

    def identity(self, item, old_root=None):
        """``(Identity, changed)``: the Pi's identity for a root pi_root builds or rolls back.

        ``identity: keep`` takes the kept one; a Pi without one (a root made before the bakery kept
        identities) gets it from ``old_root()`` (a context manager giving a Tree of its old root, or None),
        well-formed parts only; whatever is missing is made anew, with a warning when the old root had it.
        """
        serial, hostname = item['serial'], item['hostname']
        fresh = item.get('identity') == 'fresh'
        kept = None if fresh else self.identities.load(serial)
        identity, changed = kept or _identity.Identity(), kept is None
        if kept is None and not fresh and old_root is not None:
            identity = self.adopt(item, old_root)
        if identity.machine_id is None:
            identity.machine_id = _rootfix.new_machine_id().strip()
            changed = True
        for kind in identity.missing(self.key_types):
            if self.host.check_mode:  # no key is made in check mode; the marker's diff says one would be
                identity.keys[kind] = (b'', '%s (new)\n' % _identity.KEY_NAMES[kind][0])
            else:
                identity.keys[kind] = self.key_forge().take(serial, hostname, kind)
            identity.certs.pop(kind, None)
            changed = True
        return identity, changed

    def adopt(self, item, old_root):
        """The identity of a root made before the bakery kept identities: read once, well-formed only."""
        try:
            with old_root() as tree:
                if tree is None:
                    return _identity.Identity()
                identity, problems = _identity.adopt(tree, self.key_types, item['hostname'])
        except (ConfinedError, LoopError, OSError, RootError) as exc:
            identity, problems = _identity.Identity(), ['its old root (%s)' % exc]
        if problems:
            self.host.warn('Pi %s: the bakery now keeps each Pi\'s SSH host keys and machine-id; from its old root it '
                           'kept what was well-formed, and made new ones for %s'
                           % (item['serial'], '; '.join(problems)))
        return identity

    # ------------------------------------------------------------------ certificates

    def certificate(self, item, tree, identity, kinds):
        """``(changes, record, signed)``: the host certificate files for the root in ``tree``.

        ``record`` is what the certificates say (None: the root gets none: no host_ca, or an sshd that
        cannot include the drop-in); ``signed`` when ``identity`` got new certificates (to be kept).
        """
        if self.ca is None or not _hostcert.root_takes_dropins(tree):
            return _hostcert.changes(tree, identity, kinds, False), None, False
        principals = self.principals(item)
        wanted = _hostcert.record(self.ca.fingerprint(), principals, identity.public_keys(kinds))
        signed = identity.cert_record != wanted or any(kind not in identity.certs for kind in kinds)
        if signed:
            if self.host.check_mode:  # nothing is signed in check mode: say which files would change
                return [{'fix': 'host_certificate', 'path': _hostcert.cert_path(kind), 'kind': 'file',
                         'after': None} for kind in kinds], wanted, True
            identity.certs = self.presigned(item, principals, identity, kinds) or self.ca.sign(
                self.key_forge().scratch.path, item, principals, identity, kinds)
            identity.cert_record = wanted
        return _hostcert.changes(tree, identity, kinds, True), wanted, signed

    def presign(self, item):
        """For ``KeyForge.order``: sign a new identity's keys as soon as they are made (None without a CA)."""
        if self.ca is None:
            return None
        principals, keygen = self.principals(item), self.key_forge().keygen

        def sign(publics):
            return {'principals': principals, 'certs': self.ca.sign_files(item, principals, publics, keygen),
                    'publics': {kind: _read_text(path) for kind, path in publics.items()}}
        return sign

    def presigned(self, item, principals, identity, kinds):
        """The certificates signed ahead for exactly these names and keys of ``identity``; None: sign them now."""
        done = self.forge.signed(item['serial']) if self.forge is not None else None
        if not done or done['principals'] != principals:
            return None
        if any(kind not in done['certs'] or done['publics'].get(kind) != identity.keys[kind][1] for kind in kinds):
            return None
        return {kind: done['certs'][kind] for kind in kinds}

    @staticmethod
    def principals(item):
        return item.get('principals') or [item['hostname']]

    # ------------------------------------------------------------------ kernel hold

    def kernel_packages(self, bake, generation, tree=None):
        """The kernel packages of a generation (``name=version``), from its golden root (or ``tree``, a fresh
        clone of it, which holds the same bytes), read once per run."""
        key = (bake.name, generation)
        if key not in self.kernels:
            view = tree if tree is not None else self.golden(bake, generation)
            try:
                status = view.read_text(_kernelhold.STATUS, _kernelhold.STATUS_LIMIT)
            except ConfinedError as exc:
                raise RootError('reading the package list of %s failed: %s' % (bake.label(generation), exc)) from None
            self.kernels[key] = _kernelhold.kernel_packages(status)
        return self.kernels[key]

    def hold(self, tree, bake, generation, packages=None, source=None):
        """``(changes, packages)``: the kernel hold of ``generation`` for the root in ``tree`` (none without apt).

        ``packages`` as the root's marker recorded them, else read from ``source`` (a fresh clone) or the golden.
        """
        if not _kernelhold.applies(tree):
            return [], None
        if packages is None:
            packages = self.kernel_packages(bake, generation, source)
        return _kernelhold.changes(tree, bake.label(generation), packages), packages

    def close(self):
        if self.forge is not None:
            self.forge.close()
            self.forge = None


def _read_text(path):
    with open(path, encoding='ascii') as handle:
        return handle.read()
