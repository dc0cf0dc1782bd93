# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-Pi root lifecycle: the state planner, method choice, markers, cloning and host keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils import _roots

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
          '/srv/t': ('tmpfs', 'tmpfs'), '/srv/z': ('pool/z', 'zfs')}


def fake_mount(path):
    return MOUNTS[path[:6]]


@pytest.mark.parametrize('requested, golden, roots, subvolume, expected', [
    ('auto', '/srv/b/store/bw/root', '/srv/b/roots', True, ['snapshot']),
    ('auto', '/srv/b/store/bw/root', '/srv/b/roots', False, ['reflink', 'copy']),
    ('auto', '/srv/x/store/bw/root', '/srv/x/roots', False, ['reflink', 'copy']),
    ('auto', '/srv/z/store/bw/root', '/srv/z/roots', False, ['reflink', 'copy']),
    ('auto', '/srv/e/store/bw/root', '/srv/e/roots', False, ['copy']),
    ('auto', '/srv/t/store/bw/root', '/srv/t/roots', False, ['copy']),
    ('auto', '/srv/b/store/bw/root', '/srv/x/roots', True, ['copy']),  # across file systems
    ('reflink', '/srv/e/store/bw/root', '/srv/e/roots', False, ['reflink']),
    ('snapshot', '/srv/x/store/bw/root', '/srv/x/roots', False, ['snapshot']),
    ('copy', '/srv/b/store/bw/root', '/srv/b/roots', True, ['copy']),
])
def test_choose_methods(requested, golden, roots, subvolume, expected):
    assert _roots.choose_methods(requested, golden, roots, fake_mount, lambda _path: subvolume) == expected


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


def test_root_path_refuses_a_link_out_of_roots_dir(tmp_path):
    roots = tmp_path / 'roots'
    roots.mkdir()
    assert _roots.root_path(str(roots), '3a4b5c6d') == str(roots / '3a4b5c6d')
    os.symlink('/', roots / '3a4b5c6d')
    with pytest.raises(_roots.RootError, match='outside'):
        _roots.root_path(str(roots), '3a4b5c6d')


def test_load_marker(tmp_path):
    assert _roots.load_marker(str(tmp_path / 'missing')) is None
    (tmp_path / _roots.MARKER).write_text('{"serial": "3a4b5c6d"}')
    assert _roots.load_marker(str(tmp_path)) == {'serial': '3a4b5c6d'}
    (tmp_path / _roots.MARKER).write_text('{broken')
    with pytest.raises(_roots.RootError, match='not valid JSON'):
        _roots.load_marker(str(tmp_path))
    assert _roots.load_marker(str(tmp_path), strict=False) is None


def test_updated_marker():
    marker = _roots.new_marker(serial='3a4b5c6d', hostname='kitchen', bakeform='bw', sha256=SHA, method='copy',
                               fixes=['fstab'], keys_sha256=None, boot_mount='none')
    assert marker['created'] == marker['updated'] and marker['fixes'] == ['fstab']
    assert _roots.updated_marker(marker, hostname='kitchen', fixes=[], keys_sha256=None, boot_mount='none') is None
    renamed = _roots.updated_marker(marker, hostname='garage', fixes=['hostname'], keys_sha256=None, boot_mount='none')
    assert renamed['hostname'] == 'garage' and renamed['fixes'] == ['fstab', 'hostname']
    assert renamed['created'] == marker['created']
    keyed = _roots.updated_marker(marker, hostname='kitchen', fixes=[], keys_sha256=OTHER, boot_mount='none')
    assert keyed['authorized_keys_sha256'] == OTHER


class FakeRun:
    """Records argv; fails the commands whose flag is listed, after leaving a partial copy behind."""

    def __init__(self, failing=()):
        self.calls, self.failing = [], failing

    def __call__(self, argv):
        self.calls.append(argv)
        if any(flag in argv for flag in self.failing):
            os.makedirs(argv[-1], exist_ok=True)
            open(os.path.join(argv[-1], 'partial'), 'w').close()
            return 1, '', 'cp: failed to clone: Operation not supported'
        if len(argv) > 4 and argv[4].endswith('/cp'):
            shutil.copytree(argv[-2], argv[-1], symlinks=True)
        return 0, '', ''


def which(name, required):
    return '/usr/bin/' + name


def test_reflink_falls_back_to_copy_after_cleaning_up(tmp_path):
    golden = tmp_path / 'golden'
    golden.mkdir()
    (golden / 'f').write_text('x')
    run = FakeRun(failing=('--reflink=always',))
    method = _roots.Cloner(run, which).clone(str(golden), str(tmp_path / 'dest'), ['reflink', 'copy'], 'Pi x')
    assert method == 'copy'
    assert run.calls[0] == ['/usr/bin/setpriv', '--pdeathsig', 'KILL', '--', '/usr/bin/cp', '-a', '--reflink=always',
                            '--', str(golden) + '/.', str(tmp_path / 'dest')]
    assert run.calls[1][6:] == ['--reflink=never', '--', str(golden) + '/.', str(tmp_path / 'dest')]
    assert sorted(os.listdir(tmp_path / 'dest')) == ['f']  # the partial file of the failed attempt is gone


def test_clone_failure_says_what_and_leaves_nothing(tmp_path):
    run = FakeRun(failing=('--reflink=always',))
    with pytest.raises(_roots.RootError, match=r'cloning .* for Pi 3a4b5c6d failed \(reflink: cp: failed to clone'):
        _roots.Cloner(run, which).clone(str(tmp_path), str(tmp_path / 'dest'), ['reflink'], 'Pi 3a4b5c6d')
    assert not (tmp_path / 'dest').exists()


def test_snapshot_argv(tmp_path):
    run = FakeRun()
    assert _roots.Cloner(run, which).clone('/g/root', '/r/x', ['snapshot'], 'Pi x') == 'snapshot'
    assert run.calls == [['/usr/bin/btrfs', 'subvolume', 'snapshot', '/g/root', '/r/x']]


def test_host_key_types(tmp_path):
    assert _roots.host_key_types(str(tmp_path)) == ['ed25519', 'rsa', 'ecdsa']
    (tmp_path / 'etc/ssh').mkdir(parents=True)
    for name in ('ssh_host_ed25519_key', 'ssh_host_ed25519_key.pub', 'ssh_host_rsa_key', 'ssh_config'):
        (tmp_path / 'etc/ssh' / name).write_text('x')
    assert _roots.host_key_types(str(tmp_path)) == ['ed25519', 'rsa']


def real_run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.skipif(not shutil.which('ssh-keygen'), reason='needs ssh-keygen (openssh-client)')
def test_host_keys_new_then_carried(tmp_path):
    cloner = _roots.Cloner(real_run, lambda name, required: shutil.which(name))
    first, second, rebuilt = (tmp_path / n for n in ('first', 'second', 'rebuilt'))
    for root in (first, second, rebuilt):
        (root / 'etc/ssh').mkdir(parents=True)
        (root / 'etc/ssh/ssh_host_ed25519_key').write_text('golden key')
        (root / 'etc/ssh/sshd_config').write_text('config')
    assert cloner.host_keys(str(first), 'kitchen', ['ed25519']) == ['ed25519']
    assert cloner.host_keys(str(second), 'garage', ['ed25519']) == ['ed25519']
    pub = (first / 'etc/ssh/ssh_host_ed25519_key.pub').read_text()
    assert pub.startswith('ssh-ed25519 ') and pub.strip().endswith('root@kitchen')
    assert pub != (second / 'etc/ssh/ssh_host_ed25519_key.pub').read_text()
    assert (first / 'etc/ssh/ssh_host_ed25519_key').stat().st_mode & 0o777 == 0o600
    assert (first / 'etc/ssh/sshd_config').read_text() == 'config'

    assert cloner.host_keys(str(rebuilt), 'kitchen', ['ed25519'], carry_from=str(first)) == []
    for name in ('ssh_host_ed25519_key', 'ssh_host_ed25519_key.pub'):
        assert (rebuilt / 'etc/ssh' / name).read_bytes() == (first / 'etc/ssh' / name).read_bytes()
    assert (rebuilt / 'etc/ssh/ssh_host_ed25519_key').stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(not shutil.which('ssh-keygen'), reason='needs ssh-keygen (openssh-client)')
def test_key_forge_makes_keys_ahead_and_host_keys_moves_them_in(tmp_path):
    cloner = _roots.Cloner(real_run, lambda name, required: shutil.which(name))
    roots = {serial: tmp_path / serial for serial in ('3a4b5c6d', '3a4b5c6e')}
    with _roots.KeyForge(str(tmp_path), shutil.which('ssh-keygen'), workers=2) as forge:
        for serial in roots:
            forge.order(serial, 'pi-%s' % serial, ['ed25519', 'ecdsa'])
        scratch = forge.scratch.path
        for serial, root in roots.items():
            (root / 'etc/ssh').mkdir(parents=True)
            forged = forge.take(serial)
            assert sorted(forged) == ['ecdsa', 'ed25519'] and all(path.startswith(scratch) for path in forged.values())
            made = cloner.host_keys(str(root), 'pi-%s' % serial, ['ed25519', 'ecdsa'], forged=forged)
            assert made == ['ed25519', 'ecdsa']
            key = root / 'etc/ssh/ssh_host_ed25519_key'
            assert key.stat().st_mode & 0o777 == 0o600
            assert (root / 'etc/ssh/ssh_host_ed25519_key.pub').read_text().strip().endswith('root@pi-%s' % serial)
            assert not any(os.path.exists(path) for path in forged.values())  # moved, not copied
        assert forge.take('never-ordered') == {}
    assert not os.path.exists(scratch)  # the scratch dir (with any key left in it) goes with the forge
    first, second = ((root / 'etc/ssh/ssh_host_ed25519_key').read_bytes() for root in roots.values())
    assert first != second


@pytest.mark.skipif(not shutil.which('ssh-keygen'), reason='needs ssh-keygen (openssh-client)')
def test_key_forge_failure_falls_back_to_the_inline_error(tmp_path):
    failing = tmp_path / 'ssh-keygen'
    failing.write_text('#!/bin/sh\necho "ssh-keygen: no entropy" >&2\nexit 1\n')
    failing.chmod(0o755)
    with _roots.KeyForge(str(tmp_path), str(failing), workers=1) as forge:
        forge.order('3a4b5c6d', 'pi-x', ['ed25519'])
        forged = forge.take('3a4b5c6d')
    assert forged == {}
    root = tmp_path / 'root'
    (root / 'etc/ssh').mkdir(parents=True)
    cloner = _roots.Cloner(real_run, lambda name, required: str(failing))
    with pytest.raises(_roots.RootError, match=r'generating the ed25519 SSH host key for pi-x.*no entropy'):
        cloner.host_keys(str(root), 'pi-x', ['ed25519'], forged=forged)


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
