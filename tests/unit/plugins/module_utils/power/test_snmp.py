# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_snmp: BER encoding against hand-assembled bytes (X.690 / RFC 3416), round trips, and the UDP client
against a scripted loopback responder (lost datagrams, stray answers, errors) and the real snmpd."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from powerfakes import SnmpAgent

from ansible_collections.pifleet.netboot.plugins.module_utils.power import snmp as _snmp

INTEGERS = [  # value, BER bytes (X.690 8.3: two's complement, minimal length)
    (0, '020100'), (1, '020101'), (127, '02017f'), (128, '02020080'), (255, '020200ff'), (256, '02020100'),
    (-1, '0201ff'), (-128, '020180'), (-129, '0202ff7f'), (2**31 - 1, '02047fffffff'), (-(2**31), '020480000000'),
]
OIDS = [  # X.690 8.19; 2.999.3 is the standard's own example
    ('1.3.6.1.2.1.1.1.0', '06082b06010201010100'),
    ('1.3.6.1.4.1.311', '06072b060104018237'),
    ('2.999.3', '0603883703'),
    ('1.3.6.1.2.1.105.1.1.1.3.1.24', '060c2b06010201690101010301' + '18'),
    ('0.0', '060100'),
]
LENGTHS = [(0, '00'), (127, '7f'), (128, '8180'), (255, '81ff'), (256, '820100'), (300, '82012c')]
# snmpget -v2c -c public <host> sysDescr.0 with request-id 1, assembled by hand.
GET_SYSDESCR = ''.join(['3026', '020101', '04067075626c6963', 'a019', '020101', '020100', '020100', '300e', '300c',
                        '06082b06010201010100', '0500'])
# GetResponse, request-id 7, pethPsePortAdminEnable.1.3 = INTEGER 2.
RESPONSE_OFF = ''.join(['302c', '020101', '0407', '70726976617465', 'a21e', '020107', '020100', '020100', '3013',
                        '3011', '060c', '2b0601020169010101030103', '020102'])


@pytest.mark.parametrize('value, ber', INTEGERS)
def test_integers_encode_and_decode(value, ber):
    assert _snmp.encode_integer(value).hex() == ber
    tag, payload, end = _snmp.decode_tlv(bytes.fromhex(ber))
    assert (tag, _snmp.decode_integer(payload), end) == (_snmp.INTEGER, value, len(ber) // 2)


@pytest.mark.parametrize('oid, ber', OIDS)
def test_oids_encode_and_decode(oid, ber):
    assert _snmp.encode_oid(oid).hex() == ber
    assert _snmp.format_oid(_snmp.decode_oid(bytes.fromhex(ber)[2:])) == oid


@pytest.mark.parametrize('length, ber', LENGTHS)
def test_lengths(length, ber):
    assert _snmp.encode_length(length).hex() == ber
    tag, payload, _unused = _snmp.decode_tlv(bytes.fromhex('04' + ber) + b'x' * length)
    assert (tag, len(payload)) == (_snmp.OCTET_STRING, length)


@pytest.mark.parametrize('value, ber', [(None, '0500'), (b'', '0400'), (b'public', '04067075626c6963'),
                                        ('pi', '04027069'), (5, '020105')])
def test_values(value, ber):
    assert _snmp.encode_value(value).hex() == ber


def test_get_request_matches_hand_assembled_bytes():
    message = _snmp.build_message('public', _snmp.GET, 1, [('1.3.6.1.2.1.1.1.0', None)])
    assert message.hex() == GET_SYSDESCR


def test_response_parses():
    answer = _snmp.parse_message(bytes.fromhex(RESPONSE_OFF))
    assert answer == {'version': 1, 'community': b'private', 'pdu': _snmp.RESPONSE, 'request_id': 7,
                      'error_status': 0, 'error_index': 0,
                      'varbinds': [((1, 3, 6, 1, 2, 1, 105, 1, 1, 1, 3, 1, 3), _snmp.INTEGER, 2)]}


@pytest.mark.parametrize('varbinds', [
    [('1.3.6.1.2.1.105.1.1.1.3.1.3', 1)],
    [('1.3.6.1.2.1.1.5.0', b'switch-01' * 20), ('1.3.6.1.2.1.1.3.0', None), ('1.3.6.1.4.1.9.9', -70000)],
])
def test_messages_round_trip(varbinds):
    for pdu in (_snmp.GET, _snmp.SET, _snmp.RESPONSE):
        answer = _snmp.parse_message(_snmp.build_message('c0mmunity', pdu, 0x7FFFFF, varbinds))
        assert (answer['pdu'], answer['request_id'], answer['community']) == (pdu, 0x7FFFFF, b'c0mmunity')
        assert [(_snmp.format_oid(oid), value) for oid, _unused, value in answer['varbinds']] == varbinds


@pytest.mark.parametrize('tag, payload, value', [
    (_snmp.COUNTER32, 'ffffffff', 0xFFFFFFFF), (_snmp.TIMETICKS, '00', 0), (0x81, '', 'noSuchInstance'),
    (_snmp.IP_ADDRESS, '7f000001', b'\x7f\x00\x00\x01'),
])
def test_other_value_types_decode(tag, payload, value):
    assert _snmp.decode_value(tag, bytes.fromhex(payload)) == value


@pytest.mark.parametrize('data', ['', '30', '3005020101', '0201', '3003020101', '300b0201010400a2040201ff'])
def test_broken_messages_raise_snmp_errors(data):
    with pytest.raises(_snmp.SnmpError):
        _snmp.parse_message(bytes.fromhex(data))


@pytest.mark.parametrize('oid', ['1', '3.1', '1.40', 'a.b.c', ''])
def test_invalid_oids_are_refused(oid):
    with pytest.raises(ValueError):
        _snmp.encode_oid(oid)


class Responder:
    """A loopback UDP peer answering by script: each request gets the next action in ``script``."""

    def __init__(self, script):
        self.script, self.received = list(script), []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(('127.0.0.1', 0))
        self.sock.settimeout(0.05)
        self.port, self.stop = self.sock.getsockname()[1], threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            request = _snmp.parse_message(data)
            self.received.append(request)
            action = self.script.pop(0) if self.script else 'drop'
            if action == 'drop':
                continue
            if action == 'stray':  # an answer to someone else first, then ours
                self.sock.sendto(_snmp.build_message('private', _snmp.RESPONSE, request['request_id'] + 1,
                                                     [('1.3.6.1', 9)]), peer)
                self.sock.sendto(b'not snmp at all', peer)
            oid = _snmp.format_oid(request['varbinds'][0][0])
            body = _snmp.build_message('private', _snmp.RESPONSE, request['request_id'],
                                       [(oid, 1 if action in ('ok', 'stray') else None)])
            if isinstance(action, int):  # error-status <action>, error-index 1
                body = body.replace(bytes([2, 1, 0, 2, 1, 0]), bytes([2, 1, action, 2, 1, 1]), 1)
            self.sock.sendto(body, peer)

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def responder():
    made = []

    def make(script):
        made.append(Responder(script))
        return made[-1]
    yield make
    for item in made:
        item.close()


def test_client_retransmits_lost_requests(responder):
    peer = responder(['drop', 'drop', 'ok'])
    client = _snmp.SnmpClient('127.0.0.1', peer.port, 'private', timeout=0.2, retries=2)
    assert client.get('1.3.6.1.2.1.105.1.1.1.3.1.1') == 1
    assert len(peer.received) == 3
    assert len({request['request_id'] for request in peer.received}) == 1  # a retransmission, not a new request


def test_client_times_out_after_its_retries(responder):
    peer = responder([])
    client = _snmp.SnmpClient('127.0.0.1', peer.port, 'private', timeout=0.2, retries=1)
    started = time.monotonic()
    with pytest.raises(_snmp.SnmpTimeout, match=r'no answer from 127\.0\.0\.1:\d+ after 0\.2s \(1 retries\)'):
        client.get('1.3.6.1.2.1.1.1.0')
    assert 0.35 < time.monotonic() - started < 2
    assert len(peer.received) == 2


def test_client_skips_stray_datagrams(responder):
    peer = responder(['stray'])
    assert _snmp.SnmpClient('127.0.0.1', peer.port, 'private', 0.5, 0).set('1.3.6.1.4.1.1', 1) == 1
    assert peer.received[0]['pdu'] == _snmp.SET
    assert peer.received[0]['varbinds'][0][1:] == (_snmp.INTEGER, 1)


@pytest.mark.parametrize('status, name', [(17, 'notWritable'), (10, 'wrongValue'), (2, 'noSuchName'), (99, 'error 99')])
def test_client_reports_error_status(responder, status, name):
    peer = responder([status])
    with pytest.raises(_snmp.SnmpError, match='agent answered %s on 1.3.6.1.4.1.1' % name):
        _snmp.SnmpClient('127.0.0.1', peer.port, 'private', 0.5, 0).set('1.3.6.1.4.1.1', 1)


def test_client_against_real_snmpd(tmp_path):
    agent = SnmpAgent(tmp_path, {(1, 1): 1, (1, 2): 2, (2, 1): 2})
    try:
        client = _snmp.SnmpClient('127.0.0.1', agent.port, 'private', 1.0, 1)
        column = '1.3.6.1.2.1.105.1.1.1.3'
        assert [client.get('%s.%s' % (column, row)) for row in ('1.1', '1.2', '2.1')] == [1, 2, 2]
        assert client.set(column + '.1.2', 1) == 1
        assert agent.state(1, 2) == 1
        assert client.get(column + '.1.2') == 1
        assert isinstance(client.get('1.3.6.1.2.1.1.1.0'), bytes)  # sysDescr: an OCTET STRING
        with pytest.raises(_snmp.SnmpError, match='noSuchInstance'):
            client.get(column + '.1.9')
        with pytest.raises(_snmp.SnmpError, match='wrongValue'):
            client.set(column + '.1.1', 3)
        with pytest.raises(_snmp.SnmpError, match='wrongType'):
            client.set(column + '.1.1', b'on')
        assert agent.state(1, 1) == 1
        with pytest.raises(_snmp.SnmpTimeout):  # v2c agents drop a wrong community without a word
            _snmp.SnmpClient('127.0.0.1', agent.port, 'guess', 0.3, 0).get(column + '.1.1')
    finally:
        agent.close()
    assert agent.process.poll() is not None
