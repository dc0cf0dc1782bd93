# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_root on real XFS (reflink), ext4 (copy) and btrfs (snapshot) loop file systems, as root.

Each file system holds a bakeform store and the roots dir, as on a bakery. Clones are compared
with the golden root entry by entry; lifecycle, drift, rebuild, removal, check mode, a SIGKILL
mid-clone and a 30-Pi list call are exercised against real state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from fstree import describe, loop_fs, snapshot
from modrun import module_argv, run_module
from piimage import build_image

AUTO_METHOD = {'xfs': 'reflink', 'ext4': 'copy', 'btrfs': 'snapshot'}
KEY_A = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHN0dWJrZXlmb3J0ZXN0aW5nMTIzNDU2Nzg5MA admin@bakery'
KEY_B = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG90aGVya2V5Zm9ydGVzdGluZzEyMzQ1Njc4OTA ops@bakery'
WANTS = 'etc/systemd/system/multi-user.target.wants'
NM_CONF = 'etc/NetworkManager/conf.d/90-pifleet-nfsroot.conf'
HOST_KEYS = ['etc/ssh/ssh_host_%s_key%s' % (kind, ext) for kind in ('ed25519', 'rsa') for ext in ('', '.pub')]
# What the fixes may change, remove and add; everything else must be as in the golden root.
CHANGED = {'etc/fstab', 'etc/hostname', 'etc/hosts', 'etc/machine-id', 'var/lib/dbus/machine-id',
           'etc/dphys-swapfile', 'etc/dhcpcd.conf', *HOST_KEYS}
REMOVED = {WANTS + '/resize2fs_once.service', 'etc/rc3.d/S01resize2fs_once'}
ADDED = {'.pifleet.json', 'etc/systemd/system/dphys-swapfile.service', WANTS + '/ssh.service',
         'etc/NetworkManager/conf.d', NM_CONF, 'root/.ssh', 'root/.ssh/authorized_keys'}


def like_pi_os(golden):
    """Add what a Pi OS root has and the factory's lacks, so every fix has something to do."""
    for rel, text in (('etc/dhcpcd.conf', 'hostname\nclientid\n'), ('lib/systemd/system/ssh.service', '[Unit]\n'),
                      ('var/lib/dbus/machine-id', (golden / 'etc/machine-id').read_text())):
        (golden / rel).parent.mkdir(parents=True, exist_ok=True)
        (golden / rel).write_text(text)
    (golden / 'etc/NetworkManager').mkdir()
    (golden / 'etc/rc3.d').mkdir()
    os.symlink('../init.d/resize2fs_once', golden / 'etc/rc3.d/S01resize2fs_once')


def ingest(lab, name, image, force=False):
    result = run_module('bakeform', {'name': name, 'src': image['path'], 'store': str(lab['store']), 'force': force})
    assert not result.get('failed'), result
    like_pi_os(lab['store'] / name / 'root')
    return result['manifest']['sha256']


@pytest.fixture(scope='session')
def tiny_images(tmp_path_factory):
    top = tmp_path_factory.mktemp('piroot-images')
    return {'good': build_image(top / 'good.img', seed=21),
            'other': build_image(top / 'other.img', seed=22, models=(4,))}


@pytest.fixture(scope='module', params=['xfs', 'ext4', 'btrfs'])
def lab(request, tmp_path_factory, tiny_images):
    """A loop file system holding the store (bakeform 'bw' ingested) and the roots dir."""
    top = tmp_path_factory.mktemp('piroot-%s' % request.param)
    with loop_fs(top, request.param) as mnt:
        lab = {'fs': request.param, 'mnt': mnt, 'store': mnt / 'store', 'roots': mnt / 'roots'}
        lab['sha256'] = ingest(lab, 'bw', tiny_images['good'])
        yield lab


def common(lab, **extra):
    return dict({'bakeform': 'bw', 'store': str(lab['store']), 'roots_dir': str(lab['roots'])}, **extra)


def shared_extents(path):
    out = subprocess.run(['filefrag', '-v', str(path)], capture_output=True, text=True, check=True).stdout
    return 'shared' in out


def scratch_dirs(lab):
    return [n for n in os.listdir(lab['roots']) if n.startswith('.pifleet-tmp-')] if lab['roots'].exists() else []


def assert_faithful(golden, root, added=None):
    """Entry by entry: equal to the golden root, except what the fixes change (whose metadata stays)."""
    want, got = describe(golden), describe(root)
    assert set(got) - set(want) == (ADDED if added is None else added)
    assert set(want) - set(got) == REMOVED
    for path, entry in want.items():
        if path in REMOVED:
            continue
        if path in CHANGED:
            assert dict(got[path], size=None) == dict(entry, size=None), path
        else:
            assert got[path] == entry, path


def test_clone_is_faithful_and_fixed(lab):
    serials = ['3a4b5c6d', '0badcafe']
    args = common(lab, pis=[{'serial': serials[0], 'hostname': 'kitchen'}, {'serial': '10000000' + serials[1]}],
                  ssh_authorized_keys=[KEY_A], boot_mount='nfs', nfs_server='10.99.0.2')
    golden = lab['store'] / 'bw' / 'root'
    planned = run_module('pi_root', args, check=True, diff=True)
    assert planned['changed'] is True, planned
    assert [(p['action'], p['clone_method']) for p in planned['pis']] == [('cloned', AUTO_METHOD[lab['fs']])] * 2
    assert not lab['roots'].exists()

    done = run_module('pi_root', args, diff=True)
    assert done['changed'] is True, done
    assert [(p['serial'], p['hostname'], p['action'], p['clone_method']) for p in done['pis']] == [
        (serials[0], 'kitchen', 'cloned', AUTO_METHOD[lab['fs']]),
        (serials[1], 'pi-0badcafe', 'cloned', AUTO_METHOD[lab['fs']])]
    texts = [d for d in done['diff'] if not d['after_header'].endswith('.pifleet.json')]
    assert texts == [d for d in planned['diff'] if not d['after_header'].endswith('.pifleet.json')]
    assert sorted(os.listdir(lab['roots'])) == sorted(serials)  # no scratch dirs left

    roots = [lab['roots'] / serial for serial in serials]
    for root in roots:
        assert_faithful(golden, root)
    root = roots[0]
    assert shared_extents(root / 'usr/bin/passwd') is (lab['fs'] != 'ext4')  # clones share the golden's blocks
    assert (root / 'etc/fstab').read_text() == (
        '# Generated by pifleet piimage.py\n'
        'proc            /proc           proc    defaults          0       0\n'
        '10.99.0.2:%s /boot/firmware nfs ro,vers=3,nolock 0 0\n' % (lab['store'] / 'bw' / 'boot'))
    assert (root / 'etc/hostname').read_text() == 'kitchen\n'
    assert os.getxattr(root / 'etc/hostname', 'user.pifleet') == b'golden'
    assert (root / 'etc/hosts').read_text().splitlines()[-1] == '127.0.1.1\tkitchen'
    assert (roots[1] / 'etc/hostname').read_text() == 'pi-0badcafe\n'
    assert not os.path.lexists(root / WANTS / 'resize2fs_once.service')
    assert os.readlink(root / 'etc/systemd/system/dphys-swapfile.service') == '/dev/null'
    assert 'CONF_SWAPSIZE=0' in (root / 'etc/dphys-swapfile').read_text().splitlines()
    assert os.readlink(root / WANTS / 'ssh.service') == '/lib/systemd/system/ssh.service'
    assert 'unmanaged-devices=interface-name:eth0;interface-name:end0' in (root / NM_CONF).read_text()
    assert 'denyinterfaces eth0 end0' in (root / 'etc/dhcpcd.conf').read_text().splitlines()
    keys = os.lstat(root / 'root/.ssh/authorized_keys')
    assert (root / 'root/.ssh/authorized_keys').read_text() == KEY_A + '\n'
    assert (keys.st_uid, keys.st_gid, keys.st_mode & 0o777) == (0, 0, 0o600)
    assert os.lstat(root / 'root/.ssh').st_mode & 0o777 == 0o700

    # Identity: each Pi its own machine-id and host keys, none shared with the golden root or each other.
    ids = [(r / 'etc/machine-id').read_text() for r in roots] + [(golden / 'etc/machine-id').read_text()]
    assert len(set(ids)) == 3 and all(len(i) == 33 for i in ids[:2])
    assert (root / 'var/lib/dbus/machine-id').read_text() == ids[0]
    for rel in HOST_KEYS:
        assert len({(r / rel).read_bytes() for r in [*roots, golden]}) == 3, rel
    listed = subprocess.run(['ssh-keygen', '-l', '-f', str(root / 'etc/ssh/ssh_host_rsa_key.pub')],
                            capture_output=True, text=True, check=True).stdout
    assert 'root@kitchen' in listed and '(RSA)' in listed

    marker = json.loads((root / '.pifleet.json').read_text())
    assert marker['serial'] == serials[0] and marker['bakeform'] == 'bw' and marker['hostname'] == 'kitchen'
    assert marker['bakeform_sha256'] == lab['sha256'] and marker['clone_method'] == AUTO_METHOD[lab['fs']]
    assert marker['boot_mount'] == 'nfs' and marker['created'] == marker['updated']
    assert {'fstab', 'hostname', 'hosts', 'machine_id', 'ssh_host_keys', 'firstboot_disabled', 'swap_disabled',
            'network', 'ssh_enabled', 'authorized_keys'} == set(marker['fixes'])

    before = snapshot(lab['roots'])
    for check in (True, False):
        again = run_module('pi_root', args, check=check)
        assert again['changed'] is False, again
        assert [p['action'] for p in again['pis']] == ['unchanged', 'unchanged']
    assert snapshot(lab['roots']) == before


@pytest.mark.parametrize('method', ['copy', 'reflink', 'snapshot'])
def test_forced_clone_method(lab, method):
    serial = {'copy': '00c0ffee', 'reflink': '00ee1111', 'snapshot': '00ab5555'}[method]
    works = method == 'copy' or (method == 'reflink' and lab['fs'] != 'ext4') or lab['fs'] == 'btrfs'
    result = run_module('pi_root', common(lab, serial=serial, clone_method=method))
    root = lab['roots'] / serial
    if not works:
        assert result.get('failed') and 'cloning' in result['msg'] and 'clone_method: copy' in result['msg'], result
        assert not os.path.lexists(root) and scratch_dirs(lab) == []
        return
    assert result['pis'][0]['clone_method'] == method, result
    got, want = describe(root), describe(lab['store'] / 'bw' / 'root')
    for path in ('usr/bin/busybox', 'usr/bin/ping', 'dev/sda', 'var/lib/fifo', 'home/pi'):
        assert got[path] == want[path], path
    assert shared_extents(root / 'usr/bin/passwd') is (method != 'copy')
    assert run_module('pi_root', common(lab, serial=serial, state='absent'))['changed'] is True
    assert not os.path.lexists(root) and scratch_dirs(lab) == []


def test_lifecycle_fix_drift_rebuild_absent(lab, tiny_images):
    first_sha = ingest(lab, 'life', tiny_images['good'])
    base = common(lab, serial='1e1e1e1e', hostname='den', bakeform='life', ssh_authorized_keys=[KEY_A])
    root = lab['roots'] / '1e1e1e1e'
    assert run_module('pi_root', base)['pis'][0]['action'] == 'cloned'
    marker0 = json.loads((root / '.pifleet.json').read_text())
    keys0 = {rel: (root / rel).read_bytes() for rel in HOST_KEYS}
    machine_id = (root / 'etc/machine-id').read_text()
    (root / 'home/pi/notes.txt').write_text('the Pi wrote this\n')
    inode = os.stat(root / 'usr/bin/busybox').st_ino

    renamed = dict(base, hostname='study', ssh_authorized_keys=[KEY_A, KEY_B])
    before = snapshot(root)
    planned = run_module('pi_root', renamed, check=True, diff=True)
    assert planned['changed'] is True and planned['pis'][0]['action'] == 'fixed'
    assert {d['after_header'][len(str(root)):] for d in planned['diff']} == {'/etc/hostname', '/etc/hosts',
                                                                             '/.pifleet.json'}
    assert snapshot(root) == before  # check mode wrote nothing
    fixed = run_module('pi_root', renamed)
    assert fixed['changed'] is True and fixed['pis'][0]['action'] == 'fixed', fixed
    assert (root / 'etc/hostname').read_text() == 'study\n'
    assert (root / 'etc/hosts').read_text().splitlines()[-1] == '127.0.1.1\tstudy'
    assert (root / 'root/.ssh/authorized_keys').read_text() == KEY_A + '\n' + KEY_B + '\n'
    assert (root / 'home/pi/notes.txt').read_text() == 'the Pi wrote this\n'  # fixed in place, not re-cloned
    assert os.stat(root / 'usr/bin/busybox').st_ino == inode
    marker1 = json.loads((root / '.pifleet.json').read_text())
    assert marker1['created'] == marker0['created'] and marker1['hostname'] == 'study'
    assert {rel: (root / rel).read_bytes() for rel in HOST_KEYS} == keys0
    assert run_module('pi_root', renamed)['changed'] is False

    second_sha = ingest(lab, 'life', tiny_images['other'], force=True)
    assert second_sha != first_sha
    before = snapshot(root)
    drift = run_module('pi_root', renamed)
    assert drift['changed'] is False and drift['pis'][0]['drift'] is True and drift['pis'][0]['action'] == 'drift'
    assert 'use state: rebuilt' in json.dumps(drift.get('warnings'))  # 2.19: structured WarningSummary objects
    assert snapshot(root) == before

    rebuilt = run_module('pi_root', dict(renamed, state='rebuilt'))
    assert rebuilt['changed'] is True and rebuilt['pis'][0]['action'] == 'rebuilt', rebuilt
    assert not (root / 'home/pi/notes.txt').exists()  # a fresh clone of the new content
    marker2 = json.loads((root / '.pifleet.json').read_text())
    assert marker2['bakeform_sha256'] == second_sha and marker2['hostname'] == 'study'
    assert {rel: (root / rel).read_bytes() for rel in HOST_KEYS} == keys0  # the Pi's SSH identity survives
    assert (root / 'etc/machine-id').read_text() == machine_id
    assert scratch_dirs(lab) == []
    assert run_module('pi_root', renamed)['changed'] is False

    assert_removed(lab, dict(base, state='absent'), root)


def assert_removed(lab, args, root):
    gone = run_module('pi_root', args, check=True)
    assert gone['changed'] is True and root.is_dir()
    gone = run_module('pi_root', args)
    assert gone['changed'] is True and gone['pis'][0]['action'] == 'removed'
    assert not os.path.lexists(root) and scratch_dirs(lab) == []
    assert run_module('pi_root', args)['changed'] is False
    if lab['fs'] == 'btrfs':
        listed = subprocess.run(['btrfs', 'subvolume', 'list', str(lab['mnt'])], capture_output=True, text=True,
                                check=True).stdout
        assert 'roots/%s' % root.name not in listed and '.pifleet-tmp' not in listed


def test_thirty_pis_in_one_call(lab):
    if lab['fs'] != 'btrfs':
        pytest.skip('RSA host keys take ~1 s a Pi here: the list call runs once, on btrfs')
    pis = [{'serial': '5e%06x' % index, 'hostname': 'rack-%02d' % index} for index in range(30)]
    args = common(lab, pis=pis)
    start = time.monotonic()
    done = run_module('pi_root', args)
    took = time.monotonic() - start
    assert done['changed'] is True and [p['action'] for p in done['pis']] == ['cloned'] * 30, done
    roots = [lab['roots'] / pi['serial'] for pi in pis]
    assert len({(r / 'etc/ssh/ssh_host_ed25519_key.pub').read_bytes() for r in roots}) == 30
    assert len({(r / 'etc/machine-id').read_text() for r in roots}) == 30
    assert [(r / 'etc/hostname').read_text() for r in roots] == ['rack-%02d\n' % i for i in range(30)]
    start = time.monotonic()
    again = run_module('pi_root', args)
    rerun = time.monotonic() - start
    assert again['changed'] is False and {p['action'] for p in again['pis']} == {'unchanged'}
    assert rerun < took / 5, (rerun, took)  # no clone, no keygen: reads markers and a few files
    removed = run_module('pi_root', dict(args, state='absent'))
    assert [p['action'] for p in removed['pis']] == ['removed'] * 30


@pytest.fixture(scope='module')
def big_image(tmp_path_factory):
    """A root with a few thousand files, so a copy takes long enough to be killed midway."""
    return build_image(tmp_path_factory.mktemp('piroot-big') / 'big.img', profile='realistic', root_files=4000,
                       root_mb=200, seed=23)


def alive(pid):
    """A process that still runs (a zombie waiting for its reaper does not)."""
    try:
        with open('/proc/%d/stat' % pid, encoding='ascii', errors='replace') as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except OSError:
        return False


def command_name(pid):
    try:
        with open('/proc/%d/comm' % pid, encoding='ascii', errors='replace') as handle:
            return handle.read().strip()
    except OSError:
        return None


def children(pid):
    """All descendants of a process, from /proc (the module's cp), with their command names."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir('/proc/%d/task' % parent) if os.path.isdir('/proc/%d/task' % parent) else []:
            try:
                with open('/proc/%d/task/%s/children' % (parent, task), encoding='ascii') as handle:
                    kids = [int(k) for k in handle.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return {kid: command_name(kid) for kid in found}


def test_sigkill_mid_clone_leaves_no_root(tmp_path, big_image):
    with loop_fs(tmp_path, 'ext4') as mnt:
        lab = {'fs': 'ext4', 'mnt': mnt, 'store': mnt / 'store', 'roots': mnt / 'roots'}
        ingest(lab, 'bw', big_image)
        args = common(lab, serial='0dead0ff', hostname='victim')
        root = lab['roots'] / '0dead0ff'
        proc = subprocess.Popen(module_argv('pi_root', args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                # Kill once the copy is under way: its scratch dir has a root with some of the tree in it.
                partial = [lab['roots'] / n / 'root' / 'usr' for n in scratch_dirs(lab)]
                if any(p.is_dir() for p in partial):
                    break
                time.sleep(0.005)
            kids = children(proc.pid)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, 'the clone finished before it could be killed'
        assert 'cp' in kids.values(), 'no cp was running: %s' % kids
        for _attempt in range(50):  # pdeathsig takes cp down with the module at once (the copy needs seconds)
            if not any(alive(kid) for kid in kids):
                break
            time.sleep(0.01)
        assert not any(alive(kid) for kid in kids), 'cp outlived the killed module'
        assert not os.path.lexists(root)
        leftovers = scratch_dirs(lab)
        # The half-made root and the SSH host keys made ahead for it (pi_root's KeyForge), both swept below.
        assert sorted(name.split('-')[2] for name in leftovers) == ['0dead0ff', 'keys'], leftovers

        again = run_module('pi_root', args)
        assert again['changed'] is True and again['pis'][0]['action'] == 'cloned', again
        assert again['swept'] == leftovers and scratch_dirs(lab) == []
        assert_faithful(lab['store'] / 'bw' / 'root', root, ADDED - {'root/.ssh', 'root/.ssh/authorized_keys'})
