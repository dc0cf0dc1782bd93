# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The identity the bakery keeps for each Pi: well-formed checks, reading an old root, the store, the key forge."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import time

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import identity as _identity
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rootfix

needs_keygen = pytest.mark.skipif(not shutil.which('ssh-keygen'), reason='needs ssh-keygen (openssh-client)')


def make_pair(folder, kind, passphrase=''):
    key = folder / ('%s-%s' % (kind, os.urandom(3).hex()))
    subprocess.run(['ssh-keygen', '-q', '-N', passphrase, '-t', kind, '-C', 'tenant@old', '-f', str(key)], check=True)
    return key.read_bytes(), (key.with_name(key.name + '.pub')).read_bytes()


@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('keys')
    if not shutil.which('ssh-keygen'):
        pytest.skip('needs ssh-keygen')
    return {kind: make_pair(folder, kind) for kind in ('ed25519', 'ecdsa', 'rsa')} | {
        'other': make_pair(folder, 'ed25519'), 'encrypted': make_pair(folder, 'ed25519', 'secret')}


def test_well_formed_key_pairs_are_kept_and_nothing_else(pairs):
    for kind in ('ed25519', 'ecdsa', 'rsa'):
        assert _identity.check_key_pair(*pairs[kind], kind) is None, kind
    private, public = pairs['ed25519']
    other_private, other_public = pairs['other']
    cases = [
        ((private, other_public, 'ed25519'), 'not an unencrypted OpenSSH key matching'),  # a pair of two halves
        ((other_private, public, 'ed25519'), 'not an unencrypted OpenSSH key matching'),
        ((*pairs['encrypted'], 'ed25519'), 'not an unencrypted OpenSSH key matching'),  # sshd cannot use it
        ((private, public, 'ecdsa'), 'is not an ecdsa key line'),  # the type must be the one asked for
        ((private, public.replace(b'ssh-ed25519', b'ssh-rsa', 1), 'rsa'), 'is not an rsa key line'),  # blob says other
        ((private, b'ssh-ed25519 AAAA\n', 'ed25519'), 'is not an ed25519 key line'),
        ((private, b'ssh-ed25519 !!!notbase64\n', 'ed25519'), 'is not an ed25519 key line'),
        ((private, public + public, 'ed25519'), 'more than one line'),
        ((private, b'\xff\xfe', 'ed25519'), 'not ASCII'),
        ((b'', public, 'ed25519'), 'missing'),
        ((private.replace(b'-----END', b'-----BAD'), public, 'ed25519'), 'not an unencrypted'),
        ((private[:60] + b'\x1b[2J' + private[60:], public, 'ed25519'), 'not an unencrypted'),
        ((b'-----BEGIN OPENSSH PRIVATE KEY-----\n' + base64.b64encode(b'openssh-key-v1\0\0\0\0\x04none') +
          b'\n-----END OPENSSH PRIVATE KEY-----\n', public, 'ed25519'), 'not an unencrypted'),  # truncated
    ]
    for (priv, pub, kind), why in cases:
        assert why in (_identity.check_key_pair(priv, pub, kind) or ''), (why, pub[:40])


@pytest.mark.parametrize('text, expected', [
    ('0123456789abcdef0123456789abcdef\n', '0123456789abcdef0123456789abcdef'),
    ('0123456789abcdef0123456789abcdef', '0123456789abcdef0123456789abcdef'),
    ('0123456789ABCDEF0123456789ABCDEF\n', None), ('uninitialized\n', None), ('', None), (None, None),
    ('0123456789abcdef0123456789abcdef\n\n', None), ('a' * 33 + '\n', None), ('\x1b' * 32, None),
])
def test_machine_id(text, expected):
    assert _identity.check_machine_id(text) == expected


def old_root(top, pairs, kinds=('ed25519', 'ecdsa')):
    (top / 'etc/ssh').mkdir(parents=True)
    (top / 'etc/machine-id').write_text('f' * 32 + '\n')
    for kind in kinds:
        (top / 'etc/ssh' / ('ssh_host_%s_key' % kind)).write_bytes(pairs[kind][0])
        (top / 'etc/ssh' / ('ssh_host_%s_key.pub' % kind)).write_bytes(pairs[kind][1])
    return top


def test_adopt_keeps_what_is_well_formed_in_its_own_words(tmp_path, pairs):
    root = old_root(tmp_path / 'root', pairs)
    (root / 'etc/ssh/ssh_host_ecdsa_key.pub').write_bytes(pairs['other'][1])  # not the ecdsa key
    with Tree(str(root)) as tree:
        identity, problems = _identity.adopt(tree, ['ed25519', 'ecdsa', 'rsa'], 'kitchen')
    assert identity.machine_id == 'f' * 32 and sorted(identity.keys) == ['ed25519']
    private, public = identity.keys['ed25519']
    assert private == pairs['ed25519'][0] and public == ' '.join(pairs['ed25519'][1].decode().split()[:2]) + \
        ' root@kitchen\n'  # the old tenant's comment is not kept
    assert problems == ['its ecdsa host key (the public key is not an ecdsa key line)', 'its rsa host key (missing)']


def test_adopt_never_raises_for_what_a_pi_left(tmp_path, pairs):
    root, outside = old_root(tmp_path / 'root', pairs), tmp_path / 'bakery-etc'
    (outside / 'ssh').mkdir(parents=True)
    (outside / 'machine-id').write_text('b' * 32 + '\n')
    os.rename(root / 'etc', root / 'etc.real')
    os.symlink(str(outside), root / 'etc')
    with Tree(str(root), 'the old root of Pi x') as tree:
        identity, problems = _identity.adopt(tree, ['ed25519'], 'kitchen')
    assert identity.machine_id is None and identity.keys == {}
    assert len(problems) == 2 and all('symlink' in problem for problem in problems), problems
    os.unlink(root / 'etc')
    os.rename(root / 'etc.real', root / 'etc')
    (root / 'etc/machine-id').write_text('a' * (1 << 20))
    os.unlink(root / 'etc/ssh/ssh_host_ed25519_key')
    os.mkfifo(root / 'etc/ssh/ssh_host_ed25519_key')  # read would block: never opened as a file
    with Tree(str(root)) as tree:
        identity, problems = _identity.adopt(tree, ['ed25519', 'ecdsa'], 'kitchen')
    assert identity.machine_id is None and sorted(identity.keys) == ['ecdsa']
    assert 'larger than 64 bytes' in problems[0] and problems[1] == 'its ed25519 host key (missing)'


def test_host_key_changes_give_exactly_the_kept_keys(tmp_path, pairs):
    root = old_root(tmp_path / 'root', pairs, kinds=('ed25519', 'rsa'))
    os.chown(root / 'etc/ssh/ssh_host_ed25519_key', 0, 0)
    os.chmod(root / 'etc/ssh/ssh_host_ed25519_key', 0o600)
    os.chmod(root / 'etc/ssh/ssh_host_ed25519_key.pub', 0o644)
    (root / 'etc/ssh/sshd_config').write_text('config\n')
    identity = _identity.Identity('f' * 32, {'ed25519': (pairs['ed25519'][0], pairs['ed25519'][1].decode()),
                                             'ecdsa': (pairs['ecdsa'][0], pairs['ecdsa'][1].decode())})
    with Tree(str(root)) as tree:
        changes = _identity.host_key_changes(tree, identity, ['ed25519', 'ecdsa'])
        assert sorted((c['path'].split('/')[-1], c['kind']) for c in changes) == [
            ('ssh_host_ecdsa_key', 'file'), ('ssh_host_ecdsa_key.pub', 'file'),
            ('ssh_host_rsa_key', 'absent'), ('ssh_host_rsa_key.pub', 'absent')]  # ed25519 is right already
        rootfix.apply(tree, changes)
        assert _identity.host_key_changes(tree, identity, ['ed25519', 'ecdsa']) == []
    assert sorted(os.listdir(root / 'etc/ssh')) == ['ssh_host_ecdsa_key', 'ssh_host_ecdsa_key.pub',
                                                    'ssh_host_ed25519_key', 'ssh_host_ed25519_key.pub', 'sshd_config']
    private = os.stat(root / 'etc/ssh/ssh_host_ecdsa_key')
    assert (private.st_uid, private.st_gid, stat.S_IMODE(private.st_mode)) == (0, 0, 0o600)


def test_host_key_changes_never_write_through_a_symlink(tmp_path, pairs):
    root, outside = old_root(tmp_path / 'root', pairs), tmp_path / 'bakery-ssh'
    outside.mkdir()
    (outside / 'key').write_text('the bakery key\n')
    os.unlink(root / 'etc/ssh/ssh_host_ecdsa_key')
    os.symlink(str(outside / 'key'), root / 'etc/ssh/ssh_host_ecdsa_key')
    identity = _identity.Identity('f' * 32, {kind: (pairs[kind][0], pairs[kind][1].decode())
                                             for kind in ('ed25519', 'ecdsa')})
    with Tree(str(root)) as tree:
        rootfix.apply(tree, _identity.host_key_changes(tree, identity, ['ed25519', 'ecdsa']))
    assert (outside / 'key').read_text() == 'the bakery key\n'
    assert (root / 'etc/ssh/ssh_host_ecdsa_key').read_bytes() == pairs['ecdsa'][0]


def test_the_store_replaces_an_identity_whole_and_reads_only_well_formed_parts(tmp_path, pairs):
    store = _identity.IdentityStore(str(tmp_path))
    assert store.load('3a4b5c6d') is None and not store.exists('3a4b5c6d')
    identity = _identity.Identity('f' * 32, {'ed25519': (pairs['ed25519'][0], pairs['ed25519'][1].decode())},
                                  certs={'ed25519': 'ssh-ed25519-cert-v01@openssh.com AAAA\n'},
                                  cert_record={'ca': 'SHA256:x', 'principals': ['kitchen'], 'keys_sha256': 'k'})
    store.save('3a4b5c6d', identity)
    folder = tmp_path / '3a4b5c6d.identity'
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600 for name in os.listdir(folder))
    assert store.load('3a4b5c6d') == identity
    inode = os.stat(folder).st_ino
    store.save('3a4b5c6d', _identity.Identity('e' * 32, {'ecdsa': (pairs['ecdsa'][0], pairs['ecdsa'][1].decode())}))
    assert os.stat(folder).st_ino != inode and sorted(os.listdir(folder)) == [
        'machine-id', 'ssh_host_ecdsa_key', 'ssh_host_ecdsa_key.pub']  # replaced whole, nothing of the old one
    assert not [name for name in os.listdir(tmp_path) if name.startswith('.pifleet-tmp-')]
    (folder / 'ssh_host_ecdsa_key.pub').write_bytes(pairs['other'][1])
    assert store.load('3a4b5c6d').keys == {}  # a key that is not well-formed is made again, never used
    assert store.target('identity-3a4b5c6d') == str(folder) and store.target('identity-../x') is None
    store.remove('3a4b5c6d')
    assert not folder.exists() and os.listdir(tmp_path) == []


def test_keygen_argv():
    assert _identity.keygen_argv('/usr/bin/ssh-keygen', 'ecdsa', 'kitchen', '/k/key') == [
        '/usr/bin/ssh-keygen', '-q', '-N', '', '-t', 'ecdsa', '-C', 'root@kitchen', '-f', '/k/key']


@needs_keygen
def test_key_forge_makes_keys_ahead_and_on_demand(tmp_path):
    with _identity.KeyForge(str(tmp_path), shutil.which('ssh-keygen'), workers=2) as forge:
        scratch = forge.scratch.path
        assert os.path.dirname(scratch) == str(tmp_path) and os.stat(scratch).st_mode & 0o777 == 0o700
        forge.order('3a4b5c6d', 'kitchen', ['ed25519', 'ecdsa'])
        ahead = forge.key('3a4b5c6d', 'kitchen', 'ed25519')
        assert ahead == os.path.join(scratch, '3a4b5c6d', 'ssh_host_ed25519_key')
        assert open(ahead + '.pub', encoding='ascii').read().startswith('ssh-ed25519 ')
        assert os.stat(ahead).st_mode & 0o777 == 0o600
        # Not ordered (a type asked again): made now, in the same place.
        again = forge.key('3a4b5c6d', 'kitchen', 'ed25519')
        assert again == ahead and open(again + '.pub', encoding='ascii').read().strip().endswith('root@kitchen')
        private, public = forge.take('0badcafe', 'garage', 'ecdsa')
        assert _identity.check_key_pair(private, public.encode(), 'ecdsa') is None
        assert public.strip().endswith('root@garage')
    assert not os.path.exists(scratch)  # every key made for the run goes with the forge


def test_key_forge_failure_is_made_again_then_reported(tmp_path):
    calls = []

    def failing(argv):
        calls.append(argv)
        return 1, '', 'ssh-keygen: no entropy'

    with _identity.KeyForge(str(tmp_path), '/usr/bin/ssh-keygen', run=failing, setpriv='/usr/bin/setpriv',
                            workers=1) as forge:
        forge.order('3a4b5c6d', 'pi-x', ['ed25519'])
        with pytest.raises(_identity.IdentityError, match=r'generating the ed25519 SSH host key for pi-x failed: '
                                                          r'.*entropy'):
            forge.key('3a4b5c6d', 'pi-x', 'ed25519')
    assert len(calls) == 2  # ahead (failed), then once more inline before giving up
    assert calls[0][:4] == ['/usr/bin/setpriv', '--pdeathsig', 'KILL', '--']  # dies with the module


def test_key_forge_close_cancels_what_has_not_started(tmp_path):
    started = []

    def slow_run(argv):
        started.append(argv)
        time.sleep(0.3)
        return 1, '', 'stopped'

    forge = _identity.KeyForge(str(tmp_path), '/usr/bin/ssh-keygen', run=slow_run, workers=1)
    for index in range(20):
        forge.order('%08x' % index, 'pi-%d' % index, ['rsa'])
    scratch = forge.scratch.path
    forge.close()
    assert 1 <= len(started) < 20 and not os.path.exists(scratch)
