# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bakeform store: ingest a Pi OS image into boot files, a golden root and a manifest.

Pure logic plus an ``Ingest`` that drives external tools through one ``run(argv)`` callable
(``AnsibleModule.run_command`` in the module, ``subprocess`` in tests). No AnsibleModule here.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import lzma
import os
import re
import struct
import subprocess
import threading

from ansible_collections.pifleet.netboot.plugins.module_utils._partitions import (
    PartitionError,
    detect_kernels,
    detect_models,
    read_table,
    select_boot_and_root,
)
from ansible_collections.pifleet.netboot.plugins.module_utils._version import COLLECTION_VERSION

NAME_RE = re.compile(r'[a-z0-9][a-z0-9._-]*')
CHECKSUM_RE = re.compile(r'sha256:([0-9a-fA-F]{64})')
CHUNK = 1024 * 1024
XZ_MAGIC = b'\xfd7zXZ\x00'
EXT_MAGIC = 0xEF53
MANIFEST = 'manifest.json'
MOUNT_FAILED = 90  # exit status of our extract script when the loop mount itself fails


class IngestError(Exception):
    """A problem with the source or the host; the message says what and how to fix it."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.details = details


def check_name(name):
    if not NAME_RE.fullmatch(name):
        return ('bakeform name %r is not valid: use lower-case letters, digits, ".", "_" and "-", '
                'starting with a letter or digit (for example "bookworm-lite-2025.05")' % name)
    return None


def parse_checksum(checksum):
    """Return the lower-case hex digest of ``sha256:<hex>``, or None when not given."""
    if not checksum:
        return None
    match = CHECKSUM_RE.fullmatch(checksum.strip())
    if not match:
        raise IngestError('checksum %r is not of the form "sha256:<64 hex digits>"' % checksum)
    return match.group(1).lower()


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


def is_complete(dest):
    """A stored bakeform has its boot files and its golden root beside the manifest."""
    return all(os.path.isdir(os.path.join(dest, part)) for part in ('boot', 'root'))


def load_manifest(dest):
    try:
        with open(os.path.join(dest, MANIFEST), encoding='utf-8') as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise IngestError('%s is not valid JSON (%s): remove that bakeform directory or run with force: true'
                          % (os.path.join(dest, MANIFEST), exc)) from exc


def same_source(manifest, src, digest):
    """Decide whether the stored bakeform came from this source, as cheaply as possible.

    Returns ``(same, digest)``; ``digest`` is the source's sha256 if it had to be (or was) known.
    A given checksum settles it; then a source file whose path, size, mtime, inode and device are
    those recorded at ingest; only then is the source hashed again.
    """
    if digest:
        return digest == manifest.get('sha256'), digest
    if src and os.path.abspath(src) == manifest.get('source'):
        try:
            if source_stat(src) == manifest.get('source_stat'):
                return True, manifest.get('sha256')
        except OSError:
            pass
    if src:
        digest = hash_file(src)
        return digest == manifest.get('sha256'), digest
    return False, None


def summary(manifest):
    """The part of a manifest shown in diffs: what identifies the bakeform's content."""
    if not manifest:
        return {}
    keys = ('name', 'source', 'sha256', 'models', 'kernels', 'pretty_name')
    return {key: manifest[key] for key in keys if key in manifest}


_ZEROS = bytes(65536)


class SparseWriter:
    """Write a byte stream to a file, seeking over all-zero blocks so the result is sparse."""

    def __init__(self, handle):
        self.handle = handle
        self.size = 0

    def write(self, data):
        view = memoryview(data)
        for offset in range(0, len(view), 65536):
            block = view[offset:offset + 65536]
            if block == _ZEROS[:block.nbytes]:
                self.handle.seek(block.nbytes, os.SEEK_CUR)
            else:
                self.handle.write(block)
        self.size += len(view)

    def close(self):
        self.handle.truncate(self.size)


def stream_image(reader, out_path, what, xz_bin=None):
    """Copy a source stream (``read(n)``) to ``out_path``: hash it, unpack xz, write sparsely.

    One pass, whatever the source. xz (detected by its magic, not the file name) is unpacked by
    the ``xz`` program when ``xz_bin`` is given, which uses every core, else by Python's lzma.
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

    with open(out_path, 'wb') as handle:
        sink = SparseWriter(handle)
        if not first.startswith(XZ_MAGIC):
            for chunk in chunks():
                sink.write(chunk)
        elif xz_bin:
            _unxz_process(xz_bin, chunks(), sink, what)
        else:
            _unxz_python(chunks(), sink, what)
        sink.close()
    if sink.size == 0:
        raise IngestError('%s decompresses to nothing (an empty image)' % what)
    return digest.hexdigest(), counted[0], sink.size


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


def _unxz_process(xz_bin, chunks, sink, what):
    # A pipe rather than run_command: the image is far bigger than memory and must stream through.
    proc = subprocess.Popen([xz_bin, '--decompress', '--stdout', '--threads=0', '--quiet'],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    failure = []

    def feed():
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
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

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        for block in iter(lambda: proc.stdout.read(CHUNK), b''):
            sink.write(block)
    except BaseException:
        proc.kill()  # unblocks the feeder, which may be waiting on a full pipe
        raise
    finally:
        feeder.join()
        err = proc.stderr.read().decode(errors='replace').strip()
        proc.wait()
    if failure:
        raise failure[0]
    if proc.returncode != 0:
        if 'Unexpected end of input' in err:
            raise _truncated(what)
        raise IngestError('%s is not a valid .xz stream (%s): download it again' % (what, err or proc.returncode))


def check_ext_superblock(handle, part):
    handle.seek(part['start'] + 1024 + 56)
    magic = handle.read(2)
    if len(magic) < 2 or struct.unpack('<H', magic)[0] != EXT_MAGIC:
        raise PartitionError('partition %d is marked Linux but holds no ext2/3/4 file system' % part['number'])


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


def read_os_release(root):
    """PRETTY_NAME of a root tree, following /etc/os-release's symlink inside the tree only."""
    for rel in ('etc/os-release', 'usr/lib/os-release'):
        path = os.path.join(root, rel)
        if os.path.islink(path):
            continue  # Debian links etc/os-release to usr/lib/os-release: read that one directly
        try:
            with open(path, encoding='utf-8', errors='replace') as handle:
                for line in handle:
                    key, sep, value = line.strip().partition('=')
                    if sep and key == 'PRETTY_NAME':
                        return value.strip().strip('"\'')
        except OSError:
            continue
    return None


def read_config_txt(boot_dir):
    """The boot partition's config.txt as text (None when it has none): it names Debian-style kernels."""
    try:
        with open(os.path.join(boot_dir, 'config.txt'), encoding='utf-8', errors='replace') as handle:
            return handle.read(1024 * 1024)
    except OSError:
        return None


class Ingest:
    """Turn an image file into ``boot/``, ``root/`` and a manifest inside a build directory."""

    def __init__(self, run, name, root_extract='auto'):
        self.run = run
        self.name = name
        self.root_extract = root_extract
        self.method = None
        self.subvolume = False

    def _check(self, argv, what):
        rc, out, err = self.run(argv)
        if rc != 0:
            raise IngestError('%s for bakeform %s failed: %s' % (what, self.name, (err or out).strip()),
                              rc=rc, stderr=err, cmd=argv)
        return out

    def partitions(self, image):
        size = os.path.getsize(image)
        with open(image, 'rb') as handle:
            table = read_table(handle)
            boot, root = select_boot_and_root(table, size)
            check_ext_superblock(handle, root)
        boot['role'], root['role'] = 'boot', 'root'
        return table, boot, root

    def extract_boot(self, image, boot, dest):
        os.mkdir(dest, 0o755)
        # mtools reads FAT in userspace: no vfat module, no mount.
        self._check(['mcopy', '-s', '-m', '-n', '-i', '%s@@%d' % (image, boot['start']), '::/*', dest + '/'],
                    'copying the boot files out of the FAT partition')
        normalise_boot_tree(dest)
        files = list_tree(dest)
        if not files:
            raise IngestError('the FAT boot partition of bakeform %s holds no files' % self.name)
        return files

    def extract_root(self, image, root, mountpoint, dest):
        """Copy the ext4 root to ``dest`` keeping owners, modes, links, devices and xattrs.

        Kernel ext4 on a loop device where the host allows it, inside a private mount namespace
        whose only process dies with us (so a SIGKILL cannot leak the mount or the loop device);
        FUSE (fuse2fs) otherwise.
        """
        os.mkdir(mountpoint, 0o700)
        self.make_root_dir(dest)
        errors = []
        if self.root_extract in ('auto', 'kernel'):
            rc, out, err = self.run([
                'setpriv', '--pdeathsig', 'KILL', '--',
                'unshare', '--mount', '--propagation', 'private', '--',
                'sh', '-c', 'mount -t ext4 -o "ro,loop,offset=$1,sizelimit=$2" -- "$3" "$4" || exit %d; '
                            'exec cp -a -- "$4/." "$5"' % MOUNT_FAILED,
                'pifleet-extract', str(root['start']), str(root['size']), image, mountpoint, dest])
            if rc == 0:
                self.method = 'kernel'
                return
            if rc != MOUNT_FAILED:
                raise IngestError('copying the root file system of bakeform %s failed: %s'
                                  % (self.name, (err or out).strip()), rc=rc, stderr=err)
            errors.append('kernel loop mount: %s' % (err or out).strip())
        if self.root_extract in ('auto', 'fuse'):
            rc, out, err = self.run(['fuse2fs', image, mountpoint, '-o', 'ro,offset=%d' % root['start']])
            if rc == 0:
                try:
                    self._check(['cp', '-a', '--', mountpoint + '/.', dest], 'copying the root file system')
                finally:
                    self.run(['umount', mountpoint])
                self.method = 'fuse'
                return
            errors.append('fuse2fs: %s' % (err or out).strip())
        raise IngestError('cannot read the ext4 root partition of bakeform %s on this host (%s); run as root '
                          'on a host with loop devices and ext4, or install fuse2fs' % (self.name, '; '.join(errors)))

    def make_root_dir(self, dest):
        """The golden root's directory: a btrfs subvolume where the store is on btrfs, so that
        pi_root can snapshot it in constant time; a plain directory elsewhere."""
        rc, out, _err = self.run(['stat', '--file-system', '--format=%T', os.path.dirname(dest)])
        self.subvolume = rc == 0 and out.strip() == 'btrfs'
        if self.subvolume:
            self._check(['btrfs', 'subvolume', 'create', dest], 'creating the golden root subvolume')
        else:
            os.mkdir(dest, 0o755)

    def manifest(self, *, source, digest, source_bytes, image_bytes, table, boot, root, boot_files, stat_info,
                 root_dir):
        return {
            'name': self.name,
            'source': source,
            'source_stat': stat_info,
            'sha256': digest,
            'source_size': source_bytes,
            'image_size': image_bytes,
            'partition_table': {'type': table['table'], 'disk_id': table['disk_id']},
            'partitions': [boot, root],
            'boot_files': boot_files,
            'models': detect_models(boot_files),
            'kernels': detect_kernels(boot_files, read_config_txt(os.path.join(os.path.dirname(root_dir), 'boot'))),
            'pretty_name': read_os_release(root_dir),
            'root_extract': self.method,
            'root_subvolume': self.subvolume,
            'created': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
            'collection_version': COLLECTION_VERSION,
        }


def write_json(path, data):
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write('\n')
    os.chmod(path, 0o644)
