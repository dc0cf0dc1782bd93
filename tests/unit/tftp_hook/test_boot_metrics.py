# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot watcher's textfile line by line for a known input (boot times, retransmits, the Pis' and the data
file systems), and how it is written: whole or not at all, nothing left beside it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from bootwatch import load

T0 = 1_800_000_000.0
GIB = 2 ** 30


@pytest.fixture
def program(tmp_path):
    return load(tmp_path / 'lib')


def pi(name, serial):
    return {'name': name, 'prefixes': [], 'macs': [], 'marker': None, 'serial': serial}


def retransmitted(count, outcome='ok'):
    return {'kind': 'tftp', 'outcome': outcome, 'bytes': 1000, 'retransmits': count}


def test_each_family_has_its_lines_for_a_known_input(program, tmp_path, monkeypatch):
    """pi-01 ran (every time known), pi-02 is at DHCP (no TFTP, no running time: no such lines), pi-03's mount point
    is there with nothing mounted on it (no lines: its folder's file system is not its root's); store and roots
    share a file system (one line), the disks' folder is not there (none)."""
    config = {'store': str(tmp_path / 'store'), 'roots_dir': str(tmp_path / 'roots'),
              'disks_dir': str(tmp_path / 'disks')}
    (tmp_path / 'store').mkdir()
    os.makedirs(program.boot_metrics.mount_point(config['roots_dir'], '00c0ffe3'))
    mounted = {program.boot_metrics.mount_point(config['roots_dir'], '1234abcd'): (8 * GIB, 6 * GIB),
               program.boot_metrics.mount_point(config['disks_dir'], '1234abcd'): (GIB, 1000 * 2 ** 20)}

    def usage(path):
        """As statvfs answers: a mounted Pi's file system its own size, any other folder its file system's."""
        size, avail = mounted.get(path) or ((500 * GIB, 400 * GIB) if os.path.exists(path) else (None, None))
        return {'size': size, 'avail': avail} if size else None

    monkeypatch.setattr(os.path, 'ismount', lambda path: str(path) in mounted)
    monkeypatch.setattr(program.bootlogs, 'usage', usage)
    state = program.fresh_state()
    program.count_records(state, 'pi-01', [retransmitted(3), retransmitted(4, 'timeout'), retransmitted(0)])
    summaries = {
        'pi-01': {'start': T0, 'stage': 'running', 'state': 'running',
                  'seconds': {'dhcp_to_tftp': 45.0, 'tftp': 6.5, 'to_running': 61.25}},
        'pi-02': {'start': T0 + 0.4567, 'stage': 'dhcp', 'state': 'booting',
                  'seconds': {'dhcp_to_tftp': None, 'tftp': None, 'to_running': None}}}
    pis = {'pi-01': pi('pi-01', '1234abcd'), 'pi-02': pi('pi-02', None), 'pi-03': pi('pi-03', '00c0ffe3')}
    text = program.boot_metrics.render(state, pis, summaries, config=config, now=T0 + 100, sources={'tftp': True})
    store = config['store']
    expected = '''\
# HELP pifleet_boot_last_start_timestamp_seconds When the last boot of each Pi started.
# TYPE pifleet_boot_last_start_timestamp_seconds gauge
pifleet_boot_last_start_timestamp_seconds{pi="pi-01"} 1800000000.0
pifleet_boot_last_start_timestamp_seconds{pi="pi-02"} 1800000000.457
# HELP pifleet_boot_last_tftp_seconds Seconds from the first TFTP request to the last file, last boot.
# TYPE pifleet_boot_last_tftp_seconds gauge
pifleet_boot_last_tftp_seconds{pi="pi-01"} 6.5
# HELP pifleet_boot_last_dhcp_to_tftp_seconds Seconds from the DHCP answer to the first TFTP request.
# TYPE pifleet_boot_last_dhcp_to_tftp_seconds gauge
pifleet_boot_last_dhcp_to_tftp_seconds{pi="pi-01"} 45.0
# HELP pifleet_boot_last_running_seconds Seconds from the start of the last boot to running.
# TYPE pifleet_boot_last_running_seconds gauge
pifleet_boot_last_running_seconds{pi="pi-01"} 61.25
# HELP pifleet_tftp_bytes_total Bytes of boot files served to each Pi.
# TYPE pifleet_tftp_bytes_total counter
pifleet_tftp_bytes_total{pi="pi-01"} 2000
pifleet_tftp_bytes_total{pi="pi-02"} 0
pifleet_tftp_bytes_total{pi="pi-03"} 0
# HELP pifleet_tftp_retransmits_total TFTP packets sent again to each Pi.
# TYPE pifleet_tftp_retransmits_total counter
pifleet_tftp_retransmits_total{pi="pi-01"} 7
pifleet_tftp_retransmits_total{pi="pi-02"} 0
pifleet_tftp_retransmits_total{pi="pi-03"} 0
'''
    assert expected in text, text
    expected = f'''\
# HELP pifleet_pi_filesystem_size_bytes Size of each Pi's file systems, as mounted on the bakery.
# TYPE pifleet_pi_filesystem_size_bytes gauge
pifleet_pi_filesystem_size_bytes{{fs="root",pi="pi-01"}} {8 * GIB}
pifleet_pi_filesystem_size_bytes{{fs="disks",pi="pi-01"}} {GIB}
# HELP pifleet_pi_filesystem_avail_bytes Bytes available in each Pi's file systems.
# TYPE pifleet_pi_filesystem_avail_bytes gauge
pifleet_pi_filesystem_avail_bytes{{fs="root",pi="pi-01"}} {6 * GIB}
pifleet_pi_filesystem_avail_bytes{{fs="disks",pi="pi-01"}} {1000 * 2 ** 20}
# HELP pifleet_data_filesystem_size_bytes Size of the file systems holding the store, roots and disks.
# TYPE pifleet_data_filesystem_size_bytes gauge
pifleet_data_filesystem_size_bytes{{path="{store}"}} {500 * GIB}
# HELP pifleet_data_filesystem_avail_bytes Bytes available on them.
# TYPE pifleet_data_filesystem_avail_bytes gauge
pifleet_data_filesystem_avail_bytes{{path="{store}"}} {400 * GIB}
'''
    assert expected in text, text
    assert [line for line in text.splitlines() if line.startswith('pifleet_pi_') and 'pi-03' in line] == []


def written(directory):
    """{name: (inode, mode, text)} of the files in ``directory``, hidden ones too."""
    found = {}
    for name in os.listdir(directory):
        st = os.stat(os.path.join(directory, name))
        with open(os.path.join(directory, name), encoding='utf-8') as handle:
            found[name] = (st.st_ino, stat.S_IMODE(st.st_mode), handle.read())
    return found


def test_the_textfile_is_replaced_whole(program, tmp_path, monkeypatch):
    """A new file renamed over the old one: up to the rename the path holds the old text and the new file is
    complete; a reader that opened the old file reads it whole; mode 0644 under any umask; nothing left beside it."""
    target = tmp_path / 'textfile' / 'pifleet.prom'
    # The new text is smaller than a file's write buffer: renamed before it is closed, the new file would be empty.
    old, new = 'pifleet_old 1\n' * 5000, 'pifleet_new 2\n' * 300
    program.write_atomically(str(target), old)
    before = written(target.parent)
    assert sorted(before) == ['pifleet.prom'], before
    inode = before['pifleet.prom'][0]
    seen = []
    replace = os.replace

    def watched(source, destination):
        seen.append((target.read_text(), Path(source).read_text()))
        replace(source, destination)

    monkeypatch.setattr(os, 'replace', watched)
    umask = os.umask(0o077)
    try:
        with open(target, encoding='utf-8') as reader:
            program.write_atomically(str(target), new)
            assert reader.read() == old
    finally:
        os.umask(umask)
    assert seen == [(old, new)]
    assert written(target.parent) == {'pifleet.prom': (os.stat(target).st_ino, 0o644, new)}
    assert os.stat(target).st_ino != inode


# Run in a process of its own: a file size limit makes the write fail part-way, as a full disk does.
FAILING_WRITE = '''
import errno, resource, signal, sys
sys.path.insert(0, sys.argv[1])
import pifleet_boot_watch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    pifleet_boot_watch.write_atomically(sys.argv[2], 'pifleet_new 2\\n' * 100000)
except OSError as exc:
    sys.exit(errno.errorcode[exc.errno])
'''


def test_a_write_that_fails_part_way_leaves_the_old_file_whole_and_nothing_beside_it(program, tmp_path):
    """The new file fails after its first 64 KiB (a file size limit: EFBIG, as a full disk fails with ENOSPC): the
    old file keeps its inode, mode and text, and the new one is gone."""
    target = tmp_path / 'textfile' / 'pifleet.prom'
    program.write_atomically(str(target), 'pifleet_old 1\n' * 100)
    before = written(target.parent)
    proc = subprocess.run([sys.executable, '-I', '-c', FAILING_WRITE, os.path.dirname(program.__file__), str(target)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == 'EFBIG', proc.stderr
    assert written(target.parent) == before
