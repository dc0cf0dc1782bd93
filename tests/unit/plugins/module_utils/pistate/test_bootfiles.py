# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import bootfiles as bf

# The cmdline.txt of Raspberry Pi OS bookworm (2024-11 arm64 lite) as it comes off the image.
BOOKWORM = ('console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes '
            'rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot splash plymouth.ignore-serial-consoles\n')
NFS = 'root=/dev/nfs nfsroot=10.99.0.2:/srv/pifleet/roots/pi-01,vers=3 rw ip=dhcp rootwait network-config=disabled'

CMDLINES = [
    ('bookworm', BOOKWORM, None, 'console=serial0,115200 console=tty1 quiet ' + NFS),
    ('no cmdline.txt in the bakeform', None, None, 'console=serial0,115200 console=tty1 ' + NFS),
    ('empty cmdline.txt', '', None, NFS),
    ('extra appended', BOOKWORM, 'systemd.log_level=debug  net.ifnames=0',
     'console=serial0,115200 console=tty1 quiet ' + NFS + ' systemd.log_level=debug net.ifnames=0'),
    ('others kept, older resize init dropped',
     'console=serial0,115200 console=tty1 root=/dev/mmcblk0p2 rootfstype=ext4 elevator=deadline fsck.repair=yes '
     'rootwait cfg80211.ieee80211_regdom=GB init=/usr/lib/raspi-config/init_resize.sh resize',
     None, 'console=serial0,115200 console=tty1 elevator=deadline cfg80211.ieee80211_regdom=GB ' + NFS),
    ('an NFS cmdline already: not doubled',
     'console=tty1 root=/dev/nfs nfsroot=1.2.3.4:/old,vers=3 ro ip=dhcp rootwait', None, 'console=tty1 ' + NFS),
    ('Imager first-boot hooks dropped',
     'console=tty1 root=PARTUUID=1-02 quiet systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot '
     'plymouth.enable=0', None, 'console=tty1 quiet ' + NFS),
    ('multi-line file joined', 'console=tty1\nquiet\n', None, 'console=tty1 quiet ' + NFS),
    ('a network config for cloud-init replaced by ours',
     'console=tty1 network-config=e30K ds=nocloud', None, 'console=tty1 ds=nocloud ' + NFS),
]


@pytest.mark.parametrize(('base', 'extra', 'expected'), [c[1:] for c in CMDLINES], ids=[c[0] for c in CMDLINES])
def test_render_cmdline(base, extra, expected):
    rendered = bf.render_cmdline(base, '10.99.0.2:/srv/pifleet/roots/pi-01,vers=3', extra)
    assert rendered == expected + '\n'
    assert rendered.count('\n') == 1
    assert 'init=' not in rendered and 'proto=' not in rendered


NFSROOTS = [
    ('10.99.0.2:/srv/pifleet/roots/pi-01', '10.99.0.2:/srv/pifleet/roots/pi-01,vers=3,noacl'),
    ('bakery.lan:/r', 'bakery.lan:/r,vers=3,noacl'),
    ('10.99.0.2:/r,vers=3', '10.99.0.2:/r,vers=3,noacl'),
    ('10.99.0.2:/r,nfsvers=3,tcp', '10.99.0.2:/r,nfsvers=3,tcp,noacl'),
    ('10.99.0.2:/r,vers=2', '10.99.0.2:/r,vers=2,noacl'),
    ('10.99.0.2:/r,tcp,timeo=600', '10.99.0.2:/r,vers=3,tcp,timeo=600,noacl'),
    # NFSACL is off unless asked for: Ganesha's answers to it fill the Pi's journal with I/O errors.
    ('10.99.0.2:/r,acl', '10.99.0.2:/r,vers=3,acl'),
    ('10.99.0.2:/r,noacl,vers=3', '10.99.0.2:/r,noacl,vers=3'),
    ('10.99.0.2:/r,proto=tcp', 'rejects proto='),
    ('10.99.0.2:/r,vers=4', 'NFS 2 and 3 only'),
    ('10.99.0.2:/r,vers=4.2', 'NFS 2 and 3 only'),
    ('10.99.0.2:/r,nfsvers=4', 'NFS 2 and 3 only'),
    ('/srv/pifleet/roots/pi-01', 'give server:/path'),
    ('10.99.0.2:relative', 'give server:/path'),
    (':/r', 'give server:/path'),
    ('10.99.0.2:/r w', 'give server:/path'),
    ('', 'give server:/path'),
    (None, 'give server:/path'),
]


@pytest.mark.parametrize(('given', 'expected'), NFSROOTS)
def test_parse_nfsroot(given, expected):
    if expected.startswith(('10.', 'bakery')):
        assert bf.parse_nfsroot(given, 'pi-01') == expected
    else:
        with pytest.raises(bf.BootFilesError, match=expected) as info:
            bf.parse_nfsroot(given, 'pi-01')
        assert 'pi-01' in str(info.value)


CONFIGS = [
    ('no extra lines: none of ours', 'arm_64bit=1\n', [], None),
    ('no extra lines (None)', 'arm_64bit=1\n', None, None),
    ('appended block', 'arm_64bit=1\n[pi4]\narm_boost=1\n', ['dtoverlay=disable-wifi', 'gpu_mem=16'],
     'arm_64bit=1\n[pi4]\narm_boost=1\n\n# pifleet.netboot: pi-01\n[all]\ndtoverlay=disable-wifi\ngpu_mem=16\n'),
    ('base without final newline', 'arm_64bit=1', ['x=1'], 'arm_64bit=1\n\n# pifleet.netboot: pi-01\n[all]\nx=1\n'),
    ('no config.txt in the bakeform', None, ['x=1'], '# pifleet.netboot: pi-01\n[all]\nx=1\n'),
]


@pytest.mark.parametrize(('base', 'lines', 'expected'), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_render_config(base, lines, expected):
    assert bf.render_config(base, 'pi-01', lines) == expected


def test_config_line_breaks_refused():
    bf.check_config_lines(['a=1', 'b=2'], 'pi-01')
    with pytest.raises(bf.BootFilesError, match='line break'):
        bf.check_config_lines(['a=1\n[pi3]'], 'pi-01')


MODELS = [
    (5, ['3', '4'], 'pi-07 is a Pi 5 but bakeform raspios-2023 has boot files for Pi 3, 4 only; '
                    'pick a bakeform with kernel_2712.img'),
    (3, [4, 5], 'pick a bakeform with start.elf'),      # manifests may hold ints
    (4, [], 'has boot files for no Pi model'),
    (4, ['3', '4', '5'], None),
    (4, [4], None),
    (None, ['3'], None),                                # model not given: nothing to check
    (5, None, None),                                    # models unknown
]


@pytest.mark.parametrize(('model', 'models', 'expected'), MODELS)
def test_model_problem(model, models, expected):
    problem = bf.model_problem('pi-07', model, 'raspios-2023', models)
    if expected is None:
        assert problem is None
    else:
        assert expected in problem


def test_desired_files_and_plan():
    item = {'name': 'pi-01', 'prefix': '3a4b5c6d', 'bakeform': 'bw', 'nfsroot': '10.99.0.2:/r,vers=3',
            'cmdline_extra': None, 'config_txt': None}
    wanted = bf.desired_files(item, {bf.CMDLINE: BOOKWORM, bf.CONFIG: 'arm_64bit=1\n'})
    assert wanted[bf.CONFIG] is None
    marker = {'name': 'pi-01', 'prefix': '3a4b5c6d', 'bakeform': 'bw', 'generation': None}
    assert json.loads(wanted[bf.MARKER]) == marker
    labelled = bf.desired_files(item, {bf.CMDLINE: BOOKWORM}, 'bw@3')
    assert json.loads(labelled[bf.MARKER])['generation'] == 'bw@3'
    # A new folder: every file to write; config.txt is not there and must not be, so it is not planned.
    assert [(n, b) for n, b, _a in bf.plan_files({}, wanted)] == [(bf.MARKER, None), (bf.CMDLINE, None)]
    same = dict(wanted)
    assert bf.plan_files(same, wanted) == []
    stale = dict(wanted, **{bf.CONFIG: 'old\n'})
    assert bf.plan_files(stale, wanted) == [(bf.CONFIG, 'old\n', None)]


def test_json_object():
    assert bf.json_object('{"name": "pi-01"}') == {'name': 'pi-01'}
    for text in (None, '', 'not json', '[1]', '"x"'):
        assert bf.json_object(text) is None


def entry(prefix, name, state='present'):
    return {'prefix': prefix, 'name': name, 'state': state, 'dirs': ['/p/' + prefix, '/b/bw/boot']}


MERGES = [
    ('exclusive drops others', {'0000000a': {'name': 'old', 'dirs': []}}, True,
     [entry('0000000b', 'pi-b')], ['0000000b'], []),
    ('merge keeps others', {'0000000a': {'name': 'old', 'dirs': []}}, False,
     [entry('0000000b', 'pi-b')], ['0000000a', '0000000b'], []),
    ('absent removes its entry', {'0000000a': {'name': 'pi-a', 'dirs': []}, '0000000c': {'name': 'c', 'dirs': []}},
     False, [entry('0000000a', 'pi-a', 'absent')], ['0000000c'], []),
    ('a Pi that moved leaves its old prefix', {'0000000a': {'name': 'pi-a', 'dirs': []}}, False,
     [entry('0000000f', 'pi-a')], ['0000000f'], [('0000000a', 'pi-a')]),
    ('no map yet', None, False, [entry('0000000b', 'pi-b')], ['0000000b'], []),
    # A Pi that failed keeps the entries naming it, exactly, even exclusive and even under another prefix.
    ('keep, exclusive', {'0000000a': {'name': 'pi-a', 'dirs': ['/old']}, '0000000c': {'name': 'c', 'dirs': []}},
     True, [entry('0000000a', 'pi-a', 'keep'), entry('0000000b', 'pi-b')], ['0000000a', '0000000b'], []),
    ('keep under its old prefix', {'0000000a': {'name': 'pi-a', 'dirs': ['/old']}}, True,
     [entry('0000000f', 'pi-a', 'keep')], ['0000000a'], []),
    ('keep a Pi that had none', {}, True, [entry('0000000a', 'pi-a', 'keep')], [], []),
    ('a present Pi takes the prefix a kept one had', {'0000000a': {'name': 'pi-a', 'dirs': ['/old']}}, True,
     [entry('0000000f', 'pi-a', 'keep'), entry('0000000a', 'pi-b')], ['0000000a'], []),
]


@pytest.mark.parametrize(('existing', 'exclusive', 'items', 'prefixes', 'moved'), [m[1:] for m in MERGES],
                         ids=[m[0] for m in MERGES])
def test_merge_entries(existing, exclusive, items, prefixes, moved):
    entries, gone = bf.merge_entries(existing, items, exclusive)
    assert sorted(entries) == prefixes
    assert gone == moved
    for item in items:
        if item['state'] == 'present':
            assert entries[item['prefix']] == {'name': item['name'], 'dirs': item['dirs']}
    for prefix, kept in (existing or {}).items():
        if any(item['state'] == 'keep' and item['name'] == kept['name'] for item in items) and \
                not any(item['state'] == 'present' and item['prefix'] == prefix for item in items):
            assert entries[prefix] is kept or entries[prefix] == kept


def test_map_format():
    fleet = bf.build_map(['/srv/pifleet/bakeforms/bw/boot'], {
        'dc-a6-32-01-36-c2': {'name': 'pi-02', 'dirs': ['/srv/pifleet/pis/dc-a6-32-01-36-c2', '/b']},
        '1234abcd': {'name': 'pi-01', 'dirs': ['/srv/pifleet/pis/1234abcd', '/b']}})
    text = bf.render_map(fleet)
    assert json.loads(text) == {'version': 1, 'default': ['/srv/pifleet/bakeforms/bw/boot'], 'prefixes': {
        'dc-a6-32-01-36-c2': {'name': 'pi-02', 'dirs': ['/srv/pifleet/pis/dc-a6-32-01-36-c2', '/b']},
        '1234abcd': {'name': 'pi-01', 'dirs': ['/srv/pifleet/pis/1234abcd', '/b']}}}
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=1) + '\n'
    assert text.index('"1234abcd"') < text.index('"dc-a6')  # sorted: stable bytes, no spurious rewrites
    assert bf.read_map(text) == fleet
    for bad in (None, 'x', '[]', '{"version": 1}', '{"prefixes": []}'):
        assert bf.read_map(bad) is None


@pytest.mark.parametrize(('count', 'length'), [(0, 0), (50, 50), (51, 51), (1200, 51)])
def test_cap_diffs(count, length):
    diffs = [{'before': '', 'after': str(i), 'before_header': str(i), 'after_header': str(i)} for i in range(count)]
    capped = bf.cap_diffs(diffs)
    assert len(capped) == length
    if count > 50:
        assert capped[-1]['after_header'] == 'and %d more files' % (count - 50)
        assert capped[:50] == diffs[:50]
    else:
        assert capped == diffs
