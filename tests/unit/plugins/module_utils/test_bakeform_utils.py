# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
from pathlib import Path

import pytest
import yaml

from ansible_collections.pifleet.netboot.plugins.module_utils import _bakeform
from ansible_collections.pifleet.netboot.plugins.module_utils._bakeform import (
    IngestError,
    check_name,
    parse_checksum,
    read_os_release,
    same_source,
    source_stat,
    stream_image,
    summary,
)
from ansible_collections.pifleet.netboot.plugins.module_utils._version import COLLECTION_VERSION

REPO = Path(__file__).resolve().parents[4]

NAMES = [
    ('bookworm-lite', True), ('raspios_2025.05', True), ('0day', True),
    ('Bookworm', False), ('-lead', False), ('.hidden', False), ('a/b', False), ('', False), ('sp ace', False),
    ('../escape', False), ('trailing\n', False),
]


@pytest.mark.parametrize(('name', 'ok'), NAMES)
def test_check_name(name, ok):
    assert (check_name(name) is None) == ok


CHECKSUMS = [
    (None, None),
    ('sha256:' + 'A' * 64, 'a' * 64),
    (' sha256:' + '0' * 64 + '\n', '0' * 64),
    ('sha256:' + 'a' * 63, IngestError),
    ('md5:' + 'a' * 32, IngestError),
    ('a' * 64, IngestError),
]


@pytest.mark.parametrize(('given', 'expected'), CHECKSUMS)
def test_parse_checksum(given, expected):
    if expected is IngestError:
        with pytest.raises(IngestError, match='sha256:<64 hex digits>'):
            parse_checksum(given)
    else:
        assert parse_checksum(given) == expected


def payload():
    # 1 MiB of data, 3 MiB of zeros, 1 MiB of data: the zeros must become a hole.
    data = hashlib.sha256(b'x').digest() * 32768
    return data + bytes(3 * 1024 * 1024) + data


# Both ways of unpacking xz: the xz program (multi-threaded) and Python's lzma (no xz on the host).
UNXZ = pytest.mark.parametrize('xz_bin', [shutil.which('xz'), None], ids=['xz-program', 'python-lzma'])


@UNXZ
@pytest.mark.parametrize('compress', [False, True], ids=['raw', 'xz'])
def test_stream_image_hashes_source_unpacks_and_writes_sparse(tmp_path, compress, xz_bin):
    raw = payload()
    source = lzma.compress(raw, preset=0) if compress else raw
    out = tmp_path / 'image.raw'
    digest, source_bytes, image_bytes = stream_image(io.BytesIO(source), str(out), 'demo', xz_bin)
    assert digest == hashlib.sha256(source).hexdigest()
    assert (source_bytes, image_bytes) == (len(source), len(raw))
    assert out.read_bytes() == raw
    assert out.stat().st_blocks * 512 <= 2.5 * 1024 * 1024  # the 3 MiB of zeros take no space


def test_stream_image_trailing_zeros_keep_length(tmp_path):
    out = tmp_path / 'image.raw'
    stream_image(io.BytesIO(b'abc' + bytes(200000)), str(out), 'demo')
    assert out.stat().st_size == 200003


@UNXZ
def test_stream_image_truncated_xz(tmp_path, xz_bin):
    source = lzma.compress(payload())
    with pytest.raises(IngestError, match=r'demo is a truncated \.xz file'):
        stream_image(io.BytesIO(source[:len(source) // 2]), str(tmp_path / 'i'), 'demo', xz_bin)


@UNXZ
def test_stream_image_corrupt_xz(tmp_path, xz_bin):
    source = bytearray(lzma.compress(payload()))
    source[100:200] = bytes(100)
    with pytest.raises(IngestError, match=r'demo is not a valid \.xz stream'):
        stream_image(io.BytesIO(bytes(source)), str(tmp_path / 'i'), 'demo', xz_bin)


@UNXZ
def test_stream_image_empty(tmp_path, xz_bin):
    with pytest.raises(IngestError, match='demo is empty'):
        stream_image(io.BytesIO(b''), str(tmp_path / 'i'), 'demo', xz_bin)
    with pytest.raises(IngestError, match='demo decompresses to nothing'):
        stream_image(io.BytesIO(lzma.compress(b'')), str(tmp_path / 'i'), 'demo', xz_bin)


class FailingReader:
    """A source that breaks after its first chunk, like a dropped download."""

    def __init__(self, data):
        self.chunks = [data]

    def read(self, size):
        if self.chunks:
            return self.chunks.pop()
        raise OSError('connection reset by peer')


@UNXZ
def test_stream_image_source_read_error(tmp_path, xz_bin):
    source = lzma.compress(payload())
    with pytest.raises(IngestError, match=r'reading demo failed after \d+ bytes: connection reset by peer'):
        stream_image(FailingReader(source[:4096]), str(tmp_path / 'i'), 'demo', xz_bin)


def test_same_source_prefers_checksum_then_stat_then_hash(tmp_path, monkeypatch):
    src = tmp_path / 'img'
    src.write_bytes(b'content')
    digest = hashlib.sha256(b'content').hexdigest()
    manifest = {'source': str(src), 'sha256': digest, 'source_stat': source_stat(str(src))}
    assert same_source(manifest, str(src), digest) == (True, digest)
    assert same_source(manifest, str(src), 'f' * 64) == (False, 'f' * 64)

    hashed = []
    real_hash = _bakeform.hash_file
    monkeypatch.setattr(_bakeform, 'hash_file', lambda path: hashed.append(path) or real_hash(path))
    assert same_source(manifest, str(src), None) == (True, digest)
    assert hashed == []  # unchanged stat: no re-read
    os.utime(src, ns=(1, 1))
    assert same_source(manifest, str(src), None) == (True, digest)
    assert hashed == [str(src)]  # touched: hashed again, same content
    src.write_bytes(b'other')
    assert same_source(manifest, str(src), None) == (False, hashlib.sha256(b'other').hexdigest())


def test_read_os_release_stays_inside_the_tree(tmp_path):
    (tmp_path / 'etc').mkdir()
    (tmp_path / 'usr/lib').mkdir(parents=True)
    (tmp_path / 'usr/lib/os-release').write_text('NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    # An absolute link would point at the host's file if followed naively.
    (tmp_path / 'etc/os-release').symlink_to('/etc/os-release')
    assert read_os_release(str(tmp_path)) == 'Debian GNU/Linux 12 (bookworm)'
    assert read_os_release(str(tmp_path / 'nothing')) is None


def test_summary_keeps_identity_only():
    manifest = {'name': 'a', 'sha256': 'b', 'created': 'now', 'source': 's', 'models': ['4']}
    assert summary(manifest) == {'name': 'a', 'sha256': 'b', 'source': 's', 'models': ['4']}
    assert summary(None) == {}


def test_version_matches_galaxy_yml():
    galaxy = yaml.safe_load((REPO / 'galaxy.yml').read_text())
    assert galaxy['version'] == COLLECTION_VERSION


def test_manifest_lists_the_kernel_config_txt_names(tmp_path):
    """Bug: a Debian-style image (kernel=vmlinuz-<version>) got an empty kernels list."""
    (tmp_path / 'boot').mkdir()
    (tmp_path / 'root').mkdir()
    (tmp_path / 'boot/config.txt').write_text('arm_64bit=1\nkernel=vmlinuz-6.1.0-44-arm64\n'
                                              'initramfs initrd.img-6.1.0-44-arm64 followkernel\n')
    files = ['config.txt', 'start4.elf', 'vmlinuz-6.1.0-44-arm64', 'initrd.img-6.1.0-44-arm64']
    manifest = _bakeform.Ingest(None, 'debian').manifest(
        source='/x.img', digest='0' * 64, source_bytes=1, image_bytes=1, table={'table': 'mbr', 'disk_id': '1'},
        boot={}, root={}, boot_files=files, stat_info={}, root_dir=str(tmp_path / 'root'))
    assert manifest['kernels'] == ['vmlinuz-6.1.0-44-arm64']
    assert manifest['models'] == ['4']
    (tmp_path / 'boot/config.txt').unlink()
    assert _bakeform.Ingest(None, 'debian').manifest(
        source='/x.img', digest='0' * 64, source_bytes=1, image_bytes=1, table={'table': 'mbr', 'disk_id': '1'},
        boot={}, root={}, boot_files=files, stat_info={}, root_dir=str(tmp_path / 'root'))['kernels'] == []
