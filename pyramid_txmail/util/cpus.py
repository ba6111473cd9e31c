"""How many cores this process may really use: its affinity mask and its CPU quota.

``mail.processes`` defaults to one process per usable core.  The affinity mask
(``taskset``, cpusets) is one limit; a container's CPU limit is usually
another, a CFS quota (Docker's ``--cpus``, Kubernetes' ``resources.limits.cpu``),
which leaves the affinity mask at every core of the node.  A pod limited to one
CPU on a 64-core node would otherwise start 64 processes (and 64 x
``mail.workers`` SMTP connections).  The quota is read from the cgroup
file system, v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``),
on this process's cgroup and each of its ancestors: the tightest one holds.
"""
from __future__ import annotations

import math
import os

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"
#: Where cgroup v1 mounts the cpu controller (the name depends on the distribution).
_V1_CPU_MOUNTS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")


def affinity_cores():
    """The cores in this process's affinity mask (all of them where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def usable_cores(root=None, proc_cgroup=None):
    """The affinity mask's cores, fewer where a CPU quota allows less, at least 1."""
    cores = affinity_cores()
    quota = quota_cores(root, proc_cgroup)
    return max(1, min(cores, quota)) if quota else cores


def quota_cores(root=None, proc_cgroup=None):
    """The tightest CFS quota on this process's cgroups as whole cores (rounded up:
    a 1.5-CPU limit can keep 2 processes busy part of the time), or None when
    there is no quota or no cgroup file system to read it from."""
    root, proc_cgroup = root or CGROUP_ROOT, proc_cgroup or PROC_CGROUP
    try:
        with open(proc_cgroup, encoding="ascii", errors="replace") as lines:
            entries = [line.rstrip("\n").split(":", 2) for line in lines]
    except OSError:
        return None
    limits = []
    for entry in entries:
        if len(entry) != 3:
            continue
        _, controllers, path = entry
        if controllers == "":  # cgroup v2's unified hierarchy
            limits += _along(os.path.join(root, "unified"), path, _v2_limit)
            limits += _along(root, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            for mount in _V1_CPU_MOUNTS:
                limits += _along(os.path.join(root, mount), path, _v1_limit)
    if not limits:
        return None
    tightest = min(limits)
    # a positive quota is at least one process; a huge one is no limit at all
    return max(1, math.ceil(tightest - 1e-9)) if tightest < 1 << 20 else None


def _along(base, path, read_limit):
    """The limits on ``path`` and each of its ancestors under ``base``.  Inside a
    cgroup namespace the process's own cgroup is mounted at ``base`` itself, and
    ``path`` is ``/``."""
    try:
        if not os.path.isdir(base):
            return []
    except ValueError:  # a NUL byte
        return []
    limits, parts = [], [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        limit = read_limit(os.path.join(base, *parts[:depth]))
        if limit is not None:
            limits.append(limit)
    return limits


def _read(path):
    """The whitespace-separated fields of a cgroup file, or None: missing, unreadable
    or not text (a path with a NUL byte from an odd /proc/self/cgroup included)."""
    try:
        with open(path, encoding="ascii") as file:
            return file.read().split()
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _v2_limit(directory):
    """``cpu.max``: ``QUOTA PERIOD`` in microseconds, or ``max PERIOD`` for none."""
    fields = _read(os.path.join(directory, "cpu.max"))
    if not fields or len(fields) != 2 or fields[0] == "max":
        return None
    return _cores(fields[0], fields[1])


def _v1_limit(directory):
    """``cpu.cfs_quota_us`` (-1 for none) over ``cpu.cfs_period_us``."""
    quota = _read(os.path.join(directory, "cpu.cfs_quota_us"))
    period = _read(os.path.join(directory, "cpu.cfs_period_us"))
    if not quota or not period:
        return None
    return _cores(quota[0], period[0])


def _cores(quota, period):
    try:
        quota, period = int(quota), int(period)
    except ValueError:
        return None
    if quota <= 0 or period <= 0 or quota // period >= 1 << 20:
        return None  # no quota, or one beyond any machine (and any float)
    return quota / period
