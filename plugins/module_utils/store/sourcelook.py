# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which bakeforms' sources the store holds already, told from one read-only shell command on the bakery.

The fleet role runs a bakeform that makes a new generation asynchronously (a line per poll while a multi-GB image
is fetched and unpacked), so it has to know beforehand which ones will. A module run per bakeform in check mode
says so, and costs a second per run even when nothing changes. ``command()`` is one ``stat`` of each local source
and a ``cat`` of the manifests of its stored generations; ``stored()`` reads that output and names the bakeforms
whose source a stored generation was ingested from, by the same test ``bakeform`` makes (``same_source``):

- an inline ``sha256:<hex>`` checksum that a stored generation has;
- else a local source file whose path, size, mtime, inode and device are those a generation recorded.

Anything it cannot tell (a checksum URL, a relative path, a source or store it could not read, output it does not
recognise) is not named: the module's own check decides those, as before. Naming a bakeform wrongly would cost only
the progress lines of its ingest, never a result: the real module run decides what it ingests.
"""

from __future__ import annotations

import json
import posixpath
import shlex

from ansible_collections.pifleet.netboot.plugins.module_utils.store import checksum as _checksum
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import IngestError, check_name, recorded
from ansible_collections.pifleet.netboot.plugins.module_utils.store.generations import GENERATIONS, MANIFEST

# Each line the command prints starts with one of these (a terminal over SSH may add a carriage return, and a
# tool's complaint may come on the same output: any other line is not read).
ITEM, STAT, DOC, END = '@pifleet-bakeform ', '@pifleet-stat ', '@pifleet-manifest', '@pifleet-end'


def _digest(item):
    """The inline sha256 of an item's checksum; None when it has none or one this cannot use (a URL, a typo)."""
    try:
        digest, _url = _checksum.parse(item.get('checksum'))
    except IngestError:
        return None
    return digest


def _local_source(item):
    src = item.get('src')
    # The module's src is a path option: Ansible expands ``~`` and ``$VARS`` in it. Such a source is left to it.
    if not src or not isinstance(src, str) or not posixpath.isabs(src) or '$' in src:
        return None
    return posixpath.normpath(src)


def candidates(items):
    """``[(index, item)]`` of the items whose stored generations can settle whether their source is stored."""
    found = []
    for index, item in enumerate(items or []):
        if not isinstance(item, dict) or check_name(item.get('name')) is not None:
            continue
        if _digest(item) or (_local_source(item) and not item.get('checksum')):
            found.append((index, item))
    return found


def command(items, store):
    """The shell command that prints what ``stored()`` reads; empty when no item can be told this way."""
    parts = []
    for index, item in candidates(items):
        parts.append('echo %s' % shlex.quote(ITEM + str(index)))
        src = _local_source(item)
        if src and not item.get('checksum'):
            # %.9Y: the mtime in nanoseconds as a decimal fraction (what Python's st_mtime_ns says).
            parts.append('stat -L --format=%s -- %s' % (shlex.quote(STAT + '%s %.9Y %i %d'), shlex.quote(src)))
        manifests = '%s/%s/*/%s' % (shlex.quote(posixpath.join(store, item['name'])), GENERATIONS, MANIFEST)
        parts.append('for m in %s; do [ -f "$m" ] && echo %s && cat -- "$m" && echo && echo %s; done'
                     % (manifests, DOC, END))
    if not parts:
        return ''
    return 'LC_ALL=C; export LC_ALL; %s; exit 0' % '; '.join(parts)


def _stat(words):
    """``source_stat()`` from ``size mtime inode device`` as stat printed them; None when not in that shape."""
    try:
        size, mtime, inode, device = words
        seconds, _dot, fraction = mtime.partition('.')
        if not fraction.isdigit() or len(fraction) != 9:
            return None
        sign = -1 if seconds.startswith('-') else 1
        mtime_ns = int(seconds) * 10 ** 9 + sign * int(fraction)
        return {'size': int(size), 'mtime_ns': mtime_ns, 'inode': int(inode), 'device': int(device)}
    except ValueError:
        return None


def _read(stdout):
    """``{index: {'stat': dict or None, 'manifests': [dict]}}`` from the command's output."""
    seen, current, doc = {}, None, None

    def close():
        if current is not None and doc is not None:
            try:
                manifest = json.loads('\n'.join(doc))
            except ValueError:
                return
            if isinstance(manifest, dict):
                seen[current]['manifests'].append(manifest)

    for raw_line in (stdout or '').splitlines():
        line = raw_line.rstrip('\r')
        if line.startswith(ITEM):
            close()
            doc = None
            current = int(line[len(ITEM):]) if line[len(ITEM):].isdigit() else None
            if current is not None:
                seen[current] = {'stat': None, 'manifests': []}
        elif current is None:
            continue
        elif line.startswith(STAT):
            close()
            doc = None
            seen[current]['stat'] = _stat(line[len(STAT):].split())
        elif line == DOC:
            close()
            doc = []
        elif line == END:
            close()
            doc = None
        elif doc is not None:
            doc.append(line)
    close()
    return seen


def stored(stdout, items):
    """The names of the items (``pifleet_bakeforms``) whose source a stored generation was ingested from."""
    seen = _read(stdout)
    names = []
    for index, item in candidates(items):
        found = seen.get(index)
        if not found:
            continue
        digest = _digest(item)
        for manifest in found['manifests']:
            if (digest and manifest.get('sha256') == digest) or (
                    not digest and recorded(manifest, _local_source(item), found['stat'])):
                names.append(item['name'])
                break
    return names
