# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every pifleet module shares around its AnsibleModule.

- ``PifleetModule``: the module's result, ``fail()``, its items (one, or a list of them: see
  ``expand``), its validation problems (one rule: every problem of the arguments reported at once)
  and its diff entries (``file_diff``).
- ``LOCK_ARGS`` and ``take_lock``: the bakery lock every writing module holds.
- ``ModuleHost``: what the planners of module_utils need of the host (commands with a deadline,
  warnings, modes).
- ``failed_pis_message``: the one message of a list module some of whose Pis failed (CONTRACTS part 3:
  every other item is finished, ``failed_pis`` lists ``{serial, hostname, msg}``).

The planners themselves (``_<topic>work.py``) never see the AnsibleModule: tests drive them with a
host of their own.
"""

from __future__ import annotations

from ansible_collections.pifleet.netboot.plugins.module_utils.common import command as _command
from ansible_collections.pifleet.netboot.plugins.module_utils.common.lock import DEFAULT_PATH, BakeryLock, LockError
from ansible_collections.pifleet.netboot.plugins.module_utils.common.text import printable

LOCK_ARGS = {
    'lock_file': {'type': 'path', 'default': DEFAULT_PATH},
    'lock_timeout': {'type': 'int', 'default': 3600},
}
COMMAND_ARGS = {'command_timeout': {'type': 'int', 'default': _command.DEFAULT_TIMEOUT}}
LANG_C = _command.LANG_C
SHOWN_PROBLEMS = 10  # a fleet-wide mistake must not make a message of a thousand lines; ``problems`` has all


def expand(params, list_key, keys):
    """The items to converge: the list's entries over top-level defaults, or the top level alone.

    A module that the fleet role calls for many Pis declares its per-item options at the top level
    *and* as the suboptions of a list option (``pis:``, ``disks:``, ``exports:``); top-level values
    are defaults for every list item.
    """
    shared = {key: params.get(key) for key in keys}
    items = params.get(list_key)
    if items is None:
        return [shared]
    expanded = []
    for item in items:
        merged = dict(shared)
        merged.update((key, value) for key, value in item.items() if key in keys and value is not None)
        expanded.append(merged)
    return expanded


def find_duplicates(items, key):
    """Values of ``key`` that occur more than once among ``items``, sorted."""
    seen, dupes = set(), set()
    for item in items:
        value = item.get(key)
        if value in seen:
            dupes.add(value)
        seen.add(value)
    return sorted(dupes, key=str)


def file_diff(header, before, after, after_header=None):
    """One entry of a module's diff: a file's text (None: no file) before and after.

    The text may be a Pi's (or reach a terminal in any case): non-printable characters are escaped
    (``common.text.printable``), so an escape sequence in it cannot rewrite what the admin sees.
    """
    return {'before': '' if before is None else printable(before), 'after': '' if after is None else printable(after),
            'before_header': printable(header), 'after_header': printable(after_header or header)}


def failed_pis_message(module_name, failed):
    """``<module> failed for N Pi(s): <hostname or serial>: <why>; ...`` naming every failed Pi."""
    return '%s failed for %d Pi(s): %s' % (module_name, len(failed), '; '.join(
        '%s: %s' % (pi.get('hostname') or pi.get('serial') or pi.get('path'), pi['msg']) for pi in failed))


def failed_pi(serial, hostname, msg, **extra):
    """One entry of ``failed_pis``."""
    return dict(extra, serial=serial, hostname=hostname, msg=msg)


def problems_message(problems, where):
    """The one message for validation problems: a single one as it is, several counted and listed."""
    if len(problems) == 1:
        return problems[0]
    more = '; and %d more' % (len(problems) - SHOWN_PROBLEMS) if len(problems) > SHOWN_PROBLEMS else ''
    return '%d problems in %s: %s%s' % (len(problems), where, '; '.join(problems[:SHOWN_PROBLEMS]), more)


class PifleetModule:
    """One run of a pifleet module: its AnsibleModule, result, validation problems and diff."""

    def __init__(self, module, result, list_key=None):
        self.module = module
        self.params = module.params
        self.result = result
        self.list_key = list_key
        self.problems = []
        self.diffs = []

    def fail(self, msg, **details):
        self.module.fail_json(msg=msg, **dict(self.result, **details))

    def items(self, keys, single):
        """``(where, item)`` of each item of this call: ``<list>[<index>]`` in the list, else ``single``."""
        listed = self.list_key is not None and self.params.get(self.list_key) is not None
        return [('%s[%d]' % (self.list_key, index) if listed else single, item)
                for index, item in enumerate(expand(self.params, self.list_key, keys))]

    def problem(self, msg):
        self.problems.append(msg)

    def unique(self, items, key, msg):
        """A problem when values of ``key`` repeat; ``msg`` has one ``%s`` for them."""
        dupes = [dupe for dupe in find_duplicates(items, key) if dupe is not None]  # None: reported already
        if dupes:
            self.problem(msg % ', '.join(str(dupe) for dupe in dupes))

    def check(self):
        """Fail with every problem found so far, in one message."""
        if self.problems:
            where = self.list_key if self.list_key and self.params.get(self.list_key) is not None else 'the arguments'
            self.fail(problems_message(self.problems, where), changed=False, problems=list(self.problems))

    def diff(self, header, before, after, after_header=None):
        """Record a diff entry (in diff mode only)."""
        if self.module._diff:
            self.diffs.append(file_diff(header, before, after, after_header))

    def lock(self, who):
        return take_lock(self.module, who, self.result)


def take_lock(module, who, result=None):
    """Hold the bakery lock for the rest of the module run (not in check mode); warn when it had to wait."""
    if module.check_mode:
        return None
    lock = BakeryLock(module.params['lock_file'], who, module.params['lock_timeout'])
    try:
        lock.acquire()
    except LockError as exc:
        module.fail_json(msg=str(exc), **dict(result or {}, changed=False))
    message = lock.message()
    if message:
        module.warn(message)
        if result is not None:
            result['lock_waited'] = lock.waited
    return lock


class ModuleHost:
    """What the planners of module_utils need of the host, taken from an AnsibleModule."""

    def __init__(self, module, timeout=None):
        self.module = module
        self.check_mode = module.check_mode
        self.diff = module._diff
        # Every tool gets a deadline (the module's command_timeout): a hung one costs only its Pi.
        self.timeout = timeout or module.params.get('command_timeout') or _command.DEFAULT_TIMEOUT

    @property
    def tmpdir(self):
        return self.module.tmpdir  # made on first use only

    def run(self, argv, pass_fds=(), timeout=None):
        """(rc, out, err); ``pass_fds`` hands a command open files (/proc/self/fd/N), never a path to swap.
        A command past its deadline is killed with its process group: rc 124, "timed out after N s"."""
        return _command.run(argv, timeout or self.timeout, pass_fds=pass_fds)

    def feed(self, argv, data, timeout=None):
        """(rc, out, err) of a command given ``data`` (bytes) on its stdin. A program that cannot start is
        rc 127, never a fail_json: worker threads call this."""
        return _command.run(argv, timeout or self.timeout, data=data)

    def which(self, name, required=False):
        return self.module.get_bin_path(name, required=required)

    def warn(self, msg):
        self.module.warn(msg)
