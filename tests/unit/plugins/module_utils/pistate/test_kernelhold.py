# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel hold: the package list of a golden root, and the pin and guard tried with the host's own apt.

The apt tests run apt-get and apt-cache of this Debian host against a sandbox (its own status file, a
local repository with a newer kernel, the hold's files): no network, nothing of the host's apt state is
touched (APT_CONFIG points everything into the sandbox).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import kernelhold, rootfix

STATUS = '''Package: linux-image-6.1.0-50-arm64
Status: install ok installed
Version: 6.1.158-1
Description: Linux 6.1 for 64-bit ARMv8 machines
 The kernel and its modules.

Package: linux-image-arm64
Status: install ok installed
Version: 6.1.158-1
Depends: linux-image-6.1.0-50-arm64 (= 6.1.158-1)

Package: linux-image-6.1.0-40-arm64
Status: deinstall ok config-files
Version: 6.1.140-1

Package: linux-headers-6.1.0-50-arm64
Status: install ok installed
Version: 6.1.158-1

Package: raspberrypi-kernel
Status: install ok installed
Version: 1:1.20230405-1

Package: bash
Status: install ok installed
Version: 5.2.15-2
'''
PACKAGES = ['linux-image-6.1.0-50-arm64=6.1.158-1', 'linux-image-arm64=6.1.158-1',
            'raspberrypi-kernel=1:1.20230405-1']


def test_kernel_packages_are_the_installed_kernel_images():
    assert kernelhold.kernel_packages(STATUS) == PACKAGES  # not headers, not what was removed
    assert kernelhold.kernel_packages('') == [] and kernelhold.kernel_packages(None) == []
    assert kernelhold.kernel_packages('Package: linux-image-x\nStatus: install ok installed\nVersion: 1 2\n') == []
    names = [name for name, _version, _status in kernelhold.parse_status(STATUS)]
    assert names[:2] == ['linux-image-6.1.0-50-arm64', 'linux-image-arm64'] and len(names) == 6


def test_files_pin_each_version_first_then_nothing_else():
    files = kernelhold.files('bw@3', PACKAGES)
    assert set(files) == {kernelhold.PREFERENCES, kernelhold.APT_CONF, kernelhold.GUARD}
    pin = files[kernelhold.PREFERENCES][0]
    records = pin.split('\n\n')
    assert 'Package: linux-image-arm64\nPin: version 6.1.158-1\nPin-Priority: 990' in records[1]
    assert records[-1].endswith('Package: linux-image-* raspberrypi-kernel*\nPin: version *\nPin-Priority: -1\n')
    assert files[kernelhold.GUARD][1] == 0o755 and 'DPkg::Pre-Install-Pkgs { "/usr/local/lib/pifleet/kernel-guard"; }' \
        in files[kernelhold.APT_CONF][0]


def test_changes_land_once(tmp_path):
    (tmp_path / 'etc/apt').mkdir(parents=True)
    with Tree(str(tmp_path)) as tree:
        assert kernelhold.applies(tree)
        changes = kernelhold.changes(tree, 'bw@3', PACKAGES)
        assert len(changes) == 3
        rootfix.apply(tree, changes)
        assert kernelhold.changes(tree, 'bw@3', PACKAGES) == []
        assert len(kernelhold.changes(tree, 'bw@4', PACKAGES)) == 2  # the label is in the pin and the guard
    with Tree(str(tmp_path / 'etc')) as tree:
        assert not kernelhold.applies(tree)


def guard(tmp_path, debs, label='bw@3'):
    script = tmp_path / 'guard'
    script.write_text(kernelhold.render_guard(label, PACKAGES))
    return subprocess.run(['sh', str(script)], input=''.join(d + '\n' for d in debs), capture_output=True,
                          text=True, check=False)


def test_the_guard_refuses_other_kernels_only(tmp_path):
    archives = '/var/cache/apt/archives/'
    allowed = [archives + 'bash_5.2.15-3_arm64.deb', archives + 'linux-image-arm64_6.1.158-1_arm64.deb',
               archives + 'raspberrypi-kernel_1%3a1.20230405-1_arm64.deb', archives + 'linux-headers-x_9_arm64.deb']
    assert guard(tmp_path, allowed).returncode == 0
    assert guard(tmp_path, []).returncode == 0
    for deb in ('linux-image-6.1.0-51-arm64_6.1.160-1_arm64.deb', 'linux-image-arm64_6.1.160-1_arm64.deb',
                'raspberrypi-kernel_1%3a1.20240529-1_arm64.deb', "linux-image-x_1_a'b*.deb"):
        refused = guard(tmp_path, [archives + 'bash_5_arm64.deb', './' + deb])
        assert refused.returncode == 1, deb
        assert refused.stderr == ("E: pifleet: this Pi's kernel is served by its bakery (generation bw@3); ask for a "
                                  'new generation: capture and the upgrade playbook\n')


def apt_sandbox(top, hold=True):
    """A Debian apt sandbox: the status of a root with the generation's kernel, a repository with a newer one."""
    for folder in ('etc/apt/preferences.d', 'etc/apt/apt.conf.d', 'var/lib/apt/lists/partial',
                   'var/cache/apt/archives/partial', 'var/log/apt', 'repo'):
        (top / folder).mkdir(parents=True, exist_ok=True)
    (top / 'status').write_text('\n\n'.join(
        'Package: %s\nStatus: install ok installed\nArchitecture: all\nVersion: 6.1.158-1\nDescription: x' % name
        for name in ('linux-image-6.1.0-50-arm64', 'linux-image-arm64')) + '\n')
    (top / 'repo/Packages').write_text(
        'Package: linux-image-6.1.0-51-arm64\nVersion: 6.1.160-1\nArchitecture: all\nFilename: ./k.deb\nSize: 1\n'
        'Description: x\n\nPackage: linux-image-arm64\nVersion: 6.1.160-1\nArchitecture: all\n'
        'Depends: linux-image-6.1.0-51-arm64 (= 6.1.160-1)\nFilename: ./m.deb\nSize: 1\nDescription: x\n')
    (top / 'etc/apt/sources.list').write_text('deb [trusted=yes] file:%s/repo ./\n' % top)
    if hold:
        for rel, (text, mode) in kernelhold.files('bw@3', PACKAGES[:2]).items():
            (top / rel).parent.mkdir(parents=True, exist_ok=True)
            (top / rel).write_text(text.replace('/usr/local/lib/pifleet/kernel-guard', str(top / kernelhold.GUARD)))
            os.chmod(top / rel, mode)
    (top / 'apt.conf').write_text(
        'Dir "%s/";\nDir::State::status "%s/status";\nDir::Etc "%s/etc/apt";\nDir::Cache "%s/var/cache/apt";\n'
        'Dir::State "%s/var/lib/apt";\nDir::Log "%s/var/log/apt";\nDebug::NoLocking "true";\n'
        % ((top,) * 6))
    env = dict(os.environ, APT_CONFIG=str(top / 'apt.conf'), LANG='C', LC_ALL='C')
    subprocess.run(['apt-get', 'update', '-q'], env=env, check=True, capture_output=True)
    return env


needs_apt = pytest.mark.skipif(not (shutil.which('apt-get') and shutil.which('dpkg-deb')),
                               reason='needs apt and dpkg (Debian)')


@needs_apt
def test_apt_keeps_the_generations_kernel_and_offers_no_other(tmp_path):
    env = apt_sandbox(tmp_path / 'held')
    policy = subprocess.run(['apt-cache', 'policy', 'linux-image-arm64', 'linux-image-6.1.0-51-arm64'], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert 'Installed: 6.1.158-1\n  Candidate: 6.1.158-1' in policy
    assert policy.count('Candidate: (none)') == 1 and '6.1.160-1 -1' in policy
    upgrade = subprocess.run(['apt-get', '-s', 'dist-upgrade'], env=env, capture_output=True, text=True, check=True)
    assert '0 upgraded, 0 newly installed' in upgrade.stdout
    install = subprocess.run(['apt-get', '-s', 'install', 'linux-image-6.1.0-51-arm64'], env=env,
                             capture_output=True, text=True, check=False)
    assert install.returncode == 100 and 'has no installation candidate' in install.stderr
    free = apt_sandbox(tmp_path / 'free', hold=False)  # the control: without the hold, apt would upgrade
    upgrade = subprocess.run(['apt-get', '-s', 'dist-upgrade'], env=free, capture_output=True, text=True, check=True)
    assert '1 upgraded, 1 newly installed' in upgrade.stdout


@needs_apt
def test_apt_runs_the_guard_and_installs_no_kernel_it_refuses(tmp_path):
    """A .deb given by path skips the pin: the guard stops apt before dpkg runs (dpkg here is /bin/true)."""
    env = apt_sandbox(tmp_path / 'held')
    package = tmp_path / 'pkg'
    (package / 'DEBIAN').mkdir(parents=True)
    (package / 'DEBIAN/control').write_text('Package: linux-image-6.1.0-51-arm64\nVersion: 6.1.160-1\n'
                                            'Architecture: all\nMaintainer: t <t@example.org>\nDescription: x\n')
    deb = tmp_path / 'linux-image-6.1.0-51-arm64_6.1.160-1_all.deb'
    subprocess.run(['dpkg-deb', '--build', str(package), str(deb)], check=True, capture_output=True)
    tried = subprocess.run(['apt-get', 'install', '-y', '-o', 'Dir::Bin::dpkg=/bin/true', str(deb)], env=env,
                           capture_output=True, text=True, check=False)
    assert tried.returncode == 100, tried
    assert "E: pifleet: this Pi's kernel is served by its bakery (generation bw@3)" in tried.stderr
    assert 'Failure running script %s' % (tmp_path / 'held' / kernelhold.GUARD) in tried.stderr
