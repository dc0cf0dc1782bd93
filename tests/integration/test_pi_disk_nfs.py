# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Pi's disks over NFS: pi_disk's file systems exported by nfs_export to a real NFS-Ganesha, one export per
Pi as the fleet role plans it, read and written by the Pis with the userspace client.

The LAN (lab/nfslab.py, 10.99.47.0/24): the bakery pfd-srv 10.99.47.2, Pi A 10.99.47.50, Pi B
10.99.47.51. Ganesha runs in a mount namespace of its own made when it starts, so the disks file systems
are mounted before it starts.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from fstree import release_below
from modrun import run_module

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet.fleet import build
from lab.nfslab import TOOLS, ganesha_lan, missing_tools, nfs, nfs_read, nfs_url, nfs_write

HOSTS = {'srv': '10.99.47.2', 'pia': '10.99.47.50', 'pib': '10.99.47.51'}
SERVER = HOSTS['srv']
PIS = {'pia': 'aaaa0047', 'pib': 'bbbb0047'}
MISSING = missing_tools((*TOOLS, 'ss'))
pytestmark = pytest.mark.skipif(bool(MISSING), reason='NFS lab tools missing: %s' % ', '.join(MISSING))


def fleet(tmp_path):
    """The fleet role's plan for two Pis with disks: pi_disk's items and nfs_export's exports."""
    pis = [{'name': host, 'serial': serial, 'ip': HOSTS[host], 'hostname': host, 'bakeform': 'bw',
            'ssh_authorized_keys': None, 'disks': [{'name': 'data', 'size': '16M', 'fstype': 'ext4'},
                                                   {'name': 'swap', 'size': '8M'}],
            'prefix': serial, 'model': 4, 'cmdline_extra': '', 'config_txt': [], 'cloud_init': None,
            'principals': [host, HOSTS[host]]}
           for host, serial in PIS.items()]
    return build(pis, {'roots_dir': str(tmp_path / 'roots'), 'disks_dir': str(tmp_path / 'disks'),
                       'nfs_server': SERVER})


def listing(lan, host, path):
    out = nfs(lan, host, ['nfs-ls', nfs_url(SERVER, str(path))])
    return out.returncode, sorted(line.split()[-1] for line in out.stdout.splitlines() if line.strip())


def test_each_pi_reaches_its_disks_through_one_export_of_its_own(tmp_path):
    plan = fleet(tmp_path)
    common = {'disks_dir': str(tmp_path / 'disks'), 'units_dir': str(tmp_path / 'units'),
              'lock_file': str(tmp_path / 'lock'), 'allow_root_filesystem': True}  # temp dirs may lie on /
    made = run_module('pi_disk', dict(common, disks=plan['disks']))
    assert not made.get('failed') and [p['action'] for p in made['pis']] == ['created', 'created'], made
    disk_exports = [e for e in plan['exports'] if e['path'].startswith(str(tmp_path / 'disks'))]
    assert [e['path'] for e in disk_exports] == [str(tmp_path / 'disks/mnt' / s) for s in PIS.values()]

    try:
        with ganesha_lan('pfd', HOSTS, 'srv', tmp_path / 'ganesha') as (lan, server):
            exported = run_module('nfs_export', {
                'backend': 'ganesha', 'exclusive': True, 'exports': disk_exports, 'ganesha_config': str(server.config),
                'ganesha_pidfile': str(server.pidfile), 'exports_file': str(tmp_path / 'pifleet.conf')})
            assert not exported.get('failed'), exported
            point = tmp_path / 'disks/mnt' / PIS['pia']
            deadline = time.monotonic() + 15
            while listing(lan, 'pia', point)[0] != 0 and time.monotonic() < deadline:
                time.sleep(0.3)  # Ganesha applies SIGHUP asynchronously

            assert listing(lan, 'pia', point) == (0, ['data', 'lost+found', 'swap'])
            assert listing(lan, 'pia', point / 'data') == (0, ['disk.img'])
            head = subprocess.run(lan.exec_argv('pia', ['nfs-cat', nfs_url(SERVER, str(point / 'data' / 'disk.img'))]),
                                  capture_output=True, check=False).stdout
            assert len(head) == 16 << 20 and head[1080:1082] == b'\x53\xef'  # the ext4 magic pi_disk formatted
            (tmp_path / 'note').write_text('written by Pi A\n')
            put = nfs_write(lan, 'pia', tmp_path / 'note', nfs_url(SERVER, '%s/note' % point))
            assert put.returncode == 0 and (point / 'note').read_text() == 'written by Pi A\n', put
            refused = nfs_read(lan, 'pib', nfs_url(SERVER, str(point / 'note')))
            assert refused.returncode != 0 and 'MNT3ERR_ACCES' in refused.stderr, refused

            # The Pi's own files at the top of its export are its business; pi_disk still converges.
            again = run_module('pi_disk', dict(common, disks=plan['disks']))
            assert again['changed'] is False, again
            more = run_module('pi_disk', dict(common, disks=[{'serial': PIS['pia'], 'name': 'logs', 'size': '4M'}]))
            assert more['disks'][0]['action'] == 'created', more
            assert listing(lan, 'pia', point / 'logs') == (0, ['disk.img'])  # no new export needed
    finally:
        left = release_below(tmp_path)  # Ganesha's namespace is gone: ours is all there is
    assert left == []
