# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.pifleet.netboot.plugins.module_utils.common.version import COLLECTION_VERSION
from ansible_collections.pifleet.netboot.plugins.module_utils.store import bakeform as _bakeform
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import (
    IngestError,
    check_name,
    pretty_name,
    same_source,
    source_stat,
    stream_image,
)

REPO = Path(__file__).resolve().parents[5]

NAMES = [
    ('bookworm-lite', True), ('raspios_2025.05', True), ('0day', True),
    ('Bookworm', False), ('-lead', False), ('.hidden', False), ('a/b', False), ('', False), ('sp ace', False),
    ('../escape', False), ('trailing\n', False),
]


@pytest.mark.parametrize(('name', 'ok'), NAMES)
def test_check_name(name, ok):
    assert (check_name(name) is None) == ok


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


def test_sparse_writer_writes_a_part_of_its_data_in_place(tmp_path):
    """write(data, start, end): the splitter hands each partition its part of a chunk without copying it; holes for
    the zero blocks of that part only, a short last block and a part that starts mid-block included."""
    data = bytes(70000) + b'x' * 100 + bytes(200000) + b'y' * 10 + bytes(5)
    out = tmp_path / 'part'
    with out.open('wb') as handle:
        sink = _bakeform.SparseWriter(handle)
        sink.write(data, 3, len(data) - 2)
        sink.write(memoryview(b'z' * 7 + bytes(3)), 0, 8)  # a memoryview is taken too (copied once)
        sink.close()
    assert out.read_bytes() == data[3:-2] + b'z' * 7 + bytes(1)
    assert out.stat().st_blocks * 512 < 200000  # the long zero runs are holes


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
    manifests = {1: {'source': '/elsewhere.img', 'sha256': 'e' * 64, 'source_stat': None},
                 2: {'source': str(src), 'sha256': digest, 'source_stat': source_stat(str(src))}}
    assert same_source(manifests, str(src), digest) == (2, digest)
    assert same_source(manifests, str(src), 'e' * 64) == (1, 'e' * 64)
    assert same_source(manifests, str(src), 'f' * 64) == (None, 'f' * 64)
    assert same_source({}, None, None) == (None, None)

    hashed = []
    real_hash = _bakeform.hash_file
    monkeypatch.setattr(_bakeform, 'hash_file', lambda path: hashed.append(path) or real_hash(path))
    assert same_source(manifests, str(src), None) == (2, digest)
    assert hashed == []  # unchanged stat: no re-read
    os.utime(src, ns=(1, 1))
    assert same_source(manifests, str(src), None) == (2, digest)
    assert hashed == [str(src)]  # touched: hashed again, same content
    src.write_bytes(b'other')
    assert same_source(manifests, str(src), None) == (None, hashlib.sha256(b'other').hexdigest())


@pytest.mark.parametrize(('text', 'expected'), [
    ('NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n', 'Debian GNU/Linux 12 (bookworm)'),
    ("PRETTY_NAME='Raspbian'\n", 'Raspbian'),
    ('NAME=x\n', None),
    ('', None),
    (None, None),
])
def test_pretty_name(text, expected):
    assert pretty_name(text) == expected


def mbr_image(parts, size):
    """A raw image: an MBR with ``parts`` [(type, start, length)] and distinct bytes in each partition."""
    image = bytearray(size)
    for index, (ptype, start, length) in enumerate(parts):
        entry = 446 + 16 * index
        image[entry + 4] = ptype
        image[entry + 8:entry + 16] = (start // 512).to_bytes(4, 'little') + (length // 512).to_bytes(4, 'little')
        image[start:start + length] = bytes([index + 1]) * 4096 + bytes(length - 8192) + bytes([index + 7]) * 4096
    image[510:512] = b'\x55\xaa'
    return bytes(image)


@UNXZ
def test_splitter_writes_each_partition_to_its_own_sparse_file(tmp_path, xz_bin):
    mib = 1024 * 1024
    raw = mbr_image([(0x0C, 4 * mib, 2 * mib), (0x83, 6 * mib, 3 * mib)], 10 * mib)
    splitter = _bakeform.ImageSplitter(str(tmp_path / 'boot'), str(tmp_path / 'root'), 'demo')
    digest, _count, size = stream_image(io.BytesIO(lzma.compress(raw, preset=0)), splitter, 'demo', xz_bin)
    assert size == len(raw) and digest
    assert (tmp_path / 'boot').read_bytes() == raw[4 * mib:6 * mib]
    assert (tmp_path / 'root').read_bytes() == raw[6 * mib:9 * mib]
    assert (tmp_path / 'root').stat().st_blocks * 512 < mib  # the zeros in between are holes
    assert [splitter.boot['number'], splitter.root['number']] == [1, 2]


@pytest.mark.parametrize(('parts', 'size', 'message'), [
    ([(0x83, 1 << 20, 1 << 20)], 3 << 20, 'no FAT boot partition'),
    ([(0x0C, 1 << 20, 1 << 20), (0x83, 2 << 20, 4 << 20)], 3 << 20, 'runs past the end'),
    ([(0xEE, 512, 1 << 20)], 2 << 20, 'EFI PART'),
])
def test_splitter_refuses_bad_tables(tmp_path, parts, size, message):
    raw = mbr_image(parts, size)[:size]  # a table that promises more than the image holds
    splitter = _bakeform.ImageSplitter(str(tmp_path / 'boot'), str(tmp_path / 'root'), 'demo')
    with pytest.raises(ValueError, match=message):
        stream_image(io.BytesIO(raw), splitter, 'demo')


def test_splitter_stops_at_max_size_and_checks_space_first(tmp_path):
    mib = 1024 * 1024
    raw = mbr_image([(0x0C, mib, mib), (0x83, 2 * mib, 2 * mib)], 4 * mib)
    small = _bakeform.ImageSplitter(str(tmp_path / 'b'), str(tmp_path / 'r'), 'demo', limit=2 * mib)
    with pytest.raises(IngestError, match='more than max_size'):
        stream_image(io.BytesIO(raw), small, 'demo')
    asked = []

    def no_space(count):
        asked.append(count)
        raise IngestError('no room for %d' % count)
    splitter = _bakeform.ImageSplitter(str(tmp_path / 'b2'), str(tmp_path / 'r2'), 'demo', free_space=no_space)
    with pytest.raises(IngestError, match='no room'):
        stream_image(io.BytesIO(raw), splitter, 'demo')
    assert asked == [3 * mib]  # asked before a byte of a partition was written
    assert not (tmp_path / 'r2').exists()


def test_version_matches_galaxy_yml():
    galaxy = yaml.safe_load((REPO / 'galaxy.yml').read_text())
    assert galaxy['version'] == COLLECTION_VERSION


def test_manifest_lists_the_kernel_config_txt_names(tmp_path):
    """Bug: a Debian-style image (kernel=vmlinuz-<version>) got an empty kernels list."""
    (tmp_path / 'boot').mkdir()
    (tmp_path / 'boot/config.txt').write_text('arm_64bit=1\nkernel=vmlinuz-6.1.0-44-arm64\n'
                                              'initramfs initrd.img-6.1.0-44-arm64 followkernel\n')
    files = ['config.txt', 'start4.elf', 'vmlinuz-6.1.0-44-arm64', 'initrd.img-6.1.0-44-arm64']

    def manifest():
        return _bakeform.Ingest(None, 'debian').manifest(
            source='/x.img', digest='0' * 64, source_bytes=1, image_bytes=1, table={'table': 'mbr', 'disk_id': '1'},
            boot={}, root={'size': 1}, boot_files=files, stat_info={}, root_sb={'uuid': '0'}, pretty=None,
            config_txt=_bakeform.read_config_txt(str(tmp_path / 'boot')))
    assert manifest()['kernels'] == ['vmlinuz-6.1.0-44-arm64']
    assert manifest()['models'] == ['4']
    (tmp_path / 'boot/config.txt').unlink()
    assert manifest()['kernels'] == []


@pytest.mark.parametrize(('manifest', 'expected'), [
    ('{"models": ["4", "5"]}', ['4', '5']),
    ('{"models": [3]}', ['3']),
    (None, ['3', '4']),                   # no manifest: what the boot files boot
    ('{"models": null}', ['3', '4']),
    ('{"name": "x"}', ['3', '4']),
    ('[1, 2]', ['3', '4']),
    ('{not json', ['3', '4']),
])
def test_boot_models_read_the_manifest_else_the_boot_files(tmp_path, manifest, expected):
    (tmp_path / 'boot').mkdir()
    for name in ('bootcode.bin', 'start.elf', 'start4.elf'):
        (tmp_path / 'boot' / name).write_bytes(b'x')
    if manifest is not None:
        (tmp_path / 'manifest.json').write_text(manifest)
    assert _bakeform.boot_models(str(tmp_path)) == expected


def test_load_manifest_strict_or_not(tmp_path):
    assert _bakeform.load_manifest(str(tmp_path)) is None
    (tmp_path / 'manifest.json').write_text('{not json')
    with pytest.raises(IngestError, match='is not valid JSON'):
        _bakeform.load_manifest(str(tmp_path))
    assert _bakeform.load_manifest(str(tmp_path), strict=False) is None
    _bakeform.write_json(str(tmp_path / 'new.json'), {'b': 1, 'a': [2]})
    assert (tmp_path / 'new.json').read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    assert (tmp_path / 'new.json').stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize('hang', ['reads-nothing', 'reads-and-says-nothing'])
def test_a_hung_xz_is_killed_after_its_stall_time(tmp_path, hang):
    # An xz that never answers: one that takes no input at all, and one that swallows it and writes nothing.
    fake = tmp_path / 'xz'
    fake.write_text('#!/bin/sh\n%sexec sleep 600\n' % ('' if hang == 'reads-nothing' else 'cat >/dev/null\n'))
    fake.chmod(0o755)
    source = lzma.compress(payload())  # 5 MiB unpacked, far more than a pipe holds
    started = time.monotonic()
    with pytest.raises(IngestError, match=r'unpacking demo made no progress for 1 s .*so xz was killed'):
        stream_image(io.BytesIO(source), str(tmp_path / 'i'), 'demo', str(fake), stall=1)
    assert time.monotonic() - started < 15


@pytest.mark.parametrize('xz_bin', [shutil.which('xz')], ids=['xz-program'])
def test_a_slow_source_that_keeps_moving_is_not_a_stall(tmp_path, xz_bin):
    data = os.urandom(200 * 1024)  # does not compress: 50 reads of the source
    source = lzma.compress(data)

    class Slow(io.BytesIO):  # 4 KiB every 0.05 s: never still for the stall time, 2.5 s in all
        def read(self, n=-1):
            time.sleep(0.05)
            return super().read(min(n, 4096))

    started = time.monotonic()
    stream_image(Slow(source), str(tmp_path / 'i'), 'demo', xz_bin, stall=1)
    assert time.monotonic() - started > 2  # longer than the stall time, and not killed
    assert (tmp_path / 'i').read_bytes() == data
