# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nfs_export against real servers: NFS-Ganesha live on a namespace LAN, and the real exportfs.

The LAN (lab/nfslab.py, 10.99.20.0/24): the bakery pfnfs-srv 10.99.20.2, Pi A 10.99.20.50,
Pi B 10.99.20.51 and an outsider 10.99.20.60, which mount with the userspace libnfs client.
"""

from __future__ import annotations

import json
import time

import pytest
from modrun import module_argv, run_module

from lab.nfslab import (
    TOOLS,
    Ganesha,
    Lan,
    exportfs_check,
    isolated_exportfs,
    missing_tools,
    nfs,
    nfs_read,
    nfs_url,
    nfs_write,
    parse_exportfs_s,
)

HOSTS = {'srv': '10.99.20.2', 'pia': '10.99.20.50', 'pib': '10.99.20.51', 'out': '10.99.20.60'}
SERVER = HOSTS['srv']
GANESHA_MISSING = missing_tools((*TOOLS, 'ss'))
needs_ganesha = pytest.mark.skipif(bool(GANESHA_MISSING), reason='NFS lab tools missing (nfs-ganesha, '
                                   'nfs-ganesha-vfs, rpcbind, libnfs-utils): %s' % ', '.join(GANESHA_MISSING))
needs_exportfs = pytest.mark.skipif(bool(missing_tools(('exportfs', 'unshare'))),
                                    reason='exportfs (nfs-kernel-server) missing')
RO = ['ro', 'sync', 'no_subtree_check', 'no_root_squash']


@pytest.fixture
def lab(tmp_path):
    """A running Ganesha with no exports, the config's own lines, and a Pi root and boot directory."""
    lan = Lan('pfnfs', HOSTS)
    server = Ganesha(lan, 'srv', tmp_path / 'ganesha')
    try:
        lan.start()
        server.dir.mkdir()
        server.write_config()
        server.start()
        root, boot = tmp_path / 'roots' / 'pi-a', tmp_path / 'boot'
        root.mkdir(parents=True)
        boot.mkdir()
        (root / 'hello').write_text('root of pi-a\n')
        (boot / 'config.txt').write_text('arm_64bit=1\n')
        (tmp_path / 'local').write_text('written by pi-a\n')
        yield lan, server, root, boot, tmp_path
    finally:
        server.close()
        lan.close()


# These tests are about what each server makes of the file we write and who it lets in, with plain directories
# as exports: allow_shared_filesystem. That a Pi cannot step out of a shared file system's export by forging
# handles, and so needs one of its own, is test_pi_boundary.py's subject (per-Pi file systems, a raw client).
SHARED = {'allow_shared_filesystem': True}


def ganesha_args(server, tmp_path, exports):
    return {'backend': 'ganesha', 'exclusive': True, 'exports': exports, 'ganesha_config': str(server.config),
            'ganesha_pidfile': str(server.pidfile), 'exports_file': str(tmp_path / 'pifleet.conf'), **SHARED}


def wait_for(what, predicate, timeout=15):
    """Ganesha applies SIGHUP asynchronously: poll until the LAN sees the new exports."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for %s' % what)
        time.sleep(0.3)


def readable(lan, host, path, version=3):
    """Whether ``host`` can list the exported directory ``path``."""
    return nfs(lan, host, ['nfs-ls', nfs_url(SERVER, str(path), version)]).returncode == 0


@needs_ganesha
def test_ganesha_exports_reach_only_their_pi(lab):
    lan, server, root, boot, tmp_path = lab
    config_before = server.config.read_text()
    exports = [{'path': str(root), 'clients': [HOSTS['pia']]},
               {'path': str(boot), 'clients': [HOSTS['pia'], HOSTS['pib']], 'options': RO}]
    args = ganesha_args(server, tmp_path, exports)

    checked = run_module('nfs_export', args, check=True, diff=True)
    assert checked['changed'] is True and len(checked['diff']) == 2, checked
    assert server.config.read_text() == config_before and not (tmp_path / 'pifleet.conf').exists()

    applied = run_module('nfs_export', args, diff=True)
    assert applied['changed'] is True and applied['reloaded'] is True, applied
    assert applied['diff'] == checked['diff']
    # Our include is the one line added; the user's comment and blocks are untouched.
    assert server.config.read_text() == config_before + '%%include "%s"\n' % (tmp_path / 'pifleet.conf')
    ids = {e['path']: e['export_id'] for e in applied['exports']}
    assert sorted(ids.values()) == [100, 101]
    wait_for('Pi A to see its root', lambda: readable(lan, 'pia', root))

    for version in (3, 4):
        got = nfs_read(lan, 'pia', nfs_url(SERVER, str(root / 'hello'), version))
        assert got.returncode == 0 and got.stdout == 'root of pi-a\n', got
        put = nfs_write(lan, 'pia', tmp_path / 'local', nfs_url(SERVER, '%s/new-v%d' % (root, version), version))
        assert put.returncode == 0, put
        assert (root / ('new-v%d' % version)).read_text() == 'written by pi-a\n'
        assert (root / ('new-v%d' % version)).stat().st_uid == 0  # root not squashed: a Pi's root needs it
        for other in ('pib', 'out'):
            refused = nfs_read(lan, other, nfs_url(SERVER, str(root / 'hello'), version))
            assert refused.returncode != 0, refused
            assert ('MNT3ERR_ACCES' if version == 3 else 'NFS4ERR_NOENT') in refused.stderr
        boot_read = nfs_read(lan, 'pib', nfs_url(SERVER, str(boot / 'config.txt'), version))
        assert boot_read.returncode == 0 and boot_read.stdout == 'arm_64bit=1\n', boot_read
        boot_write = nfs_write(lan, 'pib', tmp_path / 'local', nfs_url(SERVER, '%s/x-v%d' % (boot, version), version))
        assert boot_write.returncode != 0 and not (boot / ('x-v%d' % version)).exists(), boot_write
        assert not readable(lan, 'out', boot, version)

    again = run_module('nfs_export', args, diff=True)
    assert again['changed'] is False and again['reloaded'] is False and again['diff'] == [], again

    # The fleet drops Pi A: an exclusive list without it, and Ganesha reloads live.
    dropped = run_module('nfs_export', ganesha_args(server, tmp_path, exports[1:]))
    assert dropped['changed'] is True and dropped['reloaded'] is True, dropped
    assert [(e['path'], e['export_id']) for e in dropped['exports']] == [(str(boot), ids[str(boot)])]
    wait_for('Pi A to lose its root', lambda: not readable(lan, 'pia', root))
    for version in (3, 4):
        assert not readable(lan, 'pia', root, version)
        assert readable(lan, 'pia', boot, version)
    assert server.config.read_text().count('%include') == 1
    assert server.config.read_text().startswith(config_before)
    errors = [line for line in server.log_text().splitlines() if ':CRIT :' in line and 'pifleet.conf' in line]
    assert errors == [], 'Ganesha rejected our exports file:\n' + '\n'.join(errors)


@pytest.fixture
def kernel_dirs(tmp_path):
    exports_d = tmp_path / 'exports.d'
    exports_d.mkdir()
    theirs = tmp_path / 'theirs'
    theirs.mkdir()
    other = exports_d / 'other.exports'
    other.write_text('# not ours\n%s 192.0.2.1(ro,sync,no_subtree_check)\n' % theirs)
    dirs = {name: tmp_path / name for name in ('pi a', 'pi-b', 'boot')}
    for path in dirs.values():
        path.mkdir()
    return tmp_path, exports_d, other, dirs


@needs_ganesha
def test_the_nfsv4_pseudo_root_shows_no_client_another_pis_serial(lab):
    """Ganesha puts every NFSv4 export into one pseudo file system that any client may list from its root; the
    exports are named by path, and a path holds the Pi's serial. Listed from the top, recursively, an outsider
    sees no serial and Pi A sees only its own, while Pi A still reads its root over v3 and v4."""
    lan, server, _root, _boot, tmp_path = lab
    roots = tmp_path / 'fleet' / 'roots'
    serials = {'pia': '3a4b5c6d', 'pib': '0badcafe'}
    exports = []
    for host, serial in serials.items():
        (roots / serial).mkdir(parents=True)
        (roots / serial / 'hello').write_text('root of %s\n' % host)
        exports.append({'path': str(roots / serial), 'clients': [HOSTS[host]]})
    assert not run_module('nfs_export', ganesha_args(server, tmp_path, exports)).get('failed')
    wait_for('Pi A to see its root', lambda: readable(lan, 'pia', roots / '3a4b5c6d'))
    seen = {}
    for host in ('out', 'pia', 'pib'):
        listing = nfs(lan, host, ['nfs-ls', '-R', 'nfs://%s/?version=4' % SERVER])
        seen[host] = listing.stdout + listing.stderr
    assert '3a4b5c6d' in seen['pia'], seen  # the listing does reach the serials: Pi A sees its own
    assert '3a4b5c6d' not in seen['out'] and '0badcafe' not in seen['out'], seen['out']
    assert '0badcafe' not in seen['pia'], seen['pia']
    assert '3a4b5c6d' not in seen['pib'], seen['pib']
    for version in (3, 4):
        got = nfs_read(lan, 'pia', nfs_url(SERVER, str(roots / '3a4b5c6d' / 'hello'), version))
        assert got.returncode == 0 and got.stdout == 'root of pia\n', (version, got)


@needs_exportfs
def test_kernel_file_passes_the_real_exportfs(kernel_dirs):
    tmp_path, exports_d, other, dirs = kernel_dirs
    other_before = other.read_bytes()
    target = exports_d / 'pifleet.exports'
    args = {'exports_file': str(target), 'reload': False, **SHARED, 'exports': [
        {'path': str(dirs['pi a']), 'clients': [HOSTS['pia']]},
        {'path': str(dirs['pi-b']), 'clients': [HOSTS['pib'], 'fd00::51']},
        {'path': str(dirs['boot']), 'clients': [HOSTS['pia'], HOSTS['pib']], 'options': RO}]}
    checked = run_module('nfs_export', args, check=True, diff=True)
    assert checked['changed'] is True and not target.exists(), checked
    applied = run_module('nfs_export', args)
    assert applied['changed'] is True and applied['reloaded'] is False and target.exists(), applied
    assert run_module('nfs_export', args)['changed'] is False
    assert other.read_bytes() == other_before

    rc, stderr, lines = exportfs_check(tmp_path / 'check', exports_d)
    assert rc == 0, stderr
    table = parse_exportfs_s(lines)
    ours = {key: opts for key, opts in table.items() if key[0] != str(tmp_path / 'theirs')}
    assert sorted(ours) == sorted([
        (str(dirs['pi a']), HOSTS['pia']), (str(dirs['pi-b']), HOSTS['pib']), (str(dirs['pi-b']), 'fd00::51'),
        (str(dirs['boot']), HOSTS['pia']), (str(dirs['boot']), HOSTS['pib'])])
    for (path, _client), opts in ours.items():
        assert ('ro' if path == str(dirs['boot']) else 'rw') in opts and 'no_root_squash' in opts
    assert (str(tmp_path / 'theirs'), '192.0.2.1') in table  # the line we do not own is exported as before
    assert not [key for key in table if key[1] in ('*', '<world>')]


@needs_exportfs
def test_every_kernel_option_we_accept_is_accepted_by_exportfs(kernel_dirs):
    tmp_path, exports_d, _other, dirs = kernel_dirs
    first = ['rw', 'sync', 'secure', 'wdelay', 'subtree_check', 'root_squash', 'all_squash', 'hide', 'crossmnt',
             'no_acl', 'secure_locks', 'auth_nlm', 'mp', 'anonuid=65534', 'anongid=65534', 'fsid=7',
             'sec=sys:krb5:krb5i:krb5p']
    second = ['ro', 'async', 'insecure', 'no_wdelay', 'no_subtree_check', 'no_root_squash', 'no_all_squash',
              'nohide', 'insecure_locks', 'no_auth_nlm', 'mountpoint=%s' % dirs['pi-b'],
              'fsid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0']
    result = run_module('nfs_export', {'exports_file': str(exports_d / 'pifleet.exports'), 'reload': False, **SHARED,
                                       'exports': [{'path': str(dirs['pi a']), 'clients': ['10.0.0.0/8'],
                                                    'options': first},
                                                   {'path': str(dirs['pi-b']), 'clients': ['pi-b'],
                                                    'options': second}]})
    assert result['changed'] is True, result
    rc, stderr, lines = exportfs_check(tmp_path / 'check', exports_d)
    assert rc == 0, stderr
    assert 'unknown' not in stderr.lower() and 'bad option' not in stderr.lower(), stderr
    assert (str(dirs['pi a']), '10.0.0.0/8') in parse_exportfs_s(lines)


@needs_exportfs
def test_module_runs_exportfs_and_restores_on_its_failure(kernel_dirs):
    """The module's own `exportfs -ra`, with /etc/exports.d a scratch dir; a broken file elsewhere makes it fail."""
    tmp_path, exports_d, other, dirs = kernel_dirs
    args = {'path': str(dirs['pi a']), 'clients': [HOSTS['pia']], **SHARED}  # default exports_file, reload: true

    def module(module_args):
        proc = isolated_exportfs(tmp_path / 'iso', exports_d, module_argv('nfs_export', module_args))
        return json.loads(proc.stdout)

    applied = module(args)
    assert applied['changed'] is True and applied['reloaded'] is True, applied
    assert applied['file'] == '/etc/exports.d/pifleet.exports' and (exports_d / 'pifleet.exports').exists()
    assert module(args)['changed'] is False
    first = (exports_d / 'pifleet.exports').read_text()

    other.write_text('%s 192.0.2.1(ro,no_such_option)\n' % (tmp_path / 'theirs'))
    failed = module(dict(args, path=str(dirs['pi-b'])))
    assert failed.get('failed') is True and 'exportfs -ra failed for /etc/exports.d/pifleet.exports' in failed['msg']
    assert 'no_such_option' in failed['msg'], failed
    assert (exports_d / 'pifleet.exports').read_text() == first
    assert sorted(p.name for p in exports_d.iterdir()) == ['other.exports', 'pifleet.exports']
