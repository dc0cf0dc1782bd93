# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""capture: the identity taken out of a Pi's root, item by item, through a Tree of a root that lived.

The whole capture (a frozen clone of a real root image, e2fsck, mount, new UUID) is tested on real loop
files in tests/integration/test_generations.py.
"""

from __future__ import annotations

import os
import shutil

import pytest
from pilife import ROOT_KEYS, find_secrets, live_in

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError, Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import capture

if os.geteuid() != 0:
    pytest.skip('owners of a Pi root need root', allow_module_level=True)

GOLDEN_FSTAB = 'proc /proc proc defaults 0 0\n'


@pytest.fixture
def pi_root(tmp_path):
    root = tmp_path / 'root'
    (root / 'etc').mkdir(parents=True)
    (root / 'etc/fstab').write_text(GOLDEN_FSTAB)
    os.makedirs(root / 'var/lib/dbus')
    lived = live_in(str(root), '3a4b5c6d', 'capture-src-pi')
    return root, lived


def scrub(root, lived, hostname='raspberrypi'):
    with Tree(str(root)) as tree:
        changes = capture.scrub_changes(tree, hostname, {'authorized_keys_sha256': lived['authorized_keys_sha256']})
        capture.apply(tree, changes)
    return changes


def test_every_item_of_the_identity_is_taken_out(pi_root):
    root, lived = pi_root
    assert len(find_secrets(str(root), lived['secrets'])) > 20  # the fixture really holds them
    changes = scrub(root, lived)
    assert find_secrets(str(root), lived['secrets']) == []
    assert sorted({c['fix'] for c in changes}) == sorted(name for name, _what in capture.IDENTITY)
    with Tree(str(root)) as tree:  # a second look finds nothing left to do
        marker = {'authorized_keys_sha256': lived['authorized_keys_sha256']}
        assert capture.scrub_changes(tree, 'raspberrypi', marker) == []


# (relative path, what it must be afterwards: None = gone, or its exact content)
AFTER = [
    ('etc/hostname', 'raspberrypi\n'),
    ('etc/hosts', '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n127.0.1.1\traspberrypi\n'),
    ('etc/machine-id', ''),
    ('var/lib/dbus/machine-id', None),
    ('etc/ssh/ssh_host_ed25519_key', None),
    ('etc/ssh/ssh_host_ecdsa_key.pub', None),
    ('etc/ssh/ssh_host_ed25519_key-cert.pub', None),
    ('etc/ssh/sshd_config.d/pifleet-host-certificate.conf', None),
    ('var/lib/cloud/instance', None),
    ('var/lib/cloud/instances/pifleet-3a4b5c6d', None),
    ('var/lib/cloud/data/instance-id', None),
    ('var/lib/cloud/sem/config_scripts_per_once.once', None),
    ('var/lib/cloud/seed/nocloud/meta-data', None),
    ('var/lib/cloud/seed/nocloud/user-data', None),
    ('var/lib/systemd/random-seed', None),
    ('var/lib/systemd/credential.secret', None),
    ('var/log/auth.log', ''),
    ('var/log/apt/history.log', ''),
    ('var/log/wtmp', ''),
    ('var/log/auth.log.1', None),
    ('var/log/syslog.2.gz', None),
    ('root/.bash_history', None),
    ('home/pi/.bash_history', None),
    ('home/pi/.python_history', None),
    ('root/.ssh/authorized_keys', None),
    ('var/lib/dhcpcd/end0.lease', None),
    ('etc/fstab', GOLDEN_FSTAB),
    ('opt/lab/tool.sh', '#!/bin/sh\necho lab tool\n'),
    ('home/pi/notes.txt', 'calibrate the sensor\n'),
    ('etc/lab.conf', 'mode=classroom\n'),
]


@pytest.mark.parametrize(('rel', 'expected'), AFTER)
def test_after_a_scrub(pi_root, rel, expected):
    root, lived = pi_root
    scrub(root, lived)
    path = root / rel
    if expected is None:
        assert not os.path.lexists(path)
    else:
        assert path.read_text() == expected


def test_what_is_kept_keeps_its_owner_and_mode(pi_root):
    root, lived = pi_root
    before = {rel: os.lstat(root / rel) for rel in ('var/log/auth.log', 'var/log/wtmp', 'etc/machine-id', 'home/pi',
                                                    'var/log/journal', 'var/lib/cloud/instances')}
    scrub(root, lived)
    for rel, st in before.items():
        now = os.lstat(root / rel)
        assert (now.st_uid, now.st_gid, now.st_mode) == (st.st_uid, st.st_gid, st.st_mode), rel
    assert os.listdir(root / 'var/log/journal') == [] and os.listdir(root / 'var/lib/cloud/instances') == []


def test_keys_the_user_set_and_debians_machine_id_link_stay(pi_root):
    root, lived = pi_root
    (root / 'root/.ssh/authorized_keys').write_text(ROOT_KEYS + 'ssh-ed25519 AAAAmine me@lab\n')  # not pi_root's
    (root / 'var/lib/dbus/machine-id').unlink()
    (root / 'var/lib/dbus/machine-id').symlink_to('/etc/machine-id')
    scrub(root, lived)
    assert 'me@lab' in (root / 'root/.ssh/authorized_keys').read_text()
    assert os.readlink(root / 'var/lib/dbus/machine-id') == '/etc/machine-id'


@pytest.mark.parametrize('rel', ['var/log', 'home/pi', 'var/lib/cloud/instances', 'etc/ssh/sshd_config.d'])
def test_a_symlink_planted_by_the_pi_is_never_followed(pi_root, tmp_path, rel):
    root, lived = pi_root
    outside = tmp_path / 'bakery'
    outside.mkdir()
    for name in ('auth.log', '.bash_history', 'pifleet-x.conf', 'i-1'):
        (outside / name).write_text('the bakery\'s own\n')
    shutil.rmtree(root / rel)
    (root / rel).symlink_to(outside)
    scrub(root, lived)
    assert sorted(os.listdir(outside)) == ['.bash_history', 'auth.log', 'i-1', 'pifleet-x.conf']
    assert all((outside / n).read_text() == 'the bakery\'s own\n' for n in os.listdir(outside))


def test_a_symlinked_parent_is_refused(pi_root, tmp_path):
    root, lived = pi_root
    shutil.rmtree(root / 'var/lib/cloud')
    (root / 'var/lib/cloud').symlink_to(tmp_path)
    with pytest.raises(ConfinedError, match='is a symlink'):
        scrub(root, lived)


@pytest.mark.parametrize(('line', 'ours'), [
    ('10.99.0.2:/srv/pifleet/bakeforms/bw/boot-nfs /boot/firmware nfs ro,vers=3,nolock 0 0', True),
    ('10.0.0.1:/s/x/generations/3/boot-nfs /boot nfs ro,vers=3,nolock 0 0', True),
    ('nas:/export/data /data nfs ro,vers=3,nolock 0 0', False),
    ('nas:/boot /boot/firmware nfs rw,vers=4 0 0', False),
    ('proc /proc proc defaults 0 0', False),
    ('', False),
])
def test_is_boot_line(line, ours):
    assert capture.is_boot_line(line) is ours


@pytest.mark.parametrize(('out', 'rc', 'expected'), [
    ('raspberrypi\n', 0, 'raspberrypi'),
    ('lab-golden\nmore\n', 0, 'lab-golden'),
    ('', 0, 'localhost'),
    ('not a label!\n', 0, 'localhost'),
    ('raspberrypi\n', 1, 'localhost'),
])
def test_golden_hostname(out, rc, expected):
    assert capture.golden_hostname(lambda argv: (rc, out, ''), '/s/bw/generations/1/root.img') == expected
