# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_root's main(): arguments, duplicates, check mode and a plain-copy lifecycle on a store made by hand.

Clones on real XFS, ext4 and btrfs file systems are in tests/integration/test_pi_root.py.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from ansible.module_utils.common.warnings import get_warning_messages

from ansible_collections.pifleet.netboot.plugins.modules import pi_root

SHA = 'c' * 64
FSTAB = 'proc /proc proc defaults 0 0\nPARTUUID=5a1e0c3d-01 /boot/firmware vfat defaults 0 2\n' \
        'PARTUUID=5a1e0c3d-02 / ext4 defaults,noatime 0 1\n'


@pytest.fixture
def lab(tmp_path):
    """A store holding bakeform 'bw' (a small golden root made by hand) and an empty roots dir path."""
    golden = tmp_path / 'store' / 'bw' / 'root'
    for rel, text in (('etc/fstab', FSTAB), ('etc/hostname', 'raspberrypi\n'),
                      ('etc/hosts', '127.0.1.1\traspberrypi\n'), ('etc/machine-id', 'a' * 32 + '\n'),
                      ('home/pi/.profile', 'x\n')):
        (golden / rel).parent.mkdir(parents=True, exist_ok=True)
        (golden / rel).write_text(text)
    (golden / 'boot/firmware').mkdir(parents=True)
    (tmp_path / 'store/bw/boot').mkdir()
    (tmp_path / 'store/bw/manifest.json').write_text(json.dumps({'name': 'bw', 'sha256': SHA}))
    return tmp_path


def args(lab, **extra):
    return dict({'bakeform': 'bw', 'store': str(lab / 'store'), 'roots_dir': str(lab / 'roots')}, **extra)


INVALID = [
    ({}, 'one of the following is required: serial, pis'),
    ({'serial': '3a4b5c6d', 'pis': [{'serial': '01020304'}]}, 'mutually exclusive'),
    ({'serial': 'xyz'}, "invalid serial: serial 'xyz' is not a Pi serial"),
    ({'serial': '3a4b5c6d', 'hostname': 'Bad_Name'}, "hostname 'Bad_Name' is not valid"),
    ({'serial': '3a4b5c6d', 'boot_mount': 'nfs'}, 'boot_mount is nfs but all of the following are missing: nfs_server'),
    ({'pis': [{'serial': '3a4b5c6d', 'boot_mount': 'nfs'}]}, 'nfs_server is not set for Pi 3a4b5c6d'),
    ({'pis': [{'serial': '3a4b5c6d'}, {'serial': '100000003A4B5C6D'}]}, 'duplicate serials in pis: 3a4b5c6d'),
    ({'pis': [{'serial': '3a4b5c6d', 'hostname': 'pi'}, {'serial': '01020304', 'hostname': 'pi'}]},
     'duplicate hostnames in pis: pi'),
    ({'serial': '3a4b5c6d', 'bakeform': None}, 'no bakeform for Pi 3a4b5c6d'),
    ({'serial': '3a4b5c6d', 'bakeform': '../etc'}, "bakeform name '../etc' is not valid"),
    ({'serial': '3a4b5c6d', 'bakeform': 'missing'}, 'bakeform missing not found for Pi 3a4b5c6d'),
    ({'serial': '3a4b5c6d', 'clone_method': 'zfs'}, 'value of clone_method must be one of'),
]


@pytest.mark.parametrize(('extra', 'message'), INVALID)
def test_invalid_arguments_fail_clearly(run_module, lab, extra, message):
    result = run_module(pi_root.main, args(lab, **extra))
    assert result.failed, result.result
    assert message in result.result['msg']
    assert not (lab / 'roots').exists()


def test_missing_bakeform_tells_how_to_fix(run_module, lab):
    result = run_module(pi_root.main, args(lab, serial='3a4b5c6d', bakeform='trixie'))
    assert result.failed
    assert str(lab / 'store' / 'trixie') in result.result['msg']
    assert 'pifleet.netboot.bakeform' in result.result['msg']


def test_check_mode_reports_and_writes_nothing(run_module, lab):
    result = run_module(pi_root.main, args(lab, pis=[{'serial': '3a4b5c6d', 'hostname': 'kitchen'},
                                                     {'serial': '100000000badcafe'}]), check_mode=True, diff=True)
    assert not result.failed, result.result
    assert result.result['changed'] is True
    pis = result.result['pis']
    assert [(p['serial'], p['hostname'], p['action'], p['changed']) for p in pis] == [
        ('3a4b5c6d', 'kitchen', 'cloned', True), ('0badcafe', 'pi-0badcafe', 'cloned', True)]
    assert pis[0]['path'] == str(lab / 'roots' / '3a4b5c6d')
    diffs = {d['after_header']: d for d in result.result['diff']}
    root = str(lab / 'roots' / '3a4b5c6d')
    assert diffs[root + '/etc/fstab']['before'] == FSTAB
    assert diffs[root + '/etc/fstab']['after'] == 'proc /proc proc defaults 0 0\n'
    assert diffs[root + '/etc/hostname']['after'] == 'kitchen\n'
    marker = json.loads(diffs[root + '/.pifleet.json']['after'])
    assert marker['bakeform_sha256'] == SHA and marker['hostname'] == 'kitchen'
    assert not (lab / 'roots').exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ssh-keygen'), reason='needs root and ssh-keygen')
def test_copy_lifecycle(run_module, lab):
    base = args(lab, serial='3a4b5c6d', hostname='kitchen', clone_method='copy')
    first = run_module(pi_root.main, base).result
    assert first['changed'] and first['pis'][0]['action'] == 'cloned' and first['pis'][0]['clone_method'] == 'copy'
    root = lab / 'roots' / '3a4b5c6d'
    assert (root / 'etc/hostname').read_text() == 'kitchen\n'
    assert (root / 'home/pi/.profile').read_text() == 'x\n'
    assert os.listdir(lab / 'roots') == ['3a4b5c6d']  # no scratch directory left

    assert run_module(pi_root.main, base).result['changed'] is False
    renamed = run_module(pi_root.main, dict(base, hostname='garage'), check_mode=True).result
    assert renamed['changed'] and (root / 'etc/hostname').read_text() == 'kitchen\n'
    renamed = run_module(pi_root.main, dict(base, hostname='garage')).result
    assert renamed['pis'][0]['action'] == 'fixed' and (root / 'etc/hostname').read_text() == 'garage\n'

    manifest = lab / 'store/bw/manifest.json'
    manifest.write_text(json.dumps({'name': 'bw', 'sha256': 'd' * 64}))
    drift = run_module(pi_root.main, dict(base, hostname='garage')).result
    assert drift['changed'] is False and drift['pis'][0]['drift'] is True
    assert any('use state: rebuilt' in w for w in get_warning_messages())

    (root / 'etc/hostname').unlink()
    os.unlink(root / '.pifleet.json')
    foreign = run_module(pi_root.main, base)
    assert foreign.failed and 'has no .pifleet.json' in foreign.result['msg']

    gone = run_module(pi_root.main, dict(base, state='absent')).result
    assert gone['changed'] and gone['pis'][0]['action'] == 'removed'
    assert os.listdir(lab / 'roots') == []
    assert run_module(pi_root.main, dict(base, state='absent')).result['changed'] is False


def test_absent_refuses_a_link_leading_out(run_module, lab):
    (lab / 'roots').mkdir()
    victim = lab / 'victim'
    victim.mkdir()
    os.symlink(str(victim), lab / 'roots' / '3a4b5c6d')
    result = run_module(pi_root.main, args(lab, serial='3a4b5c6d', state='absent'))
    assert result.failed and 'outside' in result.result['msg']
    assert victim.is_dir() and os.path.islink(lab / 'roots' / '3a4b5c6d')
