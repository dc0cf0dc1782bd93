#!/usr/bin/python
# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pi_root
short_description: Give each Raspberry Pi a private root file system cloned from a bakeform
version_added: 0.1.0
description:
  - Gives each Pi a root file system of its own, C(<roots_dir>/<serial>.img), cloned from the golden root image
    of a bakeform (see M(pifleet.netboot.bakeform)) and loop-mounted C(nosuid,nodev) at C(<roots_dir>/<serial>),
    the directory the Pi mounts over NFS. A file system per Pi means that no NFS file handle a Pi forges can
    name another Pi's files or the bakery's (see the collection's C(SECURITY.md)).
  - "Clones are reflink copies where the file system of O(roots_dir) shares extents with O(store) (XFS, btrfs:
    constant time and almost no space per Pi), else full sparse copies. Each clone gets a fresh file system UUID."
  - The clone is built and fixed in a locked scratch directory beside its target and renamed into place, so a
    Pi never sees a half-made root; leftovers of a killed run are removed by the next run.
  - Every change inside a root is made through a descriptor of the root's top directory, one path component
    at a time, never following a symlink; a root (or golden image) whose fixed paths are symlinks is refused.
  - Each mount gets a systemd mount unit in O(units_dir) (enabled for C(local-fs.target), ordered before the
    NFS server), so the roots come back after a reboot of the bakery.
  - "Fixes for life on NFS: SD-card lines out of C(/etc/fstab) (C(proc) kept), the boot files mounted per
    O(boot_mount), hostname and C(/etc/hosts), SSH host keys of its own (made on the bakery, O(host_key_types)),
    a fresh machine-id, first-boot resize, host key regeneration and swap file disabled, C(ssh) enabled,
    authorized keys for root, and NetworkManager/dhcpcd kept off the NIC the root lives on."
  - The marker C(<roots_dir>/<serial>.json), out of the Pi's reach, records the bakeform, clone method, file
    system UUID and fixes. An existing root made from the same bakeform content gets only the option-driven fixes
    re-applied in place; a root made from other content is reported as drift and left alone until
    O(state=rebuilt).
  - A Pi whose root cannot be converged (for example one that made its C(/etc) a symlink) fails alone; the other
    Pis of the call still converge, and the module fails at the end naming each failed Pi.
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
  - pifleet.netboot._attributes.full
  - pifleet.netboot._lock
  - pifleet.netboot._space
attributes:
  diff_mode:
    details: Shows C(/etc/fstab), C(/etc/hostname) and C(/etc/hosts) of each root and its marker.
requirements:
  - root on the bakery host, with loop devices and ext4 (in a container, pass C(/dev/loop-control) and C(/dev/loopN)).
  - coreutils C(cp), util-linux C(setpriv), C(mount), C(umount), e2fsprogs C(tune2fs), OpenSSH C(ssh-keygen).
options:
  serial:
    description:
      - Serial of the Pi, 8 hex digits (the TFTP prefix) or the 16 digits of C(/proc/cpuinfo); stored as 8 lower-case digits.
      - Mutually exclusive with O(pis); one of the two is required.
    type: str
  hostname:
    description:
      - Host name of the Pi. Defaults to C(pi-<serial>).
    type: str
  bakeform:
    description:
      - Name of the bakeform in O(store) whose golden root is cloned. Required unless O(state=absent).
    type: str
  store:
    description:
      - Directory of the bakeform store.
    type: path
    default: /srv/pifleet/bakeforms
  roots_dir:
    description:
      - Directory holding the per-Pi root images, markers and mount points (mode 0700). Best on the same XFS or
        btrfs file system as O(store), so clones share its blocks.
    type: path
    default: /srv/pifleet/roots
  units_dir:
    description:
      - Where the systemd mount units that bring the roots back after a reboot are written. An empty string writes
        none (the mounts then do not survive a reboot).
    type: path
    default: /etc/systemd/system
  state:
    description:
      - V(present) clones the root if missing, mounts it, and re-applies the option-driven fixes in place.
      - V(rebuilt) always clones afresh from the bakeform and swaps the new root in, like V(restarted) for a
        service. The Pi keeps its SSH host keys and machine-id, so its identity survives a reimage. An NFS server
        still serving the old root must re-read its export (M(pifleet.netboot.nfs_export) does so).
      - V(absent) unmounts and removes the root, its marker and its mount unit.
    type: str
    choices: [present, absent, rebuilt]
    default: present
  ssh_authorized_keys:
    description:
      - Public keys for C(/root/.ssh/authorized_keys) in the root (dir 0700, file 0600, owned by root); the file
        holds exactly these. Not managed when omitted.
    type: list
    elements: str
  host_key_types:
    description:
      - SSH host key types made for each new root on the bakery. RSA keys take about a second each to make,
        so they are made only when asked for; C(sshd) serves the types it finds.
    type: list
    elements: str
    choices: [ed25519, ecdsa, rsa]
    default: [ed25519, ecdsa]
  boot_mount:
    description:
      - How the Pi sees its boot files. V(none) mounts nothing there; V(nfs) mounts the bakeform's boot files
        read-only (NFSv3) from O(nfs_server) at C(/boot/firmware), or C(/boot) if the root has no C(/boot/firmware).
        The bakeform's C(boot.img) is then mounted read-only at C(<store>/<bakeform>/boot-nfs), the path to export.
    type: str
    choices: [none, nfs]
    default: none
  nfs_server:
    description:
      - Address of the NFS server exporting the store. Required when O(boot_mount=nfs).
    type: str
  clone_method:
    description:
      - V(auto) makes a reflink copy when O(roots_dir) and O(store) share a file system that supports them, falling
        back to a full copy.
      - V(reflink) and V(copy) force one method, and fail where it is not possible. V(snapshot) (btrfs subvolumes,
        before roots were file systems of their own) is refused with the reason.
    type: str
    choices: [auto, snapshot, reflink, copy]
    default: auto
  cloud_init:
    description:
      - For roots that have cloud-init (Raspberry Pi OS from Trixie on), what goes into the Pi's own NoCloud seed in
        C(/var/lib/cloud/seed/nocloud/) besides its identity. Every such root gets a seed (mode 0600) with an
        instance-id made from the serial, the host name, root's O(ssh_authorized_keys), cloud-init's networking
        off (the root lives on that NIC), and none of the first-boot jobs that would replace the host keys or
        resize a disk the Pi does not have. It is re-applied when it changes.
    type: dict
    suboptions:
      user_data:
        description:
          - A cloud-config mapping merged into the seed's C(user-data) (packages, users, runcmd...). Keys the seed
            owns (hostname, network, the host keys...) are refused.
        type: dict
      instance:
        description:
          - Appended to the instance-id. Change it to make cloud-init run its first-boot modules again; a reimage
            keeps the instance-id unless this changes.
        type: str
  pis:
    description:
      - Many Pis in one call. Top-level options are defaults for each item. Serials and host names must be unique.
    type: list
    elements: dict
    suboptions:
      serial:
        description: Serial of the Pi, as O(serial).
        type: str
        required: true
      hostname:
        description: Host name of the Pi, as O(hostname).
        type: str
      bakeform:
        description: Bakeform to clone, as O(bakeform).
        type: str
      state:
        description: As O(state).
        type: str
        choices: [present, absent, rebuilt]
      ssh_authorized_keys:
        description: As O(ssh_authorized_keys).
        type: list
        elements: str
      boot_mount:
        description: As O(boot_mount).
        type: str
        choices: [none, nfs]
      nfs_server:
        description: As O(nfs_server).
        type: str
      cloud_init:
        description: As O(cloud_init).
        type: dict
        suboptions:
          user_data:
            description: As O(cloud_init.user_data).
            type: dict
          instance:
            description: As O(cloud_init.instance).
            type: str
"""

EXAMPLES = r"""
- name: Give one Pi its root from the bookworm bakeform
  pifleet.netboot.pi_root:
    serial: 3a4b5c6d
    hostname: kitchen
    bakeform: bookworm-lite
    ssh_authorized_keys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk0b3... admin@bakery
    boot_mount: nfs
    nfs_server: 10.0.0.2

- name: Converge the whole fleet in one call
  pifleet.netboot.pi_root:
    bakeform: bookworm-lite
    pis:
      - {serial: 3a4b5c6d, hostname: kitchen}
      - {serial: "10000000deadbeef", hostname: garage}
      - {serial: 0badcafe, state: absent}

- name: Reimage a Pi from the updated bakeform (keeps its SSH host keys)
  pifleet.netboot.pi_root:
    serial: 3a4b5c6d
    hostname: kitchen
    bakeform: bookworm-lite
    state: rebuilt
"""

RETURN = r"""
pis:
  description: One entry per Pi, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    serial: {description: Serial as 8 lower-case hex digits., type: str, returned: always, sample: 3a4b5c6d}
    hostname: {description: Host name of the Pi., type: str, returned: always, sample: kitchen}
    path: {description: The Pi's root (its mount point)., type: str, returned: always, sample: /srv/pifleet/roots/3a4b5c6d}
    image:
      description: The Pi's root file system image.
      type: str
      returned: always
      sample: /srv/pifleet/roots/3a4b5c6d.img
    changed: {description: Whether this Pi's root was (or in check mode would be) changed., type: bool, returned: always}
    action:
      description: What was done, V(cloned), V(fixed), V(mounted), V(unchanged), V(drift), V(rebuilt), V(removed) or V(failed).
      type: str
      returned: always
      sample: cloned
    clone_method:
      description: How the root was cloned (V(reflink) or V(copy)); null when unknown.
      type: str
      returned: always
      sample: reflink
    drift:
      description: True when the root was cloned from other content than the bakeform now holds (left alone).
      type: bool
      returned: always
    host_keys:
      description:
        - The public SSH host keys the new root was given (carried over on V(rebuilt)), one C(authorized_keys)-style
          line each, to recognise the Pi when it answers (the reimage playbook waits for them).
      type: list
      elements: str
      returned: when the root was cloned or rebuilt (not in check mode)
    usage:
      description:
        - Space of this Pi's root, read after the run from the bakery's own files (C(stat), the image's extent map,
          C(statvfs) of the Pi's mounted file system), never from a byte the Pi wrote. Sizes in bytes.
      type: dict
      returned: always
      contains:
        size: {description: Size of the root image (what the Pi's root file system holds at most)., type: int}
        allocated: {description: Bytes the image takes on the data file system now (shared blocks included)., type: int}
        exclusive: {description: Bytes of those the image alone owns (not shared by reflink with its bakeform)., type: int}
        growth: {description: What the image can still take from the data file system when the Pi fills it., type: int}
        filesystem: {description: Mount point of the data file system holding the image (null without an image)., type: str}
        fs_size: {description: Size of the Pi's root file system as mounted (null when not mounted)., type: int}
        fs_used: {description: Bytes in use inside it., type: int}
        fs_free: {description: Bytes free inside it., type: int}
      sample: {size: 4294967296, allocated: 2147483648, exclusive: 52428800, growth: 4242538496,
               filesystem: /srv/pifleet, fs_size: 4160749568, fs_used: 1932735283, fs_free: 2013265920}
    msg:
      description: Why this Pi failed.
      type: str
      returned: when this Pi failed
filesystems:
  description:
    - Each data file system holding Pi images (of O(roots_dir) and O(space_dirs)), after the run. Sizes in bytes.
  returned: always
  type: list
  elements: dict
  contains:
    mount: {description: Its mount point., type: str}
    size: {description: Bytes in use plus bytes available., type: int}
    used: {description: Bytes in use., type: int}
    free: {description: Bytes available., type: int}
    images: {description: Pi images on it (roots and disks file systems)., type: int}
    committed: {description: The worst case (what is in use plus what every Pi image can still take)., type: int}
    overcommit: {description: The O(overcommit) of this run., type: float}
    limit: {description: What the worst case may reach (O(overcommit) times the size less the file system's share)., type: int}
  sample:
    - {mount: /srv/pifleet, size: 1099511627776, used: 219902325555, free: 879609302221, images: 240,
       committed: 1030792151040, overcommit: 1.0, limit: 1088516511498}
swept:
  description: Leftover scratch directories of killed runs that this run removed from O(roots_dir).
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
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError
from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import check_host_name, normalise_serial
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import LOCK_ARGS, ModuleHost, PifleetModule
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import space as _space
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.rootwork import PiRoots

ITEM_KEYS = ('serial', 'hostname', 'bakeform', 'state', 'ssh_authorized_keys', 'boot_mount', 'nfs_server',
             'cloud_init')
PI_ERRORS = (_roots.RootError, _loopfs.LoopError, ConfinedError)


def items(base):
    """The Pis of this call, validated all at once (every problem in one message)."""
    found = [item for _where, item in base.items(ITEM_KEYS, 'the Pi')]
    for item in found:
        try:
            item['serial'] = normalise_serial(item['serial'])
        except ValueError as exc:
            base.problem('invalid serial: %s' % exc)
            continue
        item['hostname'] = item['hostname'] or 'pi-%s' % item['serial']
        try:
            check_host_name(item['hostname'])
        except ValueError as exc:
            base.problem('%s for Pi %s' % (exc, item['serial']))
        if item['state'] != 'absent' and not item['bakeform']:
            base.problem('no bakeform for Pi %s: set bakeform (at the top level or in its pis entry)' % item['serial'])
        if item['boot_mount'] == 'nfs' and not item['nfs_server']:
            base.problem('boot_mount is nfs but nfs_server is not set for Pi %s: set nfs_server (the bakery '
                         'address the Pis reach)' % item['serial'])
    for key in ('serial', 'hostname'):
        base.unique(found, key, 'duplicate %ss in pis: %%s; each Pi needs its own' % key)
    base.check()
    return found


def converge(module, roots, todo, result):
    """Plan every Pi, make the keys of new roots ahead, then apply in order; a failing Pi fails alone."""
    plans, failed = [], []
    for item in todo:
        try:
            plans.append(roots.plan(item))
        except PI_ERRORS as exc:
            failed.append({'serial': item['serial'], 'hostname': item['hostname'], 'changed': False,
                           'action': 'failed', 'msg': str(exc)})
    if not module.check_mode and any(plan['action'] == 'clone' for plan in plans):
        roots.order_keys(plans)
    for plan in plans:
        try:
            result['pis'].append(roots.apply(plan))
        except (*PI_ERRORS, OSError) as exc:  # OSError: e.g. a Pi that filled its own root (ENOSPC)
            failed.append({'serial': plan['serial'], 'hostname': plan['item']['hostname'], 'changed': False,
                           'action': 'failed', 'msg': str(exc)})
    result['pis'].extend(failed)
    return failed


def main():
    cloud_init = dict(type='dict', options=dict(user_data=dict(type='dict'), instance=dict(type='str')))
    pi_options = dict(
        cloud_init=cloud_init,
        serial=dict(type='str', required=True),
        hostname=dict(type='str'),
        bakeform=dict(type='str'),
        state=dict(type='str', choices=['present', 'absent', 'rebuilt']),
        ssh_authorized_keys=dict(type='list', elements='str', no_log=False),
        boot_mount=dict(type='str', choices=['none', 'nfs']),
        nfs_server=dict(type='str'),
    )
    module = AnsibleModule(
        argument_spec=dict(
            serial=dict(type='str'),
            hostname=dict(type='str'),
            bakeform=dict(type='str'),
            store=dict(type='path', default='/srv/pifleet/bakeforms'),
            roots_dir=dict(type='path', default='/srv/pifleet/roots'),
            units_dir=dict(type='path', default=_loopfs.UNITS_DIR),
            state=dict(type='str', choices=['present', 'absent', 'rebuilt'], default='present'),
            ssh_authorized_keys=dict(type='list', elements='str', no_log=False),
            host_key_types=dict(type='list', elements='str', choices=['ed25519', 'ecdsa', 'rsa'],
                                default=list(_roots.DEFAULT_KEY_TYPES)),
            boot_mount=dict(type='str', choices=['none', 'nfs'], default='none'),
            nfs_server=dict(type='str'),
            clone_method=dict(type='str', choices=['auto', 'snapshot', 'reflink', 'copy'], default='auto'),
            cloud_init=cloud_init,
            pis=dict(type='list', elements='dict', options=pi_options),
            **LOCK_ARGS,
            **_space.SPACE_ARGS,
        ),
        mutually_exclusive=[('serial', 'pis')],
        required_one_of=[('serial', 'pis')],
        required_if=[('boot_mount', 'nfs', ('nfs_server',))],
        supports_check_mode=True,
    )
    base = PifleetModule(module, {'changed': False, 'pis': [], 'swept': [], 'filesystems': []}, 'pis')
    result, params, todo = base.result, module.params, items(base)
    if any(item['state'] != 'absent' for item in todo):
        problem = _space.on_root_filesystem({'roots_dir': params['roots_dir'], 'store': params['store']},
                                            params['allow_root_filesystem'])
        if problem:
            base.fail(problem)
    space_dirs = [params['roots_dir'], *params['space_dirs']]
    roots = PiRoots(ModuleHost(module), store=params['store'], roots_dir=params['roots_dir'],
                    units_dir=params['units_dir'], clone_method=params['clone_method'],
                    key_types=params['host_key_types'], space=_space.Ledger(space_dirs, params['overcommit']))
    lock = base.lock('pi_root')
    try:
        if not module.check_mode:
            result['swept'] = roots.prepare()
        failed = converge(module, roots, todo, result)
    except (*PI_ERRORS, OSError) as exc:
        failed = [{'msg': 'changing the Pi roots in %s failed: %s' % (params['roots_dir'], exc)}]
    finally:
        roots.close()
        if lock:
            lock.release()
    result['changed'] = roots.shared_changed or any(pi['changed'] for pi in result['pis'])
    after = _space.Ledger(space_dirs, params['overcommit']).scan()  # the space as the run left it
    after.annotate(result['pis'], lambda serial: _roots.Layout(roots.roots_dir, serial))
    result['filesystems'] = after.report()
    if module._diff:
        result['diff'] = roots.diffs
    if failed:
        base.fail('pi_root failed for %d Pi(s): %s' % (len(failed), '; '.join(
            '%s: %s' % (pi['serial'], pi['msg']) if 'serial' in pi else pi['msg'] for pi in failed)))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
