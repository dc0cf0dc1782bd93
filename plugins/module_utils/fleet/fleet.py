# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet plan: inventory variables of every Pi, validated, turned into module arguments.

``plan()`` is pure: it takes each Pi's ``pi_*`` variables and the fleet settings and returns the
lists the fleet role hands to ``pi_root``, ``pi_disk``, ``nfs_export`` and ``pi_boot`` (one call
each). Every problem of the whole inventory is collected and raised together as a ``PlanError``,
so a user fixes them in one pass.
"""

from __future__ import annotations

import ipaddress
import json

from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import (
    is_host_label,
    is_prefix_str,
    normalise_mac,
    normalise_serial,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import checks
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import sshtrust as _sshtrust
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import disks as _disks
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.cloudinit import (
    CloudInitError,
    check_user_data,
    instance_id,
    load_user_data,
)

MODELS = (3, 4, 5)
ROOT_OPTIONS = ['rw', 'sync', 'no_subtree_check', 'no_root_squash']
# What the plan's ``pis`` keep of each validated Pi: what the fleet role's later steps read (failures and kept Pis,
# the model check, known_hosts, the boot exports, reimage's names); the rest is in the modules' lists already. The
# plan is a fact: ansible-core templates each of its values on every task that reads it and when it is set (about a
# second of every 1000-Pi run for the whole Pis), and -v prints it (the Pis' user data stays out of it).
PLANNED_PI_KEYS = ('name', 'serial', 'model', 'bakeform', 'ip', 'principals')


class PlanError(Exception):
    def __init__(self, problems):
        self.problems = problems
        shown = problems[:40]
        more = '' if len(problems) <= 40 else '\n  ... and %d more' % (len(problems) - 40)
        super().__init__('the fleet inventory has %d problem(s):\n  %s%s' % (len(problems), '\n  '.join(shown), more))


def _model(value, name, problems):
    if value in (None, ''):
        return None
    try:
        model = int(str(value).strip())
    except ValueError:
        model = None
    if model not in MODELS:
        problems.append('%s: pi_model %r is not a Pi model this collection boots; use 3, 4 or 5' % (name, value))
        return None
    return model


def _ip(value, name, problems):
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        problems.append('%s: pi_ip %r is not an IP address' % (name, value))
        return None


def _prefix(mode, pi, problems):
    serial, mac, model, name = pi['serial'], pi['mac'], pi['model'], pi['name']
    mode = 'serial' if mode in (None, '') else str(mode)
    if mode == 'serial':
        if not serial and not pi.get('serial_given'):
            problems.append('%s: pi_tftp_prefix is serial but pi_serial is not set; add pi_serial or set '
                            'pi_tftp_prefix: mac' % name)
        return serial
    if model == 3:
        problems.append('%s: a Pi 3 always asks for <serial>/ files (its ROM has no TFTP_PREFIX); drop '
                        'pi_tftp_prefix: %s' % (name, mode))
        return serial
    if mode == 'mac':
        if not mac and not pi.get('mac_given'):
            problems.append('%s: pi_tftp_prefix is mac but pi_mac is not set' % name)
        return mac
    if not is_prefix_str(mode) or mode == 'serial':
        problems.append('%s: pi_tftp_prefix %r must be serial, mac or a TFTP_PREFIX_STR of at most 32 letters, '
                        'digits, dots, dashes or underscores' % (name, mode))
        return None
    return mode


def _lines(value):
    if value in (None, ''):
        return []
    if isinstance(value, str):
        return value.splitlines()
    return [str(line) for line in value]


def _duplicates(pis, key, label, problems):
    seen = {}
    for pi in pis:
        if pi.get(key):
            seen.setdefault(pi[key], []).append(pi['name'])
    for value, names in sorted(seen.items()):
        if len(names) > 1:
            problems.append('%s %s is used by %s; each Pi needs its own' % (label, value, ', '.join(sorted(names))))


def _identity(name, hv, problems, numbers=()):
    serial = mac = None
    if hv.get('pi_serial') not in (None, '') and 'pi_serial' not in numbers:
        try:
            serial = normalise_serial(hv['pi_serial'])
        except ValueError as exc:
            problems.append('%s: %s' % (name, exc))
    if hv.get('pi_mac') not in (None, '') and 'pi_mac' not in numbers:
        try:
            mac = normalise_mac(hv['pi_mac'])
        except ValueError as exc:
            problems.append('%s: pi_mac: %s' % (name, exc))
    if not serial and not mac and hv.get('pi_serial') in (None, '') and hv.get('pi_mac') in (None, ''):
        problems.append('%s: neither pi_serial nor pi_mac is set; the bakery cannot tell this Pi from others '
                        '(the serial is on the board label and in /proc/cpuinfo; run the discover playbook '
                        'to see the prefixes of Pis that tried to boot)' % name)
    elif not serial and hv.get('pi_serial') in (None, ''):
        problems.append('%s: pi_serial is not set; roots and disks are kept per serial, so even a Pi booting '
                        'by MAC prefix needs its serial (board label or /proc/cpuinfo)' % name)
    return serial, mac


def _bakeform(name, hv, model, settings, problems):
    bakeform = hv.get('pi_bakeform') or settings.get('default_bakeform')
    declared = settings.get('bakeforms') or {}
    if not bakeform:
        problems.append('%s: pi_bakeform is not set and there is no default; set pi_bakeform to one of: %s'
                        % (name, ', '.join(sorted(declared)) or '(no bakeforms declared in pifleet_bakeforms)'))
    elif bakeform not in declared:
        problems.append('%s: pi_bakeform %r is not declared in pifleet_bakeforms (declared: %s)'
                        % (name, bakeform, ', '.join(sorted(declared)) or 'none'))
    else:
        models = declared[bakeform]
        if model and models is not None and model not in models:
            problems.append('%s is a Pi %d but bakeform %s has boot files for Pi %s only; pick a bakeform that '
                            'boots it' % (name, model, bakeform, ', '.join(str(m) for m in models) or 'none'))
    return bakeform


def one_pi(name, hv, settings, problems):
    """Validate one Pi's variables (``hv``: its ``pi_*`` values) into a normalised dict."""
    pi = {'name': name}
    numbers = checks.numbers(name, hv, problems)  # reported: no other message about the same value
    pi['serial'], pi['mac'] = _identity(name, hv, problems, numbers)
    pi['serial_given'] = hv.get('pi_serial') not in (None, '')
    pi['mac_given'] = hv.get('pi_mac') not in (None, '')
    pi['model'] = _model(hv.get('pi_model'), name, problems)
    pi['prefix'] = _prefix(hv.get('pi_tftp_prefix'), pi, problems) if 'pi_tftp_prefix' not in numbers else None
    hostname = str(hv.get('pi_hostname') or name)
    if not is_host_label(hostname) and 'pi_hostname' not in numbers:
        problems.append('%s: host name %r is not a valid RFC 1123 label (letters, digits, dashes; at most 63); '
                        'set pi_hostname' % (name, hostname))
    pi['hostname'] = hostname
    pi['ip'] = _ip(hv['pi_ip'], name, problems) if hv.get('pi_ip') not in (None, '') else None
    if not pi['ip'] and not settings.get('export_scope'):
        problems.append('%s: pi_ip is not set, so its root cannot be exported to it alone; declare pi_ip and '
                        'reserve that address for its MAC on the router, or use the dnsmasq role in '
                        'authoritative mode with a reservation (or, knowingly, widen every such export with '
                        'pifleet_export_scope: <network CIDR>)' % name)
    pi['bakeform'] = _bakeform(name, hv, pi['model'], settings, problems)
    pi['disks'] = checks.disks(name, hv.get('pi_disks'), problems)
    pi['cmdline_extra'] = str(hv.get('pi_cmdline_extra') or '')
    pi['config_txt'] = _lines(hv.get('pi_config_txt'))
    keys = hv.get('pi_ssh_authorized_keys')
    pi['ssh_authorized_keys'] = _lines(keys) if keys is not None else settings.get('ssh_authorized_keys')
    pi['cloud_init'] = _cloud_init(name, pi['serial'], hv, problems)
    # What its SSH host certificate is valid for: every name the controller may reach it by.
    pi['principals'] = _sshtrust.principals(name, hostname, pi['ip'], hv.get('ansible_host'))
    return pi


def _cloud_init(name, serial, hv, problems):
    """The Pi's cloud-init seed settings for pi_root (None: the defaults, a seed from its identity alone)."""
    user_data, instance = hv.get('pi_cloud_init'), hv.get('pi_cloud_init_instance')
    if user_data in (None, '') and instance in (None, ''):
        return None
    found = []
    try:
        user_data = load_user_data(user_data, name)
        found += check_user_data(user_data, name)
    except CloudInitError as exc:
        found.append(str(exc))
    try:
        instance_id(serial, instance)
    except CloudInitError as exc:
        found.append('%s: %s' % (name, exc))
    problems.extend(found)
    return None if found else {'user_data': user_data, 'instance': None if instance in (None, '') else str(instance)}


def plan(pis_vars, settings, problems=None):
    """``pis_vars``: {inventory name: {pi_* variables}}; ``settings``: the fleet role's settings; ``problems``:
    those found before (the declared bakeforms, unknown variables), raised with the plan's own.

    settings keys: bakeforms ({name: [models] or None}), default_bakeform, export_scope, roots_dir,
    disks_dir, nfs_server (the bakery address the Pis mount from), ssh_authorized_keys, boot_mount
    (none or nfs: the Pis mount their bakeform's boot files) and store (the bakeform store).
    """
    problems = list(problems or [])
    pis = [one_pi(name, pis_vars[name], settings, problems) for name in sorted(pis_vars)]
    for key, label in (('serial', 'serial'), ('mac', 'MAC'), ('ip', 'address'), ('hostname', 'host name'),
                       ('prefix', 'TFTP prefix')):
        _duplicates(pis, key, label, problems)
    if pis and not settings.get('nfs_server'):
        problems.append('the bakery address the Pis mount their roots from is unknown; set pifleet_nfs_server')
    if problems:
        raise PlanError(problems)
    return build(pis, settings)


def build(pis, settings):
    roots_dir, disks_dir = settings['roots_dir'], settings['disks_dir']
    server = settings['nfs_server']
    scope = settings.get('export_scope')
    roots, disks, exports, boot = [], [], [], []
    for pi in pis:
        clients = [pi['ip']] if pi['ip'] else [scope]
        root = _roots.Layout(roots_dir, pi['serial']).point  # the export: its mount point
        item = {'serial': pi['serial'], 'hostname': pi['hostname'], 'bakeform': pi['bakeform'],
                'principals': pi['principals']}
        if pi['ssh_authorized_keys'] is not None:
            item['ssh_authorized_keys'] = pi['ssh_authorized_keys']
        if pi['cloud_init'] is not None:
            item['cloud_init'] = {'instance': pi['cloud_init']['instance']}
            if pi['cloud_init']['user_data'] is not None:
                # The user data may hold secrets: it stays out of the plan (a fact any -v prints); the roots
                # step reads it from the inventory into pi_root's no_log option (fleet_user_data).
                item['cloud_init_from'] = pi['name']
        roots.append(item)
        # Each export and boot item names its Pi, so a Pi that fails one is named (failed_pis) and kept as it was.
        mine = {'serial': pi['serial'], 'hostname': pi['hostname']}
        exports.append(dict(mine, path=root, clients=clients, options=list(ROOT_OPTIONS)))
        disks.extend(dict(disk, serial=pi['serial']) for disk in pi['disks'])
        if pi['disks']:  # one file system per Pi holds all its disks: one export
            exports.append(dict(mine, path=_disks.Layout(disks_dir, pi['serial']).point, clients=clients,
                                options=list(ROOT_OPTIONS)))
        boot.append({'name': pi['name'], 'prefix': pi['prefix'], 'serial': pi['serial'], 'bakeform': pi['bakeform'],
                     'model': pi['model'], 'nfsroot': '%s:%s' % (server, root), 'cmdline_extra': pi['cmdline_extra'],
                     'config_txt': pi['config_txt']})
    # With boot_mount nfs each generation's boot-nfs is exported to the Pis whose root uses it: known only once
    # pi_root has run (generations.boot_exports, from its result), so not part of this plan.
    return {'pis': [{key: pi[key] for key in PLANNED_PI_KEYS} for pi in pis], 'roots': roots, 'disks': disks,
            'exports': exports, 'boot': boot, 'serials': [pi['serial'] for pi in pis], 'export_scope': scope or None}


def unbooted(pis, models):
    """Inventory names of the planned ``pis`` whose model their bakeform does not boot, by ``models`` (bakeform name:
    the models its manifest names; a bakeform not in it, or with none, is not judged)."""
    models = models or {}
    found = []
    for pi in pis or []:
        booted = models.get(pi.get('bakeform'))
        if pi.get('model') and booted is not None and int(pi['model']) not in {int(model) for model in booted}:
            found.append(pi['name'])
    return found


def user_data(roots, pis_vars):
    """``roots`` items (of a plan) ready for pi_root: the user data of each that has some read from its Pi's
    variables (``pis_vars``: {inventory name: {pi_* variables}}) as JSON text, which pi_root's ``no_log`` option
    then hides whole (a mapping would have each of its values hidden wherever it appears in the result)."""
    ready = []
    for planned in roots:
        name = planned.get('cloud_init_from')
        item = {key: value for key, value in planned.items() if key != 'cloud_init_from'}
        if name is not None:
            data = load_user_data(pis_vars[name].get('pi_cloud_init'), name)
            item['cloud_init'] = dict(item.get('cloud_init') or {}, user_data=json.dumps(data, sort_keys=True))
        ready.append(item)
    return ready
