# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-Pi roots: the state planner, clone methods, layout and markers, image clones and SSH host keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError, Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import read_superblock
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots

SHA, OTHER = 'a' * 64, 'b' * 64


@pytest.mark.parametrize('state, exists, marker, expected', [
    ('present', False, None, 'clone'),
    ('present', True, {'bakeform_sha256': SHA}, 'fix'),
    ('present', True, {'bakeform_sha256': OTHER}, 'drift'),
    ('present', True, None, 'foreign'),
    ('rebuilt', False, None, 'clone'),
    ('rebuilt', True, {'bakeform_sha256': SHA}, 'rebuild'),
    ('rebuilt', True, {'bakeform_sha256': OTHER}, 'rebuild'),
    ('rebuilt', True, None, 'rebuild'),
    ('absent', True, {'bakeform_sha256': SHA}, 'remove'),
    ('absent', True, None, 'remove'),
    ('absent', False, None, 'none'),
])
def test_plan_action(state, exists, marker, expected):
    assert _roots.plan_action(state, exists, marker, SHA) == expected


MOUNTS = {'/srv/x': ('/dev/loop1', 'xfs'), '/srv/b': ('/dev/loop2', 'btrfs'), '/srv/e': ('/dev/loop3', 'ext4'),
          '/srv/t': ('tmpfs', 'tmpfs'), '/srv/z': ('pool/z', 'zfs'), '/srv/o': ('overlay', 'overlay')}


def fake_mount(path):
    return MOUNTS[path[:6]]


@pytest.mark.parametrize('requested, golden, roots, expected', [
    ('auto', '/srv/b/store/bw/root.img', '/srv/b/roots', ['reflink', 'copy']),
    ('auto', '/srv/x/store/bw/root.img', '/srv/x/roots', ['reflink', 'copy']),
    ('auto', '/srv/z/store/bw/root.img', '/srv/z/roots', ['reflink', 'copy']),
    ('auto', '/srv/e/store/bw/root.img', '/srv/e/roots', ['copy']),
    ('auto', '/srv/t/store/bw/root.img', '/srv/t/roots', ['copy']),
    ('auto', '/srv/o/store/bw/root.img', '/srv/o/roots', ['copy']),
    ('auto', '/srv/b/store/bw/root.img', '/srv/x/roots', ['copy']),  # no clone shares extents across file systems
    ('auto', '/srv/x/store/bw/root.img', '/srv/b/roots', ['copy']),
    ('reflink', '/srv/e/store/bw/root.img', '/srv/e/roots', ['reflink']),  # forced: fails later, with its reason
    ('copy', '/srv/b/store/bw/root.img', '/srv/b/roots', ['copy']),
])
def test_choose_methods(requested, golden, roots, expected):
    assert _roots.choose_methods(requested, golden, roots, fake_mount) == expected


@pytest.mark.parametrize('fs', ['/srv/b', '/srv/x', '/srv/e'])
def test_snapshot_is_refused_with_its_reason(fs):
    with pytest.raises(_roots.RootError) as info:
        _roots.choose_methods('snapshot', fs + '/store/bw/root.img', fs + '/roots', fake_mount)
    msg = str(info.value)
    assert 'snapshot is no longer offered' in msg and 'forged NFS handles' in msg and 'clone_method reflink' in msg


def test_mount_of_takes_the_longest_prefix(tmp_path):
    info = tmp_path / 'mountinfo'
    info.write_text(
        '22 1 8:1 / / rw - ext4 /dev/sda1 rw\n'
        '30 22 7:1 / /srv rw shared:1 - xfs /dev/loop1 rw\n'
        '31 30 0:40 / /srv/with\\040space rw - btrfs /dev/loop2 rw\n'
        '32 22 0:41 / /srvother rw - tmpfs tmpfs rw\n')
    assert _roots.mount_of('/srv/roots/3a4b5c6d', str(info)) == ('/dev/loop1', 'xfs')
    assert _roots.mount_of('/srv/with space/roots', str(info)) == ('/dev/loop2', 'btrfs')
    assert _roots.mount_of('/srvother/x', str(info)) == ('tmpfs', 'tmpfs')
    assert _roots.mount_of('/home', str(info)) == ('/dev/sda1', 'ext4')


def test_layout_keeps_the_marker_out_of_the_pis_reach():
    lay = _roots.Layout('/srv/pifleet/roots', '3a4b5c6d')
    assert (lay.serial, lay.point, lay.image, lay.marker) == (
        '3a4b5c6d', '/srv/pifleet/roots/mnt/3a4b5c6d', '/srv/pifleet/roots/3a4b5c6d.img',
        '/srv/pifleet/roots/3a4b5c6d.json')
    # The mount point is what the Pi reaches over NFS: neither the marker nor the image is below it, and it
    # lies on the mount points' own file system (roots/mnt), not beside the images.
    assert not lay.marker.startswith(lay.point + '/') and not lay.image.startswith(lay.point + '/')
    assert os.path.dirname(lay.point) == '/srv/pifleet/roots/mnt' and lay.old_point == '/srv/pifleet/roots/3a4b5c6d'


def test_load_marker(tmp_path):
    path = tmp_path / '3a4b5c6d.json'
    assert _roots.load_marker(str(path)) is None
    assert _roots.load_marker(str(tmp_path / 'no-dir' / 'x.json')) is None
    path.write_text('{"serial": "3a4b5c6d"}')
    assert _roots.load_marker(str(path)) == {'serial': '3a4b5c6d'}
    path.write_text('["not", "a", "marker"]')
    assert _roots.load_marker(str(path)) is None
    path.write_text('{broken')
    with pytest.raises(_roots.RootError, match=r'marker .*3a4b5c6d.json is not valid JSON .*state: rebuilt'):
        _roots.load_marker(str(path))
    assert _roots.load_marker(str(path), strict=False) is None
    path.write_text('{"pad": "%s"}' % ('x' * _roots.MARKER_LIMIT))  # only the first 64 KiB are read
    with pytest.raises(_roots.RootError, match='not valid JSON'):
        _roots.load_marker(str(path))


def test_marker_text_and_sha256_text():
    assert _roots.marker_text(None) == ''
    assert _roots.marker_text({'b': 1, 'a': 2}) == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert _roots.sha256_text(None) is None
    assert _roots.sha256_text('') == 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'


def test_new_and_updated_marker():
    marker = _roots.new_marker(serial='3a4b5c6d', hostname='kitchen', bakeform='bw', sha256=SHA, method='copy',
                               fixes=['hosts', 'fstab'], keys_sha256=None, boot_mount='none', fs_uuid='u-1')
    assert marker['created'] == marker['updated'] and marker['fixes'] == ['fstab', 'hosts']
    assert (marker['fs_uuid'], marker['clone_method'], marker['bakeform_sha256']) == ('u-1', 'copy', SHA)
    assert _roots.updated_marker(marker, hostname='kitchen', fixes=[], keys_sha256=None, boot_mount='none') is None
    renamed = _roots.updated_marker(marker, hostname='garage', fixes=['hostname'], keys_sha256=None, boot_mount='none')
    assert renamed['hostname'] == 'garage' and renamed['fixes'] == ['fstab', 'hostname', 'hosts']
    assert renamed['created'] == marker['created'] and renamed['fs_uuid'] == 'u-1'
    keyed = _roots.updated_marker(marker, hostname='kitchen', fixes=[], keys_sha256=OTHER, boot_mount='none')
    assert keyed['authorized_keys_sha256'] == OTHER
    booted = _roots.updated_marker(marker, hostname='kitchen', fixes=[], keys_sha256=None, boot_mount='nfs')
    assert booted['boot_mount'] == 'nfs'


class FakeRun:
    """Records argv; fails the commands with a listed flag after leaving a partial copy; copies otherwise."""

    def __init__(self, failing=()):
        self.calls, self.failing = [], failing

    def __call__(self, argv):
        self.calls.append(argv)
        if any(flag in argv for flag in self.failing):
            with open(argv[-1], 'wb') as partial:
                partial.write(b'half')
            return 1, '', 'cp: failed to clone: Operation not supported'
        if len(argv) > 4 and argv[4].endswith('/cp'):
            shutil.copyfile(argv[-2], argv[-1])
        return 0, '', ''


def which(name, required):
    return '/usr/bin/' + name


def test_reflink_falls_back_to_copy_after_cleaning_up(tmp_path):
    golden = tmp_path / 'root.img'
    golden.write_bytes(b'golden image')
    dest = tmp_path / 'clone.img'
    run = FakeRun(failing=('--reflink=always',))
    method = _roots.Cloner(run, which).clone(str(golden), str(dest), ['reflink', 'copy'], 'Pi x')
    assert method == 'copy'
    cp = ['/usr/bin/setpriv', '--pdeathsig', 'KILL', '--', '/usr/bin/cp']
    assert run.calls == [[*cp, '--reflink=always', '--', str(golden), str(dest)],
                         [*cp, '--reflink=never', '--sparse=always', '--', str(golden), str(dest)]]
    assert dest.read_bytes() == b'golden image'  # not the partial file of the failed attempt


def test_clone_failure_says_what_and_leaves_nothing(tmp_path):
    run = FakeRun(failing=('--reflink=always',))
    dest = tmp_path / 'clone.img'
    with pytest.raises(_roots.RootError, match=r'cloning .*root.img for Pi 3a4b5c6d failed \(reflink: cp: failed to '
                                               r'clone: Operation not supported\); clone_method: copy works'):
        _roots.Cloner(run, which).clone(str(tmp_path / 'root.img'), str(dest), ['reflink'], 'Pi 3a4b5c6d')
    assert not dest.exists()


def real_run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def real_which(name, required):
    return shutil.which(name) or shutil.which(name, path='/usr/sbin:/sbin')


@pytest.mark.skipif(not shutil.which('setpriv'), reason='needs setpriv (util-linux)')
def test_a_real_copy_is_sparse_and_identical(tmp_path):
    golden = tmp_path / 'root.img'
    with open(golden, 'wb') as handle:
        handle.write(b'head')
        handle.seek(32 << 20)
        handle.write(b'tail')
    dest = tmp_path / 'clone.img'
    assert _roots.Cloner(real_run, real_which).clone(str(golden), str(dest), ['copy'], 'Pi x') == 'copy'
    assert dest.read_bytes() == golden.read_bytes()
    assert dest.stat().st_blocks * 512 < 1 << 20  # the holes stayed holes


@pytest.mark.skipif(not shutil.which('mke2fs', path='/usr/sbin:/sbin'), reason='needs e2fsprogs')
def test_new_uuid_gives_the_clone_an_identity_of_its_own(tmp_path):
    image = tmp_path / 'clone.img'
    subprocess.run(['mke2fs', '-q', '-F', '-t', 'ext4', '-O', 'metadata_csum_seed', str(image), '8M'], check=True)
    before = read_superblock(str(image))['uuid']
    _roots.Cloner(real_run, real_which).new_uuid(str(image), 'Pi x')
    assert read_superblock(str(image))['uuid'] != before
    (tmp_path / 'not-ext4.img').write_bytes(bytes(1 << 20))
    with pytest.raises(_roots.RootError, match=r'giving the root of Pi x its own UUID failed: .*') as info:
        _roots.Cloner(real_run, real_which).new_uuid(str(tmp_path / 'not-ext4.img'), 'Pi x')
    assert info.value.details['rc'] != 0 and info.value.details['cmd'][1:] == ['-U', 'random',
                                                                               str(tmp_path / 'not-ext4.img')]


# --------------------------------------------------------------------------- SSH host keys

GOLDEN_KEYS = ('ssh_host_ed25519_key', 'ssh_host_ed25519_key.pub', 'ssh_host_rsa_key', 'ssh_host_rsa_key.pub',
               'ssh_host_dsa_key', 'ssh_host_dsa_key.pub')


def golden_ssh(root):
    """A root whose etc/ssh holds the golden image's keys of several types and sshd's config."""
    (root / 'etc/ssh').mkdir(parents=True)
    for name in GOLDEN_KEYS:
        (root / 'etc/ssh' / name).write_text('golden %s\n' % name)
    (root / 'etc/ssh/sshd_config').write_text('config\n')
    return root


def keygen(tmp_path):
    """make_key for host_keys: real ssh-keygen keys in a folder of their own, and the kinds asked for."""
    asked = []

    def make_key(kind):
        asked.append(kind)
        folder = tmp_path / ('keys-%d' % len(asked))
        folder.mkdir()
        key = folder / ('ssh_host_%s_key' % kind)
        subprocess.run(_roots.keygen_argv(shutil.which('ssh-keygen'), kind, 'kitchen', str(key)), check=True)
        return str(key)
    return make_key, asked


needs_keygen = pytest.mark.skipif(not shutil.which('ssh-keygen'), reason='needs ssh-keygen (openssh-client)')


@needs_keygen
def test_host_keys_replace_every_golden_key_with_new_ones(tmp_path):
    root = golden_ssh(tmp_path / 'root')
    make_key, asked = keygen(tmp_path)
    with Tree(str(root)) as tree:
        assert _roots.host_keys(tree, ['ed25519', 'ecdsa'], make_key) == ['ed25519', 'ecdsa']
    assert asked == ['ed25519', 'ecdsa']
    assert sorted(os.listdir(root / 'etc/ssh')) == ['ssh_host_ecdsa_key', 'ssh_host_ecdsa_key.pub',
                                                    'ssh_host_ed25519_key', 'ssh_host_ed25519_key.pub', 'sshd_config']
    for kind in ('ed25519', 'ecdsa'):
        private = root / 'etc/ssh' / ('ssh_host_%s_key' % kind)
        public = private.with_name(private.name + '.pub')
        assert b'golden' not in private.read_bytes()
        assert public.read_text().strip().endswith('root@kitchen')
        assert (private.stat().st_mode & 0o7777, public.stat().st_mode & 0o7777) == (0o600, 0o644)
        if os.geteuid() == 0:
            assert (private.stat().st_uid, private.stat().st_gid) == (0, 0)
    assert (root / 'etc/ssh/sshd_config').read_text() == 'config\n'


def test_host_keys_carried_keep_their_bytes_owner_and_mode(tmp_path):
    root = golden_ssh(tmp_path / 'root')
    gid = os.getgid()
    carry = {'ed25519': (b'old private', b'old public', os.getuid(), gid, 0o640)}

    def make_key(kind):
        raise AssertionError('a carried key is not made again (%s)' % kind)
    with Tree(str(root)) as tree:
        assert _roots.host_keys(tree, ['ed25519'], make_key, carry=carry) == []
    private = root / 'etc/ssh/ssh_host_ed25519_key'
    assert private.read_bytes() == b'old private' and (root / 'etc/ssh/ssh_host_ed25519_key.pub').read_bytes() == \
        b'old public'
    assert (private.stat().st_mode & 0o7777, private.stat().st_gid) == (0o640, gid)
    assert not (root / 'etc/ssh/ssh_host_rsa_key').exists()  # the golden key set is never shared


def test_host_keys_never_write_through_a_symlink(tmp_path):
    root, outside = golden_ssh(tmp_path / 'root'), tmp_path / 'bakery-ssh'
    outside.mkdir()
    (outside / 'ssh_host_ed25519_key').write_text('the bakery key\n')
    os.unlink(root / 'etc/ssh/ssh_host_ed25519_key')
    os.symlink(str(outside / 'ssh_host_ed25519_key'), root / 'etc/ssh/ssh_host_ed25519_key')
    carry = {'ed25519': (b'pi private', b'pi public', os.getuid(), os.getgid(), 0o600)}
    with Tree(str(root)) as tree:
        _roots.host_keys(tree, ['ed25519'], None, carry=carry)
    assert (outside / 'ssh_host_ed25519_key').read_text() == 'the bakery key\n'
    assert (root / 'etc/ssh/ssh_host_ed25519_key').read_bytes() == b'pi private'

    os.rename(root / 'etc/ssh', root / 'etc/ssh.real')
    os.symlink(str(outside), root / 'etc/ssh')  # a golden image whose etc/ssh leads out of it
    with Tree(str(root)) as tree, pytest.raises(ConfinedError, match=r'etc/ssh .*symlink'):
        _roots.host_keys(tree, ['ed25519'], None, carry=carry)
    assert sorted(os.listdir(outside)) == ['ssh_host_ed25519_key']


def test_read_carry(tmp_path):
    root = golden_ssh(tmp_path / 'root')
    os.chmod(root / 'etc/ssh/ssh_host_ed25519_key', 0o640)
    st = os.stat(root / 'etc/ssh/ssh_host_ed25519_key')
    with Tree(str(root)) as tree:
        carried, problem = _roots.read_carry(tree, ['ed25519', 'ecdsa', 'rsa'])
    assert problem is None and sorted(carried) == ['ed25519', 'rsa']  # no ecdsa key to carry
    assert carried['ed25519'] == (b'golden ssh_host_ed25519_key\n', b'golden ssh_host_ed25519_key.pub\n',
                                  st.st_uid, st.st_gid, 0o640)
    with Tree(str(tmp_path)) as tree:  # no etc/ssh at all
        assert _roots.read_carry(tree, ['ed25519']) == ({}, None)


def test_read_carry_never_follows_a_symlink(tmp_path):
    root, outside = golden_ssh(tmp_path / 'root'), tmp_path / 'bakery-ssh'
    outside.mkdir()
    for name in ('ssh_host_ed25519_key', 'ssh_host_ed25519_key.pub', 'ssh_host_rsa_key'):
        (outside / name).write_text('the bakery %s\n' % name)
    for name in ('ssh_host_ed25519_key', 'ssh_host_rsa_key.pub'):  # one private key, one public key: links out
        os.unlink(root / 'etc/ssh' / name)
        os.symlink(str(outside / name.replace('.pub', '')), root / 'etc/ssh' / name)
    os.unlink(root / 'etc/ssh/ssh_host_dsa_key')
    os.mkfifo(root / 'etc/ssh/ssh_host_dsa_key')  # nor blocks on a FIFO
    with Tree(str(root)) as tree:
        assert _roots.read_carry(tree, ['ed25519', 'rsa', 'dsa']) == ({}, None)

    os.rename(root / 'etc/ssh', root / 'etc/ssh.real')
    os.symlink(str(outside), root / 'etc/ssh')
    with Tree(str(root), 'the old root of Pi x') as tree:
        carried, problem = _roots.read_carry(tree, ['ed25519'])
    assert carried == {} and problem.startswith('etc/ssh in the old root of Pi x is a symlink')


def test_keygen_argv():
    assert _roots.keygen_argv('/usr/bin/ssh-keygen', 'ecdsa', 'kitchen', '/k/key') == [
        '/usr/bin/ssh-keygen', '-q', '-N', '', '-t', 'ecdsa', '-C', 'root@kitchen', '-f', '/k/key']


@needs_keygen
def test_key_forge_makes_keys_ahead_and_on_demand(tmp_path):
    with _roots.KeyForge(str(tmp_path), shutil.which('ssh-keygen'), workers=2) as forge:
        scratch = forge.scratch.path
        assert os.path.dirname(scratch) == str(tmp_path) and os.stat(scratch).st_mode & 0o777 == 0o700
        forge.order('3a4b5c6d', 'kitchen', ['ed25519', 'ecdsa'])
        ahead = forge.key('3a4b5c6d', 'kitchen', 'ed25519')
        assert ahead == os.path.join(scratch, '3a4b5c6d', 'ssh_host_ed25519_key')
        assert open(ahead + '.pub', encoding='ascii').read().startswith('ssh-ed25519 ')
        assert os.stat(ahead).st_mode & 0o777 == 0o600
        # Not ordered (a rebuild, or a type asked again): made now, in the same place.
        again = forge.key('3a4b5c6d', 'kitchen', 'ed25519')
        assert again == ahead and open(again + '.pub', encoding='ascii').read().strip().endswith('root@kitchen')
        fresh = forge.key('0badcafe', 'garage', 'ecdsa')
        assert fresh.startswith(scratch) and open(fresh + '.pub', encoding='ascii').read().startswith('ecdsa-sha2')
        root = tmp_path / 'root'
        (root / 'etc/ssh').mkdir(parents=True)
        with Tree(str(root)) as tree:
            made = _roots.host_keys(tree, ['ed25519', 'ecdsa'], lambda kind: forge.key('3a4b5c6d', 'kitchen', kind))
        assert made == ['ed25519', 'ecdsa']
        assert (root / 'etc/ssh/ssh_host_ecdsa_key.pub').read_text().strip().endswith('root@kitchen')
    assert not os.path.exists(scratch)  # every key made for the run goes with the forge


def test_key_forge_failure_is_made_again_then_reported(tmp_path):
    calls = []

    def failing(argv):
        calls.append(argv)
        return 1, '', 'ssh-keygen: no entropy'

    with _roots.KeyForge(str(tmp_path), '/usr/bin/ssh-keygen', run=failing, setpriv='/usr/bin/setpriv',
                         workers=1) as forge:
        forge.order('3a4b5c6d', 'pi-x', ['ed25519'])
        with pytest.raises(_roots.RootError, match=r'generating the ed25519 SSH host key for pi-x failed: .*entropy'):
            forge.key('3a4b5c6d', 'pi-x', 'ed25519')
    assert len(calls) == 2  # ahead (failed), then once more inline before giving up
    assert calls[0][:4] == ['/usr/bin/setpriv', '--pdeathsig', 'KILL', '--']  # dies with the module


def test_key_forge_close_cancels_what_has_not_started(tmp_path):
    started = []

    def slow_run(argv):
        started.append(argv)
        time.sleep(0.3)
        return 1, '', 'stopped'

    forge = _roots.KeyForge(str(tmp_path), '/usr/bin/ssh-keygen', run=slow_run, workers=1)
    for index in range(20):
        forge.order('%08x' % index, 'pi-%d' % index, ['rsa'])
    scratch = forge.scratch.path
    forge.close()
    assert 1 <= len(started) < 20 and not os.path.exists(scratch)
