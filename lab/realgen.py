# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The upgrade proof's other generations, made from the trixie image's cached tree (lab/realimage.py).

``python3 -m lab.realimage build --flavour trixie-kernel|trixie-panic`` (or ``generations``) runs
``make()`` in a scratch dir of the image cache:

- ``trixie-kernel`` (generation B): the tree of A, its kernel packages purged and Debian 12's
  ``linux-image-<version>-arm64`` installed with ``dpkg -i`` in a chroot (mmdebstrap's custom
  variant sets the chroot up), so the root has only the other kernel's ``/boot/vmlinuz-*`` and
  ``/lib/modules/<version>``, and dpkg knows it, as apt would leave it. Its postinst's depmod and
  update-initramfs are diverted and run once (depmod natively), as in A's build.
- ``trixie-panic`` (generation C): the tree of A, and A's own initramfs followed by a second cpio
  archive holding only an ``/init`` that prints why and exits. The kernel unpacks both (a later
  archive's file replaces an earlier one's), runs that init, and panics ("Attempted to kill init!").
  U-Boot fetches every file as for A: the Pi is broken after the firmware, where a bad kernel is.
"""

from __future__ import annotations

import re
import shutil
import time

from lab import debhost, nativekit, realimage

VERSION = 1  # bump when what make() does changes in a way the text below does not show
PANIC_INIT = """\
#!/bin/sh
echo "pifleet lab: this generation is broken on purpose: the initramfs' init exits, the kernel panics"
exit 1
"""
RECIPE = '\n'.join([str(VERSION), PANIC_INIT])


def cpio_newc(entries):
    """An uncompressed cpio archive (newc, as the kernel reads an initramfs) of (name, mode, bytes)."""
    out = bytearray()

    def add(name, mode, data, ino):
        encoded = name.encode() + b'\0'
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.extend(b'070701' + b''.join(b'%08X' % field for field in fields) + encoded)
        out.extend(b'\0' * (-len(out) % 4))
        out.extend(data)
        out.extend(b'\0' * (-len(out) % 4))
    for ino, (name, mode, data) in enumerate(entries, start=1):
        add(name, mode, data, ino)
    add('TRAILER!!!', 0, b'', 0)
    out.extend(b'\0' * (-len(out) % 512))
    return bytes(out)


def panic_initramfs(initramfs):
    """``initramfs`` with an archive appended whose ``init`` exits: the kernel runs it and panics."""
    return initramfs + b'\0' * (-len(initramfs) % 4) + cpio_newc([('init', 0o100755, PANIC_INIT.encode())])


def installed_kernels(root):
    """The linux-image packages dpkg has installed in the tree."""
    status = (root / 'var/lib/dpkg/status').read_text()
    return sorted(re.findall(r'^Package: (linux-image-\S+)\nStatus: install ok installed', status, re.M))


def kernel_deb(suite, work, cache, mirror):
    """The .deb of ``suite``'s current arm64 kernel (what its linux-image-arm64 depends on), kept in the cache."""
    apt = debhost.PrivateApt(work / 'apt', 'arm64', [suite], mirror)
    package = next(name for name in apt.depends('linux-image-arm64') if name.startswith('linux-image-'))
    return apt.download([package], realimage.deb_cache(suite, cache))[0]


def swap_kernel(root, suite, work, *, cache, mirror, name, base_suite='trixie'):
    """Purge the tree's kernel packages and install ``suite``'s with dpkg in a chroot (the .deb unpacked by the
    host's dpkg-deb, depmod natively, update-initramfs once with the host's tools: lab/nativekit.py)."""
    deb = kernel_deb(suite, work, cache, mirror)
    old = installed_kernels(root)
    programs = ['/usr/sbin/update-initramfs', realimage.FLAVOURS['trixie']['depmod']]
    stubs = work / 'stubs'
    for path in programs:
        stub = stubs / path.lstrip('/')
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(realimage.EXIT0)
        stub.chmod(0o755)
    kit = work / 'kit'
    nativekit.build(kit, nativekit.DPKG_PROGRAMS + nativekit.INITRAMFS_TOOLS)
    hooks = ['--skip=update,check/empty,cleanup/reproducible', '--setup-hook=true',
             '--customize-hook=' + nativekit.install_script(kit), '--customize-hook=' + nativekit.divert_dpkg_script(),
             '--customize-hook=' + realimage.divert_script(programs, add=True),
             '--customize-hook=sync-in %s /' % stubs, '--customize-hook=upload %s /tmp/kernel.deb' % deb,
             '--customize-hook=chroot "$1" dpkg --purge %s' % ' '.join(old),
             '--customize-hook=chroot "$1" dpkg -i /tmp/kernel.deb', '--customize-hook=rm -f "$1/tmp/kernel.deb"',
             '--customize-hook=' + nativekit.undivert_dpkg_script(),
             '--customize-hook=' + realimage.divert_script(programs, add=False),
             '--customize-hook=for d in "$1"/lib/modules/*/; do depmod -a -b "$1" "$(basename "$d")"; done',
             '--customize-hook=' + nativekit.initramfs_script(), '--customize-hook=' + nativekit.remove_script()]
    seconds = realimage.run_mmdebstrap(realimage.mmdebstrap_argv(base_suite, root, mirror, *hooks, variant='custom'),
                                       name, 'kernel %s in place of %s' % (deb.name, ', '.join(old)))
    return {'kernel_deb': deb.name, 'replaced': old, 'seconds': {'kernel': round(seconds, 1)}}


def make(name, work, cache, mirror):
    """(image, description, None) of a derived image, built in ``work``."""
    spec = realimage.DERIVED[name]
    base = realimage.build(spec['base'], cache, mirror)
    tarball = realimage.tree_path(spec['base'], cache)
    if not tarball.is_file():
        raise RuntimeError('%s has no cached tree (%s): remove %s and build again'
                           % (spec['base'], tarball, base['path']))
    started = time.monotonic()
    root = work / 'root'
    realimage.unpack_tree(tarball, root)
    seconds, facts, override = {'unpack': round(time.monotonic() - started, 1)}, {}, None
    if spec.get('kernel_suite'):
        for node in (root / 'dev').iterdir():  # mmdebstrap makes /dev again (its mknod fails on existing nodes)
            node.unlink() if not node.is_dir() or node.is_symlink() else shutil.rmtree(node)
        realimage.ensure_binfmt()
        facts = swap_kernel(root, spec['kernel_suite'], work, cache=cache, mirror=mirror, name=name,
                            base_suite=realimage.FLAVOURS[spec['base']]['suite'])
        seconds.update(facts.pop('seconds'))
        realimage.check_native(root, name)
    else:
        initramfs = root / 'boot' / base['initramfs']
        override = {base['initramfs']: panic_initramfs(initramfs.read_bytes())}
    base_flavour = realimage.FLAVOURS[spec['base']]
    out, info = realimage.image_from_tree(root, name, work, cloud_init=base_flavour['cloud_init'],
                                          boot_override=override)
    info.update(facts, seconds=seconds, base=spec['base'], base_recipe=base['recipe'], suite=base_flavour['suite'],
                pretty=spec['pretty'], boots=spec['boots'], expect='running' if spec['boots'] else 'panic')
    return out, info, None
