# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bakeform store: ingest a Pi OS image into boot files, a golden root and a manifest (one generation).

Where each generation lives is ``generations``. Pure logic plus an ``Ingest`` that drives external tools
through one ``run(argv)`` callable (``AnsibleModule.run_command`` in the module, ``subprocess`` in tests).
No AnsibleModule here.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import lzma
import os
import struct
import subprocess
import threading
import time

from ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic import write_new
from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import is_name
from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import read_superblock
from ansible_collections.pifleet.netboot.plugins.module_utils.common.version import COLLECTION_VERSION
from ansible_collections.pifleet.netboot.plugins.module_utils.store import capabilities as _capabilities
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations as _gen
from ansible_collections.pifleet.netboot.plugins.module_utils.store.partitions import (
    PartitionError,
    detect_kernels,
    detect_models,
    read_table,
    select_boot_and_root,
)

CHUNK = 1024 * 1024
XZ_MAGIC = b'\xfd7zXZ\x00'
# 1: golden root as a directory tree (before 0.3.0); 2: one image per name, directly in <store>/<name>/;
# 3: generations (see generations.py).
# The names of a generation's files (generations.py has the layout; these are read by older importers too).
MANIFEST, ROOT_IMAGE, BOOT_IMAGE = _gen.MANIFEST, _gen.ROOT_IMAGE, _gen.BOOT_IMAGE
BOOT_DIR, BOOT_EXPORT = _gen.BOOT_DIR, _gen.BOOT_EXPORT
STORE_FORMAT = _gen.FORMAT
IMAGE_FORMATS = (2, _gen.FORMAT)  # root.img, boot.img and boot/ beside the manifest (format 1 had a root directory)


class IngestError(Exception):
    """A problem with the source or the host; the message says what and how to fix it."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.details = details


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def check_name(name):
    if not is_name(name):
        return ('bakeform name %r is not valid: use lower-case letters, digits, ".", "_" and "-", '
                'starting with a letter or digit (for example "bookworm-lite-2025.05")' % name)
    return None


def source_stat(path):
    """What identifies "the same source file" without hashing it again."""
    st = os.stat(path)
    return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns, 'inode': st.st_ino, 'device': st.st_dev}


def hash_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as src:
        for block in iter(lambda: src.read(CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def is_complete(dest, manifest=None):
    """A stored generation (or a bakeform of format 2) has its boot files and images beside the manifest; with
    ``manifest``, it must also be of a format whose files are these (2: one per name, 3: one per generation)."""
    if manifest is not None and manifest.get('format') not in IMAGE_FORMATS:
        return False
    return os.path.isdir(os.path.join(dest, BOOT_DIR)) and all(
        os.path.isfile(os.path.join(dest, name)) for name in (ROOT_IMAGE, BOOT_IMAGE))


def load_manifest(dest, strict=True):
    """The manifest of the bakeform stored in ``dest``: what every reader of the store goes through.

    None when there is none; an unreadable one raises IngestError, or is None too unless ``strict``.
    """
    try:
        with open(os.path.join(dest, MANIFEST), encoding='utf-8') as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        if not strict:
            return None
        raise IngestError('%s is not valid JSON (%s): it is written by pifleet.netboot.bakeform only; remove that '
                          'generation (state: absent, generation: <N>) or the bakeform once no Pi uses it'
                          % (os.path.join(dest, MANIFEST), exc)) from exc


def boot_models(dest):
    """The Pi models (strings) the bakeform stored in ``dest`` boots: its manifest's, else its boot files'.

    Only its boot files need be there: an older or half-made bakeform still serves them to the Pis.
    """
    try:
        return [str(model) for model in load_manifest(dest, strict=False)['models']]
    except (TypeError, KeyError):
        return detect_models(os.listdir(os.path.join(dest, BOOT_DIR)))  # no usable manifest: the boot files tell


def recorded(manifest, path, stat_now):
    """Whether ``manifest`` was ingested from the file at absolute ``path`` as it is now (``source_stat()``)."""
    return bool(stat_now) and manifest.get('source') == path and manifest.get('source_stat') == stat_now


def same_source(manifests, src, digest):
    """Find the generation that holds this source, as cheaply as possible.

    ``manifests`` is ``{generation: manifest}``. Returns ``(generation or None, digest)``; ``digest`` is the
    source's sha256 if it had to be (or was) known. A given checksum settles it; then a source file whose
    path, size, mtime, inode and device are those recorded when a generation was ingested; only then is
    the source hashed again.
    """
    if not digest and src:
        path = os.path.abspath(src)
        try:
            stat_now = source_stat(src)
        except OSError:
            stat_now = None
        for number, manifest in sorted(manifests.items()):
            if recorded(manifest, path, stat_now):
                return number, manifest.get('sha256')
        digest = hash_file(src)
    if not digest:
        return None, None
    found = [number for number, manifest in sorted(manifests.items()) if manifest.get('sha256') == digest]
    return (found[0] if found else None), digest


_ZEROS = bytes(65536)
HEAD = 1024 * 1024  # decompressed bytes kept before the partition table is read (MBR and GPT fit)


class SparseWriter:
    """Write a byte stream to a file, seeking over all-zero blocks so the result is sparse."""

    def __init__(self, handle):
        self.handle = handle
        self.size = 0

    def write(self, data, start=0, end=None):
        """Write ``data[start:end]``. The zero test compares each 64 KiB block in place (``bytes.startswith`` with
        offsets: no slice, no copy); a slice per block copied every byte of a 2 GiB image once more, beside xz."""
        # bytes, not memoryview: comparing memoryviews goes item by item (4 s of CPU per 2 GiB, beside xz).
        data = data if isinstance(data, bytes) else bytes(data)
        end = len(data) if end is None else end
        run_start, run_zero = start, None
        for offset in range(start, end, 65536):
            stop = min(offset + 65536, end)
            zero = data.startswith(_ZEROS if stop - offset == 65536 else _ZEROS[:stop - offset], offset, stop)
            if zero != run_zero and run_zero is not None:
                self._emit(data, run_start, offset, run_zero)
                run_start = offset
            run_zero = zero
        if run_zero is not None:
            self._emit(data, run_start, end, run_zero)
        self.size += end - start

    def _emit(self, data, start, end, zero):
        if zero:
            self.handle.seek(end - start, os.SEEK_CUR)
        else:
            self.handle.write(memoryview(data)[start:end])

    def close(self):
        self.handle.truncate(self.size)


class ImageSplitter:
    """The sink of a decompressed image: each partition's bytes go straight to a sparse file of their own.

    The first ``HEAD`` bytes are held until the partition table in them is read (a bad table stops
    the stream there); then the boot (FAT) partition goes to ``boot_path`` and the root (ext4) to
    ``root_path``, and the bytes between and after them are only counted. No full image is ever
    written, so unpacking costs one pass and the root partition is the golden root file system as is.
    ``limit`` caps the decompressed size (a small file can unpack to terabytes).
    """

    def __init__(self, boot_path, root_path, what, limit=None, free_space=None):
        self.paths = {'boot': boot_path, 'root': root_path}
        self.what = what
        self.limit = limit
        self.free_space = free_space  # callable(bytes needed) raising when the store lacks them
        self.head = bytearray()
        self.size = 0
        self.table = self.boot = self.root = None
        self.sinks = []  # (start, end, SparseWriter)

    def write(self, data):
        if self.limit is not None and self.size + len(data) > self.limit:
            raise IngestError('%s unpacks to more than max_size (%s bytes); raise max_size if the image is '
                              'really that large' % (self.what, self.limit))
        if self.table is None:
            self.head += data
            self.size += len(data)
            if len(self.head) >= HEAD:
                self._open()
                self._route(bytes(self.head), 0)
                self.head = None
            return
        self._route(data, self.size)
        self.size += len(data)

    def _open(self):
        try:
            self.table = read_table(io.BytesIO(bytes(self.head)))
            self.boot, self.root = select_boot_and_root(self.table, None)
        except (PartitionError, struct.error) as exc:
            raise PartitionError(str(exc)) from None
        if self.free_space is not None:
            self.free_space(self.boot['size'] + self.root['size'])
        for part in (self.boot, self.root):
            handle = open(self.paths['boot' if part is self.boot else 'root'], 'wb')
            self.sinks.append((part['start'], part['start'] + part['size'], SparseWriter(handle)))

    def _route(self, data, offset):
        end = offset + len(data)
        for start, stop, sink in self.sinks:
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi:
                sink.handle.seek(lo - start)
                sink.size = lo - start
                sink.write(data, lo - offset, hi - offset)  # no copy: the sink reads its part in place

    def close(self):
        if self.table is None and self.size:
            self._open()
            self._route(bytes(self.head), 0)
            self.head = None
        for start, stop, sink in self.sinks:
            sink.size = stop - start  # the partition's length, holes included
            sink.close()
            sink.handle.close()
        if self.table is not None:
            select_boot_and_root(self.table, self.size)  # a partition past the end of the stream is an error

    def abort(self):
        for _start, _stop, sink in self.sinks:
            sink.handle.close()


XZ_STALL_SECONDS = 600  # the xz program is killed when neither its input nor its output moved for this long


def stream_image(reader, out, what, xz_bin=None, stall=XZ_STALL_SECONDS):
    """Copy a source stream (``read(n)``) to ``out``: hash it, unpack xz, write sparsely.

    ``out`` is a path (the whole image, sparse) or a sink such as ``ImageSplitter``. One pass,
    whatever the source. xz (detected by its magic, not the file name) is unpacked by the ``xz``
    program when ``xz_bin`` is given, which uses every core, else by Python's lzma; the program is killed
    when for ``stall`` seconds it takes no input and gives no output (an image is too big for one deadline).
    Returns ``(sha256_hex, source_bytes, image_bytes)``.
    """
    digest = hashlib.sha256()
    first = reader.read(CHUNK)
    if not first:
        raise IngestError('%s is empty (0 bytes)' % what)
    counted = [0]

    def chunks():
        chunk = first
        while chunk:
            digest.update(chunk)
            counted[0] += len(chunk)
            yield chunk
            try:
                chunk = reader.read(CHUNK)
            except OSError as exc:  # a dropped download, an I/O error on the source disk
                raise IngestError('reading %s failed after %d bytes: %s' % (what, counted[0], exc)) from exc

    handle = open(out, 'wb') if isinstance(out, str) else None
    sink = SparseWriter(handle) if handle else out
    try:
        if not first.startswith(XZ_MAGIC):
            for chunk in chunks():
                sink.write(chunk)
        elif xz_bin:
            _unxz_process(xz_bin, chunks(), sink, what, stall)
        else:
            _unxz_python(chunks(), sink, what)
        sink.close()
    except BaseException:
        if handle is None:
            sink.abort()
        raise
    finally:
        if handle is not None:
            handle.close()
    if sink.size == 0:
        raise IngestError('%s decompresses to nothing (an empty image)' % what)
    return digest.hexdigest(), counted[0], sink.size


def hash_stream(reader, what, limit=None):
    """sha256 and length of a whole stream, refusing more than ``limit`` bytes."""
    digest, count = hashlib.sha256(), 0
    while True:
        try:
            chunk = reader.read(CHUNK)
        except OSError as exc:
            raise IngestError('reading %s failed after %d bytes: %s' % (what, count, exc)) from exc
        if not chunk:
            return digest.hexdigest(), count
        count += len(chunk)
        if limit is not None and count > limit:
            raise IngestError('%s is larger than max_size (%d bytes); raise max_size if it is really that large'
                              % (what, limit))
        digest.update(chunk)


def copy_stream(reader, path, what, limit=None):
    """Save a download to ``path`` while hashing it; (sha256, bytes). Nothing is unpacked."""
    digest, count = hashlib.sha256(), 0
    with open(path, 'wb') as out:
        while True:
            try:
                chunk = reader.read(CHUNK)
            except OSError as exc:
                raise IngestError('downloading %s failed after %d bytes: %s' % (what, count, exc)) from exc
            if not chunk:
                break
            count += len(chunk)
            if limit is not None and count > limit:
                raise IngestError('%s is larger than max_size (%d bytes); stopped the download. Raise max_size '
                                  'if the image is really that large' % (what, limit))
            digest.update(chunk)
            out.write(chunk)
    if count == 0:
        raise IngestError('%s is empty (0 bytes)' % what)
    return digest.hexdigest(), count


def _truncated(what):
    return IngestError('%s is a truncated .xz file (the stream ends before its end-of-stream marker): '
                       'download it again' % what)


def _unxz_python(chunks, sink, what):
    decompressor = lzma.LZMADecompressor()
    for chunk in chunks:
        try:
            sink.write(decompressor.decompress(chunk))
        except lzma.LZMAError as exc:
            raise IngestError('%s is not a valid .xz stream (%s): download it again' % (what, exc)) from exc
    if not decompressor.eof:
        raise _truncated(what)


def _unxz_process(xz_bin, chunks, sink, what, stall):
    # A pipe rather than run_command: the image is far bigger than memory and must stream through.
    proc = subprocess.Popen([xz_bin, '--decompress', '--stdout', '--threads=0', '--quiet'],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    failure, moved, stalled, done = [], [time.monotonic()], [], threading.Event()

    def feed():
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
                moved[0] = time.monotonic()
        except BrokenPipeError:
            pass  # xz stopped on bad data; its exit status tells why
        except IngestError as exc:  # a source read error, re-raised in the caller's thread
            failure.append(exc)
            proc.kill()
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass

    def watch():  # a hung xz (or a source that stopped sending) must not hold the bakery's lock for ever
        while not done.wait(min(1.0, stall / 4.0)):
            if time.monotonic() - moved[0] > stall:
                stalled.append(True)
                proc.kill()
                return

    feeder = threading.Thread(target=feed, daemon=True)
    watcher = threading.Thread(target=watch, daemon=True)
    feeder.start()
    watcher.start()
    try:
        for block in iter(lambda: proc.stdout.read(CHUNK), b''):
            moved[0] = time.monotonic()
            sink.write(block)
    except BaseException:
        proc.kill()  # unblocks the feeder, which may be waiting on a full pipe
        raise
    finally:
        done.set()
        watcher.join()
        feeder.join(5 if stalled else None)  # after a stall it may wait on the source: it ends on its own
        err = proc.stderr.read().decode(errors='replace').strip()
        proc.wait()
    if failure:
        raise failure[0]
    if stalled:
        tool = os.path.basename(xz_bin)
        raise IngestError('unpacking %s made no progress for %g s (neither the source nor %s moved), so %s was '
                          'killed: check the source, or unpack it by hand and give the .img'
                          % (what, stall, tool, tool))
    if proc.returncode != 0:
        if 'Unexpected end of input' in err:
            raise _truncated(what)
        raise IngestError('%s is not a valid .xz stream (%s): download it again' % (what, err or proc.returncode))


def list_tree(top):
    """Relative paths of the regular files below ``top``, sorted."""
    found = []
    for base, dirs, files in os.walk(top):
        dirs.sort()
        for name in files:
            found.append(os.path.relpath(os.path.join(base, name), top))
    return sorted(found)


def normalise_boot_tree(top):
    """Boot files are served to Pis by an unprivileged service: 0644 files, 0755 dirs, whatever the umask."""
    os.chmod(top, 0o755)
    for base, dirs, files in os.walk(top):
        for name in dirs:
            os.chmod(os.path.join(base, name), 0o755)
        for name in files:
            os.chmod(os.path.join(base, name), 0o644)


def pretty_name(os_release):
    """PRETTY_NAME of an os-release text; None when absent."""
    for line in (os_release or '').splitlines():
        key, sep, value = line.strip().partition('=')
        if sep and key == 'PRETTY_NAME':
            return value.strip().strip('"\'')
    return None


def tree_bytes(top):
    total = count = 0
    for base, _dirs, files in os.walk(top):
        for name in files:
            total += os.lstat(os.path.join(base, name)).st_size
            count += 1
    return total, count


def read_config_txt(boot_dir):
    """The boot partition's config.txt as text (None when it has none): it names Debian-style kernels."""
    try:
        with open(os.path.join(boot_dir, 'config.txt'), encoding='utf-8', errors='replace') as handle:
            return handle.read(1024 * 1024)
    except OSError:
        return None


class Ingest:
    """Turn the two partitions of an image into ``boot/``, ``boot.img``, ``root.img`` and a manifest."""

    def __init__(self, run, name):
        self.run = run
        self.name = name

    def _check(self, argv, what, ok=(0,)):
        rc, out, err = self.run(argv)
        if rc not in ok:
            raise IngestError('%s for bakeform %s failed: %s' % (what, self.name, (err or out).strip()),
                              rc=rc, stderr=err, cmd=argv)
        return out

    def extract_boot(self, fat, dest):
        os.mkdir(dest, 0o755)
        # mtools reads FAT in userspace: no vfat module, no mount.
        self._check(['mcopy', '-s', '-m', '-n', '-i', fat, '::/*', dest + '/'],
                    'copying the boot files out of the FAT partition')
        normalise_boot_tree(dest)
        files = list_tree(dest)
        if not files:
            raise IngestError('the FAT boot partition of bakeform %s holds no files' % self.name)
        return files

    def prepare_root(self, image):
        """Check the golden root file system and make per-Pi clones of it cheap to give a UUID of their own."""
        sb = read_superblock(image)
        if sb is None:
            raise PartitionError('its Linux root partition holds no ext2/3/4 file system')
        # -p fixes only what is safe to fix unattended and records a fresh check, which tune2fs -U needs later.
        self._check(['e2fsck', '-f', '-p', image], 'checking the root file system (e2fsck)', ok=(0, 1))
        if sb['metadata_csum'] and not sb['csum_seed']:
            # With the seed stored, a clone's new UUID rewrites the superblock only, not every checksum.
            self._check(['tune2fs', '-O', 'metadata_csum_seed', image], 'storing the checksum seed (tune2fs)')
        return read_superblock(image)

    def os_release(self, image):
        """PRETTY_NAME of the root, read from the image by debugfs (no mount; it cannot leave the image)."""
        for rel in ('/usr/lib/os-release', '/etc/os-release'):
            rc, out, _err = self.run(['debugfs', '-R', 'cat %s' % rel, image])
            name = pretty_name(out) if rc == 0 else None
            if name:
                return name
        return None

    def capabilities(self, image, boot_files):
        """What the root in ``image`` can do for a netboot (``store.capabilities``), read by debugfs (no mount)."""
        try:
            return _capabilities.detect_image(self.run, image, boot_files)
        except OSError as exc:
            raise IngestError('reading what the root of bakeform %s can do failed: %s' % (self.name, exc)) from exc

    def boot_image(self, boot_dir, dest):
        """The boot files as a small read-only ext4 file system: what a Pi mounts at /boot/firmware over NFS.

        A file system of its own, so a Pi that forges NFS handles through this export reaches boot files only.
        """
        total, count = tree_bytes(boot_dir)
        kib = (total * 11 // 10 + count * 4096 + 16 * 1024 * 1024) // 1024
        self._check(['mke2fs', '-q', '-F', '-t', 'ext4', '-O', '^has_journal', '-m', '0', '-N', str(count + 256),
                     '-L', 'pifleet-boot', '-d', boot_dir, dest, '%dk' % kib], 'making the boot file system (mke2fs)')
        os.chmod(dest, 0o600)

    def manifest(self, *, source, digest, source_bytes, image_bytes, table, boot, root, boot_files, stat_info,
                 root_sb, pretty, config_txt=None, generation=None, origin=None, capabilities=None):
        return {
            'name': self.name,
            'bakeform': self.name,
            'generation': generation,
            'origin': origin or {'kind': 'image'},
            'format': STORE_FORMAT,
            'source': source,
            'source_stat': stat_info,
            'sha256': digest,
            'source_size': source_bytes,
            'image_size': image_bytes,
            'partition_table': {'type': table['table'], 'disk_id': table['disk_id']},
            'partitions': [boot, root],
            'boot_files': boot_files,
            'models': detect_models(boot_files),
            'kernels': detect_kernels(boot_files, config_txt),
            'pretty_name': pretty,
            'root_image': ROOT_IMAGE,
            'root_uuid': root_sb['uuid'],
            'root_bytes': root['size'],
            'boot_image': BOOT_IMAGE,
            _capabilities.KEY: capabilities,
            'created': utc_now(),
            'collection_version': COLLECTION_VERSION,
        }


def write_json(path, data):
    """The manifest, into the bakeform's directory while it is being built."""
    write_new(path, json.dumps(data, indent=2, sort_keys=True) + '\n')
