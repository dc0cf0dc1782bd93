# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline stand-in for the get-pip.py that ansible-test downloads to bootstrap its venvs.

ansible-test runs this file (through runpy) with pip's options as argv, in a new venv without pip.
We install pip from the interpreter's own ensurepip wheel, then let that pip install the pinned
versions ansible-test asked for from the package index. `make sanity` copies it into ansible-test's
cache as ~/.ansible/test/cache/get_pip_<version>.py.
"""

from __future__ import annotations

import subprocess
import sys

# get-pip.py options that pip itself does not know.
GET_PIP_ONLY = {'--no-setuptools', '--no-wheel'}


def main(argv):
    subprocess.run([sys.executable, '-m', 'ensurepip', '--default-pip'], check=True, stdout=subprocess.DEVNULL)
    args = [arg for arg in argv if arg not in GET_PIP_ONLY]
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', *args], check=True)


if __name__ == '__main__':
    main(sys.argv[1:])
