# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a Pi leaves in its root by living in it: the identity a capture must take out, and the work it must keep.

``live_in(root, serial, hostname)`` writes into a root tree (a directory, or a mounted root image) what
pi_root gave the Pi and what the Pi then did itself: host keys and a certificate, machine-id, cloud-init's
instance data and pi_root's NoCloud seed, journal and log files, shell histories, DHCP leases, the random
seed, the fstab boot line, pifleet's sshd drop-in, root's keys as pi_root wrote them, and a user's own work.
It returns what identifies the Pi (``secrets``: strings that must be found nowhere in a capture) and what
must survive (``kept``: relative path -> content).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import points
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.roots import Layout

ROOT_KEYS = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHJvb3RrZXlvZnRoZWZsZWV0 ops@bakery\n'


def _write(root, rel, data, mode=0o644, *, uid=0, gid=0):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def live_in(root, serial, hostname, server='10.99.0.2'):
    """Make ``root`` look like the root of Pi ``serial`` after pi_root and some days of use; see the docstring."""
    tag = hashlib.sha256(serial.encode()).hexdigest()
    machine_id = tag[:32]
    key_blob = 'AAAAC3NzaC1lZDI1NTE5AAAA' + tag[:40]
    instance = 'pifleet-%s' % serial
    secrets = {'machine-id': machine_id, 'host key': key_blob, 'instance id': instance, 'hostname': hostname,
               'log line': 'sshd[812]: Accepted publickey for root from 10.99.0.9 ' + tag[40:52],
               'history': 'apt install my-lab-tools ' + tag[52:60]}
    _write(root, 'etc/hostname', hostname + '\n')
    _write(root, 'etc/hosts', '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n127.0.1.1\t%s\n' % hostname)
    _write(root, 'etc/machine-id', machine_id + '\n', 0o444)
    _write(root, 'var/lib/dbus/machine-id', machine_id + '\n')
    for kind in ('ed25519', 'ecdsa'):
        _write(root, 'etc/ssh/ssh_host_%s_key' % kind, '-----BEGIN OPENSSH PRIVATE KEY-----\n%s\n' % key_blob, 0o600)
        _write(root, 'etc/ssh/ssh_host_%s_key.pub' % kind, 'ssh-%s %s root@%s\n' % (kind, key_blob, hostname))
    _write(root, 'etc/ssh/ssh_host_ed25519_key-cert.pub', 'ssh-ed25519-cert-v01@openssh.com %s host\n' % key_blob)
    _write(root, 'etc/ssh/sshd_config.d/pifleet-host-certificate.conf',
           'HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub\n')
    _write(root, 'var/lib/cloud/instances/%s/obj.pkl' % instance, 'instance %s of %s' % (instance, hostname))
    _write(root, 'var/lib/cloud/instances/%s/sem/config_ssh' % instance, 'done')
    os.symlink('/var/lib/cloud/instances/%s' % instance, os.path.join(root, 'var/lib/cloud/instance'))
    _write(root, 'var/lib/cloud/data/instance-id', instance + '\n')
    _write(root, 'var/lib/cloud/data/previous-hostname', hostname + '\n')
    _write(root, 'var/lib/cloud/sem/config_scripts_per_once.once', instance)
    seed = 'var/lib/cloud/seed/nocloud'
    _write(root, seed + '/meta-data', json.dumps({'instance-id': instance, 'local-hostname': hostname}), 0o600)
    _write(root, seed + '/user-data', '#cloud-config\n' + json.dumps({'hostname': hostname}), 0o600)
    _write(root, seed + '/network-config', 'network:\n  config: disabled\n', 0o600)
    _write(root, 'var/lib/systemd/random-seed', os.urandom(512), 0o600)
    _write(root, 'var/lib/systemd/credential.secret', os.urandom(32), 0o400)
    _write(root, 'var/log/journal/%s/system.journal' % machine_id, 'journal of %s' % machine_id, 0o640)
    _write(root, 'var/log/auth.log', secrets['log line'] + '\n', 0o640, uid=0, gid=4)
    _write(root, 'var/log/auth.log.1', secrets['log line'] + '\n', 0o640, uid=0, gid=4)
    _write(root, 'var/log/syslog.2.gz', b'\x1f\x8b' + secrets['log line'].encode(), 0o640, uid=0, gid=4)
    _write(root, 'var/log/apt/history.log', 'Commandline: ' + secrets['history'] + '\n')
    _write(root, 'var/log/wtmp', hostname.encode() + b'\0' * 100, 0o664, uid=0, gid=43)
    _write(root, 'var/lib/dhcpcd/end0.lease', 'lease of %s' % hostname)
    _write(root, 'var/lib/NetworkManager/internal-%s-end0.lease' % tag[:8], 'ADDRESS=10.99.0.50 %s' % hostname)
    _write(root, 'root/.bash_history', secrets['history'] + '\n', 0o600)
    _write(root, 'home/pi/.bash_history', secrets['history'] + '\n', 0o600, uid=1000, gid=1000)
    _write(root, 'home/pi/.python_history', 'print(%r)\n' % machine_id, 0o600, uid=1000, gid=1000)
    _write(root, 'root/.ssh/authorized_keys', ROOT_KEYS, 0o600)
    fstab = os.path.join(root, 'etc/fstab')
    with open(fstab, 'a', encoding='utf-8') as handle:
        handle.write('%s:/srv/pifleet/bakeforms/bw/generations/1/boot-nfs /boot/firmware nfs ro,vers=3,nolock 0 0\n'
                     % server)
    # The user's own work, which the capture exists for.
    kept = {'opt/lab/tool.sh': '#!/bin/sh\necho lab tool\n', 'home/pi/notes.txt': 'calibrate the sensor\n',
            'etc/lab.conf': 'mode=classroom\n'}
    for rel, text in kept.items():
        _write(root, rel, text, 0o755 if rel.endswith('.sh') else 0o644)
    return {'secrets': secrets, 'kept': kept, 'machine_id': machine_id,
            'authorized_keys_sha256': hashlib.sha256(ROOT_KEYS.encode()).hexdigest()}


def find_secrets(root, secrets):
    """``[(relative path, what)]`` of every file under ``root`` that holds one of ``secrets`` (name -> string)."""
    found = []
    for base, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(base, d))]
        for name in files + dirs:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            for what, text in secrets.items():
                if what != 'hostname' and text in rel:
                    found.append((rel, what))
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, 'rb') as handle:
                data = handle.read()
            found += [(rel, what) for what, text in secrets.items() if text.encode() in data]
    return found


def mount_like_pi_root(roots_dir, serial, image):
    """Mount the root ``image`` of Pi ``serial`` where pi_root mounts it: at its ``Layout.point``, on the mount
    points' tmpfs in ``roots_dir`` (mounted as pi_root mounts it, when it is not there yet). Returns the point."""
    top = points.points_dir(str(roots_dir))
    if not points.is_ours(loopfs.mount_at(top)):
        os.makedirs(top, 0o700, exist_ok=True)
        subprocess.run(['mount', '-t', points.FSTYPE, '-o', ','.join(points.OPTIONS), '--', points.SOURCE, top],
                       check=True)
    point = Layout(str(roots_dir), serial).point
    os.makedirs(point, exist_ok=True)
    subprocess.run(['mount', '-t', 'ext4', '-o', 'loop,nosuid,nodev', str(image), point], check=True)
    return point
