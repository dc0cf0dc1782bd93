# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Config and fleet map loading, and ``--check``."""

from __future__ import annotations

import json

import pytest

BASE = {'listen': ['127.0.0.1'], 'map': '/var/lib/pifleet/tftp/map.json'}

REMOVE = object()
CONFIG_ERRORS = [
    ({'listen': REMOVE}, 'listen is required'),
    ({'map': REMOVE}, 'map is required'),
    ({'listen': ['10.99.0.300']}, 'not an IPv4 or IPv6'),
    ({'listen': ['eth0']}, 'not an IPv4 or IPv6'),
    ({'listen': []}, 'non-empty strings'),
    ({'listen': [1]}, 'non-empty strings'),
    ({'map': 'relative/map.json'}, 'absolute'),
    ({'port': 0}, 'port must be an integer'),
    ({'port': 70000}, 'port must be an integer'),
    ({'port': '69'}, 'port must be an integer'),
    ({'port': True}, 'port must be an integer'),
    ({'roots': ['relative']}, 'absolute'),
    ({'roots': 'x'}, 'absolute'),
    ({'root_files': ['a/b']}, 'plain names'),
    ({'events': 'events.jsonl'}, 'events must be'),
    ({'hook_url': 'ftp://x/'}, 'hook_url'),
    ({'hook_url': 5}, 'hook_url'),
    ({'max_blksize': 7}, 'max_blksize'),
    ({'max_blksize': 65465}, 'max_blksize'),
    ({'timeout': 0}, 'timeout'),
    ({'retries': -1}, 'retries'),
    ({'retries': 1.5}, 'retries'),
    ({'max_transfers': 0}, 'max_transfers'),
    ({'map_poll': -1}, 'map_poll'),
    ({'workers': 0}, 'workers'),
    ({'batch_wait': -0.001}, 'batch_wait'),
    ({'batch_wait': 0.02}, 'batch_wait'),
]


@pytest.mark.parametrize(('change', 'message'), CONFIG_ERRORS)
def test_config_errors(hook, change, message):
    data = {key: value for key, value in dict(BASE, **change).items() if value is not REMOVE}
    with pytest.raises(hook.ConfigError, match=message):
        hook.Config(data)


def test_config_defaults_and_forms(hook):
    config = hook.Config(dict(BASE, listen=['0.0.0.0', '::', 'fe80::1'], hook_url='', extra=1))
    assert config.listen == [(2, '0.0.0.0'), (10, '::'), (10, 'fe80::1')]
    assert (config.port, config.max_blksize, config.retries, config.workers, config.hook_url) == (69, 1468, 5, 1, None)
    assert config.root_files == frozenset(['bootcode.bin', 'bootsig.bin'])
    assert config.warnings == ["unknown config key 'extra' ignored"]
    assert hook.Config(dict(BASE, listen='10.99.0.2')).listen == [(2, '10.99.0.2')]


def test_config_load_errors(hook, tmp_path):
    with pytest.raises(hook.ConfigError, match='cannot read config'):
        hook.Config.load(str(tmp_path / 'missing.json'))
    (tmp_path / 'bad.json').write_text('{"listen": ')
    with pytest.raises(hook.ConfigError, match='cannot read config'):
        hook.Config.load(str(tmp_path / 'bad.json'))
    (tmp_path / 'list.json').write_text('[]')
    with pytest.raises(hook.ConfigError, match='JSON object'):
        hook.Config.load(str(tmp_path / 'list.json'))


MAP_ERRORS = [
    ('{', 'cannot read map'),
    ('[]', '"version": 1'),
    ('{"version": 2}', '"version": 1'),
    ('{"version": 1, "default": "/r"}', '"default" must be a list'),
    ('{"version": 1, "prefixes": []}', '"prefixes" an object'),
]


@pytest.mark.parametrize(('text', 'message'), MAP_ERRORS)
def test_map_errors(hook, tmp_path, text, message):
    (tmp_path / 'map.json').write_text(text)
    with pytest.raises(hook.MapError, match=message):
        hook.FleetMap.load(str(tmp_path / 'map.json'), [str(tmp_path)])


def test_map_drops_bad_entries(hook, tmp_path):
    root = tmp_path / 'root'
    (root / 'a').mkdir(parents=True)
    (root / 'link-out').symlink_to(tmp_path)
    fleet = {'version': 1, 'default': [str(root / 'a'), '/etc', 'rel/dir'], 'prefixes': {
        'good': {'name': 'pi-01', 'dirs': [str(root / 'a'), str(root / 'link-out')]},
        'noname': {'name': None, 'dirs': [str(root / 'a')]},
        'bad/key': {'name': 'x', 'dirs': []},
        '..': {'name': 'x', 'dirs': []},
        'nodirs': {'name': 'x'},
        'badname': {'name': 5, 'dirs': []},
    }}
    (tmp_path / 'map.json').write_text(json.dumps(fleet))
    fleet_map, problems = hook.FleetMap.load(str(tmp_path / 'map.json'), [str(root)])
    assert fleet_map.default == (str(root / 'a'),)
    assert fleet_map.prefixes == {'good': ('pi-01', (str(root / 'a'),)), 'noname': (None, (str(root / 'a'),))}
    assert sorted(problems) == sorted([
        'map default: dir /etc ignored: outside the configured roots',
        "map default: dir 'rel/dir' ignored: not an absolute path",
        "map prefix 'good': dir %s ignored: outside the configured roots" % (root / 'link-out'),
        "map prefix 'bad/key' ignored: not a plain name",
        "map prefix '..' ignored: not a plain name",
        'map prefix \'nodirs\' ignored: needs {"name": str, "dirs": [...]}',
        'map prefix \'badname\' ignored: needs {"name": str, "dirs": [...]}',
    ])


def _write(tmp_path, config, fleet):
    (tmp_path / 'map.json').write_text(json.dumps(fleet))
    (tmp_path / 'config.json').write_text(json.dumps(dict(config, map=str(tmp_path / 'map.json'))))
    return str(tmp_path / 'config.json')


def test_check_ok_and_warnings(hook, tmp_path, capsys):
    (tmp_path / 'boot').mkdir()
    path = _write(tmp_path, {'listen': ['127.0.0.1'], 'roots': [str(tmp_path)], 'typo_key': 1},
                  {'version': 1, 'default': [str(tmp_path / 'boot')],
                   'prefixes': {'p': {'name': 'n', 'dirs': [str(tmp_path / 'later')]}}})
    assert hook.main(['--config', path, '--check']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["warning: unknown config key 'typo_key' ignored",
                   'warning: map dir %s does not exist' % (tmp_path / 'later'), 'ok: 1 prefixes, 1 default dirs']


def test_check_problems(hook, tmp_path, capsys):
    path = _write(tmp_path, {'listen': ['127.0.0.1'], 'roots': [str(tmp_path / 'r')]},
                  {'version': 1, 'default': ['/etc']})
    assert hook.main(['--config', path, '--check']) == 1
    assert capsys.readouterr().out == 'error: map default: dir /etc ignored: outside the configured roots\n'
    (tmp_path / 'map.json').write_text('nope')
    assert hook.main(['--config', path, '--check']) == 1
    assert 'error: cannot read map' in capsys.readouterr().out
    (tmp_path / 'config.json').write_text('{"listen": ["x"], "map": "/m"}')
    assert hook.main(['--config', path, '--check']) == 1
    assert 'not an IPv4 or IPv6 address' in capsys.readouterr().out
