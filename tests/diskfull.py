"""Full and read-only disks for the tests, as root or not.

As root the tests mount a real small tmpfs (and remount it read-only); as
another user, where ``mount`` is refused, they fall back to what an ordinary
user can do: ``RLIMIT_FSIZE`` (a write past the limit fails with EFBIG,
just as a full disk fails with ENOSPC) and permission bits.  Which one ran is
in ``Disk.how``, so that a report never claims a tmpfs test that did not run.
"""
from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import subprocess

ROOT = os.geteuid() == 0


def _run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def mount_tmpfs(path, size="2m", read_only=False):
    """Mount a tmpfs of ``size`` at ``path`` (created); ``False`` if mount is refused."""
    os.makedirs(path, exist_ok=True)
    options = f"size={size},mode=0700" + (",ro" if read_only else "")
    return _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)).returncode == 0


def remount_read_only(path):
    proc = _run("mount", "-o", "remount,ro", str(path))
    if proc.returncode != 0:
        raise RuntimeError(f"remount,ro {path} failed: {proc.stderr.strip()}")


def unmount(path):
    _run("umount", "-l", str(path))


@contextlib.contextmanager
def file_size_limit(limit):
    """``RLIMIT_FSIZE`` = ``limit`` bytes for this process (SIGXFSZ ignored: EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def fill(directory, leave=0):
    """Fill the file system of ``directory`` until at most ``leave`` bytes are free;
    returns the filler file's path (delete it to free the space)."""
    path = os.path.join(directory, ".filler")
    block = b"\0" * (1 << 16)
    with open(path, "wb", buffering=0) as f:
        while True:
            free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
            if free <= leave:
                break
            try:
                f.write(block[:max(1, min(len(block), free - leave))])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return path


class Disk:
    """A directory whose file system the test can make full.

    ``how`` is ``"tmpfs"`` (a real tmpfs, filled with a file) or ``"fsize"``
    (``RLIMIT_FSIZE`` on this process while :meth:`full` runs).
    """

    def __init__(self, path, how, limit):
        self.path, self.how, self.limit = str(path), how, limit
        self.mounted = False

    @classmethod
    def make(cls, path, how, limit=64 * 1024):
        """``how`` = "tmpfs" falls back to "fsize" where mounting is not allowed."""
        if how == "tmpfs" and ROOT and mount_tmpfs(path):
            disk = cls(path, "tmpfs", limit)
            disk.mounted = True
            return disk
        os.makedirs(path, exist_ok=True)
        return cls(path, "fsize", limit)

    @contextlib.contextmanager
    def full(self, limit=None):
        """The disk is full while the block runs (fsize: ``limit`` bytes per file)."""
        if self.how == "fsize":
            with file_size_limit(limit or self.limit):
                yield
            return
        filler = fill(self.path)
        try:
            yield
        finally:
            os.unlink(filler)

    def close(self):
        if self.mounted:
            unmount(self.path)
            self.mounted = False
