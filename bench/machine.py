"""What RESULTS.md says about the run's surroundings: machine, load, versions.

Wall clocks mean little without the machine they came from and what else
it was doing, so every run records the CPU, the file system of the spools,
the load average and I/O pressure at its start and end, and the versions
of everything measured.
"""
from __future__ import annotations

import glob
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def filesystem_of(path):
    """``(fstype, device, mount point)`` holding ``path``, from /proc/mounts."""
    path, best = os.path.realpath(path), ("unknown", "unknown", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) \
                    and len(mount) >= len(best[2]):
                best = (fstype, device, mount)
    except OSError:
        pass
    return best


def load():
    """Load average and I/O pressure now: other work on the machine skews wall clocks."""
    try:
        average = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        average = "unknown"
    try:
        some = Path("/proc/pressure/io").read_text().splitlines()[0].split()
        pressure = ", I/O pressure " + " ".join(some[1:3])
    except (OSError, IndexError):
        pressure = ""
    return f"load average {average}{pressure}"


def machine(workdir):
    fstype, device, mount = filesystem_of(workdir)
    return [("CPU", _cpu_model()), ("cores", str(os.cpu_count())),
            ("memory", _memory()), ("kernel", f"{platform.system()} {platform.release()}"),
            ("filesystem of the spools", f"{fstype} on {device} (mounted at {mount}); "
                                         f"work directory {workdir}")]


def _dist_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _postfix_version():
    debs = sorted(glob.glob(str(ROOT / ".deps" / "debs" / "postfix_*.deb")))
    if debs:
        return Path(debs[-1]).name.split("_")[1] + " (Debian package, unpacked)"
    return "unknown"


def versions():
    return [("Python", platform.python_version()),
            ("pyramid_txmail", f"{_dist_version('pyramid_txmail')}, git {_git_rev()}"),
            ("repoze.sendmail", _dist_version("repoze.sendmail")),
            ("pyramid_mailer", _dist_version("pyramid_mailer")),
            ("transaction", _dist_version("transaction")),
            ("aiosmtpd", _dist_version("aiosmtpd")),
            ("Postfix (smtp-sink, smtp-source)", _postfix_version())]
