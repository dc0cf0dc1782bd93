# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Pi's settings against what its generation's image can do (pistate.rootneeds), on real generations made with
mke2fs -d whose manifests record what their roots can do as bakeform reads it (debugfs); live roots are real
directories read through confined.Tree. Nothing is mounted."""

from __future__ import annotations

import os
import shutil

import pytest
from genstore import make_generation

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import rootneeds
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import RootError
from ansible_collections.pifleet.netboot.plugins.module_utils.store.generations import Bakeform

pytestmark = pytest.mark.skipif(not (shutil.which('mke2fs') and shutil.which('debugfs')),
                                reason='needs mke2fs and debugfs (e2fsprogs)')

BASE = {'etc/hostname': 'raspberrypi\n', 'etc/fstab': 'proc /proc proc defaults 0 0\n'}
LITE = dict(BASE, **{'usr/bin/cloud-init': '', 'etc/cloud/cloud.cfg': ''})  # Trixie Lite as shipped: no nfs-common
FULL = dict(LITE, **{'usr/sbin/mount.nfs': ''})
DRACUT = dict(FULL, **{'usr/lib/dracut/modules.d/90kernel-modules/module-setup.sh': ''})


class Host:
    def __init__(self):
        self.warnings = []

    def warn(self, msg):
        self.warnings.append(msg)


@pytest.fixture
def store(tmp_path):
    top = tmp_path / 'store'
    top.mkdir()
    make_generation(top, 'lite', LITE, 'a' * 64, capabilities=True)  # lite@1
    make_generation(top, 'lite', FULL, 'b' * 64, capabilities=True)  # lite@2
    make_generation(top, 'old', BASE, 'c' * 64)  # old@1: a manifest from before the record
    make_generation(top, 'dracut', DRACUT, 'd' * 64, capabilities=True,
                    boot={'config.txt': 'auto_initramfs=1\n', 'initramfs8': 'x'})
    return top


def check(store, name, generation, needs=None, live=None, **item):
    needs = needs or rootneeds.Needs(Host())
    needs.check(dict({'serial': '3a4b5c6d', 'hostname': 'pi-1'}, **item), Bakeform(str(store), name), generation,
                live)
    return needs


def test_a_pi_whose_boot_mount_needs_mount_nfs_is_refused_on_an_image_without_it(store):
    with pytest.raises(RootError) as caught:
        check(store, 'lite', 1, boot_mount='nfs')
    msg = str(caught.value)
    assert msg.startswith('root of Pi 3a4b5c6d: the image of bakeform lite@1 has no mount.nfs (package nfs-common)')
    assert 'add nfs-common to the image' in msg and 'pifleet_boot_mount: none' in msg
    needs = check(store, 'lite', 1, boot_mount='none')  # nothing it needs is missing
    check(store, 'lite', 2, needs=needs, boot_mount='nfs')
    assert needs.host.warnings == []


def test_cloud_init_settings_on_an_image_without_cloud_init_are_refused(store):
    make_generation(store, 'base', dict(BASE, **{'usr/sbin/mount.nfs': ''}), 'e' * 64, capabilities=True)
    for cloud_init in ({'user_data': {'packages': ['htop']}, 'instance': None}, {'user_data': None, 'instance': '2'}):
        with pytest.raises(RootError, match='the image of bakeform base@1 has no cloud-init, so the settings '
                                            'pi_cloud_init and pi_cloud_init_instance'):
            check(store, 'base', 1, cloud_init=cloud_init)
    check(store, 'base', 1, boot_mount='nfs', cloud_init={'user_data': None, 'instance': None})
    check(store, 'lite', 1, cloud_init={'user_data': {'packages': ['htop']}, 'instance': None})


def test_everything_lacking_is_said_at_once(store):
    with pytest.raises(RootError) as caught:
        check(store, 'dracut', 1, boot_mount='nfs')
    assert 'dracut initramfs without its nfs module' in str(caught.value) and 'dracut-network' in str(caught.value)
    make_generation(store, 'bare', BASE, 'f' * 64, capabilities=True)
    with pytest.raises(RootError) as caught:
        check(store, 'bare', 1, boot_mount='nfs', cloud_init={'user_data': None, 'instance': '1'})
    assert 'has no mount.nfs' in str(caught.value) and '; and the image of bakeform bare@1 has no cloud-init' in str(
        caught.value)


def test_a_generation_without_the_record_is_not_checked_and_said_once(store):
    needs = check(store, 'old', 1, boot_mount='none')  # nothing its settings need could have been refused
    assert needs.host.warnings == []
    check(store, 'old', 1, needs=needs, boot_mount='nfs', cloud_init={'user_data': None, 'instance': '1'})
    check(store, 'old', 1, needs=needs, boot_mount='nfs')
    assert len(needs.host.warnings) == 1, needs.host.warnings
    assert needs.host.warnings[0].startswith('bakeform old@1 has no record of what its root can do')
    assert 'not checked' in needs.host.warnings[0]


def test_a_live_root_that_got_the_package_since_is_not_refused(store, tmp_path):
    """The image lacked nfs-common; the Pi's owner installed it on the Pi: its root has mount.nfs now. A root whose
    usr/sbin is a link elsewhere is not looked through (the Pi controls its root)."""
    live = tmp_path / 'live'
    (live / 'usr/sbin').mkdir(parents=True)
    with pytest.raises(RootError, match=r'has no mount\.nfs'):
        check(store, 'lite', 1, live=str(live), boot_mount='nfs')
    (live / 'usr/sbin/mount.nfs').write_text('')
    check(store, 'lite', 1, live=str(live), boot_mount='nfs')
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (elsewhere / 'mount.nfs').write_text('')
    shutil.rmtree(live / 'usr/sbin')
    os.symlink(str(elsewhere), live / 'usr/sbin')
    with pytest.raises(RootError, match=r'has no mount\.nfs'):
        check(store, 'lite', 1, live=str(live), boot_mount='nfs')
    with pytest.raises(RootError, match=r'has no mount\.nfs'):  # not a directory at all: the record stands
        check(store, 'lite', 1, live=str(tmp_path / 'missing'), boot_mount='nfs')
