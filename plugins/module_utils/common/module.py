# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every pifleet module shares around its AnsibleModule.

- ``PifleetModule``: the module's result, ``fail()``, its items (one, or a list of them: see
  ``expand``), its validation problems (one rule: every problem of the arguments reported at once)
  and its diff entries (``file_diff``).
- ``LOCK_ARGS`` and ``take_lock``: the bakery lock every writing module holds.
- ``ModuleHost``: what the planners of module_utils need of the host (commands, warnings, modes).

The planners themselves (``_<topic>work.py``) never see the AnsibleModule: tests drive them with a
host of their own.
"""

from __future__ import annotations

from ansible_collections.pifleet.netboot.plugins.module_utils.common.lock import DEFAULT_PATH, BakeryLock, LockError

LOCK_ARGS = {
    'lock_file': {'type': 'path', 'default': DEFAULT_PATH},
    'lock_timeout': {'type': 'int', 'default': 3600},
}
LANG_C = {'LANG': 'C', 'LC_ALL': 'C'}  # for commands whose output is parsed
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


def printable(text):
    """``text`` safe to show on a terminal: every character that is not printable (but newlines and tabs) as an
    escape (``\\x1b``, ``\\u202e``); bytes that were not UTF-8 (surrogateescape) as ``\\xNN``.

    Files a Pi wrote reach ``--diff`` output this way, so they cannot move the cursor, retitle the terminal
    or hide lines. A backslash stays as it is (fstab writes a space as ``\\040``): this is for the eye only.
    """
    if text is None:
        return None
    out = []
    for char in text:
        code = ord(char)
        if char in '\n\t' or char.isprintable():
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
            out.append('\\x%02x' % (code - 0xDC00))
        elif code < 0x100:
            out.append('\\x%02x' % code)
        else:
            out.append('\\u%04x' % code if code < 0x10000 else '\\U%08x' % code)
    return ''.join(out)


def file_diff(header, before, after, after_header=None):
    """One entry of a module's diff: a file's text (None: no file) before and after."""
    return {'before': '' if before is None else before, 'after': '' if after is None else after,
            'before_header': header, 'after_header': after_header or header}


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

    def __init__(self, module):
        self.module = module
        self.check_mode = module.check_mode
        self.diff = module._diff

    @property
    def tmpdir(self):
        return self.module.tmpdir  # made on first use only

    def run(self, argv, pass_fds=()):
        """(rc, out, err); ``pass_fds`` hands a command open files (/proc/self/fd/N), never a path to swap."""
        return self.module.run_command(argv, environ_update=LANG_C,
                                       pass_fds=list(pass_fds) or None)

    def feed(self, argv, data):
        """(rc, out, err) of a command given ``data`` (bytes) on its stdin. A program that cannot start is
        rc 127, never a fail_json: worker threads call this."""
        try:
            return self.module.run_command(argv, data=data, binary_data=True, environ_update=LANG_C,
                                           handle_exceptions=False)
        except OSError as exc:
            return 127, '', str(exc)

    def which(self, name, required=False):
        return self.module.get_bin_path(name, required=required)

    def warn(self, msg):
        self.module.warn(msg)
