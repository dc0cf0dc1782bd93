# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A bakeform of store format 2 becomes generation 1 of format 3, in place, in one atomic swap.

Format 2 kept one image per name directly in ``<store>/<name>/`` (``manifest.json``, ``boot/``,
``boot.img``, ``root.img``, and ``boot-nfs/`` where pi_root mounts ``boot.img`` for Pis that mount their
boot files over NFS). The new directory is built beside it in a locked scratch directory of the store:
the boot files and ``root.img`` as hard links (no byte is copied), the manifest of generation 1 and the
index. Then one ``renameat2(RENAME_EXCHANGE)`` swaps the two directories (``atomic.install``): a run killed
before the swap leaves the old layout (the next run sweeps the scratch directory and migrates again), one
killed after it leaves the new one. Without RENAME_EXCHANGE the old directory is renamed away first and
put back by the next run's sweep if the second rename never came.

A ``boot-nfs`` that is mounted keeps serving: ``boot.img`` of generation 1 is then a copy of its own
(reflinked where the file system can, a few MiB otherwise), mounted at the new ``boot-nfs`` before the
swap; the old mount goes lazily with the old directory (the NFS server keeps what it holds until the fleet
role's next ``nfs_export`` points it at the new path). The mount unit pi_root wrote for the old path is
moved to the new one, so the bakery mounts it after a reboot too.
"""

from __future__ import annotations

import json
import os
import shutil

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as _gen
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import is_complete, write_json
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeformwork import reflink_copy

LEGACY_FORMAT = 2


def is_legacy_complete(bakeform, manifest):
    """A format-2 bakeform that can become generation 1: its manifest says format 2 and every file is there."""
    return bool(manifest) and manifest.get('format') == LEGACY_FORMAT and is_complete(bakeform.dir)


def strangers(bakeform):
    """What a format-2 bakeform's directory holds besides what pifleet put there (it would go with the old one)."""
    ours = {_gen.MANIFEST, _gen.BOOT_DIR, _gen.BOOT_IMAGE, _gen.ROOT_IMAGE, _gen.BOOT_EXPORT}
    return sorted(name for name in os.listdir(bakeform.dir) if name not in ours)


def generation_one(bakeform, manifest):
    """The manifest of generation 1 made of a format-2 bakeform's: the same, with what format 3 adds."""
    return dict(manifest, format=_gen.FORMAT, bakeform=bakeform.name, generation=1, origin={'kind': 'image'})


def planned_index(bakeform, manifest):
    """The index a migration writes: generation 1, current, the next one 2."""
    index = _gen.new_index(bakeform.name)
    index.update(current=1, next=2, generations={'1': _gen.entry(generation_one(bakeform, manifest))})
    return index


def legacy_point(bakeform):
    """Where format 2 mounted boot.img (the kernel's name for it: mount points and units use real paths)."""
    return os.path.join(os.path.realpath(bakeform.dir), _gen.BOOT_EXPORT)


def unit_settings(text):
    """(options, description) of a mount unit pifleet wrote; None for any other unit (never ours to move)."""
    if not text or not text.startswith(_loopfs.UNIT_HEADER):
        return None
    fields = dict(line.split('=', 1) for line in text.splitlines() if '=' in line)
    options = [opt for opt in fields.get('Options', '').split(',') if opt and opt != 'loop']
    return options, fields.get('Description', 'pifleet boot files')


def move_unit(units, old_point, new_point, new_image):
    """Move the mount unit of ``old_point`` to ``new_point`` (mounting ``new_image``); True if one was there.

    With no ``new_point`` (that generation is gone) the old unit is only removed.
    """
    settings = unit_settings(units.current(old_point)[0])
    if settings is None:
        return False
    if new_point:
        text = _loopfs.unit_text(new_image, new_point, settings[0], settings[1])
        units.ensure(new_point, text, lambda path, body: _atomic.write_text(path, body, 0o644))
    units.remove(old_point)
    return True


class Migration:
    """Make the format-2 bakeform ``bakeform`` (a ``generations.Bakeform``) generation 1; see the module docstring.

    ``host`` has ``run(argv)`` and ``which(name, required)``; ``units`` is a ``loopfs.Units`` (or None when
    the caller manages no mount units); ``unmount(point)`` detaches lazily what a removed directory held.
    """

    def __init__(self, host, bakeform, manifest, units=None, unmount=None):
        self.host, self.bakeform, self.manifest = host, bakeform, manifest
        self.units, self.unmount = units, unmount
        self.mounter = _loopfs.Mounter(host.run, host.which)

    def serving(self):
        """True when the old boot-nfs is a mount point now (Pis may be reading their boot files from it)."""
        return _loopfs.mount_at(legacy_point(self.bakeform)) is not None

    def run(self):
        """Migrate; returns whether a mounted boot-nfs was mounted again at its new place."""
        bakeform, old = self.bakeform, self.bakeform.dir
        serving = self.serving()
        scratch = _atomic.ScratchDir(bakeform.store, bakeform.name)
        try:
            top = scratch.join('new')
            gen = os.path.join(top, _gen.GENERATIONS, '1')
            os.makedirs(gen, 0o755)
            os.chmod(os.path.dirname(gen), 0o755)
            os.chmod(top, 0o755)
            # Hard links: the same files under their new names, no byte copied (a generation is never changed).
            shutil.copytree(os.path.join(old, _gen.BOOT_DIR), os.path.join(gen, _gen.BOOT_DIR), symlinks=True,
                            copy_function=os.link)
            os.link(os.path.join(old, _gen.ROOT_IMAGE), os.path.join(gen, _gen.ROOT_IMAGE))
            if serving:  # a file of its own, so the new mount is not the old loop device under another name
                reflink_copy(self.host.run, os.path.join(old, _gen.BOOT_IMAGE), os.path.join(gen, _gen.BOOT_IMAGE),
                             'for generation 1 of bakeform %s' % bakeform.name)
            else:
                os.link(os.path.join(old, _gen.BOOT_IMAGE), os.path.join(gen, _gen.BOOT_IMAGE))
            write_json(os.path.join(gen, _gen.MANIFEST), generation_one(bakeform, self.manifest))
            _atomic.write_text(os.path.join(top, _gen.INDEX),
                               json.dumps(planned_index(bakeform, self.manifest), indent=2, sort_keys=True) + '\n')
            if serving:
                point = os.path.join(gen, _gen.BOOT_EXPORT)
                os.mkdir(point, 0o755)
                self.mounter.mount(os.path.join(gen, _gen.BOOT_IMAGE), point, _gen.BOOT_EXPORT_OPTIONS,
                                   'the boot files of %s' % bakeform.label(1))
            _atomic.install(scratch, top, old)
        finally:
            scratch.close(self.unmount)
        self.finish()
        return serving

    def finish(self):
        """Move the old boot-nfs mount unit to generation 1 (also what the next run does after a kill)."""
        return finish(self.bakeform, self.units)


def finish(bakeform, units):
    """The last step of a migration, safe to repeat: the unit of the format-2 boot-nfs, if any, moved to
    generation 1 (or removed, once generation 1 is gone). True when there was one."""
    if units is None:
        return False
    real = _gen.Bakeform(os.path.dirname(os.path.realpath(bakeform.dir)), bakeform.name)
    there = real.is_complete(1)
    return move_unit(units, legacy_point(bakeform), real.boot_export(1) if there else None, real.boot_image(1))
