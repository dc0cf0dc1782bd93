# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over the TFTP hook's event log (documented in boot_events_summary.yml beside this file)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible.utils.unsafe_proxy import wrap_var

# The module_utils are imported where a filter runs, not here: ansible-core loads every filter file of the
# collection to find any one filter, in each task's worker process, and compiles them from source there.


def _text(value, what):
    if value is None or isinstance(value, (str, bytes)):
        return value
    raise AnsibleFilterError('boot_events_summary: %s is a %s, not text' % (what, type(value).__name__))


def boot_events_summary(events, fleet_map=None, include_known=False, since=None, *, dhcp_log=None, utc_offset=None,
                        neighbours=None, known_macs=None):
    """Event log text (or a list of its lines) -> one dict per Pi seen, discovered ones only by default."""
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.bootlogs import (
        parse_dhcp_log,
        parse_neighbours,
        utc_offset_epoch,
    )
    from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.events import (
        parse_events,
        parse_since,
        summarise,
    )

    if isinstance(events, (list, tuple)):
        events = '\n'.join(str(line) for line in events) + '\n'
    if not isinstance(events, (str, bytes)):
        raise AnsibleFilterError('boot_events_summary expects the event log as text, got %s; pass the slurped '
                                 'content through b64decode' % type(events).__name__)
    if fleet_map is not None and not isinstance(fleet_map, dict):
        raise AnsibleFilterError('boot_events_summary: fleet_map is a %s, not the hook map as a dict; pass it '
                                 'through from_json' % type(fleet_map).__name__)
    try:
        cutoff = parse_since(since) if since else None
        parsed, _malformed = parse_events(events)
        # dnsmasq writes the bakery's local time: with the bakery's offset (+0100) it is read as that.
        dhcp = parse_dhcp_log(_text(dhcp_log, 'dhcp_log'), to_epoch=utc_offset_epoch(utc_offset)) if dhcp_log else None
        summaries = summarise(parsed, fleet_map, bool(include_known), cutoff, dhcp=dhcp,
                              neighbours=parse_neighbours(_text(neighbours, 'neighbours') or ''),
                              known_macs=[str(mac) for mac in known_macs or []])
    except ValueError as exc:
        raise AnsibleFilterError('boot_events_summary: %s' % exc) from None
    # Strings from the log are data: ansible-core before 2.19 would template them where a playbook reuses them.
    return wrap_var(summaries)


class FilterModule:
    def filters(self):
        return {'boot_events_summary': boot_events_summary}
