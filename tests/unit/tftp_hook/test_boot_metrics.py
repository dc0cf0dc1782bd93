# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot watcher's textfile line by line for a known input (boot times, retransmits, the Pis' and the data
file systems)."""

from __future__ import annotations

import os

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

