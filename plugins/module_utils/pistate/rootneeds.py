# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Pi's settings against what its root's image can do: refused per Pi, with what to add and how.

Each generation's manifest records what its golden root can do (``store.capabilities``). A root pi_root
builds from a generation that lacks what the Pi's settings need (``mount.nfs`` for ``boot_mount: nfs``,
cloud-init for the Pi's cloud-init settings, an initramfs that mounts NFS) would boot degraded, ignore the
settings, or not boot: that Pi fails alone with the message of ``capabilities.NEEDS``. A live root is
looked at too (read only, through ``confined.Tree``), as its owner may have installed the package since. A
generation made before the record is not checked, with a warning once per run. No AnsibleModule here.
"""

from __future__ import annotations

from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError, Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import RootError
from ansible_collections.pifleet.netboot.plugins.module_utils.store import capabilities as _capabilities

# Where a live root shows it has what its image lacked (the initramfs is the generation's, served by the bakery).
LIVE_EVIDENCE = {
    'mount_nfs': ('usr/sbin/mount.nfs', 'sbin/mount.nfs'),
    'cloud_init': ('usr/bin/cloud-init', 'bin/cloud-init'),
}


def live_has(tree, need):
    """Whether the root in ``tree`` has what ``need`` names; a path behind a symlink (a merged /sbin) is not looked
    through, its /usr twin is."""
    for rel in LIVE_EVIDENCE.get(need, ()):
        try:
            if tree.exists(rel):
                return True
        except ConfinedError:
            continue
    return False


class Needs:
    """The checks of one pi_root run: each generation's record read once, each unknown one warned about once."""

    def __init__(self, host):
        self.host = host
        self.records, self.warned = {}, set()

    def record(self, bake, generation):
        key = (bake.name, generation)
        if key not in self.records:
            manifest = bake.manifest(generation, strict=False) or {}
            self.records[key] = manifest.get(_capabilities.KEY)
        return self.records[key]

    def check(self, item, bake, generation, live=None):
        """Refuse (RootError) a root of ``bake``@``generation`` for ``item`` when the image lacks what its settings
        need; ``live``, the mount point of the Pi's current root when it is mounted, may have it all the same."""
        record, label = self.record(bake, generation), bake.label(generation)
        needs = _capabilities.needs_of(item)
        if not _capabilities.known(record):
            # Said when the Pi's own settings could have been refused (every root needs an initramfs that mounts NFS:
            # status says "not recorded" for each such generation, warning for every Pi would drown the rest).
            if label not in self.warned and set(needs) - {'initramfs_nfs'}:
                self.warned.add(label)
                self.host.warn(
                    'bakeform %s has no record of what its root can do (it was registered before bakeform recorded '
                    'it): the settings of its Pis are not checked against it (mount.nfs for boot_mount: nfs, '
                    'cloud-init for cloud_init, an initramfs that mounts NFS); a generation registered or captured '
                    'from now on has one' % label)
            return
        found = _capabilities.lacking(record, needs, label)
        if found and live:
            try:
                with Tree(live, 'the root of Pi %s' % item['serial']) as tree:
                    found = [(need, msg) for need, msg in found if not live_has(tree, need)]
            except ConfinedError:
                pass  # its mount point is not a directory we can read: the image's record stands
        if found:
            raise RootError('root of Pi %s: %s' % (item['serial'], '; and '.join(msg for _need, msg in found)))
