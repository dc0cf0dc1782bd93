# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The parts of the real-image recipe and of the qemu Pi harness that run without mmdebstrap or qemu."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.store.partitions import boot_config, detect_models
from lab import debhost, qemupi, realgen, realimage

KVER = '6.1.0-50-arm64'


NAMES = sorted([*realimage.FLAVOURS, *realimage.DERIVED])


def test_recipe_hash_is_stable_and_per_image(monkeypatch):
    first = {name: realimage.recipe_hash(name) for name in NAMES}
    assert first == {name: realimage.recipe_hash(name) for name in NAMES}
    assert len(set(first.values())) == len(first)
    monkeypatch.setattr(realimage, 'RECIPE_VERSION', realimage.RECIPE_VERSION + 1)
    assert all(realimage.recipe_hash(name) != first[name] for name in NAMES)  # a new recipe: new cached images


def test_derived_images_follow_their_base_and_their_own_recipe(monkeypatch):
    first = {name: realimage.recipe_hash(name) for name in NAMES}
    monkeypatch.setattr(realimage, 'INITRAMFS_MODULES', (*realimage.INITRAMFS_MODULES, 'e1000'))
    changed = {name for name in NAMES if realimage.recipe_hash(name) != first[name]}
    assert changed == set(NAMES)  # the modules list is in every flavour, so in what is derived from them
    monkeypatch.undo()
    monkeypatch.setattr(realgen, 'PANIC_INIT', realgen.PANIC_INIT + '# changed\n')
    monkeypatch.setattr(realgen, 'RECIPE', '\n'.join([str(realgen.VERSION), realgen.PANIC_INIT]))
    assert {name for name in NAMES if realimage.recipe_hash(name) != first[name]} == set(realimage.DERIVED)
    monkeypatch.undo()
    monkeypatch.setitem(realimage.FLAVOURS, 'bookworm', dict(realimage.FLAVOURS['bookworm'], packages=('x',)))
    assert {name for name in NAMES if realimage.recipe_hash(name) != first[name]} == {'bookworm'}


def test_generations_are_the_trixie_image_and_two_made_from_it():
    assert realimage.GENERATIONS == {'A': 'trixie', 'B': 'trixie-kernel', 'C': 'trixie-panic'}
    assert {realimage.DERIVED[name]['base'] for name in ('trixie-kernel', 'trixie-panic')} == {'trixie'}
    assert realimage.DERIVED['trixie-kernel']['boots'] and not realimage.DERIVED['trixie-panic']['boots']


def test_publish_replaces_only_the_same_images_older_recipes(tmp_path):
    names = ['trixie-000000000000.img', 'trixie-000000000000.json', 'trixie-000000000000.tree.tar.zst',
             'trixie-kernel-000000000000.img', 'trixie-kernel-000000000000.json', 'trixie-panic-111111111111.img',
             'bookworm-000000000000.img', 'trixie-notes.txt']
    for name in names:
        (tmp_path / name).write_text('old')
    out, tree = tmp_path / 'new.img', tmp_path / 'new.tar'
    out.write_text('image')
    tree.write_text('tree')
    found = realimage.publish('trixie', out, {'kernel': 'vmlinuz-x'}, tmp_path, tree)
    dest = realimage.image_path('trixie', tmp_path)
    assert found == {'kernel': 'vmlinuz-x', 'path': str(dest)} and realimage.cached('trixie', tmp_path) == found
    assert realimage.tree_path('trixie', tmp_path).read_text() == 'tree'
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([dest.name, dest.with_suffix('.json').name, realimage.tree_path('trixie', tmp_path).name,
                           *names[3:]])  # the derived images and the other flavour stay


def test_cache_is_outside_the_checkout_and_found_by_recipe(tmp_path):
    assert not str(realimage.CACHE).startswith(str(Path(__file__).resolve().parents[3]))
    assert realimage.cached('bookworm', tmp_path) is None
    path = realimage.image_path('bookworm', tmp_path)
    path.write_bytes(b'')
    assert realimage.cached('bookworm', tmp_path) is None  # no description: a half-written cache entry
    path.with_suffix('.json').write_text(json.dumps({'kernel': 'vmlinuz-x'}))
    assert realimage.cached('bookworm', tmp_path) == {'kernel': 'vmlinuz-x', 'path': str(path)}


def fake_root(root):
    """What mmdebstrap leaves that the packing reads: kernel, initramfs, firmware, device trees."""
    for rel, data in ((f'boot/vmlinuz-{KVER}', b'kernel'), (f'boot/initrd.img-{KVER}', b'initrd'),
                      ('usr/lib/raspi-firmware/start4.elf', b'fw4'), ('usr/lib/raspi-firmware/start.elf', b'fw3'),
                      ('usr/lib/raspi-firmware/bootcode.bin', b'bc'), ('usr/lib/raspi-firmware/README', b'no'),
                      (f'usr/lib/linux-image-{KVER}/broadcom/bcm2711-rpi-4-b.dtb', b'dtb'),
                      (f'usr/lib/linux-image-{KVER}/broadcom/bcm2837-rpi-3-b.dtb', b'dtb3'),
                      ('boot/firmware/config.txt', b'raspi-firmware hook leftovers'),
                      ('etc/systemd/system/multi-user.target.wants/ssh.service', b''), ('etc/hosts', b'127.0.0.1 x\n')):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.mark.parametrize('flavour', sorted(realimage.FLAVOURS))
def test_boot_partition_names_the_debian_kernel_like_raspberry_pi_os(tmp_path, flavour):
    fake_root(tmp_path)
    files, kernel = realimage.boot_files(tmp_path, realimage.FLAVOURS[flavour]['cloud_init'], '5a1e0c3d')
    assert kernel == {'kernel': f'vmlinuz-{KVER}', 'initramfs': f'initrd.img-{KVER}', 'kernel_version': KVER,
                      'uname': KVER, 'modules_dir': f'/lib/modules/{KVER}'}
    config = boot_config(files['config.txt'].decode(), 4)
    assert (config['kernel'], config['initramfs']) == (kernel['kernel'], kernel['initramfs'])
    assert files[kernel['kernel']] == b'kernel' and 'README' not in files
    assert detect_models(files) == ['3', '4']
    cmdline = files['cmdline.txt'].decode()
    assert 'root=PARTUUID=5a1e0c3d-02' in cmdline and 'init=/usr/lib/raspberrypi-sys-mods/firstboot' in cmdline
    seeds = {'meta-data', 'user-data', 'network-config'} & set(files)
    assert seeds == ({'meta-data', 'user-data', 'network-config'} if flavour == 'trixie' else set())


@pytest.mark.parametrize('flavour', sorted(realimage.FLAVOURS))
def test_root_carries_the_raspberry_pi_os_pieces_a_netboot_must_fix(tmp_path, flavour):
    fake_root(tmp_path)
    realimage.pi_os_pieces(tmp_path, '5a1e0c3d', realimage.FLAVOURS[flavour]['cloud_init'])
    assert 'PARTUUID=5a1e0c3d-02  /' in (tmp_path / 'etc/fstab').read_text()
    assert (tmp_path / 'etc/machine-id').read_text() == realimage.GOLDEN_MACHINE_ID + '\n'
    assert (tmp_path / 'etc/hosts').read_text().endswith('127.0.1.1\traspberrypi\n')
    assert os.readlink(tmp_path / 'etc/rc3.d/S01resize2fs_once') == '../init.d/resize2fs_once'
    assert os.readlink(tmp_path / 'etc/systemd/network/99-default.link') == '/dev/null'
    wants = tmp_path / 'etc/systemd/system/multi-user.target.wants'
    assert sorted(p.name for p in wants.iterdir()) == [
        'dphys-swapfile.service', 'regenerate_ssh_host_keys.service', 'userconfig.service']  # ssh: off
    assert list((tmp_path / 'boot/firmware').iterdir()) == []  # a mount point, as on Raspberry Pi OS
    assert (tmp_path / 'etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg').exists() == (flavour == 'trixie')


def test_md_dump_is_read_back_as_bytes():
    out = ('40200000: 6b 65 6c 3d 76 6d 6c 0a 23 61 62 0a 0a 7a 7a 7a  kel=vml.#ab..zzz\n'
           '40200010: 00 de ad                                         ...\n')
    assert qemupi.parse_md(out, 17) == b'kel=vml\n#ab\n\nzzz\x00'
    with pytest.raises(qemupi.BootError, match='showed 19 of 40 bytes'):
        qemupi.parse_md(out, 40)


def test_console_waits_for_text_and_says_where_it_stopped(tmp_path):
    path = tmp_path / 'console.sock'
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    peer = []

    def serve():
        conn, _addr = server.accept()
        peer.append(conn)
        conn.sendall(b'U-Boot 2023.01\r\nHit any key to stop autoboot:  2 ')
    thread = threading.Thread(target=serve)
    thread.start()
    console = qemupi.Console(path, tmp_path / 'console.log')
    try:
        thread.join(5)
        assert console.wait_for('Hit any key', 5).group(0) == 'Hit any key'
        console.send(' ')
        assert peer[0].recv(10) == b' '
        with pytest.raises(qemupi.BootError, match=r'(?s)the login prompt: not seen in 0 s.*Hit any key'):
            console.wait_for('login: ', 0.2, what='the login prompt')
        peer[0].close()
        with pytest.raises(qemupi.BootError, match=r'qemu exited'):
            console.wait_for('never', 5)
    finally:
        console.close()
        server.close()
    assert (tmp_path / 'console.log').read_bytes().startswith(b'U-Boot 2023.01')


def test_a_stuck_pi_ends_the_wait_at_once(console_vm):
    vm, conn = console_vm
    assert vm.mac == 'dc:a6:32:ff:ee:06' and vm.marker == 'ifname=tap-ffee06,'
    vm.powered = 0
    conn.sendall(b'\r\nDebian GNU/Linux 12 pi-06 ttyAMA0\r\n\r\npi-06 login: ')
    assert vm.wait_login(5) == 'pi-06 login:' and 'login' in vm.timings
    mark = vm.console.mark()  # before the stuck text is sent: the reader may take it in at once
    conn.sendall(b'Begin: Running /scripts/init-bottom ... done.\r\nNo init found. Try passing init= bootarg.\r\n'
                 b'\r\nBusyBox v1.35.0 (Debian 1:1.35.0-4+b3) built-in shell (ash)\r\n(initramfs) ')
    with pytest.raises(qemupi.BootError, match=r'(?s)the login prompt never came: the Pi is stuck \(\(initramfs\)\)'
                                               r'.*No init found'):
        vm.expect(r'^\S+ login: ', 60, mark, 'the login prompt')


def read_newc(data):
    """(name, mode, bytes) of each member of a newc cpio archive, up to its trailer."""
    out, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b'070701', data[pos:pos + 6]
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize + (-(pos + namesize) % 4)
        body = data[pos:pos + size]
        pos += size + (-(pos + size) % 4)
        if name == 'TRAILER!!!':
            return out, pos
        out.append((name, mode, body))


@pytest.fixture
def console_vm(tmp_path):
    """A VirtualPi whose console is a socket this test writes to: (vm, the test's end of the socket)."""
    path = tmp_path / 'console.sock'
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    vm = qemupi.VirtualPi({'namespaces': {'lan': 'unused'}}, name='pi-06', mac='dc-a6-32-ff-ee-06', ip='10.99.0.53',
                          prefix='c0ffee06', workdir=tmp_path)
    vm.console = qemupi.Console(path, tmp_path / 'console.log')
    conn, _addr = server.accept()
    vm.powered = time.monotonic()
    try:
        yield vm, conn
    finally:
        conn.close()
        vm.console.close()
        server.close()


def answers_after(tries, then=None):
    """A ready() that is false ``tries`` times (calling ``then`` on the last of them), then true."""
    calls = []

    def ready():
        calls.append(time.monotonic())
        if len(calls) == tries and then:
            then()
        return len(calls) > tries
    ready.calls = calls
    return ready


def test_running_is_ssh_and_the_login_prompt_is_timed_when_it_came(console_vm):
    vm, conn = console_vm
    sent = []

    def prompt():
        sent.append(time.monotonic())
        conn.sendall(b'\r\nDebian GNU/Linux 13 pi-06 ttyAMA0\r\n\r\npi-06 login: ')
        time.sleep(0.3)  # the reader takes it in
    ready = answers_after(2, then=prompt)
    assert vm.wait_running(ready, timeout=30) == 'pi-06 login:'
    assert len(ready.calls) == 3
    # the time the prompt arrived, not the time the next look found it (a look waits up to a second)
    assert sent[0] - vm.powered - 0.05 <= vm.timings['login'] <= sent[0] - vm.powered + 0.25


def test_a_pi_without_a_login_prompt_is_running_once_ssh_answers(console_vm):
    vm, conn = console_vm
    conn.sendall(b'[  OK  ] Started ssh.service - OpenBSD Secure Shell server.\r\n'
                 b'[  OK  ] Reached target multi-user.target\r\n')
    started = time.monotonic()
    assert vm.wait_running(answers_after(1), timeout=30, grace=0.5) == ''
    assert 'login' not in vm.timings and time.monotonic() - started < 5
    # a prompt that comes just after ssh answered is still shown and timed
    threading.Timer(0.5, conn.sendall, [b'\r\npi-06 login: ']).start()
    vm.timings.pop('ssh', None)
    assert vm.wait_running(answers_after(0), timeout=30, grace=10) == 'pi-06 login:'
    assert 'login' in vm.timings
    with pytest.raises(qemupi.BootError, match=r'(?s)ssh did not answer with its host key in 1 s \(login prompt not '
                                               r'seen\).*Reached target multi-user'):
        vm.wait_running(lambda: False, timeout=1)


def test_a_stuck_pi_ends_the_wait_for_ssh_at_once(console_vm):
    vm, conn = console_vm
    conn.sendall(b'[  OK  ] Reached target basic.target\r\nYou are in emergency mode. After logging in, type ...\r\n')
    time.sleep(0.3)
    started = time.monotonic()
    with pytest.raises(qemupi.BootError, match=r'(?s)pi-06 is stuck \(You are in emergency mode\) before it answered '
                                               r'ssh.*basic.target'):
        vm.wait_running(lambda: False, timeout=60)
    assert time.monotonic() - started < 5


def test_tcg_pieces_wait_longer_for_devices_and_hold_usrs_time(tmp_path):
    for top in ('usr/bin', 'etc', 'var'):
        (tmp_path / top).mkdir(parents=True)
    os.utime(tmp_path / 'usr', ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    realimage.tcg_pieces(tmp_path)
    conf = (tmp_path / 'etc/systemd/system.conf.d/pifleet-lab-tcg.conf').read_text()
    assert conf.splitlines() == ['[Manager]', 'DefaultDeviceTimeoutSec=10min']
    for top in ('etc', 'var'):
        stamp = tmp_path / top / '.updated'
        assert stamp.stat().st_mtime_ns == 1_700_000_000_123_456_789
        assert stamp.read_text().splitlines()[-1] == 'TIMESTAMP_NSEC=1700000000123456789'


def test_broken_generation_appends_an_init_that_exits():
    first = realgen.cpio_newc([('init', 0o100755, b'#!/bin/sh\nexec /sbin/init\n'), ('bin/sh', 0o100755, b'sh')])
    broken = realgen.panic_initramfs(first[:-3])  # an archive of odd length: the second one starts 4-aligned
    members, end = read_newc(first)
    assert members == [('init', 0o100755, b'#!/bin/sh\nexec /sbin/init\n'), ('bin/sh', 0o100755, b'sh')]
    assert len(first) % 512 == 0 and end <= len(first)
    start = len(first) - 3 + (-(len(first) - 3) % 4)
    assert start % 4 == 0 and broken[:len(first) - 3] == first[:-3]
    (name, mode, body), = read_newc(broken[start:])[0]
    assert (name, mode, body.decode()) == ('init', 0o100755, realgen.PANIC_INIT)
    assert body.startswith(b'#!/bin/sh\n') and b'exit 1' in body  # the kernel runs it and panics when it exits


def test_derived_kernel_swap_reads_what_dpkg_has_installed(tmp_path):
    (tmp_path / 'var/lib/dpkg').mkdir(parents=True)
    (tmp_path / 'var/lib/dpkg/status').write_text(
        'Package: linux-image-6.12.117+deb13-arm64\nStatus: install ok installed\nVersion: 6.12.117-1\n\n'
        'Package: linux-image-arm64\nStatus: install ok installed\n\n'
        'Package: linux-image-6.1.0-9-arm64\nStatus: deinstall ok config-files\n\n'
        'Package: linux-base\nStatus: install ok installed\n')
    assert realgen.installed_kernels(tmp_path) == ['linux-image-6.12.117+deb13-arm64', 'linux-image-arm64']


def test_diverted_programs_are_back_before_packing_and_their_stand_ins_record_or_exit():
    trixie, bookworm = (realimage.diverted(realimage.FLAVOURS[name]) for name in ('trixie', 'bookworm'))
    assert trixie['/usr/lib/python3.13/py_compile.py'] == realimage.PY_COMPILE_STUB
    assert not any('python' in path for path in bookworm) and '/sbin/depmod' in bookworm
    assert trixie['/usr/bin/py3compile'] is None  # absent: postinsts run it only `if command -v py3compile`
    assert trixie['/usr/sbin/update-initramfs'] == realimage.EXIT0
    assert 'deb-systemd-helper' in trixie['/usr/bin/deb-systemd-helper'] and realimage.REPLAY in trixie[
        '/usr/sbin/update-rc.d']
    add = realimage.divert_script(['/usr/sbin/a', '/usr/bin/b'], add=True)
    back = realimage.divert_script(['/usr/sbin/a', '/usr/bin/b'], add=False)
    assert "'/usr/sbin/a' '/usr/bin/b'" in add and '--add' in add and '--rename' in add
    assert '--remove' in back and 'rm -f "$1$p"' in back and '"$1.replay"' in back


def test_stub_records_each_call_for_the_native_replay(tmp_path):
    stub = realimage.RECORD % 'deb-systemd-helper'
    script = tmp_path / 'stub'
    script.write_text(stub.replace('/var/lib/pifleet-build/replay', str(tmp_path / 'replay')))
    env = dict(os.environ, DPKG_MAINTSCRIPT_PACKAGE='openssh-server')
    subprocess.run(['sh', str(script), '--quiet', 'was-enabled', 'ssh service'], env=env, check=True)
    subprocess.run(['sh', str(script), 'enable', 'ssh.service'], env=env, check=True)
    lines = (tmp_path / 'replay').read_text().splitlines()
    assert [line.split('\x1f') for line in lines] == [
        ['deb-systemd-helper', 'openssh-server', '--quiet', 'was-enabled', 'ssh service'],
        ['deb-systemd-helper', 'openssh-server', 'enable', 'ssh.service']]


def test_byte_compiled_directories_are_the_ones_debian_compiles(tmp_path):
    info = tmp_path / 'var/lib/dpkg/info'
    info.mkdir(parents=True)
    (info / 'python3-minimal.postinst').write_text('if which py3compile >/dev/null 2>&1; then\n'
                                                   '\tpy3compile -p python3-minimal /usr/share/python3/\nfi\n')
    (info / 'cloud-init.postinst').write_text('if command -v py3compile >/dev/null 2>&1; then\n'
                                              '\tpy3compile -p cloud-init \nfi\n')
    (info / 'x.postinst').write_text('py3compile -p x /usr/share/x /usr/lib/gone; echo\n')
    for rel in ('usr/lib/python3.13', 'usr/lib/python3/dist-packages', 'usr/share/python3', 'usr/share/x'):
        (tmp_path / rel).mkdir(parents=True)
    assert debhost.compile_dirs(tmp_path, '3.13') == [
        '/usr/lib/python3.13', '/usr/lib/python3/dist-packages', '/usr/share/python3/', '/usr/share/x']


def test_certificate_store_is_what_update_ca_certificates_writes(tmp_path):
    (tmp_path / 'etc').mkdir()
    (tmp_path / 'etc/ca-certificates.conf').write_text('# comment\nmozilla/A (B), C.crt\n!mozilla/Gone.crt\n')
    cert = tmp_path / 'usr/share/ca-certificates/mozilla/A (B), C.crt'
    cert.parent.mkdir(parents=True)
    key = tmp_path / 'key.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
                    '-keyout', str(key), '-out', str(cert), '-subj', '/CN=pifleet test root', '-days', '1'],
                   check=True, capture_output=True)
    assert debhost.ca_certificates(tmp_path) == 1
    certs = tmp_path / 'etc/ssl/certs'
    assert os.readlink(certs / 'A_=B=__C.pem') == '/usr/share/ca-certificates/mozilla/A (B), C.crt'
    subject = subprocess.run(['openssl', 'x509', '-noout', '-subject_hash', '-in', str(cert)], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert os.readlink(certs / ('%s.0' % subject)) == 'A_=B=__C.pem'
    assert (certs / 'ca-certificates.crt').read_text() == cert.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason='mounts a tmpfs: root only')
def test_a_killed_builds_scratch_dir_is_unmounted_before_it_is_removed(tmp_path):
    """A build killed inside mmdebstrap leaves its chroot's mounts: removing through them would delete what they
    show (a bind-mounted /dev/shm is the host's), so the sweep unmounts first, deepest first."""
    stale = tmp_path / '.build-trixie-1'
    shm = stale / 'root' / 'dev' / 'shm'
    shm.mkdir(parents=True)
    subprocess.run(['mount', '-t', 'tmpfs', 'tmpfs', str(stale / 'root' / 'dev')], check=True)
    try:
        shm.mkdir()
        subprocess.run(['mount', '-t', 'tmpfs', 'tmpfs', str(shm)], check=True)
        (shm / 'kept').write_text('a file the mount shows\n')
        assert realimage.mounted_below(stale) == [str(shm), str(stale / 'root' / 'dev')]
        realimage.sweep(stale)
        assert not stale.exists() and realimage.mounted_below(tmp_path) == []
    finally:
        for point in realimage.mounted_below(tmp_path):
            subprocess.run(['umount', '--lazy', point], check=False)
