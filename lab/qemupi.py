# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A virtual Raspberry Pi that really boots: qemu (arm64, TCG) with U-Boot on a lab LAN.

    python3 -m lab.qemupi boot --state DIR --mac M --ip A --prefix P [--key K --known-hosts F]

qemu 7.2 has no Pi 4 machine, so the Pi is ``-M virt`` (cortex-a72, 2 CPUs, 1 GiB) with a
virtio NIC carrying the Pi's MAC, on a tap in the lab bridge's namespace: it takes its address
from the lab router's DHCP (the reservation for that MAC) like the Pi would. U-Boot (u-boot-qemu)
plays the Pi firmware, driven through its serial console: ``dhcp``, then TFTP from the bakery's
hook under the Pi's prefix, as a Pi asks: ``config.txt`` (read here for ``kernel=`` and
``initramfs``, with the collection's own parser), ``cmdline.txt`` (becomes the kernel command
line as it is, plus ``console=ttyAMA0``, qemu's console), the kernel and the initramfs; then
``booti`` with qemu's device tree (a real Pi's firmware would load its bcm27xx dtb: that part, and
the firmware's reading of config.txt, only a real Pi proves).

The serial console goes through a unix socket (qemu waits for it, so nothing is missed) into
``console.log``; ``wait_for()`` looks for text in it. Every phase is timed from power-on:
``firmware`` (U-Boot prompt), ``dhcp``, ``boot_set`` (the four files fetched), ``kernel`` (first
kernel line), ``nfs_root`` (systemd's first line, from the NFS root the initramfs mounted),
``login`` (login prompt) and ``ssh`` (when ``wait_ssh`` saw the Pi's known host key).

Everything it starts (the tap, qemu) is stopped by ``power_off()`` by its own PID and name;
``guest()`` and ``adopt()`` let another process take over a Pi left running.
Root only; needs qemu-system-arm, u-boot-qemu, iproute2, openssh-client.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from lab import ensure_importable
from lab.nspawnlab import alive

ensure_importable()
from ansible_collections.pifleet.netboot.plugins.module_utils.store.partitions import boot_config  # noqa: E402

UBOOT = Path('/usr/lib/u-boot/qemu_arm64/u-boot.bin')
QEMU = 'qemu-system-aarch64'
PROMPT = '=> '
KERNEL_COMP_ADDR = '0x50000000'  # U-Boot unpacks Debian's gzip'ed vmlinuz here (booti needs it)
KERNEL_COMP_SIZE = '0x4000000'
# What a Pi that will never come up shows: a kernel panic, the initramfs' rescue shell, an emergency shell.
STUCK = r'Kernel panic - not syncing[^\n]*|\(initramfs\) |Give root password for maintenance|You are in emergency mode'


class BootError(Exception):
    """The virtual Pi did not get where it should; the message says where it stopped."""


def parse_md(out, size):
    """The bytes of U-Boot ``md.b`` output (``40200000: 6b 65 6c 3d ...  kel=``), at most ``size``."""
    data = bytearray()
    for line in out.splitlines():
        match = re.match(r'\s*[0-9a-f]{8}:((?: [0-9a-f]{2})+)', line)
        if match:
            data += bytes.fromhex(match.group(1).replace(' ', ''))
    if len(data) < size:
        raise BootError('U-Boot showed %d of %d bytes:\n%s' % (len(data), size, out[-1000:]))
    return bytes(data[:size])


class Console:
    """The serial console: a reader thread appends everything to the log and to ``text``."""

    def __init__(self, path, log):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.log = open(log, 'ab')
        self.chunks = []
        self.arrived = []  # (the text's length after a chunk, when it arrived): Console.time_of
        self.lock = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b''
            with self.lock:
                if not data:
                    self.closed = True
                    self.lock.notify_all()
                    return
                self.log.write(data)
                self.log.flush()
                self.chunks.append(data.decode('utf-8', errors='replace'))
                self.arrived.append(((self.arrived[-1][0] if self.arrived else 0) + len(self.chunks[-1]),
                                     time.monotonic()))
                self.lock.notify_all()

    @property
    def text(self):
        with self.lock:
            return ''.join(self.chunks)

    def mark(self):
        return len(self.text)

    def time_of(self, offset):
        """When the text at ``offset`` arrived (time.monotonic())."""
        with self.lock:
            return next(at for end, at in self.arrived if end > offset)

    def wait_for(self, pattern, timeout, start=0, what=None):
        """The first match of ``pattern`` (regex) in the console after ``start``; BootError on timeout."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                match = regex.search(''.join(self.chunks), start)
                if match:
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    tail = ''.join(self.chunks)[-1500:]
                    raise BootError('%s: not seen in %.0f s%s; the console ended with:\n%s' % (
                        what or pattern, timeout, ' (qemu exited)' if self.closed else '', tail))
                self.lock.wait(min(left, 1.0))

    def send(self, text):
        self.sock.sendall(text.encode())

    def close(self):
        try:
            self.sock.close()
        finally:
            self.thread.join(5)
            self.log.close()


class VirtualPi:
    """One virtual Pi on the LAN of a lab (nspawnlab's lab.json): ``power_on``, ``firmware``, ``power_off``."""

    def __init__(self, lab, *, name, mac, ip, prefix, workdir, model=4, tap=None, memory=1024, cpus=2,
                 progress=None, kaslr=None):
        self.lab = lab
        self.name, self.mac, self.ip, self.prefix, self.model = name, mac.lower().replace('-', ':'), ip, prefix, model
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.netns = lab['namespaces']['lan']
        self.tap = tap or 'tap-%s' % self.mac.replace(':', '')[-6:]
        self.memory, self.cpus = memory, cpus
        # PIFLEET_QEMU_KASLR=1 keeps qemu's kaslr-seed (and so KPTI): the slower boot, for comparison.
        self.kaslr = os.environ.get('PIFLEET_QEMU_KASLR') == '1' if kaslr is None else kaslr
        self.proc = None
        self.pid = None
        self.console = None
        self.control = None  # the socket of this boot's ssh control master (VirtualPi.ssh)
        self.bootargs = None
        self.initrd = '-'
        self.powered = None
        self.boots = 0
        self.timings = {}
        self.progress = progress  # called as progress(phase, seconds) when a phase is reached
        self.log = self.workdir / ('%s-console.log' % name)

    # ------------------------------------------------------------------ power

    def _ip(self, *argv, check=True):
        proc = subprocess.run(['ip', '-n', self.netns, *argv], capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise BootError('ip -n %s %s: %s' % (self.netns, ' '.join(argv), proc.stderr.strip()))
        return proc

    def power_on(self):
        """Start qemu on a fresh tap in the lab bridge; U-Boot waits at its prompt."""
        if self.proc is not None:
            raise BootError('%s is already on' % self.name)
        self._ip('link', 'delete', self.tap, check=False)  # a killed earlier run's tap
        self._ip('tuntap', 'add', 'dev', self.tap, 'mode', 'tap')
        self._ip('link', 'set', self.tap, 'master', 'br0')
        self._ip('link', 'set', self.tap, 'up')
        sock = self.workdir / ('%s-console.sock' % self.name)
        sock.unlink(missing_ok=True)
        self.boots += 1
        with open(self.log, 'ab') as handle:
            handle.write(('\n===== %s power on #%d %s =====\n' % (
                self.name, self.boots, time.strftime('%Y-%m-%dT%H:%M:%S'))).encode())
        argv = ['ip', 'netns', 'exec', self.netns, QEMU, '-M', 'virt', '-cpu', 'cortex-a72',
                '-smp', str(self.cpus), '-m', str(self.memory), '-nographic', '-monitor', 'none',
                '-bios', str(UBOOT), '-netdev', 'tap,id=lan,ifname=%s,script=no,downscript=no' % self.tap,
                '-device', 'virtio-net-device,netdev=lan,mac=%s' % self.mac,
                '-chardev', 'socket,id=console,path=%s,server=on,wait=on' % sock, '-serial', 'chardev:console']
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / ('%s-qemu.err' % self.name), 'ab'),
                                     start_new_session=True)
        self.pid = self.proc.pid  # `ip netns exec` execs qemu: the same process, leader of its own session
        self.powered = time.monotonic()
        self.timings = {}
        deadline = time.monotonic() + 20
        while True:
            try:
                self.console = Console(sock, self.log)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BootError('qemu did not open its console (rc %s); see %s' % (
                        self.proc.poll(), self.workdir / ('%s-qemu.err' % self.name))) from None
                time.sleep(0.05)
        self._lap('firmware', self.console.wait_for('Hit any key to stop autoboot', 60, what='U-Boot'))
        self.console.send(' ')
        self.console.wait_for(re.escape(PROMPT), 10, what='the U-Boot prompt')

    def _lap(self, phase, result=None, at=None):
        self.timings[phase] = round((time.monotonic() if at is None else at) - self.powered, 1)
        if self.progress:
            self.progress(phase, self.timings[phase])
        return result

    @property
    def marker(self):
        """Text of qemu's command line that names this Pi (with the PID: never a reused PID)."""
        return 'ifname=%s,' % self.tap

    def guest(self):
        """What the lab keeps to stop this Pi later (nspawnlab's ``down`` stops its guests)."""
        return {'pid': self.pid, 'marker': self.marker}

    def adopt(self, guest):
        """Take over a Pi left running by another process (``labdemo.py --keep``): its console again."""
        if not alive(guest['pid'], guest['marker']) or guest['marker'] != self.marker:
            raise BootError('%s is not running (PID %s)' % (self.name, guest['pid']))
        self.pid = guest['pid']
        self.console = Console(self.workdir / ('%s-console.sock' % self.name), self.log)

    def power_off(self):
        """Pull the plug: the ssh connection closed, qemu killed by its own PID, the tap deleted."""
        self.close_ssh()
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: ip netns exec + qemu
            self.proc.wait(10)
            self.proc = None
        elif self.pid is not None and alive(self.pid, self.marker):
            os.killpg(self.pid, signal.SIGKILL)  # adopted: not our child, so wait until it is gone
            deadline = time.monotonic() + 10
            while alive(self.pid, self.marker) and time.monotonic() < deadline:
                time.sleep(0.1)
        self.pid = None
        if self.console is not None:
            self.console.close()
            self.console = None
        self._ip('link', 'delete', self.tap, check=False)

    def ssh(self, key, known_hosts, *command, timeout=120, check=True):
        """A command on the Pi, over one ssh connection per boot of this process: the first command of a boot opens
        it (the Pi's host key checked against ``known_hosts`` then), the next ones use it (no key exchange and login
        each, which cost seconds under TCG). ``power_off`` closes it, so a new boot is a new connection."""
        if self.control is None:
            self.control = self.workdir / ('%s-ssh-%d-%d' % (self.name, os.getpid(), self.boots))
        return ssh(self.lab, self.ip, key, known_hosts, *command, timeout=timeout, check=check, control=self.control)

    def close_ssh(self):
        """The control master of VirtualPi.ssh told to exit (it is not this process's child)."""
        control, self.control = self.control, None
        if control is not None and control.exists():
            subprocess.run(['ssh', '-o', 'ControlPath=%s' % control, '-O', 'exit', 'root@%s' % self.ip],
                           capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL)

    # ------------------------------------------------------------------ U-Boot as the Pi firmware

    def uboot(self, command, timeout=30, what=None):
        """Type one command at the U-Boot prompt; the console text it printed."""
        start = self.console.mark()
        self.console.send(command + '\r')
        self.console.wait_for(re.escape(PROMPT), timeout, start=start + len(command), what=what or command)
        out = self.console.text[start:]
        return out[out.find('\n') + 1:out.rfind(PROMPT)] if '\n' in out else ''

    def tftp(self, address, name, timeout=120):
        path = '%s/%s' % (self.prefix, name)
        out = self.uboot('tftpboot %s %s' % (address, path), timeout, what='TFTP %s' % path)
        match = re.search(r'Bytes transferred = (\d+)', out)
        if not match:
            raise BootError('%s: U-Boot could not fetch %s from the hook:\n%s' % (self.name, path, out.strip()))
        return int(match.group(1))

    def read_memory(self, address, size):
        """Bytes of guest memory, read through U-Boot's ``md.b`` hex dump."""
        return parse_md(self.uboot('md.b %s %x' % (address, size), what='md.b'), size)

    def firmware(self, server):
        """What the Pi's firmware does, by U-Boot: DHCP, the boot set from the hook, then the kernel."""
        fetched = self.fetch_boot_set(server)
        self.boot_kernel()
        return fetched

    def fetch_boot_set(self, server):
        """DHCP, then config.txt, cmdline.txt, the kernel and the initramfs under the Pi's prefix.

        Returns {file: bytes}. A Pi stopped here (``power_off``) is one that got its files but never
        came up.
        """
        self.uboot('setenv autoload no')
        out = self.uboot('dhcp', 60, what='DHCP')
        match = re.search(r'DHCP client bound to address ([0-9.]+)', out)
        if not match:
            raise BootError('%s: no DHCP lease in U-Boot:\n%s' % (self.name, out.strip()))
        if match.group(1) != self.ip:
            raise BootError('%s: DHCP gave %s, not the reserved %s' % (self.name, match.group(1), self.ip))
        self._lap('dhcp')
        self.uboot('setenv serverip %s' % server)
        fetched = {'config.txt': self.tftp('${scriptaddr}', 'config.txt')}
        text = self.read_memory('${scriptaddr}', fetched['config.txt']).decode('utf-8', errors='replace')
        config = boot_config(text, self.model)  # what this model's firmware would take from it
        if not config.get('kernel'):
            raise BootError('%s: config.txt names no kernel= (got %r)' % (self.name, config))
        fetched['cmdline.txt'] = self.tftp('${scriptaddr}', 'cmdline.txt')
        # cmdline.txt becomes bootargs as it is: NUL-terminate it over its final newline.
        self.uboot('setexpr cmdend ${scriptaddr} + ${filesize}; setexpr cmdend ${cmdend} - 1; '
                   'if itest.b *${cmdend} != 0x0a; then setexpr cmdend ${cmdend} + 1; fi; mw.b ${cmdend} 0 1')
        self.uboot('setexpr.s bootargs *${scriptaddr}')
        self.uboot('setenv bootargs "${bootargs} console=ttyAMA0"')
        self.bootargs = self.uboot('printenv bootargs').strip().removeprefix('bootargs=')
        fetched[config['kernel']] = self.tftp('${kernel_addr_r}', config['kernel'])
        self.uboot('setenv kernel_comp_addr_r %s; setenv kernel_comp_size %s' % (KERNEL_COMP_ADDR, KERNEL_COMP_SIZE))
        self.initrd = '-'
        if config.get('initramfs'):
            size = self.tftp('${ramdisk_addr_r}', config['initramfs'])
            fetched[config['initramfs']] = size
            self.initrd = '${ramdisk_addr_r}:0x%x' % size
        self._lap('boot_set')
        return fetched

    def boot_kernel(self):
        """``booti`` with qemu's device tree, until the NFS root's systemd speaks.

        The device tree loses its ``kaslr-seed`` first (unless ``kaslr``): with KASLR on, the arm64 kernel forces
        page table isolation (KPTI) even on a Cortex-A72, which needs none, and under TCG each kernel entry and
        exit with KPTI switches the ASID in TTBR1, which empties qemu's whole TLB: systemd, sshd and cloud-init
        run slower (a repeat boot here: 56 s to the login prompt without, 67-100 s with; docs/real-boot.md). The
        Pi's own cmdline.txt stays as it is.
        """
        if not self.kaslr:  # the kernel then says "KASLR disabled due to lack of seed" (KPTI off)
            self.uboot('fdt addr ${fdtcontroladdr}; fdt rm /chosen kaslr-seed')
        start = self.console.mark()
        self.console.send('booti ${kernel_addr_r} %s ${fdtcontroladdr}\r' % self.initrd)
        self._lap('kernel', self.console.wait_for(r'Booting Linux on physical CPU', 120, start, 'the kernel'))
        self._lap('nfs_root', self.expect(r'systemd\[1\]: systemd \d+', 300, start,
                                          'systemd started from the NFS root'))

    def expect(self, pattern, timeout, start, what):
        """Like ``Console.wait_for`` (multi-line: ``^`` is a line's start), but a kernel panic or the initramfs'
        rescue shell ends the wait at once."""
        match = self.console.wait_for('(?m)(?P<wanted>%s)|(?P<stuck>%s)' % (pattern, STUCK), timeout, start, what)
        if match.group('stuck'):
            tail = self.console.text[max(start, match.start() - 1500):match.end() + 200]
            raise BootError('%s: %s never came: the Pi is stuck (%s); the console:\n%s'
                            % (self.name, what, match.group('stuck').strip(), tail))
        return match

    def wait_running(self, ready, timeout=600, grace=15):
        """Until ``ready()`` (sshd answers with the Pi's host key: see ``wait_ssh``) says the Pi is up, timing the
        console's login prompt (phase ``login``), but never failing for want of one: a serial getty whose device
        systemd gave up on shows none on a system that is up (a prompt that comes after ssh answered is waited for
        ``grace`` seconds more). A kernel panic, the initramfs' rescue shell or an emergency shell ends the wait at
        once (BootError). The last login prompt line seen, or ''."""
        start = self.console.mark() if 'login' in self.timings else 0
        regex = re.compile(r'(?m)(?P<login>^\S+ login: )|(?P<stuck>%s)' % STUCK)
        seen = None

        def watch():
            nonlocal seen
            text = self.console.text
            for match in regex.finditer(text, start):
                if match.group('stuck'):
                    raise BootError('%s is stuck (%s) before it answered ssh; the console:\n%s' % (
                        self.name, match.group('stuck').strip(), text[max(start, match.start() - 1500):]))
                if seen is None:
                    seen = match.group('login')
                    self._lap('login', at=self.console.time_of(match.start()))
        if not wait_until(ready, watch, timeout):
            watch()
            tail = self.console.text[-1500:]
            raise BootError('%s: ssh did not answer with its host key in %d s (login prompt %s); the console ended '
                            'with:\n%s' % (self.name, timeout, 'seen' if seen else 'not seen', tail))
        watch()
        if seen is None:
            try:
                self.console.wait_for(r'(?m)^\S+ login: ', grace, start)
            except BootError:
                pass
            watch()
        lines = [line for line in self.console.text[start:].splitlines() if re.match(r'^\S+ login: ', line)]
        return lines[-1].strip() if lines else ''

    def wait_login(self, timeout=600):
        start = self.console.mark() if 'login' in self.timings else 0
        self.expect(r'^\S+ login: ', timeout, start, 'the login prompt')
        self._lap('login')
        lines = [line for line in self.console.text.splitlines() if re.match(r'^\S+ login: ', line)]
        return lines[-1].strip() if lines else ''


def ssh_argv(lab, ip, key, known_hosts, *command, connect_timeout=5, control=None):
    """ssh to a Pi from the lab router's namespace, checking its host key against ``known_hosts``; with ``control``
    (a socket path) through the connection of a control master there, which the first such command opens (its host
    key checked then) and which stays until ``-O exit`` (VirtualPi.close_ssh)."""
    shared = ['-o', 'ControlMaster=auto', '-o', 'ControlPath=%s' % control, '-o', 'ControlPersist=yes',
              '-o', 'ServerAliveInterval=5', '-o', 'ServerAliveCountMax=3'] if control else []
    return ['ip', 'netns', 'exec', lab['namespaces']['router'], 'ssh', '-i', str(key), '-o', 'IdentitiesOnly=yes',
            '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes', '-o', 'UserKnownHostsFile=%s' % known_hosts,
            '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', '-o', 'ConnectTimeout=%d' % connect_timeout,
            *shared, 'root@%s' % ip, *command]


def ssh(lab, ip, key, known_hosts, *command, timeout=120, check=True, control=None):
    proc = subprocess.run(ssh_argv(lab, ip, key, known_hosts, *command, control=control), capture_output=True,
                          text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise BootError('ssh root@%s %s: rc %d: %s' % (ip, ' '.join(command), proc.returncode,
                                                       (proc.stderr or proc.stdout).strip()[-2000:]))
    return proc


def wait_until(ready, watch, timeout, pause=1.0):
    """True once ``ready()`` is true, False after ``timeout`` seconds; ``watch()`` runs before each try (it may
    raise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watch()
        if ready():
            return True
        time.sleep(pause)
    return False


def ssh_ready(pi, key, known_hosts):
    """A function that is true once sshd on the Pi answers with its known host key and takes the key (then the phase
    ``ssh``); BootError at once when qemu exited or the Pi shows another host key."""
    def ready():
        if pi.proc is not None and pi.proc.poll() is not None:
            raise BootError('%s: qemu exited while waiting for ssh' % pi.name)
        proc = ssh(pi.lab, pi.ip, key, known_hosts, 'true', timeout=60, check=False)
        if proc.returncode == 0:
            pi._lap('ssh')
            return True
        ready.last = proc.stderr.strip()
        if 'REMOTE HOST IDENTIFICATION HAS CHANGED' in ready.last or 'Host key verification failed' in ready.last:
            raise BootError('%s answers ssh with another host key than the one its root was given:\n%s'
                            % (pi.name, ready.last))
        return False
    ready.last = ''
    return ready


def wait_ssh(pi, key, known_hosts, timeout=300):
    """Until sshd on the Pi answers with its known host key and takes the key; the phase ``ssh``."""
    ready = ssh_ready(pi, key, known_hosts)
    if not wait_until(ready, lambda: None, timeout):
        raise BootError('%s: ssh did not answer in %d s: %s' % (pi.name, timeout, ready.last))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    sub = parser.add_subparsers(dest='command', required=True)
    boot = sub.add_parser('boot', help='boot one virtual Pi on a running lab (nspawnlab up / labdemo --keep)')
    boot.add_argument('--state', required=True, help='the lab state dir (lab.json)')
    boot.add_argument('--name', default='pi')
    boot.add_argument('--mac', required=True)
    boot.add_argument('--ip', required=True, help='the address the lab router reserves for the MAC')
    boot.add_argument('--prefix', required=True, help='TFTP prefix (serial, MAC or custom string)')
    boot.add_argument('--key', help='ssh key (then: wait for ssh)')
    boot.add_argument('--known-hosts', help="known_hosts file with the Pi's host key")
    boot.add_argument('--keep', action='store_true', help='leave it running (kill it by the PID printed)')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error('must run as root')
    lab = json.loads((Path(args.state) / 'lab.json').read_text())
    pi = VirtualPi(lab, name=args.name, mac=args.mac, ip=args.ip, prefix=args.prefix,
                   workdir=Path(args.state) / 'qemu')
    try:
        pi.power_on()
        fetched = pi.firmware(lab['addresses']['bakery'])
        print('boot set: %s' % json.dumps(fetched))
        print('command line: %s' % pi.bootargs)
        print(pi.wait_login())
        if args.key:
            wait_ssh(pi, args.key, args.known_hosts)
            print(ssh(lab, pi.ip, args.key, args.known_hosts, 'hostname').stdout.strip())
        print(json.dumps(pi.timings))
        if args.keep:
            print('qemu PID %d (kill -9 -%d), console log %s' % (pi.proc.pid, pi.proc.pid, pi.log))
            return 0
    except BootError as exc:
        print('qemupi: %s' % exc, file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            pi.power_off()
    return 0


if __name__ == '__main__':
    sys.exit(main())
