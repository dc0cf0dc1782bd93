# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Day two on the lab's real Pi: new generations, the upgrade and rollback playbooks, checked from the inside.

``make demo`` (lab/demo.py) ends with :func:`day_two`: generation B of the real Pi's bakeform (the same
root with Debian 12's kernel and its modules in place of its own, lab/realgen.py) is registered with
the bakeforms playbook while the Pi's first boot goes on (:func:`next_generation`) and the upgrade playbook
moves the Pi to it; then generation C (A's root whose initramfs makes the kernel panic) is registered and
the upgrade playbook moves the Pi to it: C never comes up, so the playbook rolls the Pi back to B on its
own (root, boot folder, boot export), power-cycles it and waits for it, and fails naming it. Each boot is
real (lab/powerswitch.py plays the Pi's power switch). After each boot the demo shows what runs, seen
from the inside (``uname -r``, the root's module directories, a module loaded from the NFS root), and
that ``ansible <pi> -m ping`` succeeds with strict host-key checking against the fleet's known_hosts
alone (the bakery's ``@cert-authority`` line that site wrote); tests/integration/test_labdemo.py goes
on from there (the kernel hold, a capture). The rollback playbook on its own, which shares the
rollback's steps with the upgrade, is proven with simulated Pis (tests/integration/test_upgrade.py):
here it would cost one more real boot.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from lab import demo, powerswitch

WAIT = 400  # seconds a Pi has to come back (a first boot under TCG with cloud-init takes 80-190 s here)
# Seconds the upgrade waits for C, which never comes up (its kernel panics some 10 s after power-on, once U-Boot
# fetched C's files): the rolled-back root has WAIT.
PANIC_WAIT = 25
# What makes a Pi itself, read from the inside before and after each upgrade: it must not change.
IDENTITY = 'cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub'


def register(lab, state, bakeform, image, label, *, lab_name, echo=None):
    """``image`` (a realimage description) put on the bakery and registered under ``bakeform`` with the bakeforms
    playbook, only it declared: the bakeform's next generation, and its current one. Its number."""
    inside = demo.put_image(lab, image['path'], '%s-%s.img' % (bakeform, label))
    declared = {'pifleet_bakeforms': [{'name': bakeform, 'src': inside, 'keep': 5}]}
    demo.playbook(state, 'bakeforms', '-e', json.dumps(declared), lab_name=lab_name, echo=echo)
    return demo.current_generation(lab, bakeform)[1]


def next_generation(lab, state, pi, image, *, lab_name, echo):
    """Generation B (``image``) registered for the Pi's bakeform; its number. The demo does it while the Pi's
    first boot goes on: site moves no Pi to a new generation, upgrade does."""
    bakeform = pi['bakeform']
    nxt = register(lab, state, bakeform, image, 'b', lab_name=lab_name, echo=echo)
    echo('demo: %s@%d registered: %s, kernel %s; current (site moves no Pi to it: upgrade does)' % (
        bakeform, nxt, image['pretty'], image['uname']))
    return nxt


def ping(state, lab_name, name, known_hosts=None):
    """``ansible <name> -m ping`` with the lab inventory: root over ssh with StrictHostKeyChecking=yes against
    pifleet_known_hosts alone (inventories/lab/group_vars/pis.yml); ``known_hosts`` replaces that file."""
    argv = [str(Path(sys.executable).parent / 'ansible'), '-i', str(demo.INVENTORY), name, '-m', 'ansible.builtin.ping']
    argv += ['-e', 'pifleet_known_hosts=%s' % known_hosts] if known_hosts else []
    # A new ssh connection each time (no ControlPersist master to reuse): the host key is checked on every ping.
    env = dict(demo.ansible_env(state, lab_name), ANSIBLE_SSH_ARGS='-C -o ControlMaster=no')
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False, stdin=subprocess.DEVNULL,
                          env=env, cwd=demo.REPO)


def pong(state, lab_name, name):
    proc = ping(state, lab_name, name)
    if proc.returncode != 0 or '"ping": "pong"' not in proc.stdout:
        raise demo.DemoError('ansible %s -m ping with strict host-key checking failed (rc %d): %s'
                             % (name, proc.returncode, (proc.stdout + proc.stderr)[-2000:]))
    return 'ansible %s -m ping (StrictHostKeyChecking=yes, known_hosts: the bakery\'s CA line): pong' % name


def kernel(lab, state, pi, vpi):
    """What runs, from the inside: ``uname``, the module directories of the root, and ``dummy`` (a driver no
    initramfs holds) loaded from the NFS root with its vermagic, and where each loaded module came from."""
    def ssh(command):
        return vpi.ssh(lab['ssh_key'], Path(state) / ('known_hosts-%s' % pi['name']), command).stdout.strip()
    ssh('modprobe dummy')
    return {'uname': ssh('uname -r'), 'modules_dirs': ssh('ls /lib/modules').split(),
            'dummy': ssh('grep -c "^dummy " /proc/modules'), 'vermagic': ssh('modinfo -F vermagic dummy').split()[0],
            'loaded_from': sorted({path.rsplit('/kernel/', 1)[0] for path in ssh(
                'for m in $(cut -d" " -f1 /proc/modules); do modinfo -n $m; done').split()})}


def show_kernel(lab, state, pi, image, show, *, vpi):
    """The kernel facts of a Pi (its VirtualPi ``vpi``) that should run ``image``: shown, or DemoError."""
    facts = kernel(lab, state, pi, vpi)
    show('%s: uname -r %s; /lib/modules holds %s; dummy loaded from the NFS root (vermagic %s); loaded modules '
         'from %s' % (pi['name'], facts['uname'], ', '.join(facts['modules_dirs']), facts['vermagic'],
                      ', '.join(facts['loaded_from'])))
    wanted = image['uname']
    if (facts['uname'], facts['modules_dirs'], facts['vermagic'], facts['loaded_from']) != (
            wanted, [wanted], wanted, ['/lib/modules/%s' % wanted]) or facts['dummy'] != '1':
        raise demo.DemoError('%s should run %s with its modules: %s' % (pi['name'], wanted, facts))
    return facts


def switched(lab, state, pi, vpi, name, *extra, lab_name, show):
    """pifleet.netboot.<name> on the lab inventory with the Pi's power switch played (lab/powerswitch.py)."""

    def cycle():
        vpi.power_off()
        show('%s: powered off and on' % pi['name'])
        demo.real_boot(lab, pi, state, vpi, show=show)
    return powerswitch.run(demo.playbook_argv(name, *extra), demo.ansible_env(state, lab_name), cycle, show=show)


def upgrade(lab, state, pi, vpi, timeout, *extra, lab_name, show):
    """pifleet.netboot.upgrade of the Pi alone (one wave) with ``timeout`` for its new generation to come up."""
    return switched(lab, state, pi, vpi, 'upgrade', '-e', 'upgrade_target=%s' % pi['name'], '-e', 'upgrade_waves=1',
                    '-e', 'upgrade_timeout=%d' % timeout, *extra, lab_name=lab_name, show=show)


def day_two(lab, state, pi, vpi, images, *, generation, lab_name, show):
    """The demo's last real-Pi step: upgrade to generation B (``generation``, its number from next_generation),
    then to C (``images['C']``, whose kernel panics), which the playbook rolls back to B on its own; DemoError on
    a fault."""
    bakeform, nxt = pi['bakeform'], generation
    show('%s: a file written on the Pi before the upgrade: /root/stray' % pi['name'])
    known = Path(state) / ('known_hosts-%s' % pi['name'])
    before = vpi.ssh(lab['ssh_key'], known, IDENTITY).stdout
    vpi.ssh(lab['ssh_key'], known, 'echo stray > /root/stray && sync')
    show(pong(state, lab_name, pi['name']))
    run = upgrade(lab, state, pi, vpi, WAIT, lab_name=lab_name, show=show)
    if run.rc != 0 or run.boots != [None]:
        raise demo.DemoError('the upgrade of %s failed (rc %d, boots %s): %s' % (
            pi['name'], run.rc, run.boots, run.output[-3000:]))
    show('%s: upgraded to %s@%d in %.0f s (the wait for its SSH host key included)' % (
        pi['name'], bakeform, nxt, run.seconds))
    show_kernel(lab, state, pi, images['B'], show, vpi=vpi)
    stray = vpi.ssh(lab['ssh_key'], known, 'test -e /root/stray', check=False).returncode
    kept = vpi.ssh(lab['ssh_key'], known, IDENTITY).stdout == before
    show('%s: /root/stray is %s; machine-id and host key %s; %s' % (
        pi['name'], 'gone (a fresh root from the new generation)' if stray else 'STILL THERE',
        'kept' if kept else 'CHANGED', pong(state, lab_name, pi['name'])))
    if not stray or not kept:
        raise demo.DemoError('the upgraded root of %s %s' % (
            pi['name'], 'still holds /root/stray' if not stray else 'has another machine-id or host key'))
    broken_upgrade(lab, state, pi, vpi, images, current=nxt, identity=before, lab_name=lab_name, show=show)


def broken_upgrade(lab, state, pi, vpi, images, *, current, identity, lab_name, show):
    """Generation C registered, the upgrade to it: C's kernel panics, the Pi is not back within PANIC_WAIT, so the
    playbook rolls it back to ``current`` (its own root as it was, its ``identity`` kept), power-cycles it, and
    fails naming it."""
    bakeform = pi['bakeform']
    known = Path(state) / ('known_hosts-%s' % pi['name'])
    vpi.ssh(lab['ssh_key'], known, 'echo mine > /root/mine && sync')
    show('%s: a file written on the Pi before the next upgrade: /root/mine' % pi['name'])
    broken = register(lab, state, bakeform, images['C'], 'c', lab_name=lab_name)
    show('%s@%d registered: %s; current' % (bakeform, broken, images['C']['pretty']))
    run = upgrade(lab, state, pi, vpi, PANIC_WAIT, '-e', 'upgrade_rollback_timeout=%d' % WAIT, lab_name=lab_name,
                  show=show)
    report = re.search(r'%s \(serial \S+\): it did not come back on %s@%d within the timeout .*?power-cycled: it '
                       r'is back up' % (re.escape(pi['name']), re.escape(bakeform), broken), run.output)
    if (run.rc == 0 or len(run.boots) != 2 or run.boots[1] is not None or 'Kernel panic' not in str(run.boots[0])
            or not report):
        raise demo.DemoError('the upgrade of %s to %s@%d, whose kernel panics, should fail and roll the Pi back on its '
                             'own (rc %d, boots %s): %s' % (pi['name'], bakeform, broken, run.rc, run.boots,
                                                            run.output[-3000:]))
    show('%s: the upgrade to %s@%d failed as it must (its kernel panicked) and rolled the Pi back in %.0f s; its '
         'report: %s' % (pi['name'], bakeform, broken, run.seconds, report.group(0)))
    mine = vpi.ssh(lab['ssh_key'], known, 'cat /root/mine', check=False).stdout.strip()
    if mine != 'mine' or vpi.ssh(lab['ssh_key'], known, IDENTITY).stdout != identity:
        raise demo.DemoError('%s was rolled back, but not onto its own root as it was (/root/mine: %r, or another '
                             'machine-id or host key)' % (pi['name'], mine))
    show('%s: rolled back to %s@%d on its own (its own root as it was: /root/mine is there, machine-id and host key '
         'kept)' % (pi['name'], bakeform, current))
    show_kernel(lab, state, pi, images['B'], show, vpi=vpi)
    show(pong(state, lab_name, pi['name']))
