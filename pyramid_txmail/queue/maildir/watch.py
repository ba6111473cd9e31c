"""Wait for mail to arrive in a spool's ``new/``: inotify on Linux, polling elsewhere.

``txmail-qp --daemon`` sleeps here between passes.  A watcher is told
:meth:`~PollWatcher.mark` just before a pass starts; :meth:`~PollWatcher.wait`
then returns at once if anything arrived since (so mail queued *during* a
pass does not wait for the next timeout), else when mail arrives, when the
timeout passes, or when the :class:`Waker` is poked (a signal).

inotify is reached through ctypes on the C library (``inotify_init1``,
``inotify_add_watch``, ``read``): it is a few lines, and Linux-only anyway,
so a dependency would buy nothing.  Writers must follow the Maildir rule
(write in ``tmp/``, then rename or link into ``new/``), as
:class:`~pyramid_txmail.queue.maildir.spool.Spool` and repoze.sendmail do: the watch is
on ``IN_MOVED_TO | IN_CREATE``, so a file written in place in ``new/`` could
be seen before it is complete.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import select
import struct
import sys
import time

from ...util.printable import get_logger
from ..wakeup import (WATCH_MODES, Waker, WatchLost,  # noqa: F401 (public here too)
                      WatchUnavailable)

log = get_logger("pyramid_txmail.watch")


# <sys/inotify.h>
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


def _message_names(directory):
    """Names of the message files in ``directory`` (dotfiles are not messages)."""
    try:
        with os.scandir(directory) as entries:
            return {e.name for e in entries if not e.name.startswith(".")}
    except FileNotFoundError:
        return set()


class PollWatcher:
    """Looks at ``new/`` with ``os.scandir`` every ``interval`` seconds.

    A name that was there at :meth:`mark` does not count as new: a file
    left in ``new/`` after a pass (one the processor could not claim) must
    not make the daemon spin.
    """

    kind = "poll"

    def __init__(self, directory, interval):
        self.directory = directory
        self.interval = interval
        self._seen = set()

    def describe(self):
        return f"polling {self.directory} every {self.interval:g}s"

    def mark(self):
        self._seen = _message_names(self.directory)

    def wait(self, timeout, waker):
        """``"mail"``, ``"timeout"`` or ``"woken"``: why the wait ended."""
        deadline = time.monotonic() + timeout
        while True:
            if _message_names(self.directory) - self._seen:
                return "mail"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            if waker.wait(min(self.interval, remaining)):
                return "woken"

    def close(self):
        pass


def _libc():
    if not sys.platform.startswith("linux"):
        raise WatchUnavailable(f"inotify is Linux-only (this is {sys.platform})")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    try:
        init1, add_watch = libc.inotify_init1, libc.inotify_add_watch
    except AttributeError:
        raise WatchUnavailable("the C library has no inotify_init1") from None
    init1.argtypes, init1.restype = [ctypes.c_int], ctypes.c_int
    add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    add_watch.restype = ctypes.c_int
    return init1, add_watch


class InotifyWatcher:
    """Blocks in ``select`` on an inotify descriptor watching ``new/``.

    Events that come in during a pass (mail committed meanwhile, also the
    stale claims the pass itself put back) stay queued in the descriptor
    and end the next :meth:`wait` at once; :meth:`mark` drops the ones
    from before the pass, which that pass will see anyway.
    """

    kind = "inotify"
    MASK = IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR

    def __init__(self, directory):
        self.directory = directory
        init1, add_watch = _libc()
        self.fd = init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            code = ctypes.get_errno()
            raise WatchUnavailable(f"inotify_init1: {os.strerror(code)}"
                                   + (" (fs.inotify.max_user_instances reached)"
                                      if code == errno.EMFILE else ""))
        if add_watch(self.fd, os.fsencode(directory), self.MASK) < 0:
            code = ctypes.get_errno()
            os.close(self.fd)
            raise WatchUnavailable(f"inotify_add_watch {directory}: {os.strerror(code)}")

    def describe(self):
        return f"watching {self.directory} with inotify"

    def _read(self):
        """The masks of the queued events (empty when none)."""
        masks = []
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return masks
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                masks.append(mask)
                offset += _EVENT.size + length

    def mark(self):
        self._check(self._read())

    def _check(self, masks):
        if any(m & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF) for m in masks):
            raise WatchLost(f"{self.directory}: the watched directory was removed or moved")
        return masks

    def wait(self, timeout, waker):
        """``"mail"``, ``"timeout"`` or ``"woken"``: why the wait ended."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            readable, _, _ = select.select([self.fd, waker.read_fd], [], [], remaining)
            if waker.read_fd in readable:
                waker.drain()
                return "woken"
            if self.fd in readable and self._check(self._read()):
                return "mail"  # IN_Q_OVERFLOW too: something arrived, look

    def close(self):
        os.close(self.fd)


#: File systems whose changes made by other machines inotify does not see.
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs",
                       "lustre", "afs", "9p", "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs")


def filesystem_type(path, mountinfo="/proc/self/mountinfo"):
    """The type of the file system holding ``path`` (``"ext4"``, ``"nfs4"``...), or None."""
    target = os.path.realpath(path)
    best, found = -1, None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields, _, rest = line.partition(" - ")
                fields, rest = fields.split(), rest.split()
                if len(fields) < 5 or not rest:
                    continue
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= best:
                    best, found = len(point), rest[0]
    except OSError:
        return None
    return found


def make_watcher(mode, directory, poll_interval):
    """The watcher for ``--watch MODE``; ``auto`` falls back to polling with a warning.

    ``auto`` also polls a spool on a network file system: inotify there only
    sees what this machine writes, not the mail another web server queued.
    Raises :class:`WatchUnavailable` when ``inotify`` was asked for and cannot be had.
    """
    if mode not in WATCH_MODES:
        raise ValueError(f"watch mode {mode!r}: expected one of {', '.join(WATCH_MODES)}")
    if mode == "poll":
        return PollWatcher(directory, poll_interval)
    fstype = filesystem_type(directory) if mode == "auto" else None
    if fstype in NETWORK_FILESYSTEMS:
        log.info("%s is on %s, where inotify does not see other machines' writes; "
                 "polling every %gs", directory, fstype, poll_interval)
        return PollWatcher(directory, poll_interval)
    try:
        return InotifyWatcher(directory)
    except WatchUnavailable as exc:
        if mode == "inotify":
            raise
        log.warning("inotify unavailable (%s); polling %s every %gs instead", exc,
                    directory, poll_interval)
        return PollWatcher(directory, poll_interval)
