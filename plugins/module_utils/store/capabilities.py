# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a golden root can do for a netboot, read from its image and recorded in its generation's manifest.

Raspberry Pi OS images differ in what a netbooted Pi relies on: Trixie Lite shipped without ``nfs-common``
(no ``mount.nfs``, so an NFS line in fstab fails), some roots have cloud-init and some do not, the initramfs
that mounts the NFS root may be initramfs-tools (klibc ``nfsmount``: NFS v2/v3 only, no ``proto=``) or
dracut (which needs its ``nfs`` module). ``detect(view, boot_files)`` reads the evidence (directory
listings and the dpkg status file) through a *view* and returns the record kept under the manifest's
``capabilities`` key (docs/formats.md); ``lacking(record, needs, label)`` says, for what a Pi's settings need,
what the image lacks and how to add it.

A view has ``names(rel)`` (the names in a directory, None when it is none) and ``read_text(rel, limit)``
(None when absent). ``DebugfsView`` reads an ext4 image with ``debugfs`` (no mount; the golden root is the
admin's image or a capture the bakery's kernel wrote); ``TreeView`` reads a directory through
``confined.Tree`` (tests, and a live root whose owner may have added a package). No AnsibleModule here.
"""

from __future__ import annotations

import os
import re
import tempfile

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError, Tree

KEY = 'capabilities'  # the manifest's key
VERSION = 1
STATUS = 'var/lib/dpkg/status'
STATUS_LIMIT = 64 << 20  # a desktop image's status file is a few MiB
SBIN, BIN = ('usr/sbin', 'sbin'), ('usr/bin', 'bin')
UNITS = ('usr/lib/systemd/system', 'lib/systemd/system')
KLIBC = ('usr/lib/klibc/bin',)
INITRAMFS_TOOLS = 'usr/share/initramfs-tools/scripts'
DRACUT = 'usr/lib/dracut/modules.d'
LISTED = SBIN + BIN + UNITS + KLIBC + (INITRAMFS_TOOLS, DRACUT)
# Installed versions recorded for people (the decisions use the files, which a package cannot fake).
PACKAGES = ('nfs-common', 'cloud-init', 'network-manager', 'dhcpcd', 'dhcpcd5', 'netplan.io', 'initramfs-tools',
            'klibc-utils', 'dracut', 'dracut-core', 'dracut-network', 'systemd-networkd')
_DRACUT_NFS = re.compile(r'[0-9]{2}nfs')

# What a Pi's settings may need, and how to give the image what it lacks.
NEEDS = {
    'mount_nfs': (
        'has no mount.nfs (package nfs-common), which the NFS line for the boot files in fstab needs (boot_mount: '
        'nfs; the Pi would come up degraded): add nfs-common to the image (apt install nfs-common on a Pi of it, '
        'then capture that root as a new generation with pifleet.netboot.bakeform capture), or set '
        'pifleet_boot_mount: none (pi_root boot_mount: none)'),
    'cloud_init': (
        'has no cloud-init, so the settings pi_cloud_init and pi_cloud_init_instance (pi_root cloud_init) would never '
        'be read: add cloud-init to the image (apt install cloud-init on a Pi of it, then capture that root as a '
        'new generation with pifleet.netboot.bakeform capture; Raspberry Pi OS from Trixie on has it), or remove '
        'those settings for this Pi'),
    'initramfs_nfs': (
        'boots through a dracut initramfs without its nfs module, which cannot mount the NFS root: add dracut-network '
        'to the image and rebuild its initramfs (dracut --regenerate-all --force), or make it with initramfs-tools '
        '(apt install initramfs-tools nfs-common), then register it (or capture that root) as a new generation'),
}


def _union(view, rels):
    found = [view.names(rel) for rel in rels]
    return frozenset().union(*[names for names in found if names is not None])


def parse_status(text):
    """``[(package, version, status)]`` of a dpkg status file's text (RFC 822-like stanzas)."""
    found = []
    for stanza in re.split(r'\n\s*\n', text or ''):
        fields = {}
        for line in stanza.splitlines():
            if line[:1] in (' ', '\t') or ':' not in line:
                continue  # a continuation line (Description, Conffiles)
            key, _sep, value = line.partition(':')
            fields[key.strip().lower()] = value.strip()
        if fields.get('package'):
            found.append((fields['package'], fields.get('version', ''), fields.get('status', '')))
    return found


def installed(text, names=PACKAGES):
    """{package: version} of the packages among ``names`` that a dpkg status file says are installed."""
    return {name: version[:128] for name, version, status in parse_status(text)
            if name in names and status.split()[-1:] == ['installed']}


def initramfs(view, boot_files):
    """How the image's initramfs mounts an NFS root: its generator, whether it can, and with what."""
    files = sorted(name for name in boot_files if os.path.basename(name).startswith(('initramfs', 'initrd')))
    scripts, modules = view.names(INITRAMFS_TOOLS), view.names(DRACUT)
    if scripts is not None:
        can = 'nfs' in scripts and 'nfsmount' in _union(view, KLIBC)
        return {'generator': 'initramfs-tools', 'nfs': can, 'tool': 'klibc nfsmount (NFS v2/v3, no proto=)' if can
                else None, 'files': files}
    if modules is not None:
        can = any(_DRACUT_NFS.fullmatch(name) for name in modules)
        return {'generator': 'dracut', 'nfs': can, 'tool': 'dracut nfs module' if can else None, 'files': files}
    return {'generator': None, 'nfs': None, 'tool': None, 'files': files}


def detect(view, boot_files=()):
    """The capability record of the root seen through ``view`` (``boot_files``: its generation's boot files)."""
    sbin, bin_, units = _union(view, SBIN), _union(view, BIN), _union(view, UNITS)
    return {
        'version': VERSION,
        'mount_nfs': 'mount.nfs' in sbin,
        'initramfs': initramfs(view, boot_files),
        'cloud_init': 'cloud-init' in bin_,
        # The services that could take the root's NIC down (pi_root keeps each one off it), not just their programs:
        # Trixie carries dhcpcd's program for NetworkManager without dhcpcd's service.
        'network_manager': 'NetworkManager' in sbin or 'NetworkManager.service' in units,
        'dhcpcd': 'dhcpcd.service' in units,
        'netplan': 'netplan' in sbin,
        'packages': installed(view.read_text(STATUS, STATUS_LIMIT)),
    }


def known(record):
    """Whether ``record`` (a manifest's ``capabilities``) can be relied on; None (an older manifest) cannot."""
    return isinstance(record, dict) and record.get('version') == VERSION


def needs_of(item):
    """What a pi_root item's settings need of its image."""
    wanted = ['initramfs_nfs']
    if item.get('boot_mount') == 'nfs':
        wanted.append('mount_nfs')
    cloud_init = item.get('cloud_init') or {}
    if cloud_init.get('user_data') is not None or cloud_init.get('instance') not in (None, ''):
        wanted.append('cloud_init')
    return wanted


def lacks(record, need):
    """Whether a known ``record`` lacks ``need``; an initramfs that cannot mount NFS counts only when the boot files
    carry one (a kernel without an initramfs mounts its NFS root itself)."""
    if need == 'initramfs_nfs':
        ramfs = record.get('initramfs') or {}
        return bool(ramfs.get('files')) and ramfs.get('nfs') is False
    return record.get(need) is False


def lacking(record, needs, label):
    """``[(need, message)]``: what the image of ``label`` lacks for ``needs``; [] when the record is unknown."""
    if not known(record):
        return []
    return [(need, 'the image of bakeform %s %s' % (label, NEEDS[need])) for need in needs if lacks(record, need)]


def summary(record):
    """A short line for people: what the root lacks of what a netboot may need, or that it is not recorded."""
    if not known(record):
        return 'not recorded'  # registered before bakeform recorded it: its Pis' settings are not checked
    missing = [name for name, need in (('mount.nfs', 'mount_nfs'), ('cloud-init', 'cloud_init'),
                                       ('NFS in its initramfs', 'initramfs_nfs')) if lacks(record, need)]
    return 'no %s' % ', no '.join(missing) if missing else 'nothing missing'


# --------------------------------------------------------------------------- views


class TreeView:
    """A view of a directory through ``confined.Tree``: a symlink on the way (a merged /sbin) counts as absent."""

    def __init__(self, tree):
        self.tree = tree

    def names(self, rel):
        try:
            return frozenset(self.tree.listdir(rel)) if self.tree.is_dir(rel) else None
        except (ConfinedError, OSError):
            return None

    def read_text(self, rel, limit):
        try:
            return self.tree.read_text(rel, limit)
        except (ConfinedError, OSError):
            return None


def detect_dir(top, boot_files=()):
    with Tree(top, 'the root tree %s' % top) as tree:
        return detect(TreeView(tree), boot_files)


def parse_listings(out):
    """{directory: names} of ``debugfs -f`` output of ``ls -p <dir>/`` commands (each echoed as ``debugfs: ...``).

    ``ls -p`` prints ``/inode/mode/uid/gid/name/size/`` per entry; a directory that is not there prints nothing on
    standard output, so it gets no entry (not even its ``.``).
    """
    listings, current = {}, None
    for line in out.splitlines():
        if line.startswith('debugfs: ls -p /'):
            current = line[len('debugfs: ls -p /'):].rstrip('/')
            continue
        parts = line.split('/')
        if current is not None and len(parts) == 8 and parts[0] == '' and parts[-1] == '':
            listings.setdefault(current, set()).add(parts[5])
    return {rel: frozenset(names - {'.', '..'}) for rel, names in listings.items() if '.' in names}


class DebugfsView:
    """A view of an ext4 image, read by ``debugfs`` (it cannot write: no ``-w``), symlinks followed inside it.

    The listings of ``dirs`` are read in one run; ``run(argv)`` returns ``(rc, out, err)``.
    """

    def __init__(self, run, image, dirs=LISTED, workdir=None):
        self.run, self.image = run, image
        handle, path = tempfile.mkstemp(prefix='.pifleet-debugfs-', dir=workdir or os.path.dirname(image))
        try:
            with os.fdopen(handle, 'w') as commands:
                # The top directory first: a file system debugfs cannot open lists nothing, not even it.
                commands.write(''.join('ls -p /%s\n' % (rel + '/' if rel else '') for rel in ('', *dirs)))
            rc, out, err = run(['debugfs', '-f', path, image])
        finally:
            os.unlink(path)
        self.listings = parse_listings(out)
        if rc != 0 or '' not in self.listings:
            raise OSError('debugfs could not read the file system in %s: %s' % (image, (err or out).strip()[-500:]))

    def names(self, rel):
        return self.listings.get(rel)

    def read_text(self, rel, limit):
        rc, out, _err = self.run(['debugfs', '-R', 'cat /%s' % rel, self.image])
        if rc != 0 or not out:
            return None
        return out[:limit]


def detect_image(run, image, boot_files=(), workdir=None):
    """The capability record of the ext4 file system in ``image``."""
    return detect(DebugfsView(run, image, workdir=workdir), boot_files)
