# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host programs an arm64 image build runs natively in its tree (lab/nativekit.py), without mmdebstrap."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from lab import nativekit

KIT = nativekit.KIT.lstrip('/')


def test_a_kit_program_names_the_kit_loader_and_runs_with_the_kit_libraries(tmp_path):
    nativekit.build(tmp_path / 'stage', ['cat', 'sed'])
    kit = tmp_path / 'stage' / KIT
    data = (kit / 'bin/sed').read_bytes()
    assert nativekit.LOADER.encode() + b'\0' in data and nativekit.HOST_INTERP.encode() not in data
    assert len(nativekit.LOADER) == len(nativekit.HOST_INTERP)  # rewritten in place
    (tmp_path / 'in').write_text('arm64 tree\n')
    out = subprocess.run([str(kit / 'l'), '--inhibit-cache', '--library-path', str(kit), str(kit / 'bin/sed'),
                          's/arm64/an/', str(tmp_path / 'in')], capture_output=True, text=True, check=True)
    assert out.stdout == 'an tree\n'
    assert (kit / 'libc.so.6').is_file() and not (tmp_path / 'stage/lib64').exists()


def test_interpreter_that_does_not_fit_or_a_file_that_is_no_elf_is_refused(tmp_path):
    program = tmp_path / 'true'
    shutil.copy(nativekit.host_program('true'), program)
    with pytest.raises(RuntimeError, match='does not fit'):
        nativekit.set_interp(program, '/' + 'x' * 40)
    (tmp_path / 'script').write_text('#!/bin/sh\n')
    with pytest.raises(RuntimeError, match='not a 64-bit ELF'):
        nativekit.set_interp(tmp_path / 'script', nativekit.LOADER)


def test_foreign_files_finds_host_programs_and_libraries_only(tmp_path):
    (tmp_path / 'usr/bin').mkdir(parents=True)
    shutil.copy(nativekit.host_program('true'), tmp_path / 'usr/bin/true')
    arm64 = bytearray(64)
    arm64[:5], arm64[18:20] = b'\x7fELF\x02', b'\xb7\x00'  # EM_AARCH64
    (tmp_path / 'usr/bin/arm').write_bytes(bytes(arm64))
    (tmp_path / 'usr/bin/link').symlink_to(nativekit.host_program('true'))
    (tmp_path / 'usr/bin/text').write_text('x')
    assert nativekit.foreign_files(tmp_path) == [str(tmp_path / 'usr/bin/true')]


def test_dpkg_helpers_are_diverted_to_the_kit_and_back(tmp_path):
    if shutil.which('dpkg-divert') is None:
        pytest.skip('needs dpkg-divert')
    (tmp_path / 'var/lib/dpkg/info').mkdir(parents=True)
    (tmp_path / 'var/lib/dpkg/status').touch()
    (tmp_path / 'usr/bin').mkdir(parents=True)
    for name in nativekit.DPKG_PROGRAMS:
        (tmp_path / 'usr/bin' / name).write_text('arm64 ' + name)
    subprocess.run(['sh', '-e', '-c', nativekit.divert_dpkg_script(), 'sh', str(tmp_path)], check=True)
    for name in nativekit.DPKG_PROGRAMS:
        link = tmp_path / 'usr/bin' / name
        assert link.readlink().as_posix() == '%s/bin/%s' % (nativekit.KIT, name)
        assert (tmp_path / 'usr/bin' / (name + '.pifleet-build')).read_text() == 'arm64 ' + name
    subprocess.run(['sh', '-e', '-c', nativekit.undivert_dpkg_script(), 'sh', str(tmp_path)], check=True)
    for name in nativekit.DPKG_PROGRAMS:
        assert (tmp_path / 'usr/bin' / name).read_text() == 'arm64 ' + name
    assert sorted(p.name for p in (tmp_path / 'usr/bin').iterdir()) == sorted(nativekit.DPKG_PROGRAMS)
    assert (tmp_path / 'var/lib/dpkg/diversions').read_text() == ''


def test_kit_goes_into_a_tree_without_it_only_and_out_again(tmp_path):
    nativekit.build(tmp_path / 'stage', ['true'])
    tree = tmp_path / 'tree'
    (tree / 'usr/lib').mkdir(parents=True)
    install = ['sh', '-e', '-c', nativekit.install_script(tmp_path / 'stage'), 'sh', str(tree)]
    subprocess.run(install, check=True)
    assert (tree / KIT / 'bin/true').is_file() and nativekit.foreign_files(tree)
    assert subprocess.run(install, capture_output=True, check=False).returncode != 0  # never over a real one
    subprocess.run(['sh', '-e', '-c', nativekit.remove_script(), 'sh', str(tree)], check=True)
    assert not nativekit.foreign_files(tree) and list((tree / 'usr/lib').iterdir()) == []


def test_initramfs_tools_are_bound_over_the_tree_in_a_private_namespace_only():
    script = nativekit.initramfs_script()
    assert script.startswith('unshare --mount --propagation private ')
    for name in nativekit.INITRAMFS_TOOLS:
        assert 'mount --bind "$1%s/bin/%s" "$1/usr/bin/%s";' % (nativekit.KIT, name, name) in script
    assert script.index('mount --bind') < script.index('chroot "$1" update-initramfs -c -k all')
    assert not {'ldd', 'cpio', 'ldconfig', 'dracut-install'} & set(nativekit.INITRAMFS_TOOLS)  # arm64 work
