# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nspawnlab starts each container from a cgroup of its own (plain directories stand in for cgroup trees here)."""

from __future__ import annotations

import subprocess

from lab import nspawnlab


def trees(tmp_path, *names):
    """Directories named like cgroup hierarchies; those in ``names`` have a cgroup.procs (are cgroup file systems)."""
    made = []
    for name in ('systemd', 'unified', 'top'):
        (tmp_path / name).mkdir()
        if name in names:
            (tmp_path / name / 'cgroup.procs').write_text('')
        made.append(str(tmp_path / name))
    return tuple(made)


def test_a_cgroup_per_machine_in_each_hierarchy_the_host_has(tmp_path):
    hybrid = trees(tmp_path, 'systemd', 'unified')
    assert nspawnlab.cgroup_dirs('pf2b1-bakery', hybrid) == [
        str(tmp_path / 'systemd/pifleet-lab/pf2b1-bakery'), str(tmp_path / 'unified/pifleet-lab/pf2b1-bakery')]
    assert nspawnlab.cgroup_dirs('a', hybrid) != nspawnlab.cgroup_dirs('b', hybrid)


def test_the_process_moves_itself_then_execs_keeping_its_pid(tmp_path):
    hybrid = trees(tmp_path, 'systemd', 'unified')
    argv = nspawnlab.in_own_cgroup('pf2b1-bakery', ['sh', '-c', 'echo $$'], hybrid)
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    pid = proc.stdout.strip()
    for path in nspawnlab.cgroup_dirs('pf2b1-bakery', hybrid):
        assert (tmp_path / path / 'cgroup.procs').read_text().strip() == pid  # the PID that ran the command


def test_release_removes_what_is_empty_and_leaves_what_is_in_use(tmp_path):
    pure = trees(tmp_path, 'top')
    (mine,) = nspawnlab.cgroup_dirs('m', pure)
    (tmp_path / mine / 'payload/system.slice').mkdir(parents=True)
    (tmp_path / mine / 'payload/init.scope').mkdir()
    (tmp_path / mine / 'payload/init.scope/in-use').write_text('')  # a real cgroup with processes cannot go
    nspawnlab.release_cgroups('m', pure, wait=0.0)
    assert not (tmp_path / mine / 'payload/system.slice').exists()
    assert (tmp_path / mine / 'payload/init.scope').exists()
    (tmp_path / mine / 'payload/init.scope/in-use').unlink()
    nspawnlab.release_cgroups('m', pure)
    assert not (tmp_path / 'top/pifleet-lab').exists()
    other = nspawnlab.cgroup_dirs('other', pure)[0]
    for machine in ('m', 'other'):
        (tmp_path / 'top/pifleet-lab' / machine).mkdir(parents=True, exist_ok=True)
    (tmp_path / other / 'in-use').write_text('')
    nspawnlab.release_cgroups('m', pure, wait=0.0)
    assert sorted(path.name for path in (tmp_path / 'top/pifleet-lab').iterdir()) == ['other']  # another lab's


def test_release_without_a_machine_name_touches_no_other_lab(tmp_path):
    pure = trees(tmp_path, 'top')
    (tmp_path / 'top/pifleet-lab/other/payload').mkdir(parents=True)  # another lab's, empty for a moment
    nspawnlab.release_cgroups('', pure, wait=0.0)
    assert (tmp_path / 'top/pifleet-lab/other/payload').is_dir()
