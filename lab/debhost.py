# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Work on an arm64 image tree done natively on the build host instead of under qemu-user.

Under qemu-user every maintainer script of an arm64 image runs emulated, and a few of them cost
minutes on a 2-core machine (measured on a trixie build with cloud-init: byte-compiling Python
about 150 s, ``update-ca-certificates`` 57 s, the kernel's ``depmod`` 32 s, ``locale-gen``'s loop 43 s).
lab/realimage.py keeps them from running during the build and does their work here, at native
speed, with the same result:

- ``PrivateApt``: apt-get with a private state dir for any architecture and suite (downloads
  only; the host's apt configuration is never touched, no ``dpkg --add-architecture``);
- ``native_python``: the target suite's own CPython for the host's architecture, unpacked from
  its .debs into a cache dir and run through its own dynamic loader (its glibc is newer than the
  host's), so ``.pyc`` files come from the very version the image runs;
- ``byte_compile``: what ``py3compile`` and the interpreter's postinst would have written;
- ``ca_certificates``: what ``update-ca-certificates`` writes on a fresh install (the ``.pem``
  links, the bundle, the ``openssl rehash`` links);
- ``depmod``: the host's depmod (kmod reads any architecture's modules) on the tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg'


def run(argv, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError('%s failed (rc %d): %s' % (' '.join(map(str, argv)), proc.returncode,
                                                      (proc.stderr or proc.stdout).strip()[-2000:]))
    return proc.stdout


def host_arch():
    return run(['dpkg', '--print-architecture']).strip()


class PrivateApt:
    """apt-get and apt-cache on a private state dir: ``suites`` of ``mirror`` for ``arch``."""

    def __init__(self, workdir, arch, suites, mirror, components='main'):
        self.dir = Path(workdir)
        for sub in ('etc/apt/preferences.d', 'etc/apt/apt.conf.d', 'var/lib/apt/lists/partial',
                    'var/cache/apt/archives/partial', 'var/lib/dpkg'):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / 'var/lib/dpkg/status').touch()
        (self.dir / 'etc/apt/sources.list').write_text(''.join(
            'deb [signed-by=%s] %s %s %s\n' % (KEYRING, mirror, suite, components) for suite in suites))
        self.options = ['-o', 'Dir=%s' % self.dir, '-o', 'Dir::State::status=%s/var/lib/dpkg/status' % self.dir,
                        '-o', 'APT::Architecture=%s' % arch, '-o', 'APT::Architectures=%s' % arch,
                        '-o', 'Dir::Etc::Trusted=/etc/apt/trusted.gpg',
                        '-o', 'Dir::Etc::TrustedParts=/etc/apt/trusted.gpg.d',
                        '-o', 'APT::Sandbox::User=root', '-qq']
        self.updated = False

    def update(self):
        if not self.updated:
            run(['apt-get', *self.options, 'update'])
            self.updated = True

    def depends(self, package):
        """The packages ``package`` depends on (first alternative of each), in apt-cache's order."""
        self.update()
        out = run(['apt-cache', *self.options, 'depends', '--no-recommends', '--no-suggests', '--no-conflicts',
                   '--no-breaks', '--no-replaces', '--no-enhances', package])
        return re.findall(r'^\s+\|?(?:Pre)?Depends: (\S+)', out, re.M)

    def download(self, packages, dest):
        """The .deb file of each package (kept in ``dest``: a file already there is not fetched again)."""
        self.update()
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        out = run(['apt-get', *self.options, '--print-uris', 'download', *packages])
        names = re.findall(r"^'[^']+' (\S+) ", out, re.M)
        missing = [name for name in names if not (dest / name).is_file()]
        if missing:
            scratch = dest / '.download'
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            run(['apt-get', *self.options, 'download',
                 *('%s=%s' % (name.split('_')[0], _version(name)) for name in missing)], cwd=str(scratch))
            for name in missing:
                os.replace(scratch / name, dest / name)
            shutil.rmtree(scratch, ignore_errors=True)
        return [dest / name for name in names]


def _version(deb_name):
    """``foo_1%3a2.0-1_arm64.deb`` -> ``1:2.0-1``."""
    return deb_name.split('_')[1].replace('%3a', ':')


def native_python(version, suite, mirror, cache):
    """argv that runs ``python<version>`` of ``suite`` for the host's architecture (unpacked once into cache)."""
    arch = host_arch()
    home = Path(cache) / ('python%s-%s-%s' % (version, suite, arch))
    loader = next(iter(home.glob('usr/lib/*/ld-linux*.so.*')), None) if home.is_dir() else None
    if loader is None:
        scratch = Path(str(home) + '.partial')
        shutil.rmtree(scratch, ignore_errors=True)
        apt = PrivateApt(scratch / 'apt', arch, [suite], mirror)
        debs = apt.download(['libc6', 'python%s-minimal' % version, 'libpython%s-minimal' % version,
                             'libpython%s-stdlib' % version, 'zlib1g', 'libexpat1'], scratch / 'debs')
        for deb in debs:
            run(['dpkg-deb', '-x', str(deb), str(scratch / 'root')])
        shutil.rmtree(home, ignore_errors=True)
        os.replace(scratch / 'root', home)
        shutil.rmtree(scratch, ignore_errors=True)
        loader = next(home.glob('usr/lib/*/ld-linux*.so.*'))
    return [str(loader), '--library-path', str(loader.parent), str(home / 'usr/bin' / ('python%s' % version))]


def compile_dirs(root, version):
    """The directories Debian byte-compiles: the interpreter's stdlib, dist-packages, and every private
    directory a package's postinst hands to py3compile."""
    dirs = {'/usr/lib/python%s' % version, '/usr/lib/python3/dist-packages'}
    for postinst in (Path(root) / 'var/lib/dpkg/info').glob('*.postinst'):
        for match in re.finditer(r'py3compile -p \S+((?: +/[^\s;|&]+)*)', postinst.read_text(errors='replace')):
            dirs.update(match.group(1).split())
    return sorted(d for d in dirs if (Path(root) / d.lstrip('/')).is_dir())


def byte_compile(root, python, dirs):
    """Compile every .py under ``dirs`` of the tree as the image's interpreter would (timestamp .pyc files
    that name the file's path on the Pi); how many .pyc files there are then. One process: compileall's
    workers would start the interpreter without its own loader."""
    root = Path(root)
    proc = subprocess.run([*python, '-E', '-S', '-m', 'compileall', '-q', '-j', '1', '--invalidation-mode',
                           'timestamp', '-s', str(root), '-p', '/', *(str(root / d.lstrip('/')) for d in dirs)],
                          capture_output=True, text=True, check=False)
    written = sum(len(list((root / d.lstrip('/')).rglob('*.pyc'))) for d in dirs)
    if not written:  # rc 1 alone means some file for another Python version did not compile
        raise RuntimeError('byte-compiling %s wrote nothing (rc %d): %s'
                           % (root, proc.returncode, (proc.stderr or proc.stdout)[-2000:]))
    return written


def _pem_name(cert):
    base = Path(cert).name[:-len('.crt')] if cert.endswith('.crt') else Path(cert).name
    return re.sub(r'[()]', '=', base.replace(' ', '_')).replace(',', '_') + '.pem'


def ca_certificates(root):
    """/etc/ssl/certs as ``update-ca-certificates`` leaves it after a fresh install; the number of certificates."""
    root = Path(root)
    etc = root / 'etc/ssl/certs'
    etc.mkdir(parents=True, exist_ok=True)
    conf = root / 'etc/ca-certificates.conf'
    wanted = [line.strip() for line in conf.read_text().splitlines()
              if line.strip() and not line.startswith(('#', '!'))] if conf.is_file() else []
    certs = ['/usr/share/ca-certificates/' + rel for rel in wanted
             if (root / 'usr/share/ca-certificates' / rel).is_file()]
    local = root / 'usr/local/share/ca-certificates'
    if local.is_dir():
        certs += sorted('/' + str(p.relative_to(root)) for p in local.rglob('*.crt') if p.is_file())
    bundle = []
    for cert in certs:
        link = etc / _pem_name(cert)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(cert)
        text = (root / cert.lstrip('/')).read_text()
        bundle.append(text if text.endswith('\n') else text + '\n')
    tmp = etc / 'ca-certificates.crt.new'
    tmp.write_text(''.join(bundle))
    tmp.chmod(0o644)
    os.replace(tmp, etc / 'ca-certificates.crt')
    # openssl rehash: <subject hash>.<n> -> the .pem link, numbered in name order per hash.
    counts = {}
    for cert in sorted(certs, key=_pem_name):
        subject = run(['openssl', 'x509', '-noout', '-subject_hash', '-in', str(root / cert.lstrip('/'))]).strip()
        number = counts.get(subject, 0)
        counts[subject] = number + 1
        link = etc / ('%s.%d' % (subject, number))
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(_pem_name(cert))
    return len(certs)


def depmod(root, version):
    """modules.dep and friends for kernel ``version`` of the tree, by the host's depmod."""
    binary = shutil.which('depmod') or next((p for p in ('/usr/sbin/depmod', '/sbin/depmod') if os.path.exists(p)),
                                            None)
    if binary is None:
        raise RuntimeError('depmod is missing on this host: install kmod (make apt does)')
    system_map = Path(root) / 'boot' / ('System.map-%s' % version)
    argv = [binary, '-a', '-b', str(root)]
    if system_map.is_file():
        argv += ['-F', str(system_map)]
    run([*argv, version])
