# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bakeform's build: one generation made in a scratch directory, from an image or from a captured Pi root.

``Build(run_command, name, store, source=, max_size=, xz_bin=)`` makes generations of bakeform ``name``.
``make(scratch, generation, expected, download=None)`` verifies the source against ``expected`` (sha256)
before a byte is unpacked (a URL is first downloaded into the scratch directory through ``download()``,
which returns ``(response, info)`` as ``fetch_url`` does), streams the image once through ``ImageSplitter``
(checksum, size cap and free space on the way), extracts the boot files, prepares the golden root image and
writes the manifest, all in ``scratch/build``. ``from_capture()`` makes a generation of a root image
prepared by ``pistate.capture`` and the boot files of the generation that root was built from. The caller
renames the finished directory into place (``generationwork``); an interrupted build leaves only a scratch
directory, which the next run sweeps. No AnsibleModule here: the module injects its runner and its download.
"""

from __future__ import annotations

import errno
import os

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import read_superblock
from ansible_collections.pifleet.netboot.plugins.module_utils.common.sizes import human
from ansible_collections.pifleet.netboot.plugins.module_utils.common.version import COLLECTION_VERSION
from ansible_collections.pifleet.netboot.plugins.module_utils.store import capabilities as _capabilities
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as _gen
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import (
    BOOT_DIR,
    BOOT_IMAGE,
    MANIFEST,
    ROOT_IMAGE,
    ImageSplitter,
    Ingest,
    IngestError,
    PartitionError,
    copy_stream,
    hash_file,
    hash_stream,
    read_config_txt,
    source_stat,
    stream_image,
    utc_now,
    write_json,
)


class Build:
    def __init__(self, run_command, name, store, *, source, max_size=None, xz_bin=None):
        self.run_command, self.name, self.store, self.source = run_command, name, store, source
        self.max_size, self.xz_bin = max_size, xz_bin
        self.what = 'source %s of bakeform %s' % (source, name)

    def verify(self, expected, digest):
        if expected and digest != expected:
            raise IngestError('checksum mismatch for bakeform %s: expected sha256:%s, the source %s has sha256:%s; '
                              'nothing was unpacked. Download it again or correct checksum'
                              % (self.name, expected, self.source, digest))

    def need_space(self, count):
        free = _atomic.free_bytes(self.store)
        if free is not None and free < count:
            raise IngestError('the bakeform store %s has %s free, but bakeform %s needs up to %s for its partitions; '
                              'nothing was changed: make room there or use a larger store'
                              % (self.store, human(free), self.name, human(count)))

    def fetch(self, scratch, expected, download):
        """Download into the scratch directory, verifying the bytes before anything is unpacked."""
        response, info = download()
        if response is None or info.get('status') != 200:
            raise IngestError('fetching the source of bakeform %s from %s failed: %s (HTTP status %s)'
                              % (self.name, self.source, info.get('msg'), info.get('status')))
        length = info.get('content-length')
        if length and length.isdigit() and int(length) > self.max_size:
            raise IngestError('%s is %s, more than max_size; raise max_size if the image is really that large'
                              % (self.what, human(int(length))))
        path = scratch.join('download')
        with response:
            digest, _count = copy_stream(response, path, self.what, self.max_size)
        self.verify(expected, digest)
        return path

    def make(self, scratch, generation, expected, download=None):
        """Make generation ``generation`` from ``self.source`` (a file, or a URL when ``download`` is given) in
        ``scratch/build``; returns ``(that directory, its manifest)``."""
        ingest = Ingest(self.run_command, self.name)
        built = scratch.join('build')
        os.mkdir(built, 0o755)
        try:
            if download:
                path, stat_info = self.fetch(scratch, expected, download), None
            else:
                path, stat_info = self.source, source_stat(self.source)
                if expected:  # verify before unpacking a byte
                    with open(path, 'rb') as reader:
                        self.verify(expected, hash_stream(reader, self.what, self.max_size)[0])
            fat, root_img = scratch.join('boot.fat'), os.path.join(built, ROOT_IMAGE)
            splitter = ImageSplitter(fat, root_img, self.what, self.max_size, self.need_space)
            with open(path, 'rb') as reader:
                digest, source_bytes, image_bytes = stream_image(reader, splitter, self.what, self.xz_bin)
            self.verify(expected, digest)
            if download:
                os.unlink(path)
            os.chmod(root_img, 0o600)
            boot_dir = os.path.join(built, BOOT_DIR)
            boot_files = ingest.extract_boot(fat, boot_dir)
            os.unlink(fat)
            root_sb = ingest.prepare_root(root_img)
            ingest.boot_image(boot_dir, os.path.join(built, BOOT_IMAGE))
            manifest = ingest.manifest(
                source=self.source, digest=digest, source_bytes=source_bytes, image_bytes=image_bytes,
                table=splitter.table, boot=dict(splitter.boot, role='boot'), root=dict(splitter.root, role='root'),
                boot_files=boot_files, stat_info=stat_info, root_sb=root_sb, pretty=ingest.os_release(root_img),
                config_txt=read_config_txt(boot_dir), generation=generation, origin={'kind': 'image'},
                capabilities=ingest.capabilities(root_img, boot_files))
        except PartitionError as exc:
            raise IngestError('%s cannot be used: %s' % (self.what, exc)) from exc
        write_json(os.path.join(built, MANIFEST), manifest)
        return built, manifest

    def from_capture(self, built, generation, origin, source_bakeform, source_generation):
        """Finish generation ``generation`` in ``built``, which holds the captured ``root.img`` already: the boot
        files and boot.img of the source generation (reflinked where the file system can), and the manifest.

        The sha256 of a capture is its root image's: a capture is always a new generation (its root has a
        file system UUID of its own).
        """
        ingest = Ingest(self.run_command, self.name)
        source = source_bakeform.manifest(source_generation)
        root_img = os.path.join(built, ROOT_IMAGE)
        self.clone_tree(source_bakeform.boot_dir(source_generation), os.path.join(built, BOOT_DIR))
        self.clone_file(source_bakeform.boot_image(source_generation), os.path.join(built, BOOT_IMAGE))
        size = os.path.getsize(root_img)
        manifest = dict(
            source, name=self.name, bakeform=self.name, generation=generation, origin=origin, format=_gen.FORMAT,
            source=self.source, source_stat=None, sha256=hash_file(root_img), source_size=size, image_size=size,
            root_uuid=read_superblock(root_img)['uuid'], root_bytes=size, pretty_name=ingest.os_release(root_img),
            created=utc_now(), collection_version=COLLECTION_VERSION)
        # What the captured root can do: its own (a package installed on the Pi counts), not its source's.
        manifest[_capabilities.KEY] = ingest.capabilities(root_img, manifest.get('boot_files') or [])
        write_json(os.path.join(built, MANIFEST), manifest)
        return manifest

    def clone_file(self, src, dest):
        reflink_copy(self.run_command, src, dest, 'for bakeform %s' % self.name)

    def clone_tree(self, src, dest):
        reflink_copy(self.run_command, src, dest, 'for bakeform %s' % self.name, tree=True)


def reflink_copy(run, src, dest, why, tree=False):
    """Copy ``src`` (a file, or a tree) sharing its extents where the file system can (XFS, btrfs): a boot file
    system or a boot tree then costs nothing, and it is a file of its own (never changed through the other)."""
    argv = ['cp', '-a', '--reflink=auto', '--', src, dest] if tree else [
        'cp', '--reflink=auto', '--sparse=always', '--preserve=mode', '--', src, dest]
    rc, out, err = run(argv)
    if rc != 0:
        raise IngestError('copying %s %s failed: %s' % (src, why, (err or out).strip()))


def os_error_message(store, name, exc):
    """The message for an OSError while ingesting bakeform ``name``: the store is untouched either way."""
    if exc.errno == errno.ENOSPC:
        return ('the bakeform store %s ran out of space while ingesting bakeform %s (%s free now); nothing was '
                'changed: make room there or use a larger store' % (store, name, human(_atomic.free_bytes(store))))
    return 'ingesting bakeform %s into %s failed: %s; nothing was changed' % (name, store, exc)
