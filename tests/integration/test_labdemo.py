# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo` end to end, then the real Pi checked from the inside on the same lab: one lab for every check.

lab/demo.py runs with its state in a temp dir and ``--keep``: the bakery container runs site with
inventories/lab (the boot services, the fleet of the simulated Pi 3/4/5, which boot through it, the
whole fleet, then the whole site again: changed=0), the outsider is refused, the real Pi (pi-06,
Trixie-like with cloud-init, like today's Raspberry Pi OS) boots an arm64 kernel (qemu + U-Boot) to
ssh, and the status table lists every Pi. Then, on the lab it left running (with pi-06 on), the real
Pi is checked from the inside over ssh, and the bakery only through the lab (ssh into the container),
so the checks hold however the roots are stored:

- ``running`` with no failed unit, its inventory host name, ``/`` over NFSv3 from its own export
  without NFSACL (a clean journal), ``/boot/firmware`` read-only over NFS from its generation's boot
  files (bug 1; the generation found through the bakeform's index), host keys and
  machine-id of its own, not the golden image's, and kept across boots, the Raspberry Pi OS
  first-boot, swap and network pieces neutralised;
- cloud-init ``done`` from its own seed (instance-id from its serial, its host name, root's key),
  its NFS root's NIC left alone by cloud-init, netplan, NetworkManager and systemd-networkd;
- day two (the demo's step 8, lab/daytwo.py, with the demo as the Pi's power switch): the upgrade
  playbook moves the Pi from generation A to B (the same root with another kernel and its modules):
  B's kernel runs with B's modules, a stray file is gone, identity and keys are kept, and the playbook
  returns once the Pi's SSH server shows its root's host key (reimage shares those steps); then an
  upgrade to C, whose kernel panics, is rolled back automatically: the Pi comes back on its own root
  with B's kernel and modules, and the report names it (the rollback playbook alone is proven with
  simulated Pis: one real boot less). Then here: apt on the Pi cannot change the kernel of its root
  (the kernel hold); a capture of the Pi (generation D) holds none of its identity; the bakery
  reboots (every root and the real Pi's generation's boot files are mounted again by their units,
  every simulated Pi boots again) and D boots the real Pi from it. After each step ``ansible -m ping``
  with strict host-key checking and the fleet known_hosts alone succeeds (and fails without the CA
  line);
- the fleet role again after the boots: changed=0; an outsider cannot mount a real Pi's root or boot files.

The Bookworm-like flavour (dhcpcd) is no longer booted here: its checks were the same as the
Trixie-like Pi's but for dhcpcd's ``denyinterfaces``, and its image cost five minutes on a cold run
(docs/real-boot.md has the numbers). Budget on a 2-core machine: see docs/real-boot.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lab import daytwo, nspawnlab, qemupi, realimage
from lab import demo as labdemo
from lab.nfslab import missing_tools

REPO = Path(__file__).resolve().parents[2]
# Not the `make demo` lab (pflab), so a kept demo lab does not stop the tests; PIFLEET_LABDEMO_NAME names
# another lab when one of this name was left behind by a killed run (the test refuses to run beside it).
NAME = os.environ.get('PIFLEET_LABDEMO_NAME', 'pfboot')
MISSING = missing_tools(('ip', 'systemd-nspawn', 'debootstrap', 'socat', 'ssh', 'dnsmasq', 'nfs-ls', 'mmdebstrap',
                         'qemu-system-aarch64', 'update-binfmts'))
MISSING += [] if qemupi.UBOOT.exists() else [str(qemupi.UBOOT)]
TIMINGS = {}


def namespaces():
    return subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True, check=True).stdout


pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason='missing %s' % ', '.join(MISSING)),
    pytest.mark.skipif(sys.platform != 'linux' or not Path('/run').exists(), reason='Linux only'),
]


class Lab:
    """The lab the demo left running, the real Pis of its inventory and their virtual machines."""

    def __init__(self, state):
        self.state, self.output = state, ''
        self.lab = nspawnlab.load(state)
        self.pis = {pi['name']: pi for pi in labdemo.lab_pis() if pi['boot'] == 'qemu'}
        self.vms = {name: labdemo.virtual_pi(self.lab, pi, state, show=print) for name, pi in self.pis.items()}

    def adopt(self, name):
        """The Pi the demo booted and left on."""
        self.vms[name].adopt(nspawnlab.load(self.state)['guests'][name])
        return self.vms[name]

    def boot(self, name):
        vm = self.vms[name]
        labdemo.real_boot(self.lab, self.pis[name], self.state, vm, show=print)
        TIMINGS['%s boot %d' % (name, vm.boots)] = dict(vm.timings)
        return vm

    def ssh(self, name, command, check=True):
        """A command on the real Pi, over its VirtualPi's one connection per boot."""
        known = self.state / ('known_hosts-%s' % name)
        proc = self.vms[name].ssh(self.lab['ssh_key'], known, command, check=check)
        return proc.stdout.strip() if check else proc

    def bakery(self, command):
        return labdemo.on_bakery(self.lab, command).strip()

    def power_off(self, name):
        if name in self.vms:
            self.vms[name].power_off()

    def close(self):
        for vm in self.vms.values():
            vm.power_off()
        nspawnlab.down(self.state)


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    if '%s-' % NAME in namespaces():
        pytest.skip('a lab named %s is running (an earlier run was killed?); take it down first, or set '
                    'PIFLEET_LABDEMO_NAME to another name' % NAME)
    state = tmp_path_factory.mktemp('lab') / 'state'
    started = time.monotonic()
    found, lines = None, []
    try:
        with subprocess.Popen([sys.executable, '-m', 'lab.demo', '--state', str(state), '--name',
                               NAME, '--keep'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL) as proc:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith(('===', 'demo: ')) and ': $ ' not in line:  # progress, phases, the real boot's
                    print(line.rstrip(), flush=True)
        TIMINGS['demo'] = round(time.monotonic() - started, 1)
        found = Lab(state)
        found.output = ''.join(lines)
        assert proc.returncode == 0, found.output[-8000:]
        found.adopt('pi-06')
        yield found
    finally:
        if found is None and (state / 'lab.json').exists():
            found = Lab(state)
        if found is not None:
            found.close()
        TIMINGS['whole'] = round(time.monotonic() - started, 1)
        print('\ntimings (s): %s' % json.dumps(TIMINGS, indent=1))
        assert '%s-' % NAME not in namespaces()
        leftovers = subprocess.run(['pgrep', '-f', str(state)], capture_output=True, text=True, check=False).stdout
        assert not leftovers.strip(), leftovers


def test_demo_boots_every_pi_of_the_lab_inventory(lab):
    output = lab.output
    group = yaml.safe_load((REPO / 'inventories/lab/hosts.yml').read_text())['pis']
    pis = {name: dict(group['vars'], **facts) for name, facts in group['hosts'].items()}
    simulated = {name: facts for name, facts in pis.items() if facts.get('lab_boot') != 'qemu'}
    assert {facts['pi_model'] for facts in simulated.values()} == {3, 4, 5}
    recaps = re.findall(r'^\s*lab-bakery\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0', output, re.M)
    # site --tags services, --tags fleet (for the simulated Pis first when the real image was still building, then
    # for all), the whole site again (while the real Pi boots), day two's bakeforms, upgrade and rollback, status last
    said = dict(re.findall(r'^demo: (boot services|fleet of the simulated Pis|fleet|site again, whole): changed=(\d+)$',
                           output, re.M))
    assert int(said['boot services']) > 0 and int(said['fleet']) > 0 and said['site again, whole'] == '0', said
    assert int(said.get('fleet of the simulated Pis', 1)) > 0, said
    assert len(recaps) >= 4 and recaps[-1] == '0', recaps
    for name, facts in simulated.items():
        booted = re.search(r'^demo: %s \(Pi %d, [0-9a-f:]+\): DHCP %s, PXE answer from 10\.99\.0\.2; TFTP (\d+) files'
                           r'.*NFS root readable$' % (name, facts['pi_model'], re.escape(facts['pi_ip'])), output, re.M)
        assert booted and int(booted.group(1)) >= 4, (name, output[-4000:])
    table = status_rows(output)
    for name, facts in pis.items():
        # ROOT and DISKS: the use of the bakery's mounts of them (a disks container only for a Pi with disks).
        row = table[name]
        assert (row['MODEL'], row['GENERATION'].split('@')[0]) == (str(facts['pi_model']), facts['pi_bakeform']), row
        assert row['ROOT'].endswith('%') and row['DISKS'].endswith('%') == bool(facts.get('pi_disks')), row
        assert row['LAST BOOT'] != 'never' and row['STAGE'] != 'never', row  # every Pi booted: none "never"
    assert re.search(r'^demo: the outsider 10\.99\.0\.60 is refused nfs://', output, re.M), output[-3000:]
    # The real boot: U-Boot fetched the boot set the firmware would, the kernel ran the Pi's cmdline.txt.
    assert re.search(r'^demo: pi-06: U-Boot took the lease 10\.99\.0\.53 and fetched from the hook under c0ffee06/: '
                     r'config\.txt \(\d+ B\), cmdline\.txt \(\d+ B\), vmlinuz-\S+ \(\S+ MiB\), initrd\.img-\S+ ',
                     output, re.M), output[-4000:]
    cmdline = re.search(r'^demo: pi-06: kernel command line: (.*)$', output, re.M).group(1).split()
    assert cmdline[-1] == 'console=ttyAMA0' and 'root=/dev/nfs' in cmdline and 'ip=dhcp' in cmdline
    assert not [t for t in cmdline if t.startswith(('init=', 'root=PARTUUID', 'rootfstype='))], cmdline
    # The console's login prompt when it came by 15 s after ssh answered (under CI load the serial getty can come
    # later: ssh with the Pi's own key is what says it is up); when it came, it names the Pi.
    assert re.search(r'^demo: pi-06: console: (pi-06 login:|no login prompt \(its serial getty is not up\), ssh '
                     r'answers)$', output, re.M), output[-4000:]
    assert re.search(r'^demo: \$ ssh pi-06 hostname.*\ndemo: pi-06$', output, re.M), output[-4000:]
    # Day two (lab/daytwo.py): upgraded to the next generation B, another kernel with its own modules, the stray file
    # gone; then to C, whose kernel panics: not back within upgrade_timeout, so the playbook rolled it back to B
    # (root, boot folder, boot export), power-cycled it, and failed with a report naming the Pi, its last boot event
    # (from the hook: it fetched C's kernel and initramfs, then its kernel panicked) and what was rolled back; B's
    # kernel and modules again; ansible's strict ping before, between and after.
    b = realimage.cached('trixie-kernel')['uname']
    assert re.search(r'^demo: pi-06: upgraded to realpi-trixie@2 in \d+ s', output, re.M), output[-4000:]
    shown = (r'^demo: pi-06: uname -r %s; /lib/modules holds %s; dummy loaded from the NFS root \(vermagic %s\); '
             r'loaded modules from /lib/modules/%s$' % ((re.escape(b),) * 4))
    assert len(re.findall(shown, output, re.M)) == 2, b  # after the upgrade, and after the rollback
    assert re.search(r'^demo: pi-06: /root/stray is gone .*; machine-id and host key kept; ', output, re.M)
    # (lab/daytwo.py checks the first boot ended in a kernel panic and the second one came up)
    report = (r'^demo: pi-06: the upgrade to realpi-trixie@3 failed as it must \(its kernel panicked\) and rolled '
              r'the Pi back in \d+ s; its report: pi-06 \(serial c0ffee06\): it did not come back on realpi-trixie@3 '
              r'within the timeout .*; last boot event: initrd\.img-\S+, outcome ok; rolled back from realpi-trixie@3 '
              r'to realpi-trixie@2 \(root, boot folder, boot export\), power-cycled: it is back up$')
    assert re.search(report, output, re.M), output[-4000:]
    assert re.search(r'^demo: pi-06: rolled back to realpi-trixie@2 on its own \(its own root as it was: /root/mine is '
                     r'there, machine-id and host key kept\)$', output, re.M), output[-4000:]
    assert output.count('ansible pi-06 -m ping (StrictHostKeyChecking=yes, known_hosts: the bakery\'s CA line): '
                        'pong') == 3


def status_rows(output, last=True):
    """The rows of the (last) status table in a playbook's output, {PI: {column: cell}}, cut at the header's columns."""
    at = output.rindex('TASK [Show the fleet]') if last else output.index('TASK [Show the fleet]')
    lines = json.JSONDecoder().raw_decode(output, output.index('=> {', at) + 3)[0]['msg']
    starts = [m.start() for m in re.finditer(r'(?:^|(?<=  ))\S', lines[0])]
    cut = list(zip(starts, [*starts[1:], None]))
    names = [lines[0][a:b].strip() for a, b in cut]
    return {cells[0]: dict(zip(names, cells)) for cells in ([line[a:b].strip() for a, b in cut] for line in lines[1:]
                                                            if re.match(r'pi-\d', line))}


def check_running(lab, name):
    """``running`` with no failed unit, or the failed units and the journal's errors in the message."""
    state = lab.ssh(name, 'timeout 120 systemctl is-system-running --wait', check=False).stdout.strip()
    failed = lab.ssh(name, 'systemctl --failed --no-legend --plain')
    assert state == 'running' and not failed, (state, failed, lab.ssh(name, 'journalctl -b -p err --no-pager'))


def mount_of(lab, name, target):
    source, fstype, options = lab.ssh(name, 'findmnt -n -o SOURCE,FSTYPE,OPTIONS %s' % target).split()
    return source, fstype, options.split(',')


def test_real_pi_runs_clean_on_its_own_root(lab):
    vm = lab.vms['pi-06']  # as the demo booted it
    serial, ip = lab.pis['pi-06']['root_key'], lab.pis['pi-06']['ip']
    check_running(lab, 'pi-06')
    assert lab.ssh('pi-06', 'hostname') == 'pi-06'
    source, fstype, options = mount_of(lab, 'pi-06', '/')
    assert (source, fstype) == ('10.99.0.2:/srv/pifleet/roots/mnt/%s' % serial, 'nfs'), source
    assert 'vers=3' in options and 'noacl' in options, options
    # Mounted from its own address: its NFS connection comes from the address reserved for it.
    assert ('%s:' % ip) in lab.ssh('pi-06', 'ss -Htn state established dst 10.99.0.2:2049')
    # Its root records the generation it was built from: the second (the demo's day two upgraded it to the second,
    # then to the third, the bakeform's current one, whose kernel panics: the upgrade rolled it back to the second).
    # This boot is that rollback's: running with no failed unit, its root and boot files B's.
    store, current = labdemo.current_generation(lab.lab, 'realpi-trixie')
    generation = json.loads(lab.bakery('cat %s/%s.json' % (labdemo.ROOTS, serial)))['generation']
    assert (generation, current) == (2, 3)
    # Bug 1: the boot files, read-only over NFS (the fstab line pi_root wrote; before: access denied), those
    # of its own generation.
    source, fstype, options = mount_of(lab, 'pi-06', '/boot/firmware')
    assert (source, fstype) == ('10.99.0.2:%s' % store.boot_export(generation), 'nfs') and 'ro' in options, source
    assert 'kernel=vmlinuz-' in lab.ssh('pi-06', 'cat /boot/firmware/config.txt')
    assert 'Read-only file system' in lab.ssh('pi-06', 'touch /boot/firmware/x', check=False).stderr
    # NFSACL: systemd-tmpfiles' "Setting access ACL ... Input/output error" is gone with noacl.
    journal = lab.ssh('pi-06', 'journalctl -b --no-pager -o cat')
    assert 'access ACL' not in journal and 'Input/output error' not in journal, [
        line for line in journal.splitlines() if 'ACL' in line or 'Input/output' in line]
    # Identity of its own: neither the golden image's host key nor its machine-id.
    # The golden root is the image's own root partition, never mounted: read its key with debugfs.
    golden = lab.bakery('debugfs -R "cat /etc/ssh/ssh_host_ed25519_key.pub" %s'
                        % store.root_image(generation)).split()[1]
    own = lab.ssh('pi-06', 'cat /etc/ssh/ssh_host_ed25519_key.pub').split()[1]
    assert own != golden and own in (lab.state / 'known_hosts-pi-06').read_text()
    machine_id = lab.ssh('pi-06', 'cat /etc/machine-id')
    assert machine_id != realimage.GOLDEN_MACHINE_ID and re.fullmatch(r'[0-9a-f]{32}', machine_id)
    assert machine_id == lab.bakery('cat /srv/pifleet/roots/mnt/%s/etc/machine-id' % serial)  # the same across boots
    # The Raspberry Pi OS pieces: no SD-card lines, no first-boot resize, no swap file, eth0 the kernel's.
    fstab = lab.ssh('pi-06', 'cat /etc/fstab')
    assert 'PARTUUID=' not in fstab and '/boot/firmware nfs ro' in fstab
    assert lab.ssh('pi-06', 'swapon --show --noheadings') == ''
    assert lab.ssh('pi-06', 'systemctl is-enabled dphys-swapfile', check=False).stdout.strip() == 'masked'
    assert lab.ssh('pi-06', 'ls /etc/rc3.d/', check=False).stdout.count('resize2fs_once') == 0
    assert 'valid_lft forever' in lab.ssh('pi-06', 'ip -4 addr show dev eth0')  # the kernel's, no DHCP client's
    TIMINGS['pi-06 console log'] = str(vm.log)


def test_real_pi_provisions_with_cloud_init_from_its_own_seed(lab):
    serial = lab.pis['pi-06']['root_key']
    check_running(lab, 'pi-06')
    status = lab.ssh('pi-06', 'timeout 120 cloud-init status --wait', check=False)
    assert status.stdout.split() == ['status:', 'done'], (status.stdout, status.stderr)
    data = json.loads(lab.ssh('pi-06', 'cat /run/cloud-init/instance-data.json'))
    assert data['v1']['instance_id'] == 'pifleet-%s' % serial and data['v1']['local_hostname'] == 'pi-06'
    assert data['v1']['platform'] == 'nocloud'
    assert lab.ssh('pi-06', 'hostname') == 'pi-06'
    assert lab.ssh('pi-06', 'cat /root/.ssh/authorized_keys').split()[1] in Path(
        lab.lab['ssh_key'] + '.pub').read_text()
    # Its host keys are the ones pi_root made (ed25519 and ecdsa), each with its certificate: none made by cloud-init
    # (whose default adds an RSA key the bakery never saw nor signed).
    assert sorted(lab.ssh('pi-06', 'cd /etc/ssh && ls ssh_host_*').split()) == [
        'ssh_host_ecdsa_key', 'ssh_host_ecdsa_key-cert.pub', 'ssh_host_ecdsa_key.pub',
        'ssh_host_ed25519_key', 'ssh_host_ed25519_key-cert.pub', 'ssh_host_ed25519_key.pub']
    # The root's NIC: the kernel's address, unmanaged by NetworkManager, and no cloud-init network config.
    assert 'valid_lft forever' in lab.ssh('pi-06', 'ip -4 addr show dev eth0')
    assert 'eth0:unmanaged' in lab.ssh('pi-06', 'nmcli -t -f DEVICE,STATE device').splitlines()
    assert lab.ssh('pi-06', 'ls /etc/netplan/', check=False).stdout.count('cloud-init') == 0
    source, fstype, _options = mount_of(lab, 'pi-06', '/')
    assert (source, fstype) == ('10.99.0.2:/srv/pifleet/roots/mnt/%s' % serial, 'nfs')
    # netplan's default renderer is systemd-networkd: a netplan config for the NIC (in /run, outside the root)
    # and networkd started, as on images that use them. pi_root's .network file comes first: networkd leaves
    # the NIC alone, and the root stays reachable. Then networkd stops and the config goes, as before.
    networkd = lab.ssh('pi-06', NETPLAN_NETWORKD, check=False)  # without the file: 'eth0 configured'
    assert networkd.stdout.split()[-2:] == ['eth0', 'unmanaged'], (networkd.stdout, networkd.stderr)
    assert 'valid_lft forever' in lab.ssh('pi-06', 'ip -4 addr show dev eth0')
    assert lab.ssh('pi-06', 'cat /etc/hostname') == 'pi-06'  # read from the NFS root after networkd ran


# What netplan generates for a DHCP NIC (10-netplan-eth0.network) matches eth0 too; networkctl says who has it.
NETPLAN_NETWORKD = '''set -e
mkdir -p /run/netplan && printf 'network:\\n  version: 2\\n  ethernets:\\n    eth0:\\n      dhcp4: true\\n' \\
  > /run/netplan/90-lab.yaml && chmod 600 /run/netplan/90-lab.yaml && netplan generate
ls /run/systemd/network/ >&2
systemctl start systemd-networkd && sleep 3
state=$(networkctl list --no-legend --no-pager eth0 | awk '{print $2, $5}')
systemctl stop systemd-networkd.socket systemd-networkd && rm /run/netplan/90-lab.yaml && netplan generate
echo "$state"'''


# Day two goes on from the demo's (lab/daytwo.py: A -> B with the upgrade playbook, then B -> C, whose initramfs
# panics (lab/realgen.py), rolled back to B by the upgrade) on the same lab and the same real Pi: D a capture of the
# Pi itself.
BAKEFORM = 'realpi-trixie'


def marker(lab, name):
    return json.loads(lab.bakery('cat %s/%s.json' % (labdemo.ROOTS, lab.pis[name]['root_key'])))


def check_trusted(lab, name, tmp_path):
    """ansible reaches the Pi with strict host-key checking and the fleet known_hosts alone; the control: with a
    known_hosts that lacks the bakery's CA line the same ping is refused."""
    daytwo.pong(lab.state, NAME, name)
    assert '@cert-authority' in (lab.state / 'known_hosts').read_text()
    (tmp_path / 'empty').write_text('')
    proc = daytwo.ping(lab.state, NAME, name, tmp_path / 'empty')
    assert proc.returncode != 0 and 'Host key verification failed' in proc.stdout + proc.stderr, proc.stdout


def upgrade(lab, name, timeout):
    run = daytwo.upgrade(lab.lab, lab.state, lab.pis[name], lab.vms[name], timeout, '-e',
                         'upgrade_bakeform=%s' % BAKEFORM, lab_name=NAME, show=print)
    TIMINGS['upgrade of %s, timeout %d s (%d boots)' % (name, timeout, len(run.boots))] = round(run.seconds, 1)
    return run


def test_apt_cannot_change_the_kernel_of_a_root(lab):
    """The kernel hold (docs/kernels.md) on the real Pi, back on B after the demo's rollback: apt refuses another
    kernel package (Debian 13's, A's) before dpkg runs, so the root keeps only the modules of the kernel its bakery
    serves; the next boot of this root (a capture of it, below) runs with matching modules."""
    name = 'pi-06'
    deb = sorted((realimage.CACHE / 'debs' / 'trixie').glob('linux-image-6.*-arm64_*_arm64.deb'))[-1]
    inside = labdemo.put_image(lab.lab, deb, deb.name)
    lab.bakery('cp %s %s/mnt/%s/var/tmp/' % (inside, labdemo.ROOTS, lab.pis[name]['root_key']))
    proc = lab.ssh(name, 'apt-get install -y --no-install-recommends /var/tmp/%s' % deb.name,
                   check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0, said[-3000:]
    assert 'served by its bakery' in said or 'no installation candidate' in said, said[-3000:]
    assert lab.ssh(name, 'ls /lib/modules').split() == [realimage.cached('trixie-kernel')['uname']]
    assert lab.ssh(name, 'dpkg-query -W -f "${Status}" %s' % deb.name.split('_')[0], check=False).stdout.strip() in (
        '', 'unknown ok not-installed')
    lab.ssh(name, 'rm -f /var/tmp/%s' % deb.name)


def roots_mounted(lab, pis):
    """Each Pi's root is a loop-mounted file system of its own inside the bakery (nosuid, nodev)."""
    points = ['%s/mnt/%s' % (labdemo.ROOTS, pi['root_key']) for pi in pis]
    found = {fs['target']: fs for fs in json.loads(lab.bakery(
        'findmnt --json --list --output TARGET,SOURCE,OPTIONS') or '{}').get('filesystems', [])}
    missing = [p for p in points if p not in found or 'nosuid' not in found[p]['options']]
    assert not missing, 'after the reboot these roots are not mounted nosuid from their images: %s' % missing
    return found


def reboot_bakery(lab, name):
    """The bakery container powered off and booted again, the real Pi off meanwhile: each root's mount unit mounts
    it, the boot files of the real Pi's generation are mounted again for their NFS export, and every simulated Pi
    boots again. The real Pi boots from the rebooted bakery in the caller (the capture's upgrade): one real boot
    less (some 100 s under TCG) than booting it here and again there."""
    pis = labdemo.lab_pis()
    lab.power_off(name)
    started = time.monotonic()
    lab.lab = nspawnlab.reboot(lab.state)
    TIMINGS['bakery reboot'] = round(time.monotonic() - started, 1)
    found = roots_mounted(lab, pis)
    store, _current = labdemo.current_generation(lab.lab, BAKEFORM)
    boot_export = store.boot_export(marker(lab, name)['generation'])
    assert boot_export in found, 'after the reboot %s (the boot files of %s) is not mounted' % (boot_export, name)
    fleet_map = json.loads(Path(labdemo.outside(lab.lab, '/var/lib/pifleet/tftp/map.json')).read_text())
    for pi in pis:
        if pi['boot'] == 'simulator':
            print(labdemo.boot_pi(lab.lab, pi, fleet_map))


def test_a_capture_of_the_pi_boots_it_without_its_identity_after_a_bakery_reboot(lab, tmp_path):
    """The capture playbook makes generation D of the running Pi's root with its identity taken out. Then the bakery
    reboots (reboot_bakery). Upgraded to D, the Pi boots it from the rebooted bakery, with its own identity (the
    bakery keeps it) and B's kernel (a capture has its source's boot files)."""
    name = 'pi-06'
    own_key = lab.ssh(name, 'cat /etc/ssh/ssh_host_ed25519_key.pub').split()[1]
    machine_id = lab.ssh(name, 'cat /etc/machine-id')
    labdemo.playbook(lab.state, 'capture', '-e', 'capture_target=%s' % name, lab_name=NAME)
    store, d = labdemo.current_generation(lab.lab, BAKEFORM)
    image = store.root_image(d)  # made by the bakery from its own frozen clone: debugfs reads it
    listing = lab.bakery('debugfs -R "ls -l /etc/ssh" %s' % image)
    assert 'sshd_config' in listing and 'ssh_host_' not in listing, listing
    captured_id = lab.bakery('debugfs -R "cat /etc/machine-id" %s' % image)
    assert machine_id not in captured_id and captured_id.strip() in ('', 'uninitialized'), captured_id

    def names(directory):  # debugfs lists "inode (record length) name"
        return re.findall(r'\(\d+\)\s+(\S+)', lab.bakery('debugfs -R "ls %s" %s' % (directory, image)))

    # cloud-init's instance data: no ``instance`` link, nothing under ``instances``
    cloud = names('/var/lib/cloud')
    assert 'instance' not in cloud, cloud
    if 'instances' in cloud:
        assert set(names('/var/lib/cloud/instances')) <= {'.', '..'}
    assert name not in lab.bakery('debugfs -R "cat /etc/hostname" %s' % image)
    reboot_bakery(lab, name)
    run = upgrade(lab, name, daytwo.WAIT)
    assert run.rc == 0 and run.boots == [None], run.output[-4000:]
    check_running(lab, name)
    assert marker(lab, name)['generation'] == d
    assert mount_of(lab, name, '/boot/firmware')[0] == '10.99.0.2:%s' % store.boot_export(d)
    assert 'kernel=vmlinuz-' in lab.ssh(name, 'cat /boot/firmware/config.txt')
    assert lab.ssh(name, 'hostname') == name and lab.ssh(name, 'cat /etc/machine-id') == machine_id
    assert lab.ssh(name, 'cat /etc/ssh/ssh_host_ed25519_key.pub').split()[1] == own_key
    assert lab.ssh(name, 'cat /root/mine') == 'mine'  # what the admin set up on the Pi is in the capture
    daytwo.show_kernel(lab.lab, lab.state, lab.pis[name], realimage.cached('trixie-kernel'), print,
                       vpi=lab.vms[name])
    check_trusted(lab, name, tmp_path)


def test_fleet_again_changes_nothing_and_outsiders_stay_out(lab):
    """The roots after their Pis booted, wrote logs and a reimage: the fleet role still has nothing to do."""
    counters = labdemo.playbook(lab.state, 'site', '--tags', 'fleet', lab_name=NAME)
    assert counters['changed'] == 0, counters
    outsider = lab.lab['namespaces']['outsider']
    store, current = labdemo.current_generation(lab.lab, 'realpi-trixie')
    for path in ('%s/mnt/%s' % (labdemo.ROOTS, lab.pis['pi-06']['root_key']), store.boot_export(current)):
        proc = subprocess.run(['ip', 'netns', 'exec', outsider, 'nfs-ls', 'nfs://10.99.0.2%s' % path],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode != 0, (path, proc.stdout)


def test_every_boot_of_the_lab_has_a_timeline(lab, tmp_path):
    """status from what the lab's bakery saw: the real Pi runs (its SSH server answers with its root's key, checked
    against the marker when the marker records keys), the simulated Pis got as far as a simulator can (their root
    listed over NFS; nothing of theirs answers SSH), each with the DHCP answer and the boot set of its last boot."""
    rc, output = labdemo.playbook(lab.state, 'status', '-e', 'status_format=json', '-e',
                                  'status_file=%s' % (tmp_path / 'status.json'), lab_name=NAME, check=False)
    assert rc == 0, output[-4000:]
    pis = {pi['name']: pi for pi in json.loads((tmp_path / 'status.json').read_text())['pis']}
    serial = lab.pis['pi-06']['root_key']
    marker = json.loads(lab.bakery('cat /srv/pifleet/roots/%s.json' % serial))
    real = pis['pi-06']
    assert real['boot']['state'] == 'running' and real['stage'] == 'running', real['boot']
    assert real['up'] == ('yes' if marker.get('host_keys') else 'unverified'), real
    assert real['boot']['tftp']['kernel'].startswith('vmlinuz-') and real['boot']['tftp']['errors'] == 0
    assert real['boot']['times']['nfs_last'] is not None  # NFS-Ganesha saw its root in use
    if real['boot']['times']['running']:  # the boot watcher (tftp_hook_watch) saw it come up
        assert real['boot']['seconds']['to_running'] > 0
    TIMINGS['pi-06 timeline'] = real['boot']['seconds']
    group = yaml.safe_load((REPO / 'inventories/lab/hosts.yml').read_text())['pis']
    for name, facts in group['hosts'].items():
        if facts.get('lab_boot') == 'qemu':
            continue
        boot = pis[name]['boot']
        # The simulator fetches its boot set and lists its root over NFS: the furthest a simulated Pi gets.
        assert boot['stage'] == 'nfs' and boot['state'] in ('booting', 'stalled'), (name, boot)
        assert boot['dhcp']['answers'] >= 1 and boot['dhcp']['mac'] == facts['pi_mac'], (name, boot['dhcp'])
        assert boot['tftp']['kernel'] and boot['seconds']['dhcp_to_tftp'] < 10, (name, boot)
        assert pis[name]['root']['usage']['size'] > 0, pis[name]['root']
    table = status_rows(labdemo.playbook(lab.state, 'status', lab_name=NAME, check=False)[1])
    assert table['pi-06']['STAGE'] == 'running', table['pi-06']
