# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.pifleet.netboot.plugins.filter.fleet_upgrade_report import (
    fleet_reimage_report,
    fleet_upgrade_report,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.upgrade import budget, reimage_report, report


def test_the_budget_is_a_count_or_a_share_of_the_wave():
    assert budget(0, 10) == 0 and budget('2', 10) == 2 and budget('10%', 25) == 2 and budget('100%', 7) == 7
    assert budget('50%', 1) == 0  # a canary of one: half of it rounds down to none
    for bad in ('x', '-1', '10 %%', '150%', True, None):
        with pytest.raises(ValueError, match='upgrade_failure_budget'):
            budget(bad, 10)


WAVE = {
    'wave': ['pi-a', 'pi-b', 'pi-c', 'pi-d'],
    'serials': {'pi-a': '0a0a0a0a', 'pi-b': '0b0b0b0b', 'pi-c': '0c0c0c0c', 'pi-d': '0d0d0d0d'},
    'build_failed': [{'name': 'pi-d', 'serial': '0d0d0d0d', 'step': 'roots', 'msg': 'etc is a symbolic link'},
                     {'name': 'pi-z', 'serial': '0f0f0f0f', 'step': 'exports', 'msg': 'not in this wave'}],
    'roots': [{'serial': s, 'label': 'bw@2'} for s in ('0a0a0a0a', '0b0b0b0b', '0c0c0c0c')],
    'down': ['pi-b', 'pi-c'],
    'new_boot': {'pi-b': 'kernel8.img, outcome ok', 'pi-c': None},
    'rollback_roots': [{'serial': '0b0b0b0b', 'label': 'bw@1'}, {'serial': '0c0c0c0c', 'label': 'bw@1'}],
    'rollback_failed': [],
    'back': {'pi-b': True, 'pi-c': False},
    'rollback_boot': {'pi-b': 'cmdline.txt, outcome ok', 'pi-c': 'start4.elf, outcome timeout'},
}


def test_the_report_names_each_pi_its_last_boot_event_and_what_was_rolled_back():
    result = report(WAVE, 1)
    assert result['budget'] == 1 and result['exceeded'] is True
    assert result['text'].splitlines() == [
        '3 of 4 Pi(s) of this wave were not upgraded (failure budget 1): the budget is exceeded, the upgrade stops '
        'here and later waves are left as they are',
        'pi-d (serial 0d0d0d0d): its new root could not be made (roots: etc is a symbolic link); last boot event: none '
        'since the wave started; nothing: it kept the root it had, not power-cycled',
        'pi-b (serial 0b0b0b0b): it did not come back on bw@2 within the timeout (no SSH server answered with its host '
        'key); last boot event: kernel8.img, outcome ok; rolled back from bw@2 to bw@1 (root, boot folder, boot '
        'export), power-cycled: it is back up',
        'pi-c (serial 0c0c0c0c): it did not come back on bw@2 within the timeout (no SSH server answered with its host '
        'key); last boot event: none since the wave started; rolled back from bw@2 to bw@1 (root, boot folder, boot '
        'export), power-cycled: it did NOT come back either (last boot event start4.elf, outcome timeout)']
    assert [f['back'] for f in result['failures']] == [None, True, False]


def test_within_the_budget_the_wave_goes_on_and_a_clean_wave_reports_nothing():
    assert report(WAVE, '75%')['exceeded'] is False and report(WAVE, 3)['exceeded'] is False
    clean = dict(WAVE, build_failed=[], down=[])
    assert fleet_upgrade_report(clean, 0) == {'failures': [], 'budget': 0, 'exceeded': False, 'text': ''}


def test_a_failed_rollback_is_said():
    facts = dict(WAVE, build_failed=[], down=['pi-c'], rollback_failed=[
        {'name': 'pi-c', 'serial': '0c0c0c0c', 'step': 'roots', 'msg': 'Pi 0c0c0c0c has no previous root'}])
    line = report(facts, 0)['failures'][0]['line']
    assert line.endswith('the rollback failed (Pi 0c0c0c0c has no previous root): it is left on its new root')


def test_the_filter_names_a_bad_budget():
    with pytest.raises(AnsibleFilterError, match='neither a count'):
        fleet_upgrade_report(WAVE, 'lots')


REIMAGE = {
    'pis': ['pi-a', 'pi-b', 'pi-c', 'pi-d', 'pi-e', 'pi-f'],
    'serials': {'pi-a': '100000000A0A0A0A', 'pi-b': '0b0b0b0b', 'pi-c': '0c0c0c0c', 'pi-d': '0d0d0d0d',
                'pi-e': 'e0e0e0e0', 'pi-f': 'f0f0f0f0'},
    'bakery_of': {'pi-a': 'bak1', 'pi-b': 'bak1', 'pi-c': 'bak1', 'pi-d': 'bak1', 'pi-e': 'bak2', 'pi-f': 'bak1'},
    'build_failed': [{'name': 'pi-d', 'serial': '0d0d0d0d', 'step': 'roots', 'msg': 'etc is a symbolic link',
                      'bakery': 'bak1'},
                     {'name': '/srv/pifleet/bakeforms/bw/generations/1/boot-nfs', 'serial': None, 'step': 'exports',
                      'msg': 'the export file is not ours', 'bakery': 'bak2'},
                     {'name': 'pi-z', 'serial': '0f0f0f0f', 'step': 'roots', 'msg': 'not in this reimage',
                      'bakery': 'bak1'}],
    'roots': [{'serial': s, 'label': 'bw@1'} for s in ('0a0a0a0a', '0b0b0b0b', '0c0c0c0c', 'f0f0f0f0')],
    'up': {'pi-a': True, 'pi-b': 'False', 'pi-c': False, 'pi-d': None, 'pi-e': None, 'pi-f': None},
    'boot': {'pi-b': 'start4.elf, outcome ok', 'pi-c': None},
    'timeout': '15',
}


def test_the_reimage_summary_names_each_pi_that_did_not_come_up_and_why():
    result = reimage_report(REIMAGE)
    assert [item['name'] for item in result['failures']] == ['pi-b', 'pi-c', 'pi-d', 'pi-e', 'pi-f']
    assert result['text'].splitlines() == [
        '5 of 6 Pi(s) were not reimaged',
        'pi-b (serial 0b0b0b0b): it did not come back on bw@1 within 15 s (no SSH server answered with the host key '
        'of its new root); last boot event: start4.elf, outcome ok; its previous root is kept '
        '(pifleet.netboot.rollback puts it back)',
        'pi-c (serial 0c0c0c0c): it did not come back on bw@1 within 15 s (no SSH server answered with the host key '
        'of its new root); last boot event: none since the reimage started; its previous root is kept '
        '(pifleet.netboot.rollback puts it back)',
        'pi-d (serial 0d0d0d0d): its new root could not be made (roots: etc is a symbolic link); it keeps the root '
        'and export it had, not power-cycled',
        # An export of no one Pi (a bakeform's boot files) stops every Pi of its bakery, and only those.
        'pi-e (serial e0e0e0e0): its new root could not be made (exports: the export file is not ours); it keeps '
        'the root and export it had, not power-cycled',
        'pi-f (serial f0f0f0f0): it was not waited for: its power cycle failed (its own power task says why); its '
        'new root is made, its previous root kept (pifleet.netboot.rollback puts it back)']


def test_a_reimage_where_every_pi_came_up_reports_nothing():
    facts = dict(REIMAGE, build_failed=[], up=dict.fromkeys(REIMAGE['pis'], True))
    assert fleet_reimage_report(facts) == {'failures': [], 'text': ''}
    assert reimage_report(dict(facts, up={'pi-a': 'True'}, pis=['pi-a']))['text'] == ''
    with pytest.raises(AnsibleFilterError, match='what the reimage did'):
        fleet_reimage_report(['pi-a'])
