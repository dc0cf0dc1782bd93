# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tree: every read and write inside a Pi-controlled tree stays inside it, whatever the Pi planted.

Each attack puts something outside the tree (a stand-in for the bakery's own files) and checks that
it comes out unchanged, and that the tree got what the call promises.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common import confined as _confined
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError, Tree

ROOT = os.geteuid() == 0


@pytest.fixture
def lab(tmp_path):
    """``top`` (the tree, with etc/hostname) and ``outside`` (a bakery stand-in with its own hostname)."""
    top, outside = tmp_path / 'top', tmp_path / 'outside'
    (top / 'etc').mkdir(parents=True)
    (top / 'etc/hostname').write_text('pi\n')
    outside.mkdir()
    (outside / 'hostname').write_text('bakery\n')
    (outside / 'ssh').mkdir()
    return top, outside


def temp_names(top):
    """Temporary files a write may have left anywhere in ``top``."""
    return [os.path.join(base, name) for base, dirs, files in os.walk(top) for name in dirs + files
            if name.startswith('.pifleet-')]


def test_reads_and_walks_inside_the_tree(lab):
    top, _outside = lab
    (top / 'etc/ssh').mkdir()
    (top / 'etc/ssh/b').write_text('2')
    (top / 'etc/ssh/a').write_text('1')
    with Tree(str(top)) as tree:
        assert tree.read_text('etc/hostname') == 'pi\n'
        assert tree.read_text('./etc//hostname') == 'pi\n'  # '.' and empty components are the same path
        assert tree.read_bytes('etc/missing') is None and tree.read_bytes('nowhere/x') is None
        assert tree.listdir('etc/ssh') == ['a', 'b'] and tree.listdir('etc/none') == []
        assert tree.exists('etc/hostname') and not tree.exists('etc/missing') and tree.lstat('no/such') is None
        assert tree.is_dir('etc') and not tree.is_dir('etc/hostname')
        assert tree.read_bytes('etc') is None  # a directory is not a file we read
        fd = tree.fd
    with pytest.raises(OSError):
        os.fstat(fd)  # the context closed the tree's descriptor
    tree.close()  # closing twice is harmless


@pytest.mark.parametrize('rel', ['/etc/hostname', '../outside/hostname', 'etc/../../outside/hostname', '..', '', '.',
                                 'etc/..'])
def test_dot_dot_and_absolute_paths_are_refused(lab, rel):
    top, _outside = lab
    with Tree(str(top)) as tree:
        for call in (tree.read_bytes, tree.lstat, tree.listdir, tree.unlink, tree.makedirs):
            with pytest.raises(ConfinedError, match='not a relative path inside the tree'):
                call(rel)
        with pytest.raises(ConfinedError, match='not a relative path inside the tree'):
            tree.write_text(rel, 'x')
    assert (lab[1] / 'hostname').read_text() == 'bakery\n'


def test_a_tree_whose_top_is_a_symlink_or_missing_is_refused(lab, tmp_path):
    _top, outside = lab
    os.symlink(str(outside), tmp_path / 'link')
    for top in (tmp_path / 'link', tmp_path / 'missing', outside / 'hostname'):
        with pytest.raises(ConfinedError, match='cannot be opened as a directory'):
            Tree(str(top))


def link_etc_out(top, outside):
    """The Pi's move: its etc/ becomes a symlink to the bakery's /etc (here: the stand-in)."""
    os.rename(top / 'etc', top / 'etc.real')
    os.symlink(str(outside), top / 'etc')


def test_a_symlinked_parent_is_refused_for_every_call(lab):
    top, outside = lab
    link_etc_out(top, outside)
    calls = [lambda t: t.read_text('etc/hostname'), lambda t: t.lstat('etc/hostname'),
             lambda t: t.readlink('etc/hostname'), lambda t: t.listdir('etc'), lambda t: t.listdir('etc/ssh'),
             lambda t: t.write_text('etc/hostname', 'owned\n'), lambda t: t.makedirs('etc/ssh/new'),
             lambda t: t.ensure_dir('etc/ssh', 0o700), lambda t: t.symlink('etc/hostname', '/dev/null'),
             lambda t: t.unlink('etc/hostname')]
    with Tree(str(top), 'the root of Pi x') as tree:
        for call in calls:
            with pytest.raises(ConfinedError, match=r'^etc in the root of Pi x is a symlink or not a directory'):
                call(tree)
    assert sorted(os.listdir(outside)) == ['hostname', 'ssh'] and os.listdir(outside / 'ssh') == []
    assert (outside / 'hostname').read_text() == 'bakery\n'


def test_a_symlink_deeper_down_is_named_in_the_refusal(lab):
    top, outside = lab
    (top / 'var/lib').mkdir(parents=True)
    os.symlink(str(outside), top / 'var/lib/dbus')
    # A symlink that points back inside the tree is refused too: nothing is resolved, ever.
    os.symlink('../etc', top / 'var/etc')
    with Tree(str(top)) as tree:
        with pytest.raises(ConfinedError, match=r'^var/lib/dbus in '):
            tree.read_text('var/lib/dbus/machine-id')
        with pytest.raises(ConfinedError, match=r'^var/etc in '):
            tree.read_text('var/etc/hostname')


def test_a_symlinked_last_component_is_never_read(lab):
    top, outside = lab
    os.unlink(top / 'etc/hostname')
    os.symlink(str(outside / 'hostname'), top / 'etc/hostname')
    os.symlink('hosts.real', top / 'etc/hosts')  # even one pointing inside the tree
    (top / 'etc/hosts.real').write_text('inside\n')
    with Tree(str(top)) as tree:
        assert tree.read_bytes('etc/hostname') is None and tree.read_bytes('etc/hosts') is None
        assert tree.open_file('etc/hostname') is None
        assert stat.S_ISLNK(tree.lstat('etc/hostname').st_mode)  # lstat sees the link itself
        assert tree.readlink('etc/hostname') == str(outside / 'hostname')
        assert tree.readlink('etc/hosts.real') is None and tree.readlink('etc/missing') is None
        assert not tree.is_dir('etc/hostname')


def test_fifo_and_socket_reads_are_refused_without_blocking(lab):
    top, _outside = lab
    os.mkfifo(top / 'etc/fstab')  # a blocking open of a FIFO would hang the module for good
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(top / 'etc/hosts'))
    try:
        with Tree(str(top)) as tree:
            assert tree.read_bytes('etc/fstab') is None
            assert tree.read_bytes('etc/hosts') is None
            with pytest.raises(ConfinedError, match=r'^etc/fstab in .* symlink or not a directory'):
                tree.listdir('etc/fstab')  # nor walked through as a directory
    finally:
        sock.close()


@pytest.mark.skipif(not ROOT, reason='device nodes need root')
def test_a_device_node_is_never_read(lab):
    top, _outside = lab
    os.unlink(top / 'etc/hostname')
    os.mknod(top / 'etc/hostname', stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero: endless data
    os.mknod(top / 'etc/hosts', stat.S_IFBLK | 0o600, os.makedev(240, 240))  # no such disk: never opened
    with Tree(str(top)) as tree:
        assert tree.read_bytes('etc/hostname') is None and tree.read_bytes('etc/hosts') is None
        tree.write_text('etc/hostname', 'pi\n')  # replaced by a file, never written through
    assert (top / 'etc/hostname').read_text() == 'pi\n'


@pytest.fixture
def nodev_tree(tmp_path):
    """A tree on a nodev mount, as every Pi root is on the bakery; unmounted afterwards."""
    top = tmp_path / 'nodev'
    top.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'nodev,nosuid,size=4m', 'pfr-nodev', str(top)], check=True)
    try:
        (top / 'etc').mkdir()
        yield top
    finally:
        subprocess.run(['umount', str(top)], check=True)


@pytest.mark.skipif(not ROOT, reason='mounting needs root')
def test_a_device_node_on_a_nodev_mount_is_not_a_file_and_not_an_error(nodev_tree):
    # Opening a device node on a nodev mount fails with EACCES: that must not escape as an OSError
    # (pi_root would then fail every Pi of the call, not just the one that planted it).
    os.mknod(nodev_tree / 'etc/hostname', stat.S_IFCHR | 0o644, os.makedev(1, 3))
    with Tree(str(nodev_tree)) as tree:
        assert tree.read_text('etc/hostname') is None
        tree.write_text('etc/hostname', 'pi\n')
    assert (nodev_tree / 'etc/hostname').read_text() == 'pi\n'


def test_large_files_are_refused_at_the_limit(lab):
    top, _outside = lab
    (top / 'etc/big').write_bytes(b'x' * 5000)
    with Tree(str(top), 'the root of Pi x') as tree:
        assert tree.read_bytes('etc/big', limit=5000) == b'x' * 5000
        with pytest.raises(ConfinedError, match=r'^etc/big in the root of Pi x is larger than 4999 bytes'):
            tree.read_bytes('etc/big', limit=4999)
        assert _confined.READ_LIMIT == 1 << 20
        with open(top / 'etc/huge', 'wb') as handle:
            handle.truncate(_confined.READ_LIMIT + 1)  # sparse: a Pi can make it as large as its disk
        with pytest.raises(ConfinedError, match='larger than'):
            tree.read_text('etc/huge')


def test_a_file_that_grows_after_the_size_check_is_still_capped(lab, monkeypatch):
    top, _outside = lab
    (top / 'etc/grows').write_bytes(b'y' * 300)
    real_fstat = os.fstat

    def small_fstat(fd):  # the size the file had when it was opened; it grew since
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, 10,
                               st.st_atime, st.st_mtime, st.st_ctime))
    monkeypatch.setattr(_confined.os, 'fstat', small_fstat)
    with Tree(str(top)) as tree, pytest.raises(ConfinedError, match='larger than 100 bytes'):
        tree.read_bytes('etc/grows', limit=100)


def test_writes_replace_a_symlink_never_write_through_it(lab):
    top, outside = lab
    os.unlink(top / 'etc/hostname')
    os.symlink(str(outside / 'hostname'), top / 'etc/hostname')
    os.symlink(str(outside / 'new-file'), top / 'etc/dangling')  # a link to a file that does not exist yet
    with Tree(str(top)) as tree:
        tree.write_text('etc/hostname', 'kitchen\n')
        tree.write_bytes('etc/dangling', b'data')
    assert (outside / 'hostname').read_text() == 'bakery\n' and not (outside / 'new-file').exists()
    for name, text in (('hostname', 'kitchen\n'), ('dangling', 'data')):
        assert not os.path.islink(top / 'etc' / name) and (top / 'etc' / name).read_text() == text
    assert (top / 'etc/hostname').stat().st_mode & 0o7777 == 0o644  # a link's "mode" is not kept
    assert temp_names(top) == []


@pytest.mark.skipif(not ROOT, reason='owners need root')
def test_owner_mode_and_xattrs_are_kept_unless_forced(lab):
    top, _outside = lab
    target = top / 'etc/hostname'
    os.chown(target, 1000, 1001)
    os.chmod(target, 0o4751)  # setuid survives: chmod comes after chown
    os.setxattr(target, 'user.pifleet', b'golden')
    os.setxattr(target, 'trusted.pifleet', b'trusted')
    with Tree(str(top)) as tree:
        tree.write_text('etc/hostname', 'kitchen\n', 0o600)
        st = os.lstat(target)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1001, 0o4751)
        assert os.getxattr(target, 'user.pifleet') == b'golden'
        assert os.getxattr(target, 'trusted.pifleet') == b'trusted'
        tree.write_text('etc/hostname', 'garage\n', 0o600, force_owner=True)
        st = os.lstat(target)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o600)
        tree.write_text('etc/new', 'x', 0o640)
        assert os.lstat(top / 'etc/new').st_mode & 0o7777 == 0o640
        tree.write_bytes('etc/keys/key', b'k', 0o600, force_owner=True, uid=0, gid=4)
    assert (target.read_text(), (top / 'etc/keys/key').read_bytes()) == ('garage\n', b'k')
    assert os.lstat(top / 'etc/keys/key').st_gid == 4
    made = os.lstat(top / 'etc/keys')  # missing parents are made root-owned 0755
    assert (made.st_uid, made.st_gid, made.st_mode & 0o7777) == (0, 0, 0o755)


def test_a_failed_write_leaves_no_temp_file_and_the_old_content(lab, monkeypatch):
    top, _outside = lab

    def full_disk(_fd):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(_confined.os, 'fsync', full_disk)
    with Tree(str(top)) as tree, pytest.raises(OSError, match='No space left'):
        tree.write_text('etc/hostname', 'kitchen\n')
    assert (top / 'etc/hostname').read_text() == 'pi\n' and temp_names(top) == []


def test_a_directory_swapped_for_a_symlink_after_it_was_opened_gets_the_write(lab, monkeypatch):
    """The Pi swaps etc/ for a link between our walk and our write: the write lands in the etc/ we opened."""
    top, outside = lab
    real_temp_file = _confined._temp_file

    def swap_then_create(fd, name):
        link_etc_out(top, outside)  # etc/ is now a symlink to the stand-in; we hold the old etc/'s fd
        return real_temp_file(fd, name)
    monkeypatch.setattr(_confined, '_temp_file', swap_then_create)
    with Tree(str(top)) as tree:
        tree.write_text('etc/hostname', 'kitchen\n')
    assert (top / 'etc.real/hostname').read_text() == 'kitchen\n'
    assert sorted(os.listdir(outside)) == ['hostname', 'ssh'] and (outside / 'hostname').read_text() == 'bakery\n'
    assert temp_names(top) == [] and temp_names(outside) == []


def test_the_top_swapped_for_a_symlink_after_opening_keeps_the_tree(lab, tmp_path):
    top, outside = lab
    with Tree(str(top)) as tree:
        os.rename(top, tmp_path / 'top.real')
        os.symlink(str(outside), top)
        tree.write_text('etc/hostname', 'kitchen\n')
        assert tree.read_text('etc/hostname') == 'kitchen\n'
        tree.makedirs('etc/ssh')
    assert (tmp_path / 'top.real/etc/hostname').read_text() == 'kitchen\n'
    assert (tmp_path / 'top.real/etc/ssh').is_dir()
    assert (outside / 'hostname').read_text() == 'bakery\n' and os.listdir(outside / 'ssh') == []


def test_ensure_dir_replaces_a_symlink_or_a_file_with_a_real_directory(lab):
    top, outside = lab
    (top / 'root').mkdir()
    os.symlink(str(outside / 'ssh'), top / 'root/.ssh')
    (top / 'etc/ssh').write_text('a file where a directory belongs')
    with Tree(str(top)) as tree:
        tree.ensure_dir('root/.ssh', 0o700)
        tree.write_text('root/.ssh/authorized_keys', 'ssh-ed25519 AAA a@b\n', 0o600, force_owner=True)
        tree.ensure_dir('etc/ssh', 0o755)
        tree.ensure_dir('etc/ssh', 0o750)  # an existing directory only gets its mode and owner
        tree.ensure_dir('new/deep/dir', 0o711)
    for rel, mode in (('root/.ssh', 0o700), ('etc/ssh', 0o750), ('new/deep/dir', 0o711)):
        st = os.lstat(top / rel)
        assert stat.S_ISDIR(st.st_mode) and st.st_mode & 0o7777 == mode, rel
    assert (top / 'root/.ssh/authorized_keys').read_text() == 'ssh-ed25519 AAA a@b\n'
    assert os.listdir(outside / 'ssh') == []


def test_ensure_dir_refuses_a_directory_swapped_for_a_symlink_mid_call(lab, monkeypatch):
    top, outside = lab
    (top / 'root').mkdir()
    real_mkdir = _confined.os.mkdir

    def mkdir_then_swap(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, mode, dir_fd=dir_fd)
        if name == '.ssh':  # the Pi replaces the directory we just made by a link, before we open it
            os.rename(top / 'root/.ssh', top / 'root/.ssh.moved')
            os.symlink(str(outside / 'ssh'), top / 'root/.ssh')
    monkeypatch.setattr(_confined.os, 'mkdir', mkdir_then_swap)
    with Tree(str(top)) as tree, pytest.raises(ConfinedError, match=r'^root/.ssh in .* was swapped for a symlink'):
        tree.ensure_dir('root/.ssh', 0o700)
    assert (outside / 'ssh').stat().st_mode & 0o7777 == 0o755  # the link's target was not chmod'ed


def test_symlink_unlink_and_copy_from(lab, tmp_path):
    top, outside = lab
    (top / 'etc/systemd').mkdir()
    os.symlink(str(outside / 'hostname'), top / 'etc/victim')
    with Tree(str(top)) as tree:
        tree.symlink('etc/systemd/ssh.service', '/lib/systemd/system/ssh.service')
        tree.symlink('etc/systemd/ssh.service', '/dev/null')  # replaced atomically
        tree.symlink('etc/hostname', '/dev/null')  # even over a file
        tree.unlink('etc/victim')  # the link goes, its target stays
        tree.unlink('etc/never-there')
        tree.unlink('missing-dir/x')
        src = tmp_path / 'key'
        src.write_bytes(b'private')
        with open(src, 'rb') as handle:
            tree.copy_from(handle.fileno(), 'etc/ssh/key', 0, 0, 0o600)
    assert os.readlink(top / 'etc/systemd/ssh.service') == '/dev/null'
    assert os.readlink(top / 'etc/hostname') == '/dev/null'
    assert not os.path.lexists(top / 'etc/victim') and (outside / 'hostname').read_text() == 'bakery\n'
    assert (top / 'etc/ssh/key').read_bytes() == b'private'
    assert (top / 'etc/ssh/key').stat().st_mode & 0o7777 == 0o600
    assert temp_names(top) == []


def test_makedirs_makes_root_owned_directories_and_refuses_links(lab):
    top, outside = lab
    with Tree(str(top)) as tree:
        tree.makedirs('etc/NetworkManager/conf.d', 0o750)
        tree.makedirs('etc/NetworkManager/conf.d')  # already there: fine
        os.symlink(str(outside), top / 'etc/NetworkManager/linked')
        with pytest.raises(ConfinedError, match=r'^etc/NetworkManager/linked in '):
            tree.makedirs('etc/NetworkManager/linked/sub')
    st = os.lstat(top / 'etc/NetworkManager/conf.d')
    assert stat.S_ISDIR(st.st_mode) and st.st_mode & 0o7777 == 0o750
    assert sorted(os.listdir(outside)) == ['hostname', 'ssh']


def test_remove_tree_removes_everything_inside_and_nothing_outside(lab):
    top, outside = lab
    victim = top / 'var/lib/cloud/instances/i-1'
    (victim / 'sem').mkdir(parents=True)
    (victim / 'sem/config_ssh').write_text('done')
    (victim / 'user-data.txt').write_text('#cloud-config')
    os.symlink(str(outside), victim / 'escape')           # a link to a directory outside: the link goes, not it
    os.symlink(str(outside / 'hostname'), victim / 'file-link')
    (victim / 'deep/er/still').mkdir(parents=True)
    (top / 'etc/link-to-outside').symlink_to(outside)
    with Tree(str(top)) as tree:
        tree.remove_tree('var/lib/cloud/instances/i-1')
        tree.remove_tree('etc/link-to-outside')              # a symlink: removed itself, never followed
        tree.remove_tree('etc/hostname')                     # a plain file
        tree.remove_tree('var/missing')                      # not there: nothing to do
        with pytest.raises(ConfinedError):
            tree.remove_tree('etc/link-to-outside/../..')
    assert not victim.exists() and (top / 'var/lib/cloud/instances').is_dir()
    assert not os.path.lexists(top / 'etc/link-to-outside') and not (top / 'etc/hostname').exists()
    assert (outside / 'hostname').read_text() == 'bakery\n' and (outside / 'ssh').is_dir()


def test_remove_tree_under_a_symlinked_parent_is_refused(lab):
    top, outside = lab
    (outside / 'ssh' / 'keep').write_text('bakery key')
    (top / 'var').symlink_to(outside)
    with Tree(str(top)) as tree, pytest.raises(ConfinedError, match='is a symlink'):
        tree.remove_tree('var/ssh')
    assert (outside / 'ssh' / 'keep').read_text() == 'bakery key'


def test_entries_list_without_following(lab):
    top, outside = lab
    (top / 'etc/link').symlink_to(outside)
    (top / 'etc/sub').mkdir()
    with Tree(str(top)) as tree:
        found = {name: stat.S_IFMT(st.st_mode) for name, st in tree.entries('etc')}
        assert found == {'hostname': stat.S_IFREG, 'link': stat.S_IFLNK, 'sub': stat.S_IFDIR}
        assert tree.entries('missing') == []
        with pytest.raises(ConfinedError):
            tree.entries('etc/link')


def test_a_tree_being_built_is_not_flushed_file_by_file(tmp_path, monkeypatch):
    """durable=False (a new root, flushed whole before anything names it): the same files, owners and modes, without
    an fsync per file; a live tree (the default) flushes each file before it is renamed in."""
    flushed = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: (flushed.append(fd), real_fsync(fd))[1])
    for durable, count in ((False, 0), (True, 2)):
        top = tmp_path / ('durable' if durable else 'built')
        top.mkdir()
        flushed.clear()
        with Tree(str(top), durable=durable) as tree:
            tree.write_text('etc/hostname', 'pi-1\n', 0o644)
            tree.write_bytes('etc/ssh/key', b'secret', 0o600)
        assert len(flushed) == count
        assert (top / 'etc/hostname').read_text() == 'pi-1\n' and (top / 'etc/ssh/key').stat().st_mode & 0o777 == 0o600
