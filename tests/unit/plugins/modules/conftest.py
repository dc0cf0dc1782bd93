# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module's main() in-process: exit_json/fail_json raise instead of exiting."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils import _internal, basic
from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args


class ModuleExit(Exception):
    def __init__(self, result, failed):
        super().__init__(json.dumps(result, default=str))
        self.result = result
        self.failed = failed


@pytest.fixture
def run_module(monkeypatch):
    # Like the real ones, they report the warnings the module issued (module.warn()).
    def exit_json(self, **kwargs):
        kwargs.setdefault('changed', False)
        kwargs['warnings'] = list(warnings.get_warning_messages())
        raise ModuleExit(kwargs, failed=False)

    def fail_json(self, msg, **kwargs):
        kwargs['msg'] = msg
        kwargs['warnings'] = list(warnings.get_warning_messages())
        raise ModuleExit(kwargs, failed=True)

    # Importing any controller code (a filter or inventory plugin test ran first) flips the process
    # into controller mode, where module warnings go to Display instead of the result: undo that.
    monkeypatch.setattr(_internal, 'is_controller', False)
    monkeypatch.setattr(basic.AnsibleModule, 'exit_json', exit_json)
    monkeypatch.setattr(basic.AnsibleModule, 'fail_json', fail_json)

    def run(main, args, check_mode=False, diff=False):
        args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
        warnings._global_warnings.clear()  # warnings are per run, as in a real module process
        with patch_module_args(args), pytest.raises(ModuleExit) as info:
            main()
        return info.value

    return run
