# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The build host's own programs run at native speed inside an arm64 image tree while it is built.

Under qemu-user every program of the tree runs emulated: decompressing a .deb costs five times
its native time (trixie's 229 .debs: 78 s emulated against 24 s native, the kernel's alone 43 s against
8 s), and ``update-initramfs`` spends most of its minute starting about a thousand small emulated
programs (``sed``, ``realpath``, ``cp``, ``readlink``, ``mkdir``, ...) and in the emulated ``gzip``.
An amd64 program runs in the chroot natively (the kernel runs it, no qemu) when its loader and
libraries are there. The kit is one directory of the tree, ``KIT`` (``/usr/lib/x86_64-linux-gnu``:
the loader's own default library path, and absent from an arm64 tree): the host's loader as
``KIT/l``, the programs in ``KIT/bin`` with their ELF interpreter rewritten in place from
``/lib64/ld-linux-x86-64.so.2`` to ``KIT/l`` (same length: no ``/lib64`` in the tree, which
mkinitramfs would copy into the initramfs with every other ``/lib*`` of the root), and their libraries.

- ``dpkg-deb`` and ``dpkg-split`` (what dpkg runs for every package it unpacks: the data tarball is
  the same byte stream whichever dpkg-deb decompresses it) are diverted to the host's for the whole
  install, as the stand-ins of lab/realimage.py's ``DIVERTED`` are;
- ``initramfs_script()`` runs ``update-initramfs`` in a private mount namespace where the host's
  ``INITRAMFS_TOOLS`` are bind-mounted over the tree's: the tree's files stay as they are, and the
  binaries the initramfs copies are the tree's (arm64) ones, which ``ldd``, ``dracut-install``,
  ``cpio`` and ``ldconfig`` stay for.

``remove_script()`` takes the kit out again; ``lab/realimage.py`` checks the tree holds no amd64 file
before it is packed.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

KIT = '/usr/lib/x86_64-linux-gnu'
LOADER = KIT + '/l'
HOST_INTERP = '/lib64/ld-linux-x86-64.so.2'
DPKG_PROGRAMS = ('dpkg-deb', 'dpkg-split')
# What update-initramfs (mkinitramfs, its hooks, hook-functions' copy_exec) starts more than once or
# twice, counted on a trixie build, the same on the host for what it is used for there.
INITRAMFS_TOOLS = ('sed', 'realpath', 'cp', 'readlink', 'mkdir', 'basename', 'ln', 'dirname', 'grep', 'env',
                   'find', 'sort', 'rm', 'mktemp', 'cat', 'tsort', 'uniq', 'touch', 'ls', 'head', 'tr', 'mv',
                   'id', 'chmod', 'gzip')
PT_INTERP = 3


def set_interp(path, interp):
    """Rewrite an ELF64 program's interpreter in place (the new path must fit the old one's segment)."""
    with open(path, 'r+b') as handle:
        head = handle.read(64)
        if head[:5] != b'\x7fELF\x02':
            raise RuntimeError('%s is not a 64-bit ELF file' % path)
        phoff, = struct.unpack_from('<Q', head, 32)
        phentsize, phnum = struct.unpack_from('<HH', head, 54)
        for index in range(phnum):
            handle.seek(phoff + index * phentsize)
            kind, _flags, offset, _vaddr, _paddr, filesz = struct.unpack('<IIQQQQ', handle.read(40))
            if kind == PT_INTERP:
                if len(interp) + 1 > filesz:
                    raise RuntimeError('%s: interpreter %s does not fit in %d bytes' % (path, interp, filesz))
                handle.seek(offset)
                handle.write(interp.encode() + b'\0' * (filesz - len(interp)))
                return
    raise RuntimeError('%s has no interpreter (a static program needs no kit)' % path)


def host_program(name):
    for folder in ('/usr/bin', '/usr/sbin', '/bin', '/sbin'):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise RuntimeError('%s is missing on this host' % name)


def libraries(program):
    """The shared libraries the host's loader maps for ``program``."""
    out = subprocess.run(['ldd', program], capture_output=True, text=True, check=True).stdout
    return sorted(set(re.findall(r'=> (/\S+) \(', out)))


def build(dest, programs):
    """The kit for ``programs`` laid out as in the tree under ``dest`` (sync it in at /)."""
    if os.uname().machine != 'x86_64':
        raise RuntimeError('lab/nativekit.py runs x86-64 programs in the tree; this host is %s' % os.uname().machine)
    kit = Path(dest) / KIT.lstrip('/')
    (kit / 'bin').mkdir(parents=True)
    libs = set()
    for name in programs:
        program = host_program(name)
        shutil.copy(program, kit / 'bin' / name)
        set_interp(kit / 'bin' / name, LOADER)
        libs.update(libraries(program))
    for lib in libs:
        shutil.copy(lib, kit / Path(lib).name)
    shutil.copy(os.path.realpath(HOST_INTERP), kit / 'l')
    return kit


def install_script(stage):
    """Shell for a hook: the kit into the tree "$1" (refused when the tree has the directory already)."""
    return ('if [ -e "$1%s" ]; then echo "$1%s exists: not an arm64 tree?" >&2; exit 1; fi; '
            'mkdir -p "$1%s" && cp -a %s/. "$1%s"/' % (KIT, KIT, KIT, Path(stage) / KIT.lstrip('/'), KIT))


def remove_script():
    return 'rm -rf "$1%s"' % KIT


def divert_dpkg_script():
    """Shell for a hook: dpkg's helpers diverted (the host's dpkg-divert) and linked to the kit's."""
    return ' '.join('dpkg-divert --root "$1" --quiet --local --rename --divert "/usr/bin/%s.pifleet-build" '
                    '--add /usr/bin/%s && ln -s %s/bin/%s "$1/usr/bin/%s";' % (name, name, KIT, name, name)
                    for name in DPKG_PROGRAMS)


def undivert_dpkg_script():
    return ' '.join('rm -f "$1/usr/bin/%s"; dpkg-divert --root "$1" --quiet --local --rename --remove /usr/bin/%s;'
                    % (name, name) for name in DPKG_PROGRAMS)


def initramfs_script(command='update-initramfs -c -k all'):
    """Shell for a hook: ``command`` in the tree "$1" with the kit's INITRAMFS_TOOLS over the tree's own."""
    binds = ' '.join('mount --bind "$1%s/bin/%s" "$1/usr/bin/%s";' % (KIT, name, name) for name in INITRAMFS_TOOLS)
    return ("unshare --mount --propagation private sh -e -c '%s chroot \"$1\" %s' sh \"$1\""
            % (binds, command))


def foreign_files(root):
    """Files of the tree that are x86-64 ELF programs or libraries (none when the kit is out)."""
    found = []
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [name for name in dirs if not os.path.ismount(os.path.join(dirpath, name))]
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, 'rb') as handle:
                head = handle.read(20)
            if head[:4] == b'\x7fELF' and head[18:20] == b'\x3e\x00':  # e_machine EM_X86_64
                found.append(path)
    return found
