# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Capture: a Pi's root, set up by hand, made into the golden root of a new bakeform generation.

``Capture`` copies the root image consistently while the Pi may be running (the file system is frozen
for the moment a reflink clone takes), checks the copy (``e2fsck``: the bakery's kernel wrote every
byte of it, a Pi never wrote it raw), mounts it under the module's tmpdir and takes the Pi's identity
out through ``confined.Tree`` (every write confined, no symlink followed; the Pi controls what is in
there): ``scrub_changes`` lists what goes, ``IDENTITY`` names it for people. The copy then gets a file
system UUID of its own. What pi_root wrote into the root is undone exactly (the boot line in fstab, the
cloud-init seed, root's keys when they are the ones pi_root wrote, the drop-ins named ``pifleet*``);
what every clone gets again anyway (the NFS network fixes) may stay.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat

from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import is_host_label
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rootfix as _rootfix
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.cloudinit import SEED_DIR
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import RootError

# What a capture takes out, for people (the docs and the module's return list it; tests check each one).
IDENTITY = (
    ('ssh_host_keys', 'the SSH host keys and their certificates (etc/ssh/ssh_host_*)'),
    ('sshd_dropins', "pifleet's sshd drop-ins (etc/ssh/sshd_config.d/pifleet*)"),
    ('machine_id', 'the machine-id: etc/machine-id emptied (as Debian images ship it), '
                   'var/lib/dbus/machine-id removed unless it is a link to it'),
    ('cloud_init', "cloud-init's instance data (var/lib/cloud/instance, instances/*, data/*, sem/*) and the "
                   'NoCloud seed pi_root wrote'),
    ('hostname', 'the host name, back to the one of the generation the root came from (etc/hostname, the '
                 '127.0.1.1 line of etc/hosts)'),
    ('random_seed', "systemd's random seed and credential secret (var/lib/systemd/random-seed, credential.secret)"),
    ('logs', 'the journal (var/log/journal/*) removed, rotated logs under var/log removed, current ones emptied'),
    ('shell_history', "root's and every user's shell history (.bash_history, .zsh_history, .sh_history, "
                      '.ash_history, .python_history)'),
    ('fstab', 'the boot-files line pi_root added to etc/fstab'),
    ('authorized_keys', "root's authorized_keys when they are the ones pi_root wrote (the marker's checksum)"),
    ('leases', 'DHCP leases (var/lib/dhcp, var/lib/dhcpcd, var/lib/NetworkManager/*.lease)'),
)
ROOT_OPTIONS = ('nosuid', 'nodev')
_HOST_KEY = re.compile(r'ssh_host_[a-z0-9]+_key(\.pub|-cert\.pub)?')
_ROTATED = re.compile(r'.+(\.[0-9]+|\.old|-[0-9]{8})(\.gz|\.xz|\.bz2|\.zst)?|.+\.(gz|xz|bz2|zst)')
HISTORIES = ('.bash_history', '.zsh_history', '.sh_history', '.ash_history', '.python_history')
RANDOM_SEEDS = ('var/lib/systemd/random-seed', 'var/lib/systemd/credential.secret')
CLOUD = 'var/lib/cloud'
SEED_FILES = tuple('%s/%s' % (SEED_DIR, name) for name in ('meta-data', 'user-data', 'network-config'))
LOG_DIR = 'var/log'
JOURNAL = 'var/log/journal'
FALLBACK_HOSTNAME = 'localhost'


def absent(fix, rel, kind='absent'):
    return {'fix': fix, 'path': rel, 'kind': kind}


def is_boot_line(line):
    """A line pi_root added to etc/fstab for the boot files (``rootfix.boot_line``): NFS, read-only, at /boot*."""
    fields = line.split()
    return (len(fields) >= 4 and fields[2] == 'nfs' and fields[1] in ('/boot', '/boot/firmware')
            and fields[3] == 'ro,vers=3,nolock')


def without_boot_line(text):
    return ''.join(line + '\n' for line in text.splitlines() if not is_boot_line(line))


def _entries(tree, rel):
    return tree.entries(rel) if tree.is_dir(rel) else []


def _ssh(tree):
    changes = [absent('ssh_host_keys', 'etc/ssh/' + name) for name, st in _entries(tree, 'etc/ssh')
               if _HOST_KEY.fullmatch(name) and not stat.S_ISDIR(st.st_mode)]
    changes += [absent('sshd_dropins', 'etc/ssh/sshd_config.d/' + name, 'tree')
                for name, _st in _entries(tree, 'etc/ssh/sshd_config.d') if name.startswith('pifleet')]
    return changes


def _machine_id(tree):
    changes = []
    st = tree.lstat(_rootfix.MACHINE_ID)
    if st is not None and (not stat.S_ISREG(st.st_mode) or st.st_size):
        changes.append(_rootfix.file_change('machine_id', _rootfix.MACHINE_ID, None, '', 0o444))
    st = tree.lstat(_rootfix.DBUS_MACHINE_ID)
    if st is not None and not stat.S_ISLNK(st.st_mode):  # Debian's link to etc/machine-id stays
        changes.append(absent('machine_id', _rootfix.DBUS_MACHINE_ID, 'tree'))
    return changes


def _cloud_init(tree):
    changes = [absent('cloud_init', '%s/instance' % CLOUD, 'tree')] if tree.lstat('%s/instance' % CLOUD) else []
    for sub in ('instances', 'data', 'sem'):
        changes += [absent('cloud_init', '%s/%s/%s' % (CLOUD, sub, name), 'tree')
                    for name, _st in _entries(tree, '%s/%s' % (CLOUD, sub))]
    return changes + [absent('cloud_init', rel) for rel in SEED_FILES if tree.lstat(rel)]


def _names(tree, golden_hostname):
    changes = []
    if tree.read_text(_rootfix.HOSTNAME, 4096) != golden_hostname + '\n':
        changes.append(_rootfix.file_change('hostname', _rootfix.HOSTNAME, None, golden_hostname + '\n'))
    hosts = tree.read_text(_rootfix.HOSTS)
    wanted = None if hosts is None else _rootfix.fix_hosts(hosts, golden_hostname)
    if wanted != hosts:
        changes.append(_rootfix.file_change('hostname', _rootfix.HOSTS, hosts, wanted))
    return changes


def _logs(tree, rel=LOG_DIR):
    changes = []
    for name, st in _entries(tree, rel):
        path = '%s/%s' % (rel, name)
        if path == JOURNAL:
            changes += [absent('logs', '%s/%s' % (JOURNAL, sub), 'tree') for sub, _st in _entries(tree, JOURNAL)]
        elif stat.S_ISDIR(st.st_mode):
            changes += _logs(tree, path)
        elif stat.S_ISREG(st.st_mode) and _ROTATED.fullmatch(name):
            changes.append(absent('logs', path))
        elif stat.S_ISREG(st.st_mode) and st.st_size:
            changes.append({'fix': 'logs', 'path': path, 'kind': 'empty'})
    return changes


def _histories(tree):
    homes = ['root'] + ['home/' + name for name, st in _entries(tree, 'home') if stat.S_ISDIR(st.st_mode)]
    return [absent('shell_history', '%s/%s' % (home, name), 'tree') for home in homes for name in HISTORIES
            if tree.lstat('%s/%s' % (home, name))]


def _pifleet_files(tree, marker):
    changes = []
    fstab = tree.read_text(_rootfix.FSTAB)
    if fstab is not None and without_boot_line(fstab) != fstab:
        changes.append(_rootfix.file_change('fstab', _rootfix.FSTAB, fstab, without_boot_line(fstab)))
    wrote = (marker or {}).get('authorized_keys_sha256')
    keys = tree.read_bytes(_rootfix.AUTHORIZED_KEYS) if wrote else None
    if keys is not None and hashlib.sha256(keys).hexdigest() == wrote:
        changes.append(absent('authorized_keys', _rootfix.AUTHORIZED_KEYS))
    return changes


def _leases(tree):
    changes = [absent('leases', 'var/lib/dhcp/' + name) for name, st in _entries(tree, 'var/lib/dhcp')
               if name.endswith('.leases') and not stat.S_ISDIR(st.st_mode)]
    changes += [absent('leases', 'var/lib/dhcpcd/' + name, 'tree') for name, _st in _entries(tree, 'var/lib/dhcpcd')]
    return changes + [absent('leases', 'var/lib/NetworkManager/' + name)
                      for name, st in _entries(tree, 'var/lib/NetworkManager')
                      if name.endswith('.lease') and not stat.S_ISDIR(st.st_mode)]


def scrub_changes(tree, golden_hostname, marker=None):
    """What takes the Pi's identity out of the root in ``tree``: change dicts as ``rootfix`` makes (kinds
    ``file``, ``absent``), plus ``tree`` (remove whatever is there, a directory with its content) and
    ``empty`` (a log emptied, its owner and mode kept). Reads only; ``apply`` writes."""
    changes = _ssh(tree) + _machine_id(tree) + _cloud_init(tree) + _names(tree, golden_hostname)
    changes += [absent('random_seed', rel) for rel in RANDOM_SEEDS if tree.lstat(rel)]
    return changes + _logs(tree) + _histories(tree) + _pifleet_files(tree, marker) + _leases(tree)


def apply(tree, changes):
    for change in changes:
        if change['kind'] == 'tree':
            tree.remove_tree(change['path'])
        elif change['kind'] == 'empty':
            tree.write_bytes(change['path'], b'')  # keeps the file's owner, mode and xattrs
    _rootfix.apply(tree, [change for change in changes if change['kind'] not in ('tree', 'empty')])


def golden_hostname(run, image):
    """The host name in the golden root ``image`` (a bakery-made file system: debugfs reads it unmounted)."""
    rc, out, _err = run(['debugfs', '-R', 'cat /etc/hostname', image])
    name = out.strip().splitlines()[0].strip() if rc == 0 and out.strip() else ''
    return name if is_host_label(name) else FALLBACK_HOSTNAME


class Capture:
    """A consistent, identity-free copy of the root of Pi ``serial`` (its ``roots.Layout``).

    ``host`` has ``run(argv)`` and ``which(name, required)``.
    """

    def __init__(self, host, layout, who):
        self.host, self.layout, self.who = host, layout, who
        self.mounter = _loopfs.Mounter(host.run, host.which)

    def _check(self, argv, what, ok=(0,)):
        rc, out, err = self.host.run(argv)
        if rc not in ok:
            raise RootError('%s for the capture of %s failed: %s' % (what, self.who, (err or out).strip()),
                            rc=rc, stderr=err, cmd=argv)
        return out

    def mounted(self):
        """True when the Pi's image is mounted at its mount point (the Pi may be writing to it over NFS)."""
        backing = _loopfs.mounted_image(os.path.realpath(self.layout.point))
        return backing is not None and os.path.realpath(backing) == os.path.realpath(self.layout.image)

    def copy(self, dest):
        """``dest``: a clone of the Pi's root image, of a file system frozen meanwhile if it is mounted."""
        cp = [self.host.which('cp', True), '--reflink=auto', '--sparse=always', '--', self.layout.image, dest]
        if not self.mounted():
            self._check(cp, 'copying the root image')
            return False
        fsfreeze = self.host.which('fsfreeze', True)
        point = os.path.realpath(self.layout.point)
        self._check([fsfreeze, '--freeze', point], 'freezing the root file system (fsfreeze)')
        try:
            self._check(cp, 'copying the frozen root image')
        finally:
            # Thawed whatever happened: a frozen root hangs the Pi (by hand: fsfreeze --unfreeze <point>).
            self._check([fsfreeze, '--unfreeze', point], 'thawing the root file system (fsfreeze)')
        return True

    def scrub(self, image, mnt, hostname, marker):
        """Mount the copy at ``mnt`` (an empty directory of ours), take the identity out; the changes made."""
        self.mounter.mount(image, mnt, ROOT_OPTIONS, 'the capture of %s' % self.who)
        try:
            with Tree(mnt, 'the captured root of %s' % self.who) as tree:
                changes = scrub_changes(tree, hostname, marker)
                apply(tree, changes)
        finally:
            self.mounter.umount(mnt, 'the capture of %s' % self.who)
        return changes

    def new_uuid(self, image):
        self._check([self.host.which('tune2fs', True), '-U', 'random', image], 'giving the captured root its own UUID')
