# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The status playbook's table, read back from ansible-playbook's output per bakery (several-bakery tests)."""

from __future__ import annotations

import re


def table(output, bakery):
    """The status rows of the Pis ``bakery`` serves: {Pi: columns}. The table has a BAKERY line before each
    bakery's Pis when there are several; with one, every row is its."""
    block = re.search(r'^ok: \[[^]]+\] => \{\n(.*?)^\}', output.split('TASK [Show the fleet]')[1], re.M | re.S)
    assert block, output[-3000:]
    sections, current = {}, None
    for line in block.group(1).splitlines():
        named = re.match(r'\s*"BAKERY (\S+)"', line)
        if named:
            current = named.group(1)
        elif re.match(r'\s*"pi-[0-9a-z]+ ', line):
            sections.setdefault(current, {})[line.split()[0].strip('"')] = line.split()
    return sections.get(bakery, sections.get(None))
