# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.common import module as _module
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import expand, find_duplicates


def test_single_item_from_top_level():
    params = {'serial': 'a', 'size': '1G', 'disks': None, 'other': 1}
    assert expand(params, 'disks', ('serial', 'size')) == [{'serial': 'a', 'size': '1G'}]


def test_list_items_override_top_level_defaults():
    params = {'serial': None, 'size': '1G', 'disks': [{'serial': 'a'}, {'serial': 'b', 'size': '2G', 'junk': 1}]}
    assert expand(params, 'disks', ('serial', 'size')) == [
        {'serial': 'a', 'size': '1G'}, {'serial': 'b', 'size': '2G'}]


def test_empty_list_is_no_items():
    assert expand({'disks': [], 'serial': 'a'}, 'disks', ('serial',)) == []


def test_find_duplicates():
    items = [{'k': 1}, {'k': 2}, {'k': 1}, {'k': 3}, {'k': 2}]
    assert find_duplicates(items, 'k') == [1, 2]
    assert find_duplicates([], 'k') == []


class Failed(Exception):
    pass


class FakeModule:
    """What PifleetModule uses of an AnsibleModule; fail_json raises with what it was given."""

    def __init__(self, params, diff=False, check_mode=False):
        self.params, self._diff, self.check_mode = params, diff, check_mode

    def fail_json(self, **kwargs):
        raise Failed(kwargs)


def test_file_diff():
    assert _module.file_diff('/f', None, 'x\n') == {'before': '', 'after': 'x\n', 'before_header': '/f',
                                                    'after_header': '/f'}
    assert _module.file_diff('/d/', 'a\n', None, '/d/ (removed)')['after_header'] == '/d/ (removed)'
    assert _module.file_diff('/m', {}, {'sha256': 'x'})['before'] == {}  # a summary stays a mapping


def test_problems_message_one_rule():
    assert _module.problems_message(['one'], 'pis') == 'one'
    assert _module.problems_message(['one', 'two'], 'pis') == '2 problems in pis: one; two'
    many = _module.problems_message(['p%d' % n for n in range(12)], 'disks')
    assert many.startswith('12 problems in disks: p0; p1;') and many.endswith('p9; and 2 more') and 'p10' not in many


def test_items_say_where_each_item_is():
    base = _module.PifleetModule(FakeModule({'name': 'a', 'size': 1, 'disks': None}), {}, 'disks')
    assert base.items(('name', 'size'), 'the disk') == [('the disk', {'name': 'a', 'size': 1})]
    base = _module.PifleetModule(FakeModule({'name': None, 'size': 1, 'disks': [{'name': 'a'}, {'name': 'b'}]}),
                                 {}, 'disks')
    assert [where for where, _item in base.items(('name', 'size'), 'the disk')] == ['disks[0]', 'disks[1]']


def test_check_fails_with_every_problem_and_the_result():
    module = FakeModule({'pis': [{}, {}]})
    base = _module.PifleetModule(module, {'changed': False, 'pis': []}, 'pis')
    base.check()  # nothing found: nothing to say
    base.problem('first')
    base.unique([{'k': 'a'}, {'k': 'a'}, {'k': None}, {'k': None}], 'k', 'k %s twice')
    with pytest.raises(Failed) as info:
        base.check()
    assert info.value.args[0] == {'msg': '2 problems in pis: first; k a twice', 'changed': False, 'pis': [],
                                  'problems': ['first', 'k a twice']}
    base.params = {'pis': None}  # the top level alone
    with pytest.raises(Failed, match='2 problems in the arguments'):
        base.check()


def test_diff_is_recorded_in_diff_mode_only():
    quiet = _module.PifleetModule(FakeModule({}), {})
    quiet.diff('/f', 'a', 'b')
    assert quiet.diffs == []
    loud = _module.PifleetModule(FakeModule({}, diff=True), {})
    loud.diff('/f', 'a', 'b')
    assert loud.diffs == [_module.file_diff('/f', 'a', 'b')]


@pytest.mark.parametrize('text, shown', [
    ('127.0.1.1\tkitchen\n', '127.0.1.1\tkitchen\n'),  # what people write stays as it is
    ('a\x1b[2J\x1b]0;owned\x07b\n', 'a\\x1b[2J\\x1b]0;owned\\x07b\n'),  # clear screen, retitle, bell
    ('x\ry', 'x\\x0dy'), ('\x00\x7f\x9b', '\\x00\\x7f\\x9b'),  # a carriage return hides what came before
    ('\u202egnp.exe', '\\u202egnp.exe'), ('caf\u00e9 \u00fcber', 'caf\u00e9 \u00fcber'),  # right-to-left override
    (b'bad \xff\xfe'.decode('utf-8', 'surrogateescape'), 'bad \\xff\\xfe'),  # bytes that were not UTF-8
    ('UUID=x /srv\\040data ext4', 'UUID=x /srv\\040data ext4'),  # fstab's own escapes are left alone
    (None, None), ('', ''),
])
def test_printable_escapes_what_a_terminal_would_act_on(text, shown):
    assert _module.printable(text) == shown
