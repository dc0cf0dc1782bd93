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
    streaming pass (hash, decompress, sparse write) that writes each partition straight to a file of its
    own, then copies the FAT boot files to C(<store>/<name>/boot/) in userspace (mtools, no mount) and
    writes C(<store>/<name>/manifest.json).
  - The golden root is C(<store>/<name>/root.img), the image's own ext4 root partition, checked with
    C(e2fsck) and never mounted here. M(pifleet.netboot.pi_root) clones it per Pi (a reflink copy where the
    store's file system has them, in constant time and almost no space), so every file, owner, mode, link,
    device node and extended attribute of the image survives by construction.
  - C(<store>/<name>/boot.img) holds the boot files as a small ext4 file system, exported read-only to Pis
    that mount their boot files over NFS (O(pifleet.netboot.pi_root#module:boot_mount)).
  - With O(checksum), the source is verified before anything is unpacked; a download goes to a scratch
    file first. Sizes are capped by O(max_size), free space is checked before unpacking, and a failure
    (a bad checksum, a full disk) leaves the store as it was and reports C(changed=false).
  - Everything is built in a locked scratch directory inside the store and renamed into place, so a
    failed or killed run leaves the store as it was; leftovers of a killed run are removed by the
    next run. The store directory is mode 0711 and its images 0600.
  - An unchanged source is recognised without re-reading it (same checksum, or same path, size,
    mtime, inode and device as recorded at ingest).
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
  - pifleet.netboot._attributes.full
  - pifleet.netboot._lock
requirements:
  - root on the bakery host (owners, device nodes and capabilities of the root are kept).
  - mtools (C(mcopy)) for the boot partition.
  - e2fsprogs (C(e2fsck), C(tune2fs), C(debugfs), C(mke2fs)) for the root and boot file systems.
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
  max_size:
    description:
      - The largest source (downloaded or local) and the largest unpacked image accepted, in bytes or with
        a K, M, G or T suffix (binary units). Guards against a small file that unpacks to fill the store.
    type: str
    default: 64G
  root_extract:
    description:
      - No longer used; the golden root is the image's own root partition. Accepted and ignored.
    type: str
    choices: [auto, kernel, fuse]
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
      C(partitions), C(boot_files), C(models), C(kernels), C(pretty_name), C(format) (2), C(root_image) and
      C(boot_image) (file names in the bakeform's directory), C(root_uuid), C(root_bytes), C(created),
      C(collection_version).
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
lock_waited:
  description: Seconds this run waited for another pifleet run to release the bakery lock.
  returned: when it had to wait
  type: float
  sample: 12.5
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import fetch_url

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import command as _command
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import LOCK_ARGS, take_lock
from ansible_collections.pifleet.netboot.plugins.module_utils.common.sizes import SizeError, parse_size
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import (
    MANIFEST,
    IngestError,
    PartitionError,
    check_name,
    hash_stream,
    is_complete,
    load_manifest,
    parse_checksum,
    same_source,
    summary,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeformwork import Build, os_error_message

# Each tool (mtools, mke2fs -d of a whole root, tune2fs) may take this long on a big image before it is killed.
TOOL_TIMEOUT = 3600
STORE_MODE = 0o711  # traversable for the unprivileged TFTP hook (boot/), not listable; images are 0600


class BakeformModule:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.name = self.params['name']
        self.store = self.params['store']
        self.dest = os.path.join(self.store, self.name)
        self.result = {'changed': False, 'path': self.dest, 'manifest': {}, 'swept': []}
        self.max_size = None

    def fail(self, msg, **details):
        self.module.fail_json(msg=msg, **self.result, **details)

    def unmount(self, point):
        _command.run(['umount', '-l', point], TOOL_TIMEOUT)

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
            self.max_size = parse_size(self.params['max_size'])
        except SizeError as exc:
            self.fail('max_size: %s' % exc)
        lock = take_lock(self.module, 'bakeform %s' % self.name, self.result)
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
        except OSError as exc:
            self.fail(os_error_message(self.store, self.name, exc))
        finally:
            if lock:
                lock.release()
        self.module.exit_json(**self.result)

    def absent(self, existing):
        if not os.path.lexists(self.dest):
            return
        self.diff(existing, None)
        if not self.module.check_mode:
            _atomic.discard(self.store, self.name, self.dest, unmount=self.unmount)
        self.result['changed'] = True

    def present(self, existing, digest):
        src = self.params['src']
        if src and not os.path.isfile(src):
            self.fail('source of bakeform %s not found: %s is not a file on %s' % (self.name, src, os.uname()[1]))
        if existing is None and os.path.lexists(self.dest):
            self.fail('%s exists but has no %s: it is not a bakeform (or an older run broke it); move it away '
                      'or remove it' % (self.dest, MANIFEST))
        if existing is not None:
            same, digest = same_source(existing, src, digest)
            if same and is_complete(self.dest, existing):
                self.result['manifest'] = existing
                self.secure_store()
                return
            if same:
                # boot/ or an image removed by hand, or a store of an older format: same source, no force needed.
                self.module.warn('bakeform %s is incomplete or of an older store format: rebuilding it from the same '
                                 'source' % self.name)
            elif not self.params['force']:
                self.fail('bakeform %s already holds another image (sha256 %s from %s); the new source has %s. '
                          'Use a new name, or force: true to replace it (per-Pi roots are not touched)'
                          % (self.name, existing.get('sha256'), existing.get('source'),
                             'sha256 %s' % digest if digest else 'other content'))
        elif digest is None and src and self.module.check_mode:
            with open(src, 'rb') as reader:
                digest = hash_stream(reader, 'source %s' % src, self.max_size)[0]
        planned = {'name': self.name, 'source': self.source(), 'sha256': digest}
        if self.module.check_mode:
            self.diff(existing, planned)
            self.result['changed'] = True
            return
        if os.geteuid() != 0:
            self.fail('bakeform %s: ingesting needs root on the bakery host to keep owners, device nodes and '
                      'capabilities of the root file system; add become: true' % self.name)
        os.makedirs(self.store, STORE_MODE, exist_ok=True)
        self.secure_store()
        manifest = self.build(digest)
        self.result.update(changed=True, manifest=manifest)
        self.diff(existing, manifest)

    def secure_store(self):
        if not self.module.check_mode and os.path.isdir(self.store) and os.stat(self.store).st_mode & 0o7777 != STORE_MODE:
            os.chmod(self.store, STORE_MODE)

    def source(self):
        return os.path.abspath(self.params['src']) if self.params['src'] else self.params['url']

    def build(self, expected):
        build = Build(lambda argv: _command.run(argv, TOOL_TIMEOUT), self.name, self.store, source=self.source(), max_size=self.max_size,
                      xz_bin=self.module.get_bin_path('xz'), unmount=self.unmount)
        download = None
        if self.params['url']:
            def download():
                return fetch_url(self.module, self.params['url'], timeout=self.params['timeout'])
        return build.build(expected, download)


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
            max_size=dict(type='str', default='64G'),
            root_extract=dict(type='str', choices=['auto', 'kernel', 'fuse'],
                              removed_in_version='1.0.0', removed_from_collection='pifleet.netboot'),
            timeout=dict(type='int', default=60),
            **LOCK_ARGS,
        ),
        mutually_exclusive=[('src', 'url')],
        required_if=[('state', 'present', ('src', 'url'), True)],
        required_by={'url': 'checksum'},
        supports_check_mode=True,
    )
    BakeformModule(module).run()


if __name__ == '__main__':
    main()
