# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.pifleet.netboot.plugins.filter.fleet_boot_exports import (
    fleet_boot_exports,
    fleet_boot_generations,
    fleet_roots_before,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.fleet import plan
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.generations import (
    boot_exports,
    boot_generations,
    roots_before,
)

SETTINGS = {'bakeforms': {'bw': [3, 4, 5], 'old': [4]}, 'default_bakeform': 'bw', 'export_scope': None,
            'roots_dir': '/r', 'disks_dir': '/d', 'nfs_server': '10.0.0.2', 'ssh_authorized_keys': None,
            'boot_mount': 'nfs', 'store': '/s'}
RO = ['ro', 'sync', 'no_subtree_check', 'root_squash']


def fleet(**settings):
    pis = {'pi-%d' % n: {'pi_serial': '0000000%d' % n, 'pi_model': 4, 'pi_ip': '10.0.0.5%d' % n} for n in range(1, 6)}
    pis['pi-5']['pi_bakeform'] = 'old'
    return plan(pis, dict(SETTINGS, **settings))


def entry(serial, bakeform, generation, **extra):
    return dict({'serial': serial, 'hostname': 'h', 'bakeform': bakeform, 'generation': generation,
                 'label': '%s@%d' % (bakeform, generation), 'action': 'unchanged', 'changed': False,
                 'boot_export': '/s/%s/generations/%d/boot-nfs' % (bakeform, generation)}, **extra)


def used(*refs):
    return [{'serial': serial, 'hostname': 'pi-%s' % serial[-1], 'root': root} for serial, root in refs]


BAKEFORMS = {'results': [
    {'item': {'name': 'bw'}, 'generations': [
        {'id': 1, 'label': 'bw@1', 'used_by': used(('00000001', 'previous'), ('00000003', 'current'))},
        {'id': 2, 'label': 'bw@2',
         'used_by': used(('00000001', 'current'), ('00000002', 'current'), ('00000004', 'current'))}]},
    {'item': {'name': 'old'}, 'generations': [
        {'id': 7, 'label': 'old@7', 'used_by': [{'serial': '00000005', 'hostname': 'pi-5', 'root': 'current'}]}]},
    {'skipped': True},
]}


def test_roots_before_reads_the_current_roots_from_used_by():
    before = fleet_roots_before(BAKEFORMS, '/s')
    assert before == {
        '00000001': {'bakeform': 'bw', 'generation': 2, 'label': 'bw@2', 'boot_export': '/s/bw/generations/2/boot-nfs'},
        '00000002': {'bakeform': 'bw', 'generation': 2, 'label': 'bw@2', 'boot_export': '/s/bw/generations/2/boot-nfs'},
        '00000003': {'bakeform': 'bw', 'generation': 1, 'label': 'bw@1', 'boot_export': '/s/bw/generations/1/boot-nfs'},
        '00000004': {'bakeform': 'bw', 'generation': 2, 'label': 'bw@2', 'boot_export': '/s/bw/generations/2/boot-nfs'},
        '00000005': {'bakeform': 'old', 'generation': 7, 'label': 'old@7',
                     'boot_export': '/s/old/generations/7/boot-nfs'}}
    assert roots_before([], '/s') == {} and fleet_roots_before(None, '/s') == {}


def test_each_generation_goes_to_exactly_the_pis_whose_root_uses_it():
    roots = [entry('00000001', 'bw', 3), entry('00000002', 'bw', 2), entry('00000003', 'bw', 3),
             entry('00000004', 'bw', 2), entry('00000005', 'old', 7)]
    assert boot_exports(fleet(), roots) == [
        {'path': '/s/bw/generations/2/boot-nfs', 'options': RO, 'clients': ['10.0.0.52', '10.0.0.54']},
        {'path': '/s/bw/generations/3/boot-nfs', 'options': RO, 'clients': ['10.0.0.51', '10.0.0.53']},
        {'path': '/s/old/generations/7/boot-nfs', 'options': RO, 'clients': ['10.0.0.55']}]
    # Never the pre-generations path, whatever the inventory's order.
    assert not [e for e in boot_exports(fleet(), list(reversed(roots))) if e['path'].startswith('/s/bw/boot-nfs')]
    assert boot_exports(fleet(), list(reversed(roots))) == boot_exports(fleet(), roots)


def test_a_pi_without_address_is_exported_to_the_scope():
    pis = {'pi-1': {'pi_serial': '00000001', 'pi_model': 4},
           'pi-2': {'pi_serial': '00000002', 'pi_model': 4, 'pi_ip': '10.0.0.7'}}
    whole = plan(pis, dict(SETTINGS, export_scope='10.0.0.0/24'))
    assert fleet_boot_exports(whole, [entry('00000001', 'bw', 1), entry('00000002', 'bw', 1)]) == [
        {'path': '/s/bw/generations/1/boot-nfs', 'options': RO, 'clients': ['10.0.0.0/24', '10.0.0.7']}]


def test_pis_outside_the_call_keep_their_generation_from_before():
    """A subset run (reimage, upgrade) calls pi_root for some Pis: the others' boot exports stay theirs."""
    before = roots_before(BAKEFORMS['results'], '/s')
    roots = [entry('00000003', 'bw', 2, action='rebuilt', changed=True)]  # pi-3 moved from bw@1 to bw@2
    assert fleet_boot_exports(fleet(), roots, before) == [
        {'path': '/s/bw/generations/2/boot-nfs', 'options': RO,
         'clients': ['10.0.0.51', '10.0.0.52', '10.0.0.53', '10.0.0.54']},
        {'path': '/s/old/generations/7/boot-nfs', 'options': RO, 'clients': ['10.0.0.55']}]


def test_a_pi_that_failed_pi_root_keeps_its_export_as_it_was():
    before = roots_before(BAKEFORMS['results'], '/s')
    failed = {'serial': '00000003', 'hostname': 'pi-3', 'action': 'failed', 'msg': 'etc is a symbolic link'}
    roots = [entry('00000001', 'bw', 2), entry('00000002', 'bw', 2), failed, entry('00000004', 'bw', 2),
             entry('00000005', 'old', 7)]
    # pi-3's root is still on bw@1, which only it uses: that export is kept exactly as it is.
    assert boot_exports(fleet(), roots, before) == [
        {'path': '/s/bw/generations/1/boot-nfs', 'state': 'keep'},
        {'path': '/s/bw/generations/2/boot-nfs', 'options': RO, 'clients': ['10.0.0.51', '10.0.0.52', '10.0.0.54']},
        {'path': '/s/old/generations/7/boot-nfs', 'options': RO, 'clients': ['10.0.0.55']}]
    # A failed Pi sharing its generation with healthy Pis keeps its access (it had it), nobody else's is widened.
    roots[0] = dict(failed, serial='00000001', hostname='pi-1')
    exports = boot_exports(fleet(), roots, before)
    assert exports[1] == {'path': '/s/bw/generations/2/boot-nfs', 'options': RO,
                          'clients': ['10.0.0.51', '10.0.0.52', '10.0.0.54']}
    # Without a word from before, a failed Pi places nothing.
    assert boot_exports(fleet(), [failed]) == []


def test_each_pi_boots_its_own_roots_generation():
    whole = fleet()
    roots = [entry('00000001', 'bw', 3), entry('00000002', 'bw', 2),
             {'serial': '00000003', 'hostname': 'pi-3', 'action': 'failed', 'msg': 'x'}]
    before = roots_before(BAKEFORMS['results'], '/s')
    items = boot_generations(whole['boot'], roots, before)
    assert [item.get('generation') for item in items] == [3, 2, 1, 2, 7]
    assert [dict(item, generation=None) for item in items] == [dict(item, generation=None) for item in whole['boot']]
    # A kept item stays as it is; a Pi whose generation is unknown gets none (pi_boot's default).
    kept = [{'name': 'pi-1', 'prefix': '00000001', 'state': 'keep', 'serial': '00000001'}]
    assert fleet_boot_generations(kept, roots) == kept
    assert 'generation' not in fleet_boot_generations(whole['boot'], [])[0]


def test_the_filter_wants_a_plan():
    with pytest.raises(AnsibleFilterError, match='fleet plan'):
        fleet_boot_exports([], [])
