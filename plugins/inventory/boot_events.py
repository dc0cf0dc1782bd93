# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# (Ansible plugins put DOCUMENTATION/EXAMPLES before the imports.)

from __future__ import annotations

DOCUMENTATION = r"""
name: boot_events
author: pifleet maintainers (@pifleet)
short_description: Raspberry Pis seen by the pifleet TFTP hook but not yet in the fleet
version_added: 0.1.0
description:
  - Reads the event log of the pifleet TFTP hook (one JSON object per line per TFTP read request) on the bakery,
    locally or over SSH, and adds one host per discovered Pi to the group V(discovered).
  - A Pi is discovered when it asks for files under a TFTP prefix (its serial, its MAC or a custom string) that the
    hook's fleet map does not know. Root-level requests (the Pi 3 C(bootcode.bin)) are credited to the next prefix
    the same client asks for; if none followed, they make a host named after the client address.
  - Anything on the boot LAN can ask for any name, so the log is data. Host names depend on the prefix alone and
    contain C(_), which the fleet's host names (RFC 1123 labels) cannot, so a device never names itself after a
    fleet host - V(discovered_serial_3a4b5c6d), V(discovered_mac_dc-a6-32-01-36-c2),
    V(discovered_prefix_<prefix>_<hash>), V(discovered_ip_10-0-0-60) (V(known_...) for known Pis). A host that
    is already in the inventory (from an earlier source) gets no variables and no groups from this plugin.
  - Every string taken from the log that could be a template (any string with a character other than letters,
    digits, C(.), C(_), C(:), C(/), C(+) and C(-), such as C({)) is marked unsafe, so Ansible never templates it,
    on every ansible-core version. The others, the validated C(pi_*) values, addresses and times among them, are
    plain strings, so C(ansible-inventory --list --export) (what AWX stores) prints them as plain values.
  - "Host variables: C(pi_serial) (8-hex prefixes), C(pi_mac) (MAC prefixes, or a Pi 3 serial), C(pi_tftp_prefix)
    (V(serial), V(mac) or a custom prefix the fleet accepts), C(pi_model) (guessed from the requested files,
    omitted when unknown) - the C(pi_*) ones only from values that passed those checks; and what the log said:
    C(pifleet_prefix), C(pifleet_known), C(pifleet_name) (the fleet map name of a known Pi),
    C(pifleet_address) (last client address), C(pifleet_first_seen), C(pifleet_last_seen), C(pifleet_requests),
    C(pifleet_last_file), C(pifleet_last_outcome)."
  - "With dnsmasq's DHCP log (O(dhcp_log), the C(pifleet.netboot.dnsmasq) role writes it) a Pi's DHCP request names
    its model and board (the client identifier of a Pi 4 or 5) and a Pi 3's serial, and a Pi that asked DHCP and
    never for a file becomes a host too (V(discovered_mac_<mac>)) when its request says it is a Pi. A Pi is matched
    to its requests by the MAC its prefix tells, else through the bakery's neighbour table (O(neighbours)).
    Variables C(pifleet_board) and C(pifleet_dhcp) (C(answers), C(first_seen), C(last_seen), C(vendor_class),
    C(client_id)) say what the requests said; C(pi_mac), C(pi_model) and C(pi_serial) take it only validated."
  - Malformed lines (including a client that is not an IP address) are skipped with a warning giving their count;
    a missing log gives an empty inventory and a warning. Denied requests (traversal and other hostile names)
    never make hosts.
  - Usable as an AWX inventory source. The inventory update runs in an execution environment, not on the bakery, so
    it reads the log over SSH. AWX gives inventory sources cloud-type credentials only (never a machine credential),
    so the SSH options can also come from environment variables (C(PIFLEET_BOOT_EVENTS_SSH_HOST) ...), which a
    custom credential type injects together with the key file; see the collection's C(docs/awx.md). Options in the
    source file win over the environment.
  - The SSH user must be able to read the log and the map, for example by being in the group C(adm) on Debian,
    which owns the hook's log directory (C(/var/log/pifleet), mode 2750); the map is world-readable.
  - The configuration file name must end in C(boot_events.yml) or C(boot_events.yaml).
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin, so Ansible knows the file is its configuration.
    required: true
    type: str
    choices: [pifleet.netboot.boot_events]
  events:
    description: Path of the hook's JSON-lines event log (on the bakery when O(ssh_host) is set).
    type: path
    default: /var/log/pifleet/boot-events.jsonl
  fleet_map:
    description:
      - Path of the hook's fleet map JSON (on the bakery when O(ssh_host) is set). Its prefixes are known, not
        discovered, even in events written before the map listed them.
      - A missing map is a warning; a map that is not valid JSON is an error.
    type: path
  include_known:
    description:
      - Also add the Pis the hook knew, to the group V(known), as hosts of their own (V(known_serial_...)) whose
        C(pifleet_name) names their fleet host. They never join the fleet host, since a device may use a known Pi's
        prefix from its own address.
    type: bool
    default: false
  dhcp_log:
    description:
      - Path of dnsmasq's DHCP log file (on the bakery when O(ssh_host) is set); not there, no DHCP is read. dnsmasq
        stamps it in the bakery's local time, which is read over SSH with C(date +%z).
    type: str
    default: /var/log/pifleet/dnsmasq.log
  neighbours:
    description: The bakery's neighbour table (C(/proc/net/arp)), which maps a Pi's address to its MAC.
    type: str
    default: /proc/net/arp
  since:
    description:
      - Ignore events before this time. An ISO 8601 time (V(2026-11-23T10:00:00+00:00)) or an age ending in
        V(s), V(m), V(h), V(d) or V(w) (V(24h), V(7d)).
    type: str
  max_bytes:
    description:
      - Read only the last O(max_bytes) bytes of the log; the partial line at the start of that window is skipped.
    type: int
    default: 67108864
  ssh_host:
    description:
      - Read the files on this host with C(ssh -o BatchMode=yes [-p port] [-i key] [user@]host), so keys or an
        agent must grant access without a prompt. Unset, the files are read on the controller.
    type: str
    env:
      - name: PIFLEET_BOOT_EVENTS_SSH_HOST
  ssh_user:
    description: User for O(ssh_host); it must be able to read the log (on Debian, a member of C(adm)).
    type: str
    env:
      - name: PIFLEET_BOOT_EVENTS_SSH_USER
  ssh_port:
    description: Port for O(ssh_host).
    type: int
    env:
      - name: PIFLEET_BOOT_EVENTS_SSH_PORT
  ssh_private_key_file:
    description: Private key for O(ssh_host).
    type: path
    env:
      - name: PIFLEET_BOOT_EVENTS_SSH_PRIVATE_KEY_FILE
  ssh_args:
    description:
      - Extra C(ssh) arguments, before the host (V(-o StrictHostKeyChecking=accept-new) as two items).
      - From the environment, a comma-separated list (V(-o,UserKnownHostsFile=/runner/env/known_hosts)).
    type: list
    elements: str
    default: []
    env:
      - name: PIFLEET_BOOT_EVENTS_SSH_ARGS
  ssh_timeout:
    description: Seconds to wait for each C(ssh) command before failing.
    type: int
    default: 120
    env:
      - name: PIFLEET_BOOT_EVENTS_SSH_TIMEOUT
"""

EXAMPLES = r"""
---
# discovered.boot_events.yml, on the bakery: ansible-inventory -i discovered.boot_events.yml --graph
plugin: pifleet.netboot.boot_events
fleet_map: /var/lib/pifleet/tftp/map.json
since: 7d

---
# awx.boot_events.yml: an AWX inventory source reading the bakery's log over SSH. The host, user, key file and
# known_hosts come from the environment (PIFLEET_BOOT_EVENTS_SSH_*), which the custom credential type of
# docs/awx.md injects: AWX gives inventory sources no machine credential.
plugin: pifleet.netboot.boot_events
fleet_map: /var/lib/pifleet/tftp/map.json
# Compose from validated values only, and never connection variables (ansible_host, ansible_user ...):
# a discovered device is unverified, anything on the LAN can ask for any prefix from any address.
compose:
  pifleet_label: "'Pi ' ~ (pi_model | default('?') | string) ~ ' at ' ~ pifleet_address ~ ', ' ~ pifleet_last_seen"
keyed_groups:
  - key: pi_model | default('unknown') | string
    prefix: model
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: /tmp/pifleet-inventory-cache
cache_timeout: 300
"""

import json
import os
import re
import shlex
import shutil
import subprocess

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.unsafe_proxy import wrap_var

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.bootlogs import (
    parse_dhcp_log,
    parse_neighbours,
    utc_offset_epoch,
)

try:
    from ansible.template import trust_as_template
except ImportError:  # before ansible-core 2.19 a string is trusted unless wrapped

    def trust_as_template(value):
        return value

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.events import (
    host_vars,
    parse_events,
    parse_since,
    prefix_kind,
    summarise,
    tail_window,
)

# ssh exits 255 on its own errors; the remote command below exits 66 when the file is absent.
_SSH_MISSING = 66
# The characters of every value the plugin validates (serials, MACs, addresses, times, outcomes, boot file names).
# A string made of these alone cannot hold a Jinja delimiter ({{ {% {#), an override header (#jinja2:) or any
# sensible custom delimiter; any other string from the log is marked unsafe.
_PLAIN = re.compile(r'[A-Za-z0-9._:/+-]*')


def make_unsafe(value):
    """``value`` with each string that could be a template marked unsafe, the others plain (trusted on 2.19+).

    ansible-inventory --export (what AWX stores) prints an unsafe string as {"__ansible_unsafe": ...}, and AWX keeps
    that dict as the variable (community.general#8212): so only the strings that need it are marked, as
    community.docker and community.dns do. From ansible-core 2.19 an inventory plugin's strings are untrusted, and
    exported as such, unless marked trusted: the plain ones are, which is safe as they cannot be templates.
    """
    if isinstance(value, dict):
        return {make_unsafe(key): make_unsafe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [make_unsafe(item) for item in value]
    if isinstance(value, str):
        return trust_as_template(value) if _PLAIN.fullmatch(value) else wrap_var(value)
    return value


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = 'pifleet.netboot.boot_events'

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(('boot_events.yml', 'boot_events.yaml'))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option('cache') and cache
        update_cache = self.get_option('cache') and not cache
        summaries = None
        if use_cache:
            try:
                summaries = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if summaries is None:
            summaries = self._summaries()
        if update_cache:
            self._cache[cache_key] = summaries
        self._populate(summaries)

    # -- reading ---------------------------------------------------------------------------------

    def _summaries(self):
        since = self.get_option('since')
        try:
            since = parse_since(since) if since else None
        except ValueError as exc:
            raise AnsibleParserError('bad option since for the boot_events inventory: %s' % exc) from None
        max_bytes = self.get_option('max_bytes')
        if max_bytes is not None and max_bytes < 1:
            raise AnsibleParserError('bad option max_bytes for the boot_events inventory: %d is not a positive '
                                     'byte count; give e.g. 67108864 (64 MiB)' % max_bytes)
        fleet_map = None
        if self.get_option('fleet_map'):
            fleet_map = self._load_map(self.get_option('fleet_map'))
        events_path = self.get_option('events')
        data = self._read(events_path, max_bytes)
        if data is None:
            self.display.warning('boot_events inventory: no event log at %s%s; no Pis discovered'
                                 % (self._where(), events_path))
            return []
        events, malformed = parse_events(tail_window(data, max_bytes))
        if malformed:
            self.display.warning('boot_events inventory: skipped %d malformed line(s) in %s%s'
                                 % (malformed, self._where(), events_path))
        # MAC prefixes are MACs of the fleet: their DHCP requests are no discoveries.
        known_macs = [prefix for prefix in ((fleet_map or {}).get('prefixes') or {}) if prefix_kind(prefix) == 'mac']
        try:
            return summarise(events, fleet_map, self.get_option('include_known'), since, dhcp=self._dhcp(max_bytes),
                             neighbours=parse_neighbours(self._neighbours()), known_macs=known_macs)
        except ValueError as exc:
            raise AnsibleParserError('cannot use fleet map %s%s for the boot_events inventory: %s'
                                     % (self._where(), self.get_option('fleet_map'), exc)) from None

    def _dhcp(self, max_bytes):
        """The proxy DHCP's answers from dnsmasq's log, or None when there is no such log."""
        path = self.get_option('dhcp_log')
        if not path:
            return None
        if self.get_option('ssh_host'):
            data = self._read_ssh(path, max_bytes, prelude='date +%z')
            if data is None:
                return None
            offset, _newline, data = data.partition(b'\n')
            to_epoch = utc_offset_epoch(offset.decode('ascii', 'replace').strip())
        else:
            data, to_epoch = self._read(path, max_bytes), None  # this host's own time zone, as dnsmasq's
        return None if data is None else parse_dhcp_log(tail_window(data, max_bytes), to_epoch=to_epoch)

    def _neighbours(self):
        path = self.get_option('neighbours')
        data = self._read(path, None) if path else None  # a proc file has no size for tail -c
        return (data or b'').decode('utf-8', 'replace')

    def _where(self):
        return '%s:' % self.get_option('ssh_host') if self.get_option('ssh_host') else ''

    def _load_map(self, map_path):
        data = self._read(map_path, None)
        if data is None:
            self.display.warning('boot_events inventory: no fleet map at %s%s; every prefix counts as unknown '
                                 'unless the hook marked it known' % (self._where(), map_path))
            return None
        try:
            fleet_map = json.loads(data)
        except ValueError as exc:
            raise AnsibleParserError('cannot read fleet map %s%s for the boot_events inventory: not JSON (%s); '
                                     'point fleet_map at the hook map written by the fleet role'
                                     % (self._where(), map_path, exc)) from None
        if not isinstance(fleet_map, dict):
            raise AnsibleParserError('cannot read fleet map %s%s for the boot_events inventory: not a JSON object'
                                     % (self._where(), map_path))
        return fleet_map

    def _read(self, path, max_bytes):
        """The file's bytes (its last ``max_bytes + 1`` if bigger, see tail_window); None if absent."""
        if self.get_option('ssh_host'):
            return self._read_ssh(path, max_bytes)
        try:
            with open(path, 'rb') as handle:
                if max_bytes is not None:
                    size = os.fstat(handle.fileno()).st_size
                    handle.seek(max(0, size - max_bytes - 1))
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AnsibleParserError('cannot read %s for the boot_events inventory: %s; run as a user who may '
                                     'read it (the hook writes it as its own user)' % (path, exc)) from None

    def ssh_argv(self, path, max_bytes, prelude=None):
        """The ssh command reading ``path`` on ``ssh_host`` (exit 66 when it is absent), after ``prelude``'s output."""
        ssh = shutil.which('ssh')
        if not ssh:
            raise AnsibleParserError('cannot read the boot event log over ssh for the boot_events inventory: no '
                                     'ssh on PATH; install openssh-client (bindep) in the execution environment')
        argv = [ssh, '-o', 'BatchMode=yes']
        if self.get_option('ssh_port'):
            argv += ['-p', str(self.get_option('ssh_port'))]
        if self.get_option('ssh_private_key_file'):
            argv += ['-i', self.get_option('ssh_private_key_file')]
        argv += list(self.get_option('ssh_args') or [])
        host = self.get_option('ssh_host')
        if self.get_option('ssh_user'):
            host = '%s@%s' % (self.get_option('ssh_user'), host)
        quoted = shlex.quote(path)
        # ssh hands the remote side one shell string: quote the path; tail -c keeps big logs off the wire.
        reader = 'tail -c %d -- %s' % (max_bytes + 1, quoted) if max_bytes is not None else 'cat -- %s' % quoted
        remote = 'test -e %s || exit %d; %sexec %s' % (quoted, _SSH_MISSING, prelude + '; ' if prelude else '', reader)
        return [*argv, '--', host, remote]

    def _read_ssh(self, path, max_bytes, prelude=None):
        argv = self.ssh_argv(path, max_bytes, prelude)
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False,
                                  timeout=self.get_option('ssh_timeout'))
        except subprocess.TimeoutExpired:
            raise AnsibleParserError('reading %s:%s for the boot_events inventory timed out after %ss; check that '
                                     'the bakery is reachable or raise ssh_timeout'
                                     % (self.get_option('ssh_host'), path, self.get_option('ssh_timeout'))) from None
        if proc.returncode == _SSH_MISSING:
            return None
        if proc.returncode != 0:
            stderr = proc.stderr.decode('utf-8', errors='replace').strip()
            raise AnsibleParserError('reading %s:%s over ssh for the boot_events inventory failed (rc=%d): %s; check '
                                     'ssh_host/ssh_user/ssh_private_key_file and that the user may read the file'
                                     % (self.get_option('ssh_host'), path, proc.returncode, stderr))
        return proc.stdout

    # -- building --------------------------------------------------------------------------------

    def _populate(self, summaries):
        strict = self.get_option('strict')
        self.inventory.add_group('discovered')  # present even when empty, for plays that target it
        taken = []
        for summary in summaries:
            if summary['host'] in self.inventory.hosts:
                taken.append(summary['host'])
                continue
            group = 'known' if summary['known'] else 'discovered'
            self.inventory.add_group(group)
            host = self.inventory.add_host(summary['host'], group=group)
            # Unsafe: ansible-core before 2.19 would template a file name like {{ lookup('pipe', ...) }}.
            variables = make_unsafe(host_vars(summary))
            for key, value in variables.items():
                self.inventory.set_variable(host, key, value)
            self._set_composite_vars(self.get_option('compose'), variables, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option('groups'), variables, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option('keyed_groups'), variables, host, strict=strict)
        if taken:
            self.display.warning('boot_events inventory: left %d host(s) already in the inventory untouched: %s'
                                 % (len(taken), ', '.join(taken)))
