# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_root and pi_boot with bakeform generations, on real loop file systems, as root.

Images of the test-image factory become generations of a store of format 3 (tests/tools/genstore.py);
each golden root gets what a Raspberry Pi OS root has and the factory's lacks for these tests: an
sshd_config that includes sshd_config.d, apt, and a dpkg status with kernel packages. On XFS (reflinks):
roots built from generation 1, a second generation, ``present`` keeping 1, ``rebuilt`` keeping the
previous root, pi_boot serving each Pi its root's generation, ``rolledback``, a rollback without a
previous root, host certificates checked by a real sshd. On ext4 (slow copies): SIGKILLs in the middle
of rebuilds and rollbacks of several Pis, after which every Pi has whole pairs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from fstree import loop_fs, loops_backed_by, mounts_below, release_mounts
from genstore import ingest
from modrun import module_argv, run_module

from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import read_superblock
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.points import points_dir
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import Layout
from lab.piimage import build_image

REPO = Path(__file__).resolve().parents[2]
STATUS = ''.join('Package: %s\nStatus: install ok installed\nVersion: %s\nDescription: x\n\n' % pair for pair in (
    ('linux-image-6.1.0-50-arm64', '6.1.158-1'), ('linux-image-arm64', '6.1.158-1'), ('openssh-server', '9.2')))
PI_OS = {'etc/ssh/sshd_config': 'Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\n'
                                'UsePAM no\n',
         'etc/apt/sources.list': '', 'var/lib/dpkg/status': STATUS}
PIS = ['6e000001', '6e000002', '6e000003']


class Bakery:
    """A loop file system with a store of generations, the roots, the boot folders and the lock."""

    def __init__(self, mnt):
        self.mnt, self.store, self.roots = mnt, mnt / 'store', mnt / 'roots'
        self.lock = str(mnt / 'run' / 'pifleet.lock')  # a directory of its own: the lock wants it 0700

    def add(self, image, extra=None):
        number, _manifest = ingest(self.store, 'bw', image['path'], self.lock)
        golden, view = self.gen(number) / 'root.img', self.mnt / 'golden-rw'
        view.mkdir()
        subprocess.run(['mount', '-o', 'loop', str(golden), str(view)], check=True)
        try:
            for rel, text in dict(PI_OS, **(extra or {})).items():
                (view / rel).parent.mkdir(parents=True, exist_ok=True)
                (view / rel).write_text(text)
        finally:
            subprocess.run(['umount', str(view)], check=True)
            view.rmdir()
        return number

    def gen(self, number):
        return self.store / 'bw' / 'generations' / str(number)

    def args(self, **extra):
        return dict({'bakeform': 'bw', 'store': str(self.store), 'roots_dir': str(self.roots),
                     'units_dir': str(self.mnt / 'units'), 'lock_file': self.lock}, **extra)

    def pi_root(self, check=False, diff=False, **extra):
        return run_module('pi_root', self.args(**extra), check=check, diff=diff)

    def point(self, serial):
        """Where the Pi's root is mounted (on the mount points' tmpfs)."""
        return Path(Layout(str(self.roots), serial).point)

    def mounts_inside(self):
        """Everything mounted below the loop file system (itself left out)."""
        return [p for p in mounts_below(self.mnt) if p != str(self.mnt)]

    def mounted(self):
        """The Pis' roots mounted below the roots dir, sorted (the mount points' tmpfs itself left out)."""
        return sorted(p for p in mounts_below(self.roots) if p != points_dir(str(self.roots)))

    def pi_boot(self, results):
        """pi_boot for the Pis of a pi_root result, each with the generation pi_root says its root is built from."""
        pis = [{'name': pi['hostname'], 'prefix': pi['serial'], 'bakeform': 'bw', 'generation': pi['generation'],
                'nfsroot': '10.99.0.2:%s' % pi['path']} for pi in results]
        result = run_module('pi_boot', {'store': str(self.store), 'boot_dir': str(self.mnt / 'pis'),
                                        'map_path': str(self.mnt / 'map.json'), 'pis': pis})
        assert not result.get('failed'), result
        return json.loads((self.mnt / 'map.json').read_text())['prefixes']


def assert_pairs(roots, serial):
    """The Pi's roots are whole: each image has its own marker, no journal, never one image under two names."""
    layout = Layout(str(roots), serial)
    assert not os.path.exists(layout.journal)
    marker = json.loads(Path(layout.marker).read_text())
    assert marker['fs_uuid'] == read_superblock(layout.image)['uuid']
    if os.path.exists(layout.prev_image):
        previous = json.loads(Path(layout.prev_marker).read_text())
        assert previous['fs_uuid'] == read_superblock(layout.prev_image)['uuid'] != marker['fs_uuid']
        return marker, previous
    assert not os.path.exists(layout.prev_marker)
    return marker, None


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    top = tmp_path_factory.mktemp('gen-images')
    return {'one': build_image(top / 'one.img', seed=31), 'two': build_image(top / 'two.img', seed=32),
            'big': build_image(top / 'big.img', profile='realistic', root_files=3000, root_mb=160, seed=33)}


@pytest.fixture
def xfs(tmp_path, images):
    with loop_fs(tmp_path, 'xfs') as mnt:
        bakery = Bakery(mnt)
        bakery.add(images['one'])
        try:
            yield bakery
        finally:
            release_mounts(mnt)


def identity(root):
    found = {name: (root / 'etc/ssh' / name).read_bytes() for name in os.listdir(root / 'etc/ssh')
             if name.startswith('ssh_host_') and '-cert' not in name}
    return dict(found, **{'machine-id': (root / 'etc/machine-id').read_bytes()})


def test_generations_previous_roots_and_rollback(xfs, images):
    pis = [{'serial': serial, 'hostname': 'gen-%d' % index} for index, serial in enumerate(PIS)]
    common = dict(boot_mount='nfs', nfs_server='10.99.0.2')
    first = xfs.pi_root(pis=pis, **common)
    assert [(p['action'], p['label'], p['clone_method']) for p in first['pis']] == [('cloned', 'bw@1', 'reflink')] * 3
    kernels = ['linux-image-6.1.0-50-arm64=6.1.158-1', 'linux-image-arm64=6.1.158-1']
    assert first['kernels'] == {'bw@1': kernels}
    roots = [xfs.point(serial) for serial in PIS]
    identities = [identity(root) for root in roots]
    (roots[0] / 'home/pi/work.txt').write_text('made on generation 1\n')
    assert xfs.add(images['two'], {'etc/generation': '2\n'}) == 2

    kept = xfs.pi_root(pis=pis, **common)
    assert kept['changed'] is False and [(p['generation'], p['behind']) for p in kept['pis']] == [(1, True)] * 3
    assert all(p['boot_export'] == str(xfs.gen(1) / 'boot-nfs') for p in kept['pis'])
    served = xfs.pi_boot(kept['pis'])
    assert {prefix: entry['dirs'][1] for prefix, entry in served.items()} == {s: str(xfs.gen(1) / 'boot') for s in PIS}

    upgrade = [dict(pi, state='rebuilt', generation=2) for pi in pis[:2]]
    before = {s: os.stat(xfs.roots / (s + '.img')).st_ino for s in PIS}
    assert xfs.pi_root(check=True, pis=upgrade, **common)['changed'] is True
    assert {s: os.stat(xfs.roots / (s + '.img')).st_ino for s in PIS} == before
    done = xfs.pi_root(pis=[*upgrade, pis[2]], **common)
    assert [(p['action'], p['label'], (p['previous'] or {}).get('label')) for p in done['pis']] == [
        ('rebuilt', 'bw@2', 'bw@1'), ('rebuilt', 'bw@2', 'bw@1'), ('unchanged', 'bw@1', None)], done
    for index, serial in enumerate(PIS[:2]):
        assert os.stat(xfs.roots / (serial + '.prev.img')).st_ino == before[serial]  # kept as the Pi left it
        assert (roots[index] / 'etc/generation').read_text() == '2\n' and identity(roots[index]) == identities[index]
        assert '%s/boot-nfs /boot' % xfs.gen(2) in (roots[index] / 'etc/fstab').read_text()
        assert_pairs(xfs.roots, serial)
    assert xfs.mounted() == [str(root) for root in roots]  # previous roots are not mounted
    assert str(xfs.gen(2) / 'boot-nfs') in mounts_below(xfs.store)
    served = xfs.pi_boot(done['pis'])
    assert [served[s]['dirs'][1] for s in PIS] == [str(xfs.gen(2) / 'boot')] * 2 + [str(xfs.gen(1) / 'boot')]
    assert xfs.pi_root(pis=pis, **common)['changed'] is False

    back = xfs.pi_root(pis=[dict(pis[0], state='rolledback'), dict(pis[2], state='rolledback')], **common)
    assert back.get('failed') and [f['serial'] for f in back['failed_pis']] == [PIS[2]], back
    assert 'has no previous root to roll back to' in back['failed_pis'][0]['msg']
    rolled = back['pis'][0]
    assert (rolled['action'], rolled['label'], rolled['previous']['label']) == ('rolledback', 'bw@1', 'bw@2')
    assert (roots[0] / 'home/pi/work.txt').read_text() == 'made on generation 1\n'
    assert identity(roots[0]) == identities[0] and not (roots[0] / 'etc/generation').exists()
    assert_pairs(xfs.roots, PIS[0])
    again = xfs.pi_root(pis=[dict(pis[0], state='rolledback')], **common)
    assert again['changed'] is False, again
    assert xfs.pi_boot(back['pis'][:1])[PIS[0]]['dirs'][1] == str(xfs.gen(1) / 'boot')

    gone = xfs.pi_root(pis=[dict(pi, state='absent') for pi in pis])
    assert [p['action'] for p in gone['pis']] == ['removed'] * 3 and os.listdir(xfs.roots) == []


SSHD_TREE = REPO / '.build' / 'cache' / 'nspawn'


def sshd_tree():
    trees = sorted(SSHD_TREE.glob('*/usr/sbin/sshd')) if SSHD_TREE.is_dir() else []
    return trees[0].parents[2] if trees else None


@pytest.mark.skipif(sshd_tree() is None, reason='needs the lab bakery image (make molecule builds it) for its sshd')
def test_a_real_sshd_takes_the_root_host_keys_and_certificates(xfs, tmp_path):
    """sshd -t and -T of the root's own etc/ssh (config, drop-in, keys, certificates), in a private mount namespace."""
    ca = tmp_path / 'host_ca'
    subprocess.run(['ssh-keygen', '-q', '-N', '', '-t', 'ed25519', '-f', str(ca)], check=True)
    result = xfs.pi_root(serial=PIS[0], hostname='certified', host_ca=str(ca), principals=['certified', '10.99.0.51'])
    assert result['pis'][0]['host_certificate'] is True, result
    root, tree = xfs.point(PIS[0]), sshd_tree()
    script = ('mount --bind %s %s/etc/ssh && mount -t tmpfs tmpfs %s/run && mkdir -m 0755 %s/run/sshd && '
              'chroot %s /usr/sbin/sshd -t && chroot %s /usr/sbin/sshd -T' % (root / 'etc/ssh', tree, tree, tree,
                                                                              tree, tree))
    proc = subprocess.run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c', script],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0 and 'No matching private key' not in proc.stderr, proc.stderr
    shown = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith('hostcertificate ')]
    assert shown == ['/etc/ssh/ssh_host_ed25519_key-cert.pub', '/etc/ssh/ssh_host_ecdsa_key-cert.pub'], proc.stdout
    xfs.pi_root(serial=PIS[0], state='absent')


@pytest.fixture
def ext4(tmp_path, images):
    # Six roots and their six previous ones are full copies of a 293 MiB root on ext4, beside two generations:
    # the space check (overcommit 1.0) books each new root's whole size, so the file system must hold them all.
    with loop_fs(tmp_path, 'ext4', '8G') as mnt:
        bakery = Bakery(mnt)
        bakery.add(images['big'])
        bakery.add(images['big'], {'etc/generation': '2\n'})
        try:
            yield bakery
        finally:
            release_mounts(mnt)


def kill_when(proc, ready, what, timeout=300):
    """SIGKILL ``proc`` as soon as ``ready()`` (polled without sleeping: some windows last milliseconds)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            pass
        proc.kill()
    finally:
        proc.wait()
    said = proc.stdout.read() if proc.stdout else ''
    assert proc.returncode == -9, '%s finished before it could be killed: %s' % (what, said[-3000:])


def journals(roots):
    return [name for name in os.listdir(roots) if name.endswith('.swap.json')] if roots.exists() else []


def moved(roots, serials, generation):
    """After the next run: whole pairs everywhere; each Pi on ``generation`` or still on its old root."""
    states = {}
    for serial in serials:
        marker, previous = assert_pairs(roots, serial)
        states[serial] = (marker['generation'], previous and previous['generation'])
    assert set(states.values()) <= {(1, None), (generation, 1), (1, 2)}, states
    return states


@pytest.mark.parametrize('moment', ['cloning', 'journal'])
def test_sigkill_mid_rebuild_leaves_whole_pairs(ext4, moment):
    pis = [{'serial': '6f%06x' % index} for index in range(6)]
    first = ext4.pi_root(pis=pis, generation=1, clone_method='copy')
    assert not first.get('failed'), first
    upgrade = [dict(pi, state='rebuilt', generation=2) for pi in pis]
    argv = module_argv('pi_root', ext4.args(pis=upgrade, clone_method='copy'))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if moment == 'cloning':  # the third Pi's new root is being copied: two are rebuilt, the rest are not
        kill_when(proc, lambda: os.path.exists(ext4.roots / '6f000001.prev.img') and any(
            n.startswith('.pifleet-tmp-6f000002') for n in os.listdir(ext4.roots)), 'the rebuild')
    else:  # in the middle of a move: its journal is there
        kill_when(proc, lambda: journals(ext4.roots), 'the rebuild')
        assert journals(ext4.roots), 'killed while moving a root'
    again = ext4.pi_root(pis=pis, clone_method='copy')  # the next run, whatever it is, puts the roots in order
    assert not again.get('failed'), again
    states = moved(ext4.roots, [pi['serial'] for pi in pis], 2)
    assert (1, None) in states.values(), states  # the Pis after the kill were left as they were
    if moment == 'cloning':
        assert list(states.values())[:3] == [(2, 1), (2, 1), (1, None)], states
    else:
        assert 'put in order' in json.dumps(again['warnings'])
    assert ext4.mounted() == sorted(str(ext4.point(pi['serial'])) for pi in pis)
    for pi in pis:  # each mounted root is the one its marker names
        marker, _previous = assert_pairs(ext4.roots, pi['serial'])
        gen2 = (ext4.point(pi['serial']) / 'etc/generation').exists()
        assert gen2 is (marker['generation'] == 2), pi
    removed = ext4.pi_root(pis=[dict(pi, state='absent') for pi in pis])
    assert not removed.get('failed') and os.listdir(ext4.roots) == []
    assert loops_backed_by(ext4.mnt) == [] and ext4.mounts_inside() == []  # nothing of the killed run either


def test_sigkill_mid_rollback_leaves_whole_pairs(ext4):
    pis = [{'serial': '6d%06x' % index} for index in range(6)]
    ext4.pi_root(pis=pis, generation=1, clone_method='copy')
    done = ext4.pi_root(pis=[dict(pi, state='rebuilt', generation=2) for pi in pis], clone_method='copy')
    assert not done.get('failed'), done
    argv = module_argv('pi_root', ext4.args(pis=[dict(pi, state='rolledback') for pi in pis]))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_when(proc, lambda: journals(ext4.roots) and any(
        json.loads((ext4.roots / (pi['serial'] + '.json')).read_text()).get('rolled_back') for pi in pis[:1]),
        'the rollback')
    again = ext4.pi_root(pis=[dict(pi, state='rolledback') for pi in pis])  # the rollback asked again
    assert not again.get('failed'), again
    states = moved(ext4.roots, [pi['serial'] for pi in pis], 2)
    assert set(states.values()) == {(1, 2)}, states  # every Pi rolled back exactly once
    assert ext4.pi_root(pis=[dict(pi, state='rolledback') for pi in pis])['changed'] is False
    assert not any((ext4.point(pi['serial']) / 'etc/generation').exists() for pi in pis)
    ext4.pi_root(pis=[dict(pi, state='absent') for pi in pis])
    assert os.listdir(ext4.roots) == []
    assert loops_backed_by(ext4.mnt) == [] and ext4.mounts_inside() == []  # nothing of the killed run either
