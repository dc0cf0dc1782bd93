#!/usr/bin/python
# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pi_power
short_description: Switch Raspberry Pis on and off through smart plugs, PoE switch ports, USB hubs or a PPI program
version_added: 0.1.0
description:
  - Reads and sets the power of Pis that have no BMC, from the bakery host. The state is queried first where
    the driver can, so O(state=on) on a powered Pi changes nothing.
  - V(cycled) switches the Pi off, waits O(cycle_delay) seconds and switches it on again; a Pi that is off is
    just switched on.
  - Many Pis in one call with O(pis); their devices are driven concurrently (O(parallel)). A Pi that fails
    does not stop the others, whether its device fails, its settings are invalid or its program is missing on
    the bakery; the module then fails listing every failed Pi with its device, and RV(pis) has each Pi's result.
  - "Driver V(command): the bakery's PPI protocol. Runs C(<program> -c <config>) with
    C({\"piId\": \"<pi_id>\", \"action\": \"poweron\"|\"poweroff\"}) on stdin; success is exit 0, nothing on
    stderr and C(ok) on stdout. Keys of O(device): C(program) (path, required), C(config) (path, required),
    C(pi_id) (how the PPI program knows the Pi, usually its serial; passed as given, required).
    PPI has no status query: V(status) reports V(unknown), and V(on) and V(off) always act (changed)."
  - "Driver V(http): smart plugs. Keys: C(url) (the plug, C(http://host[:port]), required), C(api) (required):
    V(shelly1) (Shelly Gen1, C(/relay/<channel>), HTTP basic authentication), V(shelly2) (Shelly Gen2 and later,
    RPC C(Switch.GetStatus) and C(Switch.Set), digest authentication with SHA-256), V(tasmota)
    (C(/cm?cmnd=Power<channel+1>), WebPassword sent as the C(user) and C(password) query arguments);
    C(channel) (relay, from 0; default 0), C(username) (default C(admin)), C(password).
    Plugs are reached directly, never through a proxy from the environment."
  - "Driver V(snmp): a PoE switch port through POWER-ETHERNET-MIB C(pethPsePortAdminEnable)
    (C(1.3.6.1.2.1.105.1.1.1.3.<group>.<port_index>), 1 on, 2 off). Keys: C(host) (required), C(port) (UDP
    port, default 161), C(group) (default 1), C(port_index) (the switch port, required), C(version) (V(2c),
    the default, or V(3)). A set is read back to confirm it."
  - "SNMPv2c (C(version: 2c)) uses a built-in client (no pysnmp or net-snmp tools needed) and C(community)
    (default C(private); needs write access). It sends the community in clear on the LAN: use it for old switches."
  - "SNMPv3 (C(version: 3)) goes through net-snmp's C(snmpget) and C(snmpset) on the bakery (Debian package
    C(snmp), which the fleet role installs). Keys: C(user) (a USM user with write access, required),
    C(security_level) (V(authPriv), the default, or V(authNoPriv)), C(auth_protocol) (V(MD5), V(SHA) (SHA-1, the
    default), V(SHA-224), V(SHA-256), V(SHA-384), V(SHA-512)), C(auth_key) (required), C(priv_protocol)
    (V(DES), V(AES) (AES-128, the default), V(AES-192), V(AES-256)), C(priv_key) (required with V(authPriv)),
    C(context) (a context name, when the switch wants one). Keys are pass phrases of at least 8 characters. They
    never appear on a command line: each request writes them to a configuration file in a private temporary
    directory (mode 0700, removed afterwards)."
  - "Driver V(uhubctl): a port of a USB hub with per-port power switching. Keys: C(location) (the hub,
    for example C(1-1), required), C(port) (required), C(program) (default C(uhubctl) on the PATH)."
author:
  - pifleet maintainers (@pifleet)
extends_documentation_fragment:
  - pifleet.netboot._attributes
  - pifleet.netboot._attributes.full
attributes:
  check_mode:
    details: Devices are queried (reads are safe) to predict C(changed); nothing is switched.
  diff_mode:
    details: The diff shows the power of each Pi that changes, before and after.
requirements:
  - coreutils C(timeout) on the bakery (bounds the run time of the PPI program, uhubctl and net-snmp's tools).
  - uhubctl for the V(uhubctl) driver.
  - net-snmp's C(snmpget) and C(snmpset) (Debian package C(snmp)) for the V(snmp) driver with SNMPv3.
notes:
  - O(device.password), O(device.community), O(device.auth_key) and O(device.priv_key) are marked C(no_log), so
    their values are masked in the output and logs wherever they occur. Keep them in Ansible Vault.
  - The timeout applies to each request (each SNMP transmission, each HTTP request, each run of a program);
    a request that times out or cannot connect is retried O(retries) times.
options:
  name:
    description:
      - Name of the Pi (usually its inventory name); used in results and messages.
      - Required for every Pi, at the top level or in each item of O(pis).
    type: str
  state:
    description:
      - V(on) or V(off) switches the Pi when it is not already so; V(cycled) switches it off and on again;
        V(status) only reads.
      - 'Quote V(on) and V(off) in YAML, for example C(state: "on"); unquoted, YAML reads them as booleans.'
    type: str
    choices: ["on", "off", cycled, status]
    default: status
  driver:
    description:
      - How the Pi's power is switched; see the description for each driver's O(device) keys.
      - Required for every Pi, at the top level or in each item of O(pis).
    type: str
    choices: [command, http, snmp, uhubctl]
  device:
    description:
      - Settings of the driver; only the keys of the chosen driver may be given (see the description).
      - In O(pis), the keys of an item's O(device) are merged over the top-level O(device), so shared
        settings (a switch's host and community) can be given once; each item takes only the top-level keys
        its driver knows.
    type: dict
    suboptions:
      program:
        description: Program to run (V(command), required; V(uhubctl), default C(uhubctl)).
        type: str
      config:
        description: Configuration file passed to the PPI program with C(-c) (V(command)).
        type: str
      pi_id:
        description: The Pi as the PPI program knows it, usually its serial (V(command)).
        type: str
      url:
        description: Base URL of the plug, C(http://host[:port]) (V(http)).
        type: str
      api:
        description: API of the plug (V(http)).
        type: str
        choices: [shelly1, shelly2, tasmota]
      channel:
        description: Relay of the plug, counted from 0 (V(http)); default 0.
        type: int
      username:
        description: User for the plug's authentication (V(http)); default C(admin).
        type: str
      password:
        description: Password of the plug (V(http)).
        type: str
      host:
        description: Address or name of the PoE switch (V(snmp)).
        type: str
      port:
        description: UDP port of the switch's agent (V(snmp), default 161) or port of the USB hub (V(uhubctl)).
        type: int
      community:
        description: SNMPv2c community with write access (V(snmp), version V(2c)); default C(private).
        type: str
      version:
        description: SNMP version (V(snmp)) - V(2c) (the default) or V(3).
        type: raw
      user:
        description: SNMPv3 user (V(snmp), version V(3)); it needs write access to the PoE port.
        type: str
      security_level:
        description: SNMPv3 security level (V(snmp), version V(3)); default V(authPriv).
        type: str
        choices: [authPriv, authNoPriv]
      auth_protocol:
        description: SNMPv3 authentication protocol (V(snmp), version V(3)); default V(SHA).
        type: str
        choices: [MD5, SHA, SHA-224, SHA-256, SHA-384, SHA-512]
      auth_key:
        description: SNMPv3 authentication pass phrase (V(snmp), version V(3)); at least 8 characters.
        type: str
      priv_protocol:
        description: SNMPv3 privacy protocol (V(snmp), version V(3)); default V(AES).
        type: str
        choices: [DES, AES, AES-192, AES-256]
      priv_key:
        description: SNMPv3 privacy pass phrase (V(snmp), version V(3) with V(authPriv)); at least 8 characters.
        type: str
      context:
        description: SNMPv3 context name (V(snmp), version V(3)), when the switch wants one.
        type: str
      group:
        description: pethPsePortGroupIndex, the PoE group (usually the stack member) (V(snmp)); default 1.
        type: int
      port_index:
        description: pethPsePortIndex, the PoE port (V(snmp)).
        type: int
      location:
        description: Location of the USB hub as uhubctl shows it, for example C(1-1) (V(uhubctl)).
        type: str
  timeout:
    description: Seconds to wait for each request to a device.
    type: float
    default: 5
  retries:
    description: How often a request that timed out or could not connect is repeated.
    type: int
    default: 2
  cycle_delay:
    description: Seconds between switching off and on again with O(state=cycled).
    type: float
    default: 3
  parallel:
    description: How many devices are driven at the same time with O(pis).
    type: int
    default: 16
  pis:
    description:
      - Many Pis in one call. Top-level O(state), O(driver), O(device), O(timeout), O(retries) and
        O(cycle_delay) are the defaults for each item; O(device) keys are merged.
      - Each name may appear only once.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the Pi (see O(name)).
        type: str
      state:
        description: Wanted power (see O(state)).
        type: str
        choices: ["on", "off", cycled, status]
      driver:
        description: Driver (see O(driver)).
        type: str
        choices: [command, http, snmp, uhubctl]
      device:
        description: Settings of the driver, merged over the top-level O(device) (see O(device)).
        type: dict
        suboptions:
          program:
            description: See O(device.program).
            type: str
          config:
            description: See O(device.config).
            type: str
          pi_id:
            description: See O(device.pi_id).
            type: str
          url:
            description: See O(device.url).
            type: str
          api:
            description: See O(device.api).
            type: str
            choices: [shelly1, shelly2, tasmota]
          channel:
            description: See O(device.channel).
            type: int
          username:
            description: See O(device.username).
            type: str
          password:
            description: See O(device.password).
            type: str
          host:
            description: See O(device.host).
            type: str
          port:
            description: See O(device.port).
            type: int
          community:
            description: See O(device.community).
            type: str
          version:
            description: See O(device.version).
            type: raw
          user:
            description: See O(device.user).
            type: str
          security_level:
            description: See O(device.security_level).
            type: str
            choices: [authPriv, authNoPriv]
          auth_protocol:
            description: See O(device.auth_protocol).
            type: str
            choices: [MD5, SHA, SHA-224, SHA-256, SHA-384, SHA-512]
          auth_key:
            description: See O(device.auth_key).
            type: str
          priv_protocol:
            description: See O(device.priv_protocol).
            type: str
            choices: [DES, AES, AES-192, AES-256]
          priv_key:
            description: See O(device.priv_key).
            type: str
          context:
            description: See O(device.context).
            type: str
          group:
            description: See O(device.group).
            type: int
          port_index:
            description: See O(device.port_index).
            type: int
          location:
            description: See O(device.location).
            type: str
      timeout:
        description: See O(timeout).
        type: float
      retries:
        description: See O(retries).
        type: int
      cycle_delay:
        description: See O(cycle_delay).
        type: float
"""

EXAMPLES = r"""
- name: Power-cycle one Pi on a Shelly Plus plug
  pifleet.netboot.pi_power:
    name: pi-03
    state: cycled
    driver: http
    device:
      url: http://10.0.0.7
      api: shelly2
      password: "{{ vault_shelly_password }}"

- name: Switch on every Pi of the fleet, on PoE ports of one switch, in one call
  pifleet.netboot.pi_power:
    state: "on"
    driver: snmp
    device:
      host: poe-switch.lab
      community: "{{ vault_poe_community }}"
    pis:
      - {name: pi-01, device: {port_index: 1}}
      - {name: pi-02, device: {port_index: 2}}
      - {name: pi-03, driver: uhubctl, device: {location: "1-1", port: 2}}

- name: Power-cycle a Pi on a PoE switch that speaks SNMPv3 only (authPriv, SHA-256 and AES-256)
  pifleet.netboot.pi_power:
    name: pi-04
    state: cycled
    driver: snmp
    device:
      host: poe-switch.lab
      version: 3
      user: pifleet
      auth_protocol: SHA-256
      auth_key: "{{ vault_poe_auth_key }}"
      priv_protocol: AES-256
      priv_key: "{{ vault_poe_priv_key }}"
      port_index: 4

- name: Ask the bakery's PPI program to switch a Pi off
  pifleet.netboot.pi_power:
    name: pi-07
    state: "off"
    driver: command
    device:
      program: /usr/local/bin/ppi
      config: /etc/pifleet/ppi.yaml
      pi_id: "3a4b5c6d"

- name: Read the power of the fleet
  pifleet.netboot.pi_power:
    pis: "{{ pifleet_power_list }}"  # [{name, driver, device}, ...] built from the inventory
  register: power
"""

RETURN = r"""
pis:
  description: One entry per Pi of the call, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the Pi.
      type: str
      sample: pi-03
    driver:
      description: Driver used.
      type: str
      sample: http
    device:
      description: The device, as it appears in messages.
      type: str
      sample: http shelly2 http://10.0.0.7, channel 0
    power:
      description:
        - Power of the Pi after the call (V(on), V(off) or V(unknown) when the driver cannot tell).
        - In check mode, the power it would have.
      type: str
      sample: "on"
    previous:
      description: Power before the call (V(unknown) when the driver cannot tell or the read failed).
      type: str
      sample: "off"
    changed:
      description: Whether the Pi was (or in check mode would be) switched.
      type: bool
      sample: true
    error:
      description: Why this Pi failed, with its device.
      type: str
      returned: when this Pi failed
      sample: "power on failed for pi-03 (http shelly2 http://10.0.0.7, channel 0): timed out after 5s (2 retries);
        check the plug is reachable from the bakery"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import ModuleHost, PifleetModule
from ansible_collections.pifleet.netboot.plugins.module_utils.power.power import DRIVERS
from ansible_collections.pifleet.netboot.plugins.module_utils.power.powerwork import (
    PiPower,
    check_item,
    diff_entry,
    failure_message,
)

ITEM_KEYS = ('name', 'state', 'driver', 'device', 'timeout', 'retries', 'cycle_delay')
STATES = ['on', 'off', 'cycled', 'status']
DEVICE_OPTIONS = dict(
    program=dict(type='str'), config=dict(type='str'), pi_id=dict(type='str'),
    url=dict(type='str'), api=dict(type='str', choices=['shelly1', 'shelly2', 'tasmota']), channel=dict(type='int'),
    username=dict(type='str'), password=dict(type='str', no_log=True),
    host=dict(type='str'), port=dict(type='int'), community=dict(type='str', no_log=True),
    version=dict(type='raw'), user=dict(type='str'), security_level=dict(type='str', choices=['authPriv', 'authNoPriv']),
    auth_protocol=dict(type='str', choices=['MD5', 'SHA', 'SHA-224', 'SHA-256', 'SHA-384', 'SHA-512']),
    auth_key=dict(type='str', no_log=True), priv_protocol=dict(type='str', choices=['DES', 'AES', 'AES-192', 'AES-256']),
    priv_key=dict(type='str', no_log=True), context=dict(type='str'),
    group=dict(type='int'), port_index=dict(type='int'), location=dict(type='str'),
)


def items(base):
    """The Pis of this call, each with its own device settings (``own``); every problem at once."""
    params = base.params
    if params['parallel'] < 1:
        base.problem('invalid parallel: %d; give at least 1' % params['parallel'])
    found = []
    for (where, item), raw in zip(base.items(ITEM_KEYS, 'the Pi'), params['pis'] or [{}]):
        try:
            check_item(item, where)
        except ValueError as exc:
            base.problem(str(exc))
            continue
        item['own'] = raw.get('device')
        found.append(item)
    base.unique(found, 'name', 'duplicate Pis in pis: %s given more than once; give each Pi once')
    base.check()
    return found


def main():
    item_options = dict(
        name=dict(type='str'),
        state=dict(type='str', choices=STATES),
        driver=dict(type='str', choices=sorted(DRIVERS)),
        device=dict(type='dict', options=DEVICE_OPTIONS),
        timeout=dict(type='float'),
        retries=dict(type='int'),
        cycle_delay=dict(type='float'),
    )
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type='str'),
            state=dict(type='str', choices=STATES, default='status'),
            driver=dict(type='str', choices=sorted(DRIVERS)),
            device=dict(type='dict', options=DEVICE_OPTIONS),
            timeout=dict(type='float', default=5),
            retries=dict(type='int', default=2),
            cycle_delay=dict(type='float', default=3),
            parallel=dict(type='int', default=16),
            pis=dict(type='list', elements='dict', options=item_options),
        ),
        supports_check_mode=True,
    )
    base = PifleetModule(module, {'changed': False, 'pis': []}, 'pis')
    power = PiPower(ModuleHost(module))
    plan = power.plan(items(base), module.params['device'], module.params['pis'] is not None)
    results = power.apply(plan, module.params['parallel'])
    base.result.update(pis=results, changed=any(result['changed'] for result in results))
    if module._diff:
        base.result['diff'] = [diff_entry(result) for result in results if result['changed'] and 'error' not in result]
    problem = failure_message(results)
    if problem:
        base.fail(problem)
    module.exit_json(**base.result)


if __name__ == '__main__':
    main()
