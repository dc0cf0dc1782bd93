# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bakeform's build: one image verified, split and prepared in a scratch directory, then moved into the store.

``Build(run_command, name, store, source=, max_size=, xz_bin=, unmount=)`` makes one bakeform. ``build(expected,
download=None)`` verifies the source against ``expected`` (sha256) before a byte is unpacked (a URL is first
downloaded into the scratch directory through ``download()``, which returns ``(response, info)`` as
``fetch_url`` does), streams the image once through ``ImageSplitter`` (checksum, size cap and free space on the
way), extracts the boot files, prepares the golden root image, writes the manifest and installs the whole
directory with one rename. An interrupted build leaves only a scratch directory, which the next run sweeps.
No AnsibleModule here: the module injects its runner, its download and its unmount.
"""

from __future__ import annotations

import errno
import os

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common.sizes import human
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
    hash_stream,
    read_config_txt,
    source_stat,
    stream_image,
    write_json,
)


class Build:
    def __init__(self, run_command, name, store, *, source, max_size, xz_bin=None, unmount=None):
        self.run_command, self.name, self.store, self.source = run_command, name, store, source
        self.max_size, self.xz_bin, self.unmount = max_size, xz_bin, unmount
        self.dest = os.path.join(store, name)
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

    def build(self, expected, download=None):
        """Make the bakeform from ``self.source`` (a file, or a URL when ``download`` is given); its manifest."""
        ingest = Ingest(self.run_command, self.name)
        scratch = _atomic.ScratchDir(self.store, self.name)
        try:
            built = scratch.join('build')
            os.mkdir(built, 0o755)
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
                config_txt=read_config_txt(boot_dir))
            write_json(os.path.join(built, MANIFEST), manifest)
            os.chmod(built, 0o755)
            _atomic.install(scratch, built, self.dest)
            return manifest
        except PartitionError as exc:
            raise IngestError('%s cannot be used: %s' % (self.what, exc)) from exc
        finally:
            scratch.close(self.unmount)


def os_error_message(store, name, exc):
    """The message for an OSError while ingesting bakeform ``name``: the store is untouched either way."""
    if exc.errno == errno.ENOSPC:
        return ('the bakeform store %s ran out of space while ingesting bakeform %s (%s free now); nothing was '
                'changed: make room there or use a larger store' % (store, name, human(_atomic.free_bytes(store))))
    return 'ingesting bakeform %s into %s failed: %s; nothing was changed' % (name, store, exc)
