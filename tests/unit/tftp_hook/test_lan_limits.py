# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the LAN can send (issue 11): each limit attacked for real, over UDP, against the service process.

Transfer IDs (a request from one port never ends another port's transfer), slot exhaustion (the
timeout option cap, transfers per client address, the first-ACK deadline, ICMP port unreachable),
event-log amplification (truncated names, rate-limited refusals with a summary line) and names with
non-printable characters. Other 127/8 addresses play other LAN hosts.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from lab import pisim

SERIALS = ['%08x' % (0x7e570000 + index) for index in range(30)]
PI4_SET = {'start4.elf': 150_001, 'fixup4.dat': 5_447, 'bcm2711-rpi-4-b.dtb': 52_000, 'kernel8.img': 200_003}


def _config(tftp, tmp, made, **extra):
    config = {'listen': ['127.0.0.1'], 'port': tftp.free_port(), 'map': str(made['map']),
              'roots': [str(made['root'])], 'events': str(tmp / 'events.jsonl'), 'timeout': 0.3, 'map_poll': 0}
    config.update(extra)
    return config


def _until(check, timeout=5.0, step=0.02):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, 'timed out waiting for %r' % check
        time.sleep(step)
    return result


def _events_of(server, client, count=1, timeout=5.0):
    """The events of one client socket (its address and port), once ``count`` of them are in."""
    def mine():
        found = [e for e in server.events()[server.first_event.get(client.port, 0):]
                 if e['port'] == client.port and e['client'] == client.sock.getsockname()[0]]
        return found if len(found) >= count else None

    return _until(mine, timeout)


def _oack(packet):
    assert packet[:2] == b'\0\6', packet[:40]
    fields = packet[2:].split(b'\0')[:-1]
    return {fields[i].decode(): int(fields[i + 1]) for i in range(0, len(fields), 2)}


# ---- Transfer IDs -------------------------------------------------------------------------------

def test_thirty_pis_behind_one_address_all_boot(tmp_path, tftp, start_server):
    """30 Pi 4 boots (pisim: probe, Early terminate, tsize, blksize 1024) from one address, all at once."""
    root = tmp_path / 'roots'
    boot = root / 'boot'
    boot.mkdir(parents=True)
    for name, size in PI4_SET.items():
        (boot / name).write_bytes(bytes(range(256)) * (size // 256) + b'x' * (size % 256))
    (boot / 'config.txt').write_text('arm_64bit=1\n')
    prefixes = {}
    for serial in SERIALS:
        own = root / 'pis' / serial
        own.mkdir(parents=True)
        (own / 'cmdline.txt').write_text('root=/dev/nfs nfsroot=10.99.0.2:/srv/pifleet/roots/%s,vers=3\n' % serial)
        prefixes[serial] = {'name': 'pi-' + serial, 'dirs': [str(own), str(boot)]}
    (tmp_path / 'map.json').write_text(json.dumps({'version': 1, 'default': [str(boot)], 'prefixes': prefixes}))
    # The service's own defaults for every limit: they must let a whole NAT-ed rack boot.
    server = start_server(tmp_path, _config(tftp, tmp_path, {'map': tmp_path / 'map.json', 'root': root},
                                            retries=10))
    reports = {}

    def boot_one(serial):
        reports[serial] = pisim.boot(4, '127.0.0.1', serial=serial, port=server.port, blksize=1024, timeout=0.5,
                                     retries=10, expect=pisim.expect_from_dirs([root / 'pis' / serial, boot]))

    threads = [threading.Thread(target=boot_one, args=(serial,)) for serial in SERIALS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    failed = {s: [(f['request'], f['error']) for f in r['files'] + r['probes'] if not f['ok']]
              for s, r in reports.items() if not r['ok']}
    assert len(reports) == len(SERIALS)
    assert failed == {}, '%d of %d Pis failed: %r' % (len(failed), len(SERIALS), failed)
    outcomes = {e['outcome'] for e in server.events()}
    assert outcomes <= {'ok', 'probe'}, outcomes


@pytest.mark.parametrize('state', ['tsize OACK sent', 'last block sent'])
def test_another_ports_request_never_ends_a_transfer(tmp_path, tftp, start_server, state):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made))
    want = made['files']['b513.bin']
    first, neighbour = server.client(), server.client()  # two ports of one address (two Pis behind NAT)
    if state == 'tsize OACK sent':
        _packet, tid, oack = first.start('1234abcd/b513.bin', tsize=True, blksize=512)
        assert oack == {'tsize': 513, 'blksize': 512}
        assert neighbour.get('1234abcd/cmdline.txt')['data'].endswith(b'pi-01\n')
        first.ack(0, tid)  # late, but this transfer is still ours
        got = first.receive(None, tid, oack)
    else:
        packet, tid, oack = first.start('1234abcd/b513.bin')
        assert packet[:4] == b'\0\3\0\1'
        first.ack(1, tid)
        assert first.recv() == (b'\0\3\0\2' + want[512:], tid)  # the last block: "lost", not ACKed
        assert neighbour.get('1234abcd/cmdline.txt')['data'].endswith(b'pi-01\n')
        # The service must still resend the last block on its timer, as the client waits for it.
        got = first.receive(None, tid, oack, expected=2, data=want[:512])
    assert got['data'] == want
    assert [(e['outcome'], e['bytes'], e['error']) for e in _events_of(server, first)] == [('ok', 513, None)]


# ---- Slot exhaustion ----------------------------------------------------------------------------

def test_silent_requests_cannot_hold_the_slots(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made, timeout=1.0, retries=5, max_transfers=8,
                                            max_per_client=4, first_ack_timeout=1.5, max_timeout=10))
    # One host asks once per slot with timeout=255 from 8 ports, then stays silent.
    attackers = [server.client(timeout=2.0) for _i in range(8)]
    for attacker in attackers:
        attacker.rrq('1234abcd/start4.elf', options=[('timeout', 255), ('tsize', 0)])
    answers = [attacker.recv()[0] for attacker in attackers]
    oacks = [_oack(p) for p in answers if p[:2] == b'\0\6']
    busy = [p for p in answers if p[:2] == b'\0\5']
    assert len(oacks) == 4, 'max_per_client is 4: %r' % answers
    assert all(o == {'tsize': len(made['files']['start4.elf'])} for o in oacks), 'timeout 255 must be refused'
    assert busy == [b'\0\5\0\0Server busy\0'] * 4
    # Another host is served meanwhile: the table (8) is not full.
    other = server.client(source='127.0.0.2')
    assert other.get('1234abcd/cmdline.txt')['data'].endswith(b'pi-01\n')
    # The silent transfers end at the first-ACK deadline (1.5 s), not after 6 x 255 s. (Labelled "probe":
    # tsize asked, no ACK, and the address went on to other requests, as a Pi 4 whose ERROR was lost.)
    held = [e for e in server.wait_events(9, timeout=5) if e['client'] == '127.0.0.1' and e['bytes'] == 0
            and e['outcome'] in ('timeout', 'probe')]
    assert len(held) == 4, server.events()
    assert all(1.4 < e['duration'] < 4.0 for e in held), [e['duration'] for e in held]
    assert server.client().get('1234abcd/cmdline.txt')['data'].endswith(b'pi-01\n')  # the host is served again


def test_first_ack_deadline_holds_whatever_timeout_was_negotiated(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made, timeout=1.0, retries=5, first_ack_timeout=1.5,
                                            max_timeout=10))
    silent = server.client(timeout=0.2)
    silent.rrq('1234abcd/start4.elf', options=[('timeout', 10)])
    oacks, started = [], time.monotonic()
    while time.monotonic() - started < 2.0:  # timeout 10 is within max_timeout: accepted
        try:
            oacks.append(_oack(silent.recv()[0]))
        except socket.timeout:
            pass
    assert oacks[0] == {'timeout': 10}
    assert len(oacks) >= 2, 'the OACK is sent again before the deadline, whatever the timeout'
    (event,) = _events_of(server, silent, timeout=3.0)  # without the deadline: 6 x 10 s
    assert event['outcome'] == 'timeout'
    assert 'first_ack_timeout' in event['error']
    assert 1.4 < event['duration'] < 5.0


@pytest.mark.parametrize(('options', 'outcome'), [
    ([('tsize', 0), ('blksize', 1024)], 'probe'),  # waiting for the ACK of the OACK of a tsize request
    ([('blksize', 1024)], 'aborted'),  # the same without tsize
    ([], 'aborted'),  # lock-step, block 1 sent
    ([('windowsize', 4)], 'aborted'),  # a window sent
], ids=['oack-tsize', 'oack', 'lock-step', 'window'])
def test_icmp_port_unreachable_ends_a_transfer_in_any_state(running, options, outcome):
    client = running.client()
    client.rrq('1234abcd/start4.elf', options=options)
    _packet, tid = client.recv()
    if options and options[-1][0] == 'windowsize':
        client.ack(0, tid)
        client.recv()
    client.close()  # the next packet the service sends draws an ICMP port unreachable
    port = client.port
    event = _until(lambda: [e for e in running.events()[running.first_event[port]:] if e['port'] == port])[0]
    assert (event['outcome'], event['error']) == (outcome, 'the client closed its port (ICMP port unreachable)')
    assert event['retransmits'] <= 4  # ended by the first retransmit (a window counts each block), not 5 retries


def test_the_unit_allows_two_descriptors_per_transfer(hook, role_template):
    for transfers in (1, 1000, 20000):
        unit = role_template('tftp-hook.service.j2', tftp_hook_max_transfers=transfers)
        (limit,) = [int(line.split('=', 1)[1]) for line in unit.splitlines() if line.startswith('LimitNOFILE=')]
        assert limit >= 2 * transfers + hook.FD_MARGIN, (transfers, limit)


@pytest.mark.parametrize('limits', [(10000, 6064, False), (5000, 5000, True)], ids=['raised', 'short'])
def test_the_service_raises_its_open_files_limit_or_says_so(tmp_path, tftp, start_server, limits):
    hard, soft_after, warned = limits
    made = tftp.make_tree(tmp_path)
    # Started with 64 open files (hard: ``hard``), as a shell's default 1024 would be for max_transfers 3000.
    server = start_server(tmp_path, _config(tftp, tmp_path, made, max_transfers=3000),
                          wrap=['prlimit', '--nofile=64:%d' % hard, '--'])
    limits = Path('/proc/%d/limits' % server.proc.pid).read_text()
    (line,) = [line for line in limits.splitlines() if line.startswith('Max open files')]
    assert line.split()[3:5] == [str(soft_after), str(hard)]
    assert ('open files limit 5000 is below 6064' in server.stderr()) == warned, server.stderr()


# ---- Event-log amplification --------------------------------------------------------------------

@pytest.mark.parametrize('name', [b'1234abcd/' + b'\x01' * 65000, b'a' * 65400, ('\u00e9' * 500 + '/x').encode()],
                         ids=['control', 'long', 'long-prefix'])
def test_one_datagram_makes_one_short_event_line(running, name):
    client = running.client()
    client.send(b'\0\1' + name + b'\0octet\0')
    assert client.recv()[0][:2] == b'\0\5'
    (event,) = _events_of(running, client)
    line = json.dumps(event)
    assert len(line) < 4096, len(line)
    assert event['request'].endswith('...[truncated, %d characters]' % len(name.decode('utf-8', 'backslashreplace')))
    assert event['outcome'] in ('denied', 'unknown_prefix')


def test_refusals_are_rate_limited_per_client_with_a_summary(tmp_path, tftp, start_server):
    made = tftp.make_tree(tmp_path)
    server = start_server(tmp_path, _config(tftp, tmp_path, made, log_refusals_burst=5,
                                            log_refusals_per_second=2.0))
    flooder, pi = server.client(), server.client(source='127.0.0.2')
    sent = {'denied': 0, 'unknown_prefix': 0}
    started = time.monotonic()
    for index in range(800):
        if index % 2:
            flooder.rrq('1234abcd/../secret-%d' % index)
            sent['denied'] += 1
        else:
            flooder.rrq('nosuchpi%d/start4.elf' % index)
            sent['unknown_prefix'] += 1
        if index % 50 == 49:  # paced: every request is answered, none lost in a full socket buffer
            for _j in range(50):
                assert flooder.recv()[0][:2] == b'\0\5'
    elapsed = time.monotonic() - started
    with pytest.raises(tftp.TftpError):  # another host's refusal is still logged at once
        pi.get('cafebabe/start4.elf')
    assert [e['outcome'] for e in _events_of(server, pi)] == ['unknown_prefix']

    def flood_events():
        found = [e for e in server.events() if e['client'] == '127.0.0.1']
        summaries = [e for e in found if e['outcome'] == 'suppressed']
        dropped = sum(sum(s['dropped'].values()) for s in summaries)
        return found if len(found) - len(summaries) + dropped == 800 else None

    found = _until(flood_events, timeout=5.0)
    logged = [e for e in found if e['outcome'] != 'suppressed']
    summaries = [e for e in found if e['outcome'] == 'suppressed']
    assert len(logged) <= 5 + 2.0 * (elapsed + 1.5), (len(logged), elapsed)
    assert summaries, 'what was dropped is counted in a summary line'
    for outcome, count in sent.items():
        assert (sum(1 for e in logged if e['outcome'] == outcome)
                + sum(s['dropped'].get(outcome, 0) for s in summaries)) == count, outcome
    assert all(s['client'] == '127.0.0.1' and s['request'] == '' and s['prefix'] == '' for s in summaries)
    assert sum(len(json.dumps(e)) for e in found) < 20000


def test_logrotate_rotates_a_flooded_log_before_its_day(tmp_path, role_template, run_tool):
    events = tmp_path / 'log' / 'boot-events.jsonl'
    events.parent.mkdir()
    events.write_text('{"outcome": "denied"}\n' * 200)
    conf = tmp_path / 'logrotate.conf'
    conf.write_text(role_template('logrotate.j2', pifleet_events_path=str(events), tftp_hook_user='root',
                                  tftp_hook_service='pfh-no-such-unit', tftp_hook_logrotate_maxsize='1k'))
    assert '    maxsize 1k\n' in conf.read_text()
    state = tmp_path / 'state'
    state.write_text('logrotate state -- version 2\n"%s" %s\n' % (events, time.strftime('%Y-%-m-%-d-%-H:%-M:%-S')))
    run_tool(['logrotate', '-s', str(state), str(conf)])  # rotated today already: only maxsize can rotate it
    assert (tmp_path / 'log' / 'boot-events.jsonl.1').exists()
    assert events.read_text() == ''


# ---- Names --------------------------------------------------------------------------------------

NON_PRINTABLE = ['\u2028', '\u2029', '\u200b', '\u200e', '\u202e', '\u2066', '\ufeff', '\u00ad', '\u00a0', '\u3000',
                 '\ue000', '\u0378', '\U000e0001']


@pytest.mark.parametrize('char', NON_PRINTABLE, ids=['U+%04X' % ord(c) for c in NON_PRINTABLE])
def test_names_with_non_printable_characters_are_denied(running, tftp, char):
    (running.tree['boot'] / ('start4%s.elf' % char)).write_bytes(b'must not be served')
    client = running.client()
    with pytest.raises(tftp.TftpError) as caught:
        client.get('1234abcd/start4%s.elf' % char)
    assert (caught.value.code, caught.value.message) == (2, 'Access violation')
    (event,) = _events_of(running, client)
    assert event['outcome'] == 'denied'
    assert event['error'].startswith('non-printable character in file name')


def test_the_role_renders_every_service_setting(hook, role_template):
    config = role_template(None)['__tftp_hook_config']
    assert set(config) == set(hook.DEFAULTS) | {'listen', 'map'}
    assert hook.Config(config).warnings == []
