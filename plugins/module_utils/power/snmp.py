# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A minimal SNMPv2c client (GET and SET of one variable) in pure Python.

Just enough BER (X.690) for SNMP messages: integers, octet strings, null, object identifiers,
sequences and the v2c PDUs, over UDP with a timeout and retransmissions. The bakery then needs
neither pysnmp nor the net-snmp command line tools to drive a PoE switch port.
"""

from __future__ import annotations

import os
import socket
import time

INTEGER, OCTET_STRING, NULL, OID, SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
IP_ADDRESS, COUNTER32, GAUGE32, TIMETICKS, COUNTER64 = 0x40, 0x41, 0x42, 0x43, 0x46
GET, GET_NEXT, RESPONSE, SET = 0xA0, 0xA1, 0xA2, 0xA3
# Varbind values a v2c agent answers instead of a value (RFC 3416).
EXCEPTIONS = {0x80: 'noSuchObject', 0x81: 'noSuchInstance', 0x82: 'endOfMibView'}
UNSIGNED = (COUNTER32, GAUGE32, TIMETICKS, COUNTER64)
VERSION_2C = 1
ERRORS = ('noError', 'tooBig', 'noSuchName', 'badValue', 'readOnly', 'genErr', 'noAccess', 'wrongType',
          'wrongLength', 'wrongEncoding', 'wrongValue', 'noCreation', 'inconsistentValue', 'resourceUnavailable',
          'commitFailed', 'undoFailed', 'authorizationError', 'notWritable', 'inconsistentName')


class SnmpError(Exception):
    """The agent answered with an error, or its answer could not be read."""


class SnmpTimeout(SnmpError):
    """No answer after every retransmission (wrong address or community: v2c agents stay silent)."""


def encode_length(length):
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, 'big')
    return bytes([0x80 | len(body)]) + body


def encode_tlv(tag, payload):
    return bytes([tag]) + encode_length(len(payload)) + payload


def encode_integer(value, tag=INTEGER):
    """Two's complement, minimal length (X.690 8.3)."""
    size = max(1, (value + (value < 0)).bit_length() // 8 + 1)
    return encode_tlv(tag, value.to_bytes(size, 'big', signed=True))


def encode_oid(oid):
    arcs = parse_oid(oid)
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError('invalid object identifier %r: needs at least two arcs, the first 0, 1 or 2' % (oid,))
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk, rest = [arc & 0x7F], arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(chunk))
    return encode_tlv(OID, bytes(body))


def encode_value(value):
    """None -> NULL, int -> INTEGER, bytes/str -> OCTET STRING."""
    if value is None:
        return encode_tlv(NULL, b'')
    if isinstance(value, bool):
        raise TypeError('SNMP has no boolean type; use an INTEGER')
    if isinstance(value, int):
        return encode_integer(value)
    if isinstance(value, str):
        value = value.encode('utf-8')
    return encode_tlv(OCTET_STRING, bytes(value))


def parse_oid(oid):
    """'1.3.6.1' or '.1.3.6.1' or a tuple of ints -> tuple of ints."""
    if isinstance(oid, str):
        try:
            return tuple(int(arc) for arc in oid.strip().lstrip('.').split('.'))
        except ValueError:
            raise ValueError('invalid object identifier %r: expected dotted decimal like 1.3.6.1.2.1' % oid) from None
    return tuple(oid)


def format_oid(arcs):
    return '.'.join(str(arc) for arc in arcs)


def decode_tlv(data, offset=0):
    """Return (tag, payload, next offset) of the element at ``offset``."""
    try:
        tag, first = data[offset], data[offset + 1]
    except IndexError:
        raise SnmpError('truncated BER element at byte %d' % offset) from None
    offset += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise SnmpError('unsupported BER length at byte %d' % (offset - 1))
        length = int.from_bytes(data[offset:offset + count], 'big')
        offset += count
    else:
        length = first
    end = offset + length
    if end > len(data):
        raise SnmpError('truncated BER element at byte %d: needs %d bytes, %d left'
                        % (offset, length, len(data) - offset))
    return tag, bytes(data[offset:end]), end


def decode_integer(payload, signed=True):
    if not payload:
        raise SnmpError('empty BER integer')
    return int.from_bytes(payload, 'big', signed=signed)


def decode_oid(payload):
    if not payload:
        raise SnmpError('empty BER object identifier')
    arcs, arc = [], 0
    for byte in payload:
        arc = (arc << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(arc)
            arc = 0
    if payload[-1] & 0x80:
        raise SnmpError('truncated BER object identifier')
    first = arcs[0]
    head = (first // 40, first % 40) if first < 80 else (2, first - 80)
    return head + tuple(arcs[1:])


def decode_value(tag, payload):
    """The Python value of a varbind: int, bytes, None, an OID tuple, or the exception's name."""
    if tag == INTEGER:
        return decode_integer(payload)
    if tag in UNSIGNED:
        return decode_integer(payload, signed=False)
    if tag == OID:
        return decode_oid(payload)
    if tag == NULL:
        return None
    if tag in EXCEPTIONS:
        return EXCEPTIONS[tag]
    return payload  # OCTET STRING, IpAddress, Opaque: the raw bytes


def sequence_items(payload):
    items, offset = [], 0
    while offset < len(payload):
        tag, body, offset = decode_tlv(payload, offset)
        items.append((tag, body))
    return items


def build_message(community, pdu_tag, request_id, varbinds):
    """An SNMPv2c message; ``varbinds`` is a list of (oid, value) with value as in encode_value()."""
    binds = b''.join(encode_tlv(SEQUENCE, encode_oid(oid) + encode_value(value)) for oid, value in varbinds)
    pdu = encode_tlv(pdu_tag, encode_integer(request_id) + encode_integer(0) + encode_integer(0)
                     + encode_tlv(SEQUENCE, binds))
    return encode_tlv(SEQUENCE, encode_integer(VERSION_2C) + encode_value(community) + pdu)


def parse_message(data):
    """Decode a v1/v2c message: dict with version, community, pdu, request_id, error_status,
    error_index and varbinds as a list of (oid tuple, tag, value)."""
    tag, body, end = decode_tlv(data)
    if tag != SEQUENCE or end != len(data):
        raise SnmpError('not an SNMP message (tag 0x%02x, %d of %d bytes)' % (tag, end, len(data)))
    parts = sequence_items(body)
    if len(parts) != 3 or parts[0][0] != INTEGER or parts[1][0] != OCTET_STRING:
        raise SnmpError('not an SNMP message: expected version, community and a PDU')
    pdu_tag, pdu = parts[2]
    fields = sequence_items(pdu)
    if len(fields) != 4 or any(field[0] != INTEGER for field in fields[:3]) or fields[3][0] != SEQUENCE:
        raise SnmpError('malformed SNMP PDU 0x%02x' % pdu_tag)
    varbinds = []
    for bind_tag, bind in sequence_items(fields[3][1]):
        pair = sequence_items(bind)
        if bind_tag != SEQUENCE or len(pair) != 2 or pair[0][0] != OID:
            raise SnmpError('malformed SNMP variable binding')
        varbinds.append((decode_oid(pair[0][1]), pair[1][0], decode_value(*pair[1])))
    return {'version': decode_integer(parts[0][1]), 'community': parts[1][1], 'pdu': pdu_tag,
            'request_id': decode_integer(fields[0][1]), 'error_status': decode_integer(fields[1][1]),
            'error_index': decode_integer(fields[2][1]), 'varbinds': varbinds}


def error_name(status):
    return ERRORS[status] if 0 <= status < len(ERRORS) else 'error %d' % status


class SnmpClient:
    """GET/SET of single variables on one agent; each call waits ``timeout`` seconds per try."""

    def __init__(self, host, port=161, community='public', timeout=5.0, retries=2):
        self.host, self.port, self.community = host, port, community
        self.timeout, self.retries = timeout, retries

    def get(self, oid):
        return self.request(GET, [(oid, None)])[0][2]

    def set(self, oid, value):
        return self.request(SET, [(oid, value)])[0][2]

    def request(self, pdu_tag, varbinds):
        request_id = int.from_bytes(os.urandom(3), 'big')
        message = build_message(self.community, pdu_tag, request_id, varbinds)
        try:
            family, kind, proto, _unused_name, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_DGRAM)[0]
        except (OSError, UnicodeError) as exc:
            raise SnmpError('cannot resolve %s: %s' % (self.host, exc)) from exc
        with socket.socket(family, kind, proto) as sock:
            for _attempt in range(self.retries + 1):
                try:
                    sock.sendto(message, address)
                except OSError as exc:
                    raise SnmpError('cannot send to %s:%s: %s' % (self.host, self.port, exc)) from exc
                answer = self._receive(sock, request_id)
                if answer is not None:
                    return self._check(answer, varbinds)
        raise SnmpTimeout('no answer from %s:%s after %gs (%d retries)'
                          % (self.host, self.port, self.timeout, self.retries))

    def _receive(self, sock, request_id):
        """The response to ``request_id``, or None when the timeout passes; stray datagrams are skipped."""
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                data = sock.recv(65535)
            except socket.timeout:
                return None
            except OSError as exc:  # ICMP port unreachable surfaces here on Linux
                raise SnmpError('%s:%s refused the request: %s' % (self.host, self.port, exc)) from exc
            try:
                answer = parse_message(data)
            except SnmpError:
                continue
            if answer['pdu'] == RESPONSE and answer['request_id'] == request_id:
                return answer

    @staticmethod
    def _check(answer, varbinds):
        if answer['error_status']:
            index = answer['error_index']
            where = ' on %s' % format_oid(parse_oid(varbinds[index - 1][0])) if 0 < index <= len(varbinds) else ''
            raise SnmpError('agent answered %s%s' % (error_name(answer['error_status']), where))
        if len(answer['varbinds']) != len(varbinds):
            raise SnmpError('agent answered %d variables for %d asked' % (len(answer['varbinds']), len(varbinds)))
        for oid, tag, _unused_value in answer['varbinds']:
            if tag in EXCEPTIONS:
                raise SnmpError('agent answered %s for %s' % (EXCEPTIONS[tag], format_oid(oid)))
        return answer['varbinds']
