"""Claims: a processor's hold on the message it is sending, and when another may take it.

A claim is the rename of ``new/NAME`` (or ``deferred/NAME``) into
``cur/NAME``.  Three things keep a claim held by a live process from ever
being taken -- a second ``txmail-qp`` taking it sends the message twice:

- **the lock**: the claimer opens the file (``O_NOFOLLOW|O_NONBLOCK``, see
  :mod:`pyramid_txmail.util.regular_files`; read-write where it may, as an exclusive
  lock over NFS is a POSIX write lock) and takes ``flock(LOCK_EX)`` on it
  *before* the rename, and keeps that fd open until the message has left
  ``cur/``.  The kernel drops the lock when the process dies, however it
  dies, so a lock that is held means a live owner -- with no pid to be
  reused, and across NFS clients where the mount passes locks to the server
  (NFSv4, or v3 with NLM; with ``nolock`` the lock is local only and the
  heartbeat alone protects).  A claim whose lock is held is never taken by
  a processor, whatever its mtime says.
- **the heartbeat**: while a message is being sent, one thread per pass
  refreshes its claim's mtime through the open fd (``futimens``: never
  through a path, so never through a symlink) every
  :func:`heartbeat_interval`, so a send longer than ``mail.claim_timeout``
  (a slow relay, a DATA transfer of an hour) keeps its claim fresh.
- **the stale rule** (:func:`is_stale`): a claim whose mtime is older than
  ``mail.claim_timeout``, or more than :data:`CLOCK_SKEW` in the future (a
  clock set back after it was made), and whose lock is free, belonged to a
  process that died: it goes back to ``new/`` (at-least-once, as Postfix
  after a crash).

:func:`release` is the one place that moves a claim back, used by the
processor's stale-claim sweep and by ``txmail-queue release``.
"""
from __future__ import annotations

import errno
import fcntl
import io
import os
import stat
import threading

from .leftovers import report_once
from ...util.durations import format_duration
from ...util.printable import get_logger
from ...util.regular_files import READ_FLAGS, kind_of

log = get_logger("pyramid_txmail.claims")

#: Flags of a claim's fd (see :func:`open_for_lock`).
CLAIM_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

#: The heartbeat runs every claim_timeout / 4, and at least this often (seconds).
HEARTBEAT_MAX = 60.0
#: How far in the future a claim's mtime may be (clocks of NFS clients and
#: server differ a little) before it counts as stale; claim_timeout if shorter.
CLOCK_SKEW = 60.0


#: A live claim that looks stale is reported at most this often (seconds) per name.
WARN_EVERY = 600.0
_warned = {}


def heartbeat_interval(timeout):
    """How often a live claim's mtime is refreshed: well inside ``timeout``."""
    return min(timeout / 4.0, HEARTBEAT_MAX)


def is_stale(mtime, now, timeout):
    """Whether a claim last refreshed at ``mtime`` is stale at ``now``.

    Older than ``timeout``, or dated more than :data:`CLOCK_SKEW` (at most
    ``timeout``) ahead of ``now``: a live owner's heartbeat never leaves its
    mtime there, a clock set back after a crash does -- and such a claim
    would otherwise never turn stale.
    """
    return now - mtime >= timeout or mtime - now > min(CLOCK_SKEW, timeout)


def _try_lock(fd):
    """Take the claim lock without waiting; False if a live process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # ENOLCK: a file system without locks; the heartbeat remains
        log.debug("flock on a claim failed (%s); relying on its heartbeat", exc)
    return True


class Claim:
    """The open, locked file of a message this process is sending (in ``cur/``)."""

    def __init__(self, fd, info):
        self.fd = fd
        self.ident = (info.st_dev, info.st_ino)
        self._lock = threading.Lock()
        self._beating = True

    def beat(self):
        """Refresh the claim's mtime (through the fd, never a path)."""
        with self._lock:
            if self._beating and self.fd is not None:
                os.utime(self.fd)

    def settle(self):
        """No more heartbeats: the file is about to leave ``cur/`` (its mtime may
        mean something in its next state)."""
        with self._lock:
            self._beating = False

    def holds(self, path):
        """Whether ``path`` is still this claim's file (not released meanwhile)."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return False
        return (info.st_dev, info.st_ino) == self.ident

    def reader(self):
        """A binary file object reading the claimed file through the fd (``pread``)."""
        return io.BufferedReader(_PositionalReader(self.fd))

    def close(self):
        """Close the fd, which drops the lock: call it once the file left ``cur/``."""
        with self._lock:
            self._beating = False
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


class _PositionalReader(io.RawIOBase):
    """Reads an fd with ``pread`` at its own offset, and never closes it.

    Closing a second fd of the file would drop a POSIX lock (flock is one on
    NFS), so the claim's own fd is read, without moving anything shared.
    """

    def __init__(self, fd):
        super().__init__()
        self._fd = fd
        self._pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def fileno(self):
        return self._fd

    def readinto(self, buffer):
        data = os.pread(self._fd, len(buffer), self._pos)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos,
                io.SEEK_END: os.fstat(self._fd).st_size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self):
        return self._pos


class Heartbeat:
    """One thread refreshing the mtime of every claim this process is sending.

    A context manager around a processor pass: the thread starts with the
    pass and is stopped and joined at its end.  A refresh that fails (the
    disk, NFS) is logged and tried again next time; the claim then looks
    as old as its last refresh, and the lock still guards it.
    """

    def __init__(self, interval):
        self.interval = interval
        self._claims = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="txmail-heartbeat",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def add(self, claim):
        with self._lock:
            self._claims.add(claim)

    def discard(self, claim):
        with self._lock:
            self._claims.discard(claim)

    def _run(self):
        while not self._stop.wait(self.interval):
            with self._lock:
                beating = list(self._claims)
            for claim in beating:
                try:
                    claim.beat()
                except OSError as exc:
                    log.warning("cannot refresh a claim's heartbeat: %s", exc)


def take(source, target):
    """Claim ``source`` by renaming it to ``target`` (in ``cur/``).

    Returns ``(claim, problem)``: a :class:`Claim` for a regular file, or
    ``(None, "not a regular file but ...")`` for anything else (moved all
    the same, so that exactly one processor dead-letters it); ``None`` when
    another process took it first or holds its lock.
    """
    try:
        info = os.lstat(source)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return _take_unopened(source, target, f"not a regular file but "
                                              f"{kind_of(source, info)}")
    try:
        fd = open_for_lock(source)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # replaced meanwhile: next pass
            return None
        return _take_unopened(source, target, f"unreadable queue file: {exc.strerror}")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not _try_lock(fd):
            os.close(fd)
            return None
        os.utime(fd)  # fresh before it appears in cur/
        os.rename(source, target)
    except FileNotFoundError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return Claim(fd, info), None


def _take_unopened(source, target, problem):
    """Claim a file that cannot be opened, so that one processor dead-letters it."""
    try:
        os.utime(source, follow_symlinks=False)
        os.rename(source, target)
    except FileNotFoundError:
        return None
    return None, problem


def open_for_lock(path):
    """An fd for the claim lock: read-write where allowed (an exclusive lock on NFS
    is a POSIX write lock, which needs it), else read-only."""
    try:
        return os.open(path, CLAIM_FLAGS)
    except PermissionError:
        return os.open(path, READ_FLAGS)


class ClaimBusy(Exception):
    """The claim's owner may still be sending it (says why); ``held``: its lock is taken."""

    def __init__(self, message, held):
        super().__init__(message)
        self.held = held


def _age(seconds):
    if seconds < 0:
        return f"dated {format_duration(-seconds)} in the future"
    return f"{format_duration(seconds)} old"


def release(path, target, timeout, now, force=False):
    """Move the claim ``path`` back to ``target`` (in ``new/``); returns whether it was held.

    Raises :class:`ClaimBusy` when its owner may still be sending it -- its
    lock is held (a live process), or its heartbeat is fresh -- unless
    ``force``; ``FileNotFoundError`` when it left ``cur/`` meanwhile.
    """
    info = os.lstat(path)
    fd = open_for_lock(path) if stat.S_ISREG(info.st_mode) else None
    try:
        held = fd is not None and not _try_lock(fd)
        heartbeat = _age(now - info.st_mtime)
        if held and not force:
            raise ClaimBusy(f"it is held by a live process (its claim lock is taken; "
                            f"heartbeat {heartbeat}, mail.claim_timeout {_age(timeout)})",
                            held=True)
        if not held and not force and not is_stale(info.st_mtime, now, timeout):
            raise ClaimBusy(f"its heartbeat is only {heartbeat} (mail.claim_timeout is "
                            f"{_age(timeout)}): the processor that claimed it may still "
                            "be sending it", held=False)
        if fd is not None and os.fstat(fd).st_ino != info.st_ino:
            raise FileNotFoundError(path)  # replaced between the lstat and the open
        os.rename(path, target)
    finally:
        if fd is not None:
            os.close(fd)  # after the rename: no claimer takes it while we move it
    return held


def sweep(cur_dir, new_dir, names, timeout, now):
    """Put every stale claim of ``names`` (in ``cur_dir``) back; returns those moved.

    A stale claim whose lock is held stays: its owner is alive (a clock
    jump, a stalled process); that is logged, for a person to look at.
    """
    moved = []
    for name in names:
        path = os.path.join(cur_dir, name)
        try:
            if not is_stale(os.lstat(path).st_mtime, now, timeout):
                continue
            release(path, os.path.join(new_dir, name), timeout, now)
        except FileNotFoundError:
            continue
        except OSError as exc:  # e.g. unreadable: it stays, said once; the others are swept
            report_once(path, f"cannot look at this stale claim ({exc.strerror or exc}); "
                        "left in cur/")
            continue
        except ClaimBusy as exc:
            if now - _warned.get(name, float("-inf")) >= WARN_EVERY:  # not at every pass
                _warned[name] = now
                log.warning("cur/%s looks stale but stays claimed: %s. If that process "
                            "hangs, stop it, or run `txmail-queue INI release %s --force`",
                            name, exc, name)
            continue
        moved.append(name)
    return moved


def next_expiry(cur_dir, names, timeout, now):
    """When the first of these claims may turn stale (None if there is none).

    A claim already stale is still there because its owner holds its lock
    (the last sweep would have moved it otherwise): it is looked at again
    after a heartbeat interval, not at once, so a daemon does not spin on it.
    """
    due = None
    for name in names:
        try:
            mtime = os.lstat(os.path.join(cur_dir, name)).st_mtime
        except FileNotFoundError:
            continue
        when = (now + heartbeat_interval(timeout) if is_stale(mtime, now, timeout)
                else mtime + timeout)
        due = when if due is None else min(due, when)
    return due
