# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot watcher as the tftp_hook role installs it: its program and the collection's bootlogs.py,
timeline.py and generations.py (with atomic.py and identity.py), side by side in one directory (tests, the lab)."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

COLLECTION = Path(__file__).resolve().parents[2]
FILES = {'pifleet_boot_watch.py': COLLECTION / 'roles' / 'tftp_hook' / 'files' / 'pifleet_boot_watch.py',
         'boot_metrics.py': COLLECTION / 'roles' / 'tftp_hook' / 'files' / 'boot_metrics.py',
         'bootlogs.py': COLLECTION / 'plugins' / 'module_utils' / 'fleet' / 'bootlogs.py',
         'timeline.py': COLLECTION / 'plugins' / 'module_utils' / 'fleet' / 'timeline.py',
         'generations.py': COLLECTION / 'plugins' / 'module_utils' / 'store' / 'generations.py',
         'atomic.py': COLLECTION / 'plugins' / 'module_utils' / 'common' / 'atomic.py',
         'identity.py': COLLECTION / 'plugins' / 'module_utils' / 'common' / 'identity.py'}


def install(directory):
    """Copy the watcher's files into ``directory``; the path of its program."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in FILES.items():
        shutil.copyfile(source, directory / name)
    return directory / 'pifleet_boot_watch.py'


def load(directory):
    """The installed program as a module (its own directory first on the path, as it runs)."""
    program = install(directory)
    sys.path.insert(0, str(program.parent))
    try:
        for name in ('pifleet_boot_watch', 'boot_metrics', 'bootlogs', 'timeline'):
            sys.modules.pop(name, None)
        return importlib.import_module('pifleet_boot_watch')
    finally:
        sys.path.remove(str(program.parent))
