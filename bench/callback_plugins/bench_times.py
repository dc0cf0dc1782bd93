# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Seconds per task, for the benchmarks: from a task's start to each result (a loop: its whole run), summed by
"<play>: <task>" into the JSON file BENCH_TIMES_FILE names. Only clocks: ansible-core's junit callback, which the
benches used before, also keeps every result and writes it out at the end (seconds of a 1000-Pi re-run went into
the report a user's run never makes)."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: bench_times
type: aggregate
short_description: seconds per task for the benchmarks (bench/)
description:
  - Writes a JSON mapping of "<play>: <task>" to seconds into the file the BENCH_TIMES_FILE environment variable names.
requirements:
  - enable in the callbacks_enabled setting
"""


def _task_of(result):
    return getattr(result, 'task', None) or result._task  # ansible-core 2.19's result.task; before it, only _task


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'bench_times'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._play, self._started, self._times = '', {}, {}

    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name().strip()

    def _start(self, task):
        self._started[task._uuid] = ('%s: %s' % (self._play, task.get_name().strip()), time.perf_counter())

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._start(task)

    def _finish(self, task):
        if task._uuid in self._started:
            name, started = self._started[task._uuid]
            self._times[name] = self._times.get(name, 0.0) + time.perf_counter() - started

    def v2_runner_on_ok(self, result):
        self._finish(_task_of(result))

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._finish(_task_of(result))

    def v2_runner_on_skipped(self, result):
        self._finish(_task_of(result))

    def v2_runner_on_unreachable(self, result):
        self._finish(_task_of(result))

    def v2_playbook_on_include(self, included_file):
        self._finish(included_file._task)

    def v2_playbook_on_stats(self, stats):
        with open(os.environ['BENCH_TIMES_FILE'], 'w') as out:
            json.dump(self._times, out)
