# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bakeform generations for the tests of pi_root and pi_boot: a store of format 3 made from real ingests.

``ingest(store, name, src)`` runs the bakeform module on an image under a name of its own and moves what it
stored into the next generation of ``name`` (``<store>/<name>/generations/<N>/`` and ``bakeform.json``,
written with ``store.generations``), whether the module stored it in the format before generations
(``<store>/<tmp>/manifest.json``) or already as generation 1 of the temporary name. ``add_generation``
does the same for a bakeform directory a test made by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from modrun import run_module

from ansible_collections.pifleet.netboot.plugins.module_utils.store import capabilities as caps
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as gens

FILES = (gens.MANIFEST, gens.BOOT_DIR, gens.ROOT_IMAGE, gens.BOOT_IMAGE)


def mke2fs(image, tree, size='32M', *options):
    subprocess.run(['mke2fs', '-q', '-F', '-t', 'ext4', '-O', 'metadata_csum_seed', *options, '-d', str(tree),
                    str(image), size], check=True, capture_output=True)


def _run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def make_generation(store, name, files, sha, *, boot=None, current=True, capabilities=False):
    """The next generation of ``name`` made by hand: a root.img and boot.img (ext4 built from ``files`` and
    ``boot``, {path: text}), boot/ and a manifest; no bakeform run. Returns its number.

    With ``capabilities`` its manifest records what its root can do, read from root.img as bakeform reads it;
    without, it is a manifest of before that record (its Pis' settings are not checked)."""
    src = store.parent / ('src-%s-%s' % (name, os.urandom(3).hex()))
    for rel, text in files.items():
        (src / 'root' / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / 'root' / rel).write_text(text)
    (src / 'root/boot/firmware').mkdir(parents=True, exist_ok=True)
    for rel, text in (boot or {'config.txt': 'arm_64bit=1\n'}).items():
        (src / 'boot' / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / 'boot' / rel).write_text(text)
    dest = src / 'stored'
    dest.mkdir()
    shutil.copytree(src / 'boot', dest / 'boot')
    mke2fs(dest / 'root.img', src / 'root')
    mke2fs(dest / 'boot.img', src / 'boot', '8M')
    manifest = {'name': name, 'format': 2, 'sha256': sha}
    if capabilities:
        manifest[caps.KEY] = caps.detect_image(_run, str(dest / 'root.img'), sorted(boot or {'config.txt': ''}))
    (dest / 'manifest.json').write_text(json.dumps(manifest))
    number = add_generation(store, name, dest, current=current)
    shutil.rmtree(src)
    return number


def add_generation(store, name, src, *, current=True, created='2026-01-01T00:00:00Z'):
    """Move the bakeform files in ``src`` (manifest.json, boot/, root.img, boot.img) into the next generation of
    ``name`` in ``store``; it becomes the current one unless ``current`` is false. Returns its number."""
    bake = gens.Bakeform(str(store), name)
    index = bake.load_index(strict=False) or gens.new_index(name)
    number = index['next']
    dest = bake.gen_dir(number)
    os.makedirs(dest, 0o755)
    for item in FILES:
        os.rename(os.path.join(str(src), item), os.path.join(dest, item))
    with open(bake.manifest_path(number), encoding='utf-8') as handle:
        manifest = json.load(handle)
    manifest.update(format=gens.FORMAT, bakeform=name, generation=number, origin={'kind': 'image'})
    with open(bake.manifest_path(number), 'w', encoding='utf-8') as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    index['generations'][str(number)] = {'sha256': manifest.get('sha256'), 'created': created,
                                         'source': manifest.get('source'), 'origin': manifest['origin']}
    index['next'] = number + 1
    if current or index['current'] is None:
        index['current'] = number
    gens.write_index(bake, index)
    return number


def ingest(store, name, src, lock_file=None, current=True):
    """The image ``src`` as the next generation of ``name``: ``(generation, manifest)``."""
    tmp = 'ingest-%s' % os.urandom(4).hex()
    args = {'name': tmp, 'src': str(src), 'store': str(store)}
    if lock_file:
        args['lock_file'] = str(lock_file)
    result = run_module('bakeform', args)
    assert not result.get('failed'), result
    stored = os.path.join(str(store), tmp)
    if os.path.exists(os.path.join(stored, gens.INDEX)):  # the module keeps generations itself
        stored = gens.Bakeform(str(store), tmp).gen_dir(gens.Bakeform(str(store), tmp).current())
    number = add_generation(store, name, stored, current=current)
    shutil.rmtree(os.path.join(str(store), tmp))
    return number, gens.Bakeform(str(store), name).manifest(number)
