# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Pi's own cloud-init NoCloud seed, as pure functions (no AnsibleModule, no PyYAML needed to render).

Raspberry Pi OS based on Debian 13 provisions itself with cloud-init from NoCloud files on its boot
partition. A Pi on an NFS root gets its seed inside its root instead (``SEED_DIR``), made from the
inventory: ``meta-data`` with an instance-id from its serial (a new one only when the inventory asks,
with ``pi_cloud_init_instance``), ``user-data`` with its host name and root's authorized keys merged
with the optional ``pi_cloud_init`` cloud-config (nothing to grow or resize on an NFS root), and
``network-config`` that turns cloud-init's networking off, so it never reconfigures the NIC the root
is mounted over (``network-config=disabled`` on the kernel command line, from _bootfiles, is what
wins over the initramfs' ``ip=dhcp``; this file is the seed's own word for the same).

The files are YAML written as JSON (a subset of YAML that cloud-init's loader reads), so rendering
needs only the standard library; ``load_user_data`` parses YAML text on the controller.
"""

from __future__ import annotations

import json
import re

try:
    import yaml
except ImportError:  # rendering needs no YAML library; only parsing the inventory's text does (controller)
    yaml = None

from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import is_host_label

SEED_DIR = 'var/lib/cloud/seed/nocloud'
MAX_USER_DATA = 64 * 1024
_INSTANCE = re.compile(r'[A-Za-z0-9._-]{1,64}')
# Keys the seed itself sets, or that would undo what the collection did to the root: the identity
# (host name), root's keys, the host keys pi_root made, and the network the root lives on.
OWNED = {
    'hostname': 'the host name comes from the inventory (pi_hostname or the inventory name)',
    'fqdn': 'the host name comes from the inventory (pi_hostname or the inventory name)',
    'preserve_hostname': 'the seed sets the inventory host name',
    'disable_root': "root's login by key is how the collection reaches a Pi; set root's keys with "
                    'pi_ssh_authorized_keys',
    'ssh_deletekeys': 'each Pi keeps the SSH host keys pi_root made for it (its known host key)',
    'ssh_keys': 'each Pi keeps the SSH host keys pi_root made for it (its known host key)',
    'ssh_genkeytypes': 'each Pi keeps the SSH host keys pi_root made for it (its known host key); a key cloud-init '
                       'made on the Pi would be one the bakery never saw nor signed',
    'network': 'the root is mounted over the Pi\'s NIC: cloud-init networking stays off (network-config)',
    'growpart': 'the root is an NFS export: there is no partition to grow',
    'resize_rootfs': 'the root is an NFS export: there is no file system to resize',
}
NETWORK_CONFIG = (
    '# pifleet.netboot: the root file system is mounted over NFS through this Pi\'s NIC, configured by the\n'
    '# kernel (ip=dhcp); cloud-init must never reconfigure it.\n'
    'network:\n'
    '  config: disabled\n')


class CloudInitError(ValueError):
    """A Pi's cloud-init settings cannot be used; the message says what and how to fix it."""


def load_user_data(value, who):
    """``pi_cloud_init`` as given in the inventory: a mapping, or YAML text of one (``#cloud-config``
    first line optional). Returns a dict; raises CloudInitError naming ``who``."""
    if value in (None, ''):
        return {}
    if isinstance(value, (bytes, str)):
        text = value.decode('utf-8', errors='replace') if isinstance(value, bytes) else value
        if len(text) > MAX_USER_DATA:
            raise CloudInitError('%s: pi_cloud_init is %d bytes long; keep it under %d (put large files on the '
                                 'Pi some other way)' % (who, len(text), MAX_USER_DATA))
        if yaml is None:
            raise CloudInitError('%s: pi_cloud_init is YAML text, and PyYAML is not installed here to read it; '
                                 'give it as a mapping' % who)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CloudInitError('%s: pi_cloud_init is not valid YAML: %s' % (
                who, ' '.join(str(exc).split()))) from None
        if value is None:
            return {}
    if not isinstance(value, dict):
        raise CloudInitError('%s: pi_cloud_init must be a cloud-config mapping (keys such as packages, runcmd, '
                             'write_files), not %s' % (who, type(value).__name__))
    return value


def check_user_data(data, who):
    """Problems of a cloud-config mapping, as a list of messages (empty: usable)."""
    problems = []
    for key in data:
        if not isinstance(key, str):
            problems.append('%s: pi_cloud_init key %r is not a string' % (who, key))
        elif key in OWNED:
            problems.append('%s: pi_cloud_init sets %s, which the collection owns: %s; remove it' % (
                who, key, OWNED[key]))
    users = data.get('users')
    if users is not None:
        if not isinstance(users, list):
            problems.append('%s: pi_cloud_init users must be a list' % who)
        elif any(user == 'root' or (isinstance(user, dict) and user.get('name') == 'root') for user in users):
            problems.append("%s: pi_cloud_init lists the user root; root's keys come from pi_ssh_authorized_keys "
                            '(or the fleet default), so leave root out' % who)
    try:
        text = json.dumps(data, sort_keys=True)
    except (TypeError, ValueError) as exc:
        problems.append('%s: pi_cloud_init holds a value cloud-config cannot carry (%s); quote dates and binary '
                        'values as strings' % (who, exc))
    else:
        if len(text) > MAX_USER_DATA:
            problems.append('%s: pi_cloud_init renders to %d bytes; keep it under %d' % (who, len(text), MAX_USER_DATA))
    return problems


def instance_id(serial, instance=None):
    """``pifleet-<serial>``, or ``pifleet-<serial>-<instance>`` when the inventory asks for a new one."""
    if instance in (None, ''):
        return 'pifleet-%s' % serial
    text = str(instance).strip()
    if not _INSTANCE.fullmatch(text):
        raise CloudInitError('pi_cloud_init_instance %r is not valid: use up to 64 letters, digits, ".", "_" or '
                             '"-" (for example a number you raise to have cloud-init run its first boot again)'
                             % instance)
    return 'pifleet-%s-%s' % (serial, text)


def render_seed(serial, hostname, authorized_keys=None, user_data=None, instance=None):
    """The seed files, ``{path relative to the root: text}``.

    ``authorized_keys``: root's keys (None: not managed, root's entry is left out); ``user_data``: the
    checked ``pi_cloud_init`` mapping; ``instance``: ``pi_cloud_init_instance``.
    """
    if not is_host_label(hostname or ''):
        raise CloudInitError('host name %r is not a valid RFC 1123 label' % hostname)
    user_data = dict(user_data or {})
    problems = check_user_data(user_data, hostname)
    if problems:
        raise CloudInitError('; '.join(problems))
    # ssh_genkeytypes empty: cloud-init's default makes every missing type (an RSA key, where pi_root made ed25519
    # and ecdsa): a host key the bakery never saw nor signed, and seconds of a first boot.
    config = {'hostname': hostname, 'preserve_hostname': False, 'disable_root': False, 'ssh_deletekeys': False,
              'ssh_genkeytypes': [], 'growpart': {'mode': 'off'}, 'resize_rootfs': False}
    users = []
    if authorized_keys is not None:
        users.append({'name': 'root', 'ssh_authorized_keys': [k.strip() for k in authorized_keys if k and k.strip()]})
    users += list(user_data.pop('users', None) or [])
    if users:
        config['users'] = users
    config.update(user_data)
    meta = {'instance-id': instance_id(serial, instance), 'local-hostname': hostname}
    return {
        '%s/meta-data' % SEED_DIR: json.dumps(meta, indent=2, sort_keys=True) + '\n',
        '%s/user-data' % SEED_DIR: '#cloud-config\n' + json.dumps(config, indent=2, sort_keys=True) + '\n',
        '%s/network-config' % SEED_DIR: NETWORK_CONFIG,
    }
