# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fixes a Pi OS root needs to live on NFS, as pure functions over file contents.

``inplace_changes()`` and ``clone_changes()`` read a root tree (never write) and return the
changes it needs, so check mode can show a diff of exactly what a real run would do; ``apply()``
then writes each change atomically, keeping the owner, mode and xattrs of the file it replaces.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import tempfile

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
SWAPFILE_CONF = 'etc/dphys-swapfile'
SWAP_MASK = 'etc/systemd/system/dphys-swapfile.service'
WANTS = 'etc/systemd/system/multi-user.target.wants'
# First-boot jobs that would resize a partition the Pi does not have or rewrite its config.
FIRSTBOOT = ('resize2fs_once', 'apply_noobs_os_config')
SSH_UNITS = ('lib/systemd/system/ssh.service', 'usr/lib/systemd/system/ssh.service')
SWAP_EVIDENCE = (SWAPFILE_CONF, 'etc/init.d/dphys-swapfile', 'lib/systemd/system/dphys-swapfile.service',
                 'usr/lib/systemd/system/dphys-swapfile.service')
NFS_ROOT_NICS = ('eth0', 'end0')  # Pi OS names the onboard NIC eth0 (bullseye) or end0 (bookworm, Pi 5)
# Mount points the SD card provided; on NFS they are the server's business (or ours: the boot line).
SD_MOUNTPOINTS = ('/', '/boot', '/boot/firmware')
SD_SPECS = ('PARTUUID=', '/dev/mmcblk')
NM_CONF_TEXT = (
    '# Managed by pifleet.netboot pi_root: the root file system is mounted over this NIC (NFS);\n'
    '# NetworkManager must never take it down (systemd#21967).\n'
    '[keyfile]\n'
    'unmanaged-devices=%s\n' % ';'.join('interface-name:%s' % nic for nic in NFS_ROOT_NICS))
_HOSTNAME = re.compile(r'[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*')
_SWAPSIZE = re.compile(r'\s*CONF_SWAPSIZE\s*=')


class FixError(Exception):
    """A root that cannot be fixed safely; the message says which file and why."""


def check_hostname(hostname):
    if not hostname or len(hostname) > 253 or not _HOSTNAME.fullmatch(hostname):
        return ('hostname %r is not valid: use lower-case letters, digits and "-" (labels of at most 63 '
                'characters, separated by ".", not starting or ending with "-")' % hostname)
    return None


def boot_line(mode, nfs_server, export, mountpoint):
    """The fstab line for the boot files; None when the Pi does not mount them.

    NFSv3 with nolock (no lockd on the Pi's side of an NFS root) and never ``proto=``, which
    Bookworm's klibc nfsmount rejects (NETBOOT-FACTS 6).
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


def _path(root, rel):
    """``root/rel``, refusing a parent directory that a symlink leads out of the root."""
    path = os.path.join(root, rel)
    parent = os.path.realpath(os.path.dirname(path))
    top = os.path.realpath(root)
    if parent != top and not parent.startswith(top + os.sep):
        raise FixError('%s leads outside the root %s (a symlink in its path): fix the root by hand or rebuild it'
                       % (path, root))
    return path


def read_text(root, rel):
    """Content of a regular file in the root; None when missing or not a regular file (never follows it)."""
    path = _path(root, rel)
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8', errors='surrogateescape') as handle:
        return handle.read()


def file_change(fix, rel, before, after, mode=0o644):
    return {'fix': fix, 'path': rel, 'kind': 'file', 'before': before, 'after': after, 'mode': mode}


def _text_fix(root, fix, rel, func, *args):
    before = read_text(root, rel)
    after = func(before or '', *args)
    return [file_change(fix, rel, before, after)] if after != before else []


def boot_mountpoint(root):
    return '/boot/firmware' if os.path.isdir(os.path.join(root, 'boot/firmware')) else '/boot'


def inplace_changes(root, hostname, boot, keys_text):
    """Changes that follow the options and are re-applied to a live root: fstab, hostname, hosts, keys."""
    changes = _text_fix(root, 'fstab', FSTAB, fix_fstab, boot)
    changes += _text_fix(root, 'hostname', HOSTNAME, fix_hostname, hostname)
    changes += _text_fix(root, 'hosts', HOSTS, fix_hosts, hostname)
    if keys_text is not None:
        ssh_dir = _path(root, SSH_DIR)
        st = os.lstat(ssh_dir) if os.path.lexists(ssh_dir) else None
        if st is None or not stat.S_ISDIR(st.st_mode) or (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (0, 0, 0o700):
            changes.append({'fix': 'authorized_keys', 'path': SSH_DIR, 'kind': 'dir', 'mode': 0o700})
        before = read_text(root, AUTHORIZED_KEYS)
        if before != keys_text or _owner_mode(root, AUTHORIZED_KEYS) != (0, 0, 0o600):
            changes.append(dict(file_change('authorized_keys', AUTHORIZED_KEYS, before, keys_text, 0o600),
                                force_owner=True))
    return changes


def _owner_mode(root, rel):
    try:
        st = os.lstat(os.path.join(root, rel))
    except FileNotFoundError:
        return None
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def _exists(root, rel):
    return os.path.lexists(_path(root, rel))


def clone_changes(root, hostname, boot, keys_text, machine_id):
    """Everything a fresh clone needs: the in-place fixes plus the one-time ones (identity, first boot, network)."""
    changes = inplace_changes(root, hostname, boot, keys_text)
    changes.append(file_change('machine_id', MACHINE_ID, read_text(root, MACHINE_ID), machine_id, 0o444))
    if read_text(root, DBUS_MACHINE_ID) is not None:
        changes.append(file_change('machine_id', DBUS_MACHINE_ID, read_text(root, DBUS_MACHINE_ID), machine_id))
    links = [os.path.join(WANTS, name + '.service') for name in FIRSTBOOT]
    for name in FIRSTBOOT:
        links += sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, 'etc/rc?.d/S??' + name)))
    for rel in links:
        if _exists(root, rel):
            changes.append({'fix': 'firstboot_disabled', 'path': rel, 'kind': 'absent'})
    if any(_exists(root, rel) for rel in SWAP_EVIDENCE):
        if not (os.path.islink(_path(root, SWAP_MASK)) and os.readlink(_path(root, SWAP_MASK)) == '/dev/null'):
            changes.append({'fix': 'swap_disabled', 'path': SWAP_MASK, 'kind': 'symlink', 'target': '/dev/null'})
        if read_text(root, SWAPFILE_CONF) is not None:
            changes += _text_fix(root, 'swap_disabled', SWAPFILE_CONF, fix_swapfile)
    if os.path.isdir(_path(root, NM_DIR)):
        changes.append(file_change('network', NM_CONF, read_text(root, NM_CONF), NM_CONF_TEXT))
    if read_text(root, DHCPCD) is not None:
        changes += _text_fix(root, 'network', DHCPCD, fix_dhcpcd)
    unit = next((rel for rel in SSH_UNITS if _exists(root, rel)), None)
    if unit and not _exists(root, os.path.join(WANTS, 'ssh.service')):
        changes.append({'fix': 'ssh_enabled', 'path': os.path.join(WANTS, 'ssh.service'), 'kind': 'symlink',
                        'target': '/' + unit})
    return [change for change in changes if change['kind'] != 'file' or change['before'] != change['after']]


def fixes_of(changes):
    return sorted({change['fix'] for change in changes})


# --------------------------------------------------------------------------- writing


def _makedirs(root, rel_dir):
    """Create missing parents as root-owned 0755 directories (what a package would create)."""
    path = _path(root, rel_dir) if rel_dir else root
    if os.path.isdir(path):
        return
    _makedirs(root, os.path.dirname(rel_dir))
    os.mkdir(path, 0o755)
    os.chown(path, 0, 0)
    os.chmod(path, 0o755)


def _copy_xattrs(src, dst_fd):
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(dst_fd, name, os.getxattr(src, name, follow_symlinks=False))
        except OSError:
            pass  # e.g. a security.* name this host's policy refuses; the content matters more


def write_file(root, rel, content, mode=0o644, force_owner=False):
    """Replace ``root/rel`` atomically; an existing regular file's owner, mode and xattrs are kept."""
    path = _path(root, rel)
    _makedirs(root, os.path.dirname(rel))
    old = None if os.path.islink(path) or not os.path.isfile(path) else os.lstat(path)
    uid, gid, perms = (0, 0, mode) if old is None or force_owner else (old.st_uid, old.st_gid, old.st_mode & 0o7777)
    fd, tmp = tempfile.mkstemp(prefix='.pifleet-', dir=os.path.dirname(path))
    try:
        os.write(fd, content.encode('utf-8', errors='surrogateescape'))
        os.fchown(fd, uid, gid)
        os.fchmod(fd, perms)  # after chown, which clears setuid/setgid bits
        if old is not None:
            _copy_xattrs(path, fd)
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.rename(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def apply(root, changes):
    """Write the changes into the root tree (directories first)."""
    for change in sorted(changes, key=lambda c: c['kind'] != 'dir'):
        path = _path(root, change['path'])
        kind = change['kind']
        if kind == 'dir':
            if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
                os.unlink(path)
            _makedirs(root, os.path.dirname(change['path']))
            if not os.path.isdir(path):
                os.mkdir(path, change['mode'])
            os.chown(path, 0, 0, follow_symlinks=False)
            os.chmod(path, change['mode'])
        elif kind == 'file':
            write_file(root, change['path'], change['after'], change['mode'], change.get('force_owner', False))
        elif kind == 'symlink':
            _makedirs(root, os.path.dirname(change['path']))
            tmp = os.path.join(os.path.dirname(path), '.pifleet-link-%d' % os.getpid())
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(change['target'], tmp)
            os.replace(tmp, path)
        elif kind == 'absent' and os.path.lexists(path):
            os.unlink(path)
