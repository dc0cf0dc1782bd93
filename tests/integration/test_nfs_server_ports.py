# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NFS ports a firewall must allow are exactly the ones the README lists.

NFS-Ganesha runs on the nfs_server role's own core block (rendered from the role's vars, as the role writes it) in
a namespace of a small LAN (lab/nfslab.py, 10.99.36.0/24): rpcbind reports MOUNT on the pinned
``nfs_server_mount_port`` and no NLM or RQUOTA; then the README's nftables example goes into the server's
namespace and a Pi still mounts over NFSv3 and v4, while the same firewall shuts out a server whose MOUNT port is
left to chance. The kernel backend's nfs.conf drop-in is read back with nfs-utils' own parser (nfsconf).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from rolevars import trusted

from lab.nfslab import TOOLS, Ganesha, Lan, missing_tools, nfs, nfs_url, run

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / 'roles' / 'nfs_server'
HOSTS = {'srv': '10.99.36.2', 'pi': '10.99.36.50'}
SERVER = HOSTS['srv']
MISSING = missing_tools((*TOOLS, 'rpcinfo', 'nft', 'ss'))
pytestmark = pytest.mark.skipif(bool(MISSING), reason='missing %s' % ', '.join(MISSING))


def role(**variables):
    """The nfs_server role's defaults and vars with ``variables`` over them, as a templating function."""
    loader = DataLoader()
    values = {}
    for part in ('defaults/main.yml', 'vars/main.yml'):
        values.update(trusted(loader.load_from_file(str(ROLE / part))))
    values.update(variables, ansible_managed='Ansible managed')
    templar = Templar(loader=loader, variables=values)
    return lambda text: templar.template(trust_as_template(text))


def readme_firewall():
    """The nftables ruleset of the README's firewall section."""
    text = (REPO / 'README.md').read_text(encoding='utf-8')
    blocks = re.findall(r'^```nft\n(.*?)^```', text, re.M | re.S)
    assert len(blocks) == 1, 'README.md needs exactly one ```nft block (the firewall example)'
    return blocks[0]


@pytest.fixture
def lan():
    lab = Lan('pfport', HOSTS)
    try:
        yield lab.start()
    finally:
        lab.close()


def serve(lan, workdir, block):
    """Ganesha with ``block`` (the role's core settings) and one export of a directory to the Pi."""
    exported = workdir / 'export'
    exported.mkdir(parents=True)
    (exported / 'hello').write_text('from the bakery\n')
    server = Ganesha(lan, 'srv', workdir / 'ganesha')
    server.dir.mkdir()
    server.config.write_text(block + 'NFSV4 { Graceless = true; }\nEXPORT { Export_Id = 100; Path = %s; Pseudo = %s; '
                             'Protocols = 3, 4; SecType = sys; Squash = No_Root_Squash; FSAL { Name = VFS; } '
                             'CLIENT { Clients = %s; Access_Type = RW; } }\n' % (exported, exported, HOSTS['pi']))
    return server.start(), exported


def registered(lan):
    """rpcbind's table on the server, as a Pi asks it: {(program name, protocol): {ports}}."""
    out = run(lan.exec_argv('pi', ['rpcinfo', '-p', SERVER])).stdout
    table = {}
    for line in out.splitlines()[1:]:
        _program, _version, proto, port, name = line.split()[:5]
        table.setdefault((name, proto), set()).add(int(port))
    return table


def mounts(lan, exported, timeout=30):
    """{NFS version: whether the Pi reads the exported file}; a port the firewall drops makes the client wait."""
    found = {}
    for version in (3, 4):
        try:
            got = nfs(lan, 'pi', ['nfs-cat', nfs_url(SERVER, str(exported / 'hello'), version)], timeout=timeout)
        except subprocess.TimeoutExpired:
            found[version] = False
        else:
            found[version] = got.returncode == 0 and got.stdout == 'from the bakery\n'
    return found


@pytest.mark.parametrize('port', [20048, 30049])
def test_rpcbind_reports_the_pinned_mount_port_and_the_readme_firewall_lets_the_pi_in(lan, tmp_path, port):
    render = role(nfs_server_mount_port=port, nfs_server_bind_address=SERVER)
    server, exported = serve(lan, tmp_path, render('{{ __nfs_server_ganesha_block }}'))
    try:
        table = registered(lan)
        assert table[('mountd', 'tcp')] == {port}, table
        assert table[('nfs', 'tcp')] == {2049} and table[('portmapper', 'tcp')] == {111}
        assert not [key for key in table if key[0] in ('nlockmgr', 'rquotad', 'status') or (key[1] == 'udp'
                    and key[0] != 'portmapper')], table
        assert mounts(lan, exported) == {3: True, 4: True}
        ruleset = readme_firewall()
        if port != 20048:  # the README's example names the default
            ruleset = ruleset.replace('20048', str(port))
        (tmp_path / 'firewall.nft').write_text(ruleset)
        run(lan.exec_argv('srv', ['nft', '-f', str(tmp_path / 'firewall.nft')]))
        assert mounts(lan, exported) == {3: True, 4: True}
    finally:
        server.close()


def test_without_a_pinned_port_the_firewall_shuts_nfsv3_out(lan, tmp_path):
    """What the pin is for: MOUNT on a port chosen at start cannot be allowed in advance."""
    block = role(nfs_server_bind_address=SERVER)('{{ __nfs_server_ganesha_block }}')
    block = re.sub(r'\n\s*MNT_Port = \d+;', '', block)
    server, exported = serve(lan, tmp_path, block)
    try:
        assert registered(lan)[('mountd', 'tcp')] != {20048}
        (tmp_path / 'firewall.nft').write_text(readme_firewall())
        run(lan.exec_argv('srv', ['nft', '-f', str(tmp_path / 'firewall.nft')]))
        assert mounts(lan, exported, timeout=10) == {3: False, 4: True}
    finally:
        server.close()


@pytest.mark.skipif(not shutil.which('nfsconf', path='/usr/sbin:/sbin:/usr/bin'), reason='nfsconf (nfs-common) missing')
@pytest.mark.parametrize('port', [20048, 30049])
def test_the_kernel_backend_pins_mountd_in_nfs_conf(tmp_path, port):
    render = role(nfs_server_mount_port=port, nfs_server_versions=[3, 4])
    conf = tmp_path / 'pifleet.conf'
    conf.write_text(render((ROLE / 'templates' / 'nfs.conf.j2').read_text()))
    nfsconf = shutil.which('nfsconf', path='/usr/sbin:/sbin:/usr/bin')
    got = subprocess.run([nfsconf, '--file', str(conf), '--get', 'mountd', 'port'], capture_output=True, text=True,
                         check=True)
    assert got.stdout.strip() == str(port)
    assert subprocess.run([nfsconf, '--file', str(conf), '--get', 'nfsd', 'vers3'], capture_output=True, text=True,
                          check=True).stdout.strip() == 'y'


def test_the_role_refuses_a_port_that_is_no_port():
    tasks = yaml.safe_load((ROLE / 'tasks' / 'main.yml').read_text())
    check = next(task for task in tasks if task['name'] == 'Check the NFS server settings')
    for port, ok in ((20048, True), (0, False), (70000, False), (2049, False)):
        render = role(nfs_server_mount_port=port)
        assert all(render('{{ %s }}' % condition) for condition in check['ansible.builtin.assert']['that']) is ok, port
