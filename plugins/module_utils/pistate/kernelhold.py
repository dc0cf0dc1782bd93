# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel hold: a Pi boots the kernel its bakery serves for its root's generation, so the kernel
packages inside its root must stay the ones that generation came with (docs/kernels.md says why).

Each Debian-family root gets, through ``confined.Tree``:

- ``PREFERENCES``: an apt pin that keeps each kernel package of the generation at its version and
  gives every other version of a kernel package priority -1 (apt never installs it);
- ``GUARD`` and ``APT_CONF``: a ``DPkg::Pre-Install-Pkgs`` script that refuses any other kernel
  package apt is about to hand to dpkg (a ``.deb`` given on the command line, a pin removed), with a
  one-line message that says where new kernels come from.

The kernel packages of a generation are read from its golden root's ``var/lib/dpkg/status`` (the
admin's image, never a Pi's root), size-capped, with the parser of ``store.capabilities``. No AnsibleModule here.
"""

from __future__ import annotations

import re

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.rootfix import differs
from ansible_collections.pifleet.netboot.plugins.module_utils.store import capabilities as _capabilities

# The golden root's package list, read by rootparts through this module; its parser is the store's.
STATUS, STATUS_LIMIT, parse_status = _capabilities.STATUS, _capabilities.STATUS_LIMIT, _capabilities.parse_status

PREFERENCES = 'etc/apt/preferences.d/pifleet-kernel-hold'
APT_CONF = 'etc/apt/apt.conf.d/50pifleet-kernel-hold'
GUARD = 'usr/local/lib/pifleet/kernel-guard'
# Debian and Raspberry Pi OS since Bookworm: linux-image-<version>-<flavour> and its linux-image-<flavour>
# meta package; Raspberry Pi OS before Bookworm: raspberrypi-kernel, which replaced /lib/modules in place.
KERNEL_PACKAGE = re.compile(r'linux-image-[a-z0-9][a-z0-9.+~-]*|raspberrypi-kernel(-[a-z0-9.+~-]+)?')
KERNEL_GLOBS = ('linux-image-*', 'raspberrypi-kernel*')
_VERSION = re.compile(r'[0-9A-Za-z.+~:-]{1,128}')
HEADER = '# Managed by pifleet.netboot pi_root; rewritten on every run.\n'


def kernel_packages(text):
    """Sorted ``name=version`` of the kernel packages a dpkg status file says are installed."""
    return sorted('%s=%s' % (name, version) for name, version, status in parse_status(text)
                  if status.split()[-1:] == ['installed'] and KERNEL_PACKAGE.fullmatch(name)
                  and _VERSION.fullmatch(version))


def _split(packages):
    return [tuple(entry.split('=', 1)) for entry in packages]


def render_preferences(label, packages):
    """The apt pin: the generation's kernel packages at their versions, no other version of any kernel package.

    apt takes the first specific record that matches a version, so the exact versions come first.
    """
    records = ['Explanation: the kernel of %s, served by this Pi\'s bakery\nPackage: %s\nPin: version %s\n'
               'Pin-Priority: 990\n' % (label, name, version) for name, version in _split(packages)]
    records.append('Explanation: no other kernel: a new kernel comes with a new generation of the bakeform\n'
                   'Package: %s\nPin: version *\nPin-Priority: -1\n' % ' '.join(KERNEL_GLOBS))
    return HEADER + '\n'.join(records)


def guard_message(label):
    return ("this Pi's kernel is served by its bakery (generation %s); ask for a new generation: "
            'capture and the upgrade playbook' % label)


def render_guard(label, packages):
    """A POSIX sh script for DPkg::Pre-Install-Pkgs: apt writes the .deb files it is about to install, one a line."""
    allowed = ' '.join("'%s'" % ('%s_%s' % (name, version.replace(':', '%3a'))) for name, version in _split(packages))
    return '\n'.join((
        '#!/bin/sh',
        HEADER.strip(),
        '# This Pi boots the kernel its bakery serves; its modules must stay the ones in this root.',
        'allowed="%s"' % allowed.replace('"', ''),
        'refused=0',
        'while IFS= read -r deb; do',
        '    base=${deb##*/}',
        '    name=${base%%_*}',
        '    case "$name" in',
        '        %s) ;;' % '|'.join(KERNEL_GLOBS),
        '        *) continue ;;',
        '    esac',
        '    keep=${base%_*}',
        '    case " $allowed " in',
        '        *" \'$keep\' "*) continue ;;',
        '    esac',
        '    refused=1',
        'done',
        'if [ "$refused" = 1 ]; then',
        '    echo "E: pifleet: %s" >&2' % guard_message(label),
        '    exit 1',
        'fi',
        'exit 0',
        ''))


APT_CONF_TEXT = (HEADER + '// Every package apt installs is shown to the guard first: it refuses kernel packages.\n'
                 'DPkg::Pre-Install-Pkgs { "/%s"; };\n' % GUARD)


def files(label, packages):
    """{path in the root: (text, mode)} of the hold."""
    return {PREFERENCES: (render_preferences(label, packages), 0o644), APT_CONF: (APT_CONF_TEXT, 0o644),
            GUARD: (render_guard(label, packages), 0o755)}


def changes(tree, label, packages):
    """Changes (for ``rootfix.apply``) that give the root in ``tree`` the hold of ``label``; none when it has it."""
    return [{'fix': 'kernel_hold', 'path': rel, 'kind': 'file', 'before': None, 'after': text, 'mode': mode,
             'force_owner': True}
            for rel, (text, mode) in sorted(files(label, packages).items()) if differs(tree, rel, text.encode(), mode)]


def applies(tree):
    """Only a root that has apt gets the hold."""
    return tree.is_dir('etc/apt')
