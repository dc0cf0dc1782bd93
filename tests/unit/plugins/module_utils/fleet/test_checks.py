# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""fleet.checks: the inventory's mistakes named before any work, each with its fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import checks

KNOWN = frozenset(('pi_serial', 'pi_mac', 'pi_disks', 'pi_ip', 'pi_model', 'pi_power', 'pi_bakery', 'pi_hostname'))
ZERO = 'sha256:' + '0' * 64
GOOD = 'sha256:' + '62d025b9bc7ca0e1facfec74ae56ac13978b6745c58177f081d39fbb8041ed45'


def found(function, *args):
    problems = []
    result = function(*args, problems)
    return result, problems


@pytest.mark.parametrize('key, expected', [
    ('pi_disk', 'pi-01: pi_disk is not a variable of pifleet.netboot, did you mean pi_disks?'),
    ('pi_seriel', 'pi-01: pi_seriel is not a variable of pifleet.netboot, did you mean pi_serial?'),
    ('pi_zzz', 'pi-01: pi_zzz is not a variable of pifleet.netboot, the known ones are pi_bakery, pi_disks'),
])
def test_unknown_pi_keys_name_the_closest_known_one(key, expected):
    _unused, problems = found(checks.unknown_keys, 'pi-01', ['pi_serial', key, 'ansible_host', 'lab_boot'], KNOWN)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize('text, key, shown', [
    ('pi_serial: 00123456', 'pi_serial', 'quote it: pi_serial: "00123456"'),  # YAML 1.1 octal: 42798
    ('pi_serial: 12345678', 'pi_serial', 'quote it: pi_serial: "12345678"'),
    ('pi_serial: 1000000012345678', 'pi_serial', 'quote it: pi_serial: "1000000012345678"'),
    ('pi_mac: 12:34:56:01:02:03', 'pi_mac', 'quote it: pi_mac: "12:34:56:01:02:03"'),  # YAML 1.1 base 60
    ('pi_tftp_prefix: 0017', 'pi_tftp_prefix', 'quote it: pi_tftp_prefix: "00000017"'),
])
def test_a_value_yaml_made_a_number_says_quote_it(text, key, shown):
    hv = yaml.safe_load(text)  # PyYAML reads YAML 1.1, as Ansible does
    assert isinstance(hv[key], int)
    keys, problems = found(checks.numbers, 'pi-07', hv)
    assert keys == [key] and len(problems) == 1, problems
    assert problems[0].startswith('pi-07: %s is the number %d, not text' % (key, hv[key])) and shown in problems[0]


def test_quoted_values_are_text():
    assert found(checks.numbers, 'pi-07', yaml.safe_load('{pi_serial: "00123456", pi_mac: "12:34:56:01:02:03"}')) == (
        [], [])


@pytest.mark.parametrize('size, expected', [
    ('32G', 32 << 30), ('32 G', 32 << 30), ('32GB', 32 << 30), ('1.5T', 3 << 39), ('512M', 512 << 20), (4096, 4096),
    ('64m', 64 << 20),
])
def test_disk_sizes_are_read_as_ansible_reads_them(size, expected):
    disks, problems = found(checks.disks, 'pi-02', [{'name': 'data', 'size': size}])
    assert problems == [] and disks == [{'name': 'data', 'size': expected, 'fstype': 'none'}]


@pytest.mark.parametrize('size', ['32 gigs', '-5G', '0', 'G', '', True, [32], '8GiB', '5 KiB'])
def test_bad_sizes_are_refused_with_the_accepted_forms(size):
    _unused, problems = found(checks.disks, 'pi-02', [{'name': 'data', 'size': size, 'fstype': 'ext4'}])
    assert len(problems) == 1, problems
    assert problems[0].startswith('pi-02: disk data: size') and 'K, M, G, T' in problems[0] and '"32G"' in problems[0]


@pytest.mark.parametrize('disk, expected', [
    ({'name': 'data', 'size': '4M', 'fstype': 'ext4'}, 'pi-02: disk data: size 4 MiB (4194304 bytes) is too small for '
                                                       'ext4, which needs at least 8 MiB'),
    ({'name': 'data', 'size': '4G', 'fstype': 'xfs'}, "pi-02: disk data: fstype 'xfs' is not one of none, ext4"),
    ({'name': 'Data!', 'size': '4G'}, "pi-02: disk 1 of pi_disks: disk name 'Data!' is not valid"),
    ({'size': '4G'}, 'pi-02: disk 1 of pi_disks: name missing'),
    ({'name': 'data', 'size': '4G', 'fs_type': 'ext4'}, 'pi-02: disk 1 of pi_disks: fs_type is not a key of a disk, '
                                                        'did you mean fstype?'),
    ('data', "pi-02: disk 1 of pi_disks must be a mapping {name, size, fstype}, not 'data'"),
])
def test_each_disk_problem_is_named(disk, expected):
    _unused, problems = found(checks.disks, 'pi-02', [disk])
    assert any(problem.startswith(expected) for problem in problems), problems


def test_a_disk_name_twice():
    _unused, problems = found(checks.disks, 'pi-02', [{'name': 'data', 'size': '1G'}, {'name': 'data', 'size': '2G'}])
    assert problems == ['pi-02: disk data is in pi_disks more than once; give each disk a name of its own']


@pytest.mark.parametrize('item, expected', [
    ({'name': 'lite', 'url': 'https://x/lite.img.xz', 'checksum': ZERO}, 'is the all-zero placeholder'),
    ({'name': 'lite', 'url': 'https://x/lite.img.xz', 'checksum': 'sha256:abc'}, 'is not of the form'),
    ({'name': 'lite', 'url': 'https://x/lite.img.xz', 'checksum': GOOD.replace('sha256', 'md5')}, 'is not of the form'),
    ({'name': 'lite', 'url': 'https://x/lite.img.xz'}, 'a download needs checksum'),
    ({'name': 'lite', 'src': '/a.img', 'url': 'https://x/lite.img.xz', 'checksum': GOOD}, 'needs one source'),
    ({'name': 'lite'}, 'needs one source'),
    ({'name': 'Lite', 'src': '/a.img'}, "bakeform name 'Lite' is not valid"),
    ({'name': 'lite', 'src': '/a.img', 'checksum': ZERO}, 'is the all-zero placeholder'),
    ({'name': 'lite', 'src': '/a.img', 'chksum': GOOD}, 'chksum is not a key of a bakeform, did you mean checksum?'),
    ({'src': '/a.img'}, 'pifleet_bakeforms: item 1 needs a name'),
])
def test_each_bakeform_problem_is_named(item, expected):
    _unused, problems = found(checks.bakeforms, [item])
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize('checksum', [GOOD, GOOD.upper().replace('SHA256', 'sha256'),
                                      'sha256:https://downloads.example.org/images/lite.img.xz.sha256',
                                      'sha256:http://mirror.example.org/SHA256SUMS'])
def test_good_checksums_and_checksum_urls(checksum):
    declared, problems = found(checks.bakeforms, [{'name': 'lite', 'url': 'https://x/l.img.xz', 'checksum': checksum,
                                                   'models': ['4', 5]}])
    assert problems == [] and declared == {'lite': [4, 5]}


def test_the_example_inventorys_bakeforms_pass():
    """What the collection ships must pass the check it makes."""
    repo = Path(__file__).resolve().parents[5]
    items = yaml.safe_load((repo / 'inventories/example/group_vars/bakery.yml').read_text())['pifleet_bakeforms']
    assert found(checks.bakeforms, items)[1] == []
