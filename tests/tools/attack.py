# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the attack tests share: the raw NFS client run from a Pi's namespace, and what they aim at and look for.

``rawnfs()`` runs tests/tools/rawnfs.py (the client that forges handles) as a Pi would; ``target()`` is
an inode number with its generation (what an attacker would have to guess); ``created_outside()`` finds
what an attacker made outside its own file system.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

RAWNFS = Path(__file__).resolve().parent / 'rawnfs.py'


def generation(path):
    """The inode generation of ``path`` (FS_IOC_GETVERSION): what an attacker would have to guess."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return struct.unpack('l', fcntl.ioctl(fd, 0x80087601, b'\0' * 8))[0] & 0xFFFFFFFF
    finally:
        os.close(fd)


def target(path):
    return [os.stat(path).st_ino, generation(path)]


def rawnfs(lan, host, command, spec, timeout=300):
    """``rawnfs.py <command> <spec>`` from ``host``'s namespace of ``lan``: its JSON answer."""
    proc = subprocess.run(lan.exec_argv(host, [sys.executable, str(RAWNFS), command, json.dumps(spec)]),
                          capture_output=True, text=True, check=False, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def created_outside(top, root_a, names):
    """Paths below ``top`` named like the attacker's creations, outside A's own file system."""
    hits = []
    for base, dirs, files in os.walk(top):
        if Path(base) == root_a:
            dirs[:] = []
            continue
        hits += [os.path.join(base, n) for n in dirs + files if n in names]
    return hits
