# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Table-driven tests of the boot timeline: records -> boots -> stage, times, hint."""

from __future__ import annotations

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import timeline as tl

T0 = 1_800_000_000.0
MAC = 'dc:a6:32:ff:ee:04'


def dhcp(at, mac=MAC):
    return {'kind': 'dhcp', 'time': T0 + at, 'mac': mac, 'answer': 'proxy', 'vendor_class': 'PXEClient:Arch:00000',
            'client_id': None}


def tftp(at, path, outcome='ok', *, prefix='1234abcd', client='10.99.0.51', size=1000, duration=0.2, retransmits=0):
    return {'kind': 'tftp', 'time': T0 + at, 'client': client, 'prefix': prefix, 'path': path, 'outcome': outcome,
            'bytes': size if outcome == 'ok' else 0, 'duration': duration, 'retransmits': retransmits, 'error': None}


PI4_SET = [tftp(1, 'start4.elf', 'probe'), tftp(1.5, 'config.txt'), tftp(2, 'start4.elf', size=2_000_000),
           tftp(3, 'cmdline.txt'), tftp(3.5, 'kernel8.img', size=8_000_000, duration=4)]
GOOD_NFS = {'used': True, 'last': T0 + 30, 'refused': False}


def boot_of(*records):
    return sorted(records, key=lambda r: r['time'])


@pytest.mark.parametrize('case, records, now, observed, expected', [
    ('good boot', [dhcp(0), *PI4_SET], 90, {'nfs': GOOD_NFS, 'ssh': {'checked': T0 + 60, 'verdict': 'yes'}},
     {'state': 'running', 'stage': 'running', 'stalled_at': None, 'up': 'yes'}),
    ('good boot, keys not recorded', [dhcp(0), *PI4_SET], 90,
     {'nfs': GOOD_NFS, 'ssh': {'checked': T0 + 60, 'verdict': 'unverified'}},
     {'state': 'running', 'stage': 'running', 'up': 'unverified'}),
    ('root export missing', [dhcp(0), *PI4_SET], 7.5 + 181,
     {'nfs': {'used': False, 'last': None, 'refused': True}, 'ssh': {'checked': T0 + 187, 'verdict': 'no'}},
     {'state': 'stalled', 'stage': 'tftp', 'stalled_at': 'nfs'}),
    ('mounting, still in time', [dhcp(0), *PI4_SET], 7.5 + 180,
     {'nfs': None, 'ssh': {'checked': T0 + 186, 'verdict': 'no'}},
     {'state': 'booting', 'stage': 'tftp', 'stalled_at': None}),
    ('never past DHCP', [dhcp(0), dhcp(4), dhcp(12)], 12 + 61, {},
     {'state': 'stalled', 'stage': 'dhcp', 'stalled_at': 'dhcp'}),
    ('DHCP just answered', [dhcp(0)], 30, {}, {'state': 'booting', 'stage': 'dhcp'}),
    ('a file is missing', [dhcp(0), tftp(1, 'start4.elf', 'probe'), tftp(2, 'config.txt'),
                           tftp(3, 'kernel8.img', 'not_found')], 200, {},
     {'state': 'stalled', 'stage': 'tftp', 'stalled_at': 'tftp'}),
    ('no DHCP seen, TFTP only', PI4_SET, 20, {'nfs': GOOD_NFS | {'last': T0 + 12}},
     {'state': 'booting', 'stage': 'nfs', 'stalled_at': None}),
    ('mounted, SSH silent', [dhcp(0), *PI4_SET], 30 + 301, {'nfs': GOOD_NFS, 'ssh': {'checked': T0, 'verdict': 'no'}},
     {'state': 'stalled', 'stage': 'nfs', 'stalled_at': 'running'}),
    ('someone else answers', [dhcp(0), *PI4_SET], 30 + 301,
     {'nfs': GOOD_NFS, 'ssh': {'checked': T0 + 330, 'verdict': 'wrong key'}},
     {'state': 'stalled', 'stage': 'nfs', 'stalled_at': 'running', 'up': 'wrong key'}),
    ('ran, off now', [dhcp(0), *PI4_SET], 9000, {'nfs': GOOD_NFS | {'last': T0 + 5000}, 'ssh': {'verdict': 'no'}},
     {'state': 'ended', 'stage': 'nfs', 'stalled_at': None}),
    ('an old boot that got its kernel', [dhcp(0), *PI4_SET], 9000, None, {'state': 'ended', 'hint': None}),
    ('NFS server says nothing, in time', [dhcp(0), *PI4_SET], 7.5 + 400,
     {'nfs_observable': False, 'ssh': {'checked': T0 + 400, 'verdict': 'no'}},
     {'state': 'booting', 'stage': 'tftp'}),
    ('NFS server says nothing, too long', [dhcp(0), *PI4_SET], 7.5 + 481,
     {'nfs_observable': False, 'ssh': {'checked': T0 + 480, 'verdict': 'no'}},
     {'state': 'stalled', 'stage': 'tftp', 'stalled_at': 'nfs'}),
    ('an old boot (a later one took over)', [dhcp(0), *PI4_SET], 9000, None,
     {'state': 'ended', 'stage': 'tftp', 'up': None}),
    ('an old boot that never got its kernel', [dhcp(0), tftp(1, 'config.txt')], 9000, None,
     {'state': 'stalled', 'stalled_at': 'tftp'}),
    ('watched boot', [dhcp(0), *PI4_SET], 100, {'seen': {'nfs': T0 + 20, 'running': T0 + 41},
                                                'ssh': {'checked': T0 + 100, 'verdict': 'no'}},
     {'state': 'running', 'stage': 'running'}),
])
def test_summarise(case, records, now, observed, expected):
    summary = tl.summarise(boot_of(*records), T0 + now, observed=observed)
    assert {key: summary[key] for key in expected} == expected, case
    if summary['state'] == 'stalled':
        assert summary['hint'], case
    elif summary['state'] in ('running', 'booting'):
        assert summary['hint'] is None, (case, summary['hint'])


def test_good_boot_times():
    summary = tl.summarise(boot_of(dhcp(0), *PI4_SET), T0 + 90, observed={
        'nfs': GOOD_NFS, 'ssh': {'checked': T0 + 60, 'verdict': 'yes'}, 'seen': {'nfs': T0 + 20, 'running': T0 + 45}})
    assert summary['times'] == {'dhcp': T0, 'tftp': T0 + 1, 'kernel': T0 + 7.5, 'tftp_done': T0 + 7.5,
                                'nfs': T0 + 20, 'nfs_last': T0 + 30, 'running': T0 + 45}
    assert summary['seconds'] == {'dhcp_to_tftp': 1, 'tftp': 6.5, 'to_running': 45}
    assert summary['tftp'] == {'requests': 5, 'files': 4, 'bytes': 10_002_000, 'retransmits': 0, 'errors': 0,
                               'refusals': 0, 'last_file': 'kernel8.img', 'last_outcome': 'ok', 'last_error': None,
                               'client': '10.99.0.51', 'kernel': 'kernel8.img'}
    assert summary['dhcp']['answers'] == 1 and summary['dhcp']['mac'] == MAC and summary['note'] is None


@pytest.mark.parametrize('records, now, observed, words', [
    ([dhcp(0), *PI4_SET], 188.5, {'nfs': {'used': False, 'refused': True}},
     'fetched its kernel 3 minutes ago and never mounted its root (the NFS server refused its mount): check the '
     'export and `nfsroot=` in cmdline.txt'),
    ([dhcp(0)], 61, {}, 'asked for DHCP 61 s ago (1 answer from our proxy) and never asked for a boot file'),
    ([dhcp(0), tftp(1, 'config.txt'), tftp(3, 'kernel8.img', 'not_found')], 3600, {},
     'asked for kernel8.img 59 minutes ago, which is not in its boot folder'),
    ([dhcp(0), tftp(1, 'kernel8.img', 'timeout', retransmits=5)], 7300, {},
     'stopped during kernel8.img 2 hours ago (timeout, 5 retransmits)'),
    ([dhcp(0), *PI4_SET], 30 + 400, {'nfs': GOOD_NFS, 'ssh': {'verdict': 'no'}},
     'mounted its root 6 minutes ago and its SSH server never answered'),
    ([dhcp(0), *PI4_SET], 7.5 + 5 * 86400, {'nfs_observable': False},
     'fetched its kernel 5 days ago and its SSH server never answered; the NFS server in use does not say'),
])
def test_hints(records, now, observed, words):
    assert words in tl.summarise(boot_of(*records), T0 + now, observed=observed)['hint']


def test_spanning_tree_shows_as_a_note():
    summary = tl.summarise(boot_of(dhcp(0), dhcp(10), dhcp(40), *[dict(r, time=r['time'] + 44) for r in PI4_SET]),
                           T0 + 60, observed={})
    assert summary['seconds']['dhcp_to_tftp'] == 45 and summary['dhcp']['answers'] == 3
    assert summary['note'].startswith('45 s between its first DHCP answer and its first TFTP request (3 DHCP '
                                      'answers): a switch port that waits for spanning tree')


def test_segment():
    pi3 = [dhcp(0, 'b8:27:eb:c0:ff:e3'), tftp(1, 'bootcode.bin', prefix=''), dhcp(3, 'b8:27:eb:c0:ff:e3'),
           tftp(4, 'start.elf', 'probe', prefix='00c0ffe3'), tftp(5, 'kernel8.img', prefix='00c0ffe3')]
    again = [dhcp(100, 'b8:27:eb:c0:ff:e3'), tftp(101, 'bootcode.bin', prefix='')]
    later = [tftp(101 + 121, 'config.txt', prefix='00c0ffe3')]  # no DHCP seen: a quiet gap starts it
    boots = tl.segment(pi3 + again + later)
    assert [len(boot) for boot in boots] == [5, 2, 1]
    # A long transfer keeps its boot open: the gap counts from the end of the last record.
    long = [tftp(0, 'kernel8.img', duration=200), tftp(250, 'initramfs8')]
    assert [len(boot) for boot in tl.segment(long)] == [2]
    # What the boot watcher kept of a boot (its first and last records) stays one boot, gaps or not.
    kept = [tftp(0, 'start4.elf'), tftp(500, 'overlays/x.dtbo'), tftp(520, 'config.txt')]
    assert [len(boot) for boot in tl.segment(kept, joined=2)] == [3]
    assert [len(boot) for boot in tl.segment(kept)] == [1, 2]


def test_attribute():
    pis = [{'name': 'pi-03', 'prefixes': ['00c0ffe3'], 'macs': ['b8:27:eb:c0:ff:e3'], 'address': '10.99.0.50'},
           {'name': 'pi-05', 'prefixes': ['2c-cf-67-ff-ee-05'], 'macs': ['2c:cf:67:ff:ee:05'], 'address': None},
           {'name': 'pi-09', 'prefixes': ['0000abcd'], 'macs': [], 'address': '10.99.0.59'}]
    records_dhcp = [dhcp(0, 'b8:27:eb:c0:ff:e3'), dhcp(1, '02:00:00:00:00:01')]
    records_tftp = [tftp(1, 'bootcode.bin', prefix='', client='10.99.0.50'),
                    tftp(2, 'start.elf', prefix='00C0FFE3', client='10.99.0.50'),
                    tftp(3, 'config.txt', prefix='2C-CF-67-FF-EE-05', client='10.99.0.52'),
                    tftp(4, 'bootcode.bin', prefix='', client='10.99.0.59'),
                    tftp(5, 'bootcode.bin', prefix='', client='10.99.0.77'),
                    tftp(6, 'start4.elf', prefix='deadbeef', client='10.99.0.78')]
    mine, strays = tl.attribute(records_dhcp, records_tftp, pis)
    assert [(r['kind'], r['path'] if r['kind'] == 'tftp' else r['mac']) for r in mine['pi-03']] == [
        ('dhcp', 'b8:27:eb:c0:ff:e3'), ('tftp', 'bootcode.bin'), ('tftp', 'start.elf')]
    assert [r['path'] for r in mine['pi-05']] == ['config.txt']
    assert [r['client'] for r in mine['pi-09']] == ['10.99.0.59']  # root requests nobody followed: by address
    assert [r['mac'] for r in strays['dhcp']] == ['02:00:00:00:00:01']
    assert sorted(r['client'] for r in strays['tftp']) == ['10.99.0.77', '10.99.0.78']


@pytest.mark.parametrize('seconds, text', [
    (0, '0 s'), (59, '59 s'), (119, '119 s'), (120, '2 minutes'), (7199, '119 minutes'), (7200, '2 hours'),
    (86400 * 2 + 5, '2 days'), (-5, '0 s'),
])
def test_ago(seconds, text):
    assert tl.ago(seconds) == text
