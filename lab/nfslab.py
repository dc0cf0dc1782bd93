# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small NFS lab for tests: a LAN of network namespaces, an NFS-Ganesha server, userspace clients.

``Lan`` builds a bridge in its own namespace and one veth per host namespace (``<prefix>-<host>``).
``Ganesha`` runs ganesha.nfsd (and rpcbind, for NFSv3) in the server's namespace under
``unshare --mount`` with scratch directories over /run and /var/lib/nfs, so its rpcbind socket and
recovery state never meet the host's or another lab's. ``nfs()`` runs a libnfs-utils client
(``nfs-cat``, ``nfs-cp``, ``nfs-ls``) from a host's namespace. ``exportfs_check()`` validates
exports files with the real ``exportfs`` without a kernel NFS server; ``isolated_exportfs()`` runs
anything (a module too) where exportfs sees only scratch files.

Everything started is tracked by PID and removed by ``close()``; tests call it from a fixture
finalizer so a failing test leaves nothing behind. Needs root, iproute2, util-linux, nfs-ganesha,
nfs-ganesha-vfs, rpcbind, libnfs-utils (and nfs-kernel-server for ``exportfs_check``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

TOOLS = ('ip', 'unshare', 'ganesha.nfsd', 'rpcbind', 'nfs-cat', 'nfs-cp', 'nfs-ls')


def missing_tools(tools=TOOLS):
    """Those of ``tools`` that are not installed (a test skips when any is missing)."""
    dirs = [*os.environ.get('PATH', '').split(os.pathsep), '/usr/sbin', '/sbin']
    return [t for t in tools if not any(os.access(os.path.join(d, t), os.X_OK) for d in dirs)]


def run(argv, check=True, timeout=60):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError('%s failed (rc %d): %s%s' % (' '.join(argv), proc.returncode, proc.stdout, proc.stderr))
    return proc


class Lan:
    """Namespaces ``<prefix>-<name>`` on a bridge in ``<prefix>-lan``; hosts maps name -> address."""

    def __init__(self, prefix, hosts, prefixlen=24):
        self.prefix = prefix
        self.hosts = dict(hosts)
        self.prefixlen = prefixlen
        self.namespaces = []

    def ns(self, name):
        return '%s-%s' % (self.prefix, name)

    def start(self):
        # Leftovers of a killed earlier run would make `ip netns add` fail: clear our own names first.
        for name in ['lan', *self.hosts]:
            run(['ip', 'netns', 'delete', self.ns(name)], check=False)
        lan = self.ns('lan')
        self._add(lan)
        run(['ip', '-n', lan, 'link', 'add', 'br0', 'type', 'bridge'])
        run(['ip', '-n', lan, 'link', 'set', 'br0', 'up'])
        for index, (name, address) in enumerate(self.hosts.items()):
            ns = self.ns(name)
            self._add(ns)
            # Create the pair inside the host's namespace, then move the bridge end over.
            port = 'p%d' % index
            run(['ip', '-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', port])
            run(['ip', '-n', ns, 'link', 'set', port, 'netns', lan])
            run(['ip', '-n', lan, 'link', 'set', port, 'master', 'br0', 'up'])
            run(['ip', '-n', ns, 'addr', 'add', '%s/%d' % (address, self.prefixlen), 'dev', 'eth0'])
            run(['ip', '-n', ns, 'link', 'set', 'eth0', 'up'])
            run(['ip', '-n', ns, 'link', 'set', 'lo', 'up'])
        return self

    def _add(self, ns):
        run(['ip', 'netns', 'add', ns])
        self.namespaces.append(ns)

    def exec_argv(self, name, argv):
        return ['ip', 'netns', 'exec', self.ns(name), *argv]

    def close(self):
        for ns in reversed(self.namespaces):
            run(['ip', 'netns', 'delete', ns], check=False)
        self.namespaces = []


GANESHA_CONF = """\
# Test server of nfslab: this comment and the LOG block belong to the user and must survive.
NFS_CORE_PARAM {{
    Bind_addr = {address};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
{protocols}}}
NFSV4 {{
    Graceless = true;
    Only_Numeric_Owners = true;
}}
EXPORT_DEFAULTS {{
    Access_Type = None;
}}
LOG {{
    Default_Log_Level = EVENT;
}}
"""

# A shell run inside `unshare --mount`: private /run and /var/lib/nfs, rpcbind in the background
# (its PID written out for the teardown), then ganesha in the foreground as the same process. The
# namespace is a slave of the host's: mounts made later below a shared mount (a Pi root mounted
# after the server started, see shared_mount()) reach the server, as they do on a real bakery.
STARTER = """\
set -e
mount --make-rslave /
mount --bind "$1/run" /run
mount --bind "$1/varlib" /var/lib/nfs
mkdir -p /run/rpcbind /var/lib/nfs/ganesha
if [ "$2" = yes ]; then rpcbind -f & echo $! > "$1/rpcbind.pid"; sleep 0.3; fi
exec ganesha.nfsd -F -L "$1/ganesha.log" -N NIV_EVENT -f "$1/ganesha.conf" -p "$1/ganesha.pid"
"""


class Ganesha:
    """ganesha.nfsd (+ rpcbind) on ``address`` in the namespace of ``lan`` host ``host``."""

    def __init__(self, lan, host, workdir, v3=True):
        self.lan = lan
        self.host = host
        self.address = lan.hosts[host]
        self.dir = Path(workdir)
        self.v3 = v3
        self.config = self.dir / 'ganesha.conf'
        self.pidfile = self.dir / 'ganesha.pid'
        self.log = self.dir / 'ganesha.log'
        self.proc = None

    def write_config(self):
        protocols = '' if self.v3 else '    Protocols = 4;\n'
        self.config.write_text(GANESHA_CONF.format(address=self.address, protocols=protocols))

    def start(self, timeout=30):
        """Start the server on the config as it is now (write_config() first, then add exports)."""
        for sub in ('run', 'varlib'):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        argv = self.lan.exec_argv(self.host, ['unshare', '--mount', '--propagation', 'unchanged', 'sh', '-c', STARTER,
                                              'nfslab',
                                              str(self.dir), 'yes' if self.v3 else 'no'])
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('ganesha.nfsd exited (rc %s): %s' % (self.proc.returncode, self.log_text()))
            if self.pidfile.exists() and self.listening():
                return self
            time.sleep(0.2)
        raise RuntimeError('ganesha.nfsd did not start in %ds: %s' % (timeout, self.log_text()))

    def listening(self):
        out = run(self.lan.exec_argv(self.host, ['ss', '-Hltn', 'sport = :2049']), check=False).stdout
        return bool(out.strip())

    @property
    def pid(self):
        return int(self.pidfile.read_text().split()[0])

    def reload(self):
        os.kill(self.pid, signal.SIGHUP)

    def log_text(self):
        return self.log.read_text(errors='replace') if self.log.exists() else '(no log)'

    def close(self):
        pids = []
        if self.proc is not None:
            pids.append(self.proc.pid)  # the exec'd ganesha.nfsd
        rpcbind = self.dir / 'rpcbind.pid'
        if rpcbind.exists():
            pids.append(int(rpcbind.read_text()))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
            self.proc = None
        for pid in pids[1:]:
            wait_gone(pid)


def shared_mount(path):
    """Make ``path`` a mount point whose later submounts propagate to servers started afterwards."""
    if not os.path.ismount(path):
        run(['mount', '--bind', str(path), str(path)])
    run(['mount', '--make-shared', str(path)])


@contextmanager
def ganesha_lan(prefix, hosts, server_host, workdir, v3=True):
    """``(lan, server)``: the LAN of ``hosts`` and a Ganesha started on ``server_host`` with no exports yet.

    Ganesha's mount namespace is made when it starts: mount what it must serve before entering.
    Both are torn down on exit.
    """
    lan = Lan(prefix, hosts)
    server = Ganesha(lan, server_host, workdir, v3)
    try:
        lan.start()
        server.dir.mkdir(parents=True, exist_ok=True)
        server.write_config()
        server.start()
        yield lan, server
    finally:
        server.close()
        lan.close()


def wait_gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def nfs_url(server, path, version=3):
    url = 'nfs://%s%s' % (server, path)
    return url + '?version=4' if version == 4 else url


def nfs(lan, host, argv, timeout=30):
    """Run a libnfs-utils command from ``host``'s namespace; returns the CompletedProcess."""
    return run(lan.exec_argv(host, argv), check=False, timeout=timeout)


def nfs_read(lan, host, url):
    """``nfs-cat`` of an nfs:// URL (see nfs_url()) from ``host``."""
    return nfs(lan, host, ['nfs-cat', url])


def nfs_write(lan, host, local, url):
    """``nfs-cp`` of the local file ``local`` to an nfs:// URL from ``host``."""
    return nfs(lan, host, ['nfs-cp', str(local), url])


ISOLATE = ('set -e; mount --make-rprivate /; mount --bind "$1" /etc/exports; mount --bind "$2" /var/lib/nfs; '
           'mount --bind "$3" /etc/exports.d; shift 3; exec "$@"')


def isolated_exportfs(workdir, exports_d, argv, timeout=120):
    """Run ``argv`` where /etc/exports (empty), /etc/exports.d (``exports_d``) and /var/lib/nfs are scratch.

    A private mount namespace (`unshare --mount`) holds the bind mounts, so exportfs there neither
    reads nor changes the host's exports. /etc/exports.d is created for the bind when the host
    lacks it, and removed again afterwards.
    """
    work = Path(workdir)
    varlib = work / 'varlib'
    varlib.mkdir(parents=True, exist_ok=True)
    for name in ('etab', 'rmtab'):
        (varlib / name).touch()
    exports = work / 'empty.exports'
    exports.write_text('')
    made = not os.path.isdir('/etc/exports.d')
    if made:
        os.mkdir('/etc/exports.d')
    try:
        return run(['unshare', '--mount', 'sh', '-c', ISOLATE, 'isolated-exportfs', str(exports), str(varlib),
                    str(exports_d), *argv], check=False, timeout=timeout)
    finally:
        if made:
            os.rmdir('/etc/exports.d')


def exportfs_check(workdir, exports_d):
    """The real `exportfs -ra; exportfs -s` on the *.exports files of ``exports_d``, isolated from the host.

    Returns (rc of exportfs -ra, its stderr, the lines of exportfs -s).
    """
    script = 'rc=0; exportfs -ra || rc=$?; echo "@@rc=$rc" >&2; exportfs -s'
    proc = isolated_exportfs(workdir, exports_d, ['sh', '-c', script])
    marker = [line for line in proc.stderr.splitlines() if line.startswith('@@rc=')]
    if not marker:
        raise RuntimeError('exportfs check did not run: %s' % proc.stderr)
    stderr = '\n'.join(line for line in proc.stderr.splitlines() if not line.startswith('@@rc='))
    return int(marker[0][5:]), stderr, [line for line in proc.stdout.splitlines() if line.strip()]


def parse_exportfs_s(lines):
    """``exportfs -s`` lines as {(path, client): [options]} (exportfs's \\ooo escapes in paths decoded)."""
    table = {}
    for line in lines:
        path, spec = line.rsplit(None, 1)
        client, _paren, options = spec.partition('(')
        path = re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), path.strip())
        table[(path, client)] = options.rstrip(')').split(',')
    return table
