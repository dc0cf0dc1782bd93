# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NFS-root fixes as pure functions (tables), then planned and applied through a Tree of a small root."""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError, Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rootfix as rf

PIOS_FSTAB = (
    '# a comment\n'
    'proc            /proc           proc    defaults          0       0\n'
    'PARTUUID=5a1e0c3d-01  /boot/firmware  vfat    defaults          0       2\n'
    'PARTUUID=5a1e0c3d-02  /               ext4    defaults,noatime  0       1\n'
)
PIOS_KEPT = '# a comment\nproc            /proc           proc    defaults          0       0\n'
BOOT = '10.99.0.2:/srv/pifleet/bakeforms/bw/boot /boot/firmware nfs ro,vers=3,nolock 0 0'


@pytest.mark.parametrize('text, boot, expected', [
    (PIOS_FSTAB, None, PIOS_KEPT),
    (PIOS_FSTAB, BOOT, PIOS_KEPT + BOOT + '\n'),
    ('/dev/mmcblk0p1 /boot vfat defaults 0 2\n/dev/mmcblk0p2 / ext4 defaults 0 1\n'
     '/dev/mmcblk0p3 none swap sw 0 0\nproc /proc proc defaults 0 0', None, 'proc /proc proc defaults 0 0\n'),
    ('LABEL=rootfs / ext4 defaults 0 1\nLABEL=bootfs /boot/firmware vfat defaults 0 2\n'
     'LABEL=data /data ext4 defaults,nofail 0 2\n', None, 'LABEL=data /data ext4 defaults,nofail 0 2\n'),
    ('tmpfs /tmp tmpfs defaults 0 0\n\n#PARTUUID=x-02 / ext4 defaults 0 1\n', None,
     'tmpfs /tmp tmpfs defaults 0 0\n\n#PARTUUID=x-02 / ext4 defaults 0 1\n'),
    # a changed server replaces our own earlier boot line
    ('proc /proc proc defaults 0 0\n10.0.0.1:/old/boot /boot/firmware nfs ro,vers=3,nolock 0 0\n', BOOT,
     'proc /proc proc defaults 0 0\n' + BOOT + '\n'),
    ('', None, ''),
])
def test_fix_fstab(text, boot, expected):
    assert rf.fix_fstab(text, boot) == expected
    assert rf.fix_fstab(expected, boot) == expected  # a second pass changes nothing


@pytest.mark.parametrize('mode, mountpoint, expected', [
    ('none', '/boot/firmware', None),
    ('nfs', '/boot/firmware', '10.99.0.2:/s/bw/boot /boot/firmware nfs ro,vers=3,nolock 0 0'),
    ('nfs', '/boot', '10.99.0.2:/s/bw/boot /boot nfs ro,vers=3,nolock 0 0'),
])
def test_boot_line(mode, mountpoint, expected):
    line = rf.boot_line(mode, '10.99.0.2', '/s/bw/boot', mountpoint)
    assert line == expected
    assert 'proto=' not in (line or '')  # klibc nfsmount rejects it (docs/netboot.md §6)


@pytest.mark.parametrize('text, expected', [
    ('127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n', '127.0.0.1\tlocalhost\n127.0.1.1\tkitchen\n'),
    ('127.0.0.1 localhost\n', '127.0.0.1 localhost\n127.0.1.1\tkitchen\n'),
    ('127.0.1.1 a\n::1 localhost\n127.0.1.1 b\n', '127.0.1.1\tkitchen\n::1 localhost\n'),
    ('# 127.0.1.1 commented\n', '# 127.0.1.1 commented\n127.0.1.1\tkitchen\n'),
    ('', '127.0.1.1\tkitchen\n'),
])
def test_fix_hosts(text, expected):
    assert rf.fix_hosts(text, 'kitchen') == expected
    assert rf.fix_hosts(expected, 'kitchen') == expected


@pytest.mark.parametrize('text, expected', [
    ('hostname\n', 'hostname\n# pifleet: the NFS root lives on this NIC, dhcpcd must leave it alone\n'
                   'denyinterfaces eth0 end0\n'),
    ('option x', 'option x\n# pifleet: the NFS root lives on this NIC, dhcpcd must leave it alone\n'
                 'denyinterfaces eth0 end0\n'),
    ('denyinterfaces eth0 end0\n', 'denyinterfaces eth0 end0\n'),
])
def test_fix_dhcpcd(text, expected):
    assert rf.fix_dhcpcd(text) == expected
    assert rf.fix_dhcpcd(expected) == expected


def test_networkmanager_conf_leaves_both_nic_names_unmanaged():
    lines = rf.NM_CONF_TEXT.splitlines()
    assert '[keyfile]' in lines
    assert 'unmanaged-devices=interface-name:eth0;interface-name:end0' in lines


@pytest.mark.parametrize('text, expected', [
    ('# x\nCONF_SWAPSIZE=100\n', '# x\nCONF_SWAPSIZE=0\n'),
    ('#CONF_SWAPSIZE=\n', '#CONF_SWAPSIZE=\nCONF_SWAPSIZE=0\n'),
    (' CONF_SWAPSIZE = 2048\nCONF_MAXSWAP=2048\n', 'CONF_SWAPSIZE=0\nCONF_MAXSWAP=2048\n'),
])
def test_fix_swapfile(text, expected):
    assert rf.fix_swapfile(text) == expected


@pytest.mark.parametrize('keys, expected', [
    (None, None),
    ([], ''),
    (['ssh-ed25519 AAA a@b', '  ssh-rsa BBB c@d \n', ''], 'ssh-ed25519 AAA a@b\nssh-rsa BBB c@d\n'),
])
def test_authorized_keys_text(keys, expected):
    assert rf.authorized_keys_text(keys) == expected


def test_machine_id_is_32_hex_and_random():
    first, second = rf.new_machine_id(), rf.new_machine_id()
    assert rf.valid_machine_id(first) and rf.valid_machine_id(second)
    assert first != second and first.endswith('\n') and len(first) == 33
    assert not rf.valid_machine_id('uninitialized\n') and not rf.valid_machine_id(None)


# --------------------------------------------------------------------------- planned and applied on a tree


def make_root(top, nm=True, dhcpcd=True):
    def write(rel, text, mode=0o644):
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
    write('etc/fstab', PIOS_FSTAB)
    write('etc/hostname', 'raspberrypi\n')
    os.setxattr(top / 'etc/hostname', 'user.pifleet', b'golden')
    write('etc/hosts', '127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n')
    write('etc/machine-id', 'a' * 32 + '\n', 0o444)
    write('var/lib/dbus/machine-id', 'a' * 32 + '\n')
    write('etc/dphys-swapfile', 'CONF_SWAPSIZE=100\n')
    write('lib/systemd/system/ssh.service', '[Unit]\n')
    (top / 'boot/firmware').mkdir(parents=True)
    (top / 'root').mkdir(mode=0o700)
    (top / 'etc/rc3.d').mkdir()
    os.symlink('../init.d/resize2fs_once', top / 'etc/rc3.d/S01resize2fs_once')
    (top / rf.WANTS).mkdir(parents=True)
    os.symlink('/lib/systemd/system/resize2fs_once.service', top / rf.WANTS / 'resize2fs_once.service')
    if nm:
        (top / 'etc/NetworkManager').mkdir()
    if dhcpcd:
        write('etc/dhcpcd.conf', 'hostname\n')
    return top


def fixed(root, func, *args, **kwargs):
    """``func(tree, ...)`` on a Tree of ``root``: how pi_root calls the planners and apply()."""
    with Tree(str(root), 'the root of Pi x') as tree:
        return func(tree, *args, **kwargs)


def test_clone_changes_then_apply(tmp_path):
    root = make_root(tmp_path / 'root')
    machine_id = 'b' * 32 + '\n'
    changes = fixed(root, rf.clone_changes, 'kitchen', BOOT, 'ssh-ed25519 AAA a@b\n', machine_id)
    assert rf.fixes_of(changes) == ['authorized_keys', 'firstboot_disabled', 'fstab', 'hostname', 'hosts',
                                    'machine_id', 'network', 'ssh_enabled', 'swap_disabled']
    assert (root / 'etc/hostname').read_text() == 'raspberrypi\n'  # planning writes nothing
    fixed(root, rf.apply, changes)

    assert (root / 'etc/fstab').read_text() == PIOS_KEPT + BOOT + '\n'
    assert (root / 'etc/hostname').read_text() == 'kitchen\n'
    assert os.getxattr(root / 'etc/hostname', 'user.pifleet') == b'golden'  # metadata kept across the rewrite
    assert (root / 'etc/hosts').read_text().endswith('127.0.1.1\tkitchen\n')
    assert (root / 'etc/machine-id').read_text() == machine_id
    assert (root / 'etc/machine-id').stat().st_mode & 0o777 == 0o444
    assert (root / 'var/lib/dbus/machine-id').read_text() == machine_id
    assert not os.path.lexists(root / rf.WANTS / 'resize2fs_once.service')
    assert not os.path.lexists(root / 'etc/rc3.d/S01resize2fs_once')
    assert os.readlink(root / rf.SWAP_MASK) == '/dev/null'
    assert (root / 'etc/dphys-swapfile').read_text() == 'CONF_SWAPSIZE=0\n'
    assert (root / rf.NM_CONF).read_text() == rf.NM_CONF_TEXT
    assert (root / 'etc/dhcpcd.conf').read_text().endswith('denyinterfaces eth0 end0\n')
    assert os.readlink(root / rf.WANTS / 'ssh.service') == '/lib/systemd/system/ssh.service'
    keys = os.lstat(root / rf.AUTHORIZED_KEYS)
    assert (keys.st_mode & 0o7777, keys.st_uid, keys.st_gid) == (0o600, 0, 0)
    assert os.lstat(root / rf.SSH_DIR).st_mode & 0o7777 == 0o700
    leftovers = [n for base, dirs, files in os.walk(root) for n in dirs + files if n.startswith('.pifleet-')]
    assert leftovers == []  # no temp files left

    # Fixed once: the option-driven fixes have nothing left to do; only a new machine-id would differ.
    assert fixed(root, rf.inplace_changes, 'kitchen', BOOT, 'ssh-ed25519 AAA a@b\n') == []
    assert fixed(root, rf.clone_changes, 'kitchen', BOOT, 'ssh-ed25519 AAA a@b\n', machine_id) == []


def test_without_network_stacks_no_network_fix(tmp_path):
    root = make_root(tmp_path / 'root', nm=False, dhcpcd=False)
    changes = fixed(root, rf.clone_changes, 'kitchen', None, None, 'c' * 32 + '\n')
    assert 'network' not in rf.fixes_of(changes) and 'authorized_keys' not in rf.fixes_of(changes)
    fixed(root, rf.apply, changes)
    assert not (root / 'etc/NetworkManager').exists() and not (root / 'etc/dhcpcd.conf').exists()
    assert not (root / 'root/.ssh').exists()


@pytest.mark.parametrize('evidence', ['usr/sbin/netplan', rf.WANTS + '/systemd-networkd.service'])
def test_networkd_or_netplan_leaves_the_nfs_nic_unmanaged_before_netplans_own_files(tmp_path, evidence):
    root = make_root(tmp_path / 'root', nm=False, dhcpcd=False)
    (root / evidence).parent.mkdir(parents=True, exist_ok=True)
    (root / evidence).write_text('')
    changes = fixed(root, rf.clone_changes, 'kitchen', None, None, 'c' * 32 + '\n')
    assert [c['path'] for c in changes if c['fix'] == 'network'] == [rf.NETWORKD_CONF]
    fixed(root, rf.apply, changes)
    text = (root / rf.NETWORKD_CONF).read_text()
    assert 'Name=eth0 end0\n' in text and '[Link]\nUnmanaged=yes\n' in text
    # networkd takes the first file in lexical order that matches; netplan writes 10-netplan-<nic>.network.
    assert sorted([os.path.basename(rf.NETWORKD_CONF), '10-netplan-eth0.network'])[0] == '05-pifleet-nfsroot.network'
    assert not [c for c in fixed(root, rf.clone_changes, 'kitchen', None, None, 'c' * 32 + '\n')
                if c['fix'] == 'network']  # once is enough


def test_inplace_changes_report_only_what_differs(tmp_path):
    root = make_root(tmp_path / 'root')
    fixed(root, rf.apply, fixed(root, rf.inplace_changes, 'kitchen', None, None))
    changes = fixed(root, rf.inplace_changes, 'garage', None, None)
    assert [(c['path'], c['before'], c['after']) for c in changes] == [
        ('etc/hostname', 'kitchen\n', 'garage\n'),
        ('etc/hosts', '127.0.0.1\tlocalhost\n127.0.1.1\tkitchen\n', '127.0.0.1\tlocalhost\n127.0.1.1\tgarage\n')]
    os.chmod(root / 'etc/hostname', 0o640)
    fixed(root, rf.apply, changes)
    assert (root / 'etc/hostname').stat().st_mode & 0o777 == 0o640  # the file's own mode is kept


@pytest.mark.skipif(os.geteuid() != 0, reason='owners need root')
def test_authorized_keys_taken_over_by_the_pi_are_made_root_owned_again(tmp_path):
    root = make_root(tmp_path / 'root')
    keys = 'ssh-ed25519 AAA a@b\n'
    fixed(root, rf.apply, fixed(root, rf.inplace_changes, 'kitchen', None, keys))
    os.chown(root / rf.AUTHORIZED_KEYS, 1000, 1000)  # same content, another owner: still a change
    os.chmod(root / rf.SSH_DIR, 0o755)
    changes = fixed(root, rf.inplace_changes, 'kitchen', None, keys)
    assert [(c['path'], c['kind']) for c in changes] == [(rf.SSH_DIR, 'dir'), (rf.AUTHORIZED_KEYS, 'file')]
    fixed(root, rf.apply, changes)
    st = os.lstat(root / rf.AUTHORIZED_KEYS)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o600)
    assert os.lstat(root / rf.SSH_DIR).st_mode & 0o7777 == 0o700
    assert fixed(root, rf.inplace_changes, 'kitchen', None, keys) == []


def test_symlinked_file_is_replaced_not_followed(tmp_path):
    root = make_root(tmp_path / 'root')
    outside = tmp_path / 'outside'
    outside.write_text('bakery\n')
    os.unlink(root / 'etc/hostname')
    os.symlink(str(outside), root / 'etc/hostname')
    changes = fixed(root, rf.inplace_changes, 'kitchen', None, None)
    assert [c['before'] for c in changes if c['path'] == 'etc/hostname'] == [None]  # never read through
    fixed(root, rf.apply, changes)
    assert outside.read_text() == 'bakery\n'
    assert not os.path.islink(root / 'etc/hostname') and (root / 'etc/hostname').read_text() == 'kitchen\n'


def test_a_symlinked_ssh_dir_is_replaced_for_authorized_keys(tmp_path):
    root = make_root(tmp_path / 'root')
    outside = tmp_path / 'bakery-root-ssh'
    outside.mkdir()
    (outside / 'authorized_keys').write_text('the bakery admin key\n')
    os.symlink(str(outside), root / rf.SSH_DIR)
    changes = fixed(root, rf.inplace_changes, 'kitchen', None, 'ssh-ed25519 AAA a@b\n')
    assert [(c['path'], c['kind'], c.get('before')) for c in changes if c['fix'] == 'authorized_keys'] == [
        (rf.SSH_DIR, 'dir', None), (rf.AUTHORIZED_KEYS, 'file', None)]  # nothing read through the link
    fixed(root, rf.apply, changes)
    assert (outside / 'authorized_keys').read_text() == 'the bakery admin key\n'
    assert not os.path.islink(root / rf.SSH_DIR)
    assert (root / rf.AUTHORIZED_KEYS).read_text() == 'ssh-ed25519 AAA a@b\n'


@pytest.mark.parametrize('parent', ['etc', 'etc/systemd', 'root'])
def test_parent_symlink_out_of_the_root_is_refused(tmp_path, parent):
    root = make_root(tmp_path / 'root')
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    os.rename(root / parent, tmp_path / 'moved')
    os.symlink(str(elsewhere), root / parent)
    with pytest.raises(ConfinedError, match='^%s in the root of Pi x is a symlink' % parent):
        fixed(root, rf.clone_changes, 'kitchen', BOOT, 'ssh-ed25519 AAA a@b\n', 'c' * 32 + '\n')
    assert os.listdir(elsewhere) == []


def test_apply_refuses_a_parent_swapped_for_a_symlink_after_planning(tmp_path):
    root = make_root(tmp_path / 'root')
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    with Tree(str(root), 'the root of Pi x') as tree:
        changes = rf.inplace_changes(tree, 'kitchen', BOOT, None)
        os.rename(root / 'etc', tmp_path / 'etc-moved')  # the Pi, between our plan and our write
        os.symlink(str(elsewhere), root / 'etc')
        with pytest.raises(ConfinedError, match=r'^etc in the root of Pi x is a symlink'):
            rf.apply(tree, changes)
    assert os.listdir(elsewhere) == []


def test_merged_usr_and_dbus_links_are_evidence_not_paths(tmp_path):
    """A Debian root: lib -> usr/lib and var/lib/dbus/machine-id -> /etc/machine-id are left as they are."""
    root = make_root(tmp_path / 'root')
    os.makedirs(root / 'usr/lib/systemd/system')
    os.rename(root / 'lib/systemd/system/ssh.service', root / 'usr/lib/systemd/system/ssh.service')
    shutil.rmtree(root / 'lib')
    os.symlink('usr/lib', root / 'lib')
    os.unlink(root / 'var/lib/dbus/machine-id')
    os.symlink('/etc/machine-id', root / 'var/lib/dbus/machine-id')
    with Tree(str(root)) as tree:
        assert rf.probe(tree, 'lib/systemd/system/ssh.service') is False  # behind a symlink: counts as absent
        assert rf.probe(tree, 'usr/lib/systemd/system/ssh.service') is True
        changes = rf.clone_changes(tree, 'kitchen', None, None, 'd' * 32 + '\n')
        rf.apply(tree, changes)
    assert {c['path'] for c in changes if c['fix'] == 'machine_id'} == {rf.MACHINE_ID}
    assert os.readlink(root / 'var/lib/dbus/machine-id') == '/etc/machine-id'
    assert os.readlink(root / rf.WANTS / 'ssh.service') == '/usr/lib/systemd/system/ssh.service'


def test_boot_mountpoint_and_seed_files(tmp_path):
    root = make_root(tmp_path / 'root')
    with Tree(str(root)) as tree:
        assert rf.boot_mountpoint(tree) == '/boot/firmware'
        seed = {'boot/firmware/user-data': '#cloud-config\n', 'var/lib/cloud/seed/nocloud/meta-data': 'id: x\n'}
        changes = rf.clone_changes(tree, 'kitchen', None, None, 'e' * 32 + '\n', seed=seed)
        rf.apply(tree, [c for c in changes if c['fix'] == 'cloud_init'])
    assert (root / 'boot/firmware/user-data').read_text() == '#cloud-config\n'
    assert (root / 'var/lib/cloud/seed/nocloud/meta-data').stat().st_mode & 0o777 == 0o600
    shutil.rmtree(root / 'boot/firmware')
    with Tree(str(root)) as tree:
        assert rf.boot_mountpoint(tree) == '/boot'
