# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_root's main(): arguments and per-Pi failures, then a real lifecycle on a bakeform made by hand.

The bakeform here is a generation of a format-3 store built with mke2fs -d (no bakeform run; genstore
lays the generation out). Everything that
mounts (check mode looks at the golden image, every clone is loop-mounted) needs root and loop
devices and is skipped without them. Clones on real XFS, ext4 and btrfs file systems, reflinks and
kills are in tests/integration/test_pi_root.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess

import modrun
import pytest
from ansible.module_utils import basic
from ansible.module_utils.common.parameters import remove_values
from genstore import make_generation

from ansible_collections.pifleet.netboot.plugins.module_utils.common.loopfs import read_superblock, unit_name
from ansible_collections.pifleet.netboot.plugins.modules import pi_root

SHA = 'c' * 64
FSTAB = 'proc /proc proc defaults 0 0\nPARTUUID=5a1e0c3d-01 /boot/firmware vfat defaults 0 2\n' \
        'PARTUUID=5a1e0c3d-02 / ext4 defaults,noatime 0 1\n'
GOLDEN = {'etc/fstab': FSTAB, 'etc/hostname': 'raspberrypi\n', 'etc/hosts': '127.0.1.1\traspberrypi\n',
          'etc/machine-id': 'a' * 32 + '\n', 'home/pi/.profile': 'x\n',
          'etc/ssh/ssh_host_ed25519_key': 'golden private\n', 'etc/ssh/ssh_host_ed25519_key.pub': 'golden public\n'}
CAN_MOUNT = os.geteuid() == 0 and os.path.exists('/dev/loop-control') and bool(shutil.which('ssh-keygen'))
needs_mounts = pytest.mark.skipif(not CAN_MOUNT, reason='needs root, loop devices and ssh-keygen')


def make_bakeform(store, name, files=None, sha=SHA):
    return make_generation(store, name, files or GOLDEN, sha)


def write_manifest(dest, sha, store_format=2):
    (dest / 'manifest.json').write_text(json.dumps({'name': dest.name, 'format': store_format, 'sha256': sha}))


def mounts_below(path):
    with open('/proc/self/mountinfo', encoding='utf-8') as info:
        return [line.split()[4] for line in info if line.split()[4].startswith(str(path) + '/')]


def loops_below(path):
    out = subprocess.run(['losetup', '--list', '--noheadings', '--output', 'BACK-FILE'], capture_output=True,
                         text=True, check=False).stdout
    return [line.strip() for line in out.splitlines() if line.strip().startswith(str(path) + '/')]


@pytest.fixture
def lab(tmp_path):
    """A store holding bakeform 'bw'; roots, units and the lock live beside it. No mount outlives a test."""
    (tmp_path / 'store').mkdir()
    make_bakeform(tmp_path / 'store', 'bw')
    yield tmp_path
    left = mounts_below(tmp_path)
    for point in sorted(left, key=len, reverse=True):
        subprocess.run(['umount', '--lazy', point], check=False)
    if (tmp_path / 'roots/mnt').is_dir():  # immutable; a test that failed midway leaves it
        subprocess.run(['chattr', '-i', str(tmp_path / 'roots/mnt')], check=False)
    assert left == [], 'a test left mounts behind'
    assert loops_below(tmp_path) == [], 'a test left loop devices behind'


def args(lab, **extra):
    return dict({'bakeform': 'bw', 'store': str(lab / 'store'), 'roots_dir': str(lab / 'roots'),
                 'units_dir': str(lab / 'units'), 'lock_file': str(lab / 'pifleet.lock'),
                 'allow_root_filesystem': True}, **extra)  # the test's temp dirs may lie on /


INVALID = [
    ({}, 'one of the following is required: serial, pis'),
    ({'serial': '3a4b5c6d', 'pis': [{'serial': '01020304'}]}, 'mutually exclusive'),
    ({'serial': 'xyz'}, "invalid serial: serial 'xyz' is not a Pi serial"),
    ({'serial': '3a4b5c6d', 'hostname': 'Bad_Name'}, "hostname 'Bad_Name' is not valid"),
    ({'serial': '3a4b5c6d', 'boot_mount': 'nfs'}, 'boot_mount is nfs but all of the following are missing: nfs_server'),
    ({'pis': [{'serial': '3a4b5c6d', 'boot_mount': 'nfs'}]}, 'nfs_server is not set for Pi 3a4b5c6d'),
    ({'pis': [{'serial': '3a4b5c6d'}, {'serial': '100000003A4B5C6D'}]}, 'duplicate serials in pis: 3a4b5c6d'),
    ({'pis': [{'serial': '3a4b5c6d', 'hostname': 'pi'}, {'serial': '01020304', 'hostname': 'pi'}]},
     'duplicate hostnames in pis: pi'),
    ({'serial': '3a4b5c6d', 'bakeform': None}, 'no bakeform for Pi 3a4b5c6d'),
    ({'serial': '3a4b5c6d', 'clone_method': 'zfs'}, 'value of clone_method must be one of'),
    ({'serial': '3a4b5c6d', 'generation': 0}, 'generation 0 for Pi 3a4b5c6d is not a generation number'),
    ({'serial': '3a4b5c6d', 'principals': ['ok', 'a,b']}, "principals 'a,b' are not host names or addresses"),
    ({'serial': '3a4b5c6d', 'state': 'rolledback', 'identity': 'new'}, 'value of identity must be one of'),
    ({'pis': [{'serial': '3a4b5c6d', 'cloud_init': {'user_data': '{"packages": '}}]},
     'cloud_init.user_data for Pi 3a4b5c6d is not JSON text of a mapping'),
    ({'pis': [{'serial': '3a4b5c6d', 'cloud_init': {'user_data': '["htop"]'}}]},
     'cloud_init.user_data for Pi 3a4b5c6d must be a cloud-config mapping, not list'),
]


@pytest.mark.parametrize(('extra', 'message'), INVALID)
def test_invalid_arguments_fail_clearly_before_touching_anything(run_module, lab, extra, message):
    result = run_module(pi_root.main, args(lab, **extra))
    assert result.failed, result.result
    assert message in result.result['msg'] and not result.result.get('changed')
    assert sorted(os.listdir(lab)) == ['store']  # no roots dir, units or lock file


def test_cloud_init_user_data_given_as_text_stays_hidden_in_the_invocation(run_module, lab, monkeypatch):
    """The fleet role gives each Pi's user data as JSON text: the module's arguments keep that text, which no_log
    hides whole, so the invocation that -vvv prints holds none of it (a mapping made of it in the arguments would show
    each of its values), while the rest of the arguments stay readable."""
    secret = 'Sw0rdf1sh-cloud-token'
    seen = {}
    fail = basic.AnsibleModule.fail_json  # run_module's

    def recording(self, msg, **kwargs):
        seen['invocation'] = json.dumps(remove_values(self.params, self.no_log_values))  # as AnsibleModule does
        return fail(self, msg, **kwargs)

    monkeypatch.setattr(basic.AnsibleModule, 'fail_json', recording)
    text = json.dumps({'write_files': [{'path': '/etc/token', 'content': secret}], 'packages': ['htop']})
    result = run_module(pi_root.main, args(lab, bakeform='missing',
                                           pis=[{'serial': '3a4b5c6d', 'cloud_init': {'user_data': text}}]))
    assert result.failed and 'bakeform missing not found for Pi 3a4b5c6d' in result.result['msg'], result.result
    assert secret not in seen['invocation'] and 'htop' not in seen['invocation'], seen['invocation']
    assert '"serial": "3a4b5c6d"' in seen['invocation'] and 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER' in seen['invocation']


PER_PI = [
    ({'bakeform': '../etc'}, "bakeform name '../etc' is not valid: use lower-case"),
    ({'bakeform': 'missing'}, 'bakeform missing not found for Pi 3a4b5c6d'),
    ({'state': 'rolledback'}, 'there is no root to roll back'),
    ({'clone_method': 'snapshot'}, 'clone_method snapshot is no longer offered'),
]


@pytest.mark.parametrize(('extra', 'message'), PER_PI)
def test_a_pi_that_cannot_be_planned_fails_with_its_serial(run_module, lab, extra, message):
    for check_mode in (True, False):
        result = run_module(pi_root.main, args(lab, serial='3a4b5c6d', **extra), check_mode=check_mode)
        assert result.failed and message in result.result['msg'], result.result
        assert result.result['msg'].startswith('pi_root failed for 1 Pi(s): pi-3a4b5c6d: ')
        assert [(p['serial'], p['hostname']) for p in result.result['failed_pis']] == [('3a4b5c6d', 'pi-3a4b5c6d')]
        assert result.result['pis'] == [{'serial': '3a4b5c6d', 'hostname': 'pi-3a4b5c6d', 'changed': False,
                                         'action': 'failed', 'msg': result.result['pis'][0]['msg'], 'usage': {
                                             'size': 0, 'allocated': 0, 'exclusive': 0, 'growth': 0,
                                             'filesystem': None, 'fs_size': None, 'fs_used': None, 'fs_free': None}}]
        assert result.result['changed'] is False
    assert os.listdir(lab / 'roots') == []  # made (0700) by the real run, with nothing in it


def test_missing_or_older_bakeform_tells_how_to_fix(run_module, lab):
    result = run_module(pi_root.main, args(lab, serial='3a4b5c6d', bakeform='trixie'), check_mode=True)
    assert result.failed
    assert str(lab / 'store' / 'trixie') in result.result['msg']
    assert 'pifleet.netboot.bakeform (name: trixie' in result.result['msg']
    old = lab / 'store' / 'old'
    old.mkdir()
    write_manifest(old, SHA)  # a bakeform stored before generations: the bakeform module moves it
    result = run_module(pi_root.main, args(lab, serial='3a4b5c6d', bakeform='old'), check_mode=True)
    assert result.failed and 'run pifleet.netboot.bakeform for it once' in result.result['msg'], result.result
    result = run_module(pi_root.main, args(lab, serial='3a4b5c6d', generation=7), check_mode=True)
    assert result.failed and 'generation bw@7 not found for Pi 3a4b5c6d' in result.result['msg'], result.result
    assert result.result['failed_pis'] == [{'serial': '3a4b5c6d', 'hostname': 'pi-3a4b5c6d',
                                            'msg': result.result['pis'][0]['msg']}]


@needs_mounts
def test_check_mode_reports_and_writes_nothing(run_module, lab):
    result = run_module(pi_root.main, args(lab, pis=[{'serial': '3a4b5c6d', 'hostname': 'kitchen'},
                                                     {'serial': '100000000badcafe'}]), check_mode=True, diff=True)
    assert not result.failed, result.result
    assert result.result['changed'] is True
    pis = result.result['pis']
    assert [(p['serial'], p['hostname'], p['action'], p['changed'], p['clone_method']) for p in pis] == [
        ('3a4b5c6d', 'kitchen', 'cloned', True, 'copy'), ('0badcafe', 'pi-0badcafe', 'cloned', True, 'copy')]
    root, base = str(lab / 'roots/mnt/3a4b5c6d'), str(lab / 'roots/3a4b5c6d')
    assert (pis[0]['path'], pis[0]['image']) == (root, base + '.img')
    diffs = {d['after_header']: d for d in result.result['diff']}
    assert diffs[root + '/etc/fstab']['before'] == ''  # no root yet
    assert diffs[root + '/etc/fstab']['after'] == 'proc /proc proc defaults 0 0\n'  # read from the golden image
    assert diffs[root + '/etc/hostname']['after'] == 'kitchen\n'
    marker = json.loads(diffs[base + '.json']['after'])
    assert marker['bakeform_sha256'] == SHA and marker['hostname'] == 'kitchen' and marker['clone_method'] == 'copy'
    assert marker['generation'] == 1 and marker['host_keys'] == ['ssh-ed25519 (new)', 'ecdsa-sha2-nistp256 (new)']
    assert (pis[0]['generation'], pis[0]['label'], pis[0]['behind'], pis[0]['previous']) == (1, 'bw@1', False, None)
    assert sorted(os.listdir(lab)) == ['store']  # nothing made, no lock taken
    with open('/proc/self/mountinfo', encoding='utf-8') as info:  # the read-only look at the golden image is gone
        assert [line for line in info if '/golden-bw-1 ' in line] == []


def assert_identity_kept(kept, root):
    """The bakery's copy of a Pi's identity (0700, files 0600 root's) is the one in its root."""
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o700 and sorted(os.listdir(kept)) == [
        'machine-id', 'ssh_host_ecdsa_key', 'ssh_host_ecdsa_key.pub', 'ssh_host_ed25519_key',
        'ssh_host_ed25519_key.pub']
    for name in os.listdir(kept):
        assert (kept / name).read_bytes() == (root / 'etc' / ('ssh' if 'key' in name else '') / name).read_bytes()
        assert stat.S_IMODE(os.stat(kept / name).st_mode) == 0o600 and os.stat(kept / name).st_uid == 0


@needs_mounts
def test_copy_lifecycle(run_module, lab):
    base = args(lab, serial='3a4b5c6d', hostname='kitchen', clone_method='copy')
    roots, root, image = lab / 'roots', lab / 'roots/mnt/3a4b5c6d', str(lab / 'roots/3a4b5c6d.img')
    first = run_module(pi_root.main, base).result
    assert first['changed'] and first['pis'][0]['action'] == 'cloned' and first['pis'][0]['clone_method'] == 'copy'
    assert sorted(os.listdir(roots)) == ['3a4b5c6d.identity', '3a4b5c6d.img', '3a4b5c6d.json', 'mnt']  # no scratch
    assert stat.S_IMODE(os.stat(roots).st_mode) == 0o700 and stat.S_IMODE(os.stat(image).st_mode) == 0o600
    assert_identity_kept(roots / '3a4b5c6d.identity', root)
    assert mounts_below(roots) == [str(roots / 'mnt'), str(root)]  # the mount point lies on the points' tmpfs
    assert (root / 'etc/hostname').read_text() == 'kitchen\n'
    assert (root / 'home/pi/.profile').read_text() == 'x\n'
    assert (root / 'etc/ssh/ssh_host_ed25519_key').read_bytes() != b'golden private\n'
    assert (root / 'etc/ssh/ssh_host_ecdsa_key.pub').read_text().strip().endswith('root@kitchen')
    marker = json.loads((roots / '3a4b5c6d.json').read_text())
    assert marker['fs_uuid'] == read_superblock(image)['uuid']
    assert marker['fs_uuid'] != read_superblock(str(lab / 'store/bw/generations/1/root.img'))['uuid']
    assert marker['host_keys'] == first['pis'][0]['host_keys'] == [
        ' '.join((root / 'etc/ssh' / ('ssh_host_%s_key.pub' % kind)).read_text().split()[:2])
        for kind in ('ed25519', 'ecdsa')]
    unit = (lab / 'units' / unit_name(str(root))).read_text()
    assert 'What=%s' % image in unit and 'Where=%s' % root in unit
    assert os.path.islink(lab / 'units/local-fs.target.wants' / unit_name(str(root)))
    points = (lab / 'units' / unit_name(str(roots / 'mnt'))).read_text()
    assert 'What=pifleet-points' in points and 'Type=tmpfs' in points and 'Where=%s/mnt' % roots in points

    assert run_module(pi_root.main, base).result['changed'] is False
    renamed = run_module(pi_root.main, dict(base, hostname='garage'), check_mode=True, diff=True).result
    assert renamed['changed'] and renamed['pis'][0]['action'] == 'fixed'
    assert (root / 'etc/hostname').read_text() == 'kitchen\n'
    shown = {d['after_header'] for d in renamed['diff']}
    assert shown == {str(root) + '/etc/hostname', str(root) + '/etc/hosts', str(roots / '3a4b5c6d.json')}
    renamed = run_module(pi_root.main, dict(base, hostname='garage')).result
    assert renamed['pis'][0]['action'] == 'fixed' and (root / 'etc/hostname').read_text() == 'garage\n'

    # Unmounted behind its back (a reboot without the unit): mounted again, nothing else to do.
    subprocess.run(['umount', str(root)], check=True)
    remounted = run_module(pi_root.main, dict(base, hostname='garage')).result
    assert remounted['changed'] and remounted['pis'][0]['action'] == 'mounted'
    assert (root / 'etc/hostname').read_text() == 'garage\n' and mounts_below(roots) == [str(roots / 'mnt'), str(root)]

    assert make_bakeform(lab / 'store', 'bw', sha='d' * 64) == 2  # a new generation: the root stays on its own
    behind = run_module(pi_root.main, dict(base, hostname='garage')).result
    assert behind['changed'] is False and behind['warnings'] == [], behind
    pi = behind['pis'][0]
    assert (pi['action'], pi['generation'], pi['label'], pi['current_generation'], pi['behind']) == (
        'unchanged', 1, 'bw@1', 2, True)

    os.unlink(roots / '3a4b5c6d.json')
    foreign = run_module(pi_root.main, base)
    assert foreign.failed and '3a4b5c6d.json does not' in foreign.result['msg']

    gone = run_module(pi_root.main, dict(base, state='absent'), check_mode=True).result
    assert gone['changed'] and (roots / '3a4b5c6d.img').exists()
    gone = run_module(pi_root.main, dict(base, state='absent')).result
    assert gone['changed'] and gone['pis'][0]['action'] == 'removed'
    assert os.listdir(roots) == [] and mounts_below(roots) == []
    assert sorted(os.listdir(lab / 'units')) == ['local-fs.target.wants']
    assert os.listdir(lab / 'units/local-fs.target.wants') == []
    assert run_module(pi_root.main, dict(base, state='absent')).result['changed'] is False


@needs_mounts
def test_one_failing_pi_does_not_stop_the_others(run_module, lab):
    pis = [{'serial': '0000000a', 'bakeform': 'missing'}, {'serial': '0000000b'},
           {'serial': '0000000c', 'hostname': 'Bad'}]
    bad_name = run_module(pi_root.main, args(lab, pis=pis))
    assert bad_name.failed and "hostname 'Bad' is not valid" in bad_name.result['msg']  # validated up front
    pis[2]['hostname'] = 'good'
    result = run_module(pi_root.main, args(lab, pis=pis))
    assert result.failed and result.result['msg'].startswith('pi_root failed for 1 Pi(s): pi-0000000a: bakeform '
                                                             'missing')
    assert result.result['failed_pis'] == [{'serial': '0000000a', 'hostname': 'pi-0000000a',
                                            'msg': result.result['pis'][2]['msg']}]
    assert result.result['changed'] is True
    assert [(p['serial'], p['action']) for p in result.result['pis']] == [
        ('0000000b', 'cloned'), ('0000000c', 'cloned'), ('0000000a', 'failed')]
    assert (lab / 'roots/mnt/0000000c/etc/hostname').read_text() == 'good\n'
    run_module(pi_root.main, args(lab, pis=[{'serial': s, 'state': 'absent'} for s in ('0000000b', '0000000c')]))


@needs_mounts
def test_absent_never_touches_what_a_symlink_in_roots_dir_points_to(run_module, lab):
    (lab / 'roots').mkdir(mode=0o700)
    victim = lab / 'victim'
    (victim / 'etc').mkdir(parents=True)
    (victim / 'etc/hostname').write_text('precious\n')
    empty = lab / 'empty-victim'
    empty.mkdir()
    os.symlink(str(victim), lab / 'roots' / '3a4b5c6d')
    os.symlink(str(empty), lab / 'roots' / '0badcafe')
    pis = [{'serial': '3a4b5c6d', 'state': 'absent'}, {'serial': '0badcafe', 'state': 'absent'}]
    result = run_module(pi_root.main, args(lab, pis=pis))
    assert not result.failed, result.result
    assert (victim / 'etc/hostname').read_text() == 'precious\n' and empty.is_dir()
    again = run_module(pi_root.main, args(lab, pis=pis))
    assert again.result['changed'] is False, again.result  # the links are gone: nothing left to remove
    assert os.listdir(lab / 'roots') == []


@needs_mounts
def test_a_device_node_planted_by_one_pi_fails_or_fixes_that_pi_only(run_module, lab):
    pis = [{'serial': '0000000a'}, {'serial': '0000000b'}]
    assert not run_module(pi_root.main, args(lab, pis=pis)).failed
    hostname = lab / 'roots/mnt/0000000a/etc/hostname'
    os.unlink(hostname)
    os.mknod(hostname, stat.S_IFCHR | 0o644, os.makedev(1, 3))  # the Pi is root on its own root file system
    renamed = [dict(pi, hostname='renamed-%s' % pi['serial'][-1]) for pi in pis]
    result = run_module(pi_root.main, args(lab, pis=renamed))
    by_serial = {p['serial']: p for p in result.result['pis']}
    assert by_serial['0000000b']['action'] == 'fixed', result.result
    assert (lab / 'roots/mnt/0000000b/etc/hostname').read_text() == 'renamed-b\n'
    assert by_serial['0000000a']['action'] in ('fixed', 'failed'), result.result
    if by_serial['0000000a']['action'] == 'fixed':
        assert hostname.read_text() == 'renamed-a\n'
    run_module(pi_root.main, args(lab, pis=[dict(pi, state='absent') for pi in pis]))


def fill(path):
    """Write to ``path`` until its file system has not one block left (what a Pi can do to its own root)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b'\xff' * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        os.fsync(fd)
    finally:
        os.close(fd)


@needs_mounts
def test_a_pi_that_filled_its_root_fails_alone(run_module, lab):
    pis = [{'serial': '0000000a'}, {'serial': '0000000b'}]
    assert not run_module(pi_root.main, args(lab, pis=pis)).failed
    filler = lab / 'roots/mnt/0000000a/home/pi/filler'
    fill(filler)
    renamed = [dict(pi, hostname='renamed-%s' % pi['serial'][-1]) for pi in pis]
    result = run_module(pi_root.main, args(lab, pis=renamed))
    assert result.failed, result.result
    by_serial = {p['serial']: p for p in result.result['pis']}
    assert by_serial['0000000b']['action'] == 'fixed', result.result
    assert (lab / 'roots/mnt/0000000b/etc/hostname').read_text() == 'renamed-b\n'
    assert by_serial['0000000a']['action'] == 'failed' and 'No space left' in by_serial['0000000a']['msg']
    assert result.result['msg'].startswith('pi_root failed for 1 Pi(s): renamed-a: ')
    assert [p['serial'] for p in result.result['failed_pis']] == ['0000000a']
    os.unlink(filler)
    assert run_module(pi_root.main, args(lab, pis=renamed)).result['pis'][0]['action'] == 'fixed'
    run_module(pi_root.main, args(lab, pis=[dict(pi, state='absent') for pi in pis]))


@needs_mounts
def test_roots_dir_behind_a_symlink_converges(run_module, lab):
    (lab / 'real').mkdir()
    os.symlink(str(lab / 'real'), lab / 'linked')  # /srv -> /data/srv and the like
    for roots_dir in (str(lab / 'linked' / 'roots'), str(lab / 'real') + '//roots/.'):
        base = args(lab, serial='3a4b5c6d', roots_dir=roots_dir)
        assert run_module(pi_root.main, base).result['pis'][0]['action'] == 'cloned'
        again = run_module(pi_root.main, base).result
        assert again['changed'] is False and again['pis'][0]['action'] == 'unchanged', again
        points, root = str(lab / 'real/roots/mnt'), str(lab / 'real/roots/mnt/3a4b5c6d')
        assert mounts_below(lab / 'real') == [points, root]  # mounted once, not stacked
        units = sorted(os.listdir(lab / 'units'))
        assert units == sorted(['local-fs.target.wants', unit_name(points), unit_name(root)]), units
        assert run_module(pi_root.main, dict(base, state='absent')).result['changed'] is True
        assert mounts_below(lab / 'real') == []


@needs_mounts
def test_a_root_mounted_where_earlier_releases_did_moves_to_the_mount_points_tmpfs(run_module, lab):
    """Earlier releases mounted each root at roots/<serial>, on the data file system; the root moves, the old
    mount point, its unit and directory go, and the root was mounted at one place or the other all along."""
    base = args(lab, serial='3a4b5c6d', hostname='kitchen')
    roots, image = lab / 'roots', str(lab / 'roots/3a4b5c6d.img')
    assert run_module(pi_root.main, base).result['pis'][0]['action'] == 'cloned'
    old, new = roots / '3a4b5c6d', roots / 'mnt/3a4b5c6d'
    # What an earlier release left: the root mounted at roots/<serial> with its unit, nothing on the tmpfs.
    subprocess.run(['umount', str(new)], check=True)
    subprocess.run(['umount', str(roots / 'mnt')], check=True)
    for name in os.listdir(lab / 'units'):
        if name.endswith('.mount'):
            os.unlink(lab / 'units' / name)
            os.unlink(lab / 'units/local-fs.target.wants' / name)
    old.mkdir()
    subprocess.run(['mount', '-o', 'loop,nosuid,nodev', image, str(old)], check=True)
    old_unit = lab / 'units' / unit_name(str(old))
    old_unit.write_text('[Mount]\nWhat=%s\nWhere=%s\n' % (image, old))

    checked = run_module(pi_root.main, base, check_mode=True).result
    assert checked['changed'] and checked['pis'][0]['action'] == 'mounted' and os.path.ismount(old)
    moved = run_module(pi_root.main, base).result
    assert moved['changed'] and moved['pis'][0]['action'] == 'mounted', moved
    assert moved['pis'][0]['path'] == str(new) and (new / 'etc/hostname').read_text() == 'kitchen\n'
    assert mounts_below(roots) == [str(roots / 'mnt'), str(new)] and not os.path.lexists(old)
    assert not old_unit.exists() and (lab / 'units' / unit_name(str(new))).is_file()
    assert run_module(pi_root.main, base).result['changed'] is False
    run_module(pi_root.main, dict(base, state='absent'))
    assert os.listdir(roots) == []


@needs_mounts
def test_space_is_checked_before_a_root_is_made_and_reported_after(run_module, lab):
    base = args(lab, serial='3a4b5c6d', clone_method='copy')
    golden = os.stat(lab / 'store/bw/generations/1/root.img').st_size
    refused = run_module(pi_root.main, dict(base, overcommit=0.0001))
    assert refused.failed and refused.result['pis'][0]['action'] == 'failed'
    msg = refused.result['pis'][0]['msg']
    assert msg.startswith('not enough space on ') and 'for the root of Pi 3a4b5c6d' in msg, msg
    assert 'overcommit 0.0001 allows' in msg and 'pifleet_prune' in msg and 'pifleet_overcommit' in msg
    assert not (lab / 'roots/3a4b5c6d.img').exists()
    made = run_module(pi_root.main, base).result
    usage = made['pis'][0]['usage']
    assert usage['size'] == golden and 0 < usage['allocated'] <= golden and usage['exclusive'] == usage['allocated']
    assert usage['growth'] == golden - usage['exclusive'] and usage['fs_size'] > usage['fs_used'] > 0
    [fs] = made['filesystems']
    assert fs['images'] == 1 and fs['committed'] == fs['used'] + usage['growth'] and fs['overcommit'] == 1.0
    assert usage['filesystem'] == fs['mount'] and fs['size'] >= fs['used'] + fs['free'] - 1
    # A Pi that only keeps what it has is never refused, however full the file system is said to be.
    kept = run_module(pi_root.main, dict(base, overcommit=0.0001, hostname='renamed')).result
    assert kept['pis'][0]['action'] == 'fixed'
    run_module(pi_root.main, dict(base, state='absent'))


def test_the_roots_dir_or_store_on_the_bakerys_own_root_file_system_is_refused(run_module, lab, monkeypatch):
    """Here / stands for whichever file system holds the test's temp dir."""
    monkeypatch.setattr(os, 'stat', lambda path, _real=os.stat, **kw: _real(str(lab) if path == '/' else path, **kw))
    refused = run_module(pi_root.main, args(lab, serial='3a4b5c6d', allow_root_filesystem=False))
    assert refused.failed and not refused.result['changed']
    assert refused.result['msg'].startswith('roots_dir %s and store %s are on the bakery\'s root file system (/)'
                                            % (lab / 'roots', lab / 'store')), refused.result['msg']
    assert 'allow_root_filesystem: true' in refused.result['msg'] and not (lab / 'roots').exists()
    gone = run_module(pi_root.main, args(lab, serial='3a4b5c6d', state='absent', allow_root_filesystem=False))
    assert not gone.failed  # removing what is there is never refused


@pytest.mark.parametrize('given', ['text', 'mapping'])
def test_user_data_is_hidden_in_the_invocation_the_module_prints(tmp_path, given):
    """The real process's output (its invocation echoes the arguments): user data given as JSON text stays that
    text, hidden whole by no_log, never the parsed mapping whose values nobody hides; given as a mapping, each
    value is hidden. The Pi lacks a bakeform, so the call fails before it touches anything."""
    data = {'write_files': [{'path': '/etc/token', 'content': 'Sw0rdf1sh-token'}]}
    user_data = json.dumps(data) if given == 'text' else data
    result = modrun.run_module('pi_root', {
        'store': str(tmp_path / 'store'), 'roots_dir': str(tmp_path / 'roots'), 'lock_file': str(tmp_path / 'l'),
        'pis': [{'serial': '3a4b5c6d', 'cloud_init': {'user_data': user_data}}]})
    assert result.get('failed') and 'no bakeform for Pi 3a4b5c6d' in result['msg'], result
    shown = result['invocation']['module_args']['pis'][0]['cloud_init']['user_data']
    assert 'Sw0rdf1sh' not in json.dumps(result)
    hidden = 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER'
    assert shown == (hidden if given == 'text' else {'write_files': [{'path': hidden, 'content': hidden}]})


def test_user_data_that_is_no_mapping_is_refused(run_module, lab):
    refused = run_module(pi_root.main, args(lab, serial='3a4b5c6d', cloud_init={'user_data': 'not json'}))
    assert refused.failed and 'cloud_init.user_data for Pi 3a4b5c6d is not JSON text of a mapping' in \
        refused.result['msg'], refused.result
    assert 'not json' not in refused.result['msg']  # never quoted: it may hold secrets
