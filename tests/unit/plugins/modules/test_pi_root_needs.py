# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_root's main() refuses, per Pi and before anything is made, a Pi whose settings need what its generation's
image lacks (its manifest's record, read from the image as bakeform reads it). Nothing here mounts: the refusal
comes in the plan, so the roots directory stays empty. Roots actually built beside a refused Pi, and a live root
that got the package since, are in tests/integration/test_capabilities.py."""

from __future__ import annotations

import os
import shutil

import pytest
from genstore import make_generation

from ansible_collections.pifleet.netboot.plugins.module_utils.store.capabilities import NEEDS
from ansible_collections.pifleet.netboot.plugins.modules import pi_root

pytestmark = pytest.mark.skipif(not (shutil.which('mke2fs') and shutil.which('debugfs')),
                                reason='needs mke2fs and debugfs (e2fsprogs)')

LITE = {'etc/hostname': 'raspberrypi\n', 'etc/fstab': 'proc /proc proc defaults 0 0\n'}  # no nfs-common, no cloud-init


@pytest.fixture
def lab(tmp_path):
    (tmp_path / 'store').mkdir()
    make_generation(tmp_path / 'store', 'lite', LITE, 'a' * 64, capabilities=True)
    return tmp_path


def test_each_pi_needing_what_the_image_lacks_fails_alone_with_the_fix(run_module, lab):
    pis = [{'serial': '0000000a', 'boot_mount': 'nfs', 'nfs_server': '10.99.0.2'},
           {'serial': '0000000b', 'cloud_init': {'user_data': '{"packages": ["htop"]}'}}]
    for check_mode in (True, False):
        result = run_module(pi_root.main, {
            'pis': pis, 'bakeform': 'lite', 'store': str(lab / 'store'), 'roots_dir': str(lab / 'roots'),
            'units_dir': str(lab / 'units'), 'lock_file': str(lab / 'pifleet.lock'), 'allow_root_filesystem': True},
            check_mode=check_mode)
        assert result.failed and result.result['changed'] is False, result.result
        failed = {pi['serial']: pi['msg'] for pi in result.result['failed_pis']}
        assert sorted(failed) == ['0000000a', '0000000b']
        assert failed['0000000a'] == 'root of Pi 0000000a: the image of bakeform lite@1 %s' % NEEDS['mount_nfs']
        assert 'has no cloud-init' in failed['0000000b'] and 'htop' not in failed['0000000b']
        assert result.result['msg'].startswith('pi_root failed for 2 Pi(s): ')
    assert os.listdir(lab / 'roots') == []  # made (0700) by the real run, with nothing in it
