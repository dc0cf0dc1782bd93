# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_power's plan and apply: each Pi's power device, settings merged and checked, then driven at once.

``check_item(item, where)`` validates one Pi of a call; ``PiPower.plan(items, shared, listed)`` merges each
Pi's device settings over the shared ones and makes its driver (a Pi whose device is unusable carries
its error and fails alone); ``apply(plan, parallel)`` drives them in parallel and returns one result
per Pi. The host is the module's adapter (``module.ModuleHost``: ``feed``, ``which``, ``check_mode``).
See ``power`` for the drivers. No AnsibleModule here.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import file_diff
from ansible_collections.pifleet.netboot.plugins.module_utils.power.power import DRIVERS, PowerError, converge

BOUNDS = (('timeout', 0.001), ('retries', 0), ('cycle_delay', 0))


def check_item(item, where):
    """Raise ValueError with the first problem of one Pi of the call (``where`` names it)."""
    for key in ('name', 'driver'):
        if item[key] in (None, ''):
            raise ValueError('%s missing for %s: every Pi needs a name and a driver; set %s at the top level or in '
                             'the item' % (key, where, key))
    for key, low in BOUNDS:
        if item[key] < low:
            raise ValueError('invalid %s for %s: %s is below %s' % (key, item['name'], item[key], low))


def device_settings(shared, own, kind, listed):
    """A Pi's device: its own settings over the shared ones (None values are not given).

    In a list, the shared settings may serve several drivers: each Pi takes only its driver's keys.
    """
    shared = shared or {}
    if listed:
        shared = {key: value for key, value in shared.items() if key in DRIVERS[kind].KEYS}
    device = {key: value for key, value in shared.items() if value is not None}
    device.update((key, value) for key, value in (own or {}).items() if value is not None)
    return device


class PiPower:
    """The power devices of the Pis of one module run."""

    def __init__(self, host):
        self.host = host
        self.timeout_bin = None

    def run_program(self, argv, data, timeout):
        """Run a device program bounded by coreutils timeout (rc 124 when it ran too long)."""
        return self.host.feed([self.timeout_bin, '-k', '2', '%gs' % timeout, *argv], data, timeout=timeout + 10)

    def resolve(self, program, name, driver, how):
        """Absolute path of a device program, checked here so that workers never fail the module."""
        path = program if '/' in program else self.host.which(program)
        if not path or not os.access(path, os.X_OK) or os.path.isdir(path):
            raise ValueError('program %s not found for %s (driver %s): it is not an executable file on %s; %s'
                             % (program, name, driver, os.uname()[1], how))
        return path

    def plan(self, items, shared, listed):
        """Each item with its ``device`` settings and its ``runner`` (None, and an ``error``, when unusable).

        ``shared``: the top-level device settings; ``own``: each item's raw ``device`` (its own settings).
        """
        for item in items:
            name, kind = item['name'], item['driver']
            # A Pi whose device is unusable (bad settings, a program missing on the bakery) fails alone: the
            # others are still driven, and `status` shows each Pi's own result.
            try:
                settings = DRIVERS[kind].settings(device_settings(shared, item.pop('own'), kind, listed))
            except ValueError as exc:
                item['error'] = ('invalid device for %s (driver %s): %s; see the documentation of '
                                 'pifleet.netboot.pi_power' % (name, kind, exc))
                settings = None
            try:
                for key, (program, how) in (DRIVERS[kind].programs(settings) if settings else {}).items():
                    settings[key] = self.resolve(program, name, kind, how)
            except ValueError as exc:
                item['error'] = str(exc)
            item['device'] = settings
            item['runner'] = None
            if not item.get('error'):
                item['runner'] = DRIVERS[kind](settings, item['timeout'], item['retries'], self.run_program)
        return items

    def drive(self, item):
        driver = item['runner']
        if driver is None:
            return {'name': item['name'], 'driver': item['driver'], 'device': '%s (unusable)' % item['driver'],
                    'previous': 'unknown', 'power': 'unknown', 'changed': False, 'error': item['error']}
        result = {'name': item['name'], 'driver': item['driver'], 'device': driver.describe()}
        try:
            result.update(converge(driver, item['state'], self.host.check_mode, item['cycle_delay']))
        except PowerError as exc:
            result.update(previous='unknown', power='unknown', changed=exc.changed,
                          error='power %s failed for %s (%s): %s; %s' % (
                              exc.action, item['name'], driver.describe(), exc.reason(), exc.hint or driver.hint))
        except Exception as exc:  # one broken device must not hide the others' results
            result.update(previous='unknown', power='unknown', changed=False,
                          error='power %s failed for %s (%s): unexpected %s: %s' % (
                              item['state'], item['name'], driver.describe(), type(exc).__name__, exc))
        return result

    def apply(self, plan, parallel):
        """One result per Pi, in the order of the plan; at most ``parallel`` devices are driven at once."""
        if any(item['runner'] and item['runner'].timed for item in plan):
            self.timeout_bin = self.host.which('timeout', True)
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(plan)))) as pool:
            return list(pool.map(self.drive, plan))


def diff_entry(result):
    """The diff of one Pi whose power changed."""
    cycled = ' (power-cycled)' if result['previous'] == result['power'] == 'on' else ''
    return file_diff('%s (%s)' % (result['name'], result['device']), 'power: %s\n' % result['previous'],
                     'power: %s%s\n' % (result['power'], cycled))


def failure_message(results):
    """None when every Pi was driven; else what failed (one Pi's error as it is)."""
    failed = [result['error'] for result in results if 'error' in result]
    if len(failed) == 1:
        return failed[0]
    if failed:
        return '%d of %d Pis failed: %s' % (len(failed), len(results), ' | '.join(failed))
    return None
