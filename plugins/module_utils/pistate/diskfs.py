# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The disks file system of each Pi (its container): made, filled from an old layout, mounted, persisted,
grown and removed. Its image, index and mount point sit in ``disks_dir`` (0700), out of the Pi's reach, so
paths are fine here; what is inside the mounted file system goes through ``diskfiles`` only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import time

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import is_serial
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import points as _points
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.diskfiles import DiskFiles
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.disks import (
    JOURNAL,
    MIB,
    DiskError,
    human,
    inode_count,
)

OPTIONS = (*_loopfs.ROOT_OPTIONS, 'noexec')
PEEK_OPTIONS = ('ro', 'noload', *OPTIONS)


class Containers:
    """The containers in ``disks_dir``; ``host`` as for ``diskwork.PiDisks``."""

    def __init__(self, host, disks_dir, units_dir):
        self.host, self.disks_dir = host, disks_dir
        self.mounter = _loopfs.Mounter(host.run, host.which)
        self.units = _loopfs.Units(units_dir) if units_dir else None
        self.points = _points.Points(host, disks_dir, self.units, 'Pi disks')

    def files(self, tree, lay):
        return DiskFiles(tree, lay.serial, top=lay.point, run=self.host.run, which=self.host.which)

    def sweep(self):
        return _atomic.sweep_stale(self.disks_dir, self._sweep_target, self._unmount_quietly)

    def _sweep_target(self, label):
        """A migration that died between its two renames put the old directory in its scratch: put it back."""
        if is_serial(label) and not os.path.lexists(os.path.join(self.disks_dir, label + '.img')):
            return os.path.join(self.disks_dir, label)
        return None

    def _unmount_quietly(self, point):
        self.host.run([self.host.which('umount', True), '--lazy', '--', point])

    def unit_wanted(self, lay):
        return not self.units or self.units.wanted(lay.point, self.unit_text(lay))

    def unit_text(self, lay):
        return _loopfs.unit_text(lay.image, lay.point, OPTIONS, 'pifleet disks of Pi %s' % lay.serial)

    def build(self, plan):
        """A new container (with an old layout's disks copied in) made in a scratch directory, then renamed in."""
        lay, serial = plan['layout'], plan['serial']
        scratch = _atomic.ScratchDir(self.disks_dir, serial)
        try:
            image = scratch.join('disks.img')
            make_container(self.host.run, self.host.which, image, plan['container']['capacity'], 'disks-%s' % serial)
            if plan['legacy']:
                self.copy_legacy(plan, image, scratch.join('mnt'))
                os.rename(lay.old_point, scratch.join('old'))  # put back by the sweep if we die before the next rename
            os.rename(image, lay.image)
        finally:
            scratch.close(self._unmount_quietly)
        plan.update(image=True, legacy=False)
        self.ensure(plan)

    def copy_legacy(self, plan, image, mnt):
        lay, serial = plan['layout'], plan['serial']
        keep = [name for name in sorted(plan['now']) if name in plan['entries']]
        os.mkdir(mnt, 0o700)
        self.mounter.mount(image, mnt, OPTIONS, 'the new disks file system of Pi %s' % serial)
        try:
            with Tree(lay.old_point, 'the old disks of Pi %s' % serial) as old, Tree(mnt, 'the new disks') as new:
                src, dst = self.files(old, lay), self.files(new, lay)
                for name in keep:
                    with src.image(name) as (fd, st):
                        if fd is None:
                            raise DiskError('migrating disk %s of Pi %s failed: its disk.img went away meanwhile (is '
                                            'the Pi still running?); run again' % (name, serial))
                        dst.adopt(name, fd, st.st_size)
        finally:
            self.mounter.umount(mnt, 'the new disks file system of Pi %s' % serial)
        plan['now'] = {name: plan['now'][name] for name in keep}

    def ensure(self, plan):
        """The container mounted at its point, its unit written, and grown to its planned capacity."""
        lay, serial, container = plan['layout'], plan['serial'], plan['container']
        if self.units and not self.units.wanted(lay.point, self.unit_text(lay)):
            self.units.ensure(lay.point, self.unit_text(lay), lambda path, body: _atomic.write_text(path, body, 0o644))
        if container.get('grow') and not plan['source'] and not attached(lay.image):
            self.resize_offline(lay, container['capacity'])
            container['grow'] = False
        if not plan['source']:
            self.points.make(lay.point)
            # mount reuses a loop device still attached elsewhere (another mount namespace): never two.
            self.mounter.mount(lay.image, lay.point, OPTIONS, 'the disks of Pi %s' % serial)
            plan['source'] = (_loopfs.mount_at(os.path.realpath(lay.point)) or ('mounted',))[0]
        if container.get('grow'):
            self.resize_online(plan)

    def resize_offline(self, lay, capacity):
        if os.stat(lay.image).st_size < capacity:
            os.truncate(lay.image, capacity)  # by a hole
        what = 'the disks file system %s of Pi %s' % (lay.image, lay.serial)
        self.check([self.host.which('e2fsck', True), '-f', '-p', lay.image], 'checking %s before growing it' % what,
                   ok=(0, 1))
        self.check([self.host.which('resize2fs', True), lay.image], 'growing %s' % what)

    def resize_online(self, plan):
        """Grow the mounted container: the file by a hole, the loop device, then ext4 while the Pi uses it.

        A kernel that refuses online growth (no CAP_SYS_RESOURCE, e.g. in a container) gets it offline
        instead, when the file system can be unmounted (not while an NFS server holds it).
        """
        lay, device, capacity = plan['layout'], plan['source'], plan['container']['capacity']
        what = 'the disks file system %s of Pi %s' % (lay.image, lay.serial)
        if os.stat(lay.image).st_size < capacity:
            os.truncate(lay.image, capacity)
        if loop_bytes(device) < capacity:
            self.check([self.host.which('losetup', True), '-c', device], 'telling %s about the new size of %s'
                       % (device, what))
        rc, out, err = self.host.run([self.host.which('resize2fs', True), device])
        if rc == 0:
            return
        if 'Permission denied' not in err + out:
            raise DiskError('growing %s online failed: %s' % (what, (err or out).strip()), rc=rc, stderr=err)
        why = 'the kernel refuses to grow it while mounted (%s; online growth needs CAP_SYS_RESOURCE, which ' \
              'containers often drop)' % err.strip()
        rc, out, uerr = self.host.run([self.host.which('umount', True), '--', lay.point])
        if rc != 0:
            raise DiskError('growing %s failed: %s and it cannot be unmounted to grow it offline (%s); run pi_disk '
                            'where it has CAP_SYS_RESOURCE, or stop the NFS server and the Pi and run again'
                            % (what, why, uerr.strip()))
        try:
            holder = attached(lay.image, wait=2.0)
            if holder:  # still mounted in another mount namespace: e2fsck or resize2fs now would corrupt it
                raise DiskError('growing %s failed: %s and it is still in use through %s after unmounting it here '
                                '(mounted in another mount namespace, an NFS server\'s perhaps); stop what holds it, '
                                'or run pi_disk where it has CAP_SYS_RESOURCE' % (what, why, holder))
            self.resize_offline(lay, capacity)
        finally:
            self.mounter.mount(lay.image, lay.point, OPTIONS, 'the disks of Pi %s' % lay.serial)

    def remove(self, plan):
        """The Pi has no disks left: its container (or old-layout directory) goes, with its mount unit."""
        lay = plan['layout']
        if plan['legacy']:
            _atomic.discard(self.disks_dir, lay.serial, lay.old_point)
            return
        if self.units:
            self.units.remove(lay.point)
        if plan['source']:
            self.mounter.umount(lay.point, 'the disks of Pi %s' % lay.serial)
        if os.path.lexists(lay.image):
            os.unlink(lay.image)  # a lazily unmounted image lives on until the NFS server lets go of it
        self.points.remove(lay.point)

    def relocate(self, lay, mounts):
        """Disks mounted at the mount point of earlier releases move to their new one first; True if they had one.

        The container is mounted at its new point before the old one is unmounted (the same loop device,
        mounted twice for a moment), so it is never left unmounted in between. ``mounts``: {target: source}.
        """
        if not self.moved(lay):
            return False
        if self.host.check_mode:
            return True
        old = mounts.get(os.path.realpath(lay.old_point))
        if old and _loopfs.loop_backing(old) in (lay.image, os.path.realpath(lay.image)) and not mounts.get(
                os.path.realpath(lay.point)):
            self.points.make(lay.point)
            self.mounter.mount(lay.image, lay.point, OPTIONS, 'the disks of Pi %s' % lay.serial)
        self.points.give_up(lay.old_point, lay.image, 'the disks of Pi %s' % lay.serial)
        return True

    def moved(self, lay):
        """True when the disks have a mount point (or unit) of earlier releases; an old layout's disks do not."""
        old = lay.old_point
        if self.units and self.units.current(old)[0] is not None:
            return True
        if not os.path.lexists(old):
            return False
        return os.path.lexists(lay.image) or os.path.islink(old) or os.path.ismount(old) or not os.listdir(old)

    def check(self, argv, what, ok=(0,)):
        rc, out, err = self.host.run(argv)
        if rc not in ok:
            raise DiskError('%s failed: %s' % (what, (err or out).strip() or 'exit status %d' % rc), rc=rc, stderr=err)


def make_container(run, which, path, capacity, label):
    """A sparse ext4 image of ``capacity`` bytes at ``path`` (a new file), formatted without mounting.

    Few inodes (largefile4, at least MIN_INODES), no reserved blocks, meta_bg (online growth without
    the 1024x limit of reserved descriptor blocks), lazy init (the holes already read as zeros).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, capacity)
    finally:
        os.close(fd)
    argv = [which('mke2fs', True), '-q', '-F', '-t', 'ext4', '-b', '4096', '-m', '0', '-T', 'largefile4',
            '-N', str(inode_count(capacity)), '-J', 'size=%d' % (JOURNAL // MIB), '-O', 'meta_bg,^resize_inode',
            '-L', label, '-E', 'lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0', '--', path]
    rc, out, err = run(argv)
    if rc != 0:
        raise DiskError('making the disks file system %s (%s) failed: %s'
                        % (path, human(capacity), (err or out).strip()), rc=rc, stderr=err, cmd=argv)


def attached(image, wait=0.0):
    """The loop device backed by ``image`` (mounted somewhere, maybe in another namespace), or None.

    A loop device set to autoclear goes a moment after its last mount: ``wait`` seconds for that.
    """
    real = os.path.realpath(image)
    deadline = time.monotonic() + wait
    while True:
        for backing in glob.glob('/sys/block/loop*/loop/backing_file'):
            with contextlib.suppress(OSError), open(backing, encoding='utf-8', errors='replace') as handle:
                if handle.read().rstrip('\n') == real:
                    return '/dev/' + backing.split('/')[3]
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def loop_bytes(device):
    """Size of a loop device as the kernel has it (it learns a grown file only through losetup -c)."""
    match = re.fullmatch(r'/dev/(loop[0-9]+)', device or '')
    if not match:
        return 0
    with open('/sys/block/%s/size' % match.group(1), encoding='ascii') as handle:
        return int(handle.read()) * 512
