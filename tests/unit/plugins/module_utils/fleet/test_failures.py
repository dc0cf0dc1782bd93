# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fleet that fails per Pi: the failures named from the plan, the later steps keeping a failed Pi as it was."""

from __future__ import annotations

from ansible_collections.pifleet.netboot.plugins.filter.fleet_failures import fleet_failures, fleet_healthy
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.failures import failures, healthy, summary
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.fleet import plan

SETTINGS = {'bakeforms': {'bw': [3, 4, 5]}, 'default_bakeform': 'bw', 'export_scope': None,
            'roots_dir': '/r', 'disks_dir': '/d', 'nfs_server': '10.0.0.2', 'ssh_authorized_keys': None,
            'boot_mount': 'nfs', 'store': '/s'}


def fleet():
    pis = {'pi-%d' % n: {'pi_serial': '0000000%d' % n, 'pi_model': 4, 'pi_ip': '10.0.0.5%d' % n,
                         'pi_disks': [{'name': 'data', 'size': '16M'}]} for n in range(1, 5)}
    pis['pi-4']['pi_tftp_prefix'] = 'rack-4'
    return plan(pis, SETTINGS)


RESULTS = {
    'roots': {'changed': True, 'failed': True, 'failed_pis': [
        {'serial': '00000001', 'hostname': 'pi-1', 'msg': 'the root of Pi 00000001: etc is a symbolic link'}]},
    'disks': {'skipped': True},
    'exports': {'failed_pis': [], 'failed_exports': [
        {'path': '/s/bw/boot-nfs', 'serial': None, 'hostname': None, 'msg': 'not a file system of its own'}]},
    'boot': {'failed_pis': [{'serial': None, 'hostname': 'pi-4', 'name': 'pi-4', 'prefix': 'rack-4',
                             'msg': 'boot folder not ours'}]},
    'prune roots': {'failed_pis': [{'serial': '0badcafe', 'hostname': 'pi-0badcafe', 'msg': 'busy'}]},
    'missing': None,
}


def test_failures_are_named_from_the_plan_step_by_step():
    assert failures(RESULTS, fleet()) == [
        {'name': 'pi-1', 'serial': '00000001', 'step': 'roots',
         'msg': 'the root of Pi 00000001: etc is a symbolic link'},
        {'name': '/s/bw/boot-nfs', 'serial': None, 'step': 'exports', 'msg': 'not a file system of its own'},
        {'name': 'pi-4', 'serial': None, 'step': 'boot', 'msg': 'boot folder not ours'},
        {'name': None, 'serial': '0badcafe', 'step': 'prune roots', 'msg': 'busy'},  # it left the inventory
    ]
    assert failures({}, fleet()) == [] and fleet_failures({'roots': {}}) == []


def test_a_failed_pi_gets_no_disks_and_keeps_its_export_and_boot_folder():
    whole = fleet()
    after = healthy(whole, [{'name': 'pi-1', 'serial': '00000001', 'step': 'roots', 'msg': 'x'},
                            {'name': 'pi-4', 'serial': None, 'step': 'boot', 'msg': 'y'}])
    assert [d['serial'] for d in after['disks']] == ['00000002', '00000003']
    kept = [e for e in after['exports'] if e.get('state') == 'keep']
    assert kept == [{'path': p, 'state': 'keep', 'serial': s, 'hostname': h} for p, s, h in (
        ('/r/mnt/00000001', '00000001', 'pi-1'), ('/d/mnt/00000001', '00000001', 'pi-1'),
        ('/r/mnt/00000004', '00000004', 'pi-4'), ('/d/mnt/00000004', '00000004', 'pi-4'))]
    # The others exactly as planned, the bakeform's boot export too (read-only boot files, public over TFTP anyway).
    assert [e for e in after['exports'] if e.get('state') != 'keep'] == [
        e for e in whole['exports'] if e.get('serial') not in ('00000001', '00000004')]
    assert after['boot'][0] == {'name': 'pi-1', 'prefix': '00000001', 'state': 'keep', 'serial': '00000001'}
    assert after['boot'][3] == {'name': 'pi-4', 'prefix': 'rack-4', 'state': 'keep', 'serial': '00000004'}
    assert after['boot'][1:3] == whole['boot'][1:3]
    assert fleet_healthy(whole, []) == {'disks': whole['disks'], 'exports': whole['exports'], 'boot': whole['boot']}


def test_the_summary_names_each_pi_with_serial_step_and_why():
    text = summary(failures(RESULTS, fleet()))
    assert text.splitlines() == [
        '4 Pi(s) failed, every other Pi was converged; each failed Pi keeps the export and boot folder it had:',
        'pi-1 (serial 00000001) failed at roots: the root of Pi 00000001: etc is a symbolic link',
        '/s/bw/boot-nfs (serial -) failed at exports: not a file system of its own',
        'pi-4 (serial -) failed at boot: boot folder not ours',
        'a Pi no longer in the inventory (serial 0badcafe) failed at prune roots: busy']
    assert summary([]) == ''
