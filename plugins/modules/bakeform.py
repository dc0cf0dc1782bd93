#!/usr/bin/python
# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bakeform
short_description: Register Raspberry Pi OS images (bakeforms) and their generations on the bakery host
version_added: 0.1.0
description:
  - A bakeform is a named image made ready to netboot. A name holds B(generations), numbered from 1, each one
    image in C(<store>/<name>/generations/<N>/) with its boot files (C(boot/)), its golden root (C(root.img)), its
    boot files as a small read-only file system (C(boot.img)) and C(manifest.json). C(<store>/<name>/bakeform.json)
    is the index (which generation is current, the next number, the pinned ones, a summary of each). A generation
    is named C(<name>@<N>) and is never changed once made; numbers are never reused.
  - Ingesting an image whose sha256 equals that of a generation already stored changes nothing. Another image
    becomes the next generation and the current one, the generation new roots get
    (M(pifleet.netboot.pi_root)); Pis keep the generation their root was built from until they are upgraded, and
    their boot files are that generation's.
  - The image is ingested in one streaming pass (hash, decompress, sparse write) that writes each partition
    straight to a file of its own; the FAT boot files are copied out in userspace (mtools, no mount). The golden
    root is the image's own ext4 root partition, checked with C(e2fsck) and never mounted here.
  - With O(checksum), the source is verified before anything is unpacked; a download goes to a scratch file first.
    Sizes are capped by O(max_size), free space is checked before unpacking, and a failure (a bad checksum, a
    full disk) leaves the store as it was.
  - Each generation is built in a locked scratch directory inside the store and renamed into place whole; the
    index is then replaced atomically. A killed run leaves the store as it was (its leftovers are swept by the
    next run), or with the new generation in place, which the next run records.
  - B(Retention.) On every run, generations beyond O(keep) are removed, unless they are the current one, pinned
    (O(pinned)) or used. A generation is used while the current or previous root of any Pi in O(roots_dir) was
    built from it (read from pi_root's markers beside the roots, never from inside a root). A used generation is
    never removed; removing one by hand (O(state=absent) with O(generation)) is refused, naming each Pi.
  - B(Capture.) With O(capture), the next generation is made from a Pi's root instead of an image, a consistent
    copy (the root's file system frozen for the moment a reflink clone takes), checked, its identity taken out
    (SSH host keys, machine-id, cloud-init instance data, host name, random seed, logs, shell history, what
    pi_root wrote into it), a new file system UUID; the boot files are those of the generation that root was built
    from. A capture is always a new generation.
  - B(Store format 2) (one image directly in C(<store>/<name>/), before generations) becomes generation 1 the first
    time this module runs for that name, in one atomic swap; a mounted C(boot-nfs) is mounted at its new place
    first and its mount unit moved.
  - An unchanged source is recognised without re-reading it (same checksum, or same path, size, mtime, inode and
    device as recorded when a generation was ingested).
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
  - util-linux (C(fsfreeze), C(mount)) for O(capture).
options:
  name:
    description:
      - Name of the bakeform; lower-case letters, digits, C(.), C(_) and C(-), starting with a letter or digit.
    type: str
    required: true
  src:
    description:
      - Path of the image on the bakery host, raw or xz-compressed (detected from its content).
      - An xz image is unpacked by the C(xz) program when the bakery has it (else by Python); the program is killed,
        and the ingest fails, when for 600 seconds it neither takes input nor gives output.
      - Mutually exclusive with O(url) and O(capture).
    type: path
  url:
    description:
      - URL to fetch the image from (with Ansible's URL helpers, streamed, never stored whole).
      - Requires O(checksum). Mutually exclusive with O(src) and O(capture).
      - A user name and password in the URL (C(https://user:token@host/...)) are used for the download only. The
        manifest records the URL without them, and they are masked in the module's output.
    type: str
  checksum:
    description:
      - The image's checksum as C(sha256:<64 hex digits>), or as C(sha256:<URL>) of a checksum file published
        beside the image (an http or https URL, as M(ansible.builtin.get_url) takes it). That file (at most 1 MiB,
        fetched on every run) holds one bare hash, or lines C(<hash>  <file name>) as C(sha256sum) writes them (its
        C(--tag) style too), and the line of the image's file name (the last part of O(url) or O(src)) gives the
        hash.
      - Verified before anything is unpacked. When it equals the checksum of a stored generation, nothing is
        read or fetched.
      - A malformed value, or the all-zero placeholder of an example, is refused before anything is fetched.
    type: str
  store:
    description:
      - Directory of the bakeform store.
    type: path
    default: /srv/pifleet/bakeforms
  state:
    description:
      - V(present) ingests the image (or makes the O(capture)) unless the same content is stored already; without
        a source it only applies O(current), O(pinned) and O(keep) to a bakeform that exists.
      - V(absent) removes the whole bakeform, or with O(generation) that generation only. Refused while a Pi's
        root uses what would go (the message names each Pi); a generation that is current or pinned is refused too.
    type: str
    choices: [present, absent]
    default: present
  generation:
    description:
      - With O(state=absent), the generation to remove (its number), instead of the whole bakeform.
    type: int
  current:
    description:
      - The generation new roots get (and that C(upgrade) moves Pis to by default), when not the newest; for
        example the one before a bad image. It stays current until another image is ingested or another
        O(current) is given.
    type: int
  keep:
    description:
      - How many generations that no root uses are kept, the current one counted. The newest of them are kept;
        used, current and pinned generations always stay.
    type: int
    default: 3
  pinned:
    description:
      - Generations (numbers) kept whatever O(keep) says, such as the one a lab falls back to. Replaces the
        pinned list of the index; when not given, the index's stays.
    type: list
    elements: int
  roots_dir:
    description:
      - Directory of the per-Pi roots (M(pifleet.netboot.pi_root)'s O(pifleet.netboot.pi_root#module:roots_dir));
        the markers there say which generations Pis use. When it does not exist, nothing is removed by O(keep)
        (with a warning), since which generations are used cannot be told.
      - With O(capture), where the Pi's root is.
    type: path
    default: /srv/pifleet/roots
  units_dir:
    description:
      - Where pi_root keeps the systemd mount units of each generation's C(boot-nfs). A removed generation's unit
        is removed, and the unit of a store-format-2 bakeform moves with it.
    type: path
    default: /etc/systemd/system
  capture:
    description:
      - Make the next generation of this bakeform from the root of one Pi (C(<roots_dir>/<serial>.img)) and the
        boot files of the generation that root was built from. See the description for what is taken out.
      - Set the Pi up by hand first; it may keep running (its file system is frozen for the moment of the clone,
        about a second with reflinks). A capture is always a new generation (C(changed) on every run), so run it once.
      - Mutually exclusive with O(src), O(url) and O(checksum).
    type: dict
    suboptions:
      serial:
        description: The Pi's serial (8 hex digits, its TFTP prefix; or the 16 of C(/proc/cpuinfo)).
        type: str
        required: true
      hostname:
        description: The Pi's name, recorded in the manifest's C(origin); default the one in its root's marker.
        type: str
  force:
    description:
      - No longer needed, and ignored. An image with other content under the same name is simply a new generation.
    type: bool
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
      - Timeout in seconds for connecting to O(url) (and a checksum URL) and for each read from it.
    type: int
    default: 60
notes:
  - The store's format and the manifest are described in the collection's C(docs/formats.md); generations,
    retention and the capture workflow in C(docs/generations.md).
"""

EXAMPLES = r"""
- name: Register a Raspberry Pi OS image already on the bakery
  pifleet.netboot.bakeform:
    name: bookworm-lite
    src: /var/cache/pifleet/2025-05-13-raspios-bookworm-arm64-lite.img.xz
    checksum: sha256:62d025b9bc7ca0e1facfec74ae56ac13978b6745c58177f081d39fbb8041ed45
    roots_dir: /srv/pifleet/roots

- name: Fetch an image, verified against the checksum file published beside it
  pifleet.netboot.bakeform:
    name: bookworm-lite
    url: https://mirror.example.org/raspios/2025-05-13-raspios-bookworm-arm64-lite.img.xz
    checksum: sha256:https://mirror.example.org/raspios/2025-05-13-raspios-bookworm-arm64-lite.img.xz.sha256

- name: A newer image under the same name becomes the next generation; keep two unused ones and generation 1
  pifleet.netboot.bakeform:
    name: bookworm-lite
    src: /var/cache/pifleet/2025-11-24-raspios-bookworm-arm64-lite.img.xz
    keep: 2
    pinned: [1]

- name: New roots get generation 2 again (the newest one is bad)
  pifleet.netboot.bakeform:
    name: bookworm-lite
    current: 2

- name: Capture a Pi set up by hand as the next generation of the lab's bakeform
  pifleet.netboot.bakeform:
    name: lab
    capture:
      serial: "3a4b5c6d"
      hostname: pi-admin
  register: captured

- name: Remove one generation that no Pi uses any more
  pifleet.netboot.bakeform:
    name: bookworm-lite
    state: absent
    generation: 1

- name: Remove a bakeform (refused while a Pi uses it)
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
generation:
  description:
    - The generation this run's source is stored as (the new one, or the one that already held it); null without
      a source and after V(absent).
  returned: always
  type: int
  sample: 3
current:
  description: The current generation (what new roots get); null when the bakeform has none.
  returned: always
  type: int
  sample: 3
generations:
  description: Every generation of the bakeform after this run (in check mode, as the run would leave them).
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Its number.
      type: int
    label:
      description: Its name, C(<bakeform>@<id>).
      type: str
    sha256:
      description: The sha256 of the image it was ingested from (of its root image, for a capture).
      type: str
    created:
      description: When it was made (UTC).
      type: str
    source:
      description: The path or URL of its image, or the Pi root image it was captured from.
      type: str
    origin:
      description:
        - Its C(kind) is V(image), or V(capture) with C(serial), C(hostname) and C(from), the generation the Pi's root
          was built from.
      type: dict
    pinned:
      description: Whether it is pinned.
      type: bool
    current:
      description: Whether it is the current generation.
      type: bool
    used_by:
      description: The Pis whose roots use it, each C({serial, hostname, root}) with C(root) V(current) or
        V(previous) (the root kept for a rollback).
      type: list
      elements: dict
  sample:
    - {id: 2, label: bookworm-lite@2, sha256: 62d0..., created: "2026-01-12T09:30:00Z", origin: {kind: image},
       source: /var/cache/pifleet/raspios.img.xz, pinned: false, current: true,
       used_by: [{serial: 3a4b5c6d, hostname: pi-01, root: current}]}
removed:
  description: The generations this run removed (O(keep), or O(generation) with V(absent)); all of them when the whole
    bakeform went.
  returned: always
  type: list
  elements: int
  sample: [1]
manifest:
  description:
    - The manifest of O(generation) (the content of its C(manifest.json)); empty without a source, after V(absent),
      and in check mode when the source would be a new generation.
    - Keys C(name) and C(bakeform) (the bakeform's name), C(generation), C(origin), C(format) (3), C(source),
      C(source_stat), C(sha256), C(source_size), C(image_size), C(partition_table), C(partitions), C(boot_files),
      C(models), C(kernels), C(pretty_name), C(root_image) and C(boot_image) (file names in the generation's
      directory), C(root_uuid), C(root_bytes), C(created), C(collection_version).
    - C(capabilities) says what its root can do for a netboot, read from the root image without mounting it;
      C(mount_nfs) (package nfs-common), C(initramfs) (C(generator) initramfs-tools or dracut, C(nfs) whether it
      can mount an NFS root, C(tool), the initramfs C(files) among the boot files), C(cloud_init),
      C(network_manager), C(dhcpcd) (its service), C(netplan), and the installed versions of the C(packages) these
      come with. M(pifleet.netboot.pi_root) refuses a Pi whose settings need what its generation lacks. A generation
      made before this record has none (null), and its Pis are not checked.
  returned: always
  type: dict
  sample:
    name: bookworm-lite
    generation: 3
    sha256: 62d025b9bc7ca0e1facfec74ae56ac13978b6745c58177f081d39fbb8041ed45
    models: ["3", "4", "5"]
    kernels: [kernel8.img, kernel_2712.img]
    capabilities:
      version: 1
      mount_nfs: false
      cloud_init: true
      network_manager: true
      dhcpcd: false
      netplan: true
      initramfs: {generator: initramfs-tools, nfs: true, tool: "klibc nfsmount (NFS v2/v3, no proto=)",
                  files: [initramfs8]}
      packages: {cloud-init: "25.1.1-1+rpt1", network-manager: "1.52.0-1+rpt1"}
migrated:
  description: Whether this run made a bakeform of store format 2 its generation 1 (or would, in check mode).
  returned: always
  type: bool
  sample: false
capture:
  description: What a capture did. C(frozen) says whether the Pi's file system was mounted (and so frozen for
    the copy); C(taken_out) lists what was taken out of the copy.
  returned: with O(capture), when a generation was made
  type: dict
  sample: {serial: 3a4b5c6d, hostname: pi-admin, from: bookworm-lite@2, frozen: true,
           taken_out: [cloud_init, hostname, logs, machine_id, random_seed, ssh_host_keys]}
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
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError
from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import LoopError
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import LOCK_ARGS, ModuleHost, take_lock
from ansible_collections.pifleet.netboot.plugins.module_utils.common.sizes import SizeError, parse_size
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.capturework import CapturePlan
from ansible_collections.pifleet.netboot.plugins.module_utils.store import checksum as _checksum
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import (
    IngestError,
    PartitionError,
    check_name,
    same_source,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeformwork import Build, os_error_message
from ansible_collections.pifleet.netboot.plugins.module_utils.store.generationwork import GenerationError, Generations

# Each tool (mtools, mke2fs -d of a whole root, tune2fs) may take this long on a big image before it is killed.
TOOL_TIMEOUT = 3600
STORE_MODE = 0o711  # traversable for the unprivileged TFTP hook (boot/), not listable; images are 0600
ERRORS = (IngestError, PartitionError, GenerationError, _roots.RootError, LoopError, ConfinedError)


class BakeformModule:
    def __init__(self, module):
        self.module, self.params = module, module.params
        self.host = ModuleHost(module, timeout=TOOL_TIMEOUT)
        self.name, self.store = self.params['name'], self.params['store']
        self.result = {'changed': False, 'path': os.path.join(self.store, self.name), 'generation': None,
                       'current': None, 'generations': [], 'removed': [], 'manifest': {}, 'migrated': False,
                       'swept': []}
        self.max_size = self.work = self.generation = None
        self.references = []
        # A user name and password in the image's or the checksum's URL never reach the manifest or any output:
        # the manifest records the URL without them, and the module masks them wherever else they appear.
        self.url, secrets = _checksum.without_credentials(self.params['url'])
        self.checksum_url = str(self.params['checksum'] or '').partition('sha256:')[2].strip()
        module.no_log_values.update(secrets + _checksum.without_credentials(self.checksum_url)[1])

    def fail(self, msg, **details):
        if self.work is not None and not self.module.check_mode:
            self.result['changed'] = self.work.changed  # what was done before the failure (a migration, say)
        self.module.fail_json(msg=msg, **dict(self.result, **details))

    def unmount(self, point):
        _command.run(['umount', '-l', point], TOOL_TIMEOUT)

    def check_arguments(self):
        problem = check_name(self.name)
        if problem:
            self.fail(problem)
        try:
            self.max_size = parse_size(self.params['max_size'])
        except SizeError as exc:
            self.fail('max_size: %s' % exc)
        if self.params['keep'] < 1:
            self.fail('keep must be at least 1 (the current generation always stays), not %d' % self.params['keep'])
        if self.params['generation'] is not None and self.params['state'] != 'absent':
            self.fail('generation is for state: absent (the one generation to remove); to choose the generation new '
                      'roots get, use current')
        for key in ('generation', 'current'):
            if self.params[key] is not None and self.params[key] < 1:
                self.fail('%s: %d is not a generation number (1, 2, 3 ...)' % (key, self.params[key]))
        if any(number < 1 for number in self.params['pinned'] or []):
            self.fail('pinned: generation numbers are 1, 2, 3 ...; got %s' % self.params['pinned'])
        for key, url in (('url', self.params['url']), ('checksum', self.checksum_url)):
            problem = _checksum.url_problem(url) if url and '://' in url else None
            if problem:
                self.fail('%s: %s; nothing was fetched' % (key, problem))
        if self.params['capture'] is not None and self.params['checksum']:
            self.fail('parameters are mutually exclusive: capture|checksum (a capture is checked by its own sha256)')

    def run(self):
        self.check_arguments()
        lock = take_lock(self.module, 'bakeform %s' % self.name, self.result)
        try:
            digest, checksum_url = _checksum.parse(self.params['checksum'])  # before anything is fetched
            if not self.module.check_mode and os.path.isdir(self.store):
                self.result['swept'] = _atomic.sweep_stale(
                    self.store, lambda label: os.path.join(self.store, label), self.unmount)
            self.work = Generations(self.host, self.store, self.name, self.params['units_dir'], self.unmount).load()
            self.references = _roots.references(self.params['roots_dir'])
            if self.params['state'] == 'absent':
                self.absent()
            else:
                self.present(digest, checksum_url)
            self.work.save()
        except ERRORS as exc:
            self.fail(str(exc), **getattr(exc, 'details', {}))
        except OSError as exc:
            self.fail(os_error_message(self.store, self.name, exc))
        finally:
            if self.work is not None:
                self.work.close()
            if lock:
                lock.release()
        self.result.update(self.work.report(self.references, self.generation), changed=self.work.changed)
        if self.module._diff:
            self.result['diff'] = self.work.diff()
        self.module.exit_json(**self.result)

    def absent(self):
        if self.params['generation'] is not None:
            self.work.migrate()
            self.work.remove_one(self.params['generation'], self.references)
        else:
            self.work.remove_all(self.references)

    def present(self, digest, checksum_url):
        work, params = self.work, self.params
        if work.replacing:
            if not (params['src'] or params['url'] or params['capture']):
                self.fail('bakeform %s is incomplete or of an older store format, and this run gives no image to '
                          'replace it with: give src or url' % self.name)
            self.module.warn('bakeform %s is incomplete or of an older store format: it is replaced by a new '
                             'bakeform made from this run\'s source' % self.name)
        work.migrate()
        source = params['src'] or params['url'] or params['capture']
        if not source and not work.exists():
            self.fail('bakeform %s does not exist in %s: give src, url or capture to register it'
                      % (self.name, self.store))
        current = params['current']
        if current is not None and current not in work.ids() and not (source and current == work.index['next']):
            work.choose(current)  # fails before anything is made: neither stored nor the one this run may make
        if params['capture'] is not None:
            self.capture()
        elif source:
            self.ingest(digest, checksum_url)
        if current is not None:
            work.choose(params['current'])
        if params['pinned'] is not None:
            work.pin(params['pinned'])
        work.retention(params['keep'], self.references, os.path.isdir(params['roots_dir']))
        self.secure_store()

    def source(self):
        return os.path.abspath(self.params['src']) if self.params['src'] else self.url

    def ingest(self, digest, checksum_url):
        src = self.params['src']
        if src and not os.path.isfile(src):
            self.fail('source of bakeform %s not found: %s is not a file on %s' % (self.name, src, os.uname()[1]))
        if checksum_url:
            digest = self.fetch_checksum(checksum_url)
        manifests = self.work.all_manifests()
        if manifests or self.module.check_mode:  # a first ingest hashes the source as it streams it
            found, digest = same_source(manifests, src, digest)
        else:
            found = None
        if found is not None:
            self.generation = found  # stored already: nothing to ingest
            return
        self.need_root()
        build = Build(lambda argv: _command.run(argv, TOOL_TIMEOUT), self.name, self.store, source=self.source(),
                      max_size=self.max_size, xz_bin=self.module.get_bin_path('xz'))
        download = None
        if self.params['url']:
            def download():
                return fetch_url(self.module, self.params['url'], timeout=self.params['timeout'])
        planned = {'sha256': digest, 'created': None, 'source': self.source(), 'origin': {'kind': 'image'}}
        self.generation = self.work.add(lambda scratch, number: build.make(scratch, number, digest, download), planned)

    def fetch_checksum(self, url):
        """The image's sha256 from the checksum file at ``url`` (small: capped), picked by the image's file name."""
        response, info = fetch_url(self.module, url, timeout=self.params['timeout'])
        if response is None or info.get('status') != 200:
            raise IngestError('fetching the checksum file %s for bakeform %s failed: %s (HTTP status %s); nothing '
                              'was fetched or unpacked' % (url, self.name, info.get('msg'), info.get('status')))
        with response:
            data = response.read(_checksum.FILE_LIMIT + 1)
        if len(data) > _checksum.FILE_LIMIT:
            raise IngestError('the checksum file %s is larger than %d bytes: it is not a checksum file'
                              % (url, _checksum.FILE_LIMIT))
        return _checksum.from_file(data.decode('utf-8', errors='replace'), _checksum.file_name(self.source()), url)

    def need_root(self):
        if not self.module.check_mode and os.geteuid() != 0:
            self.fail('bakeform %s: making a generation needs root on the bakery host to keep owners, device nodes '
                      'and capabilities of the root file system; add become: true' % self.name)

    def capture(self):
        plan = CapturePlan(self.host, self.work, self.params['roots_dir'], self.params['capture'])
        self.need_root()
        self.generation = self.work.add(plan.make, plan.planned())
        if plan.report:
            self.result['capture'] = plan.report

    def secure_store(self):
        if not self.module.check_mode and os.path.isdir(self.store) and os.stat(self.store).st_mode & 0o7777 != STORE_MODE:
            os.chmod(self.store, STORE_MODE)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            src=dict(type='path'),
            url=dict(type='str'),
            checksum=dict(type='str'),
            store=dict(type='path', default='/srv/pifleet/bakeforms'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            generation=dict(type='int'),
            current=dict(type='int'),
            keep=dict(type='int', default=3),
            pinned=dict(type='list', elements='int'),
            roots_dir=dict(type='path', default='/srv/pifleet/roots'),
            units_dir=dict(type='path', default='/etc/systemd/system'),
            capture=dict(type='dict', options=dict(serial=dict(type='str', required=True),
                                                   hostname=dict(type='str'))),
            force=dict(type='bool', removed_in_version='1.0.0', removed_from_collection='pifleet.netboot'),
            max_size=dict(type='str', default='64G'),
            root_extract=dict(type='str', choices=['auto', 'kernel', 'fuse'],
                              removed_in_version='1.0.0', removed_from_collection='pifleet.netboot'),
            timeout=dict(type='int', default=60),
            **LOCK_ARGS,
        ),
        mutually_exclusive=[('src', 'url', 'capture')],
        required_by={'url': 'checksum'},
        supports_check_mode=True,
    )
    BakeformModule(module).run()


if __name__ == '__main__':
    main()
