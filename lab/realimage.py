# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real Raspberry Pi OS-like arm64 images that boot: Debian built with mmdebstrap, cached by recipe.

    python3 -m lab.realimage build --flavour NAME [--cache DIR] [--mirror URL]
    python3 -m lab.realimage show --flavour NAME [--cache DIR]
    python3 -m lab.realimage generations [--cache DIR] [--mirror URL]

Two flavours, both packaged like a Raspberry Pi OS image (piimage.py's MBR + FAT ``bootfs`` +
ext4 ``rootfs``):

- ``trixie``: Debian 13 with cloud-init, netplan.io and NetworkManager, and NoCloud ``meta-data``,
  ``user-data`` and ``network-config`` on the boot partition, like Raspberry Pi OS of October 2025
  (what ``make demo`` and the tests boot);
- ``bookworm``: Debian 12 with dhcpcd, like Raspberry Pi OS before NetworkManager (on demand only).

and two images made from the trixie one's cached tree in a minute or two, for the upgrade proof
(``generations()`` returns the three as A, B, C with the facts a test checks):

- ``trixie-kernel`` (B): the same root with Debian 12's kernel (6.1) and its modules in place of
  trixie's own (``dpkg --purge`` of the one, ``dpkg -i`` of the other, as apt would leave them);
  ``config.txt`` names the other ``vmlinuz-*``;
- ``trixie-panic`` (C): the root of A, but its initramfs' ``/init`` exits: U-Boot fetches every
  file, the kernel starts and panics ("Attempted to kill init!"), the Pi never comes up.

All carry the Raspberry Pi OS pieces that a root must lose or change to live on NFS (lab/pios.py),
so that a boot proves each fix. The kernel is Debian's ``linux-image-arm64`` with a small initramfs
(``MODULES=list``: virtio and the Pi NICs, NFS); ``config.txt`` names it with ``kernel=`` and
``initramfs … followkernel``; the firmware comes from Debian's raspi-firmware.

Under qemu-user a few maintainer scripts cost most of a build (byte-compiling Python, the certificate
store, depmod, update-initramfs run by several packages, every ``deb-systemd-helper`` call in
emulated perl). They are diverted while the packages install and their work is done once at the
end, natively where it can be (lab/debhost.py): see ``DIVERTED``. Two more costs are the emulated
programs themselves: dpkg decompressing every .deb with the tree's ``dpkg-deb``, and ``update-initramfs``
starting about a thousand small programs. The host's own ``dpkg-deb``/``dpkg-split`` and the tools
``update-initramfs`` runs most go into the tree for the build and run there natively
(lab/nativekit.py); they are out again, and checked to be, before the tree is packed. The .debs are
kept in ``<cache>/debs/<suite>`` so a rebuild after a recipe change downloads nothing again.

An image goes to ``<cache>/<name>-<recipe hash>.img`` (sparse) with a ``.json`` beside it (kernel,
initramfs, disk id, sha256, build time); a flavour that others derive from also keeps its finished
tree as ``<name>-<hash>.tree.tar.zst``. The cache defaults to ``/var/cache/pifleet/realimage``
(``PIFLEET_IMAGE_CACHE``), outside any checkout, so every run on the machine reuses it until the
recipe changes; builds happen in a scratch dir and are renamed in. Root only (mmdebstrap
--mode=root); needs mmdebstrap, qemu-user-static, binfmt-support, arch-test, kmod, zstd.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab import debhost, ensure_importable, nativekit, piimage, pios
from lab.nspawnlab import host_mirror

# The tests and the demo read these two here.
from lab.pios import GOLDEN_MACHINE_ID, pi_os_pieces  # noqa: F401  # pylint: disable=unused-import

ensure_importable()
# Mount points at or under a path, deepest first (the collection's own reading of mountinfo).
from ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic import (  # noqa: E402
    mounts_under as mounted_below,
)

RECIPE_VERSION = 5  # bump when the packaging below changes in a way the recipe text does not show
CACHE = Path(os.environ.get('PIFLEET_IMAGE_CACHE', '/var/cache/pifleet/realimage'))
MIB = piimage.MIB
BOOT_MB = 256
COMMON_PACKAGES = (
    'systemd-sysv', 'udev', 'dbus', 'kmod', 'iproute2', 'netbase', 'openssh-server', 'nfs-common',
    'initramfs-tools', 'linux-image-arm64', 'raspi-firmware', 'e2fsprogs', 'procps', 'sudo',
)
FLAVOURS = {
    'bookworm': {'suite': 'bookworm', 'packages': ('dhcpcd5',), 'cloud_init': False, 'python': None,
                 'depmod': '/sbin/depmod',
                 'pretty': 'Debian GNU/Linux 12 (bookworm), Raspberry Pi OS-like (dhcpcd)'},
    'trixie': {'suite': 'trixie', 'packages': ('cloud-init', 'netplan.io', 'network-manager'), 'cloud_init': True,
               'python': '3.13', 'depmod': '/usr/sbin/depmod',
               'pretty': 'Debian GNU/Linux 13 (trixie), Raspberry Pi OS-like (cloud-init, netplan, NetworkManager)'},
}
# Made from a flavour's cached tree (lab/realgen.py): the upgrade proof's other generations.
DERIVED = {
    'trixie-kernel': {'base': 'trixie', 'kernel_suite': 'bookworm', 'boots': True,
                      'pretty': 'the trixie image with Debian 12\'s kernel and its modules in place of its own'},
    'trixie-panic': {'base': 'trixie', 'boots': False,
                     'pretty': 'the trixie image whose initramfs\' init exits: the kernel panics'},
}
GENERATIONS = {'A': 'trixie', 'B': 'trixie-kernel', 'C': 'trixie-panic'}
# Kept out of the root: documentation and driver families a netbooted test Pi never loads (the
# image shrinks by half, and so do the bakery's ingest and clone times).
EXCLUDES = (
    '/usr/share/doc/*', '/usr/share/man/*', '/usr/share/info/*', '/usr/share/locale/*', '/usr/share/lintian/*',
    # The locale sources: locales' postinst greps /etc/locale.gen once per supported locale (43 s under
    # qemu-user); the image generates none (C.UTF-8 is built in).
    '/usr/share/i18n/*',
    # udev's hardware database: compiling it under qemu-user takes a minute per image; a test Pi needs none.
    '/usr/lib/udev/hwdb.d/*', '/lib/udev/hwdb.d/*',
    *('%s/lib/modules/*/kernel/%s/*' % (usr, part) for usr in ('', '/usr') for part in (
        'drivers/gpu', 'drivers/media', 'drivers/net/wireless', 'drivers/infiniband', 'drivers/staging',
        'drivers/scsi', 'drivers/iio', 'drivers/input/touchscreen', 'sound', 'net/mac80211', 'net/wireless',
        'net/bluetooth', 'drivers/bluetooth')),
)
# The initramfs mounts the NFS root itself (root=/dev/nfs); MODULES=list keeps it small. virtio for
# qemu, the Pi NICs (Pi 4 genet, Pi 3 smsc95xx/lan78xx) for a real Pi.
INITRAMFS_CONF = 'MODULES=list\nRESUME=none\n'
INITRAMFS_MODULES = ('virtio_pci', 'virtio_mmio', 'virtio_net', 'af_packet', 'nfs', 'nfsv3', 'broadcom',
                     'bcmgenet', 'smsc95xx', 'lan78xx')
# Programs diverted (dpkg-divert, so the packages' own files go beside them) while the packages install,
# and what stands in their place; the real ones are back before the image is packed, and their work is
# done once: update-initramfs in the tree, depmod, byte-compiling, the certificate store and the
# deb-systemd-helper/update-rc.d calls (replayed in order from the log) natively (lab/debhost.py).
EXIT0 = '#!/bin/sh\n# lab/realimage.py: diverted while the image is built; its work is done at the end\nexit 0\n'
RECORD = ('#!/bin/sh\n# lab/realimage.py: diverted while the image is built; replayed natively at the end\n'
          '{ printf %%s %s; for a in "$DPKG_MAINTSCRIPT_PACKAGE" "$@"; do printf "\\037%%s" "$a"; done; echo; } '
          '>> /var/lib/pifleet-build/replay\n'
          'exit 0\n')
REPLAY = '/var/lib/pifleet-build/replay'
PY_COMPILE_STUB = ('"""lab/realimage.py: diverted while the image is built; .pyc files are written at the end."""\n'
                   'if __name__ != "__main__":\n'
                   '    raise ImportError("py_compile is diverted while the image is built")\n')


def log(message, name=None):
    print('realimage%s: %s' % (' ' + name if name else '', message), flush=True)


def diverted(spec):
    """{path: stand-in text or None (absent: callers check ``command -v``)} for a flavour."""
    stubs = {'/usr/sbin/update-initramfs': EXIT0, spec['depmod']: EXIT0, '/usr/sbin/update-ca-certificates': EXIT0,
             '/usr/bin/deb-systemd-invoke': EXIT0, '/usr/sbin/invoke-rc.d': EXIT0,
             '/usr/bin/deb-systemd-helper': RECORD % 'deb-systemd-helper',
             '/usr/sbin/update-rc.d': RECORD % 'update-rc.d',
             '/usr/bin/py3compile': None, '/usr/bin/py3clean': None}
    if spec['python']:
        stubs['/usr/lib/python%s/py_compile.py' % spec['python']] = PY_COMPILE_STUB
    return stubs


# What a Pi emulated under TCG needs and a real Pi does not (TCG is several times slower than a Pi 4, and slower
# still on a loaded 2-core machine, where a first boot took 4 min): systemd waits longer than its default 90 s for a
# device to show up. Without it, when udev's coldplug ran late, /dev/ttyAMA0's unit timed out, the serial getty
# failed with it and the console never showed a login prompt, on a Pi whose system was otherwise up.
TCG_CONF = '[Manager]\nDefaultDeviceTimeoutSec=10min\n'
# /etc/.updated and /var/.updated hold /usr's time, as systemd-update-done leaves them after a boot: a new root's first
# boot then skips ldconfig, the hwdb and journal catalog rebuilds (their work is in the image already), about 25 s of
# emulated CPU each on a first boot here.
UPDATED = ('# This file was created by systemd-update-done. Its only\n'
           '# purpose is to hold a timestamp of the time this directory\n'
           '# was updated. See man:systemd-update-done.service(8).\nTIMESTAMP_NSEC=%d\n')


def tcg_pieces(root):
    """TCG_CONF, and the .updated stamps (last: they hold /usr's time)."""
    conf = Path(root) / 'etc/systemd/system.conf.d/pifleet-lab-tcg.conf'
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(TCG_CONF)
    usr = (Path(root) / 'usr').stat().st_mtime_ns
    for top in ('etc', 'var'):
        stamp = Path(root) / top / '.updated'
        stamp.write_text(UPDATED % usr)
        os.utime(stamp, ns=(usr, usr))


def recipe(name):
    """Everything that decides the image's content, as text: its hash names the cached image."""
    if name in DERIVED:
        from lab import realgen  # noqa: PLC0415  (realgen imports this module)
        return '\n\0'.join([recipe(DERIVED[name]['base']), name, json.dumps(DERIVED[name], sort_keys=True),
                            realgen.RECIPE])
    spec = FLAVOURS[name]
    parts = [str(RECIPE_VERSION), name, json.dumps(spec, sort_keys=True), ' '.join(COMMON_PACKAGES),
             ' '.join(EXCLUDES), INITRAMFS_CONF, ' '.join(INITRAMFS_MODULES),
             json.dumps(diverted(spec), sort_keys=True), pios.recipe(spec['cloud_init']), str(BOOT_MB), TCG_CONF,
             UPDATED]
    return '\n\0'.join(parts)


def recipe_hash(name):
    return hashlib.sha256(recipe(name).encode()).hexdigest()[:12]


def image_path(name, cache=CACHE):
    return Path(cache) / ('%s-%s.img' % (name, recipe_hash(name)))


def tree_path(name, cache=CACHE):
    """The finished tree of a flavour that others are made from."""
    return Path(cache) / ('%s-%s.tree.tar.zst' % (name, recipe_hash(name)))


def cached(name, cache=CACHE):
    """The image's description (with ``path``) when it is in the cache, else None."""
    path = image_path(name, cache)
    info = path.with_suffix('.json')
    if path.is_file() and info.is_file():
        return dict(json.loads(info.read_text()), path=str(path))
    return None


def deb_cache(suite, cache=CACHE):
    return Path(cache) / 'debs' / suite


# --------------------------------------------------------------------------- the machine


def ensure_binfmt():
    """arm64 maintainer scripts run through qemu-user: binfmt_misc mounted, qemu-aarch64 enabled."""
    binfmt = Path('/proc/sys/fs/binfmt_misc')
    if not (binfmt / 'status').exists():
        proc = subprocess.run(['mount', '-t', 'binfmt_misc', 'binfmt_misc', str(binfmt)], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0 and not (binfmt / 'status').exists():  # another build may have mounted it meanwhile
            raise RuntimeError('binfmt_misc is not mounted and mounting it failed (%s); run as root on a host '
                               'with binfmt_misc' % proc.stderr.strip())
    if not (binfmt / 'qemu-aarch64').exists():
        proc = subprocess.run(['update-binfmts', '--enable', 'qemu-aarch64'], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0 or not (binfmt / 'qemu-aarch64').exists():
            raise RuntimeError('cannot run arm64 programs here: update-binfmts --enable qemu-aarch64 failed (%s); '
                               'install qemu-user-static and binfmt-support' % (proc.stderr.strip() or 'no entry'))


def mmdebstrap_argv(suite, root, mirror, *hooks, include=(), variant='minbase'):
    """mmdebstrap for arm64 with the image's apt and dpkg options (kept in the tree for later dpkg runs)."""
    return ['mmdebstrap', '--mode=root', '--variant=%s' % variant, '--architectures=arm64',
            '--components=main,non-free-firmware', *(['--include=%s' % ','.join(include)] if include else []),
            '--aptopt=APT::Install-Recommends "false"', '--dpkgopt=force-unsafe-io',
            *('--dpkgopt=path-exclude=%s' % pattern for pattern in EXCLUDES),
            '--dpkgopt=path-include=/usr/share/locale/locale.alias', *hooks, suite, str(root), mirror]


def run_mmdebstrap(argv, name, what):
    """Run mmdebstrap, its own progress lines ("I: ...") shown with the time since it started."""
    log('%s: takes minutes (maintainer scripts run under qemu-user)' % what, name)
    started = time.monotonic()
    lines = []
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(('I: ', 'E: ', 'W: ')):
                print('  %s %5.0fs %s' % (name, time.monotonic() - started, line.rstrip()), flush=True)
    if proc.returncode != 0:
        raise RuntimeError('mmdebstrap for %s failed (rc %d):\n%s' % (name, proc.returncode, ''.join(lines[-60:])))
    return time.monotonic() - started


def stage_tree(stage, spec):
    """Files in place before any package installs, the stand-ins of the diverted programs, and the host's
    programs that run natively in the tree while it is built (lab/nativekit.py)."""
    nativekit.build(stage / 'kit', nativekit.DPKG_PROGRAMS + nativekit.INITRAMFS_TOOLS)
    conf = stage / 'files/etc/initramfs-tools/conf.d'
    conf.mkdir(parents=True)
    (conf / 'pifleet.conf').write_text(INITRAMFS_CONF)
    (stage / 'files/etc/initramfs-tools/modules').write_text(''.join(m + '\n' for m in INITRAMFS_MODULES))
    # The golden host keys, made here: openssh-server's postinst makes none when they exist (RSA under
    # qemu-user takes seconds); pi_root gives every Pi keys of its own anyway.
    (stage / 'files/etc/ssh').mkdir(parents=True)
    for kind in ('rsa', 'ecdsa', 'ed25519'):
        debhost.run(['ssh-keygen', '-q', '-t', kind, '-N', '', '-C', 'root@raspberrypi', '-f',
                     str(stage / 'files/etc/ssh' / ('ssh_host_%s_key' % kind))])
    (stage / 'stubs/var/lib/pifleet-build').mkdir(parents=True)
    for path, text in diverted(spec).items():
        if text is not None:
            stub = stage / 'stubs' / path.lstrip('/')
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text(text)
            stub.chmod(0o755)


def divert_script(paths, add):
    """Shell for a hook: dpkg-divert (the host's, on the tree) each path to <path>.pifleet-build, or back."""
    words = ' '.join("'%s'" % path for path in paths)
    if add:
        return ('for p in %s; do dpkg-divert --root "$1" --quiet --local --rename --divert "$p.pifleet-build" '
                '--add "$p"; done' % words)
    return ('for p in %s; do rm -f "$1$p"; dpkg-divert --root "$1" --quiet --local --rename --remove "$p"; done; '
            'if [ -e "$1%s" ]; then mv "$1%s" "$1.replay"; fi; rm -rf "$1/var/lib/pifleet-build"'
            % (words, REPLAY, REPLAY))


def mmdebstrap(flavour, root, stage, mirror, debs):
    spec = FLAVOURS[flavour]
    paths = list(diverted(spec))
    hooks = ['--setup-hook=sync-in %s /' % (stage / 'files'),
             # The .debs of earlier builds: apt takes a file whose hash matches instead of downloading it.
             '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/', '--setup-hook=sync-in %s /var/cache/apt/archives/'
             % debs['old'], '--skip=essential/unlink',
             # dpkg unpacks the essential packages too with the host's dpkg-deb
             '--extract-hook=' + nativekit.install_script(stage / 'kit'),
             '--extract-hook=' + nativekit.divert_dpkg_script(),
             '--essential-hook=' + divert_script(paths, add=True), '--essential-hook=sync-in %s /' % (stage / 'stubs'),
             '--customize-hook=sync-out /var/cache/apt/archives %s' % debs['new'],
             # dpkg's helpers first: the last diversion removed, and so dpkg's diversions-old, is as before
             '--customize-hook=' + nativekit.undivert_dpkg_script(),
             '--customize-hook=' + divert_script(paths, add=False),
             '--customize-hook=for d in "$1"/lib/modules/*/; do depmod -a -b "$1" "$(basename "$d")"; done',
             '--customize-hook=' + nativekit.initramfs_script(), '--customize-hook=' + nativekit.remove_script()]
    return run_mmdebstrap(mmdebstrap_argv(spec['suite'], root, mirror, *hooks,
                                          include=COMMON_PACKAGES + spec['packages']),
                          flavour, 'mmdebstrap %s (arm64) from %s' % (spec['suite'], mirror))


def replay(root, log_lines):
    """The deb-systemd-helper and update-rc.d calls the packages made, in order, by the host's perl on the tree."""
    env = dict(os.environ, DPKG_ROOT=str(root), _DEB_SYSTEMD_HELPER_TRIGGERED='1')
    where = {'deb-systemd-helper': 'usr/bin/deb-systemd-helper', 'update-rc.d': 'usr/sbin/update-rc.d'}
    for line in log_lines:
        program, package, *args = line.split('\x1f')
        # was-enabled and friends answer by their exit code: not a failure
        subprocess.run(['perl', str(Path(root) / where[program]), *args], capture_output=True, check=False,
                       env=dict(env, DPKG_MAINTSCRIPT_PACKAGE=package))
    return len(log_lines)


def finish_tree(root, flavour, mirror, cache):
    """The diverted programs' work, natively: the units the packages enable, the certificate store, the .pyc files."""
    spec = FLAVOURS[flavour]
    started = time.monotonic()
    record = Path(str(root) + '.replay')
    calls = replay(root, record.read_text().splitlines() if record.is_file() else [])
    done = ['%d deb-systemd-helper/update-rc.d calls replayed' % calls]
    if (root / 'usr/sbin/update-ca-certificates').exists():
        done.append('%d CA certificates' % debhost.ca_certificates(root))
    if spec['python']:
        python = debhost.native_python(spec['python'], spec['suite'], mirror, Path(cache) / 'host')
        written = debhost.byte_compile(root, python, debhost.compile_dirs(root, spec['python']))
        done.append('Python %s byte-compiled natively (%d .pyc files)' % (spec['python'], written))
    log('%s in %.0f s' % ('; '.join(done), time.monotonic() - started), flavour)


def check_native(root, name):
    """The host's programs are out of the tree before it is packed."""
    left = nativekit.foreign_files(root)
    if left:
        raise RuntimeError('%s: host (x86-64) files left in the tree: %s' % (name, ', '.join(left[:5])))


# --------------------------------------------------------------------------- packing


def boot_files(root, cloud_init, disk_id):
    """{path on the FAT: bytes}: firmware, device trees, kernel, initramfs, config.txt, cmdline.txt."""
    kernels = sorted((root / 'boot').glob('vmlinuz-*'))
    if len(kernels) != 1:
        raise RuntimeError('expected one kernel in %s/boot, found %s' % (root, [k.name for k in kernels]))
    kernel = kernels[0].name
    version = kernel[len('vmlinuz-'):]
    initramfs = 'initrd.img-' + version
    files = {name.name: name.read_bytes() for name in sorted((root / 'usr/lib/raspi-firmware').glob('*'))
             if name.is_file() and name.suffix in ('.bin', '.elf', '.dat')}
    for dtb in sorted((root / ('usr/lib/linux-image-' + version) / 'broadcom').glob('bcm2*-rpi-*.dtb')):
        files[dtb.name] = dtb.read_bytes()
    files[kernel] = (root / 'boot' / kernel).read_bytes()
    files[initramfs] = (root / 'boot' / initramfs).read_bytes()
    files.update(pios.boot_text(kernel, initramfs, disk_id, cloud_init))
    return files, {'kernel': kernel, 'initramfs': initramfs, 'kernel_version': version,
                   'uname': version, 'modules_dir': '/lib/modules/%s' % version}


def tree_bytes(root):
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def pack(root, files, out, *, work, disk_id, seed):
    """MBR + FAT32 bootfs + ext4 rootfs (mke2fs -d straight into the image), Raspberry Pi OS layout."""
    boot_offset = piimage.BOOT_START_SECTOR * piimage.SECTOR
    boot_size = BOOT_MB * MIB
    root_offset = piimage._align_up(boot_offset + boot_size, piimage.ALIGN)
    root_size = piimage._align_up(int(tree_bytes(root) * 1.25) + 256 * MIB, piimage.ALIGN)
    with open(out, 'wb') as handle:
        handle.truncate(root_offset + root_size)
    piimage._write_table(out, gpt=False, disk_id=disk_id, seed=seed,
                         parts=[(boot_offset, boot_size, 'c'), (root_offset, root_size, '83')])
    fat = piimage._build_fat(files, work, boot_size, seed)
    piimage._copy_sparse(fat, out, boot_offset)
    fat.unlink()
    piimage._run(['mke2fs', '-q', '-t', 'ext4', '-b', '4096', '-L', 'rootfs', '-E',
                  'offset=%d,nodiscard,assume_storage_prezeroed=1' % root_offset, '-d', str(root), '-F', str(out),
                  '%dk' % (root_size // 1024)])
    return {'boot_offset': boot_offset, 'boot_size': boot_size, 'root_offset': root_offset, 'root_size': root_size}


def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def pack_tree(root, out):
    """The finished tree as a tarball (owners, modes, xattrs such as file capabilities kept), for derived images."""
    subprocess.run('tar -C %s --xattrs --xattrs-include="*" --numeric-owner -cf - . | zstd -q -T0 -3 -o %s'
                   % (root, out), shell=True, check=True)


def unpack_tree(tarball, root):
    root.mkdir(parents=True)
    subprocess.run('zstd -q -dc %s | tar -C %s --xattrs --xattrs-include="*" --numeric-owner -xpf -'
                   % (tarball, root), shell=True, check=True)


def image_from_tree(root, name, work, *, cloud_init, boot_override=None):
    """The Raspberry Pi OS pieces and the TCG ones written into the tree, then the image packed: (path,
    description)."""
    digest = recipe_hash(name)
    seed = int(digest, 16)
    disk_id = piimage._disk_id(seed)
    pi_os_pieces(root, disk_id, cloud_init)
    tcg_pieces(root)
    files, kernel = boot_files(root, cloud_init, disk_id)
    files.update(boot_override or {})
    log('packing: kernel %s, %d boot files, root %.0f MiB' % (kernel['kernel'], len(files), tree_bytes(root) / MIB),
        name)
    out = work / 'image.img'
    layout = pack(root, files, out, work=work, disk_id=disk_id, seed=seed)
    return out, {'name': name, 'recipe': digest, 'disk_id': disk_id, **kernel, **layout, 'boot_files': sorted(files),
                 'image_bytes': out.stat().st_size}


def make_flavour(flavour, work, cache, mirror):
    spec = FLAVOURS[flavour]
    stage, root = work / 'stage', work / 'root'
    stage_tree(stage, spec)
    debs = {'old': deb_cache(spec['suite'], cache), 'new': work / 'debs'}
    for path in debs.values():
        path.mkdir(parents=True, exist_ok=True)
    ensure_binfmt()
    seconds = {'mmdebstrap': round(mmdebstrap(flavour, root, stage, mirror, debs), 1)}
    started = time.monotonic()
    finish_tree(root, flavour, mirror, cache)
    seconds['native'] = round(time.monotonic() - started, 1)
    check_native(root, flavour)
    for path in debs['new'].iterdir():  # the cache keeps this build's .debs, no more
        if not path.name.endswith('.deb'):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    old = debs['old'].with_name('.%s.old' % spec['suite'])
    os.replace(debs['old'], old)
    os.replace(debs['new'], debs['old'])
    shutil.rmtree(old, ignore_errors=True)
    tree = None
    if any(d['base'] == flavour for d in DERIVED.values()):
        tree = work / 'tree.tar.zst'
        pack_tree(root, tree)
    out, info = image_from_tree(root, flavour, work, cloud_init=spec['cloud_init'])
    info.update(flavour=flavour, suite=spec['suite'], pretty=spec['pretty'], boots=True, expect='running',
                seconds=seconds)
    return out, info, tree


def publish(name, out, info, cache, tree=None):
    """Renamed into the cache (the .json last: an image is only found with its description); older recipes go."""
    dest = image_path(name, cache)
    if tree is not None:
        os.replace(tree, tree_path(name, cache))
    os.replace(out, dest)
    note = dest.with_suffix('.json.partial')
    note.write_text(json.dumps(info, indent=1, sort_keys=True) + '\n')
    os.replace(note, dest.with_suffix('.json'))
    mine = re.compile(r'%s-[0-9a-f]{12}(\.img|\.json|\.tree\.tar\.zst)' % re.escape(name))
    for old in Path(cache).iterdir():
        if mine.fullmatch(old.name) and not old.name.startswith(dest.stem + '.'):
            old.unlink(missing_ok=True)
    return dict(info, path=str(dest))


def sweep(stale):
    """Remove a killed build's scratch dir. A build killed inside mmdebstrap leaves its chroot's proc, sys,
    dev/pts and dev/shm mounted there: unmount them first, and never remove through a mount that stays."""
    for point in mounted_below(stale):
        if subprocess.run(['umount', point], capture_output=True, check=False).returncode != 0:
            subprocess.run(['umount', '--lazy', point], capture_output=True, check=False)
    left = mounted_below(stale)
    if left:
        raise RuntimeError('the scratch dir %s of a killed build still has mounts (%s); unmount them and run again'
                           % (stale, ', '.join(left)))
    shutil.rmtree(stale, ignore_errors=True)


def build(name, cache=CACHE, mirror=None):
    """The cached image ``name`` (a flavour or a derived image; its description with ``path``), built when missing."""
    if name not in FLAVOURS and name not in DERIVED:
        raise ValueError('unknown image %r; choose from %s' % (name, ', '.join([*FLAVOURS, *DERIVED])))
    found = cached(name, cache)
    if found:
        log('image %s (cached)' % found['path'], name)
        return found
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    mirror = mirror or host_mirror()
    with open(cache / ('.lock-%s' % name), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of the same image finishes first
        found = cached(name, cache)
        if found:
            return found
        for stale in cache.glob('.build-%s-*' % name):  # scratch dirs of killed builds (we hold the lock)
            sweep(stale)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix='.build-%s-' % name, dir=cache))
        try:
            if name in DERIVED:
                from lab import realgen  # noqa: PLC0415  (realgen imports this module)
                out, info, tree = realgen.make(name, work, cache, mirror)
            else:
                out, info, tree = make_flavour(name, work, cache, mirror)
            info.update(mirror=mirror, sha256=sha256(out), build_seconds=round(time.monotonic() - started, 1))
            found = publish(name, out, info, cache, tree)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log('image %s built in %.0f s' % (found['path'], found['build_seconds']), name)
    return found


def generations(cache=CACHE, mirror=None):
    """The upgrade proof's images: {'A': trixie, 'B': another kernel, 'C': never comes up}, each described
    (``path``, ``sha256``, ``kernel``, ``uname``: what ``uname -r`` says on it, ``modules_dir``, ``boots``,
    ``expect``: ``running`` or ``panic``)."""
    return {label: build(name, cache, mirror) for label, name in GENERATIONS.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('command', choices=('build', 'show', 'generations'))
    parser.add_argument('--flavour', choices=sorted([*FLAVOURS, *DERIVED]), default='trixie',
                        help='image to build or show (default %(default)s)')
    parser.add_argument('--cache', default=str(CACHE), help='cache directory (default %(default)s)')
    parser.add_argument('--mirror', default=None, help="Debian mirror (default: the host's)")
    args = parser.parse_args(argv)
    if args.command == 'show':
        found = cached(args.flavour, args.cache)
        print(json.dumps(found, indent=1, sort_keys=True) if found else 'not built: %s' % image_path(
            args.flavour, args.cache))
        return 0 if found else 1
    if os.geteuid() != 0:
        parser.error('must run as root (mmdebstrap --mode=root)')
    if args.command == 'generations':
        print(json.dumps(generations(args.cache, args.mirror), indent=1, sort_keys=True))
    else:
        print(json.dumps(build(args.flavour, args.cache, args.mirror), indent=1, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
