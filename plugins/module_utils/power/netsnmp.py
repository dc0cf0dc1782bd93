# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SNMPv3 GET and SET of one INTEGER through net-snmp's ``snmpget`` and ``snmpset`` (Debian package ``snmp``).

USM (user, authentication and privacy keys, engine discovery) is net-snmp's, not ours. The user and the keys
never appear on a command line, where any local user of the bakery could read them (``/proc/<pid>/cmdline``):
each call writes them to ``snmp.conf`` in a private temporary directory (0700, removed afterwards) and points the
tool at it with ``SNMPCONFPATH``, which also keeps the host's own ``/etc/snmp`` settings out of the way.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ansible_collections.pifleet.netboot.plugins.module_utils.power.snmp import SnmpError, SnmpTimeout

# The protocols net-snmp 5.9 offers (its -a and -x options): SHA is SHA-1, AES is AES-128.
AUTH_PROTOCOLS = ('MD5', 'SHA', 'SHA-224', 'SHA-256', 'SHA-384', 'SHA-512')
PRIV_PROTOCOLS = ('DES', 'AES', 'AES-192', 'AES-256')
LEVELS = ('authPriv', 'authNoPriv')
MIN_KEY = 8  # USM refuses shorter pass phrases (RFC 3414 11.2)


def protocol(value, known, what):
    """The net-snmp name of an auth or priv protocol; ValueError lists the known ones."""
    name = str(value).strip().upper()
    if name not in known:
        raise ValueError('device.%s is %r: use one of %s' % (what, value, ', '.join(known)))
    return name


def check_key(value, what):
    """A pass phrase USM takes: at least 8 characters, printable (it goes in a config file line)."""
    text = '' if value is None else str(value)
    if len(text) < MIN_KEY:
        raise ValueError('device.%s %s: SNMPv3 pass phrases have at least %d characters'
                         % (what, 'is missing' if not text else 'is too short', MIN_KEY))
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise ValueError('device.%s holds a control character (a line break?); give the pass phrase on one line'
                         % what)
    return text


def check(settings):
    """SNMPv3 device settings checked (ValueError names the first problem), protocols in net-snmp's names."""
    if not settings['user']:
        raise ValueError('device.user missing: SNMPv3 needs the switch user (a USM user with write access)')
    if settings['security_level'] not in LEVELS:
        raise ValueError('device.security_level is %r: use %s' % (settings['security_level'], ' or '.join(LEVELS)))
    settings['auth_protocol'] = protocol(settings['auth_protocol'], AUTH_PROTOCOLS, 'auth_protocol')
    settings['auth_key'] = check_key(settings['auth_key'], 'auth_key')
    if settings['security_level'] == 'authPriv':
        settings['priv_protocol'] = protocol(settings['priv_protocol'], PRIV_PROTOCOLS, 'priv_protocol')
        settings['priv_key'] = check_key(settings['priv_key'], 'priv_key')
    return settings


def quoted(text):
    """A value of a net-snmp config line: in double quotes, with \\ and " escaped (its copy_nword rules)."""
    return '"%s"' % text.replace('\\', '\\\\').replace('"', '\\"')


def config(settings, directory):
    """snmp.conf making every call an SNMPv3 request of ``settings``' user at its level."""
    lines = ['defVersion 3', 'defSecurityName %s' % quoted(settings['user']),
             'defSecurityLevel %s' % settings['security_level'],
             'defAuthType %s' % settings['auth_protocol'], 'defAuthPassphrase %s' % quoted(settings['auth_key'])]
    if settings['security_level'] == 'authPriv':
        lines += ['defPrivType %s' % settings['priv_protocol'], 'defPrivPassphrase %s' % quoted(settings['priv_key'])]
    if settings.get('context'):
        lines.append('defContext %s' % quoted(settings['context']))
    # Nothing kept between calls (engine boots, certificates), no MIB loaded: numeric OIDs only.
    lines += ['persistentDir %s' % quoted(directory), 'noPersistentLoad yes', 'noPersistentSave yes', 'mibs :']
    return ''.join(line + '\n' for line in lines)


def agent(host, port):
    """net-snmp's address of an agent: udp:host:port, udp6:[address]:port for IPv6."""
    return 'udp6:[%s]:%d' % (host, port) if ':' in host else 'udp:%s:%d' % (host, port)


def explain(rc, out, err):
    """SnmpError (SnmpTimeout for no answer) from what a net-snmp tool printed."""
    lines = [line.strip() for line in (err + '\n' + out).splitlines()
             if line.strip() and not line.startswith('Created directory:')]
    text = '; '.join(lines) or 'exit status %s' % rc
    if rc == 124 or any(line.startswith('Timeout') for line in lines):
        raise SnmpTimeout(text)
    raise SnmpError(text)


class NetSnmpClient:
    """GET/SET of single INTEGER variables on one agent with SNMPv3, through ``snmpget``/``snmpset``.

    ``tools``: absolute paths of ``snmpget``, ``snmpset`` and ``env``; ``run(argv, timeout)``: (rc, out, err) of a
    command, killed after ``timeout`` seconds (rc 124).
    """

    def __init__(self, settings, timeout, retries, tools, run):
        self.settings, self.timeout, self.retries, self.tools, self.run = settings, timeout, retries, tools, run

    def get(self, oid):
        return self.call('snmpget', oid)

    def set(self, oid, value):
        return self.call('snmpset', oid, 'i', str(int(value)))

    def call(self, tool, oid, *value):
        directory = tempfile.mkdtemp(prefix='pifleet-snmp-')  # 0700: the keys are readable by this user only
        try:
            path = os.path.join(directory, 'snmp.conf')
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, 'w') as handle:
                handle.write(config(self.settings, directory))
            argv = [self.tools['env'], 'SNMPCONFPATH=%s' % directory, self.tools[tool], '-On', '-Oq', '-Ov', '-Oe',
                    '-t', '%g' % self.timeout, '-r', str(self.retries),
                    agent(self.settings['host'], self.settings['port']), oid, *value]
            # Engine discovery is one more request: at most two of them time out, each after every retry.
            rc, out, err = self.run(argv, 2 * self.timeout * (self.retries + 1) + 2)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if rc != 0:
            explain(rc, out, err)
        answer = out.strip()
        try:
            return int(answer)
        except ValueError:
            raise SnmpError('agent answered %r for %s' % (answer, oid)) from None
