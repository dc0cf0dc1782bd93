# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Pi's current and previous roots, moved as pairs (image + marker), safe against a kill at any point.

A root is a pair: ``<serial>.img`` and its marker ``<serial>.json``; the root kept for a rollback is
``<serial>.prev.img`` + ``<serial>.prev.json`` (``roots.Layout``). Every marker records the UUID of
its image's file system (``fs_uuid``). A change that moves more than one file first writes a journal,
``<serial>.swap.json``, with every marker it involves; then renames (each atomic), then writes the
markers, then removes the journal. ``recover()`` (the next run, under the bakery lock) finds a journal
only after a kill, and makes the pairs whole again from what is on disk:

- a previous image that is a second name of the current one (a kill in the middle of keeping it) goes;
- a previous image without a current one becomes the current one (so a Pi is never without a root);
- each image gets the marker, from the journal, that names its UUID; a marker left without its image
  goes; a previous image that no marker names goes (it was being replaced).

Renames never copy: on XFS, btrfs and ext4 keeping a previous root costs a hard link, and the swap of a
rollback is one ``renameat2(RENAME_EXCHANGE)``. No AnsibleModule here.
"""

from __future__ import annotations

import json
import os

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import read_superblock
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots


def fs_uuid(image):
    """The UUID of the ext4 file system in ``image`` (its superblock, written by the bakery's kernel); None if none."""
    block = read_superblock(image) if os.path.isfile(image) else None
    return block['uuid'] if block else None


def write_journal(lay, markers):
    _atomic.write_text(lay.journal, json.dumps({'markers': [m for m in markers if m]}, sort_keys=True) + '\n', 0o600)


def write_marker(path, marker):
    _atomic.write_text(path, _roots.marker_text(marker), 0o600)


def _unlink(*paths):
    for path in paths:
        if os.path.lexists(path):
            os.unlink(path)


def install(lay, scratch, image, marker, *, current=None, keep_previous=False):
    """Make ``image`` (a new root in ``scratch``, marker ``marker``) the Pi's current root.

    ``current`` is the marker of the root there now (None when there is none); with ``keep_previous``
    that root becomes the previous one (an older previous root goes), otherwise it goes and the previous
    root stays as it was.
    """
    if current is None and not os.path.lexists(lay.image):
        write_marker(lay.marker, marker)  # a marker without its image is no root: the next run clones again
        os.rename(image, lay.image)
        return
    write_journal(lay, [current, marker])
    if keep_previous and os.path.isfile(lay.image):
        second = scratch.join('previous.img')
        os.link(lay.image, second)  # the old root under a second name: it is never without one
        os.rename(second, lay.prev_image)
        write_marker(lay.prev_marker, current)
    os.rename(image, lay.image)
    write_marker(lay.marker, marker)
    os.unlink(lay.journal)


def swap(lay, current, previous):
    """Exchange the current and previous roots (images in one atomic step); ``previous`` becomes the current marker."""
    write_journal(lay, [current, previous])
    if not _atomic.exchange(lay.image, lay.prev_image):
        os.unlink(lay.journal)
        raise _roots.RootError('rolling back needs renameat2(RENAME_EXCHANGE), which the file system of %s does not '
                               'offer; keep roots_dir on XFS, btrfs or ext4' % os.path.dirname(lay.image))
    write_marker(lay.marker, previous)
    write_marker(lay.prev_marker, current)
    os.unlink(lay.journal)


def remove_previous(lay):
    """The previous root goes: its image first, so a marker is never left naming a missing image for long."""
    _unlink(lay.prev_image, lay.prev_marker)


def recover(lay):
    """Make the pairs whole after a kill (see the module docstring); returns what was done, [] without a journal."""
    try:
        with open(lay.journal, encoding='utf-8') as handle:
            journal = json.loads(handle.read(_roots.MARKER_LIMIT * 4))
    except FileNotFoundError:
        return []
    except ValueError:
        journal = {}
    known = {m.get('fs_uuid'): m for m in journal.get('markers') or [] if isinstance(m, dict) and m.get('fs_uuid')}
    done = []
    if os.path.isfile(lay.image) and os.path.isfile(lay.prev_image) and os.path.samefile(lay.image, lay.prev_image):
        _unlink(lay.prev_image, lay.prev_marker)
        done.append('dropped a second name of the current root')
    if not os.path.isfile(lay.image) and os.path.isfile(lay.prev_image):
        os.rename(lay.prev_image, lay.image)
        _unlink(lay.prev_marker)
        done.append('made the previous root the current one')
    for image, marker_path, kept in ((lay.image, lay.marker, True), (lay.prev_image, lay.prev_marker, False)):
        uuid = fs_uuid(image)
        existing = _roots.load_marker(marker_path, strict=False)
        if uuid is None:
            if os.path.lexists(marker_path):
                _unlink(marker_path)
                done.append('removed %s (no image)' % os.path.basename(marker_path))
        elif uuid in known:
            if existing != known[uuid]:
                write_marker(marker_path, known[uuid])
                done.append('wrote %s' % os.path.basename(marker_path))
        elif not (existing and existing.get('fs_uuid') == uuid) and not kept:
            _unlink(image, marker_path)
            done.append('removed a previous root no marker names')
    os.unlink(lay.journal)
    return done
