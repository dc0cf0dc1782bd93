# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The status playbook's filters: the Pi list for pi_status, the table and the JSON document."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.pifleet.netboot.plugins.filter.status import status_document, status_pis, status_report
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import timeline

T0 = 1_800_000_000.0
BOOT = {'start': '2026-11-23T10:00:00Z', 'state': 'stalled', 'stage': 'tftp', 'stalled_at': 'nfs',
        'took': {'seconds': 7.4, 'to': 'tftp'}, 'note': None,
        'hint': 'fetched its kernel 3 minutes ago and never mounted its root: check the export and `nfsroot=` in '
                'cmdline.txt'}


def pi(name, **fields):
    entry = {'name': name, 'root': {'marker': True, 'usage': {'percent': 12.4}}, 'disks': None, 'label': 'lite@1',
             'behind': False, 'current_generation': 1, 'up': 'no', 'boot': None}
    entry.update(fields)
    return entry


def result(*pis, **extra):
    return dict({'pis': list(pis), 'now': '2026-11-23T10:05:00Z', 'data_filesystems': [], 'sources': {}}, **extra)


def test_status_pis_takes_valid_values_and_the_bakerys_own():
    hostvars = {
        'pi-01': {'pi_serial': '100000003A4B5C6D', 'pi_mac': 'DC-A6-32-01-36-C2', 'pi_ip': '10.0.0.51'},
        'pi-02': {'pi_serial': 'nope', 'pi_tftp_prefix': 'mac', 'pi_mac': 'dc:a6:32:01:36:c3', 'pi_ip': '10.0.0.999'},
        'pi-03': {'pi_serial': '3a4b5c6e', 'pi_tftp_prefix': 'lab-x', 'pi_bakery': 'bakery-2'},
    }
    assert status_pis(['pi-01', 'pi-02', 'pi-03'], hostvars) == [
        {'name': 'pi-01', 'serial': '3a4b5c6d', 'mac': 'dc:a6:32:01:36:c2', 'prefix': '3a4b5c6d', 'ip': '10.0.0.51'},
        {'name': 'pi-02', 'serial': None, 'mac': 'dc:a6:32:01:36:c3', 'prefix': 'dc-a6-32-01-36-c3', 'ip': None},
        {'name': 'pi-03', 'serial': '3a4b5c6e', 'mac': None, 'prefix': 'lab-x', 'ip': None}]
    names = ['pi-01', 'pi-02', 'pi-03']
    assert [p['name'] for p in status_pis(names, hostvars, 'bakery-1', ['bakery-1', 'bakery-2'])] == ['pi-01', 'pi-02']
    assert [p['name'] for p in status_pis(names, hostvars, 'bakery-2', ['bakery-1', 'bakery-2'])] == ['pi-03']


def test_table_widths_follow_the_content():
    long = 'pi-with-a-rather-long-name-in-room-204'
    behind = pi(long, label='lite@1', behind=True, current_generation=3, root={'marker': False}, up='yes')
    lines = status_report(result(pi('pi-01', boot=BOOT), behind), hostvars={'pi-01': {'pi_model': 4}, long: {}},
                          power={'pi-01': 'on'})
    header, first, second = lines[:3]
    assert header.startswith('PI' + ' ' * (len(long)) + 'MODEL  GENERATION')
    assert first.startswith('pi-01' + ' ' * (len(long) - 5 + 2) + '4  ')
    cells = [cell for cell in first.split('  ') if cell.strip()]
    assert [c.strip() for c in cells] == ['pi-01', '4', 'lite@1', '12%', '-', 'on', 'stalled at nfs', 'no',
                                          '2026-11-23T10:00:00Z', '7s (tftp)']
    assert 'lite@1 (behind @3)' in second and 'missing' in second and ' never' in second
    assert lines[3] == 'STALLED pi-01: ' + BOOT['hint']
    assert all(len(line.rstrip()) == len(line) for line in lines)


def test_lan_text_cannot_make_a_line_of_its_own():
    hint = 'asked for x\n"pi-99  5  fake row\u2028, which is not in its boot folder'
    lines = status_report(result(pi('pi-01', boot=dict(BOOT, hint=hint))))
    assert len(lines) == 3 and '\n' not in lines[2] and '\u2028' not in lines[2] and lines[2].startswith('STALLED')


def test_full_data_file_system_and_what_was_not_observed_are_named():
    lines = status_report(result(pi('pi-01'), data_filesystems=[
        {'path': '/srv/pifleet', 'percent': 91.0, 'used': 91 << 30, 'size': 100 << 30}],
        sources={'nfs': 'not observed: the kernel NFS server is not asked', 'ssh': 'asked 1 address(es)'}))
    assert 'DATA FULL /srv/pifleet: 91% used (93184 of 102400 MiB)' in lines
    assert 'NFS not observed: the kernel NFS server is not asked' in lines and not any('SSH' in x for x in lines)


def test_several_bakeries_and_a_failed_one():
    loop = {'results': [dict(result(pi('pi-01')), item='bakery-1'),
                        {'item': 'bakery-2', 'failed': True, 'msg': 'pis[0] (x): serial', 'pis': []}]}
    lines = status_report(loop)
    assert lines[0] == 'BAKERY bakery-1' and lines[-1] == 'BAKERY bakery-2: pis[0] (x): serial'
    document = status_document(loop, hostvars={'pi-01': {'pi_model': 5}}, power={'pi-01': 'off'})
    assert document['format'] == 1 and [b['name'] for b in document['bakeries']] == ['bakery-1', 'bakery-2']
    assert document['pis'][0] | {} == dict(pi('pi-01'), bakery='bakery-1', model=5, power='off', power_error=None,
                                           stage='never')
    with pytest.raises(AnsibleFilterError, match=r'expects the registered result of pifleet\.netboot\.pi_status'):
        status_report({'results': [{'item': 'x', 'pis': 'no'}]})


def test_a_bakery_that_gave_no_reading_says_why_and_the_others_are_shown():
    """An unreachable bakery and one whose Python never ran the module (no msg of the module's own) each get their
    line; the document marks them failed with the same reason."""
    loop = {'results': [
        {'item': 'bakery-0', 'unreachable': True, 'msg': 'Failed to connect to the host via ssh: timed out'},
        dict(result(pi('pi-01')), item='bakery-1'),
        {'item': 'bakery-2', 'failed': True, 'msg': 'MODULE FAILURE\nSee stdout/stderr for the exact error',
         'module_stderr': '/bin/sh: 1: /opt/none/python3: not found\n'}]}
    lines = status_report(loop)
    assert lines[1] == 'BAKERY bakery-0: Failed to connect to the host via ssh: timed out'
    assert lines[-1] == ('BAKERY bakery-2: MODULE FAILURE See stdout/stderr for the exact error: /bin/sh: 1: '
                         '/opt/none/python3: not found')
    assert any(line.startswith('pi-01 ') for line in lines)
    document = status_document(loop)
    assert [(b['name'], b['failed']) for b in document['bakeries']] == [
        ('bakery-0', True), ('bakery-1', False), ('bakery-2', True)]
    assert document['bakeries'][2]['msg'] == lines[-1].split(': ', 1)[1] and document['bakeries'][1]['msg'] is None
    assert [p['name'] for p in document['pis']] == ['pi-01']


def test_each_bakeform_shows_its_generations_and_current():
    lite = {'name': 'lite', 'layout': 'generations', 'current': 3, 'current_label': 'lite@3', 'generations': [
        {'id': 1, 'label': 'lite@1', 'current': False, 'pinned': True, 'used_by': []},
        {'id': 2, 'label': 'lite@2', 'current': False, 'pinned': False, 'used_by': [
            {'serial': '1234abcd', 'hostname': 'pi-01', 'root': 'current'},
            {'serial': '1234abce', 'hostname': 'pi-02', 'root': 'current'},
            {'serial': '1234abcf', 'hostname': 'pi-03', 'root': 'previous'}]},
        {'id': 3, 'label': 'lite@3', 'current': True, 'pinned': False, 'used_by': [
            {'serial': '1234abcf', 'hostname': 'pi-03', 'root': 'current'}]},
        {'id': 4, 'label': 'lite@4', 'current': False, 'pinned': False, 'used_by': []}]}
    old = {'name': 'old', 'layout': 'format2', 'current': None, 'current_label': None, 'generations': []}
    loop = {'results': [dict(result(pi('pi-01'), bakeforms=[lite, old]), item='bakery-1')]}
    lines = status_report(loop)
    assert ('BAKEFORM lite: current lite@3; generations lite@1 (pinned), lite@2 (2 Pis, 1 root kept for rollback), '
            'lite@3 (current, 1 Pi), lite@4 (unused)') in lines
    assert [line for line in lines if line.startswith('BAKEFORM old: store format 2 (before generations)')], lines
    document = status_document(loop)
    assert document['bakeries'][0]['bakeforms'] == [lite, old]


def test_a_generation_whose_root_lacks_what_a_netboot_needs_says_so():
    """What pi_status read of each generation's root: shown when it could refuse a Pi, or was never recorded; a root
    without cloud-init alone (every image before Trixie) is left to the JSON form."""
    read = ('not recorded', 'no mount.nfs', 'no cloud-init', 'nothing missing',
            'no mount.nfs, no cloud-init, no NFS in its initramfs')
    gens = [{'id': number, 'label': 'trixie@%d' % number, 'current': number == 4, 'pinned': False, 'used_by': [],
             'netboot': netboot} for number, netboot in enumerate(read, 1)]
    form = {'name': 'trixie', 'layout': 'generations', 'current': 4, 'current_label': 'trixie@4', 'generations': gens}
    lines = status_report({'results': [dict(result(pi('pi-01'), bakeforms=[form]), item='bakery-1')]})
    assert ('BAKEFORM trixie: current trixie@4; generations trixie@1 (its root: not recorded), '
            'trixie@2 (its root: no mount.nfs), trixie@3 (unused), trixie@4 (current), '
            'trixie@5 (its root: no mount.nfs, no cloud-init, no NFS in its initramfs)') in lines, lines


def boot_after(gap):
    """A Pi 4's boot as pi_status summarises it: its DHCP answer, then its boot set from ``gap`` seconds later."""
    records = [{'kind': 'dhcp', 'time': T0, 'mac': 'dc:a6:32:01:36:c2', 'answer': 'proxy', 'vendor_class': None,
                'client_id': None}]
    for offset, path in enumerate(('start4.elf', 'config.txt', 'kernel8.img')):
        records.append({'kind': 'tftp', 'time': T0 + gap + offset, 'client': '10.0.0.51', 'prefix': '3a4b5c6d',
                        'path': path, 'outcome': 'ok', 'bytes': 1000, 'duration': 0.2, 'retransmits': 0,
                        'error': None})
    return timeline.summarise(records, T0 + gap + 10, observed={})


@pytest.mark.parametrize('gap, slow', [(1, False), (9, False), (11, True), (45, True)])
def test_a_long_wait_between_dhcp_and_tftp_is_a_slow_start_line(gap, slow):
    """Over 10 s from the DHCP answer to the first TFTP request (a switch port waiting for spanning tree): a
    SLOW START line under the table; a Pi that asked at once gets none."""
    lines = status_report(result(pi('pi-01', boot=boot_after(gap))))
    said = [line for line in lines if line.startswith('SLOW START')]
    if slow:
        assert said == ['SLOW START pi-01: %d s between its first DHCP answer and its first TFTP request (1 DHCP '
                        'answer): a switch port that waits for spanning tree (set it to portfast/edge) or a slow '
                        'DHCP server on the LAN' % gap], lines
    else:
        assert said == [], lines
    assert lines[1].split()[6:8] == ['booting', '(tftp)']
