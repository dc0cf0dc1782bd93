# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SSH host certificates: what sshd can include, the names, the drop-in, the files in a root, real signing."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import hostcert, rootfix
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import identity as _identity
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.rootparts import Parts


@pytest.mark.parametrize('text, expected', [
    ('Include /etc/ssh/sshd_config.d/*.conf\nPort 22\n', True),  # Debian since bookworm
    ('  include   /etc/ssh/sshd_config.d/*.conf  \n', True),
    ('Include /etc/ssh/other.conf /etc/ssh/sshd_config.d/*.conf\n', True),
    ('#Include /etc/ssh/sshd_config.d/*.conf\n', False),
    ('Include /etc/ssh/sshd_config.d/extra.conf\n', False),
    ('PermitRootLogin yes\n', False), ('', False), (None, False),
])
def test_takes_dropins(text, expected):
    assert hostcert.takes_dropins(text) is expected


def test_principals_are_names_and_addresses():
    assert hostcert.check_principals(['kitchen', 'kitchen.lab.example', '10.99.0.51', 'fe80::1'], 'Pi x') == []
    assert hostcert.check_principals([], 'Pi x') == ['Pi x: principals is empty; give at least its host name']
    problem, = hostcert.check_principals(['ok', 'a,b', 'a b', '*', 'x\n'], 'Pi x')
    assert "'a,b'" in problem and "'a b'" in problem and "'*'" in problem and "'x\\n'" in problem


def test_dropin_record_and_argv():
    assert hostcert.dropin_text(['ed25519', 'ecdsa']).splitlines()[2:] == [
        'HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub',
        'HostCertificate /etc/ssh/ssh_host_ecdsa_key-cert.pub']
    one = hostcert.record('SHA256:ca', ['kitchen'], ['ssh-ed25519 AAAA'])
    assert one == hostcert.record('SHA256:ca', ['kitchen'], ['ssh-ed25519 AAAA'])
    assert one != hostcert.record('SHA256:ca', ['kitchen', '10.0.0.5'], ['ssh-ed25519 AAAA'])
    assert one != hostcert.record('SHA256:other', ['kitchen'], ['ssh-ed25519 AAAA'])
    assert one != hostcert.record('SHA256:ca', ['kitchen'], ['ssh-ed25519 BBBB'])
    assert hostcert.sign_argv('/k', '/ca', 'kitchen-3a4b5c6d', ['kitchen', '10.0.0.5'], '/p.pub', '/q.pub') == [
        '/k', '-q', '-s', '/ca', '-I', 'kitchen-3a4b5c6d', '-h', '-n', 'kitchen,10.0.0.5', '-V', 'always:forever',
        '--', '/p.pub', '/q.pub']


def test_changes_write_ours_and_take_only_ours_away(tmp_path):
    root = tmp_path / 'root'
    (root / 'etc/ssh/sshd_config.d').mkdir(parents=True)
    (root / 'etc/ssh/sshd_config.d/local.conf').write_text('PasswordAuthentication no\n')  # the Pi's own
    identity = _identity.Identity(certs={'ed25519': 'ssh-ed25519-cert-v01@openssh.com AAAA\n'})
    with Tree(str(root)) as tree:
        changes = hostcert.changes(tree, identity, ['ed25519'], True)
        assert sorted(c['path'] for c in changes) == [hostcert.cert_path('ed25519'), hostcert.DROPIN]
        rootfix.apply(tree, changes)
        assert hostcert.changes(tree, identity, ['ed25519'], True) == []
        gone = hostcert.changes(tree, identity, ['ed25519'], False)
        assert sorted((c['path'], c['kind']) for c in gone) == [(hostcert.cert_path('ed25519'), 'absent'),
                                                                (hostcert.DROPIN, 'absent')]
        rootfix.apply(tree, gone)
    assert os.listdir(root / 'etc/ssh/sshd_config.d') == ['local.conf']


class Run:
    def __call__(self, argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.skipif(not shutil.which('ssh-keygen'), reason='needs ssh-keygen')
def test_a_real_ca_signs_the_bakerys_copy_of_each_key(tmp_path):
    ca = tmp_path / 'host_ca'
    subprocess.run(['ssh-keygen', '-q', '-N', '', '-t', 'ed25519', '-f', str(ca)], check=True)
    subprocess.run(['ssh-keygen', '-q', '-N', '', '-t', 'ecdsa', '-f', str(tmp_path / 'hk')], check=True)
    host = _identity.Identity(keys={'ecdsa': ((tmp_path / 'hk').read_bytes(), (tmp_path / 'hk.pub').read_text())})
    signer = hostcert.HostCA(str(ca), Run(), lambda name, required: shutil.which(name))
    assert signer.fingerprint().startswith('SHA256:') and len(signer.fingerprint()) == 50
    certs = signer.sign(str(tmp_path / 'scratch'), {'serial': '3a4b5c6d', 'hostname': 'kitchen'}, ['kitchen'], host,
                        ['ecdsa'])
    (tmp_path / 'cert.pub').write_text(certs['ecdsa'])
    shown = subprocess.run(['ssh-keygen', '-L', '-f', str(tmp_path / 'cert.pub')], capture_output=True, text=True,
                           check=True).stdout
    assert 'ecdsa-sha2-nistp256-cert-v01@openssh.com host certificate' in shown and signer.fingerprint() in shown
    assert signer.public_key() == (tmp_path / 'host_ca.pub').read_text().strip()
    missing = hostcert.HostCA(str(tmp_path / 'none'), Run(), lambda name, required: shutil.which(name))
    with pytest.raises(hostcert.CertError, match='does not exist: create the fleet host CA there'):
        missing.fingerprint()
    assert missing.public_key() is None  # no .pub: no known_hosts line with it
    (tmp_path / 'dir.pub').mkdir()
    with pytest.raises(hostcert.CertError, match=r'dir\.pub cannot be read'):
        hostcert.HostCA(str(tmp_path / 'dir'), Run(), lambda name, required: shutil.which(name)).public_key()
    (tmp_path / 'junk').write_text('not a key\n')
    junk = hostcert.HostCA(str(tmp_path / 'junk'), Run(), lambda name, required: shutil.which(name))
    with pytest.raises(hostcert.CertError, match='is not an SSH private key ssh-keygen can read'):
        junk.fingerprint()


class Counted(Run):
    def __init__(self):
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv)
        return super().__call__(argv)


@pytest.mark.skipif(not shutil.which('ssh-keygen'), reason='needs ssh-keygen')
def test_all_of_a_pis_keys_are_signed_by_one_ssh_keygen(tmp_path):
    ca = tmp_path / 'host_ca'
    subprocess.run(['ssh-keygen', '-q', '-N', '', '-t', 'ed25519', '-f', str(ca)], check=True)
    keys = {}
    for kind in ('ed25519', 'ecdsa'):
        subprocess.run(['ssh-keygen', '-q', '-N', '', '-t', kind, '-f', str(tmp_path / kind)], check=True)
        keys[kind] = ((tmp_path / kind).read_bytes(), (tmp_path / (kind + '.pub')).read_text())
    run = Counted()
    signer = hostcert.HostCA(str(ca), run, lambda name, required: shutil.which(name))
    certs = signer.sign(str(tmp_path / 'scratch'), {'serial': '3a4b5c6d', 'hostname': 'kitchen'},
                        ['kitchen', '10.0.0.5'], _identity.Identity(keys=keys), ['ed25519', 'ecdsa'])
    assert [argv[1:4] for argv in run.calls] == [['-q', '-s', str(ca)]]  # one process for both keys
    for kind, header in (('ed25519', 'ssh-ed25519-cert-v01@openssh.com'),
                         ('ecdsa', 'ecdsa-sha2-nistp256-cert-v01@openssh.com')):
        (tmp_path / 'cert.pub').write_text(certs[kind])
        shown = subprocess.run(['ssh-keygen', '-L', '-f', str(tmp_path / 'cert.pub')], capture_output=True, text=True,
                               check=True).stdout
        assert '%s host certificate' % header in shown and 'kitchen-3a4b5c6d' in shown and '10.0.0.5' in shown
        assert keys[kind][1].split()[1] not in certs[kind]  # a certificate, not the key itself
    (tmp_path / 'scratch' / 'cert-3a4b5c6d' / 'ssh_host_ecdsa_key.pub').unlink()
    broken = hostcert.HostCA(str(tmp_path / 'ecdsa.pub'), Run(), lambda name, required: shutil.which(name))
    with pytest.raises(hostcert.CertError, match=r'signing the ed25519, ecdsa host key\(s\) of Pi 3a4b5c6d'):
        broken.sign(str(tmp_path / 'scratch'), {'serial': '3a4b5c6d', 'hostname': 'kitchen'}, ['kitchen'],
                    _identity.Identity(keys=keys), ['ed25519', 'ecdsa'])


class CountingHost:
    """rootparts' host adapter with real commands, counting the signing ssh-keygen runs."""
    check_mode, diff, timeout = False, False, 60

    def __init__(self):
        self.signs = 0

    def run(self, argv):
        self.signs += '-s' in argv
        return Run()(argv)

    def which(self, name, required):
        return shutil.which(name)

    def warn(self, msg):
        raise AssertionError(msg)


@pytest.mark.skipif(not shutil.which('ssh-keygen'), reason='needs ssh-keygen')
def test_new_keys_are_signed_ahead_on_the_forges_threads(tmp_path):
    ca = tmp_path / 'host_ca'
    subprocess.run(['ssh-keygen', '-q', '-N', '', '-t', 'ed25519', '-f', str(ca)], check=True)
    host, kinds = CountingHost(), ['ed25519', 'ecdsa']
    parts = Parts(host, store=str(tmp_path), roots_dir=str(tmp_path), key_types=kinds, host_ca=str(ca), golden=None)
    kitchen = {'serial': '3a4b5c6d', 'hostname': 'kitchen', 'principals': None}
    garage = {'serial': '0badcafe', 'hostname': 'garage', 'principals': ['garage', '10.0.0.7']}
    try:
        for item in (kitchen, garage):
            parts.key_forge().order(item['serial'], item['hostname'], kinds, sign=parts.presign(item))
        identity, _changed = parts.identity(kitchen)
        certs = parts.presigned(kitchen, ['kitchen'], identity, kinds)
        assert sorted(certs) == sorted(kinds) and certs['ecdsa'].startswith('ecdsa-sha2-nistp256-cert-v01@openssh.com ')
        cert = tmp_path / 'kitchen-cert.pub'
        cert.write_text(certs['ed25519'])
        shown = subprocess.run(['ssh-keygen', '-L', '-f', str(cert)], capture_output=True, text=True, check=True).stdout
        assert 'host certificate' in shown and 'kitchen-3a4b5c6d' in shown and parts.ca.fingerprint() in shown
        assert parts.presigned(kitchen, ['kitchen'], identity, kinds) is None  # taken once
        # Other names than those signed ahead (the plan changed them): signed again, in the main thread.
        other, _changed = parts.identity(garage)
        assert parts.presigned(garage, ['garage'], other, kinds) is None
        assert host.signs == 2  # ahead, once per Pi
        # Keys that are not those signed ahead: never the wrong certificate.
        parts.key_forge().order(kitchen['serial'], 'kitchen', kinds, sign=parts.presign(kitchen))
        assert parts.presigned(kitchen, ['kitchen'], identity, kinds) is None
    finally:
        parts.close()


def test_a_signing_ahead_that_fails_is_left_to_the_main_thread(tmp_path):
    calls = []

    def run(argv):
        calls.append(argv)
        return 0, '', ''

    with _identity.KeyForge(str(tmp_path), '/usr/bin/ssh-keygen', run=run, workers=2) as forge:
        def failing(publics):
            raise hostcert.CertError('no CA')
        forge.order('3a4b5c6d', 'kitchen', ['ed25519'], sign=failing)
        assert forge.signed('3a4b5c6d') is None
        forge.order('0badcafe', 'garage', ['ed25519'], sign=sorted)
        assert forge.signed('0badcafe') == ['ed25519'] and forge.signed('0badcafe') is None

    def no_keys(argv):
        return 1, '', 'no entropy'

    signed = []
    with _identity.KeyForge(str(tmp_path), '/usr/bin/ssh-keygen', run=no_keys, workers=1) as forge:
        forge.order('3a4b5c6d', 'kitchen', ['ed25519', 'ecdsa'], sign=signed.append)
        assert forge.signed('3a4b5c6d') is None and signed == []  # keys made again when taken are signed then
