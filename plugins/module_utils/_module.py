# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every pifleet module shares around its AnsibleModule: the lock options and taking the lock."""

from __future__ import annotations

from ansible_collections.pifleet.netboot.plugins.module_utils._lock import DEFAULT_PATH, BakeryLock, LockError

LOCK_ARGS = {
    'lock_file': {'type': 'path', 'default': DEFAULT_PATH},
    'lock_timeout': {'type': 'int', 'default': 3600},
}


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
        self.tmpdir = module.tmpdir

    def run(self, argv, pass_fds=()):
        """(rc, out, err); ``pass_fds`` hands a command open files (/proc/self/fd/N), never a path to swap."""
        return self.module.run_command(argv, environ_update={'LANG': 'C', 'LC_ALL': 'C'},
                                       pass_fds=list(pass_fds) or None)

    def which(self, name, required=False):
        return self.module.get_bin_path(name, required=required)

    def warn(self, msg):
        self.module.warn(msg)
