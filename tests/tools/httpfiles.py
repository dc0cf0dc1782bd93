# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small HTTP file server on loopback that counts what it serves (images, checksum files)."""

from __future__ import annotations

import http.server
import os
import threading
import time
from contextlib import contextmanager


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests = 0
    sent = 0
    paths = ()
    pause = 0.0  # seconds between chunks, so a test can watch the store while the download runs

    def do_GET(self):
        type(self).requests += 1
        type(self).paths = (*type(self).paths, self.path)
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(os.path.getsize(path)))
        self.end_headers()
        with open(path, 'rb') as handle:
            for chunk in iter(lambda: handle.read(256 * 1024), b''):
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
                time.sleep(type(self).pause)

    def log_message(self, *args):
        pass


@contextmanager
def serving(www):
    """Serve the directory ``www``; yields (base URL, handler class with the counts)."""
    handler = type('Handler', (CountingHandler,), {})
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), lambda *a: handler(*a, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield 'http://127.0.0.1:%d/' % server.server_port, handler
    finally:
        server.shutdown()
        server.server_close()


def serve(www, path, name=None):
    """Put the file ``path`` in ``www`` (a hard link) under ``name``; its name there."""
    target = www / (name or os.path.basename(path))
    os.link(path, target)
    return target.name
