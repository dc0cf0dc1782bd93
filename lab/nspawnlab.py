# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real test hosts for molecule: a Debian 12 systemd-nspawn container on a network-namespace LAN.

    python3 -m lab.nspawnlab image
    python3 -m lab.nspawnlab up --name pfmol --subnet 10.99.40 --state DIR [--pis N] [--macs M1,M2]
    python3 -m lab.nspawnlab down --state DIR

``image`` debootstraps (``--variant=minbase``) a bookworm root with every package the roles
install baked in (test hosts have no internet), into a scratch dir renamed into
``.build/cache/nspawn/bookworm-<sha>``; the name hashes the package list and IMAGE_VERSION, so a
cached image is reused until either changes. debootstrap keeps services from starting while it
installs (its own policy-rc.d and fake start-stop-daemon); afterwards the baked services are
disabled with ``systemctl --root`` (no chroot), so the roles must enable and start them. sshd
allows root by key only; the key is per lab and bind-mounted read-only at ``up``, never baked.

``up`` builds a LAN with ``nfslab.Lan`` (namespaces ``<name>-<host>``): ``router`` .1 runs dnsmasq
as the home router (authoritative DHCP, range .100-.150, DNS off, pi1, pi2, ... pinned to .50, .51,
... so exports can name them), ``bakery`` .2 hosts the container (systemd as PID 1, its root a
fresh copy of the cached image on the lab's data disk DIR/data, an XFS loop file system, so that
``reboot`` keeps what the roles installed, ``--register=no --keep-unit`` as this host has no
systemd, CAP_NET_ADMIN for dnsmasq, /dev/loop-control and /dev/loop0..255 for the Pis' file
systems, open_by_handle_at allowed and /srv/pifleet and /var/lib/pifleet bind-mounted from fresh
dirs on the data disk for NFS-Ganesha, no resolv.conf), ``pi1..piN`` have
eth0 up with a Pi MAC (``--macs``, else a Pi 4 one) and no address (they DHCP), ``outsider`` .60
is a stranger for "denied" checks. It waits until sshd in the container accepts the lab key, then writes DIR/lab.json
(namespaces, addresses, MACs, PIDs, key), DIR/ssh_config and DIR/inventory.yml (ssh through
``ip netns exec <name>-bakery socat STDIO TCP:127.0.0.1:22``). An ``up`` over an old state dir
first runs ``down``.

``reboot`` powers the container off and boots it again on the same root and data (the Pis' mount
units must bring their roots back). ``down`` stops the machines recorded with ``add_guest``
(labdemo's qemu Pis, SIGKILL), the container (SIGTERM to systemd-nspawn = orderly poweroff; SIGKILL
after a grace period) and dnsmasq by the PIDs in lab.json (checked against /proc/PID/cmdline, so a
reused PID is never hit), deletes the namespaces and releases the data disk; it keeps the state dir
and the image. Idempotent, and lab.json is written before
anything starts, so it also cleans up a partial ``up``.
Root only. Needs debootstrap, systemd-container, socat, dnsmasq (-base), iproute2, openssh-client.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab.nfslab import Lan, run

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / '.build' / 'cache' / 'nspawn'
IMAGE_VERSION = 1  # bump when the baking below changes
PACKAGES = (
    'systemd', 'systemd-sysv', 'dbus', 'python3', 'python3-apt', 'openssh-server', 'dnsmasq',
    'nfs-ganesha', 'nfs-ganesha-vfs', 'rpcbind', 'nfs-kernel-server', 'logrotate', 'iproute2', 'procps',
    'ca-certificates', 'python3-netaddr',  # nfs_export imports netaddr on the bakery
    'libnss-myhostname',  # the container's own name resolves without DNS (Ganesha waits 10 s otherwise)
    'mtools', 'fuse2fs', 'xz-utils', 'e2fsprogs', 'openssh-client',  # the fleet role's tools (bakeform, pi_root)
    'snmp',  # the fleet role's too: net-snmp's tools, which pi_power runs for SNMPv3 switches
)
# Units the packages enable; the roles are the ones that must enable them on the test host.
BAKED_OFF = ('dnsmasq.service', 'nfs-ganesha.service', 'nfs-ganesha-lock.service', 'rpcbind.service',
             'rpcbind.socket', 'nfs-server.service', 'nfs-client.target', 'nfs-blkmap.service', 'logrotate.timer',
             'apt-daily.timer', 'apt-daily-upgrade.timer')  # the last two would reach for the internet
SSHD_CONF = """\
# nspawnlab test host: root by the lab key only.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""
DEFAULT_MIRROR = 'http://deb.debian.org/debian'
DATA_DIRS = ('/srv/pifleet', '/var/lib/pifleet')  # bind-mounted from DIR/data/ at `up`


def log(message):
    print('nspawnlab: %s' % message, flush=True)


def image_tag():
    text = '\n'.join([*PACKAGES, *BAKED_OFF, SSHD_CONF, str(IMAGE_VERSION)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def host_mirror(sources=Path('/etc/apt/sources.list.d')):
    """The host's Debian mirror for bookworm (deb822 .sources or one-line .list), else deb.debian.org."""
    for path in sorted(sources.glob('*.sources')):
        for stanza in path.read_text().split('\n\n'):
            fields = dict(re.findall(r'^([A-Za-z-]+):\s*(.*)$', stanza, re.M))
            if 'bookworm' in fields.get('Suites', '').split() and 'deb' in fields.get('Types', '').split():
                return fields.get('URIs', DEFAULT_MIRROR).split()[0]
    for path in [Path('/etc/apt/sources.list'), *sorted(sources.glob('*.list'))]:
        if path.is_file():
            match = re.search(r'^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s', path.read_text(), re.M)
            if match:
                return match.group(1)
    return DEFAULT_MIRROR


def bake(root):
    """Configure a fresh debootstrap root for use as a test host (no chroot needed)."""
    (root / 'etc/ssh/sshd_config.d').mkdir(parents=True, exist_ok=True)
    (root / 'etc/ssh/sshd_config.d/nspawnlab.conf').write_text(SSHD_CONF)
    (root / 'root/.ssh').mkdir(mode=0o700, parents=True, exist_ok=True)
    # Empty machine-id: systemd gives each boot a fresh one instead of sharing the baked id.
    (root / 'etc/machine-id').write_text('')
    # debootstrap copied the build host's name; without the file systemd takes nspawn's --machine.
    (root / 'etc/hostname').unlink(missing_ok=True)
    run(['systemctl', '--root', str(root), 'disable', '--no-reload', *BAKED_OFF], check=False)


def image(cache=CACHE, mirror=None):
    """Path of the cached image, built first when missing (a few minutes, progress on stdout)."""
    dest = cache / ('bookworm-%s' % image_tag())
    if dest.is_dir():
        log('image %s (cached)' % dest)
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of the same image finishes first
        if dest.is_dir():
            return dest
        for stale in cache.glob('.build-*'):  # scratch dirs of killed builds (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix='.build-', dir=cache))
        try:
            scratch.chmod(0o755)
            mirror = mirror or host_mirror()
            log('debootstrap bookworm from %s into %s (takes minutes)' % (mirror, scratch))
            argv = ['debootstrap', '--variant=minbase', '--include=%s' % ','.join(PACKAGES),
                    'bookworm', str(scratch), mirror]
            with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
                for line in proc.stdout:
                    if line.startswith(('I: Retrieving', 'I: Validating')):
                        continue  # one line per package: too chatty for progress
                    print('  ' + line.rstrip(), flush=True)
            if proc.returncode != 0:
                tail = (scratch / 'debootstrap/debootstrap.log')
                raise RuntimeError('debootstrap failed (rc %d): %s' % (
                    proc.returncode, tail.read_text()[-3000:] if tail.exists() else ''))
            bake(scratch)
            scratch.rename(dest)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    log('image %s built' % dest)
    return dest


# ---------------------------------------------------------------- processes


def alive(pid, marker):
    """True when ``pid`` runs and its command line contains ``marker`` (never a reused PID)."""
    try:
        cmdline = Path('/proc/%d/cmdline' % pid).read_bytes().replace(b'\0', b' ').decode(errors='replace')
        state = Path('/proc/%d/stat' % pid).read_text().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != 'Z' and marker in cmdline


def stop(pid, marker, grace=20.0, sig=signal.SIGTERM):
    if not pid or not alive(pid, marker):
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid, marker):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    for _unused in range(100):
        if not alive(pid, marker):
            return
        time.sleep(0.1)


STARTED = {}  # name -> Popen of what this process started: `up` polls these, not /proc (exec races)


def spawn(name, argv, logfile):
    with open(logfile, 'ab') as out:
        # Own session and no inherited pipes: the lab outlives `up` (and Ansible's command module).
        STARTED[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
    return STARTED[name].pid


def running(name):
    return name in STARTED and STARTED[name].poll() is None


def comm(pid):
    try:
        return Path('/proc/%d/comm' % pid).read_text().strip()
    except OSError:
        return None


def children(pid):
    try:
        return [int(c) for c in Path('/proc/%d/task/%d/children' % (pid, pid)).read_text().split()]
    except OSError:
        return []


# ---------------------------------------------------------------- the lab


def pi_address(subnet, index):
    """The address the router reserves for pi<index> (1-based): .50, .51, ..."""
    return '%s.%d' % (subnet, 49 + index)


def pi_mac(subnet, index):
    return 'dc:a6:32:%02x:%02x:%02x' % (int(subnet.split('.')[2]), index // 256, index % 256)


ROUTER_CONF = """\
# nspawnlab home router: authoritative DHCP, no DNS.
port=0
interface=eth0
bind-interfaces
dhcp-authoritative
dhcp-range={subnet}.100,{subnet}.150,1h
dhcp-option=option:router,{subnet}.1
dhcp-leasefile={state}/router.leases
log-dhcp
{hosts}
"""


def save(state, lab):
    tmp = state / 'lab.json.tmp'
    tmp.write_text(json.dumps(lab, indent=2, sort_keys=True) + '\n')
    tmp.rename(state / 'lab.json')


def load(state):
    path = state / 'lab.json'
    return json.loads(path.read_text()) if path.exists() else None


def ssh_argv(lab, *command):
    return ['ssh', '-F', lab['ssh_config'], lab['machine'], *command]


def write_access(state, lab):
    proxy = 'ip netns exec %s socat STDIO TCP:127.0.0.1:22' % lab['namespaces']['bakery']
    options = ['-o StrictHostKeyChecking=no', '-o UserKnownHostsFile=/dev/null', '-o LogLevel=ERROR',
               '-o IdentitiesOnly=yes', '-o ProxyCommand="%s"' % proxy]
    (state / 'ssh_config').write_text(
        'Host %s\n  HostName %s\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n'
        '  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ProxyCommand %s\n'
        % (lab['machine'], lab['addresses']['bakery'], lab['ssh_key'], proxy))
    (state / 'inventory.yml').write_text(
        'all:\n  hosts:\n    %s:\n      ansible_host: %s\n      ansible_user: root\n'
        '      ansible_ssh_private_key_file: %s\n      ansible_ssh_common_args: %s\n'
        '      ansible_python_interpreter: /usr/bin/python3\n'
        % (lab['machine'], lab['addresses']['bakery'], lab['ssh_key'], json.dumps(' '.join(options))))
    lab['ssh_config'] = str(state / 'ssh_config')
    lab['inventory'] = str(state / 'inventory.yml')
    lab['ssh_common_args'] = ' '.join(options)


def wait_ssh(lab, timeout=90.0):
    deadline = time.monotonic() + timeout
    last = ''
    while time.monotonic() < deadline:
        if not running('nspawn'):
            raise RuntimeError('systemd-nspawn exited; see %s' % lab['console_log'])
        proc = run(ssh_argv(lab, '-o', 'ConnectTimeout=5', 'systemctl', 'is-system-running'),
                   check=False, timeout=30)
        if proc.returncode in (0, 1) and proc.stdout.strip():  # 1 = "degraded": still up
            return proc.stdout.strip()
        last = proc.stderr.strip()
        time.sleep(0.5)
    raise RuntimeError('sshd in %s did not answer in %ds: %s' % (lab['machine'], timeout, last))


def start_lan(lan, lab):
    lan.start()
    for pi, facts in lab['pis'].items():
        ns = lan.ns(pi)
        # Lan gives every host an address; a Pi must DHCP, so drop it and put on the Pi's MAC.
        run(['ip', '-n', ns, 'addr', 'flush', 'dev', 'eth0'])
        run(['ip', '-n', ns, 'link', 'set', 'eth0', 'down'])
        run(['ip', '-n', ns, 'link', 'set', 'eth0', 'address', facts['mac']])
        run(['ip', '-n', ns, 'link', 'set', 'eth0', 'up'])
    # A default route gives the container an ansible_default_ipv4 (the router forwards nowhere).
    run(['ip', '-n', lan.ns('bakery'), 'route', 'add', 'default', 'via', lab['addresses']['router']])


def start_router(lan, lab, state):
    conf = state / 'router-dnsmasq.conf'
    conf.write_text(ROUTER_CONF.format(subnet=lab['subnet'], state=state, hosts='\n'.join(
        'dhcp-host=%s,%s' % (facts['mac'], facts['pinned']) for facts in lab['pis'].values())))
    pidfile = state / 'router-dnsmasq.pid'
    pidfile.unlink(missing_ok=True)
    lab['pids']['dnsmasq'] = spawn('dnsmasq', lan.exec_argv('router', [
        'dnsmasq', '--keep-in-foreground', '--conf-file=%s' % conf, '--pid-file=%s' % pidfile,
        '--log-facility=%s' % (state / 'router-dnsmasq.log')]), state / 'router-dnsmasq.out')
    save(state, lab)
    deadline = time.monotonic() + 10
    while not pidfile.exists():
        if not running('dnsmasq') or time.monotonic() > deadline:
            raise RuntimeError('router dnsmasq did not start: %s' % (state / 'router-dnsmasq.out').read_text())
        time.sleep(0.05)


def make_key(lab, state):
    key = state / 'id_ed25519'
    for stale in (key, key.with_suffix('.pub')):
        stale.unlink(missing_ok=True)
    run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'nspawnlab-%s' % lab['name'], '-f', str(key)])
    keys = state / 'authorized_keys'
    keys.write_text(key.with_suffix('.pub').read_text())
    keys.chmod(0o600)
    lab['ssh_key'] = str(key)
    write_access(state, lab)
    return keys


DATA_SIZE = '40G'  # sparse: what the bakery's data disk may grow to
# Loop device nodes handed to the container (each Pi root or disk set is one). The kernel hands out the lowest free
# device, so the pool has room for what other jobs on the host (the tests beside a lab) hold at the same time.
LOOP_DEVICES = 256
LOOP_CTL_ADD = 0x4C80


def data_disk(state):
    """The bakery's data disk: an XFS file system (reflink clones, as on a real bakery) mounted at DIR/data.

    It holds the container's root (a copy of the cached image, so a reboot keeps what the roles
    installed) and /srv/pifleet and /var/lib/pifleet, bind-mounted into the container (Ganesha's VFS
    backend needs a file system with file handles).
    """
    backing, mount = state / 'data.img', state / 'data'
    if not os.path.ismount(mount):
        backing.unlink(missing_ok=True)
        run(['truncate', '-s', DATA_SIZE, str(backing)])
        run(['mkfs.xfs', '-q', '-m', 'reflink=1', str(backing)])
        mount.mkdir(parents=True, exist_ok=True)
        run(['mount', '-o', 'loop', str(backing), str(mount)])
    return mount


def release_data_disk(state):
    mount = state / 'data'
    if os.path.ismount(mount):
        if run(['umount', str(mount)], check=False).returncode != 0:
            run(['umount', '--lazy', str(mount)], check=False)
    (state / 'data.img').unlink(missing_ok=True)


def loop_devices(count=LOOP_DEVICES):
    """/dev/loop0..N-1, made on the host if missing (devtmpfs shows them), for the container to bind."""
    with open('/dev/loop-control', 'rb') as control:
        for index in range(count):
            if not os.path.exists('/dev/loop%d' % index):
                try:
                    fcntl.ioctl(control, LOOP_CTL_ADD, index)
                except OSError:
                    pass  # taken meanwhile
    return ['/dev/loop%d' % index for index in range(count) if os.path.exists('/dev/loop%d' % index)]


# cgroup hierarchies systemd tracks a container's services in: name=systemd (v1 or hybrid) and the v2 tree.
CGROUP_TREES = ('/sys/fs/cgroup/systemd', '/sys/fs/cgroup/unified', '/sys/fs/cgroup')


def cgroup_dirs(machine, trees=CGROUP_TREES):
    """The cgroup of the container ``machine`` in each hierarchy this host has (``pifleet-lab/<machine>``).

    With ``--keep-unit`` nspawn makes the container's cgroup ``payload`` below its own, and every process here
    starts in the same (root) cgroup: two containers at once then shared ``/payload``, so their two systemd
    instances managed one ``/payload/system.slice/nfs-ganesha.service`` between them. Seen: both Ganeshas in that
    one cgroup, the second container's systemd with ``MainPID=0`` for its Ganesha (Type=forking without a PID
    file: it guesses the main process from the cgroup, which holds two), so ``ExecReload=kill -HUP $MAINPID``
    reloads nothing, and "Failed to kill control group ... Input/output error" when it stops. A cgroup per
    machine keeps each container's units its own.
    """
    found = []
    for tree in trees:
        # A cgroup file system: /sys/fs/cgroup itself only on a pure cgroup v2 host (else a tmpfs of hierarchies).
        if os.path.isfile(os.path.join(tree, 'cgroup.procs')):
            found.append(os.path.join(tree, 'pifleet-lab', machine))
    return found


def in_own_cgroup(machine, argv, trees=CGROUP_TREES):
    """``argv`` started from a cgroup of its own (see cgroup_dirs): a shell moves itself there, then execs."""
    dirs = cgroup_dirs(machine, trees)
    for path in dirs:
        os.makedirs(path, exist_ok=True)
    moves = ''.join('echo $$ > %s && ' % shlex.quote(os.path.join(path, 'cgroup.procs')) for path in dirs)
    return ['sh', '-c', moves + 'exec "$@"', 'sh', *argv]


def release_cgroups(machine, trees=CGROUP_TREES, wait=5.0):
    """Remove the container's cgroups once it is gone (bottom up; a cgroup still in use stays).

    Waits up to ``wait`` seconds for the kernel to let go of the processes that just exited.
    """
    if not machine:  # a state without a machine (a lab that never started): never the shared pifleet-lab itself
        return
    deadline = time.monotonic() + wait
    for top in cgroup_dirs(machine, trees):
        while True:
            for where, _dirs, _files in os.walk(top, topdown=False):  # children first
                try:
                    os.rmdir(where)
                except OSError:
                    pass
            if not os.path.exists(top) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        try:
            os.rmdir(os.path.dirname(top))  # pifleet-lab itself, once no other lab's machine is in it
        except OSError:
            pass


def start_container(lab, state, image_dir, keys, fresh=True):
    data = data_disk(state)
    rootfs = data / 'rootfs'
    lab['data_dirs'] = {inside: str(data / inside.strip('/').replace('/', '-')) for inside in DATA_DIRS}
    if fresh:
        shutil.rmtree(rootfs, ignore_errors=True)
        run(['cp', '-a', '--reflink=auto', str(image_dir), str(rootfs)], timeout=600)
        for outside in lab['data_dirs'].values():
            shutil.rmtree(outside, ignore_errors=True)
            Path(outside).mkdir(mode=0o755, parents=True)
    Path(lab['console_log']).unlink(missing_ok=True)
    lab['leader_pid'] = None
    release_cgroups(lab['machine'])  # what an earlier boot of this machine left
    lab['pids']['nspawn'] = spawn('nspawn', in_own_cgroup(lab['machine'], [
        'systemd-nspawn', '--quiet', '--directory=%s' % rootfs, '--register=no',
        '--keep-unit', '--boot', '--console=pipe',
        '--network-namespace-path=/run/netns/%s' % lab['namespaces']['bakery'],
        '--machine=%s' % lab['machine'], '--bind-ro=%s:/root/.ssh/authorized_keys' % keys,
        # nspawn grants CAP_NET_ADMIN only with a private network it made itself; dnsmasq needs it for DHCP.
        '--capability=CAP_NET_ADMIN',
        # nspawn's seccomp filter refuses open_by_handle_at (EPERM), which Ganesha's VFS backend lives on.
        '--system-call-filter=open_by_handle_at',
        # No resolv.conf: lookups fail at once instead of timing out on the host's unreachable DNS.
        '--resolv-conf=delete',
        # Each Pi's root and disks are file systems of their own, loop-mounted by pi_root and pi_disk.
        '--bind=/dev/loop-control', *('--bind=%s' % device for device in loop_devices()),
        *('--bind=%s:%s' % (outside, inside) for inside, outside in lab['data_dirs'].items()),
    ]), lab['console_log'])
    save(state, lab)
    deadline = time.monotonic() + 30
    while not lab['leader_pid'] and time.monotonic() < deadline and running('nspawn'):
        # The container's PID 1 is the child of systemd-nspawn that runs systemd.
        for child in children(lab['pids']['nspawn']):
            if comm(child) == 'systemd':
                lab['leader_pid'] = child
        time.sleep(0.1)
    if not lab['leader_pid']:
        raise RuntimeError('no container leader under systemd-nspawn; see %s' % lab['console_log'])
    save(state, lab)


def up(name, subnet, state, *, pis=1, image_dir=None, macs=()):
    """Start the lab; ``macs`` gives pi1, pi2, ... their MACs (the rest get a Pi 4 one)."""
    state = Path(state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if load(state):
        down(state)
    image_dir = Path(image_dir) if image_dir else image()
    # Pis take .50 on; the outsider moves to .200 when they would reach .60.
    addresses = {'router': subnet + '.1', 'bakery': subnet + '.2', 'outsider': subnet + ('.60' if pis < 11 else '.200')}
    macs = [mac.lower() for mac in macs] + [pi_mac(subnet, i) for i in range(len(macs) + 1, pis + 1)]
    pis = {'pi%d' % i: {'mac': macs[i - 1], 'pinned': pi_address(subnet, i)} for i in range(1, pis + 1)}
    lan = Lan(name, {**addresses, **{pi: facts['pinned'] for pi, facts in pis.items()}})
    lab = {'name': name, 'subnet': subnet, 'state': str(state), 'image': str(image_dir),
           'machine': '%s-bakery' % name, 'namespaces': {h: lan.ns(h) for h in ['lan', *lan.hosts]},
           'addresses': addresses, 'pis': pis, 'pids': {}, 'leader_pid': None,
           'console_log': str(state / 'bakery-console.log')}
    save(state, lab)  # before anything exists, so `down` can clean up whatever follows
    start_lan(lan, lab)
    start_router(lan, lab, state)
    start_container(lab, state, image_dir, make_key(lab, state))
    lab['system_state'] = wait_ssh(lab)
    save(state, lab)
    return lab


def down(state):
    state = Path(state).resolve()
    lab = load(state)
    if lab is None:
        return None
    pids = lab.get('pids', {})
    for guest in lab.get('guests', {}).values():  # machines others ran on the LAN (labdemo's qemu Pis)
        stop(guest['pid'], guest['marker'], grace=0.0, sig=signal.SIGKILL)
    stop(pids.get('nspawn'), 'systemd-nspawn', grace=30.0)
    if lab.get('leader_pid'):  # only left when nspawn had to be killed
        stop(lab['leader_pid'], 'systemd', grace=0.0, sig=signal.SIGKILL)
    stop(pids.get('dnsmasq'), 'dnsmasq', grace=10.0)
    release_cgroups(lab.get('machine', ''))
    for ns in reversed(list(lab.get('namespaces', {}).values())):
        run(['ip', 'netns', 'delete', ns], check=False)
    lab['pids'] = {}
    lab['guests'] = {}
    lab['leader_pid'] = None
    save(state, lab)
    release_data_disk(state)
    return lab


def reboot(state):
    """Power the bakery container off and boot it again, keeping its root and data: what a reboot keeps."""
    state = Path(state).resolve()
    lab = load(state)
    stop(lab['pids'].get('nspawn'), 'systemd-nspawn', grace=30.0)
    keys = state / 'authorized_keys'
    start_container(lab, state, Path(lab['image']), keys, fresh=False)
    lab['system_state'] = wait_ssh(lab)
    save(state, lab)
    return lab


def add_guest(state, name, guest):
    """Record a machine started on the lab's LAN by someone else ({pid, marker}), so ``down`` stops it too."""
    lab = load(state)
    lab.setdefault('guests', {})[name] = guest
    save(state, lab)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('image', help='build (or reuse) the cached Debian 12 image')
    p_up = sub.add_parser('up', help='start the LAN, the router and the bakery container')
    p_up.add_argument('--name', default='pfmol')
    p_up.add_argument('--subnet', default='10.99.40', help='first three octets of the /24')
    p_up.add_argument('--state', required=True, help='directory for lab.json, keys, logs')
    p_up.add_argument('--pis', type=int, default=1)
    p_up.add_argument('--macs', default='', help='comma-separated MACs of pi1, pi2, ... (default: Pi 4 MACs)')
    p_down = sub.add_parser('down', help='stop everything `up` started')
    p_down.add_argument('--state', required=True)
    p_reboot = sub.add_parser('reboot', help='power the bakery container off and on, keeping its disks')
    p_reboot.add_argument('--state', required=True)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error('must run as root')
    started = time.monotonic()
    if args.command == 'image':
        print(image())
    elif args.command == 'up':
        if not re.fullmatch(r'\d+\.\d+\.\d+', args.subnet):
            parser.error('--subnet takes three octets, e.g. 10.99.40')
        try:
            macs = [mac for mac in args.macs.split(',') if mac]
            if len(macs) > args.pis or not all(re.fullmatch(r'([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}', m) for m in macs):
                parser.error('--macs takes at most --pis MACs like b8:27:eb:00:00:01, comma-separated')
            lab = up(args.name, args.subnet, args.state, pis=args.pis, macs=macs)
        except BaseException:
            down(args.state)  # nothing half-started stays behind
            raise
        print(json.dumps(lab, indent=2, sort_keys=True))
    elif args.command == 'reboot':
        print(reboot(args.state)['system_state'])
    else:
        down(args.state)
    log('%s took %.1f s' % (args.command, time.monotonic() - started))
    return 0


if __name__ == '__main__':
    sys.exit(main())
