# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The LAN guard: which MAC may send from which Pi's address, as an nftables table for the bakery.

NFS with AUTH_SYS believes a client's IP address, so a device on the boot LAN that takes a Pi's address
gets that Pi's exports. The inventory knows each Pi's MAC and address (``pi_mac``, ``pi_ip``): the guard
lets NFS, rpcbind, MOUNT and TFTP packets from a Pi's address in only when they come from that Pi's MAC,
and drops them otherwise. Packets from addresses that are no Pi's are left alone (an export to a Pi's
address refuses them anyway), and so is every other port: the admin's SSH is never matched.

It stops a device that copies a Pi's address but not its MAC. It cannot stop one that copies both (a
MAC is as easy to set as an address); switches close that: DHCP snooping, dynamic ARP inspection, IP
source guard, or a VLAN per port. Pure functions; ``plugins/filter/lan_guard.py`` hands them to the role.
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import normalise_mac, normalise_serial

TABLE = 'pifleet_lan_guard'
PI3_OUI = 'b8:27:eb'  # a Pi 3's MAC is this and the serial's low three bytes
_PORTS = re.compile(r'([0-9]{1,5})(?:-([0-9]{1,5}))?')
_INTERFACE = re.compile(r'[A-Za-z0-9_.:@-]{1,15}')


class GuardError(Exception):
    def __init__(self, problems):
        self.problems = problems
        super().__init__('the LAN guard cannot be set up: %d problem(s):\n  %s' % (len(problems),
                                                                                   '\n  '.join(problems)))


def _mac(name, hv, problems):
    if hv.get('pi_mac') not in (None, ''):
        try:
            return normalise_mac(hv['pi_mac']).replace('-', ':')
        except ValueError as exc:
            problems.append('%s: pi_mac: %s' % (name, exc))
            return None
    if str(hv.get('pi_model', '')) == '3' and hv.get('pi_serial') not in (None, ''):
        try:
            serial = normalise_serial(hv['pi_serial'])
        except ValueError:
            return None  # the fleet plan says what is wrong with it
        return '%s:%s:%s:%s' % (PI3_OUI, serial[2:4], serial[4:6], serial[6:8])
    problems.append('%s: pi_mac is not set, so the LAN guard would drop its own NFS and TFTP packets; set pi_mac '
                    '(the MAC its router reserves pi_ip for)' % name)
    return None


def pairs(pis_vars):
    """``[{name, mac, ip, family}]`` of every Pi with an address of its own (``pis_vars``: {name: pi_* vars}).

    A Pi without ``pi_ip`` (exported to ``pifleet_export_scope``) has no address to guard and is left out.
    Raises GuardError with every problem: a Pi with an address but no MAC, a malformed one, an address
    two Pis claim.
    """
    found, problems, owners = [], [], {}
    for name in sorted(pis_vars):
        hv = pis_vars[name]
        if hv.get('pi_ip') in (None, ''):
            continue
        try:
            ip = ipaddress.ip_address(str(hv['pi_ip']).strip())
        except ValueError:
            problems.append('%s: pi_ip %r is not an IP address' % (name, hv['pi_ip']))
            continue
        owners.setdefault(str(ip), []).append(name)
        mac = _mac(name, hv, problems)
        if mac:
            found.append({'name': name, 'mac': mac, 'ip': str(ip), 'family': ip.version})
    problems += ['address %s is pi_ip of %s; each Pi needs its own' % (ip, ', '.join(names))
                 for ip, names in sorted(owners.items()) if len(names) > 1]
    if problems:
        raise GuardError(problems)
    return found


def check_ports(ports, what):
    """``ports`` as nftables set elements (``69``, ``32768-60999``); GuardError for anything else."""
    elements = []
    for port in ports:
        match = _PORTS.fullmatch(str(port).strip())
        low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (0, 0)
        if not match or not 0 < low <= high < 65536:
            raise GuardError(['%s: %r is not a port or a range of ports (69, 32768-60999)' % (what, port)])
        elements.append(str(low) if low == high else '%d-%d' % (low, high))
    return elements


def ruleset(found, tcp_ports, udp_ports, interfaces=()):
    """The nftables script that (re)makes the guard's table in one transaction."""
    tcp, udp = check_ports(tcp_ports, 'lan_guard_tcp_ports'), check_ports(udp_ports, 'lan_guard_udp_ports')
    bad = [name for name in interfaces if not _INTERFACE.fullmatch(str(name))]
    if bad:
        raise GuardError(['lan_guard_interfaces: %r is not an interface name' % bad[0]])
    lines = ['# pifleet.netboot lan_guard: NFS, rpcbind, MOUNT and TFTP from a Pi\'s address only from its MAC.',
             '# Made whole by the role from the inventory (pi_mac, pi_ip); nothing else of the firewall is touched.',
             'table inet %s' % TABLE, 'delete table inet %s' % TABLE, 'table inet %s {' % TABLE]
    for family, proto in ((4, 'ipv4_addr'), (6, 'ipv6_addr')):
        mine = [pair for pair in found if pair['family'] == family]
        lines += _set('pis%d' % family, 'ether_addr . %s' % proto, ['%s . %s' % (p['mac'], p['ip']) for p in mine])
        lines += _set('fleet%d' % family, proto, [p['ip'] for p in mine])
    where = ' iifname { %s }' % ', '.join('"%s"' % name for name in interfaces) if interfaces else ''
    lines += ['    chain input {', '        type filter hook input priority filter - 10; policy accept;',
              '       %s ip saddr @fleet4 jump pi4' % where, '       %s ip6 saddr @fleet6 jump pi6' % where, '    }']
    for family, match in ((4, 'ip saddr'), (6, 'ip6 saddr')):
        lines += ['    chain pi%d {' % family,
                  '        ether saddr . %s @pis%d return' % (match, family)]
        if tcp:
            lines.append('        tcp dport { %s } counter drop' % ', '.join(tcp))
        if udp:
            lines.append('        udp dport { %s } counter drop' % ', '.join(udp))
        lines.append('    }')
    return '\n'.join([*lines, '}', ''])


def _set(name, kind, elements):
    lines = ['    set %s {' % name, '        type %s' % kind]
    if elements:
        lines.append('        elements = { %s }' % ',\n                     '.join(sorted(elements)))
    return [*lines, '    }']
