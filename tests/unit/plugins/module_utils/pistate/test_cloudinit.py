# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
import yaml

from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.cloudinit import (
    SEED_DIR,
    CloudInitError,
    check_user_data,
    instance_id,
    load_user_data,
    render_seed,
)

KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk0b3 admin@bakery'


def seed(*args, **kwargs):
    """The rendered seed, each file parsed as the YAML cloud-init reads."""
    files = render_seed(*args, **kwargs)
    assert sorted(files) == ['%s/%s' % (SEED_DIR, name) for name in ('meta-data', 'network-config', 'user-data')]
    return {path.rsplit('/', 1)[1]: yaml.safe_load(text) for path, text in files.items()}, files


def test_seed_carries_identity_keys_and_leaves_the_network_alone():
    parsed, files = seed('10000001', 'pi-06', [KEY, '  ', ''])
    assert parsed['meta-data'] == {'instance-id': 'pifleet-10000001', 'local-hostname': 'pi-06'}
    assert files['%s/user-data' % SEED_DIR].startswith('#cloud-config\n')
    user = parsed['user-data']
    assert user['hostname'] == 'pi-06' and user['preserve_hostname'] is False
    assert user['users'] == [{'name': 'root', 'ssh_authorized_keys': [KEY]}]
    # Root is how the collection reaches the Pi; the host keys are the ones pi_root made.
    assert user['disable_root'] is False and user['ssh_deletekeys'] is False
    # ... and the only ones: cloud-init makes no key of a type pi_root did not (its default makes an RSA key).
    assert user['ssh_genkeytypes'] == []
    # An NFS root has no partition or file system of its own to grow (cloud-init warned on every first boot).
    assert user['growpart'] == {'mode': 'off'} and user['resize_rootfs'] is False
    assert parsed['network-config'] == {'network': {'config': 'disabled'}}


def test_seed_is_stable_text():
    assert render_seed('10000001', 'pi-06', [KEY]) == render_seed('10000001', 'pi-06', [KEY])


def test_keys_not_managed_leave_root_out():
    parsed, _files = seed('10000001', 'pi-06', None)
    assert 'users' not in parsed['user-data']


def test_user_data_is_merged():
    extra = {'packages': ['htop'], 'runcmd': [['touch', '/var/tmp/ran']], 'users': [{'name': 'ops', 'groups': 'sudo'}],
             'timezone': 'Europe/Berlin', 'write_files': [{'path': '/etc/motd', 'content': 'Grüße\n'}]}
    parsed, _files = seed('10000001', 'pi-06', [KEY], extra)
    user = parsed['user-data']
    assert user['packages'] == ['htop'] and user['timezone'] == 'Europe/Berlin'
    assert user['runcmd'] == [['touch', '/var/tmp/ran']]
    assert [u['name'] for u in user['users']] == ['root', 'ops']
    assert user['write_files'][0]['content'] == 'Grüße\n'
    assert extra['users'] == [{'name': 'ops', 'groups': 'sudo'}]  # the inventory's value is not consumed


@pytest.mark.parametrize(('instance', 'expected'), [
    (None, 'pifleet-10000001'), ('', 'pifleet-10000001'), (2, 'pifleet-10000001-2'),
    ('2026-01.b', 'pifleet-10000001-2026-01.b'),
])
def test_instance_id_changes_only_when_asked(instance, expected):
    assert instance_id('10000001', instance) == expected
    parsed, _files = seed('10000001', 'pi-06', None, instance=instance)
    assert parsed['meta-data']['instance-id'] == expected


@pytest.mark.parametrize('instance', ['a b', 'x' * 65, 'a/b', 'new\nline'])
def test_bad_instance_is_refused(instance):
    with pytest.raises(CloudInitError, match='pi_cloud_init_instance'):
        instance_id('10000001', instance)


LOAD_CASES = [
    ('mapping', {'packages': ['vim']}, {'packages': ['vim']}),
    ('yaml-text', '#cloud-config\npackages: [vim]\n', {'packages': ['vim']}),
    ('empty-text', '', {}),
    ('none', None, {}),
    ('comment-only', '#cloud-config\n', {}),
]


@pytest.mark.parametrize(('value', 'expected'), [c[1:] for c in LOAD_CASES], ids=[c[0] for c in LOAD_CASES])
def test_load_user_data(value, expected):
    assert load_user_data(value, 'pi-06') == expected


BAD_LOAD = [
    ('list', ['packages'], 'must be a cloud-config mapping'),
    ('yaml-list', '- a\n- b\n', 'must be a cloud-config mapping'),
    ('bad-yaml', 'packages: [vim\n', 'not valid YAML'),
    ('too-long', 'a: ' + 'x' * 70000, 'keep it under'),
    ('number', 3, 'must be a cloud-config mapping'),
]


@pytest.mark.parametrize(('value', 'message'), [c[1:] for c in BAD_LOAD], ids=[c[0] for c in BAD_LOAD])
def test_load_user_data_refuses(value, message):
    with pytest.raises(CloudInitError, match=message) as err:
        load_user_data(value, 'pi-06')
    assert str(err.value).startswith('pi-06: ')


CHECK_CASES = [
    ('hostname', {'hostname': 'other'}, 'sets hostname, which the collection owns'),
    ('fqdn', {'fqdn': 'pi.example.org'}, 'sets fqdn'),
    ('host-keys', {'ssh_keys': {'rsa_private': 'x'}}, 'SSH host keys pi_root made'),
    ('delete-host-keys', {'ssh_deletekeys': True}, 'SSH host keys pi_root made'),
    ('make-host-keys', {'ssh_genkeytypes': ['rsa']}, 'the bakery never saw nor signed'),
    ('disable-root', {'disable_root': True}, 'pi_ssh_authorized_keys'),
    ('network', {'network': {'version': 2}}, 'cloud-init networking stays off'),
    ('growpart', {'growpart': {'mode': 'auto'}}, 'no partition to grow'),
    ('root-user', {'users': [{'name': 'root'}]}, 'leave root out'),
    ('root-user-string', {'users': ['root']}, 'leave root out'),
    ('users-not-list', {'users': 'ops'}, 'users must be a list'),
    ('date', {'a': __import__('datetime').date(2026, 1, 1)}, 'quote dates'),
    ('non-string-key', {1: 'a'}, 'is not a string'),
]


@pytest.mark.parametrize(('data', 'message'), [c[1:] for c in CHECK_CASES], ids=[c[0] for c in CHECK_CASES])
def test_check_user_data(data, message):
    problems = check_user_data(data, 'pi-06')
    assert len(problems) == 1 and message in problems[0] and problems[0].startswith('pi-06: '), problems
    with pytest.raises(CloudInitError, match='pi-06: '):
        render_seed('10000001', 'pi-06', [KEY], data)


def test_check_user_data_lists_every_problem():
    assert len(check_user_data({'hostname': 'a', 'network': {}, 'users': ['root']}, 'pi-06')) == 3
    assert check_user_data({'packages': ['vim'], 'users': ['default', {'name': 'ops'}]}, 'pi-06') == []


def test_bad_hostname_is_refused():
    with pytest.raises(CloudInitError, match='RFC 1123'):
        render_seed('10000001', 'pi_06', None)
