# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The space ledger: what each Pi image takes and may still take, the worst case of a file system, the refusal."""

from __future__ import annotations

import os

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic import read_mounts
from ansible_collections.pifleet.netboot.plugins.module_utils.common.sizes import MIB
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import space as _space

MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 22 8:2 / /srv/pifleet rw,relatime - xfs /dev/sdb1 rw
31 30 0:40 / /srv/pifleet/roots/mnt rw - tmpfs pifleet-points rw
32 22 8:3 / /srv/pifleet-old rw - ext4 /dev/sdc1 rw
"""


def sparse(path, size, written=0):
    with open(path, 'wb') as handle:
        handle.truncate(size)
        handle.write(b'\xa5' * written)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def test_mount_of_takes_the_longest_prefix(tmp_path):
    info = tmp_path / 'mountinfo'
    info.write_text(MOUNTINFO)
    mounts = read_mounts(str(info))
    assert _space.mount_of('/srv/pifleet/roots', mounts) == ('/srv/pifleet', 'xfs')
    assert _space.mount_of('/srv/pifleet-old/x', mounts) == ('/srv/pifleet-old', 'ext4')
    assert _space.mount_of('/home', mounts) == ('/', 'ext4')


def test_an_image_takes_what_it_wrote_and_may_take_the_rest(tmp_path):
    path = sparse(tmp_path / 'a.img', 64 * MIB, written=MIB)
    st = os.stat(path)
    usage = _space.image_usage(str(path), st, 'ext4')  # no reflink: everything allocated is its own
    assert usage['size'] == 64 * MIB and usage['allocated'] >= MIB and usage['exclusive'] == usage['allocated']
    assert usage['growth'] == 64 * MIB - usage['exclusive']
    # On a reflink file system the extent map says what is its own; an unshared file owns all it has.
    assert _space.exclusive_bytes(str(path)) in (None, usage['allocated'])


def test_claims_add_up_to_the_limit_and_the_refusal_says_how_to_fix_it(tmp_path):
    sparse(tmp_path / '0000000a.img', 100 * MIB)
    sparse(tmp_path / '0000000a.prev.img', 50 * MIB)  # a root kept for a rollback counts too
    (tmp_path / '0000000a.json').write_text('{}')  # markers and directories are not images
    (tmp_path / 'mnt.img').mkdir()
    ledger = _space.Ledger([str(tmp_path), str(tmp_path / 'missing')], overcommit=1.0)
    record = ledger.filesystem_of(str(tmp_path))
    assert record['images'] == 2 and record['growth'] >= 150 * MIB - 2 * MIB
    room = ledger.limit(record) - ledger.committed(record)
    ledger.claim(str(tmp_path), room - MIB, 'the root of Pi 0000000b')
    with pytest.raises(_space.SpaceError) as info:
        ledger.claim(str(tmp_path / 'not-yet'), 2 * MIB, 'the root of Pi 0000000c')
    msg = str(info.value)
    assert msg.startswith('not enough space on ') and 'for the root of Pi 0000000c (2 MiB at most)' in msg
    assert 'its 2 Pi image(s)' in msg and 'overcommit 1 allows' in msg and 'pifleet_overcommit' in msg
    [fs] = ledger.report()
    assert fs['images'] == 2 and fs['committed'] == fs['used'] + record['growth'] and fs['overcommit'] == 1.0
    assert fs['limit'] == int(fs['size'] - max(_space.SLACK_MIN, int(fs['size'] * _space.SLACK_SHARE)))


def test_planned_is_what_this_run_booked_per_file_system(tmp_path):
    """The pre-flight's numbers: only file systems this run books on, with the worst case before it, its claims,
    the limit and the free space now."""
    ledger = _space.Ledger([str(tmp_path)], overcommit=1.0)
    assert ledger.planned() == []  # nothing read, nothing booked
    sparse(tmp_path / '0000000a.img', 100 * MIB)
    ledger.scan()
    assert ledger.planned() == []  # images, but no claim
    ledger.claim(str(tmp_path), 30 * MIB, 'the root of Pi 0000000b')
    ledger.claim(str(tmp_path / 'new'), 5 * MIB, 'the root of Pi 0000000c')
    [fs] = ledger.planned()
    record = ledger.filesystem_of(str(tmp_path))
    assert fs == {'mount': record['mount'], 'fstype': record['fstype'],
                  'reflink': record['fstype'] in _space.REFLINK_FS, 'size': record['size'], 'free': record['free'],
                  'committed': record['used'] + record['growth'], 'claimed': 35 * MIB, 'limit': ledger.limit(record)}
    assert fs['committed'] >= 100 * MIB - 2 * MIB


def test_overcommit_scales_the_limit(tmp_path):
    one = _space.Ledger([str(tmp_path)], 1.0)
    three = _space.Ledger([str(tmp_path)], 3.0)
    assert three.limit(three.filesystem_of(str(tmp_path))) == pytest.approx(
        3 * one.limit(one.filesystem_of(str(tmp_path))), abs=3)


def test_usage_of_a_pi_without_an_image_or_mount(tmp_path):
    ledger = _space.Ledger([str(tmp_path)]).scan()
    assert ledger.usage(str(tmp_path / 'x.img'), str(tmp_path / 'nope')) == {
        'size': 0, 'allocated': 0, 'exclusive': 0, 'growth': 0, 'filesystem': None,
        'fs_size': None, 'fs_used': None, 'fs_free': None}
    assert ledger.usage(str(tmp_path / 'x.img'), str(tmp_path))['fs_size'] > 0  # statvfs of what is mounted there


def test_the_bakerys_root_file_system_is_refused_unless_allowed(tmp_path):
    assert _space.on_root_filesystem({'roots_dir': '/srv/new/roots'}, allowed=True) is None
    if os.stat(_space.existing('/srv/new/roots')).st_dev == os.stat('/').st_dev:
        msg = _space.on_root_filesystem({'roots_dir': '/srv/new/roots', 'store': None}, allowed=False)
        assert msg.startswith("roots_dir /srv/new/roots is on the bakery's root file system (/)")
        assert 'allow_root_filesystem: true' in msg
    assert _space.existing(str(tmp_path / 'a' / 'b')) == str(tmp_path)
