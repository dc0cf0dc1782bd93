# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mistakes in the inventory that the fleet plan catches before any work, each with how to fix it.

- a ``pi_*`` variable the collection does not know (a typo such as ``pi_disk``), named with the closest known one;
- a serial, MAC or prefix that YAML read as a number (``pi_serial: 00123456`` is the octal number 42798, and
  ``pi_mac: 12:34:56:01:02:03`` a base-60 one): "quote it";
- ``pi_disks`` sizes read with Ansible's own size parsing (``human_to_bytes``), so ``'32 gigs'`` and ``'-5G'``
  are refused with the forms that are accepted;
- ``pifleet_bakeforms`` items: a name, one source, and with a download a well-formed, non-zero sha256 checksum or a
  checksum URL, so a placeholder is found before a multi-GB download rather than after it.

Pure functions: each returns what it checked and appends problems to a list.
"""

from __future__ import annotations

import difflib
import re

from ansible.module_utils.common.text.formatters import human_to_bytes

from ansible_collections.pifleet.netboot.plugins.module_utils.common.sizes import human
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.disks import MIN_EXT4
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.disks import check_name as disk_name_problem
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import check_name as bakeform_name_problem

# Values written as text whose leading zeros or colons matter: YAML 1.1 makes numbers of some of them.
TEXT_VARS = ('pi_serial', 'pi_mac', 'pi_tftp_prefix', 'pi_hostname')
DISK_KEYS = ('name', 'size', 'fstype')
FSTYPES = ('none', 'ext4')
# What the fleet role and the bakeforms playbook pass on to pifleet.netboot.bakeform (keep, pinned and current: its
# generations), and the models a bakeform boots.
BAKEFORM_KEYS = ('name', 'src', 'url', 'checksum', 'force', 'state', 'models', 'keep', 'pinned', 'current')
SIZES = ('bytes (an integer) or a number with a unit: K, M, G, T, optionally followed by B (binary: "512M", "32G", '
         '"1.5T")')
_SHA256 = re.compile(r'sha256:([0-9a-fA-F]{64})')
_CHECKSUM_URL = re.compile(r'sha256:(https?|ftp|file)://\S+')


def closest(key, known):
    """' (did you mean pi_disks?)' or a list of the known names."""
    match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    if match:
        return 'did you mean %s?' % match[0]
    return 'the known ones are %s' % ', '.join(sorted(known))


def unknown_keys(name, keys, known, problems):
    """A Pi's ``pi_*`` variables that the collection does not know."""
    for key in sorted(key for key in keys if key.startswith('pi_') and key not in known):
        problems.append('%s: %s is not a variable of pifleet.netboot, %s (pi_* names belong to the collection; '
                        'name variables of your own otherwise)' % (name, key, closest(key, known)))


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_written(key, value):
    """The text the user probably wrote, from the number YAML made of it."""
    if key == 'pi_mac' and isinstance(value, int) and 0 <= value < 60 ** 6:  # YAML 1.1 sexagesimal 12:34:56:...
        groups = []
        for _unused in range(6):
            value, digit = divmod(value, 60)
            groups.insert(0, '%02d' % digit)
        return ':'.join(groups)
    if isinstance(value, int) and value >= 0 and len(str(value)) not in (8, 16) and len('%o' % value) <= 8:
        return '%08o' % value  # 00123456 read as octal: 42798
    return str(value)


def numbers(name, hv, problems):
    """The keys of ``hv`` that YAML read as a number where text was meant (each reported once)."""
    found = []
    for key in TEXT_VARS:
        value = hv.get(key)
        if _is_number(value):
            found.append(key)
            problems.append('%s: %s is the number %r, not text: YAML reads unquoted digits as a number (with a leading '
                            '0 in octal, with colons in base 60) and the value is lost; quote it: %s: "%s"'
                            % (name, key, value, key, _as_written(key, value)))
    return found


def disks(name, value, problems):
    """``pi_disks`` as [{name, size (bytes), fstype}]; every problem of every disk."""
    if value in (None, ''):
        return []
    if not isinstance(value, list):
        problems.append('%s: pi_disks must be a list of {name, size, fstype}, not %s' % (name, type(value).__name__))
        return []
    found, names = [], []
    for index, disk in enumerate(value):
        where = '%s: disk %d of pi_disks' % (name, index + 1)
        if not isinstance(disk, dict):
            problems.append('%s must be a mapping {name, size, fstype}, not %r' % (where, disk))
            continue
        count = len(problems)
        for key in sorted(set(disk) - set(DISK_KEYS)):
            problems.append('%s: %s is not a key of a disk, %s' % (where, key, closest(key, DISK_KEYS)))
        disk_name = disk.get('name')
        if not isinstance(disk_name, str) or disk_name_problem(disk_name):
            problems.append('%s: %s' % (where, disk_name_problem(str(disk_name)) if disk_name else 'name missing'))
        else:
            where = '%s: disk %s' % (name, disk_name)
            names.append(disk_name)
        fstype = disk.get('fstype') or 'none'
        if fstype not in FSTYPES:
            problems.append('%s: fstype %r is not one of %s' % (where, fstype, ', '.join(FSTYPES)))
        size = _size(where, disk.get('size'), problems)
        if size is not None and fstype == 'ext4' and size < MIN_EXT4:
            problems.append('%s: size %s is too small for ext4, which needs at least %s' % (
                where, human(size), human(MIN_EXT4)))
        if len(problems) == count:
            found.append({'name': disk_name, 'size': size, 'fstype': fstype})
    for disk_name in sorted({n for n in names if names.count(n) > 1}):
        problems.append('%s: disk %s is in pi_disks more than once; give each disk a name of its own'
                        % (name, disk_name))
    return found


def _size(where, value, problems):
    """Bytes of a disk size as Ansible reads sizes; None (and a problem) when it is not one."""
    if value in (None, ''):
        problems.append('%s: size missing; give %s' % (where, SIZES))
        return None
    try:
        if isinstance(value, bool):
            raise ValueError('a boolean')
        size = human_to_bytes(value)
    except (ValueError, TypeError):
        size = None
    if size is None or size <= 0:
        problems.append('%s: size %r is not a size: give %s' % (where, value, SIZES))
        return None
    return size


def checksum_problem(checksum):
    """Why a bakeform checksum is unusable, or None: sha256:<64 hex, not all zeros>, or sha256:<URL of a sums file>."""
    text = str(checksum).strip()
    match = _SHA256.fullmatch(text)
    if match:
        if set(match.group(1)) == {'0'}:
            return ('checksum %s is the all-zero placeholder; put the image\'s published sha256 there (for example the '
                    'output of: curl -fsSL <url>.sha256), or the URL of its checksum file (sha256:<url>)' % text)
        return None
    if _CHECKSUM_URL.fullmatch(text):
        return None
    return ('checksum %r is not of the form "sha256:<64 hex digits>" or "sha256:<URL of a checksum file>" (as '
            'ansible.builtin.get_url takes it)' % text)


def bakeforms(items, problems):
    """``pifleet_bakeforms`` as {name: [models] or None}; each item's problems."""
    declared = {}
    for index, item in enumerate(items or []):
        if not isinstance(item, dict) or not item.get('name'):
            problems.append('pifleet_bakeforms: item %d needs a name; got %r' % (index + 1, item))
            continue
        name = str(item['name'])
        where = 'pifleet_bakeforms: bakeform %s' % name
        for key in sorted(set(item) - set(BAKEFORM_KEYS)):
            problems.append('%s: %s is not a key of a bakeform, %s' % (where, key, closest(key, BAKEFORM_KEYS)))
        problem = bakeform_name_problem(name)
        if problem:
            problems.append('%s: %s' % (where, problem))
        if name in declared:
            problems.append('%s is declared more than once; give each bakeform a name of its own' % where)
        if item.get('state', 'present') != 'absent':
            if bool(item.get('src')) == bool(item.get('url')):
                problems.append('%s needs one source: src (an image on the bakery) or url' % where)
            elif item.get('url') and not item.get('checksum'):
                problems.append('%s: a download needs checksum: "sha256:<64 hex digits>" (published beside the image) '
                                'or "sha256:<URL of its checksum file>", checked before anything is unpacked' % where)
            if item.get('checksum'):
                problem = checksum_problem(item['checksum'])
                if problem:
                    problems.append('%s: %s' % (where, problem))
        models = item.get('models')
        declared[name] = None if models is None else _models(where, models, problems)
    return declared


def _models(where, models, problems):
    try:
        return [int(model) for model in models]
    except (TypeError, ValueError):
        problems.append('%s: models must be a list of Pi models (3, 4, 5), not %r' % (where, models))
        return None
