# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo`: the main job on the built-in lab, from nothing to three booting virtual Pis and back.

    python3 tests/tools/labdemo.py [--keep] [--state DIR]

1. the cached Debian 12 image of the bakery (debootstrap the first time: minutes);
2. a sample Raspberry Pi OS-like image for models 3, 4 and 5 (tests/tools/piimage.py);
3. the lab LAN (nspawnlab ``pflab``, 10.99.0.0/24): a home router whose DHCP reserves each Pi's
   ``pi_ip`` for its ``pi_mac`` (both read from inventories/lab), the bakery container, one namespace
   per Pi and an outsider; the sample image goes onto the bakery's data disk;
4. ``pifleet.netboot.site`` with inventories/lab over ssh into the container, then once more, which
   must report changed=0;
5. each Pi of the inventory boots through the simulator in its namespace: PXE DHCP (the router's
   lease, the bakery's "Raspberry Pi Boot" answer), its TFTP boot set checked byte for byte against
   the files the role wrote (its own cmdline.txt), its NFS root listed from its own address; the
   outsider is refused;
6. the bakery container reboots; each Pi's root must be mounted again (its systemd mount unit) and
   every Pi boots again;
7. ``pifleet.netboot.status``: the table per Pi, boot events included;
8. the lab is taken down (unless --keep; ``nspawnlab.py down --state DIR`` does it later).

Root only (namespaces, the container, NFS-Ganesha). Exits non-zero when any step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parents[1]
sys.path.insert(0, str(TOOLS))
import nspawnlab  # noqa: E402
import pisim  # noqa: E402
from modrun import ensure_importable  # noqa: E402
from piimage import build_image  # noqa: E402

INVENTORY = REPO / 'inventories' / 'lab'
NAME, SUBNET = 'pflab', '10.99.0'
IMAGE_NAME = 'raspios-sample.img.xz'
IMAGE_INSIDE = '/srv/pifleet/images/' + IMAGE_NAME  # inventories/lab/group_vars/bakery.yml names it
STARTED = time.monotonic()


class DemoError(Exception):
    pass


def step(number, total, text):
    print('\n=== [%d/%d %5.0fs] %s' % (number, total, time.monotonic() - STARTED, text), flush=True)


def say(text):
    print('demo: ' + text, flush=True)


def lab_pis(inventory=INVENTORY / 'hosts.yml'):
    """The Pis of the lab inventory in order, with the facts the lab and the simulator need."""
    pis = yaml.safe_load(inventory.read_text())['pis']['hosts']
    out = []
    for index, (name, facts) in enumerate(pis.items(), start=1):
        serial = pisim.normalise_serial(str(facts['pi_serial']))
        mac = pisim.normalise_mac(facts['pi_mac'])
        prefix = str(facts.get('pi_tftp_prefix', 'serial'))
        reserved = nspawnlab.pi_address(SUBNET, index)
        if facts['pi_ip'] != reserved:
            raise DemoError('%s: pi_ip %s is not the address the lab router reserves for Pi number %d (%s); keep '
                            'the Pis of inventories/lab on %s and up, in order' % (
                                name, facts['pi_ip'], index, reserved, nspawnlab.pi_address(SUBNET, 1)))
        out.append({'name': name, 'model': int(facts['pi_model']), 'serial': str(facts['pi_serial']).lower(),
                    'mac': mac, 'ip': facts['pi_ip'], 'prefix': prefix, 'host': 'pi%d' % index,
                    'folder': pisim.tftp_prefix(prefix, serial, mac), 'root_key': serial})
    return out


def ansible_env(state):
    ensure_importable()  # the collection symlink, ANSIBLE_COLLECTIONS_PATH and PYTHONPATH
    return dict(os.environ, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH='false', ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0',
                ANSIBLE_PIPELINING='true', ANSIBLE_LOCALHOST_WARNING='false', PIFLEET_LAB_STATE=str(state))


def playbook(state, name, *extra):
    """Run pifleet.netboot.<name> on the lab inventory, output streamed; the bakery's recap counters."""
    argv = [str(Path(sys.executable).parent / 'ansible-playbook'), '-i', str(INVENTORY),
            'pifleet.netboot.%s' % name, *extra]
    say('$ ' + ' '.join(argv[1:]))
    lines = []
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=ansible_env(state), cwd=REPO) as proc:
        for line in proc.stdout:
            lines.append(line)
            print('  ' + line.rstrip(), flush=True)
    recap = re.search(r'^lab-bakery\s+:\s+(.*)$', ''.join(lines), re.M)
    if proc.returncode != 0 or not recap:
        raise DemoError('%s failed (rc %d); its output is above' % (name, proc.returncode))
    return {key: int(value) for key, value in re.findall(r'(\w+)=(\d+)', recap.group(1))}


def outside(lab, path):
    """The host path of a path inside the bakery's bind-mounted data dirs."""
    for inside, there in lab['data_dirs'].items():
        if path == inside or path.startswith(inside + '/'):
            return there + path[len(inside):]
    raise DemoError('%s is not on the bakery data dirs %s' % (path, sorted(lab['data_dirs'])))


def boot_pi(lab, pi, fleet_map):
    """Boot one Pi with the simulator in its namespace; a one-line summary, or DemoError."""
    entry = fleet_map['prefixes'].get(pi['folder'])
    if entry is None:
        raise DemoError('%s: the fleet map has no prefix %s' % (pi['name'], pi['folder']))
    bakery = lab['addresses']['bakery']
    argv = ['ip', 'netns', 'exec', lab['namespaces'][pi['host']], sys.executable, str(TOOLS / 'pisim.py'), 'boot',
            '--model', str(pi['model']), '--serial', pi['serial'], '--mac', pi['mac'], '--prefix', pi['prefix'],
            '--dhcp', 'eth0', '--nfs', '%s:/srv/pifleet/roots/%s' % (bakery, pi['root_key']), '--json']
    for folder in [*entry['dirs'], *fleet_map['default']]:
        argv += ['--expect-dir', outside(lab, folder)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        detail = (proc.stderr or proc.stdout)[-2000:]
        raise DemoError('%s: the simulator failed (rc %d): %s' % (pi['name'], proc.returncode, detail)) from None
    dhcp = report.get('dhcp') or {}
    got = [f for f in report.get('files', []) if f['ok'] and f['bytes']]
    bad = [f for f in report.get('files', []) if not f['ok']]
    summary = ('%s (Pi %d, %s): DHCP %s, PXE answer from %s; TFTP %d files, %.1f KiB in %.0f ms; NFS root %s'
               % (pi['name'], pi['model'], pi['mac'], dhcp.get('address'), dhcp.get('server'), len(got),
                  sum(f['bytes'] for f in got) / 1024, 1000 * sum(f['seconds'] for f in got),
                  'readable' if (report.get('nfs') or {}).get('ok') else 'NOT readable'))
    if not report.get('ok') or dhcp.get('address') != pi['ip'] or dhcp.get('server') != bakery:
        problems = [dhcp.get('error'), (report.get('nfs') or {}).get('error'), report.get('error')]
        problems += ['%s: %s' % (f['request'], f['error']) for f in bad]
        raise DemoError('%s\n  problems: %s' % (summary, '; '.join(p for p in problems if p)))
    if not any(f['request'] == '%s/cmdline.txt' % pi['folder'] for f in got):
        raise DemoError('%s: no cmdline.txt from its own folder %s' % (pi['name'], pi['folder']))
    return summary


def roots_mounted(lab, pis):
    """Each Pi's root is a loop-mounted file system of its own inside the bakery (nosuid, nodev)."""
    points = ['/srv/pifleet/roots/%s' % pi['root_key'] for pi in pis]
    proc = subprocess.run(nspawnlab.ssh_argv(lab, 'findmnt', '--json', '--output', 'TARGET,SOURCE,OPTIONS', *points),
                          capture_output=True, text=True, timeout=60, check=False)
    found = {fs['target']: fs for fs in json.loads(proc.stdout or '{}').get('filesystems', [])}
    missing = [p for p in points if p not in found or 'nosuid' not in found[p]['options']]
    if proc.returncode != 0 or missing:
        raise DemoError('after the reboot these roots are not mounted nosuid from their images: %s (%s)'
                        % (', '.join(missing), proc.stderr.strip()))
    return 'roots mounted again: ' + ', '.join('%s (%s)' % (p, found[p]['source']) for p in points)


def outsider_refused(lab, pi):
    url = pisim.nfs_url(lab['addresses']['bakery'], '/srv/pifleet/roots/%s' % pi['root_key'])
    proc = subprocess.run(['ip', 'netns', 'exec', lab['namespaces']['outsider'], 'nfs-ls', url], capture_output=True,
                          text=True, timeout=60, check=False)
    if proc.returncode == 0:
        raise DemoError('the outsider %s could list %s: exports are not limited to their Pi'
                        % (lab['addresses']['outsider'], url))
    return url


def demo(state, keep):
    total = 8
    pis = lab_pis()
    step(1, total, 'the bakery host image (Debian 12 for systemd-nspawn; built once, then cached)')
    image_dir = nspawnlab.image()

    step(2, total, 'a sample Raspberry Pi OS-like image for models 3, 4 and 5')
    sample = state / IMAGE_NAME
    state.mkdir(parents=True, exist_ok=True)
    build_image(sample, models=(3, 4, 5))
    say('%s: %.1f MiB' % (sample, sample.stat().st_size / 2 ** 20))

    step(3, total, 'the lab LAN %s.0/24: router, bakery container, %d Pis, an outsider' % (SUBNET, len(pis)))
    try:
        lab = nspawnlab.up(NAME, SUBNET, state, pis=len(pis), image_dir=image_dir, macs=[pi['mac'] for pi in pis])
        say('bakery %s (%s) is %s; the router reserves %s' % (
            lab['machine'], lab['addresses']['bakery'], lab['system_state'],
            ', '.join('%s -> %s' % (facts['mac'], facts['pinned']) for facts in lab['pis'].values())))
        images = Path(outside(lab, IMAGE_INSIDE)).parent
        images.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copyfile(sample, images / IMAGE_NAME)
        say('sample image copied to the bakery as %s' % IMAGE_INSIDE)

        step(4, total, 'pifleet.netboot.site with inventories/lab (boot services + fleet)')
        first = playbook(state, 'site')
        say('site: changed=%d' % first['changed'])
        say('site again: it must change nothing')
        again = playbook(state, 'site')
        if again['changed'] != 0:
            raise DemoError('the second site run changed %d things; it must change nothing' % again['changed'])

        step(5, total, 'the virtual Pis boot from the bakery (DHCP -> TFTP boot set -> NFS root)')
        fleet_map = json.loads(Path(outside(lab, '/var/lib/pifleet/tftp/map.json')).read_text())
        for pi in pis:
            say(boot_pi(lab, pi, fleet_map))
        say('the outsider %s is refused %s' % (lab['addresses']['outsider'], outsider_refused(lab, pis[0])))

        step(6, total, 'the bakery reboots: every Pi root is mounted again by its unit, and boots again')
        nspawnlab.reboot(state)
        say(roots_mounted(lab, pis))
        for pi in pis:
            say(boot_pi(lab, pi, fleet_map))

        step(7, total, 'pifleet.netboot.status')
        playbook(state, 'status')
    finally:
        if keep:
            say('lab kept (--keep): ssh -F %s %s; take it down with: %s %s down --state %s'
                % (Path(state) / 'ssh_config', '%s-bakery' % NAME, sys.executable, TOOLS / 'nspawnlab.py', state))
        else:
            step(8, total, 'taking the lab down')
            nspawnlab.down(state)
    say('done in %.0f s' % (time.monotonic() - STARTED))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--state', default=str(REPO / '.build' / 'lab' / 'state'),
                        help='lab state dir (keys, logs, the bakery data disk); default .build/lab/state')
    parser.add_argument('--keep', action='store_true', help='leave the lab running at the end')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error('must run as root (network namespaces, systemd-nspawn)')
    try:
        demo(Path(args.state).resolve(), args.keep)
    except (DemoError, RuntimeError, subprocess.SubprocessError) as exc:  # nspawnlab says RuntimeError
        print('demo: FAILED: %s' % exc, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
