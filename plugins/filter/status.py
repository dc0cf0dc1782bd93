# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the status playbook (documented in status_*.yml beside this file)."""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.utils.unsafe_proxy import wrap_var

# The module_utils are imported where a filter runs, not here: ansible-core loads every filter file of the
# collection to find any one filter, in each task's worker process, and compiles them from source there.


def _or_none(normalise, value):
    try:
        return normalise(value) if value not in (None, '') else None
    except (ValueError, TypeError):
        return None  # status reports on a Pi whatever its variables; the fleet role names the mistake


def status_pis(names, hostvars, bakery=None, bakeries=None):
    """The Pis of ``names`` that ``bakery`` serves, as pi_status's ``pis`` (malformed values left out)."""
    from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import (
        normalise_mac,
        normalise_prefix,
        normalise_serial,
    )
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.bootlogs import address

    bakeries = list(bakeries or ([bakery] if bakery else []))
    found = []
    for name in names or []:
        host = hostvars[name]
        owner = host['pi_bakery'] if 'pi_bakery' in host else None
        if bakery and (owner or bakeries[0]) != bakery:
            continue
        serial = _or_none(normalise_serial, host.get('pi_serial'))
        mac = _or_none(normalise_mac, host.get('pi_mac'))
        mode = str(host.get('pi_tftp_prefix') or 'serial')
        prefix = serial if mode == 'serial' else mac if mode == 'mac' else _or_none(normalise_prefix, mode)
        found.append({'name': name, 'serial': serial, 'mac': mac and mac.replace('-', ':'), 'prefix': prefix,
                      'ip': address(host.get('pi_ip'))})
    return found


def _plain(value):
    """Builtin dicts and lists all the way down (ansible-core 2.19 hands filters lazy containers, which wrap_var
    cannot rebuild)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _results(status):
    """[(bakery, pi_status result)] of a registered loop over bakeries, or of one registered result."""
    status = _plain(status)
    if isinstance(status, list):
        found = [(item.get('item'), item) for item in status if isinstance(item, dict)]
    elif isinstance(status, dict) and isinstance(status.get('results'), list):
        found = [(item.get('item'), item) for item in status['results'] if isinstance(item, dict)]
    else:
        found = [(None, status)]
    for _bakery, result in found:
        if not isinstance(result, dict) or not isinstance(result.get('pis', []), list):
            raise AnsibleFilterError('expects the registered result of pifleet.netboot.pi_status (or of its loop over '
                                     'bakeries), got %s' % type(result).__name__)
    return found


def _models(hostvars, results):
    models = {}
    for _bakery, result in results:
        for pi in result.get('pis') or []:
            host = hostvars[pi['name']] if hostvars is not None and pi['name'] in hostvars else {}
            models[pi['name']] = host.get('pi_model')
    return models


def status_report(status, hostvars=None, power=None, power_errors=None):
    """pi_status's result(s) -> the lines status prints (table, stall hints, power errors, full disks)."""
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import statusview

    results = _results(status)
    return wrap_var(statusview.report_all(results, _models(hostvars, results), power, power_errors))


def status_document(status, hostvars=None, power=None, power_errors=None):
    """pi_status's result(s) -> one JSON-ready document for scripts."""
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import statusview

    results = _results(status)
    return wrap_var(statusview.document(results, _models(hostvars, results), power, power_errors))


class FilterModule:
    def filters(self):
        return {'status_pis': status_pis, 'status_report': status_report, 'status_document': status_document}
