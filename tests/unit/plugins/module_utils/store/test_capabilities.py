# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a root can do for a netboot (store.capabilities), read from real small trees: each tree as a directory
(TreeView, through confined.Tree) and as the ext4 file system mke2fs -d makes of it (DebugfsView, the real
debugfs, which is how bakeform reads a golden root); then the decisions and messages made of a record, and the
real Raspberry Pi OS-like images of the lab when they are in the machine's cache."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.store import capabilities as caps

HAVE_TOOLS = bool(shutil.which('mke2fs') and shutil.which('debugfs'))
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason='needs mke2fs and debugfs (e2fsprogs)')


def run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def status(*packages):
    return '\n'.join('Package: %s\nStatus: install ok installed\nVersion: 1.%d\nDescription: x\n more text\n'
                     % (name, number) for number, name in enumerate(packages))


# Bookworm-like: merged /usr (sbin and bin are links), nfs-common, dhcpcd's service, initramfs-tools with klibc.
BOOKWORM = {
    'usr/sbin/mount.nfs': '', 'usr/sbin/dhcpcd': '', 'usr/lib/systemd/system/dhcpcd.service': '',
    'usr/share/initramfs-tools/scripts/nfs': '', 'usr/lib/klibc/bin/nfsmount': '',
    'var/lib/dpkg/status': status('nfs-common', 'dhcpcd5', 'initramfs-tools', 'klibc-utils', 'bash'),
    '@sbin': 'usr/sbin', '@bin': 'usr/bin',
}
# Trixie Lite as shipped first: no nfs-common; cloud-init, NetworkManager, netplan; dhcpcd's program, not its service.
TRIXIE_LITE = {
    'usr/bin/cloud-init': '', 'etc/cloud/cloud.cfg': '', 'usr/sbin/NetworkManager': '', 'usr/sbin/dhcpcd': '',
    'usr/lib/systemd/system/NetworkManager.service': '', 'usr/sbin/netplan': '',
    'usr/share/initramfs-tools/scripts/nfs': '', 'usr/lib/klibc/bin/nfsmount': '',
    'var/lib/dpkg/status': status('cloud-init', 'network-manager', 'netplan.io', 'dhcpcd-base') + '\n'
    'Package: nfs-common\nStatus: deinstall ok config-files\nVersion: 1:2.8.3-1\n',
    '@sbin': 'usr/sbin', '@bin': 'usr/bin',
}
# An older layout: /sbin a directory of its own.
SPLIT = {'sbin/mount.nfs': '', 'bin/cloud-init': '', 'lib/systemd/system/dhcpcd.service': ''}
DRACUT = {'usr/sbin/mount.nfs': '', 'usr/lib/dracut/modules.d/90kernel-modules/module-setup.sh': ''}
DRACUT_NFS = dict(DRACUT, **{'usr/lib/dracut/modules.d/95nfs/module-setup.sh': ''})
EMPTY = {'etc/hostname': 'x\n'}

CASES = {
    'bookworm': (BOOKWORM, ['kernel8.img', 'initramfs8'], {
        'mount_nfs': True, 'cloud_init': False, 'network_manager': False, 'dhcpcd': True, 'netplan': False,
        'initramfs': {'generator': 'initramfs-tools', 'nfs': True, 'tool': 'klibc nfsmount (NFS v2/v3, no proto=)',
                      'files': ['initramfs8']},
        'packages': {'nfs-common': '1.0', 'dhcpcd5': '1.1', 'initramfs-tools': '1.2', 'klibc-utils': '1.3'}}),
    'trixie-lite': (TRIXIE_LITE, ['kernel8.img', 'initramfs8', 'initramfs_2712'], {
        'mount_nfs': False, 'cloud_init': True, 'network_manager': True, 'dhcpcd': False, 'netplan': True,
        'initramfs': {'generator': 'initramfs-tools', 'nfs': True, 'tool': 'klibc nfsmount (NFS v2/v3, no proto=)',
                      'files': ['initramfs8', 'initramfs_2712']},
        'packages': {'cloud-init': '1.0', 'network-manager': '1.1', 'netplan.io': '1.2'}}),
    'split-usr': (SPLIT, [], {
        'mount_nfs': True, 'cloud_init': True, 'network_manager': False, 'dhcpcd': True, 'netplan': False,
        'initramfs': {'generator': None, 'nfs': None, 'tool': None, 'files': []}, 'packages': {}}),
    'dracut': (DRACUT, ['initramfs8'], {
        'mount_nfs': True, 'cloud_init': False, 'network_manager': False, 'dhcpcd': False, 'netplan': False,
        'initramfs': {'generator': 'dracut', 'nfs': False, 'tool': None, 'files': ['initramfs8']}, 'packages': {}}),
    'dracut-nfs': (DRACUT_NFS, ['initramfs8'], {
        'mount_nfs': True, 'cloud_init': False, 'network_manager': False, 'dhcpcd': False, 'netplan': False,
        'initramfs': {'generator': 'dracut', 'nfs': True, 'tool': 'dracut nfs module', 'files': ['initramfs8']},
        'packages': {}}),
    'empty': (EMPTY, [], {
        'mount_nfs': False, 'cloud_init': False, 'network_manager': False, 'dhcpcd': False, 'netplan': False,
        'initramfs': {'generator': None, 'nfs': None, 'tool': None, 'files': []}, 'packages': {}}),
}


def make_tree(top, files):
    """A root tree from {path: text}; '@name' entries are symlinks (name -> target)."""
    top.mkdir()
    for rel, text in files.items():
        if rel.startswith('@'):
            continue
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text(text)
    for rel, target in files.items():
        if rel.startswith('@'):
            os.symlink(target, top / rel[1:])
    return top


def make_image(tmp_path, files):
    tree = make_tree(tmp_path / 'tree', files)
    image = tmp_path / 'root.img'
    subprocess.run(['mke2fs', '-q', '-F', '-t', 'ext4', '-d', str(tree), str(image), '16M'], check=True,
                   capture_output=True)
    return tree, image


@needs_tools
@pytest.mark.parametrize('case', sorted(CASES))
def test_a_root_is_read_the_same_from_its_image_and_from_its_tree(tmp_path, case):
    files, boot_files, expected = CASES[case]
    tree, image = make_image(tmp_path, files)
    from_image = caps.detect_image(run, str(image), boot_files)
    assert from_image == dict(expected, version=caps.VERSION)
    assert caps.detect_dir(str(tree), boot_files) == from_image
    assert sorted(os.listdir(tmp_path)) == ['root.img', 'tree']  # debugfs's command file is gone


@needs_tools
def test_what_is_not_an_ext4_file_system_is_an_error_not_an_empty_root(tmp_path):
    """A root debugfs cannot open must not read as one that lacks everything (every Pi would be refused)."""
    junk = tmp_path / 'root.img'
    junk.write_bytes(b'\0' * 65536)
    with pytest.raises(OSError, match='debugfs could not read the file system in'):
        caps.detect_image(run, str(junk))
    assert os.listdir(tmp_path) == ['root.img']


def test_listings_are_read_per_command_and_a_missing_directory_has_none():
    out = ('debugfs: ls -p /\n/2/040755/0/0/.//\n/2/040755/0/0/..//\n/12/040755/0/0/usr//\n\n'
           'debugfs: ls -p /usr/sbin/\n/19/040755/0/0/.//\n/14/040755/0/0/..//\n/20/104755/0/0/mount.nfs/2/\n'
           '/21/120777/0/0/mount.nfs4/9/\nnot an entry\n\n'
           'debugfs: ls -p /etc/cloud/\n'
           'debugfs: ls -p /etc/netplan/\n/30/040755/0/0/.//\n/14/040755/0/0/..//\n')
    assert caps.parse_listings(out) == {'': frozenset({'usr'}), 'usr/sbin': frozenset({'mount.nfs', 'mount.nfs4'}),
                                        'etc/netplan': frozenset()}


LACKS_ALL = {'version': 1, 'mount_nfs': False, 'cloud_init': False, 'network_manager': False, 'dhcpcd': False,
             'netplan': False, 'packages': {},
             'initramfs': {'generator': 'dracut', 'nfs': False, 'tool': None, 'files': ['initramfs8']}}


@pytest.mark.parametrize(('item', 'needs'), [
    ({}, ['initramfs_nfs']),
    ({'boot_mount': 'none', 'cloud_init': None}, ['initramfs_nfs']),
    ({'boot_mount': 'nfs'}, ['initramfs_nfs', 'mount_nfs']),
    ({'cloud_init': {'user_data': {'packages': ['htop']}, 'instance': None}}, ['initramfs_nfs', 'cloud_init']),
    ({'cloud_init': {'user_data': None, 'instance': '2'}}, ['initramfs_nfs', 'cloud_init']),
    ({'cloud_init': {'user_data': None, 'instance': None}}, ['initramfs_nfs']),
])
def test_what_a_pis_settings_need(item, needs):
    assert caps.needs_of(item) == needs


def test_what_an_image_lacks_is_said_with_the_package_and_how_to_add_it():
    found = dict(caps.lacking(LACKS_ALL, ['initramfs_nfs', 'mount_nfs', 'cloud_init'], 'trixie-lite@2'))
    assert sorted(found) == ['cloud_init', 'initramfs_nfs', 'mount_nfs']
    assert found['mount_nfs'].startswith('the image of bakeform trixie-lite@2 has no mount.nfs (package nfs-common)')
    assert 'add nfs-common to the image' in found['mount_nfs'] and 'pifleet_boot_mount: none' in found['mount_nfs']
    assert 'has no cloud-init' in found['cloud_init'] and 'pi_cloud_init' in found['cloud_init']
    assert 'dracut-network' in found['initramfs_nfs']
    assert caps.summary(LACKS_ALL) == 'no mount.nfs, no cloud-init, no NFS in its initramfs'


@pytest.mark.parametrize(('record', 'lacking', 'summary'), [
    (None, [], 'not recorded'),  # a manifest made before the record: unknown, never refused
    ({'mount_nfs': False}, [], 'not recorded'),  # no version: not a record this code knows
    (dict(LACKS_ALL, version=2), [], 'not recorded'),
    (dict(LACKS_ALL, mount_nfs=True, cloud_init=True), ['initramfs_nfs'], 'no NFS in its initramfs'),
    # A kernel without an initramfs mounts its NFS root itself; an unknown generator is not refused either.
    (dict(LACKS_ALL, initramfs={'generator': 'dracut', 'nfs': False, 'tool': None, 'files': []}),
     ['mount_nfs', 'cloud_init'], 'no mount.nfs, no cloud-init'),
    (dict(LACKS_ALL, mount_nfs=True, initramfs={'generator': None, 'nfs': None, 'tool': None,
                                                'files': ['initramfs8']}), ['cloud_init'], 'no cloud-init'),
])
def test_only_a_known_record_refuses(record, lacking, summary):
    assert [need for need, _msg in caps.lacking(record, ['initramfs_nfs', 'mount_nfs', 'cloud_init'], 'x@1')] \
        == lacking
    assert caps.summary(record) == summary


def test_dpkg_status_counts_installed_packages_only():
    text = status('nfs-common', 'cloud-init') + '\nPackage: dracut\nStatus: deinstall ok config-files\nVersion: 1\n'
    assert caps.installed(text) == {'nfs-common': '1.0', 'cloud-init': '1.1'}
    assert caps.installed(None) == {} and caps.installed('garbage\n\n:::') == {}


# The lab's real Raspberry Pi OS-like arm64 images (lab/realimage.py), read in place when the machine has them:
# their root partition starts where their .json says; debugfs reads it at that offset (nothing is mounted).
REAL = os.environ.get('PIFLEET_IMAGE_CACHE', '/var/cache/pifleet/realimage')
REAL_EXPECTED = {
    'bookworm': {'mount_nfs': True, 'cloud_init': False, 'network_manager': False, 'dhcpcd': True, 'netplan': False},
    'trixie': {'mount_nfs': True, 'cloud_init': True, 'network_manager': True, 'dhcpcd': False, 'netplan': True},
}
REAL_SUMMARY = {'bookworm': 'no cloud-init', 'trixie': 'nothing missing'}


def real_images():
    found = []
    for flavour in sorted(REAL_EXPECTED):
        for path in sorted(glob.glob(os.path.join(REAL, '%s-*.json' % flavour))):
            name = os.path.basename(path)
            if re.fullmatch(r'%s-[0-9a-f]+\.json' % flavour, name) and os.path.isfile(path[:-5] + '.img'):
                found.append(pytest.param(flavour, path, id=flavour))
                break
    return found or [pytest.param(None, None, marks=pytest.mark.skip(reason='no real image in %s' % REAL))]


@needs_tools
@pytest.mark.parametrize(('flavour', 'described'), real_images())
def test_the_labs_real_images_are_read_as_built(tmp_path, flavour, described):
    with open(described, encoding='utf-8') as handle:
        info = json.load(handle)
    image = '%s?offset=%d' % (described[:-5] + '.img', info['root_offset'])
    record = caps.detect_image(run, image, info['boot_files'], workdir=str(tmp_path))  # the cache is not ours
    assert {key: record[key] for key in REAL_EXPECTED[flavour]} == REAL_EXPECTED[flavour]
    assert record['initramfs'] == {'generator': 'initramfs-tools', 'nfs': True,
                                   'tool': 'klibc nfsmount (NFS v2/v3, no proto=)', 'files': [info['initramfs']]}
    assert 'nfs-common' in record['packages'] and caps.summary(record) == REAL_SUMMARY[flavour]
