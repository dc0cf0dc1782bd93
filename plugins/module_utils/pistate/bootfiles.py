# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-Pi boot files and the TFTP hook's fleet map, as pure functions (no AnsibleModule here).

Render a Pi's ``cmdline.txt`` (NFS root, docs/netboot.md §6) and ``config.txt`` from its bakeform's,
build the fleet map the hook reads, and plan the file
writes and removals of one Pi folder from what is there and what is wanted. TFTP prefixes (docs/netboot.md §4)
and Pi names are checked by ``identity``.
"""

from __future__ import annotations

import json
import re

MARKER = '.pifleet-boot.json'
CMDLINE = 'cmdline.txt'
CONFIG = 'config.txt'
MANAGED = (CMDLINE, CONFIG, MARKER)
MAP_VERSION = 1
DEFAULT_CONSOLES = ('console=serial0,115200', 'console=tty1')
MODEL_FILES = {3: 'start.elf', 4: 'start4.elf', 5: 'kernel_2712.img'}

_VERS = re.compile(r'(?:nfs)?vers=(\S*)')

# Tokens that belong to an SD-card root or a first boot, or that we set ourselves for the NFS root.
_DROP_KEYS = frozenset((
    'root', 'rootfstype', 'init', 'fsck.repair', 'resize', 'splash', 'nfsroot', 'ip', 'rw', 'ro', 'rootwait',
    # Raspberry Pi Imager's one-shot customisation: the script edits cmdline.txt on the SD card to
    # stop itself, which it cannot do to files served by TFTP, so it would run on every boot.
    'systemd.run', 'systemd.run_success_action', 'systemd.run_failure_action',
    # cloud-init's network config: ours turns it off (a bakeform's could reconfigure the root's NIC).
    'network-config',
))


class BootFilesError(ValueError):
    """A problem with the requested boot files; the message says what and how to fix it."""


def parse_nfsroot(nfsroot, who):
    """Check ``server:/path[,options]`` and return it with ``vers=3`` unless it names NFS version 2, and
    ``noacl`` unless it names ``acl`` or ``noacl``.

    klibc's nfsmount in the Bookworm initramfs speaks NFS 2 and 3 only and rejects ``proto=``. Without
    ``noacl`` the client uses the NFSACL side protocol, which NFS-Ganesha 4.3 answers with errors: every
    boot then logs systemd-tmpfiles "Setting access ACL ... Input/output error" (seen on real boots).
    """
    text = (nfsroot or '').strip()
    head, _sep, opts = text.partition(',')
    server, colon, path = head.partition(':')
    if not colon or not server or not path.startswith('/') or any(c.isspace() for c in text):
        raise BootFilesError('nfsroot %r is not valid for %s: give server:/path, e.g. "10.99.0.2:/srv/pifleet/roots/%s"'
                             % (nfsroot, who, who))
    options = [opt for opt in opts.split(',') if opt]
    vers = None
    for opt in options:
        if opt.startswith('proto='):
            raise BootFilesError('nfsroot %s for %s has %s: the initramfs mounts the root with klibc nfsmount, '
                                 'which rejects proto=; remove it' % (text, who, opt))
        match = _VERS.fullmatch(opt)
        if match:
            vers = match.group(1)
            if vers not in ('2', '3'):
                raise BootFilesError('nfsroot %s for %s asks for NFS version %s: the initramfs mounts the root with '
                                     'klibc nfsmount, which speaks NFS 2 and 3 only; use vers=3 or leave it out'
                                     % (text, who, vers))
    if vers is None:
        options.insert(0, 'vers=3')
    if 'acl' not in options and 'noacl' not in options:
        options.append('noacl')
    return ','.join([head, *options])


def _token_key(token):
    return token.split('=', 1)[0]


def render_cmdline(base, nfsroot, extra=None):
    """Return the Pi's one-line cmdline.txt: the bakeform's tokens without SD-card root and first-boot
    ones, then the NFS root, then ``extra``. ``base`` None (no cmdline.txt) starts from the consoles.

    ``network-config=disabled`` keeps cloud-init (Raspberry Pi OS from Debian 13 on) off the NIC the
    root is mounted over: with ``ip=dhcp`` it would otherwise turn the initramfs' lease into a netplan
    config for that NIC, which it ranks above any seed's or /etc/cloud's; other systems ignore it.
    """
    tokens = base.split() if base is not None else list(DEFAULT_CONSOLES)
    kept = [t for t in tokens if _token_key(t) not in _DROP_KEYS and not t.startswith('plymouth')]
    kept += ['root=/dev/nfs', 'nfsroot=%s' % nfsroot, 'rw', 'ip=dhcp', 'rootwait', 'network-config=disabled']
    if extra:
        kept += extra.split()
    return ' '.join(kept) + '\n'


def check_config_lines(lines, who):
    for line in lines or ():
        if '\n' in line or '\r' in line:
            raise BootFilesError('config_txt line %r for %s holds a line break: give one list item per line'
                                 % (line, who))


def render_config(base, name, lines):
    """Return the Pi's config.txt, or None when it has no extra lines (the bakeform's is served then)."""
    if not lines:
        return None
    text = base or ''
    if text and not text.endswith('\n'):
        text += '\n'
    block = ['# pifleet.netboot: %s' % name, '[all]', *lines]
    return text + ('\n' if text else '') + '\n'.join(block) + '\n'


def render_marker(name, prefix, bakeform, generation=None):
    # One line: json's C encoder only runs without indent, and this is rendered for every Pi of the fleet.
    return json.dumps({'name': name, 'prefix': prefix, 'bakeform': bakeform, 'generation': generation},
                      sort_keys=True) + '\n'


def json_object(text):
    """A JSON object (the marker, a manifest) as a dict, or None when missing or unreadable."""
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def desired_files(item, bakeform_files, label=None):
    """The managed files of a Pi folder: name -> content, None for "must not exist".

    ``bakeform_files`` are the boot files of the Pi's generation, ``label`` its name (``bw@3``).
    """
    return {
        CMDLINE: render_cmdline(bakeform_files.get(CMDLINE), item['nfsroot'], item.get('cmdline_extra')),
        CONFIG: render_config(bakeform_files.get(CONFIG), item['name'], item.get('config_txt')),
        MARKER: render_marker(item['name'], item['prefix'], item['bakeform'], label),
    }


def plan_files(current, wanted):
    """Sorted ``(name, before, after)`` for each managed file to write (after set) or remove (after None)."""
    return [(name, current.get(name), wanted[name]) for name in sorted(wanted)
            if current.get(name) != wanted[name]]


def model_problem(name, model, bakeform, models):
    """Why ``bakeform`` cannot boot ``model`` (None when it can, or when either is unknown)."""
    if model is None or models is None:
        return None
    have = sorted({str(m) for m in models})
    if str(model) in have:
        return None
    return ('%s is a Pi %s but bakeform %s has boot files for %s; pick a bakeform with %s'
            % (name, model, bakeform, 'Pi ' + ', '.join(have) + ' only' if have else 'no Pi model',
               MODEL_FILES.get(model, 'the firmware of that model')))


def read_map(text):
    """The prefixes and default of an existing map text; None when there is none or it is unusable."""
    data = json_object(text)
    if data is None or not isinstance(data.get('prefixes'), dict):
        return None
    return data


def merge_entries(existing, items, exclusive):
    """The map's prefix entries after this run, and ``(prefix, name)`` of entries left by Pis that moved.

    ``items`` carry ``prefix``, ``name``, ``state`` and, when present, ``dirs``. Without ``exclusive`` the
    ``existing`` entries of other Pis stay; an entry naming a listed Pi under another prefix goes. An item
    in state ``keep`` (a Pi that failed) keeps the entries that name it, exactly as they are, unless a Pi
    that is present takes that prefix.
    """
    existing = existing or {}
    keep = {item['name'] for item in items if item['state'] == 'keep'}
    kept = {prefix: entry for prefix, entry in existing.items()
            if isinstance(entry, dict) and entry.get('name') in keep}
    entries = {} if exclusive else {prefix: entry for prefix, entry in existing.items() if prefix not in kept}
    for item in items:
        entries.pop(item['prefix'], None)
    by_name = {}
    for prefix, entry in entries.items():
        if isinstance(entry, dict):
            by_name.setdefault(entry.get('name'), []).append(prefix)
    moved = []
    for item in items:
        if item['state'] != 'present':
            continue
        for prefix in by_name.get(item['name'], ()):
            del entries[prefix]
            moved.append((prefix, item['name']))
        entries[item['prefix']] = {'name': item['name'], 'dirs': list(item['dirs'])}
    for prefix, entry in kept.items():
        entries.setdefault(prefix, entry)
    return entries, moved


def build_map(default_dirs, entries):
    """The fleet map: ``entries`` is prefix -> {"name", "dirs"}."""
    return {'version': MAP_VERSION, 'default': list(default_dirs),
            'prefixes': {prefix: {'name': entry['name'], 'dirs': list(entry['dirs'])}
                         for prefix, entry in entries.items()}}


def render_map(fleet_map):
    return json.dumps(fleet_map, sort_keys=True, indent=1) + '\n'


def cap_diffs(diffs, limit=50):
    """At most ``limit`` diff entries, then one saying how many more files there were."""
    if len(diffs) <= limit:
        return diffs
    more = len(diffs) - limit
    note = 'and %d more files' % more
    return [*diffs[:limit], {'before': '', 'after': note + '\n', 'before_header': note, 'after_header': note}]
