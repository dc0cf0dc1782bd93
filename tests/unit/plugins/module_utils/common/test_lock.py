# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bakery lock between two real processes: the second waits, says so naming the holder, or times out."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common.lock import DEFAULT_PATH, BakeryLock, LockError
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import take_lock

HOLDER = (
    'import sys\n'
    'from ansible_collections.pifleet.netboot.plugins.module_utils.common.lock import BakeryLock\n'
    'with BakeryLock(sys.argv[1], sys.argv[2], timeout=30, poll=0.05):\n'
    '    print("held", flush=True)\n'
    '    sys.stdin.read()\n'  # until the test closes our stdin
)


@pytest.fixture
def holder(tmp_path):
    """Start another process that holds the lock as 'pi_root' until ``release()``; yields (proc, path)."""
    path = str(tmp_path / 'run' / 'pifleet.lock')
    proc = subprocess.Popen([sys.executable, '-c', HOLDER, path, 'pi_root'], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == 'held\n'
        yield proc, path
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_free_lock_is_taken_without_a_message(tmp_path):
    path = tmp_path / 'deep' / 'pifleet.lock'
    with BakeryLock(str(path), 'bakeform bw') as lock:
        assert lock.waited == 0.0 and lock.message() is None
        assert path.read_text() == 'pid %d, bakeform bw\n' % os.getpid()
        assert path.stat().st_mode & 0o777 == 0o600
    with BakeryLock(str(path), 'pi_root') as again:  # released on exit: taken again at once
        assert again.message() is None
        assert path.read_text() == 'pid %d, pi_root\n' % os.getpid()  # the holder line is replaced, not appended


def test_the_second_process_times_out_naming_the_holder(holder):
    proc, path = holder
    with pytest.raises(LockError) as info:
        BakeryLock(path, 'nfs_export', timeout=0.5, poll=0.05).acquire()
    msg = str(info.value)
    assert 'another pifleet run (pid %d, pi_root) has held the bakery lock %s' % (proc.pid, path) in msg
    assert 'raise lock_timeout' in msg
    assert proc.poll() is None  # the holder still runs and still holds it


def test_the_second_process_waits_then_says_who_it_waited_for(holder):
    proc, path = holder
    lock = BakeryLock(path, 'nfs_export', timeout=30, poll=0.05)
    released = threading.Timer(0.5, proc.stdin.close)
    released.start()
    try:
        lock.acquire()
    finally:
        released.cancel()
    try:
        assert proc.wait(timeout=30) == 0
        assert lock.waited > 0
        assert lock.message() == ('waited %.1f s for the bakery lock %s held by another pifleet run (pid %d, pi_root)'
                                  % (lock.waited, path, proc.pid))
        with open(path, encoding='utf-8') as handle:
            assert handle.read() == 'pid %d, nfs_export\n' % os.getpid()  # now we are the holder others see
    finally:
        lock.release()


def test_a_lock_file_that_is_a_symlink_is_refused(tmp_path):
    target = tmp_path / 'elsewhere'
    target.write_text('precious\n')
    os.symlink(str(target), tmp_path / 'pifleet.lock')
    with pytest.raises(LockError) as info:
        BakeryLock(str(tmp_path / 'pifleet.lock'), 'pi_root').acquire()
    assert str(info.value) == ('the bakery lock %s cannot be opened: a symbolic link; remove it (pifleet makes it '
                               'again) and run again' % (tmp_path / 'pifleet.lock'))
    assert target.read_text() == 'precious\n'


def test_the_default_lock_is_in_a_directory_of_its_own_only_root_can_use():
    """Not /run/lock (1777): there any local user could make the file first and hold it."""
    assert DEFAULT_PATH == '/run/pifleet/pifleet.lock'


def test_a_new_lock_directory_is_made_private(tmp_path):
    path = tmp_path / 'run' / 'pifleet' / 'pifleet.lock'
    with BakeryLock(str(path), 'pi_boot'):
        assert path.parent.stat().st_mode & 0o7777 == 0o700 and path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize('mode', [0o755, 0o1777, 0o770, 0o701])
def test_a_lock_directory_others_can_use_is_refused_saying_what_to_do(tmp_path, mode):
    directory = tmp_path / 'pifleet'
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(LockError) as info:
        BakeryLock(str(directory / 'pifleet.lock'), 'pi_root').acquire()
    assert str(info.value) == (
        "the bakery lock's directory %s is owned by uid %d with mode %04o; pifleet wants it owned by uid %d (the user "
        'the modules run as, root on a bakery) with mode 0700, so that no other user can take or hold the lock and '
        'stop every pifleet module. Check who made it, then remove it (pifleet makes it again) or run: chown %d %s '
        '&& chmod 0700 %s' % (directory, os.geteuid(), mode, os.geteuid(), os.geteuid(), directory, directory))
    assert os.listdir(directory) == []  # nothing made in it


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to give the directory to another user')
def test_a_lock_directory_of_another_user_is_refused(tmp_path):
    directory = tmp_path / 'pifleet'
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)  # nobody made it first
    with pytest.raises(LockError) as info:
        BakeryLock(str(directory / 'pifleet.lock'), 'pi_root').acquire()
    assert 'is owned by uid 65534 with mode 0700' in str(info.value)


def test_a_lock_directory_that_is_a_symlink_is_refused(tmp_path):
    real = tmp_path / 'real'
    real.mkdir(mode=0o700)
    os.symlink(str(real), tmp_path / 'pifleet')
    with pytest.raises(LockError) as info:
        BakeryLock(str(tmp_path / 'pifleet' / 'pifleet.lock'), 'pi_root').acquire()
    assert "the bakery lock's directory %s is a symbolic link or not a directory" % (tmp_path / 'pifleet') in str(
        info.value)
    assert os.listdir(real) == []


def test_a_lock_that_is_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / 'pifleet.lock')  # would block a plain open() for ever
    with pytest.raises(LockError) as info:
        BakeryLock(str(tmp_path / 'pifleet.lock'), 'pi_root', timeout=1).acquire()
    assert 'is not a regular file' in str(info.value)


class FakeModule:
    """What take_lock uses of an AnsibleModule; fail_json raises like the real one exits."""

    def __init__(self, path, check_mode=False, timeout=3600):
        self.params = {'lock_file': path, 'lock_timeout': timeout}
        self.check_mode = check_mode
        self.warnings = []

    def warn(self, msg):
        self.warnings.append(msg)

    def fail_json(self, **kwargs):
        raise AssertionError(kwargs)


def test_take_lock_is_skipped_in_check_mode(tmp_path):
    assert take_lock(FakeModule(str(tmp_path / 'pifleet.lock'), check_mode=True), 'pi_root') is None
    assert not (tmp_path / 'pifleet.lock').exists()


def test_take_lock_warns_and_records_the_wait(holder):
    proc, path = holder
    module, result = FakeModule(path, timeout=30), {'changed': False}
    threading.Timer(0.3, proc.stdin.close).start()
    lock = take_lock(module, 'pi_disk', result)
    try:
        assert result['lock_waited'] == lock.waited > 0
        assert module.warnings == [lock.message()] and '(pid %d, pi_root)' % proc.pid in module.warnings[0]
    finally:
        lock.release()


def test_take_lock_fails_with_a_message_not_a_traceback(tmp_path):
    (tmp_path / 'pifleet').mkdir(mode=0o777)
    (tmp_path / 'pifleet').chmod(0o777)
    with pytest.raises(AssertionError) as info:
        take_lock(FakeModule(str(tmp_path / 'pifleet' / 'x.lock')), 'pi_boot', {'changed': False})
    failed = info.value.args[0]
    assert failed['changed'] is False and "the bakery lock's directory" in failed['msg']


def test_take_lock_fails_with_changed_false_naming_the_holder(holder):
    proc, path = holder
    with pytest.raises(AssertionError) as info:
        take_lock(FakeModule(path, timeout=0), 'pi_disk', {'changed': True, 'pis': []})
    failed = info.value.args[0]
    assert failed['changed'] is False and failed['pis'] == []
    assert '(pid %d, pi_root)' % proc.pid in failed['msg']
