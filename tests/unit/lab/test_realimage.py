# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The parts of the real-image recipe and of the qemu Pi harness that run without mmdebstrap or qemu."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.store.partitions import boot_config, detect_models
from lab import qemupi, realimage

KVER = '6.1.0-50-arm64'


def test_recipe_hash_is_stable_and_per_flavour(monkeypatch):
    first = {flavour: realimage.recipe_hash(flavour) for flavour in realimage.FLAVOURS}
    assert first == {flavour: realimage.recipe_hash(flavour) for flavour in realimage.FLAVOURS}
    assert len(set(first.values())) == len(first)
    monkeypatch.setattr(realimage, 'RECIPE_VERSION', realimage.RECIPE_VERSION + 1)
    assert realimage.recipe_hash('bookworm') != first['bookworm']  # a new recipe: a new cached image


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
    files, kernel = realimage.boot_files(tmp_path, flavour, '5a1e0c3d')
    assert kernel == {'kernel': f'vmlinuz-{KVER}', 'initramfs': f'initrd.img-{KVER}', 'kernel_version': KVER}
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
    realimage.pi_os_pieces(tmp_path, flavour, '5a1e0c3d')
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


def test_a_stuck_pi_ends_the_wait_at_once(tmp_path):
    path = tmp_path / 'console.sock'
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    vm = qemupi.VirtualPi({'namespaces': {'lan': 'unused'}}, name='pi-06', mac='dc-a6-32-ff-ee-06', ip='10.99.0.53',
                          prefix='c0ffee06', workdir=tmp_path)
    assert vm.mac == 'dc:a6:32:ff:ee:06' and vm.marker == 'ifname=tap-ffee06,'
    vm.console = qemupi.Console(path, tmp_path / 'console.log')
    conn, _addr = server.accept()
    try:
        vm.powered = 0
        conn.sendall(b'\r\nDebian GNU/Linux 12 pi-06 ttyAMA0\r\n\r\npi-06 login: ')
        assert vm.wait_login(5) == 'pi-06 login:' and 'login' in vm.timings
        mark = vm.console.mark()  # before the stuck text is sent: the reader may take it in at once
        conn.sendall(b'Begin: Running /scripts/init-bottom ... done.\r\nNo init found. Try passing init= bootarg.\r\n'
                     b'\r\nBusyBox v1.35.0 (Debian 1:1.35.0-4+b3) built-in shell (ash)\r\n(initramfs) ')
        with pytest.raises(qemupi.BootError, match=r'(?s)the login prompt never came: the Pi is stuck \(\(initramfs\)\)'
                                                   r'.*No init found'):
            vm.expect(r'^\S+ login: ', 60, mark, 'the login prompt')
    finally:
        conn.close()
        vm.console.close()
        server.close()
