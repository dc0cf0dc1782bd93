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
    of a bakeform generation (see M(pifleet.netboot.bakeform)) and loop-mounted C(nosuid,nodev) at
    C(<roots_dir>/<serial>), the directory the Pi mounts over NFS. A file system per Pi means that no NFS file
    handle a Pi forges can name another Pi's files or the bakery's (see the collection's C(SECURITY.md)).
  - "A root is built from one generation of its bakeform (O(pis[].generation), by default the bakeform's current one)
    and keeps it: O(state=present) never moves a root to another generation. A root whose generation is not the
    current one is reported with C(behind=true); the C(upgrade) playbook moves it (O(state=rebuilt))."
  - "O(state=rebuilt) keeps the root it replaces as the Pi's previous root (C(<serial>.prev.img), a rename: no copy),
    and O(state=rolledback) swaps the two back. Each move is safe against a kill at any point."
  - "The bakery keeps each Pi's identity, out of its reach: C(<roots_dir>/<serial>.identity/) holds its SSH host keys
    and machine-id, made when its first root is made and given to every root built or rolled back for it.
    Nothing is taken from a root being replaced (a Pi is root there); a root made before the bakery kept
    identities gives its own once, well-formed parts only."
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
  - With O(host_ca), each root's host keys are signed by the fleet's host CA and the root gets the certificates and
    an sshd drop-in naming them, so an C(@cert-authority) line lets the controller trust every Pi from its first
    boot. A root whose C(sshd_config) does not include C(sshd_config.d/*.conf) gets none (C(host_certificate=false)).
  - "Every root with apt gets the kernel hold of its generation (an apt pin and a C(DPkg::Pre-Install-Pkgs) guard):
    the Pi boots the kernel its bakery serves, so the kernel packages in its root must stay those of its
    generation; a new kernel comes with a new generation (see the collection's C(docs/kernels.md))."
  - The marker C(<roots_dir>/<serial>.json), out of the Pi's reach, records the bakeform and generation, clone
    method, file system UUID, fixes, host keys, certificate and kernel packages. An existing root gets only the
    option-driven fixes re-applied in place.
  - "A Pi whose settings need what its generation's image lacks is refused alone, before anything is made, with the
    package to add and how: O(boot_mount=nfs) needs C(mount.nfs) (nfs-common), O(pis[].cloud_init) needs cloud-init,
    and an image whose boot files carry an initramfs needs one that can mount NFS. What an image has is the record
    M(pifleet.netboot.bakeform) keeps in each generation's manifest; an existing root that got the package since
    (installed on the Pi) is taken. A generation made before that record is not checked (a warning says so)."
  - A Pi whose root cannot be converged (for example one that made its C(/etc) a symlink) fails alone; the other
    Pis of the call still converge, and the module fails at the end naming each failed Pi (RV(failed_pis)).
    Every tool it runs (C(cp), C(mount), C(tune2fs), C(ssh-keygen)) is killed after O(command_timeout) seconds,
    failing only its Pi.
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
    details: Shows C(/etc/fstab), C(/etc/hostname) and C(/etc/hosts) of each root and its marker, with control
      characters a Pi may have written escaped.
requirements:
  - root on the bakery host, with loop devices and ext4 (in a container, pass C(/dev/loop-control) and C(/dev/loopN)).
  - coreutils C(cp), util-linux C(setpriv), C(mount), C(umount), e2fsprogs C(tune2fs), OpenSSH C(ssh-keygen).
  - O(roots_dir) on XFS, btrfs or ext4 (O(state=rolledback) exchanges two files with C(renameat2)).
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
  generation:
    description:
      - The generation of O(bakeform) a new root is built from (O(state=rebuilt), or a Pi without a root). Defaults
        to the bakeform's current generation. An existing root keeps its own with O(state=present).
    type: int
  identity:
    description:
      - For a root pi_root builds or rolls back. V(keep) gives it the identity the bakery keeps for the Pi (SSH host
        keys, machine-id); V(fresh) makes new ones and keeps those instead (a Pi that changes hands).
    type: str
    choices: [keep, fresh]
    default: keep
  keep_previous:
    description:
      - With O(state=rebuilt), keep the root being replaced as the Pi's previous root (an older previous root goes).
        With V(false) the replaced root goes and the previous root stays as it was.
    type: bool
    default: true
  principals:
    description:
      - Names and addresses the Pi's host certificate is valid for (with O(host_ca)). Defaults to its host name.
    type: list
    elements: str
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
      - V(present) clones the root if missing, mounts it, and re-applies the option-driven fixes in place. It never
        changes the generation of an existing root.
      - V(rebuilt) always clones afresh from O(generation) (default the current one) and swaps the new root in, like
        V(restarted) for a service; the replaced root is kept as the previous one (O(keep_previous)). The Pi keeps
        its identity (O(identity)). An NFS server still serving the old root must re-read its export
        (M(pifleet.netboot.nfs_export) does so).
      - V(rolledback) swaps the current and the previous root (the Pi's identity and today's fixes given to it); a
        Pi without a previous root fails alone. Once rolled back, running it again changes nothing.
      - V(absent) unmounts and removes the root, the previous root, their markers, the mount unit and the identity
        the bakery kept for the Pi.
    type: str
    choices: [present, absent, rebuilt, rolledback]
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
  host_ca:
    description:
      - Path on the bakery of the fleet's SSH host CA private key (the fleet role keeps it at
        C(/var/lib/pifleet/ssh/host_ca)). When set, each root gets C(/etc/ssh/ssh_host_<type>_key-cert.pub) for its
        host keys (signed with C(ssh-keygen -s), valid for O(principals), for ever) and the drop-in
        C(/etc/ssh/sshd_config.d/pifleet-host-certificate.conf); re-signed only when the keys, names or CA change.
        When unset, certificates pi_root wrote are removed.
    type: path
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
          - It may hold secrets (passwords, tokens), so it is C(no_log). Give it as JSON text
            (C({{ data | to_json }})), as the fleet role does. The module's arguments then keep that text, which
            Ansible hides whole, also in the C(invocation) that C(-vvv) prints, and the rest of the result stays
            readable. A mapping is taken too, and Ansible then hides each of its values wherever it appears in the
            result.
        type: raw
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
      generation:
        description: As O(generation).
        type: int
      identity:
        description: As O(identity).
        type: str
        choices: [keep, fresh]
      keep_previous:
        description: As O(keep_previous).
        type: bool
      principals:
        description: As O(principals).
        type: list
        elements: str
      state:
        description: As O(state).
        type: str
        choices: [present, absent, rebuilt, rolledback]
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
            type: raw
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

- name: Move a Pi to generation 4 of its bakeform, keeping its current root for a rollback and its SSH identity
  pifleet.netboot.pi_root:
    serial: 3a4b5c6d
    hostname: kitchen
    bakeform: bookworm-lite
    generation: 4
    state: rebuilt
    host_ca: /var/lib/pifleet/ssh/host_ca
    principals: [kitchen, kitchen.lab.example, 10.0.0.51]

- name: Roll it back to the root it had before
  pifleet.netboot.pi_root:
    serial: 3a4b5c6d
    hostname: kitchen
    bakeform: bookworm-lite
    state: rolledback
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
      description: What was done, V(cloned), V(fixed), V(mounted), V(unchanged), V(rebuilt), V(rolledback), V(removed)
        or V(failed).
      type: str
      returned: always
      sample: cloned
    bakeform: {description: The bakeform the root is built from., type: str, returned: unless failed, sample: bookworm-lite}
    generation:
      description: The generation the root is built from; null for a root made from content no generation holds.
      type: int
      returned: unless failed
      sample: 3
    label: {description: The generation as C(<bakeform>@<generation>)., type: str, returned: unless failed, sample: bookworm-lite@3}
    current_generation:
      description: The current generation of the Pi's O(bakeform) (the one new roots and the upgrade playbook get).
      type: int
      returned: unless failed
      sample: 4
    behind:
      description: True when the root is not built from the current generation of the Pi's O(bakeform).
      type: bool
      returned: unless failed
    previous:
      description: What the previous root (kept for a rollback) is built from, C(bakeform), C(generation) and C(label);
        null when there is none.
      type: dict
      returned: unless failed
      sample: {bakeform: bookworm-lite, generation: 2, label: bookworm-lite@2}
    host_certificate:
      description: Whether the root holds a host certificate of O(host_ca) (false when its sshd cannot include the
        drop-in, so known_hosts needs its plain host keys).
      type: bool
      returned: unless failed
    boot_export:
      description: The directory to export to the Pi for its boot files (its generation's C(boot-nfs)).
      type: str
      returned: when O(boot_mount=nfs)
      sample: /srv/pifleet/bakeforms/bookworm-lite/generations/3/boot-nfs
    clone_method:
      description: How the root was cloned (V(reflink) or V(copy)); null when unknown.
      type: str
      returned: always
      sample: reflink
    host_keys:
      description:
        - The public SSH host keys the root was given, C(<type> <base64>) each, to recognise the Pi when it answers
          (the reimage playbook waits for them). The same across rebuilds and rollbacks with O(identity=keep).
      type: list
      elements: str
      returned: unless failed
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
failed_pis:
  description: The Pis whose roots could not be converged (every other Pi was), each with why.
  returned: always
  type: list
  elements: dict
  contains:
    serial: {description: Serial of the Pi (8 hex digits)., type: str}
    hostname: {description: Its host name., type: str}
    msg: {description: Why it failed., type: str}
  sample:
    - serial: 3a4b5c6d
      hostname: kitchen
      msg: "the root of Pi 3a4b5c6d: etc is a symbolic link ..."
host_ca_public_key:
  description:
    - The public key of O(host_ca) (the content of C(<host_ca>.pub)), for the controller's known_hosts (the fleet role
      reads it from here rather than in a call of its own); null without O(host_ca) or when that file is not there.
  returned: always
  type: str
  sample: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ7... pifleet host CA of bakery1
kernels:
  description: The kernel packages (C(name=version)) each generation used by the roots of this call holds, by label;
    what the kernel hold keeps in those roots.
  returned: always
  type: dict
  sample: {bookworm-lite@3: [linux-image-6.1.0-50-arm64=6.1.158-1, linux-image-arm64=6.1.158-1]}
planned_space:
  description:
    - What this call's new and rebuilt roots book at worst on each data file system, as planned before any is made
      (the same in check mode); only the file systems they book on. Sizes in bytes. The fleet role's pre-flight line
      is made from it (P(pifleet.netboot.fleet_preflight#filter)).
  returned: always
  type: list
  elements: dict
  contains:
    mount: {description: Its mount point., type: str}
    fstype: {description: Its file system type., type: str}
    reflink: {description: Whether the file system shares extents (reflink clones take almost no space)., type: bool}
    size: {description: Bytes in use plus bytes available., type: int}
    free: {description: Bytes available now., type: int}
    committed: {description: The worst case before this call (in use plus what every Pi image can still take)., type: int}
    claimed: {description: What this call's new images may take at worst (their full sizes)., type: int}
    limit: {description: What the worst case may reach (see RV(filesystems))., type: int}
  sample:
    - {mount: /srv/pifleet, fstype: xfs, reflink: true, size: 1099511627776, free: 879609302221,
       committed: 1030792151040, claimed: 8589934592, limit: 1088516511498}
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


import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError
from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import check_host_name, normalise_serial
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import (
    COMMAND_ARGS,
    LOCK_ARGS,
    ModuleHost,
    PifleetModule,
    failed_pi,
    failed_pis_message,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import hostcert as _hostcert
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import identity as _identity
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import space as _space
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.rootwork import PiRoots

ITEM_KEYS = ('serial', 'hostname', 'bakeform', 'generation', 'identity', 'keep_previous', 'principals', 'state',
             'ssh_authorized_keys', 'boot_mount', 'nfs_server', 'cloud_init')
PI_ERRORS = (_roots.RootError, _loopfs.LoopError, ConfinedError, _identity.IdentityError, _hostcert.CertError)


def user_data(base, item):
    """The item's cloud-init user data as a mapping, in a cloud_init of its own: the module's arguments keep the JSON
    text they were given, which no_log hides whole (the invocation shows them at -vvv). No message quotes it."""
    cloud_init = item.get('cloud_init') or {}
    data = cloud_init.get('user_data')
    if isinstance(data, str):
        try:
            data = json.loads(data) if data.strip() else None
        except ValueError:
            base.problem('cloud_init.user_data for Pi %s is not JSON text of a mapping (give a mapping, or '
                         '"{{ data | to_json }}")' % item['serial'])
            return
    if data is not None and not isinstance(data, dict):
        base.problem('cloud_init.user_data for Pi %s must be a cloud-config mapping, not %s'
                     % (item['serial'], type(data).__name__))
        return
    if cloud_init:
        item['cloud_init'] = dict(cloud_init, user_data=data)


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
        user_data(base, item)
        try:
            check_host_name(item['hostname'])
        except ValueError as exc:
            base.problem('%s for Pi %s' % (exc, item['serial']))
        if item['state'] != 'absent' and not item['bakeform']:
            base.problem('no bakeform for Pi %s: set bakeform (at the top level or in its pis entry)' % item['serial'])
        if item['generation'] is not None and item['generation'] < 1:
            base.problem('generation %s for Pi %s is not a generation number (1, 2, 3 ...)'
                         % (item['generation'], item['serial']))
        if item['principals'] is not None:
            for problem in _hostcert.check_principals(item['principals'], 'Pi %s' % item['serial']):
                base.problem(problem)
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
    if not module.check_mode:
        roots.order_keys(plans)
    for plan in plans:
        try:
            result['pis'].append(roots.apply(plan))
        except (*PI_ERRORS, OSError) as exc:  # OSError: e.g. a Pi that filled its own root (ENOSPC)
            failed.append({'serial': plan['serial'], 'hostname': plan['item']['hostname'], 'changed': False,
                           'action': 'failed', 'msg': str(exc)})
    result['pis'].extend(failed)
    result['failed_pis'] = [{'serial': pi['serial'], 'hostname': pi['hostname'], 'msg': pi['msg']} for pi in failed]
    return failed


def main():
    # no_log: user data may carry passwords and tokens (passed as JSON text, only that text is hidden).
    # raw, not dict: Ansible would turn JSON text into a mapping in the module's arguments, and the invocation -vvv
    # prints would show each value of it (no_log hid only the text it was given).
    cloud_init = dict(type='dict', options=dict(user_data=dict(type='raw', no_log=True), instance=dict(type='str')))
    pi_options = dict(
        cloud_init=cloud_init,
        serial=dict(type='str', required=True),
        hostname=dict(type='str'),
        bakeform=dict(type='str'),
        generation=dict(type='int'),
        identity=dict(type='str', choices=['keep', 'fresh']),
        keep_previous=dict(type='bool'),
        principals=dict(type='list', elements='str'),
        state=dict(type='str', choices=['present', 'absent', 'rebuilt', 'rolledback']),
        ssh_authorized_keys=dict(type='list', elements='str', no_log=False),
        boot_mount=dict(type='str', choices=['none', 'nfs']),
        nfs_server=dict(type='str'),
    )
    module = AnsibleModule(
        argument_spec=dict(
            serial=dict(type='str'),
            hostname=dict(type='str'),
            bakeform=dict(type='str'),
            generation=dict(type='int'),
            identity=dict(type='str', choices=['keep', 'fresh'], default='keep'),
            keep_previous=dict(type='bool', default=True),
            principals=dict(type='list', elements='str'),
            host_ca=dict(type='path'),
            store=dict(type='path', default='/srv/pifleet/bakeforms'),
            roots_dir=dict(type='path', default='/srv/pifleet/roots'),
            units_dir=dict(type='path', default=_loopfs.UNITS_DIR),
            state=dict(type='str', choices=['present', 'absent', 'rebuilt', 'rolledback'], default='present'),
            ssh_authorized_keys=dict(type='list', elements='str', no_log=False),
            host_key_types=dict(type='list', elements='str', choices=['ed25519', 'ecdsa', 'rsa'],
                                default=list(_identity.DEFAULT_KEY_TYPES)),
            boot_mount=dict(type='str', choices=['none', 'nfs'], default='none'),
            nfs_server=dict(type='str'),
            clone_method=dict(type='str', choices=['auto', 'snapshot', 'reflink', 'copy'], default='auto'),
            cloud_init=cloud_init,
            pis=dict(type='list', elements='dict', options=pi_options),
            **LOCK_ARGS,
            **COMMAND_ARGS,
            **_space.SPACE_ARGS,
        ),
        mutually_exclusive=[('serial', 'pis')],
        required_one_of=[('serial', 'pis')],
        required_if=[('boot_mount', 'nfs', ('nfs_server',))],
        supports_check_mode=True,
    )
    base = PifleetModule(module, {'changed': False, 'pis': [], 'failed_pis': [], 'kernels': {}, 'swept': [],
                                  'filesystems': [], 'planned_space': [], 'host_ca_public_key': None}, 'pis')
    result, params, todo = base.result, module.params, items(base)
    if any(item['state'] != 'absent' for item in todo):
        problem = _space.on_root_filesystem({'roots_dir': params['roots_dir'], 'store': params['store']},
                                            params['allow_root_filesystem'])
        if problem:
            base.fail(problem)
    space_dirs = [params['roots_dir'], *params['space_dirs']]
    roots = PiRoots(ModuleHost(module), store=params['store'], roots_dir=params['roots_dir'],
                    units_dir=params['units_dir'], clone_method=params['clone_method'],
                    key_types=params['host_key_types'], host_ca=params['host_ca'],
                    space=_space.Ledger(space_dirs, params['overcommit']))
    if roots.parts.ca is not None:
        try:
            roots.parts.ca.fingerprint()  # a CA that cannot sign is the bakery's problem, not one Pi's
            result['host_ca_public_key'] = roots.parts.ca.public_key()
        except _hostcert.CertError as exc:
            base.fail(str(exc), changed=False)
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
    result['kernels'] = roots.kernels
    after = _space.Ledger(space_dirs, params['overcommit']).scan()  # the space as the run left it
    after.annotate(result['pis'], lambda serial: _roots.Layout(roots.roots_dir, serial))
    result['filesystems'] = after.report()
    result['planned_space'] = roots.space.planned()
    if module._diff:
        result['diff'] = roots.diffs
    if failed and 'serial' not in failed[0]:  # not about one Pi: the roots directory itself
        base.fail(failed[0]['msg'])
    result['failed_pis'] = [failed_pi(pi['serial'], pi['hostname'], pi['msg']) for pi in failed]
    if failed:
        base.fail(failed_pis_message('pi_root', result['failed_pis']))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
