# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Space on a small data file system: a Pi that fills its own file system never costs another Pi its writes.

Each Pi root here is a 48 MiB ext4 image, a reflink clone on an XFS loop file system of 320 MiB that
also holds the bakeform. With the default overcommit (1.0) pi_root makes as many roots as fit when
every one of them is filled, and refuses the next with the numbers; then Pi A fills its root to the
last block and Pi B still writes and fsyncs all the room it has, and the kernel logs no I/O error on
B's loop device. The control: with overcommit 4 the same file system takes ten roots; the others
fill theirs, and B, inside its own limit, loses its write and its loop device logs I/O errors, which
is what the check exists to prevent.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess

import pytest
from fstree import loop_fs, unmount_below
from modrun import run_module

from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import mount_at
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import Layout
from lab.nfslab import missing_tools
from lab.piimage import build_image

MIB = 1 << 20
MISSING = missing_tools(('mkfs.xfs', 'tune2fs', 'ssh-keygen', 'dmesg'))
pytestmark = pytest.mark.skipif(bool(MISSING), reason='missing %s' % ', '.join(MISSING))


def uptime():
    with open('/proc/uptime', encoding='ascii') as handle:
        return float(handle.read().split()[0])


def mark(text):
    """A line of our own in the kernel log: the proof that the window read back is the right one."""
    with open('/dev/kmsg', 'w', encoding='ascii') as kmsg:
        kmsg.write('pifleet test_space: %s\n' % text)
    return 'pifleet test_space: %s' % text


def dmesg(since):
    """Kernel log lines stamped at ``since`` (uptime seconds) or later: the ring buffer may be full, so lines are
    told apart by their time, not counted."""
    lines = subprocess.run(['dmesg'], capture_output=True, text=True, check=True).stdout.splitlines()
    stamped = [(re.match(r'\[\s*([0-9.]+)\]', line), line) for line in lines]
    return [line for match, line in stamped if match and float(match.group(1)) >= since - 0.5]


def io_errors(lines, device):
    """Kernel lines of I/O errors on ``device`` (loopN), or of ext4 giving up on it."""
    name = os.path.basename(device)
    return [line for line in lines
            if re.search(r'\b%s\b' % name, line) and re.search(r'error|EXT4-fs.*abort', line, re.I)]


def fill(directory, name, limit=None):
    """Write to ``directory/name`` until the file system is full (or ``limit`` bytes), then fsync.

    Returns (bytes written, the errno that stopped a write or the fsync, or None).
    """
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written, error, chunk = 0, None, b'\x5a' * MIB
    try:
        while limit is None or written < limit:
            try:
                written += os.write(fd, chunk[:MIB if limit is None else min(MIB, limit - written)])
            except OSError as exc:
                error = exc.errno
                break
        try:
            os.fsync(fd)
        except OSError as exc:
            error = error if error not in (None, errno.ENOSPC) else exc.errno
            if error == errno.ENOSPC and exc.errno == errno.EIO:
                error = errno.EIO
    finally:
        os.close(fd)
    return written, error


class Bakery:
    def __init__(self, top, image):
        self.top, self.image = top, image
        self.store, self.roots, self.units = top / 'store', top / 'roots', top / 'units'
        self.lock = str(top / 'run' / 'lock')  # a directory of its own: the lock wants it 0700
        result = run_module('bakeform', {'name': 'bw', 'src': str(image), 'store': str(self.store),
                                         'lock_file': self.lock})
        assert result.get('failed') is not True, result

    def roots_call(self, serials, overcommit, **extra):
        return run_module('pi_root', dict({
            'store': str(self.store), 'roots_dir': str(self.roots), 'units_dir': str(self.units), 'bakeform': 'bw',
            'lock_file': self.lock, 'overcommit': overcommit, 'clone_method': 'reflink',
            'pis': [{'serial': serial} for serial in serials]}, **extra))

    def point(self, serial):
        return Layout(str(self.roots), serial).point

    def loop_of(self, serial):
        return mount_at(self.point(serial))[0]

    def close(self, serials):
        self.roots_call(serials, 1.0, pis=[{'serial': s, 'state': 'absent'} for s in serials])
        unmount_below(self.top)


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp('space') / 'pi.img'
    build_image(path, seed=13, models=(4,))
    return path


SERIALS = ['0000005%x' % n for n in range(10, 16)]  # 0000005a .. 0000005f
MANY = ['0000006%x' % n for n in range(10)]


def test_within_the_ratio_a_full_pi_costs_no_other_pi_a_write(tmp_path, image):
    with loop_fs(tmp_path, 'xfs', '320M') as top:
        bk = Bakery(top, image)
        try:
            made = bk.roots_call(SERIALS, 1.0)
            assert made.get('failed'), made
            actions = {pi['serial']: pi['action'] for pi in made['pis']}
            fitted = [s for s in SERIALS if actions[s] == 'cloned']
            refused = [pi for pi in made['pis'] if pi['action'] == 'failed']
            assert len(fitted) >= 2 and refused, made['pis']
            assert all(pi['msg'].startswith('not enough space on %s' % top) for pi in refused), refused
            assert 'overcommit 1 allows' in refused[0]['msg'], refused[0]['msg']
            [fs] = made['filesystems']
            assert fs['committed'] <= fs['limit'] and fs['images'] == len(fitted), fs
            a, b = fitted[0], fitted[1]
            since = uptime()
            marker = mark('A fills its root, then B writes')
            filled_a = fill(bk.point(a), 'filler')
            assert filled_a[1] == errno.ENOSPC and filled_a[0] > 20 * MIB, filled_a  # A's own limit, not the bakery's
            others = [fill(bk.point(s), 'filler') for s in fitted[2:]]
            vfs = os.statvfs(bk.point(b))
            room = vfs.f_bavail * vfs.f_frsize - 2 * MIB
            written, error = fill(bk.point(b), 'mine', room)
            assert (written, error) == (room, None), (written, error, others)
            new = dmesg(since)
            assert any(marker in line for line in new), new[-20:]
            assert io_errors(new, bk.loop_of(b)) == [] and io_errors(new, bk.loop_of(a)) == [], new
            usage = {pi['serial']: pi['usage'] for pi in bk.roots_call(fitted, 1.0)['pis']}
            assert usage[a]['fs_free'] < 2 * MIB and usage[a]['exclusive'] > 20 * MIB, usage[a]
        finally:
            bk.close(SERIALS)


def test_the_control_overcommitted_a_pi_within_its_limit_gets_io_errors(tmp_path, image):
    with loop_fs(tmp_path, 'xfs', '320M') as top:
        bk = Bakery(top, image)
        try:
            made = bk.roots_call(MANY, 4.0)
            assert made.get('failed') is not True and len(made['pis']) == 10, made
            [fs] = made['filesystems']
            assert fs['committed'] > fs['size'] + 100 * MIB, fs  # promised far more than it holds
            b, others = MANY[0], MANY[1:]
            since = uptime()
            marker = mark('the others fill theirs, then B writes')
            for serial in others:
                fill(bk.point(serial), 'filler')
            vfs = os.statvfs(bk.point(b))
            room = vfs.f_bavail * vfs.f_frsize - 2 * MIB
            written, error = fill(bk.point(b), 'mine', room)
            new = dmesg(since)
            assert any(marker in line for line in new), new[-20:]
            assert error in (errno.EIO, errno.ENOSPC), (written, room, error)  # inside B's own limit
            assert io_errors(new, bk.loop_of(b)), new[-30:]
        finally:
            bk.close(MANY)
