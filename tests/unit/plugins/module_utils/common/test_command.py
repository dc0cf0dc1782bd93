# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every tool runs with a deadline: a hung one is killed with everything it started, and says so."""

from __future__ import annotations

import os
import sys
import threading
import time

from ansible_collections.pifleet.netboot.plugins.module_utils.common import command
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import ModuleHost

# A tool that hangs, with a child of its own that hangs too (a helper mke2fs or ssh-keygen might start).
HANG = ('import os, subprocess, sys, time\n'
        'child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])\n'
        'open(sys.argv[1], "w").write(str(child.pid))\n'
        'sys.stderr.write("working on it\\n"); sys.stderr.flush()\n'
        'time.sleep(600)\n')


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open('/proc/%d/stat' % pid, encoding='ascii') as handle:
        return handle.read().split(') ', 1)[1][0] != 'Z'


def test_a_tool_within_its_deadline_answers_as_ever():
    assert command.run([sys.executable, '-c', 'import sys, os; print(os.environ["LC_ALL"]); '
                        'sys.stderr.write("e"); sys.exit(3)'], 10) == (3, 'C\n', 'e')
    assert command.run([sys.executable, '-c', 'import sys; print(sys.stdin.read()[::-1])'], 10, data=b'abc') == (
        0, 'cba\n', '')


def test_a_hung_tool_is_killed_with_its_children_and_says_timed_out(tmp_path):
    started = time.monotonic()
    rc, out, err = command.run([sys.executable, '-c', HANG, str(tmp_path / 'child')], 1)
    took = time.monotonic() - started
    assert rc == command.TIMED_OUT and out == ''
    assert err.startswith('timed out after 1 s: python') and err.endswith('it had said: working on it'), err
    assert took < 8, took
    child = int((tmp_path / 'child').read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)  # the whole process group went


def test_a_tool_that_cannot_start_is_rc_127_not_an_exception(tmp_path):
    rc, out, err = command.run([str(tmp_path / 'no-such-tool')], 5)
    assert rc == 127 and out == '' and 'No such file' in err


def test_threads_each_get_their_own_deadline(tmp_path):
    """ssh-keygen runs on a thread pool: one hung key costs its own Pi only."""
    results = {}

    def work(name, argv, timeout):
        results[name] = command.run(argv, timeout)

    threads = [threading.Thread(target=work, args=('hung', [sys.executable, '-c', HANG, str(tmp_path / 'c')], 1)),
               threading.Thread(target=work, args=('fine', [sys.executable, '-c', 'print("ok")'], 30))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results['fine'] == (0, 'ok\n', '') and results['hung'][0] == command.TIMED_OUT


class FakeModule:
    check_mode = False
    _diff = False

    def __init__(self, timeout):
        self.params = {'command_timeout': timeout}


def test_the_module_host_gives_every_command_the_modules_timeout(tmp_path):
    host = ModuleHost(FakeModule(1))
    assert host.timeout == 1
    rc, _out, err = host.run([sys.executable, '-c', HANG, str(tmp_path / 'c')])
    assert rc == command.TIMED_OUT and 'timed out after 1 s' in err
    with open(tmp_path / 'f', 'w') as handle:  # pass_fds as before: the tool gets the open file
        handle.write('through the fd')
    with open(tmp_path / 'f', 'rb') as handle:
        rc, out, _err = host.run(['cat', '/proc/self/fd/%d' % handle.fileno()], pass_fds=(handle.fileno(),))
    assert (rc, out) == (0, 'through the fd')
    assert ModuleHost(FakeModule(None)).timeout == command.DEFAULT_TIMEOUT
