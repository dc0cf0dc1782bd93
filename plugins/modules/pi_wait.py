#!/usr/bin/python
# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pi_wait
short_description: Wait, from the bakery, until Raspberry Pis' running systems answer with their own SSH host keys
version_added: 0.1.0
description:
  - Waits for many Pis at once, in one call per bakery (the C(reimage), C(upgrade) and C(rollback) playbooks call it
    after a power cycle). A Pi is up when its SSH server, at its O(pis[].address), shows one of the host keys its root
    was given (O(pis[].host_keys), M(pifleet.netboot.pi_root)'s C(host_keys)), type and base64 alike. A key that is
    not its own does not count (an old root, or another device at that address).
  - Looks in rounds, one C(ssh-keyscan) over every address not seen up yet (it asks them concurrently), with a pause
    of O(interval) seconds between rounds. Each look waits at most O(interval) seconds for an answer, never past the
    deadline; the deadline is O(timeout) seconds on the bakery's monotonic clock from the module's start. A Pi that
    never answers is given up after O(timeout) seconds and at most about one look (a second) more.
  - Never fails for a Pi that does not come up; RV(pis) says which did. Changes nothing.
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
attributes:
  check_mode:
    support: full
    details: Waits for nothing and looks at no Pi; every Pi is reported not up and RV(waited) is false.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - C(ssh-keyscan) (openssh-client) on the bakery; C(stdbuf) (coreutils), when there, keeps what a round saw if
    that round has to be killed.
notes:
  - Everything an SSH server sends is data from the LAN, where any device can answer anything. Only lines of
    C(ssh-keyscan)'s output that name an address asked, with a key type from the list below and valid base64, are
    read, bounded in length; nothing of it is returned but the type of a Pi's own key seen.
  - Key types looked for are C(ssh-ed25519), C(ecdsa-sha2-nistp256/384/521) and C(ssh-rsa); a Pi whose root has none
    of them is not looked for and is reported not up at once.
  - C(ssh-keyscan) reads greetings and key exchanges blocking, so a device that trickles bytes could hold a round;
    each round is killed 3 seconds after its look time, and what it saw of the other Pis before is kept.
options:
  pis:
    description: The Pis to wait for.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The Pi's name (its inventory name); each name once.
        type: str
        required: true
      address:
        description: Where its SSH server answers, an IP address or a host name the bakery resolves.
        type: str
        required: true
      host_keys:
        description: The public host keys its root was given, as lines C(<type> <base64> [comment]).
        type: list
        elements: str
        required: true
  timeout:
    description: Seconds to wait for the Pis, from the module's start.
    type: int
    required: true
  interval:
    description: Seconds between two rounds, and the most each round waits for an answer.
    type: int
    default: 5
  port:
    description: The port of the Pis' SSH servers.
    type: int
    default: 22
"""

EXAMPLES = r"""
- name: Wait up to 10 minutes for the Pis this bakery just power-cycled
  pifleet.netboot.pi_wait:
    pis:
      - {name: pi-01, address: 10.0.0.51, host_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"]}
      - {name: pi-02, address: 10.0.0.52, host_keys: "{{ pi02_root.host_keys }}"}
    timeout: 600
    interval: 5
  register: pis_up
# pis_up.pis: [{name: pi-01, up: true, seconds: 41.3, key_type: ssh-ed25519, reason: null}, ...]
"""

RETURN = r"""
pis:
  description: One entry per Pi, in the order given.
  type: list
  elements: dict
  returned: always
  contains:
    name:
      description: The Pi's name.
      type: str
      sample: pi-01
    up:
      description: Whether its SSH server answered at its address with one of its root's host keys.
      type: bool
      sample: true
    seconds:
      description: Seconds from the module's start to the end of the round that saw it up; null when it did not come up.
      type: float
      sample: 41.3
    key_type:
      description: The type of its own host key that was seen; null when it did not come up.
      type: str
      sample: ssh-ed25519
    reason:
      description: Why it is not up (no answer, another key, no key to look for); null when it is up.
      type: str
      sample: no SSH server answered at 10.0.0.52 within 600 s
waited:
  description: Whether the module looked (false in check mode).
  type: bool
  returned: always
seconds:
  description: Seconds the wait took.
  type: float
  returned: always
rounds:
  description: How many times C(ssh-keyscan) ran.
  type: int
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pifleet.netboot.plugins.module_utils.common import command
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import PifleetModule
from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.piwait import PiWait, known_key, scan_address

PI_OPTIONS = dict(name=dict(type='str', required=True), address=dict(type='str', required=True),
                  host_keys=dict(type='list', elements='str', required=True, no_log=False))


def check_pis(base):
    """The Pis with their addresses checked and their keys read; every problem reported at once."""
    pis = []
    for index, pi in enumerate(base.params['pis']):
        try:
            address = scan_address(pi['address'])
        except ValueError as exc:
            base.problem('pis[%d] (%s): address %s' % (index, pi['name'], exc))
            continue
        pis.append({'name': pi['name'], 'address': address,
                    'keys': {key for key in map(known_key, pi['host_keys']) if key}})
    if base.params['timeout'] < 0:
        base.problem('timeout must be 0 or more seconds, not %d' % base.params['timeout'])
    if base.params['interval'] < 1:
        base.problem('interval must be 1 or more seconds, not %d' % base.params['interval'])
    if not 0 < base.params['port'] < 65536:
        base.problem('port must be 1 to 65535, not %d' % base.params['port'])
    base.unique(pis, 'name', 'pis: the name(s) %s appear more than once; give each Pi once')
    base.check()
    return pis


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pis=dict(type='list', elements='dict', options=PI_OPTIONS, required=True),
            timeout=dict(type='int', required=True),
            interval=dict(type='int', default=5),
            port=dict(type='int', default=22),
        ),
        supports_check_mode=True,
    )
    base = PifleetModule(module, {'changed': False, 'waited': False, 'seconds': 0.0, 'rounds': 0})
    pis = check_pis(base)
    params = module.params
    if module.check_mode:
        base.result['pis'] = PiWait(pis, params['timeout'], params['interval'], None).report(
            'not looked for: check mode waits for nothing')
        module.exit_json(**base.result)
    keyscan = module.get_bin_path('ssh-keyscan')
    if not keyscan:
        base.fail('pi_wait found no ssh-keyscan on this bakery; install openssh-client')
    stdbuf = module.get_bin_path('stdbuf')
    prefix = [stdbuf, '-oL'] if stdbuf else []  # a killed round keeps the lines it wrote

    def scan(argv, timeout):
        rc, out, _err = command.run([*prefix, keyscan, *argv[1:]], timeout, binary=True)
        return rc, out

    wait = PiWait(pis, params['timeout'], params['interval'], scan, port=params['port'])
    base.result.update(pis=wait.wait(), waited=True, seconds=wait.waited, rounds=wait.rounds)
    module.exit_json(**base.result)


if __name__ == '__main__':
    main()
