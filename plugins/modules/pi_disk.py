#!/usr/bin/python
# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pi_disk
short_description: Extra disks for Raspberry Pis, as sparse disk.img files in a file system of their own per Pi
version_added: 0.1.0
description:
  - Creates, grows and removes extra disks of network-booted Pis on the bakery host. Each Pi's disks live in one
    file system of its own, a sparse ext4 image C(<disks_dir>/<serial>.img) loop-mounted C(nosuid,nodev,noexec) at
    C(<disks_dir>/<serial>), which is what gets exported to that Pi over NFS; each disk is C(<name>/disk.img) in it.
    A Pi can forge NFS file handles naming any file of the file system it is exported, so that file system holds
    nothing but its own disks.
  - The file system is sized for all the Pi's disks at full size, plus ext4's overhead and some slack, and grows
    when disks are added or grown (online, or offline when the kernel refuses and it can be unmounted); it never
    shrinks. It is made with C(mke2fs) on the sparse file, without mounting, in a scratch directory, then renamed
    into place. A systemd mount unit in O(units_dir) mounts it again after a reboot.
  - Everything in the mounted file system is the Pi's to change, so pi_disk touches it only through file
    descriptors, one path component at a time, never following a symbolic link; tools get the checked file as
    C(/proc/self/fd/N), never a path. A C(<name>) or C(disk.img) the Pi replaced by a symbolic link, a FIFO or
    anything else is refused with the reason. A new disk is made as an unnamed file (sparse, formatted when
    O(fstype=ext4), without mounting) and linked into place whole.
  - Maintains C(<disks_dir>/<serial>.json), the index of the Pi's disks (C(name), C(file), C(size), C(fstype),
    C(nfs_path), the export), beside the image and out of the Pi's reach; replaced atomically, only when it changes.
  - A C(disk.img) is the Pi's, written raw, so the bakery never parses it; no C(e2fsck), C(resize2fs), C(debugfs),
    C(blkid), C(mount) or superblock read on it once a Pi could have written it (a parser run as root on bytes a Pi
    chose is the Pi's way into the bakery). What pi_disk knows of a disk is its size and allocation and what its
    index recorded when it made it. C(mkfs.ext4) runs only on a fresh, still unnamed file, before any Pi saw it.
  - Disks grow in place, as files (by a hole), and never shrink (told by the file's size alone). The Pi grows its
    own file system into the new space (see the README, "Growing a disk"). The file system of an existing disk is
    never changed. When a Pi's last disk goes, its file system, mount unit and index go too (unless the Pi left
    other files there and no O(force) is given).
  - Each Pi is planned, then changed, on its own; a Pi whose disks cannot be converged (a refused item, a
    C(disk.img) the Pi swapped for a link or made bigger than asked) fails alone and changes nothing of its own
    that was refused; the other Pis of the call still converge, and the module fails at the end naming each failed
    Pi (RV(failed_pis)).
  - Every tool it runs (C(mke2fs), C(mount), C(losetup)) is killed after O(command_timeout) seconds; that Pi fails
    saying so, the others go on.
  - Disks of the older layout (C(<disks_dir>/<serial>/) a plain directory on the bakery's file system) are
    refused with the reason; O(migrate=true) copies them into a file system of their own.
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
  - pifleet.netboot._attributes.full
  - pifleet.netboot._lock
  - pifleet.netboot._commands
  - pifleet.netboot._space
attributes:
  diff_mode:
    details: The diff shows each Pi's index C(<disks_dir>/<serial>.json) before and after.
requirements:
  - root on the bakery host, with loop devices and ext4 (in a container, pass C(/dev/loop-control) and C(/dev/loopN)).
  - e2fsprogs (C(mke2fs), C(mkfs.ext4); C(e2fsck), C(resize2fs) for the Pi's disks file system itself, which the
    bakery's kernel writes), util-linux (C(mount), C(umount), C(losetup)).
notes:
  - "O(state=absent) without O(force) refuses a disk that may hold data, told from the file alone: for
    O(fstype=none) any allocated block; for O(fstype=ext4) more blocks allocated than its blank file system had
    when pi_disk made it (a disk the Pi has only mounted counts), or any ext4 disk made before pifleet kept that
    record; for both, other files the Pi put in the disk's directory."
  - Growing a mounted file system needs C(CAP_SYS_RESOURCE) (containers often drop it). Without it, pi_disk
    unmounts the file system, grows it offline and mounts it again; it refuses, with the reason, while an NFS
    server holds it (busy here, or still mounted in the server's own mount namespace).
  - Quote serials in YAML, for example C("00c0ffee"), because unquoted digits may be read as numbers.
options:
  serial:
    description:
      - Serial of the Pi, 8 hex digits (its TFTP prefix) or the 16 digits of C(/proc/cpuinfo).
      - Required for every disk, at the top level or in each item of O(disks).
    type: str
  name:
    description:
      - Name of the disk; up to 64 lower-case letters, digits, C(.), C(_) and C(-), starting with a letter or digit.
      - Required for every disk, at the top level or in each item of O(disks).
    type: str
  size:
    description:
      - Size of the disk; bytes as an integer, or a number with C(K), C(M), C(G) or C(T) (binary units,
        case-insensitive, optional C(iB) or C(B); decimals allowed, e.g. C(1.5G)). Rounded up to a whole MiB.
      - Required with O(state=present). An ext4 disk needs at least 8 MiB. Asking for less than the disk's
        current size fails.
    type: raw
  fstype:
    description:
      - V(none) leaves the disk blank (the Pi formats it); V(ext4) formats it on the bakery, without mounting.
      - Must match the file system the disk was created with.
    type: str
    choices: [none, ext4]
    default: none
  state:
    description:
      - V(present) creates the disk or grows it to O(size). V(absent) removes its directory and its entry in the
        index; removing a Pi's last disk also removes its file system, mount unit and index.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - With O(state=absent), remove the disk even when it holds data (and the Pi's file system with its last disk
        even when the Pi left other files in it).
    type: bool
    default: false
  disks_dir:
    description:
      - Directory holding the disk file systems, indexes and mount points of all Pis (mode 0700).
    type: path
    default: /srv/pifleet/disks
  units_dir:
    description:
      - Where the systemd mount units that bring the disk file systems back after a reboot are written. An empty
        string writes none (the mounts then do not survive a reboot).
    type: path
    default: /etc/systemd/system
  migrate:
    description:
      - Copy the disks of a Pi still in the older layout (a plain C(<disks_dir>/<serial>/) directory holding
        C(<name>/disk.img) and C(disks.json)) into a file system of its own, keeping their holes, then delete the
        old directory. Shut the Pi down first; pi_disk refuses ext4 disks whose journal needs recovery, but cannot
        tell whether a Pi is still writing to a V(none) disk.
      - Without it such a Pi fails with the reason.
    type: bool
    default: false
  disks:
    description:
      - Many disks in one call (the fleet converges in one task). Top-level O(serial), O(name), O(size),
        O(fstype), O(state) and O(force) are the defaults for each item.
      - The same serial and name may appear only once.
    type: list
    elements: dict
    suboptions:
      serial:
        description: Serial of the Pi (see O(serial)).
        type: str
      name:
        description: Name of the disk (see O(name)).
        type: str
      size:
        description: Size of the disk (see O(size)).
        type: raw
      fstype:
        description: File system of the disk (see O(fstype)).
        type: str
        choices: [none, ext4]
      state:
        description: V(present) or V(absent) (see O(state)).
        type: str
        choices: [present, absent]
      force:
        description: Remove the disk even when it holds data (see O(force)).
        type: bool
"""

EXAMPLES = r"""
- name: Give a Pi an 8 GiB ext4 data disk
  pifleet.netboot.pi_disk:
    serial: "3a4b5c6d"
    name: data
    size: 8G
    fstype: ext4

- name: Converge the disks of the whole fleet in one call
  pifleet.netboot.pi_disk:
    fstype: ext4
    disks: "{{ pifleet_disks }}"  # [{serial: "3a4b5c6d", name: data, size: 16G}, ...]

- name: Export a Pi's disks to it alone (one export per Pi, whatever its number of disks)
  pifleet.netboot.nfs_export:
    path: /srv/pifleet/disks/3a4b5c6d
    clients: [10.0.0.51]

- name: Remove a scratch disk and its data
  pifleet.netboot.pi_disk:
    serial: "3a4b5c6d"
    name: scratch
    state: absent
    force: true

- name: Move a Pi's disks from the older layout into a file system of their own (the Pi shut down)
  pifleet.netboot.pi_disk:
    serial: "3a4b5c6d"
    name: data
    size: 8G
    fstype: ext4
    migrate: true
"""

RETURN = r"""
disks:
  description: One entry per disk of the call, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    serial:
      description: Serial of the Pi (8 hex digits).
      type: str
      sample: 3a4b5c6d
    name:
      description: Name of the disk.
      type: str
      sample: data
    path:
      description: Path of the disk's C(disk.img) (in the Pi's mounted file system).
      type: str
      sample: /srv/pifleet/disks/3a4b5c6d/data/disk.img
    changed:
      description: Whether this disk was (or in check mode would be) changed.
      type: bool
      sample: true
    action:
      description:
        - What was (or in check mode would be) done; V(failed) when its Pi failed before it was done.
        - V(grown) grows the file only; the Pi grows the file system in it.
      type: str
      choices: [created, grown, unchanged, removed, failed]
      sample: created
    apparent_size:
      description:
        - Size of C(disk.img) in bytes as seen by the Pi; 0 when the disk does not exist.
        - In check mode, the size the disk would have.
      type: int
      sample: 8589934592
    allocated_size:
      description:
        - Bytes of C(disk.img) actually stored (the file is sparse); 0 when the disk does not exist.
        - In check mode, the current allocation.
      type: int
      sample: 276824064
    fstype:
      description: File system of the disk (V(none) or V(ext4)); null when the disk does not exist.
      type: str
      sample: ext4
    msg:
      description: Why this disk's Pi failed.
      type: str
      returned: when it failed
pis:
  description: One entry per Pi of the call (sorted by serial) for its disks file system.
  returned: always
  type: list
  elements: dict
  contains:
    serial: {description: Serial as 8 lower-case hex digits., type: str, returned: always, sample: 3a4b5c6d}
    path:
      description: The mount point of the Pi's disks file system, the path to export to it.
      type: str
      returned: always
      sample: /srv/pifleet/disks/mnt/3a4b5c6d
    image: {description: The file system image., type: str, returned: always, sample: /srv/pifleet/disks/3a4b5c6d.img}
    index: {description: The index of its disks., type: str, returned: always, sample: /srv/pifleet/disks/3a4b5c6d.json}
    action:
      description: What was (or would be) done to the file system.
      type: str
      returned: always
      choices: [created, migrated, grown, mounted, unchanged, removed, kept, none, failed]
      sample: created
    changed: {description: Whether anything of this Pi changed (or would)., type: bool, returned: always}
    capacity:
      description: Size of the file system image in bytes (in check mode, the size it would have; 0 when none).
      type: int
      returned: always
      sample: 9529458688
    allocated:
      description: Bytes of the image actually stored on the bakery (0 in check mode for a new one).
      type: int
      returned: always
      sample: 1347584
    usage:
      description:
        - Space of this Pi's disks file system, read after the run from the bakery's own files (C(stat), the
          image's extent map, C(statvfs) of the mounted file system), never from a byte the Pi wrote. Sizes in
          bytes; the keys are those of M(pifleet.netboot.pi_root)'s RV(pis[].usage).
      type: dict
      returned: always
      contains:
        size: {description: Size of the disks file system image., type: int}
        allocated: {description: Bytes the image takes on the data file system now., type: int}
        exclusive: {description: Bytes of those the image alone owns (not shared by reflink)., type: int}
        growth: {description: What the image can still take from the data file system when the Pi fills it., type: int}
        filesystem: {description: Mount point of the data file system holding the image (null without one)., type: str}
        fs_size: {description: Size of the disks file system as mounted (null when not mounted)., type: int}
        fs_used: {description: Bytes in use inside it., type: int}
        fs_free: {description: Bytes free inside it., type: int}
    msg: {description: Why this Pi failed., type: str, returned: when it failed}
failed_pis:
  description: The Pis whose disks could not be converged (every other Pi was), each with why.
  returned: always
  type: list
  elements: dict
  contains:
    serial: {description: Serial of the Pi (8 hex digits)., type: str}
    hostname: {description: Always null (pi_disk knows Pis by serial)., type: str}
    msg: {description: Why it failed., type: str}
  sample:
    - serial: 3a4b5c6d
      hostname: null
      msg: "shrinking disk data of Pi 3a4b5c6d refused: its disk.img is 100 GiB ..."
planned_space:
  description:
    - What this call's new and grown disks file systems book at worst on each data file system, as planned before
      any is made (the same in check mode); the keys are those of M(pifleet.netboot.pi_root)'s RV(planned_space).
  returned: always
  type: list
  elements: dict
  sample:
    - {mount: /srv/pifleet, fstype: xfs, reflink: true, size: 1099511627776, free: 879609302221,
       committed: 1030792151040, claimed: 17179869184, limit: 1088516511498}
filesystems:
  description:
    - Each data file system holding Pi images (of O(disks_dir) and O(space_dirs)), after the run; the keys are
      those of M(pifleet.netboot.pi_root)'s RV(filesystems).
  returned: always
  type: list
  elements: dict
  sample:
    - {mount: /srv/pifleet, size: 1099511627776, used: 219902325555, free: 879609302221, images: 240,
       committed: 1030792151040, overcommit: 1.0, limit: 1088516511498}
swept:
  description: Leftover scratch directories of killed runs that this run removed from O(disks_dir).
  returned: always
  type: list
  elements: str
  sample: []
lock_waited:
  description: Seconds this run waited for another pifleet run to release the bakery lock.
  returned: when it had to wait
  type: float
  sample: 3.2
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import normalise_serial
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import (
    COMMAND_ARGS,
    LOCK_ARGS,
    ModuleHost,
    PifleetModule,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.common.sizes import SizeError, parse_size
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import space as _space
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.disks import Layout, check_name
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.diskwork import PiDisks

ITEM_KEYS = ('serial', 'name', 'size', 'fstype', 'state', 'force')


def items(base):
    """The disks to converge, validated and normalised; every item's problem named with its item, at once."""
    found = []
    for where, item in base.items(ITEM_KEYS, 'the disk'):
        try:
            found.append(normalise(item, where))
        except ValueError as exc:
            base.problem(str(exc))
    base.unique(found, 'key', 'duplicate disks in disks: %s each given more than once (as serial/name); give each '
                'disk once')
    base.check()
    return found


def normalise(item, where):
    """The item checked and normalised; ValueError says its first problem."""
    for key in ('serial', 'name'):
        if item[key] in (None, ''):
            raise ValueError('%s missing for %s: every disk needs a serial and a name; set %s at the top level or in '
                             'the item' % (key, where, key))
    try:
        item['serial'] = normalise_serial(item['serial'])
    except ValueError as exc:
        raise ValueError('invalid serial for %s: %s' % (where, exc)) from None
    problem = check_name(item['name'])
    if problem:
        raise ValueError('invalid name for %s: %s' % (where, problem))
    if item['state'] == 'present':
        if item['size'] in (None, ''):
            raise ValueError('size missing for disk %s of Pi %s: state present needs a size; set size (e.g. "8G")'
                             % (item['name'], item['serial']))
        try:
            item['size'] = parse_size(item['size'])
        except SizeError as exc:
            raise ValueError('invalid size for disk %s of Pi %s: %s' % (item['name'], item['serial'], exc)) from None
    item['key'] = '%s/%s' % (item['serial'], item['name'])
    return item


def main():
    item_options = dict(
        serial=dict(type='str'),
        name=dict(type='str'),
        size=dict(type='raw'),
        fstype=dict(type='str', choices=['none', 'ext4']),
        state=dict(type='str', choices=['present', 'absent']),
        force=dict(type='bool'),
    )
    module = AnsibleModule(
        argument_spec=dict(
            serial=dict(type='str'),
            name=dict(type='str'),
            size=dict(type='raw'),
            fstype=dict(type='str', choices=['none', 'ext4'], default='none'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            force=dict(type='bool', default=False),
            disks_dir=dict(type='path', default='/srv/pifleet/disks'),
            units_dir=dict(type='path', default=_loopfs.UNITS_DIR),
            migrate=dict(type='bool', default=False),
            disks=dict(type='list', elements='dict', options=item_options),
            **LOCK_ARGS,
            **COMMAND_ARGS,
            **_space.SPACE_ARGS,
        ),
        supports_check_mode=True,
    )
    base = PifleetModule(module, {'changed': False, 'disks': [], 'pis': [], 'failed_pis': [], 'filesystems': [],
                                  'planned_space': []}, 'disks')
    todo, params = items(base), module.params
    if any(item['state'] != 'absent' for item in todo):
        problem = _space.on_root_filesystem({'disks_dir': params['disks_dir']}, params['allow_root_filesystem'])
        if problem:
            base.fail(problem)
    space_dirs = [params['disks_dir'], *params['space_dirs']]
    work = PiDisks(ModuleHost(module), disks_dir=params['disks_dir'], units_dir=params['units_dir'],
                   migrate=params['migrate'], space=_space.Ledger(space_dirs, params['overcommit']))
    lock = base.lock('pi_disk')
    try:
        result, problem = work.run(todo)
    finally:
        if lock:
            lock.release()
    base.result.update(result)
    after = _space.Ledger(space_dirs, params['overcommit']).scan()  # the space as the run left it
    after.annotate(base.result['pis'], lambda serial: Layout(params['disks_dir'], serial))
    base.result['filesystems'] = after.report()
    base.result['planned_space'] = work.space.planned()
    if module._diff:
        base.result['diff'] = work.diffs
    if problem:
        base.fail(problem)
    module.exit_json(**base.result)


if __name__ == '__main__':
    main()
