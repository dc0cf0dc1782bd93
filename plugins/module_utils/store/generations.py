# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bakeform generations: where each generation of a bakeform lives in the store, and the index of them.

A bakeform name holds generations. A generation is one image made ready to boot (its boot files, its
golden root, its manifest), numbered from 1 and never changed once made: a new image under the same
name is a new generation beside the old ones. Each Pi's root records the generation it was built from,
and its boot folder serves that generation's boot files, so a kernel always boots with its own modules.

Store format 3, in ``<store>/<name>/``:

- ``bakeform.json``               the index: which generation new roots get (``current``), the next
                                  number to give, the pinned generations, and a summary of each;
- ``generations/<N>/``            one generation: ``manifest.json``, ``boot/`` (served by the TFTP hook),
                                  ``boot.img`` and ``root.img`` (the golden root), ``boot-nfs/`` (where
                                  ``boot.img`` is mounted for Pis that mount their boot files over NFS).

A generation is named ``<name>@<N>`` in messages, results and ``status``. Pure paths and the index here;
the build is ``bakeformwork``, the references from Pi roots are read by ``pistate.roots.references``.
"""

from __future__ import annotations

import json
import os
import re

from ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic import write_text
from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import is_name

FORMAT = 3
INDEX = 'bakeform.json'
GENERATIONS = 'generations'
MANIFEST = 'manifest.json'
ROOT_IMAGE = 'root.img'  # the golden root: the image's own root partition, an ext4 file system
BOOT_IMAGE = 'boot.img'  # the boot files as a read-only ext4 file system, for Pis that mount them over NFS
BOOT_DIR = 'boot'  # the boot files as a tree, for the TFTP hook
BOOT_EXPORT = 'boot-nfs'  # where pi_root mounts boot.img read-only, for the NFS export
BOOT_EXPORT_OPTIONS = ('ro', 'nosuid', 'nodev', 'noexec')  # how boot.img is mounted there
INDEX_LIMIT = 1 << 20
_ID = re.compile(r'[1-9][0-9]{0,8}')
_LABEL = re.compile(r'(?P<name>[^@\s]+)@(?P<generation>[1-9][0-9]{0,8})')


class GenerationError(Exception):
    """A generation that cannot be found or used; the message says which and what to do."""


def label(name, generation):
    """``bookworm-lite@3``: how a generation is named to people."""
    return '%s@%s' % (name, generation)


def parse_label(text):
    """``(name, generation)`` of ``name@N``; ValueError when it is not one."""
    match = _LABEL.fullmatch(str(text).strip())
    if not match or not is_name(match.group('name')):
        raise ValueError('%r is not a bakeform generation: write it as <bakeform>@<number>, '
                         'for example bookworm-lite@3' % (text,))
    return match.group('name'), int(match.group('generation'))


def check_id(value, what='generation'):
    """A generation number (an int >= 1) from an int or its decimal text; ValueError otherwise."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and _ID.fullmatch(value))):
        raise ValueError('%s %r is not a generation number (1, 2, 3 ...)' % (what, value))
    number = int(value)
    if number < 1:
        raise ValueError('%s %r is not a generation number (1, 2, 3 ...)' % (what, value))
    return number


def same_content(index, sha256):
    """The generations of a bakeform's index whose image has the content ``sha256``, oldest first. A root
    marker made before generations names its image by that content only (``bakeform_sha256``)."""
    if not sha256:
        return []
    found = []
    for key, summary in ((index or {}).get('generations') or {}).items():
        if isinstance(summary, dict) and summary.get('sha256') == sha256 and _ID.fullmatch(str(key)):
            found.append(int(key))
    return sorted(found)


def marker_generation(index, marker):
    """The generation a Pi's root marker stands for: its own ``generation``, or, for a marker made before
    generations, the oldest generation of the same content; None when neither is known. pi_status and the boot
    watcher's metrics both read a root's generation through this."""
    generation = marker.get('generation')
    if isinstance(generation, int) and not isinstance(generation, bool):
        return generation
    found = same_content(index, marker.get('bakeform_sha256'))
    return found[0] if found else None


class Bakeform:
    """The paths of one bakeform name in a store, and what its index and directories say."""

    def __init__(self, store, name):
        self.store, self.name = store, name
        self.dir = os.path.join(store, name)
        self.index_path = os.path.join(self.dir, INDEX)
        self.generations_dir = os.path.join(self.dir, GENERATIONS)

    # ------------------------------------------------------------------ paths of one generation

    def gen_dir(self, generation):
        return os.path.join(self.generations_dir, str(generation))

    def manifest_path(self, generation):
        return os.path.join(self.gen_dir(generation), MANIFEST)

    def boot_dir(self, generation):
        return os.path.join(self.gen_dir(generation), BOOT_DIR)

    def root_image(self, generation):
        return os.path.join(self.gen_dir(generation), ROOT_IMAGE)

    def boot_image(self, generation):
        return os.path.join(self.gen_dir(generation), BOOT_IMAGE)

    def boot_export(self, generation):
        return os.path.join(self.gen_dir(generation), BOOT_EXPORT)

    def label(self, generation):
        return label(self.name, generation)

    @property
    def legacy_manifest_path(self):
        """Where store format 2 kept the one manifest: directly in ``<store>/<name>/``."""
        return os.path.join(self.dir, MANIFEST)

    def layout(self):
        """``none``, ``generations`` (format 3), ``format2`` (a manifest directly in the directory, before
        generations) or ``unknown`` (a directory that is neither)."""
        if not os.path.lexists(self.dir):
            return 'none'
        if os.path.lexists(self.index_path) or (self.ids() and not os.path.lexists(self.legacy_manifest_path)):
            return 'generations'
        if os.path.isfile(self.legacy_manifest_path):
            return 'format2'
        return 'unknown'

    # ------------------------------------------------------------------ what is there

    def load_index(self, strict=True):
        """The index (a dict), None when there is none; an unreadable one raises GenerationError unless not strict."""
        try:
            with open(self.index_path, encoding='utf-8') as handle:
                index = json.loads(handle.read(INDEX_LIMIT))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except ValueError as exc:
            if not strict:
                return None
            raise GenerationError('%s is not valid JSON (%s): it is written by pifleet.netboot.bakeform only; '
                                  'restore it from a backup or remove bakeform %s and register it again'
                                  % (self.index_path, exc, self.name)) from exc
        if not isinstance(index, dict) or index.get('format') != FORMAT:
            if strict:
                raise GenerationError('%s is not a bakeform index of format %d' % (self.index_path, FORMAT))
            return None
        return index

    def ids(self):
        """The generation numbers whose directories are complete (manifest, boot files and both images), sorted."""
        try:
            names = os.listdir(self.generations_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(n) for n in names if _ID.fullmatch(n) and self.is_complete(int(n)))

    def is_complete(self, generation):
        path = self.gen_dir(generation)
        return os.path.isdir(os.path.join(path, BOOT_DIR)) and all(
            os.path.isfile(os.path.join(path, name)) for name in (MANIFEST, ROOT_IMAGE, BOOT_IMAGE))

    def current(self, index=None):
        """The generation new roots get: the index's ``current`` when that generation is there, else the newest."""
        index = self.load_index(strict=False) if index is None else index
        ids = self.ids()
        wanted = (index or {}).get('current')
        if wanted in ids:
            return wanted
        return ids[-1] if ids else None

    def manifest(self, generation, strict=True):
        """The manifest of one generation; None when missing (or unreadable, unless ``strict``)."""
        path = self.manifest_path(generation)
        try:
            with open(path, encoding='utf-8') as handle:
                return json.load(handle)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except ValueError as exc:
            if not strict:
                return None
            raise GenerationError('%s is not valid JSON (%s): remove generation %s with pifleet.netboot.bakeform '
                                  '(state: absent, generation: %s) once no Pi uses it'
                                  % (path, exc, self.label(generation), generation)) from exc

    def require(self, generation, who):
        """The manifest of a generation a Pi needs; GenerationError naming the Pi when it is not there."""
        manifest = self.manifest(generation) if self.is_complete(generation) else None
        if manifest is None:
            there = ', '.join(str(n) for n in self.ids()) or 'none'
            raise GenerationError('generation %s not found for %s: %s is missing or incomplete (generations of %s '
                                  'in the store: %s); register the image with pifleet.netboot.bakeform, or choose a '
                                  'generation that is there' % (self.label(generation), who, self.gen_dir(generation),
                                                                self.name, there))
        return manifest


def new_index(name):
    return {'format': FORMAT, 'name': name, 'current': None, 'next': 1, 'pinned': [], 'generations': {}}


def entry(manifest):
    """The index's summary of one generation, taken from its manifest."""
    return {'sha256': manifest.get('sha256'), 'created': manifest.get('created'), 'source': manifest.get('source'),
            'origin': manifest.get('origin') or {'kind': 'image'}}


def reconcile(bakeform, index):
    """The index as the generation directories say it must be (a new dict; ``index`` may be None).

    A run killed after it renamed a new generation into place but before it wrote the index left a
    generation numbered ``next`` or more: it is added and becomes current, as that run meant. A
    generation whose directory is gone (a removal killed before the index was written) is dropped.
    """
    ids = bakeform.ids()
    old = index or new_index(bakeform.name)
    known = old.get('generations') or {}
    wanted = dict(old, format=FORMAT, name=bakeform.name, generations={})
    for number in ids:
        key = str(number)
        wanted['generations'][key] = known[key] if key in known else entry(bakeform.manifest(number) or {})
    first_free = (ids[-1] + 1) if ids else 1
    next_id = old.get('next') if isinstance(old.get('next'), int) else 1
    unrecorded = [number for number in ids if number >= next_id]
    wanted['next'] = max(next_id, first_free)
    if unrecorded:
        wanted['current'] = unrecorded[-1]
    elif old.get('current') not in ids:
        wanted['current'] = ids[-1] if ids else None
    wanted['pinned'] = sorted({p for p in old.get('pinned') or [] if isinstance(p, int) and not isinstance(p, bool)})
    return wanted


def write_index(bakeform, index):
    """Replace the index whole (atomically): readers see the old one or the new one, never a mix."""
    write_text(bakeform.index_path, json.dumps(index, indent=2, sort_keys=True) + '\n', 0o644)
