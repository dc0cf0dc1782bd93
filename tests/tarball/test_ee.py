# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The execution environment's build, as docs/awx.md documents it, run again and again: the documented commands twice
on a copy of the tree (a rerun once failed without --force), `ansible-builder create` each time, and the image's
collection step (the Containerfile's own RUN line) against one tarball and against two (an old one left behind).
ansible-builder's `build` needs a container engine, which this machine has not."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VERSION = yaml.safe_load((REPO / 'galaxy.yml').read_text())['version']


def documented_build():
    """The command line of docs/awx.md that builds the collection for the image."""
    text = (REPO / 'docs' / 'awx.md').read_text(encoding='utf-8')
    block = re.search(r'^## 1\. The execution environment.*?^```sh\n(.*?)^```', text, re.M | re.S).group(1)
    line = next(line for line in block.splitlines() if 'ansible-galaxy collection build' in line)
    return line.split('#')[0].strip()


def copy_of_the_tree(top):
    tree = top / 'tree'
    tree.mkdir()
    files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=REPO,
                           capture_output=True, check=True).stdout
    subprocess.run(['tar', '--null', '-T', '-', '-cf', str(top / 'tree.tar')], input=files, cwd=REPO, check=True)
    subprocess.run(['tar', '-xf', str(top / 'tree.tar'), '-C', str(tree)], check=True)
    return tree


def test_the_documented_build_runs_again_and_again(tmp_path):
    tree = copy_of_the_tree(tmp_path)
    (tree / '.build' / 'ee').mkdir(parents=True)
    (tree / '.build' / 'ee' / 'pifleet-netboot-0.0.9.tar.gz').write_bytes(b'an older build')  # left behind
    line = documented_build()
    assert line.startswith('rm -rf .build/ee && ') and '--force' not in line, line
    env = {'PATH': '%s:/usr/bin:/bin:/usr/sbin:/sbin' % BIN}
    for _attempt in range(2):
        proc = subprocess.run(['sh', '-c', line], cwd=tree, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        created = subprocess.run([str(BIN / 'ansible-builder'), 'create', '-f', 'execution-environment.yml', '-c',
                                  '.build/ee/context', '--output-filename', 'Containerfile'], cwd=tree, env=env,
                                 capture_output=True, text=True, check=False)
        assert created.returncode == 0, created.stdout + created.stderr
        copied = sorted(p.name for p in (tree / '.build/ee/context/_build/collection').iterdir())
        assert copied == ['pifleet-netboot-%s.tar.gz' % VERSION], copied


def collection_step(containerfile):
    """The Containerfile's RUN line that links the one collection tarball for the galaxy step."""
    return next(line[len('RUN '):] for line in containerfile.splitlines()
                if line.startswith('RUN ') and '/build/pifleet-netboot.tar.gz' in line)


def test_the_image_takes_exactly_one_tarball_and_says_so_otherwise(tmp_path):
    subprocess.run(['make', '-s', 'ee'], cwd=REPO, check=True, capture_output=True, timeout=600)
    subprocess.run(['make', '-s', 'ee'], cwd=REPO, check=True, capture_output=True, timeout=600)  # again: same result
    step = collection_step((REPO / '.build' / 'ee' / 'context' / 'Containerfile').read_text())
    root = tmp_path / 'build'
    script = step.replace('/build/', '%s/' % root)
    (root / 'collection').mkdir(parents=True)
    (root / 'collection' / ('pifleet-netboot-%s.tar.gz' % VERSION)).write_bytes(b'x')
    subprocess.run(['sh', '-c', script], check=True)
    assert (root / 'pifleet-netboot.tar.gz').resolve() == root / 'collection' / ('pifleet-netboot-%s.tar.gz' % VERSION)
    (root / 'pifleet-netboot.tar.gz').unlink()
    (root / 'collection' / 'pifleet-netboot-0.0.9.tar.gz').write_bytes(b'old')
    proc = subprocess.run(['sh', '-c', script], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and 'wants exactly one pifleet-netboot-<version>.tar.gz in .build/ee' in proc.stderr
    assert not (root / 'pifleet-netboot.tar.gz').exists()
