# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an image's root can do for a netboot, end to end, as root on an ext4 loop file system: real images that
lack nfs-common (as Raspberry Pi OS Trixie Lite first shipped), cloud-init or an initramfs that mounts NFS are
ingested by bakeform, whose manifests say so; pi_root then refuses each Pi whose settings need what its image
lacks, alone and with the package to add, and builds the others. A live root that got the package since is not
refused; a capture of it records what it has; a manifest from before the record is not checked (a warning says
so)."""

from __future__ import annotations

import json
from os.path import exists as os_path_exists

import pytest
from fstree import loop_fs, release_mounts
from modrun import run_module

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import Layout
from ansible_collections.pifleet.netboot.plugins.module_utils.store.capabilities import NEEDS
from lab.piimage import build_image

USER_DATA = json.dumps({'packages': ['htop']})


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    top = tmp_path_factory.mktemp('capabilities')
    images = {
        # Trixie Lite as first shipped: cloud-init, NetworkManager, initramfs-tools, no nfs-common.
        'lite': build_image(top / 'lite.img.xz', seed=61, models=(4,),
                            packages=('cloud-init', 'network-manager', 'initramfs-tools')),
        # Bookworm Lite-like: nfs-common and dhcpcd, no cloud-init.
        'bookworm': build_image(top / 'bookworm.img.xz', seed=62, models=(4,),
                                packages=('nfs-common', 'dhcpcd', 'initramfs-tools')),
        # An image whose initramfs (initramfs8 among its boot files) is dracut's, without the nfs module.
        'dracut': build_image(top / 'dracut.img.xz', seed=63, models=(4, 5), profile='realistic', root_files=10,
                              root_mb=1, packages=('nfs-common', 'dracut')),
    }
    with loop_fs(top, 'ext4') as mnt:
        try:
            yield {'top': top, 'mnt': mnt, 'images': images, 'store': mnt / 'store', 'roots': mnt / 'roots',
                   'units': mnt / 'units', 'lock': str(mnt / 'run' / 'pifleet.lock')}
        finally:
            release_mounts(mnt)


def bakeform(lab, name, **extra):
    result = run_module('bakeform', dict({'name': name, 'store': str(lab['store']), 'lock_file': lab['lock'],
                                          'roots_dir': str(lab['roots']), 'units_dir': str(lab['units'])}, **extra))
    assert not result.get('failed'), result
    return result


def pi_root(lab, pis, check=False):
    return run_module('pi_root', {'pis': pis, 'store': str(lab['store']), 'roots_dir': str(lab['roots']),
                                  'units_dir': str(lab['units']), 'lock_file': lab['lock'], 'nfs_server': '10.99.0.2',
                                  'clone_method': 'copy'}, check=check)


def test_manifests_record_what_each_root_can_do(lab):
    records = {name: bakeform(lab, name, src=image['path'])['manifest']['capabilities']
               for name, image in lab['images'].items()}
    lite, bookworm, dracut = records['lite'], records['bookworm'], records['dracut']
    assert (lite['mount_nfs'], lite['cloud_init'], lite['network_manager'], lite['dhcpcd']) == (
        False, True, True, False)
    assert lite['initramfs'] == {'generator': 'initramfs-tools', 'nfs': True,
                                 'tool': 'klibc nfsmount (NFS v2/v3, no proto=)', 'files': []}
    assert sorted(lite['packages']) == ['cloud-init', 'initramfs-tools', 'network-manager']
    assert (bookworm['mount_nfs'], bookworm['cloud_init'], bookworm['dhcpcd']) == (True, False, True)
    assert dracut['initramfs'] == {'generator': 'dracut', 'nfs': False, 'tool': None,
                                   'files': ['initramfs8', 'initramfs_2712']}
    stored = json.loads((lab['store'] / 'lite' / 'generations' / '1' / 'manifest.json').read_text())
    assert stored['capabilities'] == lite


def test_each_pi_needing_what_its_image_lacks_is_refused_alone(lab):
    pis = [
        {'serial': '0000000a', 'bakeform': 'lite', 'boot_mount': 'nfs'},  # refused: no mount.nfs
        {'serial': '0000000b', 'bakeform': 'lite', 'boot_mount': 'none', 'cloud_init': {'user_data': USER_DATA}},
        {'serial': '0000000c', 'bakeform': 'bookworm', 'boot_mount': 'nfs'},
        {'serial': '0000000d', 'bakeform': 'bookworm', 'cloud_init': {'instance': '2'}},  # refused: no cloud-init
        {'serial': '0000000e', 'bakeform': 'dracut'},  # refused: its initramfs cannot mount the NFS root
    ]
    for check in (True, False):
        result = pi_root(lab, pis, check=check)
        assert result['failed'], result
        failed = {pi['serial']: pi['msg'] for pi in result['failed_pis']}
        assert sorted(failed) == ['0000000a', '0000000d', '0000000e'], result
        assert failed['0000000a'] == 'root of Pi 0000000a: the image of bakeform lite@1 %s' % NEEDS['mount_nfs']
        assert failed['0000000d'] == 'root of Pi 0000000d: the image of bakeform bookworm@1 %s' % NEEDS['cloud_init']
        assert failed['0000000e'] == 'root of Pi 0000000e: the image of bakeform dracut@1 %s' % NEEDS['initramfs_nfs']
        built = {pi['serial']: pi['action'] for pi in result['pis'] if pi['action'] != 'failed'}
        assert built == {'0000000b': 'cloned', '0000000c': 'cloned'}, result
        assert 'has no record' not in json.dumps(result.get('warnings', []))  # 2.19: warnings are objects
    for serial in ('0000000a', '0000000d', '0000000e'):
        layout = Layout(str(lab['roots']), serial)
        assert not os_path_exists(layout.image) and not os_path_exists(layout.marker)
    lite_root = lab['roots'] / 'mnt' / '0000000b'
    assert (lite_root / 'var/lib/cloud/seed/nocloud/user-data').is_file()  # its cloud-init settings went in
    fstab = (lab['roots'] / 'mnt' / '0000000c' / 'etc/fstab').read_text()
    assert ' /boot/firmware nfs ro,vers=3,nolock 0 0' in fstab


def test_a_live_root_that_got_the_package_since_is_taken(lab):
    """Pi b's root (image without nfs-common) is asked to mount its boot files: refused, until its owner installs
    nfs-common on the Pi (here: its mount.nfs appears in the live root); then it gets the NFS line."""
    asked = [{'serial': '0000000b', 'bakeform': 'lite', 'boot_mount': 'nfs', 'cloud_init': {'user_data': USER_DATA}}]
    refused = pi_root(lab, asked)
    assert refused['failed'] and 'has no mount.nfs' in refused['failed_pis'][0]['msg'], refused
    root = lab['roots'] / 'mnt' / '0000000b'
    assert ' nfs ' not in (root / 'etc/fstab').read_text()  # kept as it was
    (root / 'usr/sbin/mount.nfs').write_text('#!/bin/sh\n')  # what apt install nfs-common leaves, for this check
    taken = pi_root(lab, asked)
    assert not taken.get('failed') and taken['pis'][0]['action'] == 'fixed', taken
    assert ' /boot/firmware nfs ro,vers=3,nolock 0 0' in (root / 'etc/fstab').read_text()

    # A capture of that root records what it has now, not what its source generation lacked.
    captured = bakeform(lab, 'lite', capture={'serial': '0000000b'})
    assert captured['manifest']['capabilities']['mount_nfs'] is True, captured['manifest']['capabilities']
    assert captured['manifest']['capabilities']['cloud_init'] is True
    new = pi_root(lab, [{'serial': '0000000f', 'bakeform': 'lite', 'generation': captured['generation'],
                         'boot_mount': 'nfs'}])
    assert not new.get('failed') and new['pis'][0]['action'] == 'cloned', new


def test_a_generation_from_before_the_record_is_not_checked_and_said_so(lab):
    manifest_path = lab['store'] / 'lite' / 'generations' / '1' / 'manifest.json'
    manifest = json.loads(manifest_path.read_text())
    del manifest['capabilities']  # as bakeform wrote it before this record
    manifest_path.write_text(json.dumps(manifest))
    result = pi_root(lab, [{'serial': '0000000a', 'bakeform': 'lite', 'generation': 1, 'boot_mount': 'nfs'}])
    assert not result.get('failed') and result['pis'][0]['action'] == 'cloned', result
    assert 'bakeform lite@1 has no record of what its root can do' in json.dumps(result['warnings']), result
    status = run_module('pi_status', {'pis': [], 'store': str(lab['store']), 'roots_dir': str(lab['roots']),
                                      'ssh': False, 'nfs_server': 'none'})
    lite = next(form for form in status['bakeforms'] if form['name'] == 'lite')
    assert [gen['netboot'] for gen in lite['generations']] == ['not recorded', 'nothing missing'], lite
