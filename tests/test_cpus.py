"""The default ``mail.processes``: the affinity mask, or fewer under a cgroup CPU quota.

The quota files are the kernel's formats (cgroup v2 ``cpu.max``, v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``), laid out in a directory that
stands in for ``/sys/fs/cgroup``, with a ``/proc/self/cgroup`` of the same shape.
"""
from __future__ import annotations

import os

import pytest

from pyramid_txmail.settings import parse_settings
from pyramid_txmail.util import cpus


def tree(tmp_path, proc_lines, files):
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("".join(line + "\n" for line in proc_lines))
    return str(root), str(proc)


def test_v2_namespaced_container_quota_of_one_cpu(tmp_path):
    root, proc = tree(tmp_path, ["0::/"], {"cpu.max": "100000 100000\n"})
    assert cpus.quota_cores(root, proc) == 1
    assert cpus.usable_cores(root, proc) == 1


def test_v2_fractional_quota_rounds_up(tmp_path):
    root, proc = tree(tmp_path, ["0::/"], {"cpu.max": "150000 100000\n"})
    assert cpus.quota_cores(root, proc) == 2


def test_v2_no_quota_is_the_affinity_mask(tmp_path):
    root, proc = tree(tmp_path, ["0::/"], {"cpu.max": "max 100000\n"})
    assert cpus.quota_cores(root, proc) is None
    assert cpus.usable_cores(root, proc) == len(os.sched_getaffinity(0))


def test_v2_the_tightest_ancestor_holds(tmp_path):
    root, proc = tree(tmp_path, ["0::/kubepods/pod1/ctr"], {
        "kubepods/cpu.max": "max 100000\n",
        "kubepods/pod1/cpu.max": "200000 100000\n",
        "kubepods/pod1/ctr/cpu.max": "400000 100000\n"})
    assert cpus.quota_cores(root, proc) == 2


def test_v1_cfs_quota(tmp_path):
    root, proc = tree(tmp_path, ["12:memory:/docker/abc", "4:cpu,cpuacct:/docker/abc", "0::/"], {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cpus.quota_cores(root, proc) == 1


def test_v1_unlimited_and_unreadable_files_are_no_quota(tmp_path):
    root, proc = tree(tmp_path, ["1:cpu:/"], {"cpu/cpu.cfs_quota_us": "-1\n",
                                             "cpu/cpu.cfs_period_us": "100000\n"})
    assert cpus.quota_cores(root, proc) is None
    root, proc = tree(tmp_path / "b", ["0::/"], {"cpu.max": "garbage\n"})
    assert cpus.quota_cores(root, proc) is None
    assert cpus.quota_cores(str(tmp_path / "none"), str(tmp_path / "missing")) is None


@pytest.mark.parametrize("quota, expected", [("100000 100000", 1), ("300000 100000", 3)])
def test_the_default_processes_follow_the_quota(tmp_path, monkeypatch, quota, expected):
    """parse_settings' default mail.processes reads the same files."""
    root, proc = tree(tmp_path, ["0::/"], {"cpu.max": quota + "\n"})
    monkeypatch.setattr(cpus, "CGROUP_ROOT", root)
    monkeypatch.setattr(cpus, "PROC_CGROUP", proc)
    monkeypatch.setattr(cpus, "affinity_cores", lambda: 64)
    assert parse_settings({}).processes == expected


def test_this_machine_gives_a_sane_answer():
    """On the real /sys/fs/cgroup and /proc/self/cgroup: a whole number of cores,
    never more than the affinity mask."""
    cores = cpus.usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("proc_line, cpu_max, expected", [
    ("0::/", "1 100000", 1),                      # a sliver of a core is still one process
    ("0::/", "9" * 400 + " 1", None),              # beyond any machine: no limit
    ("0::/a\x00b", "100000 100000", 1),            # a NUL in the path: the root's quota
    ("0::/", "-5 100000", None),
    ("garbage without colons", "100000 100000", None),
])
def test_odd_cgroup_files_never_crash_and_never_give_zero(tmp_path, proc_line, cpu_max,
                                                          expected):
    root, proc = tree(tmp_path, [proc_line], {"cpu.max": cpu_max + "\n"})
    assert cpus.quota_cores(root, proc) == expected
    assert cpus.usable_cores(root, proc) >= 1
