# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Simulated Pis that answer SSH on loopback, as a Pi does once it has booted its root.

``SshPis({address: key_path})`` listens on ``<address>:22`` (any 127.x.y.z) for each Pi and completes
an SSH key exchange (paramiko) with the Pi's own ed25519 host key, read from ``key_path`` at every
connection: the key file in the Pi's root, so a rebuilt root's key is the one shown. That is all
``ssh-keyscan`` (what the reimage playbook waits with) needs; nobody can log in. ``up`` can be
cleared for an address to make its Pi silent.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

import paramiko

logging.getLogger('paramiko').setLevel(logging.CRITICAL)  # ssh-keyscan asking for other key types is expected


class _Refuse(paramiko.ServerInterface):
    def get_allowed_auths(self, username):
        return 'publickey'


class SshPis:
    def __init__(self, keys, port=22):
        self.keys, self.port = dict(keys), port
        self.up = set(self.keys)
        self.asked = {address: 0 for address in self.keys}  # connections answered
        self.sockets, self.threads = [], []
        self.stopping = threading.Event()
        for address in self.keys:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(16)
            sock.settimeout(0.2)
            self.sockets.append(sock)
            thread = threading.Thread(target=self._serve, args=(address, sock), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, address, sock):
        while not self.stopping.is_set():
            try:
                conn, _peer = sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if address not in self.up:
                conn.close()
                continue
            threading.Thread(target=self._answer, args=(address, conn), daemon=True).start()

    def _answer(self, address, conn):
        transport = paramiko.Transport(conn)
        try:
            transport.add_server_key(paramiko.Ed25519Key(filename=self.keys[address]))
            self.asked[address] += 1
            transport.start_server(server=_Refuse())
            transport.accept(2)
        except (paramiko.SSHException, OSError, EOFError):
            pass  # ssh-keyscan hangs up after the key exchange, or asks for a key type this Pi has not
        finally:
            transport.close()

    def close(self):
        self.stopping.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self.threads:
            thread.join(5)
