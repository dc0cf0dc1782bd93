# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bakeform's ``checksum``: ``sha256:<64 hex digits>``, or ``sha256:<URL>`` of a checksum file (as get_url takes).

Both are checked before anything is fetched: a malformed value, or the all-zero placeholder of an example
inventory, fails at once instead of after a download of gigabytes. A checksum file is small (capped at
``FILE_LIMIT``): either one bare hash, or lines ``<hash>  <name>`` (``sha256sum``'s output, ``*<name>`` in
binary mode) or ``SHA256 (<name>) = <hash>`` (BSD style), from which the image's own file name picks its hash.
Pure functions; the module fetches the file.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit

from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import IngestError

FILE_LIMIT = 1 << 20  # a SHA256SUMS of a whole release directory is a few KiB
_HEX = re.compile(r'[0-9a-fA-F]{64}')
_VALUE = re.compile(r'sha256:(?P<rest>.*)', re.S)
_URL = re.compile(r'https?://\S+')  # fetched with fetch_url, which answers HTTP status 200
# A URL's scheme, its authority (userinfo@host:port) and the rest, for without_credentials.
_AUTHORITY = re.compile(r'(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<netloc>[^/?#]*)(?P<rest>.*)', re.S)
_BSD = re.compile(r'SHA256 \((?P<name>.+)\) = (?P<hash>[0-9a-fA-F]{64})')
_FORM = ('"sha256:<64 hex digits>" (the checksum published beside the image) or "sha256:<URL of a checksum '
         'file>", such as sha256:https://downloads.raspberrypi.com/.../image.img.xz.sha256')


def parse(checksum):
    """``(digest, url)`` of a ``checksum`` option: one of them is set, or both are None when none is given.

    Raises IngestError for anything else, and for the all-zero placeholder, saying what to put there.
    """
    if checksum is None or not str(checksum).strip():
        return None, None
    text = str(checksum).strip()
    match = _VALUE.fullmatch(text)
    rest = match.group('rest').strip() if match else ''
    if match and _HEX.fullmatch(rest):
        if not rest.strip('0'):
            raise IngestError('checksum %s is a placeholder (all zeros), not the checksum of an image: put the sha256 '
                              'published beside the image there (e.g. the content of <image URL>.sha256), or '
                              'sha256:<URL> of that file; nothing was fetched or unpacked' % text)
        return rest.lower(), None
    if match and _URL.fullmatch(rest):
        return None, rest
    raise IngestError('checksum %r is not of the form %s' % (text, _FORM))


def url_problem(url):
    """Why ``url`` cannot be fetched as given (a message), or None."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed "[" of an IPv6 host, say
        return '%s is not a URL that can be fetched: %s' % (without_credentials(url)[0], exc)
    if parts.scheme not in ('http', 'https', 'ftp', 'file') or not (parts.netloc or parts.scheme == 'file'):
        return '%s is not a URL that can be fetched: give http(s)://host/path' % without_credentials(url)[0]
    return None


def without_credentials(url):
    """``(url without its user name and password, [the secrets it held])``: what a manifest records and results show
    is the first; the module masks the second wherever else the URL appears (its arguments, a tool's message).
    Read by hand, not with urlsplit, so a URL too broken to fetch loses its credentials too."""
    match = _AUTHORITY.match(url) if isinstance(url, str) else None
    if not match:
        return url, []
    userinfo, at, host = match.group('netloc').rpartition('@')
    if not at:
        return url, []
    user, _colon, password = userinfo.partition(':')
    secrets = [unquote(password), password] if password else [unquote(user), user]  # a token alone is its user
    return match.group('scheme') + host + match.group('rest'), sorted({value for value in secrets if value})


def file_name(source):
    """The image's file name, which picks its line in a checksum file: the last part of a path or URL path."""
    path = urlsplit(source).path if '://' in source else source
    return os.path.basename(unquote(path.rstrip('/')))


def _entries(text):
    """(hash, name) of each line of a checksum file that has both, in order."""
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        bsd = _BSD.fullmatch(line)
        if bsd:
            found.append((bsd.group('hash').lower(), bsd.group('name')))
            continue
        digest, sep, name = line.partition(' ')
        if sep and _HEX.fullmatch(digest):
            name = name.strip()
            found.append((digest.lower(), name[1:] if name.startswith('*') else name))
    return found


def from_file(text, name, url):
    """The sha256 for the image ``name`` in the checksum file ``text`` fetched from ``url``; IngestError if none."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith('#')]
    if len(lines) == 1 and _HEX.fullmatch(lines[0]):
        digest = lines[0].lower()  # a bare hash: the file is about one image
    else:
        found = {digest for digest, listed in _entries(text)
                 if listed.lstrip('./') == name or os.path.basename(listed) == name}
        if len(found) > 1:
            raise IngestError('checksum file %s lists %s %d times with different hashes; point checksum at the file '
                              'for this image' % (url, name, len(found)))
        if not found:
            what = 'has no line for %s' % name if lines else 'is empty'
            raise IngestError('checksum file %s %s (expected "<sha256>  %s" or one bare sha256); check that it is the '
                              'checksum file of this image, or give checksum: "sha256:<64 hex digits>"'
                              % (url, what, name))
        digest = found.pop()
    if not digest.strip('0'):
        raise IngestError('checksum file %s gives an all-zero sha256 for %s: that is a placeholder, not a checksum'
                          % (url, name))
    return digest
