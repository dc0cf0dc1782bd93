# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_exports: client and option validation, both file formats round-tripping, ids, the include line."""

from __future__ import annotations

import os

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import exports as ex
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.exports import ExportsError

pytestmark = pytest.mark.skipif(not ex.HAS_NETADDR, reason='netaddr is not installed')

CLIENTS = [
    ('10.99.20.50', '10.99.20.50'),
    (' 10.99.20.50 ', '10.99.20.50'),
    ('10.99.20.0/24', '10.99.20.0/24'),
    ('10.99.20.7/24', '10.99.20.0/24'),
    ('10.99.20.50/32', '10.99.20.50/32'),
    ('FE80:0:0::1', 'fe80::1'),
    ('fd00::/64', 'fd00::/64'),
    ('Pi-A.lan', 'pi-a.lan'),
    ('bakery', 'bakery'),
]


@pytest.mark.parametrize(('client', 'normal'), CLIENTS)
def test_valid_clients_are_normalised(client, normal):
    assert ex.normalise_client(client, '/srv/r') == normal


BAD_CLIENTS = [
    ('*', 'exports to the world'),
    ('0.0.0.0/0', 'exports to the world'),
    ('0.0.0.0/00', 'exports to the world'),
    ('::/0', 'exports to the world'),
    ('10.0.0.0/0', 'exports to the world'),
    ('*.lan', 'exports to the world'),
    ('pi-?.lan', 'exports to the world'),
    ('10.99.20.50 (rw)', 'a space before "(" exports to the whole world'),
    ('10.99.20.50(rw)', 'without spaces or options'),
    ('pi a', 'without spaces'),
    ('', 'is not valid'),
    ('pi\nb', 'is not valid'),
    ('10.99.20.256', 'not a valid IP address'),
    ('10.99.20', 'not a valid IP address'),
    ('10.99.20.0/33', 'no valid prefix length'),
    ('10.99.20.0/255.255.255.0', 'no valid prefix length'),
    ('fe80::1%eth0', 'not a valid IP address'),
    ('-pi.lan', 'neither an IP address'),
    ('pi_a.lan', 'neither an IP address'),
    ('a' * 64 + '.lan', 'neither an IP address'),
    ('@pis', 'netgroups'),
]


@pytest.mark.parametrize(('client', 'message'), BAD_CLIENTS)
def test_bad_or_world_clients_are_refused(client, message):
    with pytest.raises(ExportsError, match=r'client .* of export /srv/r') as info:
        ex.normalise_client(client, '/srv/r')
    assert message in str(info.value)


@pytest.mark.parametrize(('client', 'normal'), [('*', '*'), ('0.0.0.0/0', '*'), ('::/0', '*'), ('*.lan', '*.lan')])
def test_world_only_with_allow_world(client, normal):
    assert ex.normalise_client(client, '/srv/r', allow_world=True) == normal


def test_spaces_are_refused_even_with_allow_world():
    with pytest.raises(ExportsError, match='without spaces'):
        ex.normalise_client('host (rw)', '/srv/r', allow_world=True)


def test_is_network():
    assert ex.is_network('10.0.0.0/24') and ex.is_network('*') and ex.is_network('*.lan')
    assert not ex.is_network('10.0.0.5') and not ex.is_network('10.0.0.5/32') and not ex.is_network('pi.lan')


GOOD_OPTIONS = [
    (['rw', 'sync', 'no_subtree_check', 'no_root_squash'], 'kernel', ['rw', 'sync', 'no_subtree_check',
                                                                      'no_root_squash']),
    (['ro', 'ro', ' async '], 'kernel', ['ro', 'async']),
    (['rw', 'anonuid=65534', 'anongid=0', 'fsid=root', 'sec=sys:krb5p', 'crossmnt', 'mountpoint=/srv'], 'kernel',
     ['rw', 'anonuid=65534', 'anongid=0', 'fsid=root', 'sec=sys:krb5p', 'crossmnt', 'mountpoint=/srv']),
    (['fsid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0', 'mp'], 'kernel',
     ['fsid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0', 'mp']),
    (['rw', 'sync', 'no_subtree_check', 'no_root_squash'], 'ganesha', ['rw', 'sync', 'no_subtree_check',
                                                                       'no_root_squash']),
    (['ro', 'all_squash', 'anonuid=1000', 'anongid=1000', 'sec=sys'], 'ganesha',
     ['ro', 'all_squash', 'anonuid=1000', 'anongid=1000', 'sec=sys']),
]


@pytest.mark.parametrize(('options', 'backend', 'normal'), GOOD_OPTIONS)
def test_valid_options(options, backend, normal):
    spans = any(option in ex.SPANNING for option in options)
    assert ex.normalise_options(options, '/srv/r', backend, allow_shared=spans) == normal
    if spans:  # an export reaching into other file systems only when that risk is accepted
        with pytest.raises(ex.ExportsError, match='extends the export into the file systems mounted below it'):
            ex.normalise_options(options, '/srv/r', backend)


@pytest.mark.parametrize(('roots', 'path', 'message'), [
    ({'/': '/', '/srv/roots/a': '/'}, '/srv/roots/a', None),
    ({'/': '/', '/srv': '/'}, '/srv/roots/a', 'a directory inside the file system of /srv'),
    ({'/': '/'}, '/srv/roots/a', 'a directory inside the file system of /:'),
    ({'/': '/', '/srv/roots/a': '/data/a'}, '/srv/roots/a', 'a bind mount of /data/a of another file system'),
])
def test_an_export_must_be_the_top_of_a_file_system(roots, path, message):
    if message is None:
        ex.check_own_filesystem(path, roots)
    else:
        with pytest.raises(ex.ExportsError, match=message):
            ex.check_own_filesystem(path, roots)


@pytest.mark.parametrize(('current', 'wanted', 'bounced'), [
    ({'/a': {'fs': '1:2'}}, {'/a': {'fs': '1:2'}}, []),
    ({'/a': {'fs': '1:2'}}, {'/a': {'fs': '9:2'}}, ['/a']),
    ({'/a': {}}, {'/a': {'fs': '9:2'}}, []),  # a file written before file systems were recorded
    ({}, {'/a': {'fs': '9:2'}}, []),
    ({'/a': {'fs': '1:2'}, '/b': {'fs': '3:2'}}, {'/a': {'fs': '1:2'}, '/b': {'fs': '4:2'}}, ['/b']),
])
def test_bounced_are_the_exports_whose_file_system_changed(current, wanted, bounced):
    assert ex.bounced(current, wanted) == bounced


def test_a_file_system_exported_under_a_new_path_is_bounced_too():
    """A mount point moved (roots/<serial> to roots/mnt/<serial>): the old export goes before the new one comes."""
    current = {'/r/a': {'fs': '1:2'}, '/r/b': {'fs': '3:2'}}
    wanted = {'/r/mnt/a': {'fs': '1:2'}, '/r/b': {'fs': '3:2'}, '/r/mnt/c': {'fs': '5:2'}}
    assert ex.bounced(current, wanted) == ['/r/mnt/a']
    assert ex.bounced(current, dict(wanted, **{'/r/a': {'fs': '1:2'}})) == []  # the old one stays: no move


@pytest.mark.parametrize('render, parse', [(ex.render_kernel, ex.parse_kernel), (ex.render_ganesha, None)])
def test_the_file_system_note_round_trips(render, parse):
    entries = {'/srv/r/a': {'path': '/srv/r/a', 'clients': ['10.0.0.5'], 'options': ['rw'], 'fs': 'beef:2'},
               '/srv/r/b': {'path': '/srv/r/b', 'clients': ['10.0.0.6'], 'options': ['ro']}}
    if parse is None:
        text = render(entries, {'/srv/r/a': 100, '/srv/r/b': 101})
        parsed, _ids = ex.parse_ganesha(text)
    else:
        parsed, _strange = parse(render(entries))
    assert parsed == entries


BAD_OPTIONS = [
    ([], 'kernel', 'are empty'),
    (['rw', 'ro'], 'kernel', 'rw and ro of export /srv/r contradict'),
    (['sync', 'async'], 'kernel', 'contradict'),
    (['rw,sync'], 'kernel', 'one exports(5) option per list item'),
    (['rw sync'], 'kernel', 'one exports(5) option per list item'),
    (['no_root_sqash'], 'kernel', 'unknown to exports(5)'),
    (['rw=1'], 'kernel', 'unknown to exports(5)'),
    (['refer=/a@b'], 'kernel', 'unknown to exports(5) or not supported'),
    (['anonuid'], 'kernel', 'needs a value'),
    (['anonuid=-1'], 'kernel', 'bad value'),
    (['anonuid=4294967296'], 'kernel', 'bad value'),
    (['fsid=abc'], 'kernel', 'bad value'),
    (['sec=sys:none'], 'kernel', 'bad value'),
    (['mountpoint=rel'], 'kernel', 'bad value'),
    (['anonuid=1', 'anonuid=2'], 'kernel', 'given twice'),
    (['async'], 'ganesha', 'option async of export /srv/r cannot be expressed for NFS-Ganesha'),
    (['sec=krb5'], 'ganesha', 'cannot be expressed'),
    (['fsid=1'], 'ganesha', 'cannot be expressed'),
    (['crossmnt'], 'ganesha', 'cannot be expressed'),
]


@pytest.mark.parametrize(('options', 'backend', 'message'), BAD_OPTIONS)
def test_bad_options_are_refused(options, backend, message):
    with pytest.raises(ExportsError) as info:
        ex.normalise_options(options, '/srv/r', backend)
    assert message in str(info.value)


def test_check_path(tmp_path):
    ex.check_path(str(tmp_path))
    ex.check_path('/nonexistent/pi', must_exist=False)
    for path, message in [('relative/x', 'must be absolute'), ('/srv/a\nb', 'newline'), ('/srv/a/', 'normalised'),
                          ('/srv/../etc', 'normalised'), (str(tmp_path / 'nope'), 'not a directory')]:
        with pytest.raises(ExportsError, match='path') as info:
            ex.check_path(path)
        assert message in str(info.value)
    with pytest.raises(ExportsError, match='holds "'):
        ex.check_ganesha_path('/srv/a"b')


ENTRIES = {
    '/srv/roots/pi a': {'path': '/srv/roots/pi a', 'clients': ['10.0.0.5'], 'options': ['rw', 'no_root_squash']},
    '/srv/boot': {'path': '/srv/boot', 'clients': ['10.0.0.5', 'fd00::/64', 'pi-b.lan'],
                  'options': ['ro', 'sync']},
    '/srv/x#\\y': {'path': '/srv/x#\\y', 'clients': ['10.0.0.6'], 'options': ['ro', 'anonuid=7', 'all_squash']},
}


def test_kernel_file_renders_sorted_and_parses_back():
    text = ex.render_kernel(ENTRIES)
    assert text.splitlines() == [
        ex.HEADER,
        '/srv/boot 10.0.0.5(ro,sync) fd00::/64(ro,sync) pi-b.lan(ro,sync)',
        '/srv/roots/pi\\040a 10.0.0.5(rw,no_root_squash)',
        '/srv/x\\043\\134y 10.0.0.6(ro,anonuid=7,all_squash)',
    ]
    assert ex.parse_kernel(text) == (ENTRIES, [])


def test_kernel_parse_reports_lines_it_cannot_take():
    text = '/a 10.0.0.1(rw)\n/b 10.0.0.1 (rw)\n/c h1(rw) h2(ro)\n/a 10.0.0.2(rw)\n# note\n\n'
    entries, strange = ex.parse_kernel(text)
    assert list(entries) == ['/a']
    assert strange == ['/b 10.0.0.1 (rw)', '/c h1(rw) h2(ro)', '/a 10.0.0.2(rw)']


def test_ganesha_file_renders_and_parses_back():
    ids = {'/srv/boot': 100, '/srv/roots/pi a': 101, '/srv/x#\\y': 105}
    text = ex.render_ganesha(ENTRIES, ids)
    assert ex.parse_ganesha(text) == (ENTRIES, ids)
    block = text[text.index('Export_Id = 101'):]
    block = block[:block.index('\n}')]
    assert 'Path = "/srv/roots/pi a";' in block and 'Pseudo = "/srv/roots/pi a";' in block
    assert 'Squash = No_Root_Squash;' in block and 'Access_Type = RW;' in block and 'Clients = 10.0.0.5;' in block
    assert 'Access_Type = None;' in block and 'SecType = sys;' in block and 'Name = VFS;' in block
    squashed = text[text.index('Export_Id = 105'):]
    assert 'Squash = All_Squash;' in squashed and 'Anonymous_Uid = 7;' in squashed and 'Access_Type = RO;' in squashed


def test_ganesha_settings_follow_exports_defaults():
    assert ex.ganesha_settings(['sync']) == ('RO', 'Root_Squash', None, None)
    assert ex.ganesha_settings(['rw', 'root_squash', 'anongid=5']) == ('RW', 'Root_Squash', None, '5')


def test_ganesha_parse_without_options_comment_derives_access():
    text = 'EXPORT {\n    Export_Id = 7;\n    Path = "/p";\n    CLIENT {\n        Clients = a, b;\n' \
           '        Access_Type = RW;\n    }\n}\n'
    assert ex.parse_ganesha(text) == ({'/p': {'path': '/p', 'clients': ['a', 'b'], 'options': ['rw']}}, {'/p': 7})


def test_export_ids_stay_and_new_ones_fill_gaps_from_100():
    assert ex.assign_ids(['/a', '/b', '/c', '/d'], {'/b': 100, '/c': 102}, set()) == {
        '/a': 101, '/b': 100, '/c': 102, '/d': 103}
    # An id the user's own config took meanwhile is given up; ids below 100 are never handed out.
    assert ex.assign_ids(['/a', '/b'], {'/a': 100}, {100, 101, 1}) == {'/a': 102, '/b': 103}
    # A path that replaces another (a mount point moved) never gets its id in the same write.
    assert ex.assign_ids(['/srv/roots/mnt/a'], {'/srv/roots/a': 100}, set()) == {'/srv/roots/mnt/a': 101}


def test_used_export_ids_ignores_comments():
    config = 'EXPORT {\n  Export_Id = 1;\n}\n# Export_Id = 2;\nEXPORT{export_id=77;}\n'
    assert ex.used_export_ids(config) == {1, 77}


def test_include_line_is_appended_once():
    config = '# mine\nNFS_CORE_PARAM { Bind_addr = 10.0.0.2; }'
    new = ex.add_include(config, '/etc/ganesha/pifleet.conf')
    assert new == config + '\n%include "/etc/ganesha/pifleet.conf"\n'
    assert ex.has_include(new, '/etc/ganesha/pifleet.conf')
    assert ex.has_include('  %include /etc/ganesha/pifleet.conf\n', '/etc/ganesha/pifleet.conf')
    assert not ex.has_include('#%include "/etc/ganesha/pifleet.conf"\n', '/etc/ganesha/pifleet.conf')
    assert not ex.has_include(new, '/etc/ganesha/pifleet.conf.bak')


def test_merge():
    current = {'/a': {'path': '/a', 'clients': ['h'], 'options': ['ro']},
               '/b': {'path': '/b', 'clients': ['h'], 'options': ['ro']}}
    items = [{'path': '/b', 'state': 'absent'}, {'path': '/c', 'state': 'present', 'clients': ['x'], 'options': ['rw']}]
    assert sorted(ex.merge(current, items, exclusive=False)) == ['/a', '/c']
    assert sorted(ex.merge(current, items, exclusive=True)) == ['/c']
    assert sorted(current) == ['/a', '/b']


def test_read_config_reads_as_open_did(tmp_path):
    target = tmp_path / 'ganesha.conf'
    assert ex.read_config(str(target)) is None
    target.write_bytes(b'EXPORT {\r\n}\r\n')
    assert ex.read_config(str(target)) == 'EXPORT {\n}\n'
    target.write_bytes(b'\xff\n')
    with pytest.raises(UnicodeDecodeError):
        ex.read_config(str(target))


def test_ganesha_pid(tmp_path):
    pidfile = tmp_path / 'ganesha.pid'
    assert ex.ganesha_pid(str(pidfile)) is None
    pidfile.write_text('%d\n' % os.getpid())  # a live process, but not ganesha.nfsd
    assert ex.ganesha_pid(str(pidfile)) is None
    pidfile.write_text('garbage')
    assert ex.ganesha_pid(str(pidfile)) is None
