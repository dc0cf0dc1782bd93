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


def write_index(bakeform, index):
    """Replace the index whole (atomically): readers see the old one or the new one, never a mix."""
    write_text(bakeform.index_path, json.dumps(index, indent=2, sort_keys=True) + '\n', 0o644)
