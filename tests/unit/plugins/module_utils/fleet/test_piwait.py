# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""piwait: what counts as a Pi's own key in ssh-keyscan's output, and the one deadline, on a clock of the test's
(the real ssh-keyscan against SSH servers on loopback is tests/unit/plugins/modules/test_pi_wait.py)."""

from __future__ import annotations

import base64

import pytest

from ansible_collections.pifleet.netboot.plugins.module_utils.fleet import piwait

ED = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl'
ED2 = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPifleetReimageTestKeyAAAAAAAAAAAAAAAAAAAAAA'
RSA = 'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7'


@pytest.mark.parametrize('given, address', [
    ('10.0.0.51', '10.0.0.51'), (' 10.0.0.51 ', '10.0.0.51'), ('FE80::0001', 'fe80::1'), ('Pi-01.Lab', 'pi-01.lab'),
    ('pi-01', 'pi-01'),
])
def test_an_address_is_given_to_ssh_keyscan_in_one_form(given, address):
    assert piwait.scan_address(given) == address


@pytest.mark.parametrize('given', ['', '-oProxyCommand=x', '10.0.0.1,10.0.0.2', '10.0.0.1 10.0.0.2', 'pi_01', 'a' * 254,
                                   'pi-.lab', '-pi', 'pi\x1b[2J', '10.0.0.1\n10.0.0.2'])
def test_an_address_ssh_keyscan_would_read_otherwise_is_refused(given):
    with pytest.raises(ValueError):
        piwait.scan_address(given)


@pytest.mark.parametrize('address, port, name', [('10.0.0.51', 22, '10.0.0.51'), ('Pi-01', 22, 'pi-01'),
                                                 ('127.0.0.1', 2222, '[127.0.0.1]:2222')])
def test_the_name_ssh_keyscan_prints(address, port, name):
    assert piwait.output_name(address, port) == name


@pytest.mark.parametrize('line, key', [
    (ED + ' root@pi-01', ED), (ED, ED), (RSA + ' x y', RSA),
    ('sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t', None),  # not asked for by the scan
    ('ssh-ed25519 not!base64', None), ('ssh-ed25519 AAAA=A', None), ('', None), (None, None), ('ssh-ed25519', None),
])
def test_a_root_host_key_line(line, key):
    assert piwait.known_key(line) == key


def test_one_scan_argv_for_every_address():
    assert piwait.scan_argv(['10.0.0.2', '10.0.0.1'], 4, {'rsa', 'ed25519'}) == \
        ['ssh-keyscan', '-T', '4', '-p', '22', '-t', 'ed25519,rsa', '--', '10.0.0.2', '10.0.0.1']


def test_only_well_formed_lines_of_hosts_asked_count():
    out = '\n'.join([
        '# 10.0.0.1:22 SSH-2.0-OpenSSH_9.2p1',  # a comment: the server's banner
        '10.0.0.1 ' + ED,
        '10.0.0.9 ' + ED2,  # not asked
        '10.0.0.2 ' + ED + ' trailing',  # four fields
        '10.0.0.2 ssh-dss AAAAB3NzaC1kc3MAAACBAP',  # a type not looked for
        '10.0.0.2 ssh-ed25519 AAAA\x1b]0;owned\x07',  # not base64
        '10.0.0.3 ssh-ed25519 ' + 'A' * piwait.MAX_LINE,  # too long
    ]).encode() + b'\n10.0.0.4 ssh-ed25519 AAAA\xff\n\x00\x00\n'
    seen = piwait.parse_scan(out, ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4'])
    assert seen == {'10.0.0.1': {ED}}


def test_an_address_keeps_a_few_keys_only():
    lines = b''.join(b'10.0.0.1 ssh-rsa %s\n' % base64.b64encode(b'key %03d' % n) for n in range(100))
    assert len(piwait.parse_scan(lines, ['10.0.0.1'])['10.0.0.1']) == piwait.KEYS_PER_ADDRESS


@pytest.mark.parametrize('left, interval, look', [(100, 5, 5), (3.2, 5, 4), (0.01, 5, 1), (-2, 5, 1), (7, 1, 1)])
def test_a_look_is_cut_to_the_time_left(left, interval, look):
    assert piwait.look_seconds(left, interval) == look


class Lan:
    """ssh-keyscan as the test's clock sees it: each round takes the look's -T for a silent address (else 0.1 s),
    and prints what ``answers`` says each address shows from the given time on."""

    def __init__(self, answers=None, silent=True):
        self.now, self.rounds, self.answers, self.silent = 100.0, [], answers or {}, silent

    def clock(self):
        return self.now

    def sleep(self, seconds):
        assert seconds > 0
        self.now += seconds

    def scan(self, argv, timeout):
        look = int(argv[argv.index('-T') + 1])
        assert timeout == look + piwait.GRACE
        addresses = argv[argv.index('--') + 1:]
        self.rounds.append((round(self.now - 100, 3), look, addresses))
        lines = [('%s %s' % (address, key)).encode() for address in addresses
                 for since, key in self.answers.get(address, []) if self.now - 100 >= since]
        answered = {line.split()[0].decode() for line in lines}
        self.now += look if self.silent and set(addresses) - answered else 0.1
        return 0, b'\n'.join(lines)


def pi(name, address, *keys):
    return {'name': name, 'address': address, 'keys': {piwait.known_key(key) for key in keys} - {None}}


def test_a_pi_that_never_answers_is_given_up_at_the_deadline_and_one_look_more():
    for timeout, interval in ((12, 5), (45, 5), (12, 2), (3, 1)):
        lan = Lan()
        wait = piwait.PiWait([pi('pi-01', '10.0.0.51', ED)], timeout, interval, lan.scan, clock=lan.clock,
                             sleep=lan.sleep)
        [result] = wait.wait()
        assert result == {'name': 'pi-01', 'up': False, 'seconds': None, 'key_type': None,
                          'reason': 'no SSH server answered at 10.0.0.51 within %d s' % timeout}
        assert timeout <= wait.waited <= timeout + 1, (timeout, interval, wait.waited, lan.rounds)
        assert all(start <= timeout for start, _look, _addresses in lan.rounds)  # no look starts after the deadline


def test_every_pi_is_looked_for_in_the_same_round_and_a_pi_up_is_not_asked_again():
    lan = Lan({'10.0.0.51': [(0, ED)], '10.0.0.52': [(20, ED2)]})
    pis = [pi('pi-01', '10.0.0.51', ED), pi('pi-02', '10.0.0.52', ED2), pi('pi-03', '10.0.0.53', ED)]
    wait = piwait.PiWait(pis, 60, 5, lan.scan, clock=lan.clock, sleep=lan.sleep)
    results = wait.wait()
    assert lan.rounds[0][2] == ['10.0.0.51', '10.0.0.52', '10.0.0.53']
    assert [addresses for _s, _l, addresses in lan.rounds[1:3]] == [['10.0.0.52', '10.0.0.53']] * 2  # at 10 s, 20 s
    assert lan.rounds[-1][2] == ['10.0.0.53']
    assert [(r['up'], r['key_type']) for r in results] == [(True, 'ssh-ed25519'), (True, 'ssh-ed25519'), (False, None)]
    assert results[0]['seconds'] == 5.0 and 20 <= results[1]['seconds'] <= 30
    assert 60 <= wait.waited <= 61


def test_a_wrong_key_is_not_up_and_says_so():
    lan = Lan({'10.0.0.51': [(0, ED2)]})
    wait = piwait.PiWait([pi('pi-01', '10.0.0.51', ED)], 10, 5, lan.scan, clock=lan.clock, sleep=lan.sleep)
    [result] = wait.wait()
    assert not result['up'] and result['reason'].startswith('an SSH server answered at 10.0.0.51 with none of its')


def test_a_key_seen_at_another_pis_address_does_not_make_it_up():
    lan = Lan({'10.0.0.52': [(0, ED)]}, silent=False)
    pis = [pi('pi-01', '10.0.0.51', ED), pi('pi-02', '10.0.0.52', ED2)]
    results = piwait.PiWait(pis, 3, 1, lan.scan, clock=lan.clock, sleep=lan.sleep).wait()
    assert [r['up'] for r in results] == [False, False]


def test_a_pi_without_a_key_to_look_for_is_not_asked_and_the_wait_ends_when_all_are_up():
    lan = Lan({'10.0.0.51': [(0, ED)]})
    pis = [pi('pi-01', '10.0.0.51', ED), pi('pi-02', '10.0.0.52', 'ssh-dss AAAA')]
    wait = piwait.PiWait(pis, 600, 5, lan.scan, clock=lan.clock, sleep=lan.sleep)
    results = wait.wait()
    assert [addresses for _s, _l, addresses in lan.rounds] == [['10.0.0.51']] and wait.waited < 1
    assert results[1] == dict(results[1], up=False, reason='its root has no host key to look for (ecdsa-sha2-nistp256, '
                              'ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, ssh-ed25519, ssh-rsa)')


def test_a_timeout_of_zero_is_one_look():
    lan = Lan({'10.0.0.51': [(0, ED)]})
    [result] = piwait.PiWait([pi('pi-01', '10.0.0.51', ED)], 0, 5, lan.scan, clock=lan.clock, sleep=lan.sleep).wait()
    assert result['up'] and len(lan.rounds) == 1 and lan.rounds[0][1] == 1
