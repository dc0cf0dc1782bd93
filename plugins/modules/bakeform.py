#!/usr/bin/python
# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bakeform
short_description: Register a Raspberry Pi OS image (a bakeform) on the bakery host
version_added: 0.1.0
description:
  - Ingests a Raspberry Pi OS style disk image (C(.img) or C(.img.xz)) into the bakeform store in one
    streaming pass (hash, decompress, sparse write), then extracts the FAT boot partition to
    C(<store>/<name>/boot/) in userspace (mtools, no mount) and the ext4 root partition to
    C(<store>/<name>/root/), the golden tree that per-Pi roots are cloned from, and writes
    C(<store>/<name>/manifest.json).
  - Owners, modes, setuid/setgid bits, symlinks, hard links, device nodes, FIFOs and extended
    attributes (file capabilities) of the root survive the extraction.
  - When the store is on btrfs, the golden root is created as a subvolume, so that per-Pi roots can be
    snapshots of it (constant time whatever the number of files).
  - Everything is built in a locked scratch directory inside the store and renamed into place, so a
    failed or killed run leaves the store as it was; leftovers of a killed run are removed by the
    next run.
  - An unchanged source is recognised without re-reading it (same checksum, or same path, size,
    mtime, inode and device as recorded at ingest).
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
requirements:
  - root on the bakery host (owners, device nodes and capabilities of the root are kept).
  - mtools (C(mcopy)) for the boot partition.
  - util-linux (C(setpriv), C(unshare), C(mount)) with loop and ext4 support, or C(fuse2fs) for the root.
options:
  name:
    description:
      - Name of the bakeform; lower-case letters, digits, C(.), C(_) and C(-), starting with a letter or digit.
    type: str
    required: true
  src:
    description:
      - Path of the image on the bakery host, raw or xz-compressed (detected from its content).
      - Mutually exclusive with O(url).
    type: path
  url:
    description:
      - URL to fetch the image from (with Ansible's URL helpers, streamed, never stored whole).
      - Requires O(checksum). Mutually exclusive with O(src).
    type: str
  checksum:
    description:
      - Expected checksum of the source file as C(sha256:<hex>). Verified when given.
      - When it equals the stored bakeform's checksum, nothing is read or fetched.
    type: str
  store:
    description:
      - Directory of the bakeform store.
    type: path
    default: /srv/pifleet/bakeforms
  state:
    description:
      - V(present) ingests the image unless the same content is already stored.
      - V(absent) removes the bakeform (boot files, golden root and manifest). Per-Pi roots cloned from it are not touched.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - Replace a bakeform of the same name that holds different content (atomically).
      - Without it such a run fails and changes nothing.
    type: bool
    default: false
  root_extract:
    description:
      - How the ext4 root partition is read.
      - V(auto) tries a kernel loop mount (in a private mount namespace) and falls back to V(fuse).
      - V(kernel) uses only the loop mount; V(fuse) uses only C(fuse2fs).
    type: str
    choices: [auto, kernel, fuse]
    default: auto
  timeout:
    description:
      - Timeout in seconds for connecting to O(url) and for each read from it.
    type: int
    default: 60
"""

EXAMPLES = r"""
- name: Register a Raspberry Pi OS image already on the bakery
  pifleet.netboot.bakeform:
    name: bookworm-lite
    src: /var/cache/pifleet/2025-05-13-raspios-bookworm-arm64-lite.img.xz
    checksum: sha256:62d025b9bc7ca0e1facfec74ae56ac13978b6745c58177f081d39fbb8041ed45

- name: Fetch and register an image from a mirror
  pifleet.netboot.bakeform:
    name: bookworm-lite
    url: https://mirror.example.org/raspios/2025-05-13-raspios-bookworm-arm64-lite.img.xz
    checksum: sha256:62d025b9bc7ca0e1facfec74ae56ac13978b6745c58177f081d39fbb8041ed45

- name: Replace it with a newer image under the same name
  pifleet.netboot.bakeform:
    name: bookworm-lite
    src: /var/cache/pifleet/2025-11-24-raspios-bookworm-arm64-lite.img.xz
    force: true

- name: Remove a bakeform
  pifleet.netboot.bakeform:
    name: bullseye-old
    state: absent
"""

RETURN = r"""
path:
  description: Directory of the bakeform in the store.
  returned: always
  type: str
  sample: /srv/pifleet/bakeforms/bookworm-lite
manifest:
  description:
    - The bakeform's manifest (the content of C(manifest.json)); empty after V(absent) and in check mode before a first ingest.
    - Keys C(name), C(source), C(source_stat), C(sha256), C(source_size), C(image_size), C(partition_table),
      C(partitions), C(boot_files), C(models), C(kernels), C(pretty_name), C(root_extract), C(root_subvolume)
      (the golden root is a btrfs subvolume, so per-Pi roots can be snapshots), C(created), C(collection_version).
    - C(kernels) lists the C(kernel*.img) files and the kernels C(config.txt) names with C(kernel=), such as a
      Debian C(vmlinuz-<version>).
  returned: always
  type: dict
  sample:
    name: bookworm-lite
    sha256: 62d025b9bc7ca0e1facfec74ae56ac13978b6745c58177f081d39fbb8041ed45
    models: ["3", "4", "5"]
    kernels: [kernel8.img, kernel_2712.img]
    pretty_name: Debian GNU/Linux 12 (bookworm)
swept:
  description: Leftover scratch directories of killed runs that this run removed.
  returned: always
  type: list
  elements: str
  sample: []
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import fetch_url

from ansible_collections.pifleet.netboot.plugins.module_utils import _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils._bakeform import (
    MANIFEST,
    Ingest,
    IngestError,
    PartitionError,
    check_name,
    hash_file,
    is_complete,
    load_manifest,
    parse_checksum,
    same_source,
    source_stat,
    stream_image,
    summary,
    write_json,
)


class BakeformModule:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.name = self.params['name']
        self.store = self.params['store']
        self.dest = os.path.join(self.store, self.name)
        self.result = {'changed': False, 'path': self.dest, 'manifest': {}, 'swept': []}

    def fail(self, msg, **details):
        self.module.fail_json(msg=msg, **self.result, **details)

    def unmount(self, point):
        self.module.run_command(['umount', '-l', point])

    def diff(self, before, after):
        if self.module._diff:
            self.result['diff'] = {
                'before': summary(before), 'after': summary(after),
                'before_header': os.path.join(self.dest, MANIFEST), 'after_header': os.path.join(self.dest, MANIFEST),
            }

    def run(self):
        problem = check_name(self.name)
        if problem:
            self.fail(problem)
        try:
            digest = parse_checksum(self.params['checksum'])
            if not self.module.check_mode and os.path.isdir(self.store):
                self.result['swept'] = _atomic.sweep_stale(
                    self.store, lambda label: os.path.join(self.store, label), self.unmount)
            existing = load_manifest(self.dest)
            if self.params['state'] == 'absent':
                self.absent(existing)
            else:
                self.present(existing, digest)
        except (IngestError, PartitionError) as exc:
            self.fail(str(exc), **getattr(exc, 'details', {}))
        self.module.exit_json(**self.result)

    def absent(self, existing):
        if not os.path.lexists(self.dest):
            return
        self.result['changed'] = True
        self.diff(existing, None)
        if self.module.check_mode:
            return
        _atomic.discard(self.store, self.name, self.dest)

    def present(self, existing, digest):
        src = self.params['src']
        if src and not os.path.isfile(src):
            self.fail('source of bakeform %s not found: %s is not a file on %s' % (self.name, src, os.uname()[1]))
        if existing is None and os.path.lexists(self.dest):
            self.fail('%s exists but has no %s: it is not a bakeform (or an older run broke it); move it away '
                      'or remove it' % (self.dest, MANIFEST))
        if existing is not None:
            same, digest = same_source(existing, src, digest)
            if same and is_complete(self.dest):
                self.result['manifest'] = existing
                return
            if same:
                # Someone removed boot/ or root/ by hand: rebuild from the same source, no force needed.
                self.module.warn('bakeform %s is incomplete (boot/ or root/ missing): rebuilding it' % self.name)
            elif not self.params['force']:
                self.fail('bakeform %s already holds another image (sha256 %s from %s); the new source has %s. '
                          'Use a new name, or force: true to replace it (per-Pi roots are not touched)'
                          % (self.name, existing.get('sha256'), existing.get('source'),
                             'sha256 %s' % digest if digest else 'other content'))
        elif digest is None and src and self.module.check_mode:
            digest = hash_file(src)
        self.result['changed'] = True
        planned = {'name': self.name, 'source': self.source(), 'sha256': digest}
        if self.module.check_mode:
            self.diff(existing, planned)
            return
        if os.geteuid() != 0:
            self.fail('bakeform %s: ingesting needs root on the bakery host to keep owners, device nodes and '
                      'capabilities of the root file system; add become: true' % self.name)
        os.makedirs(self.store, 0o755, exist_ok=True)
        manifest = self.build(digest)
        self.result['manifest'] = manifest
        self.diff(existing, manifest)

    def source(self):
        return os.path.abspath(self.params['src']) if self.params['src'] else self.params['url']

    def open_source(self):
        if self.params['src']:
            return open(self.params['src'], 'rb'), source_stat(self.params['src'])
        response, info = fetch_url(self.module, self.params['url'], timeout=self.params['timeout'])
        if response is None or info.get('status') != 200:
            self.fail('fetching the source of bakeform %s from %s failed: %s (HTTP status %s)'
                      % (self.name, self.params['url'], info.get('msg'), info.get('status')))
        return response, None

    def build(self, expected):
        ingest = Ingest(self.module.run_command, self.name, self.params['root_extract'])
        scratch = _atomic.ScratchDir(self.store, self.name)
        try:
            image, built = scratch.join('image.raw'), scratch.join('build')
            os.mkdir(built, 0o755)
            reader, stat_info = self.open_source()
            with reader:
                digest, source_bytes, image_bytes = stream_image(
                    reader, image, 'source %s of bakeform %s' % (self.source(), self.name),
                    self.module.get_bin_path('xz'))
            if expected and digest != expected:
                raise IngestError('checksum mismatch for bakeform %s: expected sha256:%s, the source %s has '
                                  'sha256:%s; download it again or correct checksum'
                                  % (self.name, expected, self.source(), digest))
            try:
                table, boot, root = ingest.partitions(image)
            except PartitionError as exc:
                raise IngestError('source %s of bakeform %s cannot be used: %s' % (self.source(), self.name, exc)) from exc
            boot_files = ingest.extract_boot(image, boot, os.path.join(built, 'boot'))
            ingest.extract_root(image, root, scratch.join('mnt'), os.path.join(built, 'root'))
            os.unlink(image)
            manifest = ingest.manifest(
                source=self.source(), digest=digest, source_bytes=source_bytes, image_bytes=image_bytes,
                table=table, boot=boot, root=root, boot_files=boot_files, stat_info=stat_info,
                root_dir=os.path.join(built, 'root'))
            write_json(os.path.join(built, MANIFEST), manifest)
            _atomic.install(scratch, built, self.dest)
            return manifest
        finally:
            scratch.close(self.unmount)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            src=dict(type='path'),
            url=dict(type='str'),
            checksum=dict(type='str'),
            store=dict(type='path', default='/srv/pifleet/bakeforms'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            force=dict(type='bool', default=False),
            root_extract=dict(type='str', choices=['auto', 'kernel', 'fuse'], default='auto'),
            timeout=dict(type='int', default=60),
        ),
        mutually_exclusive=[('src', 'url')],
        required_if=[('state', 'present', ('src', 'url'), True)],
        required_by={'url': 'checksum'},
        supports_check_mode=True,
    )
    BakeformModule(module).run()


if __name__ == '__main__':
    main()
