# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fixes a Pi OS root needs to live on NFS, as pure functions over file contents.

``inplace_changes()`` and ``clone_changes()`` read a root tree (never write) and return the
changes it needs, so check mode can show a diff of exactly what a real run would do; ``apply()``
then writes each change atomically, keeping the owner, mode and xattrs of the file it replaces.
"""

from __future__ import annotations

import os
import re
import stat

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError

FSTAB = 'etc/fstab'
HOSTNAME = 'etc/hostname'
HOSTS = 'etc/hosts'
MACHINE_ID = 'etc/machine-id'
DBUS_MACHINE_ID = 'var/lib/dbus/machine-id'
SSH_DIR = 'root/.ssh'
AUTHORIZED_KEYS = 'root/.ssh/authorized_keys'
DHCPCD = 'etc/dhcpcd.conf'
NM_DIR = 'etc/NetworkManager'
NM_CONF = 'etc/NetworkManager/conf.d/90-pifleet-nfsroot.conf'
# systemd-networkd reads every .network file in lexical order and the first match wins: 05- comes before the
# 10-netplan-<nic>.network files netplan generates (its default renderer is networkd).
NETWORKD_CONF = 'etc/systemd/network/05-pifleet-nfsroot.network'
NETWORKD_EVIDENCE = ('usr/sbin/netplan', 'sbin/netplan',
                     'etc/systemd/system/multi-user.target.wants/systemd-networkd.service',
                     'etc/systemd/system/dbus-org.freedesktop.network1.service')
SWAPFILE_CONF = 'etc/dphys-swapfile'
SWAP_MASK = 'etc/systemd/system/dphys-swapfile.service'
WANTS = 'etc/systemd/system/multi-user.target.wants'
# First-boot jobs that would resize a partition the Pi does not have, rewrite its config, replace the
# host keys pi_root made for it, or wait on a console for a user to be created (the system stays "starting").
FIRSTBOOT = ('resize2fs_once', 'apply_noobs_os_config', 'regenerate_ssh_host_keys', 'userconfig')
SSH_UNITS = ('lib/systemd/system/ssh.service', 'usr/lib/systemd/system/ssh.service')
SWAP_EVIDENCE = (SWAPFILE_CONF, 'etc/init.d/dphys-swapfile', 'lib/systemd/system/dphys-swapfile.service',
                 'usr/lib/systemd/system/dphys-swapfile.service')
NFS_ROOT_NICS = ('eth0', 'end0')  # Pi OS names the onboard NIC eth0 (bullseye) or end0 (bookworm, Pi 5)
# Mount points the SD card provided; on NFS they are the server's business (or ours: the boot line).
SD_MOUNTPOINTS = ('/', '/boot', '/boot/firmware')
SD_SPECS = ('PARTUUID=', '/dev/mmcblk')
DIFF_FILES = (FSTAB, HOSTNAME, HOSTS)  # what --diff shows of a root: the files people read
NM_CONF_TEXT = (
    '# Managed by pifleet.netboot pi_root: the root file system is mounted over this NIC (NFS);\n'
    '# NetworkManager must never take it down (systemd#21967).\n'
    '[keyfile]\n'
    'unmanaged-devices=%s\n' % ';'.join('interface-name:%s' % nic for nic in NFS_ROOT_NICS))
NETWORKD_CONF_TEXT = (
    '# Managed by pifleet.netboot pi_root: the root file system is mounted over this NIC (NFS);\n'
    '# systemd-networkd (netplan renders to it by default) must leave it as the kernel set it up.\n'
    '[Match]\n'
    'Name=%s\n'
    '\n'
    '[Link]\n'
    'Unmanaged=yes\n' % ' '.join(NFS_ROOT_NICS))
_SWAPSIZE = re.compile(r'\s*CONF_SWAPSIZE\s*=')


def boot_line(mode, nfs_server, export, mountpoint):
    """The fstab line for the boot files; None when the Pi does not mount them.

    NFSv3 with nolock (no lockd on the Pi's side of an NFS root) and never ``proto=``, which
    Bookworm's klibc nfsmount rejects (docs/netboot.md §6).
    """
    if mode == 'none':
        return None
    return '%s:%s %s nfs ro,vers=3,nolock 0 0' % (nfs_server, export, mountpoint)


def _fields(line):
    stripped = line.strip()
    if not stripped or stripped.startswith('#'):
        return None
    return stripped.split()


def fix_fstab(text, boot):
    """Drop the SD-card lines (root, boot, mmcblk, PARTUUID); keep proc, comments and the rest; add ``boot``."""
    kept = []
    for line in text.splitlines():
        fields = _fields(line)
        if fields and len(fields) >= 2 and (fields[1] in SD_MOUNTPOINTS or fields[0].startswith(SD_SPECS)):
            continue
        kept.append(line)
    if boot:
        kept.append(boot)
    return ''.join(line + '\n' for line in kept)


def fix_hostname(_text, hostname):
    return hostname + '\n'


def fix_hosts(text, hostname):
    """Point 127.0.1.1 at the Pi's name (Debian's convention); every other line stays."""
    wanted = '127.0.1.1\t%s' % hostname
    lines, found = [], False
    for line in text.splitlines():
        fields = _fields(line)
        if fields and fields[0] == '127.0.1.1':
            if not found:
                lines.append(wanted)
            found = True
            continue
        lines.append(line)
    if not found:
        lines.append(wanted)
    return ''.join(line + '\n' for line in lines)


def fix_dhcpcd(text):
    wanted = 'denyinterfaces %s' % ' '.join(NFS_ROOT_NICS)
    if any(line.strip() == wanted for line in text.splitlines()):
        return text
    if text and not text.endswith('\n'):
        text += '\n'
    return text + '# pifleet: the NFS root lives on this NIC, dhcpcd must leave it alone\n' + wanted + '\n'


def fix_swapfile(text):
    lines = ['CONF_SWAPSIZE=0' if _SWAPSIZE.match(line) else line for line in text.splitlines()]
    if 'CONF_SWAPSIZE=0' not in lines:
        lines.append('CONF_SWAPSIZE=0')
    return ''.join(line + '\n' for line in lines)


def authorized_keys_text(keys):
    """The file content for a list of keys; None when keys are not managed."""
    if keys is None:
        return None
    return ''.join(key.strip() + '\n' for key in keys if key and key.strip())


def new_machine_id(randbytes=os.urandom):
    return randbytes(16).hex() + '\n'


def valid_machine_id(text):
    return bool(text) and re.fullmatch(r'[0-9a-f]{32}\n?', text) is not None


# --------------------------------------------------------------------------- reading a root
# Every read and write below goes through a ``confined.Tree`` of the root: paths are walked from a
# descriptor of its top without following any symlink, so a Pi's root (or a golden image) that
# points etc/ somewhere else is refused rather than followed (SECURITY.md).


def file_change(fix, rel, before, after, mode=0o644):
    return {'fix': fix, 'path': rel, 'kind': 'file', 'before': before, 'after': after, 'mode': mode}


def _text_fix(tree, fix, rel, func, *args):
    before = tree.read_text(rel)
    after = func(before or '', *args)
    return [file_change(fix, rel, before, after)] if after != before else []


def probe(tree, rel):
    """Whether ``rel`` exists, for evidence only: a path behind a symlink (merged /usr's lib) counts as absent."""
    try:
        return tree.exists(rel)
    except ConfinedError:
        return False


def boot_mountpoint(tree):
    return '/boot/firmware' if tree.is_dir('boot/firmware') else '/boot'


def inplace_changes(tree, hostname, boot, keys_text):
    """Changes that follow the options and are re-applied to a live root: fstab, hostname, hosts, keys."""
    changes = _text_fix(tree, 'fstab', FSTAB, fix_fstab, boot)
    changes += _text_fix(tree, 'hostname', HOSTNAME, fix_hostname, hostname)
    changes += _text_fix(tree, 'hosts', HOSTS, fix_hosts, hostname)
    if keys_text is not None:
        st = tree.lstat(SSH_DIR)
        is_dir = st is not None and stat.S_ISDIR(st.st_mode)
        if not is_dir or (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (0, 0, 0o700):
            changes.append({'fix': 'authorized_keys', 'path': SSH_DIR, 'kind': 'dir', 'mode': 0o700})
        # A root/.ssh that is a symlink (or a file) is replaced by ensure_dir(): nothing is read through it.
        before = tree.read_text(AUTHORIZED_KEYS) if is_dir else None
        if before != keys_text or not is_dir or _owner_mode(tree, AUTHORIZED_KEYS) != (0, 0, 0o600):
            changes.append(dict(file_change('authorized_keys', AUTHORIZED_KEYS, before, keys_text, 0o600),
                                force_owner=True))
    return changes


def _owner_mode(tree, rel):
    st = tree.lstat(rel)
    return None if st is None else (st.st_uid, st.st_gid, st.st_mode & 0o7777)


def _rc_links(tree, name):
    links = []
    for level in '0123456S':
        rc_dir = 'etc/rc%s.d' % level
        try:
            names = tree.listdir(rc_dir)
        except ConfinedError:
            continue
        links += ['%s/%s' % (rc_dir, n) for n in names if re.fullmatch(r'S\d\d' + re.escape(name), n)]
    return links


def clone_changes(tree, hostname, boot, keys_text, machine_id, *, seed=None):
    """Everything a fresh clone needs: the in-place fixes plus the one-time ones (identity, first boot, network).

    ``seed`` ({relative path: text}) adds files of the Pi's own, such as its cloud-init NoCloud seed.
    """
    changes = inplace_changes(tree, hostname, boot, keys_text)
    changes.append(file_change('machine_id', MACHINE_ID, tree.read_text(MACHINE_ID), machine_id, 0o444))
    if tree.read_text(DBUS_MACHINE_ID) is not None:  # Debian makes it a symlink to etc/machine-id: then left alone
        changes.append(file_change('machine_id', DBUS_MACHINE_ID, tree.read_text(DBUS_MACHINE_ID), machine_id))
    links = [os.path.join(WANTS, name + '.service') for name in FIRSTBOOT]
    for name in FIRSTBOOT:
        links += _rc_links(tree, name)
    for rel in links:
        if probe(tree, rel):
            changes.append({'fix': 'firstboot_disabled', 'path': rel, 'kind': 'absent'})
    if any(probe(tree, rel) for rel in SWAP_EVIDENCE):
        if tree.readlink(SWAP_MASK) != '/dev/null':
            changes.append({'fix': 'swap_disabled', 'path': SWAP_MASK, 'kind': 'symlink', 'target': '/dev/null'})
        if tree.read_text(SWAPFILE_CONF) is not None:
            changes += _text_fix(tree, 'swap_disabled', SWAPFILE_CONF, fix_swapfile)
    if tree.is_dir(NM_DIR):
        changes.append(file_change('network', NM_CONF, tree.read_text(NM_CONF), NM_CONF_TEXT))
    if any(probe(tree, rel) for rel in NETWORKD_EVIDENCE):  # enabled, or netplan could enable it at boot
        changes.append(file_change('network', NETWORKD_CONF, tree.read_text(NETWORKD_CONF), NETWORKD_CONF_TEXT))
    if tree.read_text(DHCPCD) is not None:
        changes += _text_fix(tree, 'network', DHCPCD, fix_dhcpcd)
    unit = next((rel for rel in SSH_UNITS if probe(tree, rel)), None)
    if unit and not probe(tree, os.path.join(WANTS, 'ssh.service')):
        changes.append({'fix': 'ssh_enabled', 'path': os.path.join(WANTS, 'ssh.service'), 'kind': 'symlink',
                        'target': '/' + unit})
    changes += seed_changes(tree, seed)
    return [change for change in changes if change['kind'] != 'file' or change['before'] != change['after']]


def seed_changes(tree, seed):
    """The Pi's own cloud-init NoCloud seed files that differ from ``seed`` ({path: text}); 0600, they may hold keys."""
    changes = []
    for rel, text in sorted((seed or {}).items()):
        before = tree.read_text(rel)
        if before != text:
            changes.append(file_change('cloud_init', rel, before, text, 0o600))
    return changes


def machine_id_changes(tree, machine_id):
    """The machine-id (text with its newline) in a root a Pi has used: compared capped, written root's, 0444.

    var/lib/dbus/machine-id is written only where it is a file of its own (Debian makes it a symlink).
    """
    changes = []
    if differs(tree, MACHINE_ID, machine_id.encode('ascii'), 0o444):
        changes.append(dict(file_change('machine_id', MACHINE_ID, None, machine_id, 0o444), force_owner=True))
    try:
        st = tree.lstat(DBUS_MACHINE_ID)
    except ConfinedError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode) and differs(tree, DBUS_MACHINE_ID, machine_id.encode(), 0o644):
        changes.append(dict(file_change('machine_id', DBUS_MACHINE_ID, None, machine_id, 0o644), force_owner=True))
    return changes


def differs(tree, rel, data, mode):
    """True unless ``rel`` holds ``data`` (bytes), owned by root with ``mode``; unreadable counts as different."""
    try:
        st = tree.lstat(rel)
        if st is None or (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (0, 0, mode):
            return True
        return tree.read_bytes(rel, len(data) + 1) != data
    except (ConfinedError, OSError):
        return True


def fixes_of(changes):
    return sorted({change['fix'] for change in changes})


# --------------------------------------------------------------------------- writing


def apply(tree, changes):
    """Write the changes into the root tree (directories first), never through a symlink."""
    for change in sorted(changes, key=lambda c: c['kind'] != 'dir'):
        kind, rel = change['kind'], change['path']
        if kind == 'dir':
            tree.ensure_dir(rel, change['mode'])
        elif kind == 'file':
            tree.write_text(rel, change['after'], change['mode'], force_owner=change.get('force_owner', False))
        elif kind == 'symlink':
            tree.symlink(rel, change['target'])
        elif kind == 'absent':
            tree.unlink(rel)
