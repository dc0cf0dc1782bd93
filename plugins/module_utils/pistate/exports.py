# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NFS exports limited to the Pis: validate entries, read and write the one file pifleet owns.

An entry is ``{'path': str, 'clients': [str], 'options': [str]}``; the managed set maps path ->
entry. Two renderings: kernel nfsd (an exports(5) file in /etc/exports.d) and NFS-Ganesha (EXPORT
blocks in a file the Ganesha config includes). Both parse back into the same entries, so a call
can merge its entries into what earlier calls left, and the rendered text decides ``changed``.
"""

from __future__ import annotations

import os
import re
import traceback

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import is_host_name
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import find_duplicates

try:
    import netaddr
except ImportError:
    HAS_NETADDR = False
    NETADDR_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_NETADDR = True
    NETADDR_IMPORT_ERROR = None

HEADER = '# Managed by pifleet.netboot (nfs_export): manual edits are overwritten'
DEFAULT_FILES = {'kernel': '/etc/exports.d/pifleet.exports', 'ganesha': '/etc/ganesha/pifleet.conf'}
DEFAULT_OPTIONS = ['rw', 'sync', 'no_subtree_check', 'no_root_squash']
FIRST_GANESHA_ID = 100  # ids below stay free for the user's own EXPORT blocks in ganesha.conf

# exports(5) options that take no value, and the pairs that contradict each other.
KERNEL_FLAGS = frozenset((
    'rw', 'ro', 'sync', 'async', 'secure', 'insecure', 'wdelay', 'no_wdelay', 'subtree_check',
    'no_subtree_check', 'root_squash', 'no_root_squash', 'all_squash', 'no_all_squash', 'hide', 'nohide',
    'crossmnt', 'no_acl', 'secure_locks', 'insecure_locks', 'auth_nlm', 'no_auth_nlm', 'mp', 'mountpoint'))
OPPOSITES = (('rw', 'ro'), ('sync', 'async'), ('secure', 'insecure'), ('wdelay', 'no_wdelay'),
             ('subtree_check', 'no_subtree_check'), ('root_squash', 'no_root_squash'),
             ('all_squash', 'no_all_squash'), ('hide', 'nohide'), ('secure_locks', 'insecure_locks'),
             ('auth_nlm', 'no_auth_nlm'))
SEC_FLAVORS = ('sys', 'krb5', 'krb5i', 'krb5p')
_ID = re.compile(r'[0-9]{1,10}')
_UUID = re.compile(r'[0-9a-f]{8}(-?[0-9a-f]{4}){3}-?[0-9a-f]{12}|([0-9a-f]{8}:){3}[0-9a-f]{8}')
# Options Ganesha can express; sync and no_subtree_check are what Ganesha always does anyway. mp is kept by
# pifleet itself for Ganesha (an export with nothing mounted at its path is written withheld, see below).
GANESHA_FLAGS = frozenset(('rw', 'ro', 'root_squash', 'no_root_squash', 'all_squash', 'sync', 'no_subtree_check',
                           'mp'))
# exports(5) mp: export only while a file system is mounted at the path. Every export that must be the top of a
# file system of its own gets it, so that a Pi whose root is not mounted is never served the bare directory.
MOUNTED_ONLY = 'mp'
# A Ganesha EXPORT block whose lines start with this is withheld: Ganesha reads it as a comment. The nfs_server
# role's guard (roles/nfs_server/files/pifleet_exports_guard.py) flips blocks the same way when Ganesha starts.
WITHHELD = '#| '

GANESHA_VALUED = frozenset(('anonuid', 'anongid', 'sec'))

_WILDCARD = re.compile(r'[a-z0-9*?.\[\]-]+')


class ExportsError(Exception):
    """A problem with an entry or a file; the message says what and how to fix it."""


def _unsafe(text):
    return any(ord(char) < 32 or ord(char) == 127 for char in text)


def check_path(path, must_exist=True):
    """Fail unless ``path`` is a clean absolute path (an existing directory when ``must_exist``)."""
    if not path or not path.startswith('/') or _unsafe(path):
        raise ExportsError('path %r of an export is not valid: it must be absolute and hold no newline or control '
                           'character; give the directory as /srv/...' % path)
    if os.path.normpath(path) != path and path != '/':
        raise ExportsError('path %s of an export is not normalised; write it as %s' % (path, os.path.normpath(path)))
    if must_exist and not os.path.isdir(path):
        raise ExportsError('path %s of an export is not a directory on this host; create it first (a Pi root or '
                           'boot directory) or correct the path' % path)


def fs_identity(path):
    """What says which file system (and directory in it) an export path is now: ``<fsid>:<inode>`` in hex.

    A root that pi_root rebuilt is a new file system (a new UUID, so a new fsid) at the same path; an NFS
    server that exported the old one must let go of it (see ``bounced``).
    """
    try:
        fsid, ino = os.statvfs(path).f_fsid, os.stat(path).st_ino
    except OSError:
        return None
    return '%x:%x' % (fsid & 0xFFFFFFFFFFFFFFFF, ino)


def check_own_filesystem(path, mount_roots):
    """Refuse an export that is not the top of a file system of its own.

    Neither Ganesha nor kernel nfsd with no_subtree_check can stop a client from forging a file handle
    for any inode of the exported file system, so a directory inside a larger file system hands its
    client everything on it (other Pis' roots, the bakery's /etc). ``mount_roots`` maps mount points to
    the path inside their file system that is mounted there ('/' for a whole file system).
    """
    real = os.path.realpath(path)
    root = mount_roots.get(real)
    if root == '/':
        return
    if root:
        what = 'a bind mount of %s of another file system' % root
    else:
        what = 'a directory inside the file system of %s' % _mount_point_of(real, mount_roots)
    raise ExportsError('export %s is %s: a client can forge NFS file handles for any file of that file system, so '
                       'it would reach far more than this directory. Export the top of a file system that holds only '
                       'what this client may see (pi_root and pi_disk make one per Pi), or set '
                       'allow_shared_filesystem: true to accept that risk' % (path, what))


def _mount_point_of(path, mount_roots):
    best = '/'
    for point in mount_roots:
        if (path == point or path.startswith(point.rstrip('/') + '/')) and len(point) > len(best):
            best = point
    return best


def bounced(current, wanted):
    """Paths the server must let go of before it exports them: exported before on another file system (a rebuilt
    root), or new paths of a file system exported before under a path that goes now (a mount point moved).

    Ganesha keeps the file system it opened at a path, and records each file system under the mount point where
    it first met it; an export added in the same reload that drops the old one would not find it.
    """
    changed = {path for path, entry in wanted.items()
               if current.get(path, {}).get('fs') and entry.get('fs') and current[path]['fs'] != entry['fs']}
    gone = {current[path]['fs'] for path in current if path not in wanted and current[path].get('fs')}
    moved = {path for path, entry in wanted.items() if path not in current and entry.get('fs') in gone}
    return sorted(changed | moved)


def is_world(client):
    """True for a client spec that lets any host (or any host of a name pattern) in."""
    return client in ('*', '<world>') or any(mark in client for mark in '*?[') or client.endswith('/0')


def normalise_client(client, path, allow_world=False):
    """Return the canonical form of one client of ``path``: an address, a CIDR network or a host name."""
    text = (client or '').strip().lower()
    where = 'client %r of export %s' % (client, path)
    if not text or any(char.isspace() for char in text) or _unsafe(text) or any(c in text for c in '(),;"\'#'):
        raise ExportsError('%s is not valid: a client is one address, network or host name, without spaces or '
                           'options (a space before "(" exports to the whole world); put options in options:' % where)
    if is_world(text):
        return _world(text, where, allow_world)
    if text.startswith('@') or text.startswith('gss/'):
        raise ExportsError('%s: netgroups and gss/ clients are not supported; list addresses, CIDR networks or '
                           'host names' % where)
    address, slash, prefix = text.partition('/')
    if ':' in address or re.fullmatch(r'[0-9.]+', address):
        normal = _normalise_ip(address, slash, prefix, where)
        return _world(normal, where, allow_world) if normal.endswith('/0') else normal
    if slash or not is_host_name(text):
        raise ExportsError('%s is neither an IP address, a CIDR network nor an RFC 1123 host name' % where)
    return text


def _world(text, where, allow_world):
    if not allow_world:
        raise ExportsError('%s exports to the world (any host, or a name pattern); give the Pi\'s address, or '
                           'set allow_world: true if that is really meant' % where)
    if text.endswith('/0') or text == '<world>':
        return '*'
    if _WILDCARD.fullmatch(text):
        return text
    raise ExportsError('%s is not a valid host name pattern' % where)


def _normalise_ip(address, slash, prefix, where):
    try:
        ip = netaddr.IPAddress(address, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ExportsError('%s is not a valid IP address or network (write 10.0.0.5 or 10.0.0.0/24)' % where) from None
    if not slash:
        return str(ip)
    if not prefix.isdigit() or int(prefix) > (32 if ip.version == 4 else 128):
        raise ExportsError('%s has no valid prefix length (write 10.0.0.0/24)' % where)
    return str(netaddr.IPNetwork('%s/%d' % (ip, int(prefix))).cidr)


def is_network(client):
    """True for a client that matches more than one host (a CIDR network wider than one address)."""
    if '/' not in client:
        return is_world(client)
    return netaddr.IPNetwork(client).size > 1


VALUED = ('anonuid', 'anongid', 'fsid', 'sec', 'mp', 'mountpoint')


def _check_valued(name, value, where):
    if name in ('anonuid', 'anongid', 'fsid') and _ID.fullmatch(value) and int(value) < 2 ** 32:
        return
    if name == 'fsid' and (value == 'root' or _UUID.fullmatch(value)):
        return
    if name == 'sec' and value and all(flavor in SEC_FLAVORS for flavor in value.split(':')):
        return
    if name in ('mp', 'mountpoint') and value.startswith('/') and not _unsafe(value):
        return
    raise ExportsError('option %s=%s of %s has a bad value; see exports(5) (anonuid/anongid=<number>, fsid=<number>'
                       '|root|<uuid>, sec=sys[:krb5...], mountpoint=<absolute path>)' % (name, value, where))


def _check_option(option, where):
    """Validate one exports(5) option; return its name."""
    text = option or ''
    name, eq, value = text.partition('=')
    if not text or _unsafe(text) or any(c.isspace() or c in '(),#"' for c in text):
        raise ExportsError('option %r of %s is not valid: one exports(5) option per list item' % (option, where))
    if eq and name in VALUED:
        _check_valued(name, value, where)
    elif eq or name not in KERNEL_FLAGS | set(VALUED):
        raise ExportsError('option %s of %s is unknown to exports(5) or not supported here; check its spelling'
                           % (text, where))
    elif name not in KERNEL_FLAGS:
        raise ExportsError('option %s of %s needs a value (%s=...)' % (name, where, name))
    return name


def _check_ganesha(option, where):
    name = option.partition('=')[0]
    if option == 'sec=sys' or option in GANESHA_FLAGS or (name in GANESHA_VALUED and name != 'sec'):
        return
    raise ExportsError('option %s of %s cannot be expressed for NFS-Ganesha; it accepts rw, ro, root_squash, '
                       'no_root_squash, all_squash, anonuid=N, anongid=N, sec=sys (sync and no_subtree_check are '
                       'its behaviour anyway)' % (option, where))


SPANNING = ('crossmnt', 'nohide')  # options that carry an export over into other file systems


def normalise_options(options, path, backend, allow_shared=False):
    """Validate the options of ``path`` against what the backend accepts; return them without duplicates."""
    where = 'export %s' % path
    if not options:
        raise ExportsError('options of %s are empty; give at least rw or ro' % where)
    seen, names = [], set()
    for option in options:
        text = (option or '').strip()
        name = _check_option(text, where)
        if text in seen:
            continue
        if name in names:
            raise ExportsError('option %s is given twice with different values for %s' % (name, where))
        if backend == 'ganesha':
            _check_ganesha(text, where)
        if name in SPANNING and not allow_shared:
            raise ExportsError('option %s of %s extends the export into the file systems mounted below it; each Pi '
                               'must reach its own file system only. Drop it, or set allow_shared_filesystem: true'
                               % (name, where))
        seen.append(text)
        names.add(name)
    for one, other in OPPOSITES:
        if one in names and other in names:
            raise ExportsError('options %s and %s of %s contradict each other; keep one' % (one, other, where))
    return seen


# ---- kernel nfsd: an exports(5) file ----

def escape_path(path):
    """exports(5) reads \\ooo octal escapes: use them for blanks and the characters its parser treats specially."""
    return ''.join('\\%03o' % ord(c) if c.isspace() or c in '\\"#' else c for c in path)


def unescape_path(text):
    return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), text.strip('"'))


FS_NOTE = '# pifleet fs: '


def check_arguments(items):
    """What makes a call wrong as a whole (not one export): items without a path, a path listed twice."""
    missing = [i for i, item in enumerate(items) if not item['path']]
    if missing:
        raise ExportsError('path missing for item %d of exports; give each item a path' % missing[0])
    dupes = find_duplicates(items, 'path')
    if dupes:
        raise ExportsError('exports lists %s more than once; give one item per path' % ', '.join(dupes))


def check_item(item, backend, allow_world=False, shared=False, mount_roots=None):
    """Check and normalise one entry in place (clients, options, the file system it is); the warnings it draws.
    ``mount_roots`` (``_loopfs.mount_roots()``) unless ``shared``: then an export need not be the top of a file
    system of its own. Raises ExportsError with its first problem; a ``keep`` entry is not looked at."""
    if item['state'] == 'keep':
        return []
    check_path(item['path'], must_exist=item['state'] == 'present')
    if backend == 'ganesha':
        check_ganesha_path(item['path'])
    if item['state'] == 'absent':
        return []
    if not item['clients']:
        raise ExportsError('clients missing for export %s; give the Pi\'s address' % item['path'])
    item['clients'] = list(dict.fromkeys(normalise_client(c, item['path'], allow_world) for c in item['clients']))
    item['options'] = normalise_options(item['options'], item['path'], backend, shared)
    if not shared:
        check_own_filesystem(item['path'], mount_roots)
        if not any(option.partition('=')[0] in ('mp', 'mountpoint') for option in item['options']):
            item['options'].append(MOUNTED_ONLY)
    item['fs'] = fs_identity(item['path'])
    return ['export %s is read-write to %s: every host there can write; a Pi\'s root should go to its own address '
            'only' % (item['path'], client)
            for client in item['clients'] if 'rw' in item['options'] and is_network(client)]


def check_items(items, backend, allow_world=False, shared=False, mount_roots=None):
    """``check_arguments`` and ``check_item`` of every entry; raises ExportsError with the first problem."""
    check_arguments(items)
    warnings = []
    for item in items:
        warnings += check_item(item, backend, allow_world, shared, mount_roots)
    return warnings


def render_kernel(entries):
    lines = [HEADER]
    for path in sorted(entries):
        entry = entries[path]
        opts = ','.join(entry['options'])
        if entry.get('fs'):
            lines.append(FS_NOTE + entry['fs'])
        lines.append(' '.join([escape_path(path)] + ['%s(%s)' % (client, opts) for client in entry['clients']]))
    return '\n'.join(lines) + '\n'


_KERNEL_CLIENT = re.compile(r'([^\s()]+)\(([^()]*)\)')


def parse_kernel(text):
    """Entries of a managed exports file, and the lines that are not ours to understand (dropped on rewrite)."""
    entries, strange, note = {}, [], None
    for line in text.splitlines():
        if line.startswith(FS_NOTE):
            note = line[len(FS_NOTE):].strip()
            continue
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        fields = line.split()
        path = unescape_path(fields[0])
        clients = [_KERNEL_CLIENT.fullmatch(field) for field in fields[1:]]
        if not clients or not all(clients) or len({m.group(2) for m in clients}) != 1 or path in entries:
            strange.append(line)
            continue
        entries[path] = {'path': path, 'clients': [m.group(1) for m in clients],
                         'options': clients[0].group(2).split(',')}
        if note:
            entries[path]['fs'] = note
        note = None
    return entries, strange


# ---- NFS-Ganesha: EXPORT blocks in a file included from ganesha.conf ----

def check_ganesha_path(path):
    if '"' in path or '\\' in path:
        raise ExportsError('path %s cannot be written into a Ganesha config (it holds " or \\); rename the directory'
                           % path)


def ganesha_settings(options):
    """The Ganesha access, squash and anonymous ids that the exports(5) options mean."""
    names = {o.partition('=')[0]: o.partition('=')[2] for o in options}
    access = 'RW' if 'rw' in names else 'RO'  # exports(5): ro is the default
    squash = 'All_Squash' if 'all_squash' in names else (
        'No_Root_Squash' if 'no_root_squash' in names else 'Root_Squash')
    return access, squash, names.get('anonuid'), names.get('anongid')


def unmounted(entries, mount_roots):
    """Paths of the entries with option mp that have no file system mounted at them: withheld (Ganesha)."""
    return {path for path, entry in entries.items() if MOUNTED_ONLY in entry['options']
            and mount_roots.get(os.path.realpath(path)) != '/'}


def render_ganesha(entries, ids, withheld=()):
    """The exports file; the blocks of ``withheld`` paths are written as comments (``WITHHELD`` lines)."""
    blocks = [HEADER, '# Export_Id of these exports start at %d; keep your own below it.' % FIRST_GANESHA_ID,
              '# Blocks whose lines start with "%s" are withheld: nothing is mounted at their path (option mp).'
              % WITHHELD.strip()]
    for path in sorted(entries):
        entry = entries[path]
        access, squash, anonuid, anongid = ganesha_settings(entry['options'])
        lines = ['EXPORT {', '    Export_Id = %d;' % ids[path], '    Path = "%s";' % path, '    Pseudo = "%s";' % path,
                 '    Protocols = 3, 4;', '    Transports = TCP;', '    Access_Type = None;',
                 '    Squash = %s;' % squash, '    SecType = sys;']
        if anonuid is not None:
            lines.append('    Anonymous_Uid = %s;' % anonuid)
        if anongid is not None:
            lines.append('    Anonymous_Gid = %s;' % anongid)
        lines += ['    FSAL { Name = VFS; }', '    CLIENT {', '        Clients = %s;' % ', '.join(entry['clients']),
                  '        Access_Type = %s;' % access, '    }',
                  '    # pifleet options: %s' % ','.join(entry['options'])]
        if entry.get('fs'):
            lines.append('    ' + FS_NOTE + entry['fs'])
        lines.append('}')
        blocks.append('\n'.join(WITHHELD + line for line in lines) if path in withheld else '\n'.join(lines))
    return '\n'.join(blocks) + '\n'


_BLOCK = re.compile(r'^EXPORT \{\n(.*?)^\}$', re.M | re.S)
_WITHHELD_LINE = re.compile(r'^%s' % re.escape(WITHHELD), re.M)


def parse_ganesha(text):
    """Entries and Export_Ids of a managed Ganesha exports file (withheld blocks included)."""
    entries, ids = {}, {}
    for block in _BLOCK.finditer(_WITHHELD_LINE.sub('', text)):
        body = block.group(1)
        ident = re.search(r'^\s*Export_Id = (\d+);', body, re.M)
        path = re.search(r'^\s*Path = "([^"]*)";', body, re.M)
        clients = re.search(r'^\s*Clients = ([^;]*);', body, re.M)
        options = re.search(r'^\s*# pifleet options: (\S+)', body, re.M)
        if not (ident and path and clients):
            continue
        if options:
            opts = options.group(1).split(',')
        else:
            access = re.search(r'^\s*Access_Type = (RW|RO);', body, re.M)
            opts = ['rw' if access and access.group(1) == 'RW' else 'ro']
        entries[path.group(1)] = {'path': path.group(1), 'clients': [c.strip() for c in clients.group(1).split(',')],
                                  'options': opts}
        note = re.search(r'^\s*%s(\S+)' % re.escape(FS_NOTE), body, re.M)
        if note:
            entries[path.group(1)]['fs'] = note.group(1)
        ids[path.group(1)] = int(ident.group(1))
    return entries, ids


def used_export_ids(config_text):
    """Export_Ids the user's own Ganesha config already uses."""
    return {int(m) for m in re.findall(r'(?im)^[^#\n]*\bExport_Id\s*=\s*(\d+)', config_text or '')}


def assign_ids(paths, old_ids, reserved):
    """Keep each path's Export_Id; give new paths the lowest free id from FIRST_GANESHA_ID on.

    An id the file gave another path is not handed out in the same write: Ganesha takes a reload that keeps an
    Export_Id as an update of that export, and an update cannot change its Path (a moved mount point).
    """
    ids = {path: old_ids[path] for path in paths if path in old_ids and old_ids[path] not in reserved}
    taken = set(ids.values()) | set(reserved) | set(old_ids.values())
    candidate = FIRST_GANESHA_ID
    for path in sorted(paths):
        if path in ids:
            continue
        while candidate in taken:
            candidate += 1
        ids[path] = candidate
        taken.add(candidate)
    return ids


def include_line(exports_file):
    return '%%include "%s"' % exports_file


def has_include(config_text, exports_file):
    pattern = r'(?m)^\s*%%include\s+"?%s"?\s*$' % re.escape(exports_file)
    return re.search(pattern, config_text) is not None


def add_include(config_text, exports_file):
    """The config with our include appended; no other line changes."""
    if config_text and not config_text.endswith('\n'):
        config_text += '\n'
    return config_text + include_line(exports_file) + '\n'


# ---- plan and write ----

def merge(current, items, exclusive, keep=()):
    """The managed set after applying ``items`` (normalised entries with a ``state``) to ``current``.

    ``keep``: paths whose current entry stays exactly as it is, whatever the items or ``exclusive`` say (a
    Pi that failed keeps the export it had: never widened, never removed because a step failed); items in
    state ``keep`` are kept the same way.
    """
    keep = set(keep) | {item['path'] for item in items if item['state'] == 'keep'}
    result = {} if exclusive else {path: dict(entry) for path, entry in current.items()}
    for item in items:
        if item['path'] in keep:
            continue
        if item['state'] == 'absent':
            result.pop(item['path'], None)
        else:
            result[item['path']] = {'path': item['path'], 'clients': list(item['clients']),
                                    'options': list(item['options'])}
            if item.get('fs'):
                result[item['path']]['fs'] = item['fs']
    for path in keep:
        if path in current:
            result[path] = dict(current[path])
        else:
            result.pop(path, None)
    return result


def read_config(path):
    """The exports file or Ganesha config (None when missing), read as ever: strict UTF-8, universal newlines."""
    return _atomic.read_text(path, errors='strict', universal_newlines=True)


def ganesha_pid(pidfile):
    """The PID in ``pidfile`` when it names a running ganesha.nfsd, else None."""
    try:
        with open(pidfile, encoding='ascii') as handle:
            pid = int(handle.read().split()[0])
        with open('/proc/%d/comm' % pid, encoding='utf-8') as handle:
            comm = handle.read().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm.startswith('ganesha') else None


def without(entries, paths):
    """The entries minus ``paths`` (the first half of a bounce: the server forgets them)."""
    return {path: entry for path, entry in entries.items() if path not in paths}


def hup_taken(pid):
    """True once ``pid`` has taken a SIGHUP sent to it (no SIGHUP pending on the process any more)."""
    try:
        with open('/proc/%d/status' % pid, encoding='ascii') as handle:
            for line in handle:
                if line.startswith('ShdPnd:'):
                    return not int(line.split()[1], 16) & 1  # bit 0: signal 1, SIGHUP
    except (OSError, ValueError):
        return True
    return True
