# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo`: the main job on the built-in lab, from nothing to booting Pis and back.

    python3 -m lab.demo [--keep] [--state DIR] [--name NAME]

1. the images: the cached Debian 12 image of the bakery container (debootstrap the first time:
   about a minute), and in the background the real arm64 image of today's Raspberry Pi OS flavour,
   Trixie-like with cloud-init, that the real Pi boots (lab/realimage.py: mmdebstrap the first time,
   six to eight minutes on two cores; then cached in /var/cache/pifleet/realimage); only the real
   images that the lab inventory's bakeforms name are built, and the steps up to 5 run while they are;
2. a sample Raspberry Pi OS-like image for models 3, 4 and 5 (lab/piimage.py), for the simulated Pis;
3. the lab LAN (nspawnlab ``pflab``, 10.99.0.0/24): a home router whose DHCP reserves each Pi's
   ``pi_ip`` for its ``pi_mac`` (both read from inventories/lab), the bakery container, one namespace
   per simulated Pi and an outsider; the sample image goes onto the bakery's data disk;
4. the boot services: ``pifleet.netboot.site --tags services`` over ssh into the container;
5. the fleet: with the real images cached (a warm run), ``site --tags fleet`` for every Pi at once;
   else for the simulated Pis alone (a group of them and their bakeform), while the real image
   builds; each simulated Pi boots through the simulator in its namespace: PXE DHCP (the router's
   lease, the bakery's "Raspberry Pi Boot" answer), its TFTP boot set checked byte for byte against
   the files the role wrote (its own cmdline.txt), its NFS root listed from its own address; the
   outsider is refused;
6. (only when step 5 had the simulated Pis alone) the real images onto the bakery's data disk once
   built, then the whole fleet: ``site --tags fleet`` (the real Pi and its bakeform join);
7. the whole ``site`` once more, which must report changed=0; then one real boot (the first Pi with
   ``lab_boot: qemu``): qemu with U-Boot as its firmware takes the router's lease, fetches
   config.txt, cmdline.txt, the kernel and the initramfs from the hook under its prefix, boots the
   kernel with its cmdline.txt, mounts its root and its generation's boot files from the bakery;
   its login prompt and ``ssh <pi> hostname`` are printed, with the time of each phase
   (lab/qemupi.py). Meanwhile the bakery registers day two's next generation (lab/daytwo.py);
8. day two on the real Pi: the upgrade playbook to that generation, then to a generation whose kernel
   panics, which the upgrade rolls back to the one before on its own, the demo playing its power switch
   (lab/daytwo.py); with --keep the Pi stays on;
9. ``pifleet.netboot.status``: the table per Pi, boot events included;
10. the lab is taken down (unless --keep; ``nspawnlab.py down --state DIR`` does it later); the time
    of each step is printed at the end.

A reboot of the bakery (every root mounted again by its unit, every Pi boots again) is checked by
tests/integration/test_labdemo.py on the lab the demo leaves, not here: it doubled the demo's time.

Root only (namespaces, the container, NFS-Ganesha, qemu). Exits non-zero when any step fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lab import REPO, ensure_importable, nspawnlab, pisim, qemupi, realimage
from lab.piimage import build_image

ensure_importable()
from ansible_collections.pifleet.netboot.plugins.module_utils.store import generations  # noqa: E402

INVENTORY = REPO / 'inventories' / 'lab'
NAME, SUBNET = 'pflab', '10.99.0'
IMAGES_INSIDE = '/srv/pifleet/images'  # inventories/lab/group_vars/bakery.yml names the images there
IMAGE_NAME = 'raspios-sample.img.xz'
STORE, ROOTS = '/srv/pifleet/bakeforms', '/srv/pifleet/roots'  # the fleet role's defaults, inside the bakery
SIMULATED = 'lab_simulated'  # the group of the simulated Pis that lab/demo.py's first fleet run plans alone
# Bakeforms a lab inventory may name that are made from real images, and the realimage.py image of each:
# the demo builds those its inventory uses, no more.
REAL_IMAGES = {'realpi-trixie': 'trixie', 'realpi-bookworm': 'bookworm'}
# Day two's next generation (lab/daytwo.py): the real image's root with Debian 12's kernel and its modules; and the
# broken one after it: the real image's root whose initramfs makes the kernel panic.
NEXT, NEXT_IMAGE = 'day two', 'trixie-kernel'
BROKEN, BROKEN_IMAGE = 'day two, broken', 'trixie-panic'
STARTED = time.monotonic()


class DemoError(Exception):
    pass


PHASES_SEEN = []  # (step text, seconds since the start) for the summary at the end


def step(number, total, text):
    PHASES_SEEN.append((text, time.monotonic() - STARTED))
    print('\n=== [%d/%d %5.0fs] %s' % (number, total, time.monotonic() - STARTED, text), flush=True)


def summary():
    """Each step's time, for the README's table and for whoever waits."""
    ends = [start for _text, start in PHASES_SEEN[1:]] + [time.monotonic() - STARTED]
    for (text, start), end in zip(PHASES_SEEN, ends):
        say('%6.0f s  %s' % (end - start, text.split(' (')[0].split(':')[0]))


def say(text):
    print('demo: ' + text, flush=True)


def lab_pis(inventory=INVENTORY / 'hosts.yml'):
    """The Pis of the lab inventory in order, with the facts the lab, the simulator and qemu need."""
    group = yaml.safe_load(inventory.read_text())['pis']
    pis = group['hosts']
    out = []
    for index, (name, own) in enumerate(pis.items(), start=1):
        facts = dict(group.get('vars') or {}, **own)
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
                    'folder': pisim.tftp_prefix(prefix, serial, mac), 'root_key': serial,
                    'bakeform': facts['pi_bakeform'], 'boot': facts.get('lab_boot', 'simulator')})
    return out


def ansible_env(state, name=NAME):
    ensure_importable()  # the collection symlink, ANSIBLE_COLLECTIONS_PATH and PYTHONPATH
    return dict(os.environ, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH='false', ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0',
                ANSIBLE_PIPELINING='true', ANSIBLE_LOCALHOST_WARNING='false', PIFLEET_LAB_STATE=str(state),
                PIFLEET_LAB_NAME=name)


def playbook_argv(name, *extra):
    """ansible-playbook pifleet.netboot.<name> on the lab inventory."""
    return [str(Path(sys.executable).parent / 'ansible-playbook'), '-i', str(INVENTORY), 'pifleet.netboot.%s' % name,
            *extra]


def playbook(state, name, *extra, lab_name=NAME, check=True, echo=None):
    """Run pifleet.netboot.<name> on the lab inventory, output streamed (to ``echo``, a function of one line,
    when given); the bakery's recap counters (with ``check=False``: the return code and the whole output instead)."""
    echo = echo or (lambda line: print(line, flush=True))
    argv = playbook_argv(name, *extra)
    echo('demo: $ ' + ' '.join(argv[1:]))
    lines = []
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=ansible_env(state, lab_name), cwd=REPO) as proc:
        for line in proc.stdout:
            lines.append(line)
            echo('  ' + line.rstrip())
    if not check:
        return proc.returncode, ''.join(lines)
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
    argv = ['ip', 'netns', 'exec', lab['namespaces'][pi['host']], sys.executable, '-m', 'lab.pisim', 'boot',
            '--model', str(pi['model']), '--serial', pi['serial'], '--mac', pi['mac'], '--prefix', pi['prefix'],
            '--dhcp', 'eth0', '--dhcp-until-answered', '--nfs', '%s:/srv/pifleet/roots/mnt/%s' % (
                bakery, pi['root_key']), '--json']
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


def current_generation(lab, bakeform):
    """``(generations.Bakeform of the name inside the bakery, its current generation)``: the index's
    ``current`` (``bakeform.json``, read through the bakery's data dirs), a generation that is all there."""
    found = generations.Bakeform(outside(lab, STORE), bakeform)
    current = (found.load_index() or {}).get('current')
    if not current or not found.is_complete(current):
        raise DemoError('bakeform %s has no complete current generation (%s: current %s; generations there: %s)'
                        % (bakeform, generations.Bakeform(STORE, bakeform).index_path, current, found.ids()))
    return generations.Bakeform(STORE, bakeform), current


def outsider_refused(lab, pi):
    url = pisim.nfs_url(lab['addresses']['bakery'], '/srv/pifleet/roots/mnt/%s' % pi['root_key'])
    proc = subprocess.run(['ip', 'netns', 'exec', lab['namespaces']['outsider'], 'nfs-ls', url], capture_output=True,
                          text=True, timeout=60, check=False)
    if proc.returncode == 0:
        raise DemoError('the outsider %s could list %s: exports are not limited to their Pi'
                        % (lab['addresses']['outsider'], url))
    return url


def used_images(pis):
    """{bakeform: realimage name} of the real images the Pis of the inventory boot from."""
    return {pi['bakeform']: REAL_IMAGES[pi['bakeform']] for pi in pis if pi['bakeform'] in REAL_IMAGES}


def timed(function, *args):
    started = time.monotonic()
    return function(*args), time.monotonic() - started


def start_images(pool, pis):
    """The real images the inventory uses, each built (or found in the cache) in the background:
    {bakeform: future of (description, seconds)}."""
    return {bakeform: pool.submit(timed, realimage.build, name) for bakeform, name in used_images(pis).items()}


def real_images(futures):
    """The real images once built: {bakeform: description}; the wait is the demo's step of its own."""
    images = {}
    for bakeform, future in futures.items():
        info, seconds = future.result()
        images[bakeform] = info
        say('%s: %s, kernel %s, %.0f MiB (%s), ready after %.0f s' % (
            bakeform, info['pretty'], info['kernel'], info['image_bytes'] / 2 ** 20, info['path'], seconds))
    return images


def put_image(lab, source, name):
    """The image on the bakery's data disk as IMAGES_INSIDE/name: a hard link to the cache when it can be."""
    dest = Path(outside(lab, IMAGES_INSIDE)) / name
    dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        os.link(source, dest)  # bakeform only reads it
    except OSError:
        subprocess.run(['cp', '--sparse=always', str(source), str(dest)], check=True)
    return '%s/%s' % (IMAGES_INSIDE, name)


def on_bakery(lab, *command, timeout=120):
    """Run a command in the bakery container (through the lab's ssh); its stdout, DemoError when it fails."""
    proc = subprocess.run(nspawnlab.ssh_argv(lab, *command), capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise DemoError('on the bakery, %s failed (rc %d): %s' % (' '.join(command), proc.returncode, detail))
    return proc.stdout


def known_hosts(lab, pi, path):
    """A known_hosts file with the SSH host keys pi_root made for the Pi, read from its root on the bakery."""
    keys = on_bakery(lab, 'cat /srv/pifleet/roots/mnt/%s/etc/ssh/ssh_host_*_key.pub' % pi['root_key'])
    lines = ['%s %s' % (pi['ip'], ' '.join(line.split()[:2])) for line in keys.splitlines() if line.strip()]
    if not lines:
        raise DemoError('%s: no SSH host keys in its root on the bakery' % pi['name'])
    Path(path).write_text(''.join(line + '\n' for line in lines))
    return path


PHASES = {'firmware': 'U-Boot (the firmware) at its prompt', 'dhcp': 'DHCP lease', 'boot_set': 'boot set fetched',
          'kernel': 'kernel running', 'nfs_root': 'NFS root mounted, systemd starting', 'login': 'login prompt',
          'ssh': 'ssh answers with its host key'}


def virtual_pi(lab, pi, state, show=say):
    def progress(phase, seconds):
        show('%s: %-36s %5.1f s after power-on' % (pi['name'], PHASES.get(phase, phase), seconds))
    return qemupi.VirtualPi(lab, name=pi['name'], mac=pi['mac'], ip=pi['ip'], prefix=pi['folder'],
                            model=pi['model'], workdir=Path(state) / 'qemu', progress=progress)


def real_boot(lab, pi, state, vpi=None, show=say):
    """Boot a Pi for real (qemu, U-Boot, the hook, its NFS root) up to ssh; the running VirtualPi.

    Shows the boot set, the command line, the login prompt (when the console shows one before ssh answers: ssh is
    what says the Pi is up) and ``ssh <pi> hostname``; powers the Pi
    off again when anything fails.
    """
    vpi = vpi or virtual_pi(lab, pi, state, show)
    known = known_hosts(lab, pi, Path(state) / ('known_hosts-%s' % pi['name']))
    try:
        vpi.power_on()
        fetched = vpi.fetch_boot_set(lab['addresses']['bakery'])
        sizes = [('%s (%.1f MiB)' % (f, n / 2 ** 20)) if n > 2 ** 20 else ('%s (%d B)' % (f, n))
                 for f, n in fetched.items()]
        show('%s: U-Boot took the lease %s and fetched from the hook under %s/: %s' % (
            pi['name'], pi['ip'], pi['folder'], ', '.join(sizes)))
        show('%s: kernel command line: %s' % (pi['name'], vpi.bootargs))
        vpi.boot_kernel()
        login = vpi.wait_running(qemupi.ssh_ready(vpi, lab['ssh_key'], known))
        show('%s: console: %s' % (pi['name'], login or 'no login prompt (its serial getty is not up), ssh answers'))
        hostname = vpi.ssh(lab['ssh_key'], known, 'hostname').stdout.strip()
        show('$ ssh %s hostname  (root with the lab key; host key checked against its root)' % pi['name'])
        show(hostname)
    except BaseException:
        vpi.power_off()
        raise
    return vpi


def simulated_only(state, pis):
    """Extra ansible-playbook arguments that make the fleet role plan the simulated Pis alone, with their
    bakeforms only: an inventory file with a group of them, and the group and bakeforms as extra vars."""
    simulated = [pi for pi in pis if pi['boot'] == 'simulator']
    names = {pi['bakeform'] for pi in simulated}
    declared = yaml.safe_load((INVENTORY / 'group_vars' / 'bakery.yml').read_text())['pifleet_bakeforms']
    group = Path(state) / 'simulated.yml'
    group.write_text(yaml.safe_dump({SIMULATED: {'hosts': {pi['name']: {} for pi in simulated}}}))
    return ['-i', str(group), '-e', json.dumps({'pifleet_pis_group': SIMULATED,
                                                'pifleet_bakeforms': [b for b in declared if b['name'] in names]})]


def demo(state, keep, name=NAME):
    total = 10
    pis = lab_pis()
    real = [pi for pi in pis if pi['boot'] == 'qemu']
    wanted = used_images(pis)
    # The real images build in the background up to step 6 (a failed demo still waits for them to finish:
    # the next run then finds them cached).
    with concurrent.futures.ThreadPoolExecutor(max(1, len(wanted))) as pool:
        step(1, total, 'the bakery host image (Debian 12 for systemd-nspawn; built once, then cached), and in the '
             'background the real arm64 image%s %s (built once per recipe, then cached)' % (
                 's' if len(wanted) > 1 else '', ', '.join(sorted(wanted.values()))))
        building = start_images(pool, pis)
        if real:  # day two's generations, made from the real image's tree once that is built
            building[NEXT] = pool.submit(timed, realimage.build, NEXT_IMAGE)
            building[BROKEN] = pool.submit(timed, realimage.build, BROKEN_IMAGE)
        image_dir, seconds = timed(nspawnlab.image)
        say('bakery image ready after %.0f s: %s' % (seconds, image_dir))

        step(2, total, 'a sample Raspberry Pi OS-like image for models 3, 4 and 5 (the simulated Pis)')
        sample = state / IMAGE_NAME
        state.mkdir(parents=True, exist_ok=True)
        build_image(sample, models=(3, 4, 5))
        say('%s: %.1f MiB' % (sample, sample.stat().st_size / 2 ** 20))

        step(3, total, 'the lab LAN %s.0/24: router, bakery container, %d Pis, an outsider' % (SUBNET, len(pis)))
        try:
            lab = nspawnlab.up(name, SUBNET, state, pis=len(pis), image_dir=image_dir,
                               macs=[pi['mac'] for pi in pis])
            say('bakery %s (%s) is %s; the router reserves %s' % (
                lab['machine'], lab['addresses']['bakery'], lab['system_state'],
                ', '.join('%s -> %s' % (facts['mac'], facts['pinned']) for facts in lab['pis'].values())))
            for pi in real:  # qemu's NIC carries this MAC on the bridge: the namespace's twin must be silent
                subprocess.run(['ip', '-n', lab['namespaces'][pi['host']], 'link', 'set', 'eth0', 'down'], check=True)
            say('image on the bakery: %s' % put_image(lab, sample, IMAGE_NAME))
            demo_lab(lab, state, pis, building, keep=keep, name=name, total=total)
        finally:
            if keep:
                say('lab kept (--keep): ssh -F %s %s; take it down with: %s %s down --state %s'
                    % (Path(state) / 'ssh_config', '%s-bakery' % name, sys.executable, '-m lab.nspawnlab', state))
            else:
                step(10, total, 'taking the lab down')
                nspawnlab.down(state)
    summary()
    say('done in %.0f s' % (time.monotonic() - STARTED))


def demo_lab(lab, state, pis, building, *, keep, name, total):
    """Steps 4 to 9 on the lab that is up: site, the Pis boot, day two, the status table."""
    following = building.pop(NEXT, None), building.pop(BROKEN, None)
    step(4, total, 'the boot services: pifleet.netboot.site --tags services (dnsmasq, NFS-Ganesha, the TFTP hook)')
    say('boot services: changed=%d' % playbook(state, 'site', '--tags', 'services', lab_name=name)['changed'])
    images = fleet_steps(lab, state, pis, building, name=name, total=total)
    boot_steps(lab, state, [pi for pi in pis if pi['boot'] == 'qemu'], images, following, keep=keep, name=name,
               total=total)
    step(9, total, 'pifleet.netboot.status')
    playbook(state, 'status', lab_name=name)


def fleet_steps(lab, state, pis, building, *, name, total):
    """Steps 5 and 6: the fleet, the simulated Pis' boots, the real images on the bakery; {bakeform: image}.

    With the real images cached (a warm run) the whole fleet is made at once; else the simulated Pis' fleet goes
    first, while the real images build, and the whole fleet once they are there."""
    simulated = [pi for pi in pis if pi['boot'] == 'simulator']
    ready = all(future.done() for future in building.values())
    step(5, total, 'the fleet (%s); the simulated Pis boot from the bakery (DHCP -> TFTP boot set -> NFS root)' % (
        'site --tags fleet: every Pi, the real images are ready' if ready else
        'site --tags fleet for the simulated Pis alone, while the real image builds'))
    images = None
    if ready:
        images = whole_fleet(lab, state, building, name)
    else:
        counters = playbook(state, 'site', '--tags', 'fleet', *simulated_only(state, pis), lab_name=name)
        say('fleet of the simulated Pis: changed=%d' % counters['changed'])
    fleet_map = json.loads(Path(outside(lab, '/var/lib/pifleet/tftp/map.json')).read_text())
    for pi in simulated:
        say(boot_pi(lab, pi, fleet_map))
    say('the outsider %s is refused %s' % (lab['addresses']['outsider'], outsider_refused(lab, simulated[0])))
    if images is None:
        step(6, total, 'the real image onto the bakery (waiting for %s to be built), then the whole fleet: '
             'pifleet.netboot.site --tags fleet (the real Pi and its bakeform join)' % (
                 ', '.join(sorted(used_images(pis).values())) or 'none'))
        images = whole_fleet(lab, state, building, name)
    return images


def whole_fleet(lab, state, building, name):
    """The real images onto the bakery once built, then site --tags fleet for every Pi; {bakeform: image}."""
    images = real_images(building)
    say('images on the bakery: %s' % (', '.join(
        put_image(lab, info['path'], '%s.img' % bakeform) for bakeform, info in images.items()) or 'none'))
    say('fleet: changed=%d' % playbook(state, 'site', '--tags', 'fleet', lab_name=name)['changed'])
    return images


def boot_steps(lab, state, real, images, following, *, keep, name, total):
    """Steps 7 and 8: the whole site again (it must change nothing); the real Pi's first boot, while day two's next
    generation is registered on the bakery (the boot is mostly qemu's emulated CPUs; the registration's output is
    shown once the boot is done); then day two."""
    step(7, total, 'the whole site again, which must change nothing%s' % (
        '; then a real boot: %s runs a Debian arm64 kernel from what site made (qemu + U-Boot, TCG), while day '
        'two\'s next generation is registered on the bakery' % real[0]['name'] if real else ''))
    say('site again, whole: it must change nothing')
    again = playbook(state, 'site', lab_name=name)
    if again['changed'] != 0:
        raise DemoError('the second site run changed %d things; it must change nothing' % again['changed'])
    say('site again, whole: changed=0')
    if not real:
        return
    # Not beside site: the Pi's first boot rewrites files of its root (cloud-init) that site reads.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = []
        behind = pool.submit(meanwhile, lab, state, real[0], following, name=name, echo=held.append)
        vpi = None
        try:
            store, current = current_generation(lab, real[0]['bakeform'])
            say('%s: its root and boot files are generation %s, the current one (boot files exported from %s)'
                % (real[0]['name'], store.label(current), store.boot_export(current)))
            vpi = real_boot(lab, real[0], state)
        finally:
            try:
                generation = behind.result()
            except BaseException:
                if vpi is not None:
                    vpi.power_off()
                raise
            finally:
                for line in held:
                    print(line, flush=True)
    try:
        step(8, total, 'day two on %s: pifleet.netboot.upgrade to the next generation of its bakeform (another '
             'kernel and its modules), then to one whose kernel panics, which the upgrade rolls back on its own; the '
             'demo is its power switch' % real[0]['name'])
        from lab import daytwo  # noqa: PLC0415  (daytwo uses this module)
        daytwo.day_two(lab, state, real[0], vpi, {'A': images[real[0]['bakeform']], 'B': following[0].result()[0],
                                                  'C': following[1].result()[0]},
                       generation=generation, lab_name=name, show=say)
    except BaseException:
        vpi.power_off()
        raise
    if keep:  # left running for the user (and the tests); `down` stops it
        vpi.close_ssh()
        nspawnlab.add_guest(state, real[0]['name'], vpi.guest())
        say('%s stays on (--keep): ip netns exec %s ssh -i %s root@%s' % (
            real[0]['name'], lab['namespaces']['router'], lab['ssh_key'], real[0]['ip']))
    else:
        vpi.power_off()


def meanwhile(lab, state, pi, following, *, name, echo):
    """While the real Pi boots: day two's next generation (B) registered; its number."""
    nxt, seconds = following[0].result()
    echo('demo: next generation\'s image: %s, ready after %.0f s' % (nxt['path'], seconds))
    from lab import daytwo  # noqa: PLC0415  (daytwo uses this module)
    return daytwo.next_generation(lab, state, pi, nxt, lab_name=name, echo=echo)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--state', default=str(REPO / '.build' / 'lab' / 'state'),
                        help='lab state dir (keys, logs, the bakery data disk); default .build/lab/state')
    parser.add_argument('--keep', action='store_true', help='leave the lab running at the end')
    parser.add_argument('--name', default=NAME, help='lab name: its namespaces are <name>-* (default %(default)s)')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error('must run as root (network namespaces, systemd-nspawn)')
    try:
        demo(Path(args.state).resolve(), args.keep, args.name)
    except (DemoError, qemupi.BootError, RuntimeError, subprocess.SubprocessError) as exc:  # nspawnlab: RuntimeError
        print('demo: FAILED: %s' % exc, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
