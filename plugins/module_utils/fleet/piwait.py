# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting for many Pis' running systems at once, from their bakery (``pi_wait``).

A Pi is up when its SSH server, at ITS address, shows one of the host keys ITS root was given (type and
base64, as pi_root's ``host_keys`` list them). A key that is not its own is not up: an old root, or another
device at that address. The bakery looks in rounds, one ``ssh-keyscan`` over every address not seen up yet
(ssh-keyscan asks its hosts concurrently), a pause of ``interval`` seconds between rounds, against one deadline
on the monotonic clock from the start of the wait: each round's ``-T`` is cut to the time left (whole seconds,
at least one), and the round is killed a few seconds after that, since ssh-keyscan reads greetings and key
exchanges blocking (a device that trickles bytes would hold it). So a Pi that never answers is given up at the
timeout and at most about one look (a second) more.

Everything ssh-keyscan prints came from the LAN: lines are read as bytes, bounded in length, and only a line
naming an address that was asked, with a key type from a fixed list and valid base64, counts; at most a few
keys per address are kept. Nothing of what was seen is returned but a key type from that list.

``PiWait`` takes its scanner, clock and sleep from the caller (tests drive it with their own). No AnsibleModule.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
import time

# What a root's host keys may be, and the name ssh-keyscan's -t gives each (pi_root makes ed25519, ecdsa, rsa).
SCAN_TYPES = {'ssh-ed25519': 'ed25519', 'ecdsa-sha2-nistp256': 'ecdsa', 'ecdsa-sha2-nistp384': 'ecdsa',
              'ecdsa-sha2-nistp521': 'ecdsa', 'ssh-rsa': 'rsa'}
SSH_PORT = 22
MAX_LINE = 16384  # an RSA key of 16384 bits (OpenSSH's most) is about 2.8 kB of base64
KEYS_PER_ADDRESS = 8  # a server shows one key per type asked: anything past a few is noise
GRACE = 3  # seconds past a round's -T before it is killed
_BASE64 = re.compile(rb'[A-Za-z0-9+/]+={0,2}')
_LABEL = r'(?!-)[a-z0-9-]{1,63}(?<!-)'
_HOST_NAME = re.compile(r'%s(?:\.%s)*\.?' % (_LABEL, _LABEL))


def scan_address(text):
    """The address as ssh-keyscan is given it (an IP address in its usual form, or a host name in lower case);
    ValueError when it is neither. ssh-keyscan reads ``a,b`` as two hosts and a leading ``-`` as an option."""
    text = str(text or '').strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower()
    if len(name) > 253 or not _HOST_NAME.fullmatch(name):
        raise ValueError('%r is not an IP address or a host name' % text[:80])
    return name


def output_name(address, port=SSH_PORT):
    """How ssh-keyscan names ``address`` in its output: lower case, ``[address]:port`` for another port."""
    return address.lower() if port == SSH_PORT else '[%s]:%d' % (address.lower(), port)


def known_key(line):
    """``<type> <base64>`` of one of pi_root's host_keys lines (comment dropped); None when it is no key of a
    type ssh-keyscan is asked for."""
    fields = str(line or '').split()
    if len(fields) < 2 or fields[0] not in SCAN_TYPES or not _valid_base64(fields[1].encode('ascii', 'replace')):
        return None
    return '%s %s' % (fields[0], fields[1])


def _valid_base64(data):
    if not _BASE64.fullmatch(data):
        return False
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def scan_argv(addresses, look, types, port=SSH_PORT):
    """One ssh-keyscan for every address, each connection given ``look`` whole seconds."""
    return ['ssh-keyscan', '-T', str(int(look)), '-p', str(int(port)), '-t', ','.join(sorted(types)), '--',
            *addresses]


def parse_scan(data, names):
    """ssh-keyscan's output (bytes) -> {name: set of ``<type> <base64>``} for the ``names`` asked only.

    A line too long, not ASCII, not ``<name> <type> <base64>``, of another type or naming a host not asked is
    skipped; an address keeps its first KEYS_PER_ADDRESS keys."""
    wanted = set(names)
    seen = {}
    for raw in bytes(data or b'').split(b'\n'):
        if len(raw) > MAX_LINE or raw.startswith(b'#'):
            continue
        fields = raw.split()
        if len(fields) != 3 or not _valid_base64(fields[2]):
            continue
        try:
            name, kind, blob = (field.decode('ascii') for field in fields)
        except UnicodeDecodeError:
            continue
        if name not in wanted or kind not in SCAN_TYPES:
            continue
        keys = seen.setdefault(name, set())
        if len(keys) < KEYS_PER_ADDRESS:
            keys.add('%s %s' % (kind, blob))
    return seen


def look_seconds(left, interval):
    """ssh-keyscan's -T for a round: the interval, cut to the time left (rounded up), at least one second."""
    return max(1, min(int(interval), math.ceil(left)))


class PiWait:
    """Wait for ``pis`` ({name, address, keys}: address from ``scan_address``, keys a set from ``known_key``).

    ``scan(argv, timeout)`` runs a command and answers (rc, stdout bytes), killing it after ``timeout``
    seconds; ``clock`` is monotonic."""

    def __init__(self, pis, timeout, interval, scan, *, port=SSH_PORT, clock=time.monotonic, sleep=time.sleep):
        self.pis, self.timeout, self.interval, self.port = pis, timeout, max(1, int(interval)), port
        self.scan, self.clock, self.sleep = scan, clock, sleep
        self.rounds, self.waited = 0, 0.0
        self.results = {pi['name']: {'name': pi['name'], 'up': False, 'seconds': None, 'key_type': None,
                                     'reason': None} for pi in pis}
        self._wrong = set()

    def _due(self):
        return [pi for pi in self.pis if pi['keys'] and not self.results[pi['name']]['up']]

    def _look(self, due, started, deadline):
        addresses = sorted({pi['address'] for pi in due})
        types = {SCAN_TYPES[key.split(' ', 1)[0]] for pi in due for key in pi['keys']}
        look = look_seconds(deadline - self.clock(), self.interval)
        _rc, out = self.scan(scan_argv(addresses, look, types, self.port), look + GRACE)
        self.rounds += 1
        seen = parse_scan(out, [output_name(address, self.port) for address in addresses])
        now = self.clock()
        for pi in due:
            keys = seen.get(output_name(pi['address'], self.port), set())
            mine = sorted(keys & pi['keys'])
            if mine:
                self.results[pi['name']].update(up=True, seconds=round(now - started, 1),
                                                key_type=mine[0].split(' ', 1)[0])
            elif keys:
                self._wrong.add(pi['name'])

    def wait(self):
        """Each Pi's result, in the order given: name, up, seconds (from the start to the round that saw it, or
        None), key_type (of its own key seen), reason (why it is not up, else None)."""
        started = self.clock()
        deadline = started + self.timeout
        due = self._due()
        while due:
            self._look(due, started, deadline)
            due = self._due()
            left = deadline - self.clock()
            if not due or left <= 0:
                break
            self.sleep(min(self.interval, left))
        self.waited = round(self.clock() - started, 1)
        return self.report()

    def report(self, unlooked=None):
        """Each Pi's result, in the order given, with the reason of each Pi not up (``unlooked``: why none was
        looked for)."""
        for pi in self.pis:
            result = self.results[pi['name']]
            if result['up']:
                continue
            if unlooked:
                result['reason'] = unlooked
            elif not pi['keys']:
                result['reason'] = 'its root has no host key to look for (%s)' % ', '.join(sorted(SCAN_TYPES))
            elif pi['name'] in self._wrong:
                result['reason'] = ('an SSH server answered at %s with none of its root\'s host keys (an old root, '
                                    'or another device at its address)' % pi['address'])
            else:
                result['reason'] = 'no SSH server answered at %s within %g s' % (pi['address'], self.timeout)
        return [self.results[pi['name']] for pi in self.pis]
