"""Group commit: concurrent flushes of one spool directory share one ``fsync``.

A transaction's vote renames its messages into ``prepared/`` and its finish
into ``new/``; neither may return before its renames are on disk, which takes
an ``fsync`` of that directory.  Eight
waitress threads committing at once used to make eight such fsyncs, one
after the other on the disk.  But one fsync of a directory makes every entry
renamed into it *before the fsync started* durable; so :func:`flush_dir`
lets the first caller to arrive (the leader) fsync the directory once for
everyone whose rename came before, while the others (followers) wait for it.

The rule that keeps this sound: **a caller returns only once an fsync that
began after its call has ended -- the first such fsync to end -- and it gets
that fsync's error if it failed.**  The caller has renamed its file before
calling, so that fsync covers the rename.  An fsync already running when a
caller arrives may have begun before its rename: the caller joins the *next*
flush (a :class:`_Batch`: everyone who arrived since the running one began),
which one of its members leads as soon as the running one ends.

What is on disk when a commit returns: the message's bytes (fsynced into
``tmp/`` at the vote, :meth:`Spool.prepare`) and its name in ``new/`` (the
rename, then a completed fsync of ``new/`` that began after it).  The crash
windows:

- killed or crashed after the rename, before the shared fsync has ended: no
  commit covered by that fsync has returned, so none was reported
  committed.  The file is whole on disk in ``prepared/`` or, if the rename
  reached the disk anyway, in ``new/``: recovery resolves ``prepared/`` as
  in doubt (:mod:`pyramid_txmail.queue.maildir.recovery`), exactly as after
  a crash between one transaction's rename and its own fsync.  A crash kills
  every thread of the process at once, so there is no leader that dies while
  its followers go on believing it.
- the fsync fails (``EIO``): every caller that waited for that flush gets the
  ``OSError`` (its commit's finish fails, as before); none returns as if its
  rename were durable.  No later fsync is trusted for them: after a failed
  fsync, Linux may have dropped the dirty state, and a second fsync can
  succeed without having written it.
- the leader is interrupted before its fsync ended (an exception that is
  not the fsync's own error, e.g. ``KeyboardInterrupt``): the exception goes
  to the leader, its flush counts as not done, and its followers wait
  together with those who arrived meanwhile for a new flush, led by one of
  them, which begins after every one of their renames.

Within one process only: processes on one spool (gunicorn workers,
``txmail-qp`` processes) each flush for themselves, as before; the kernel's
journal already merges their concurrent commits.  Sharing across processes
would need a lock file and a shared counter on disk, and a dead leader
process would have to be told from a slow one: not worth it here.

The vote's own flush (the file's ``fsync`` in ``tmp/``) is not shared: one
file's fsync does not write another file's data, so each message needs its
own.  The vote's renames into ``prepared/`` are flushed here too, once per
vote (:meth:`Spool.settle_prepared`: durable before another resource commits).
"""
from __future__ import annotations

import os
import threading

from ...util.private_dirs import fsync_dir


class _Batch:
    """One flush and the callers waiting for it: all arrived before it began."""

    __slots__ = ("ended", "error", "merged_into")

    def __init__(self):
        self.ended = False
        self.error = None        # the OSError its fsync raised
        self.merged_into = None  # its leader was interrupted: this batch waits with that one


class DirectoryFlush:
    """The leader/follower fsyncs of one directory (see the module's docstring)."""

    def __init__(self, path):
        self.path = path
        self._cond = threading.Condition(threading.Lock())
        self._next = _Batch()   # whoever arrives now waits for this flush
        self._running = False
        self._waiting = 0       # callers in wait(): a lone committer notifies nobody

    def flush(self):
        """Return once an fsync of the directory that began after this call has ended.

        Raises the ``OSError`` of that fsync if it failed.
        """
        with self._cond:
            mine = self._next  # not begun yet: it will begin after our rename
            while True:
                while mine.merged_into is not None:
                    mine = mine.merged_into
                if mine.ended:
                    break
                if self._running:
                    self._waiting += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._waiting -= 1
                else:  # nothing runs, and ours has not ended: so ours is next
                    self._lead(mine)
            error = mine.error
        if error is not None:
            raise OSError(error.errno, error.strerror, self.path) from error

    def _lead(self, batch):
        """fsync for ``batch`` (``self._next``); called and returns with the lock held.

        An interruption that is not the fsync's error (``KeyboardInterrupt``)
        goes to the leader, and ``batch`` has not ended: it goes back to the
        front, and the callers who arrived meanwhile join it -- the next fsync
        begins after all of them, and is the first to begin after any of them
        that ends.
        """
        self._running = True
        self._next = _Batch()  # who arrives from now on needs a later fsync
        ended = False
        self._cond.release()
        try:
            fsync_dir(self.path)
            ended = True
        except OSError as exc:
            ended, batch.error = True, exc
        finally:
            self._cond.acquire()
            self._running = False
            if ended:
                batch.ended = True
            else:
                self._next.merged_into = batch
                self._next = batch
            if self._waiting:  # counted under the lock, before wait() released it
                self._cond.notify_all()


_flushes = {}
_flushes_lock = threading.Lock()


def flush_dir(path):
    """fsync the directory ``path``, sharing the fsync with concurrent callers.

    Call it after the rename (or create) in ``path`` that must be durable;
    when it returns, it is.
    """
    # Keys are absolute, normalized paths: one the caller gives as such (the
    # spool's are) is found without abspath, which cost more than the rest; a
    # relative one never matches a key, so it is resolved against today's cwd.
    flush = _flushes.get(path)
    if flush is None:
        key = os.path.abspath(path)
        with _flushes_lock:
            flush = _flushes.setdefault(key, DirectoryFlush(key))
    flush.flush()


def _forget_after_fork():
    """A forked child starts with no flush running: the parent's threads are gone."""
    global _flushes_lock
    _flushes.clear()
    _flushes_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
