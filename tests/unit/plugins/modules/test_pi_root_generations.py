# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_root's main() with generations: the previous root and rollback, the identity the bakery keeps, roots
a Pi sabotaged, host certificates, the kernel hold and escaped diffs, on generations made with mke2fs -d.

Everything here mounts (loop devices, as root): skipped without them. The same on real XFS, btrfs and
ext4 with images of the test-image factory, and the kills, are in tests/integration/test_pi_root*.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest
from genstore import make_generation

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import kernelhold
from ansible_collections.pifleet.netboot.plugins.modules import pi_root

A = '3a4b5c6d'
B = '0badcafe'
STATUS = ''.join('Package: %s\nStatus: install ok installed\nVersion: %s\nDescription: x\n continued\n\n' % pair
                 for pair in (('bash', '5.2.15-2'), ('linux-image-6.1.0-50-arm64', '6.1.158-1'),
                              ('linux-image-arm64', '6.1.158-1')))
GOLDEN = {'etc/fstab': 'proc /proc proc defaults 0 0\n', 'etc/hostname': 'raspberrypi\n',
          'etc/hosts': '127.0.1.1\traspberrypi\n', 'etc/machine-id': 'a' * 32 + '\n', 'home/pi/.profile': 'x\n',
          'etc/ssh/sshd_config': 'Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\n',
          'etc/ssh/ssh_host_ed25519_key': 'golden private\n', 'etc/ssh/ssh_host_ed25519_key.pub': 'golden public\n',
          'etc/apt/sources.list': '', 'var/lib/dpkg/status': STATUS}
KINDS = ('ed25519', 'ecdsa')
CAN_MOUNT = os.geteuid() == 0 and os.path.exists('/dev/loop-control') and bool(shutil.which('ssh-keygen'))
pytestmark = pytest.mark.skipif(not CAN_MOUNT, reason='needs root, loop devices and ssh-keygen')


def mounts_below(path):
    with open('/proc/self/mountinfo', encoding='utf-8') as info:
        return [line.split()[4] for line in info if line.split()[4].startswith(str(path) + '/')]


@pytest.fixture
def lab(tmp_path):
    """Generation bw@1 in a store; roots, units and the lock beside it. No mount outlives a test."""
    (tmp_path / 'store').mkdir()
    make_generation(tmp_path / 'store', 'bw', GOLDEN, 'c' * 64)
    yield tmp_path
    left = mounts_below(tmp_path)
    for point in sorted(left, key=len, reverse=True):
        subprocess.run(['umount', '--lazy', point], check=False)
    assert left == [], 'a test left mounts behind'


def args(lab, **extra):
    return dict({'bakeform': 'bw', 'store': str(lab / 'store'), 'roots_dir': str(lab / 'roots'),
                 'units_dir': str(lab / 'units'), 'lock_file': str(lab / 'pifleet.lock'), 'hostname': 'kitchen',
                 'allow_root_filesystem': True}, **extra)  # the test's temp dirs may lie on /


def identity_of(root):
    """The SSH host keys and machine-id in a root."""
    found = {name: (root / 'etc/ssh' / name).read_bytes() for name in os.listdir(root / 'etc/ssh')
             if name.startswith('ssh_host_') and not name.endswith('-cert.pub')}
    found['machine-id'] = (root / 'etc/machine-id').read_bytes()
    return found


def kept(lab, serial):
    folder = lab / 'roots' / (serial + '.identity')
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)
            if name.startswith('ssh_host_') or name == 'machine-id'} if folder.exists() else None


def state(lab):
    """Everything a run that changes nothing leaves as it was (mounted roots' files included)."""
    seen = {}
    for base, _dirs, files in os.walk(lab / 'roots'):
        for name in files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            seen[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return seen


def run(run_module, lab, check=False, diff=False, **extra):
    return run_module(pi_root.main, args(lab, **extra), check_mode=check, diff=diff)


def test_rebuild_keeps_the_previous_root_and_rollback_swaps_them(run_module, lab):
    roots, root = lab / 'roots', lab / 'roots/mnt' / A
    first = run(run_module, lab, serial=A).result
    assert first['pis'][0]['action'] == 'cloned' and first['pis'][0]['generation'] == 1
    identity = identity_of(root)
    (root / 'home/pi/notes.txt').write_text('work of generation 1\n')
    assert make_generation(lab / 'store', 'bw', dict(GOLDEN, **{'etc/generation': '2\n'}), 'd' * 64) == 2

    present = run(run_module, lab, serial=A).result
    pi = present['pis'][0]
    assert present['changed'] is False and (pi['generation'], pi['current_generation'], pi['behind']) == (1, 2, True)
    assert present['warnings'] == [] and not (root / 'etc/generation').exists()

    old_inode, before = os.stat(str(roots / A) + '.img').st_ino, state(lab)
    planned = run(run_module, lab, check=True, diff=True, serial=A, state='rebuilt', generation=2).result
    assert planned['changed'] and planned['pis'][0]['action'] == 'rebuilt' and planned['pis'][0]['label'] == 'bw@2'
    assert state(lab) == before
    done = run(run_module, lab, serial=A, state='rebuilt', generation=2).result
    pi = done['pis'][0]
    assert (pi['action'], pi['generation'], pi['behind'], pi['previous']) == (
        'rebuilt', 2, False, {'bakeform': 'bw', 'generation': 1, 'label': 'bw@1'}), done
    assert os.stat(str(roots / A) + '.prev.img').st_ino == old_inode  # kept as it was: renamed, never copied
    assert json.loads((roots / (A + '.prev.json')).read_text())['generation'] == 1
    assert (root / 'etc/generation').read_text() == '2\n' and not (root / 'home/pi/notes.txt').exists()
    assert identity_of(root) == identity and pi['host_keys'] == first['pis'][0]['host_keys']
    assert mounts_below(roots) == [str(roots / 'mnt'), str(root)]  # the previous root is not mounted
    assert run(run_module, lab, serial=A).result['changed'] is False

    before = state(lab)
    planned = run(run_module, lab, check=True, diff=True, serial=A, state='rolledback').result
    assert planned['changed'] and planned['pis'][0]['action'] == 'rolledback' and state(lab) == before
    back = run(run_module, lab, serial=A, state='rolledback').result
    pi = back['pis'][0]
    assert (pi['action'], pi['generation'], pi['behind'], pi['previous']['label']) == ('rolledback', 1, True, 'bw@2')
    assert (root / 'home/pi/notes.txt').read_text() == 'work of generation 1\n'
    assert not (root / 'etc/generation').exists() and identity_of(root) == identity
    marker = json.loads((roots / (A + '.json')).read_text())
    assert marker['rolled_back']['from'] == 'bw@2' and marker['generation'] == 1
    assert not (roots / (A + '.swap.json')).exists()
    again = run(run_module, lab, serial=A, state='rolledback').result  # rolled back already: nothing to do
    assert again['changed'] is False and again['pis'][0]['action'] == 'unchanged', again
    assert run(run_module, lab, serial=A).result['changed'] is False

    # keep_previous false: the replaced root goes, the previous one (bw@2) stays.
    prev_inode = os.stat(str(roots / A) + '.prev.img').st_ino
    fresh = run(run_module, lab, serial=A, state='rebuilt', keep_previous=False).result
    assert fresh['pis'][0]['previous']['label'] == 'bw@2' and os.stat(str(roots / A) + '.prev.img').st_ino == prev_inode

    gone = run(run_module, lab, serial=A, state='absent').result
    assert gone['pis'][0]['action'] == 'removed' and os.listdir(roots) == []


def test_a_rollback_without_previous_root_fails_that_pi_alone(run_module, lab):
    pis = [{'serial': A}, {'serial': B, 'hostname': 'garage'}]
    assert not run(run_module, lab, pis=pis).failed
    assert not run(run_module, lab, pis=[dict(pis[1], state='rebuilt')]).failed
    result = run(run_module, lab, pis=[dict(pi, state='rolledback') for pi in pis])
    assert result.failed, result.result
    msg = result.result['pis'][1]['msg']
    assert result.result['msg'].startswith('pi_root failed for 1 Pi(s): kitchen: root of Pi %s has no previous' % A)
    assert result.result['failed_pis'] == [{'serial': A, 'hostname': 'kitchen', 'msg': msg}]
    assert result.result['pis'][0]['action'] == 'rolledback' and result.result['pis'][0]['serial'] == B
    run(run_module, lab, pis=[dict(pi, state='absent') for pi in pis])


def test_identity_fresh_makes_new_keys_and_keeps_them(run_module, lab):
    root = lab / 'roots/mnt' / A
    run(run_module, lab, serial=A)
    old = identity_of(root)
    fresh = run(run_module, lab, serial=A, state='rebuilt', identity='fresh').result
    new = identity_of(root)
    assert all(new[name] != old[name] for name in old), 'every key and the machine-id are new'
    assert kept(lab, A) == new and fresh['pis'][0]['host_keys'] != []
    run(run_module, lab, serial=A, state='rebuilt')
    assert identity_of(root) == new  # kept from now on
    run(run_module, lab, serial=A, state='absent')
    assert kept(lab, A) is None


def test_a_root_made_before_the_bakery_kept_identities_gives_its_own_once(run_module, lab):
    root = lab / 'roots/mnt' / A
    run(run_module, lab, serial=A)
    old = identity_of(root)
    shutil.rmtree(lab / 'roots' / (A + '.identity'))  # as a root made by an older pifleet
    result = run(run_module, lab, serial=A, state='rebuilt').result
    assert result['warnings'] == [] and identity_of(root) == old and kept(lab, A) == old
    run(run_module, lab, serial=A, state='absent')


def plant_key_pair(folder, kind, comment='planted'):
    subprocess.run(['ssh-keygen', '-q', '-N', '', '-t', kind, '-C', comment, '-f', str(folder / 'k')], check=True)
    return (folder / 'k').read_bytes(), (folder / 'k.pub').read_bytes()


SABOTAGE = ['etc_symlink', 'ssh_symlink', 'huge_machine_id', 'junk_keys', 'mismatched_pair', 'fifo_key', 'huge_key',
            'encrypted_key']


@pytest.mark.parametrize('sabotage', SABOTAGE)
def test_a_rebuild_never_fails_because_of_what_the_pi_left(run_module, lab, tmp_path, sabotage):
    """A root from before the bakery kept identities, sabotaged by its Pi: the rebuild succeeds with new ones."""
    root, standin = lab / 'roots/mnt' / A, tmp_path / 'bakery-etc'
    (standin / 'ssh').mkdir(parents=True)
    (standin / 'machine-id').write_text('b' * 32 + '\n')
    (standin / 'ssh/ssh_host_ed25519_key').write_text('the bakery key\n')
    run(run_module, lab, serial=A)
    shutil.rmtree(lab / 'roots' / (A + '.identity'))
    old = identity_of(root)
    sabotage_root(root, standin, tmp_path, sabotage)
    before = {name: (standin / 'ssh' / name).read_bytes() for name in os.listdir(standin / 'ssh')}
    result = run(run_module, lab, serial=A, state='rebuilt', diff=True)
    assert not result.failed and result.result['pis'][0]['action'] == 'rebuilt', result.result
    assert 'made new ones for' in ' '.join(result.result['warnings']), result.result['warnings']
    new = identity_of(root)
    assert kept(lab, A) == new
    assert b'the bakery key' not in new['ssh_host_ed25519_key'] and new['machine-id'] != b'b' * 32 + b'\n'
    if sabotage in ('etc_symlink', 'ssh_symlink'):  # nothing is read through the link: new keys
        assert all(new[name] != old[name] for name in old if name != 'machine-id')
        assert (new['machine-id'] == old['machine-id']) is (sabotage == 'ssh_symlink')
    if sabotage == 'huge_machine_id':  # the well-formed keys are kept, the machine-id is new
        assert new['ssh_host_ed25519_key'] == old['ssh_host_ed25519_key'] and new['machine-id'] != old['machine-id']
    if sabotage in ('junk_keys', 'mismatched_pair', 'fifo_key', 'huge_key', 'encrypted_key'):
        assert new['ssh_host_ed25519_key'] != old['ssh_host_ed25519_key']
        assert new['ssh_host_ecdsa_key'] == old['ssh_host_ecdsa_key'] and new['machine-id'] == old['machine-id']
    assert {name: (standin / 'ssh' / name).read_bytes() for name in os.listdir(standin / 'ssh')} == before
    for entry in result.result['diff']:
        assert '\x1b' not in entry['before'] + entry['after']
    again = run(run_module, lab, serial=A, state='rebuilt').result  # from now on: the kept identity, no warning
    assert again['warnings'] == [] and identity_of(root) == new
    run(run_module, lab, serial=A, state='absent')


def sabotage_root(root, standin, tmp_path, sabotage):
    """What a Pi can do to its own root before a rebuild (it is root there)."""
    ssh = root / 'etc/ssh'
    if sabotage == 'etc_symlink':
        os.rename(root / 'etc', root / 'etc.real')
        os.symlink(str(standin), root / 'etc')
    elif sabotage == 'ssh_symlink':
        shutil.rmtree(ssh)
        os.symlink(str(standin / 'ssh'), ssh)
    elif sabotage == 'huge_machine_id':
        (root / 'etc/machine-id').write_text('a' * (2 << 20))
    elif sabotage == 'junk_keys':
        (ssh / 'ssh_host_ed25519_key').write_text('\x1b]0;not a key\x07\n')
        (ssh / 'ssh_host_ed25519_key.pub').write_text('ssh-ed25519 AAAA junk\n')
    elif sabotage == 'mismatched_pair':  # a key pair whose private half only the previous tenant holds
        private, _public = plant_key_pair(tmp_path, 'ed25519')
        (ssh / 'ssh_host_ed25519_key').write_bytes(private)
    elif sabotage == 'fifo_key':
        os.unlink(ssh / 'ssh_host_ed25519_key')
        os.mkfifo(ssh / 'ssh_host_ed25519_key')
    elif sabotage == 'huge_key':
        (ssh / 'ssh_host_ed25519_key').write_bytes(b'x' * (1 << 20))
    elif sabotage == 'encrypted_key':
        subprocess.run(['ssh-keygen', '-q', '-N', 'secret', '-t', 'ed25519', '-f', str(tmp_path / 'enc')], check=True)
        shutil.copy(tmp_path / 'enc', ssh / 'ssh_host_ed25519_key')
        shutil.copy(tmp_path / 'enc.pub', ssh / 'ssh_host_ed25519_key.pub')


def certificate(path):
    return subprocess.run(['ssh-keygen', '-L', '-f', str(path)], capture_output=True, text=True, check=True).stdout


def make_ca(path):
    subprocess.run(['ssh-keygen', '-q', '-N', '', '-t', 'ed25519', '-C', 'fleet-ca', '-f', str(path)], check=True)
    out = subprocess.run(['ssh-keygen', '-l', '-E', 'sha256', '-f', str(path)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


def test_host_certificates_are_signed_once_and_again_when_names_or_ca_change(run_module, lab, tmp_path):
    root, ca = lab / 'roots/mnt' / A, tmp_path / 'host_ca'
    fingerprint = make_ca(ca)
    base = dict(serial=A, host_ca=str(ca), principals=['kitchen', '10.99.0.51'])
    first = run(run_module, lab, **base).result
    assert first['pis'][0]['host_certificate'] is True
    assert first['host_ca_public_key'] == (tmp_path / 'host_ca.pub').read_text().strip()  # for known_hosts
    assert first['host_ca_public_key'].endswith(' fleet-ca')
    dropin = (root / 'etc/ssh/sshd_config.d/pifleet-host-certificate.conf').read_text()
    assert dropin.splitlines()[-2:] == ['HostCertificate /etc/ssh/ssh_host_%s_key-cert.pub' % kind for kind in KINDS]
    for kind in KINDS:
        cert = root / 'etc/ssh' / ('ssh_host_%s_key-cert.pub' % kind)
        shown = certificate(cert)
        assert 'host certificate' in shown and 'Signing CA: ED25519 %s' % fingerprint in shown, shown
        assert 'Key ID: "kitchen-%s"' % A in shown and 'Valid: forever' in shown
        assert shown.split('Principals:')[1].split('Critical')[0].split() == ['kitchen', '10.99.0.51']
        key = subprocess.run(['ssh-keygen', '-l', '-f', str(root / 'etc/ssh' / ('ssh_host_%s_key.pub' % kind))],
                             capture_output=True, text=True, check=True).stdout.split()[1]
        assert 'Public key: %s-CERT %s' % ('ED25519' if kind == 'ed25519' else 'ECDSA', key) in shown
        assert stat.S_IMODE(os.stat(cert).st_mode) == 0o644 and os.stat(cert).st_uid == 0
    marker = json.loads((lab / 'roots' / (A + '.json')).read_text())
    assert marker['host_certificate'] is True and marker['certificate']['ca'] == fingerprint
    assert marker['certificate']['principals'] == ['kitchen', '10.99.0.51']
    assert (root / 'etc/ssh/sshd_config').read_text() == GOLDEN['etc/ssh/sshd_config']  # the Pi's, never edited

    certs = {kind: (root / 'etc/ssh' / ('ssh_host_%s_key-cert.pub' % kind)).read_bytes() for kind in KINDS}
    assert run(run_module, lab, **base).result['changed'] is False
    os.unlink(root / 'etc/ssh/ssh_host_ecdsa_key-cert.pub')  # the Pi removed one: put back, not signed again
    assert run(run_module, lab, **base).result['pis'][0]['action'] == 'fixed'
    assert (root / 'etc/ssh/ssh_host_ecdsa_key-cert.pub').read_bytes() == certs['ecdsa']

    renamed = run(run_module, lab, **{**base, 'principals': ['kitchen']}).result
    assert renamed['pis'][0]['action'] == 'fixed'
    assert certificate(root / 'etc/ssh/ssh_host_ed25519_key-cert.pub').split('Principals:')[1].split()[0:2] == [
        'kitchen', 'Critical']
    other = make_ca(tmp_path / 'new_ca')
    new_ca = {**base, 'host_ca': str(tmp_path / 'new_ca')}
    moved = run(run_module, lab, **new_ca).result
    assert moved['pis'][0]['action'] == 'fixed'
    assert other in certificate(root / 'etc/ssh/ssh_host_ed25519_key-cert.pub')
    rebuilt = run(run_module, lab, **{**new_ca, 'state': 'rebuilt'}).result
    assert rebuilt['pis'][0]['host_certificate'] is True
    assert run(run_module, lab, **new_ca).result['changed'] is False

    plain = run(run_module, lab, serial=A).result  # host_ca unset: pi_root's certificates go
    assert plain['pis'][0]['host_certificate'] is False and plain['host_ca_public_key'] is None
    assert not any(name.endswith('-cert.pub') for name in os.listdir(root / 'etc/ssh'))
    assert os.listdir(root / 'etc/ssh/sshd_config.d') == []
    run(run_module, lab, serial=A, state='absent')


def test_an_sshd_without_drop_ins_gets_no_certificate(run_module, lab, tmp_path):
    make_ca(tmp_path / 'ca')
    make_generation(lab / 'store', 'old', dict(GOLDEN, **{'etc/ssh/sshd_config': 'PermitRootLogin yes\n'}), 'e' * 64)
    result = run(run_module, lab, serial=A, bakeform='old', host_ca=str(tmp_path / 'ca')).result
    assert result['pis'][0]['host_certificate'] is False and not result.get('failed'), result
    root = lab / 'roots/mnt' / A
    assert (root / 'etc/ssh/sshd_config').read_text() == 'PermitRootLogin yes\n'
    assert not (root / 'etc/ssh/sshd_config.d').exists()
    assert run(run_module, lab, serial=A, bakeform='old', host_ca=str(tmp_path / 'ca')).result['changed'] is False
    run(run_module, lab, serial=A, state='absent')


def test_a_missing_host_ca_fails_the_call_before_any_pi(run_module, lab, tmp_path):
    result = run(run_module, lab, serial=A, host_ca=str(tmp_path / 'nowhere'))
    assert result.failed and 'host_ca %s does not exist' % (tmp_path / 'nowhere') in result.result['msg']
    assert not (lab / 'roots').exists()


def test_the_kernel_hold_lands_once_and_comes_back(run_module, lab):
    root = lab / 'roots/mnt' / A
    first = run(run_module, lab, serial=A).result
    packages = ['linux-image-6.1.0-50-arm64=6.1.158-1', 'linux-image-arm64=6.1.158-1']
    assert first['kernels'] == {'bw@1': packages}
    for rel, (text, mode) in kernelhold.files('bw@1', packages).items():
        assert (root / rel).read_text() == text and stat.S_IMODE(os.stat(root / rel).st_mode) == mode, rel
    assert 'Pin: version 6.1.158-1' in (root / kernelhold.PREFERENCES).read_text()
    marker = json.loads((lab / 'roots' / (A + '.json')).read_text())
    assert marker['kernel_packages'] == packages and 'kernel_hold' in marker['fixes']
    again = run(run_module, lab, serial=A).result
    assert again['changed'] is False and again['kernels'] == {'bw@1': packages}
    os.unlink(root / kernelhold.PREFERENCES)  # the Pi took the pin away: it comes back
    assert run(run_module, lab, serial=A).result['pis'][0]['action'] == 'fixed'
    assert (root / kernelhold.PREFERENCES).exists()
    run(run_module, lab, serial=A, state='absent')


def test_diffs_never_carry_a_pis_control_characters(run_module, lab):
    root = lab / 'roots/mnt' / A
    run(run_module, lab, serial=A)
    (root / 'etc/hosts').write_text('127.0.0.1 localhost \x1b[2J\x1b]0;owned\x07\n127.0.1.1\tkitchen\n')
    result = run(run_module, lab, serial=A, hostname='garage', diff=True).result
    shown = [d for d in result['diff'] if d['after_header'].endswith('/etc/hosts')]
    assert len(shown) == 1 and '\x1b' not in shown[0]['before'] + shown[0]['after']
    assert '\\x1b[2J\\x1b]0;owned\\x07' in shown[0]['before']
    assert (root / 'etc/hosts').read_text().startswith('127.0.0.1 localhost \x1b[2J')  # the file keeps its bytes
    run(run_module, lab, serial=A, state='absent')


def test_a_marker_half_written_by_a_killed_run_is_swept(run_module, lab):
    (lab / 'roots').mkdir(mode=0o700)
    (lab / 'roots/.pifleet-k1ll3d_x').write_text('{"serial": "3a4')  # atomic.write_text's temporary file
    (lab / 'roots/.pifleet-notours').mkdir()  # not a temporary file of ours: left alone
    result = run(run_module, lab, pis=[{'serial': A, 'state': 'absent'}]).result
    assert result['swept'] == ['.pifleet-k1ll3d_x'] and sorted(os.listdir(lab / 'roots')) == ['.pifleet-notours']
