# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SSH trust from the first boot: the names each Pi's host certificate is valid for, and the controller's
known_hosts lines (``pifleet_known_hosts``).

Each bakery holds a fleet host CA and pi_root signs every root's host keys with it, for the Pi's
principals: its inventory name, its host name, its address and, when set, the ``ansible_host`` the
controller reaches it by (ssh checks a certificate's principals against the name it connected to).
The controller then trusts one line per bakery, ``@cert-authority <its Pis' names and addresses>
<CA public key>``, valid across reimage, rebuild, upgrade and rollback. A root whose sshd cannot take
a certificate (``host_certificate: false``) gets plain lines with its host keys instead.
Pure functions; ``plugins/filter/fleet_known_hosts.py`` wraps them.
"""

from __future__ import annotations

import re

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.hostcert import check_principals

# known_hosts patterns per line: OpenSSH reads long lines, but a fleet of 1000 Pis would make one of 100 kB.
PER_LINE = 64
_KEY = re.compile(r'(ssh-ed25519|ecdsa-sha2-nistp(?:256|384|521)|ssh-rsa|sk-ssh-ed25519@openssh\.com|'
                  r'sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}')


def principals(name, hostname, ip=None, ssh_host=None):
    """The names and addresses one Pi's certificate is valid for, in order, each once; names that are no host
    name or address (``ansible_host`` may be anything) are left out."""
    found = []
    for given in (name, hostname, ip, ssh_host):
        value = None if given is None else str(given).strip()
        if value and value not in found and not check_principals([value], 'x'):
            found.append(value)
    return found


def public_key(text):
    """``<type> <base64>`` of a public key line (its comment dropped); ValueError when it is none."""
    text = str(text or '').strip()
    match = _KEY.match(text)
    if not match or '\n' in text or '\r' in text or text[match.end():match.end() + 1] not in ('', ' '):
        raise ValueError('%r is not an SSH public key' % (str(text)[:60],))
    return match.group(0)


def _chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def known_hosts(plan, roots, ca_public, comment=None):
    """The known_hosts lines of one bakery's Pis (``plan``), sorted and stable from run to run.

    ``@cert-authority`` lines with the CA's public key (``ca_public``; None: no CA) for the principals of every
    Pi of the plan, then ``<principals> <key>`` for each host key of the Pis whose root has no certificate
    (pi_root's result ``roots``: ``host_certificate`` false, ``host_keys``).
    """
    pis = sorted((plan or {}).get('pis', []), key=lambda pi: pi['name'])
    lines = []
    if ca_public:
        ca = public_key(ca_public)
        names = []
        for pi in pis:
            names.extend(n for n in pi.get('principals') or [pi['name']] if n not in names)
        tail = ' %s' % comment if comment else ''
        lines += ['@cert-authority %s %s%s' % (','.join(chunk), ca, tail) for chunk in _chunks(names, PER_LINE)]
    by_serial = {entry.get('serial'): entry for entry in roots or [] if isinstance(entry, dict)}
    for pi in pis:
        entry = by_serial.get(pi['serial']) or {}
        if entry.get('host_certificate') and ca_public:
            continue
        for key in entry.get('host_keys') or []:
            lines.append('%s %s' % (','.join(pi.get('principals') or [pi['name']]), public_key(key)))
    return lines
