"""Group commit: concurrent finishes share one fsync of ``new/``, and none returns early.

Real threads commit real transactions into a real spool; ``os.rename`` and
``os.fsync`` are wrapped by :class:`DiskLog`, which calls the real ones and
numbers what happened, so a test can say "this rename came before that
fsync began, which ended before this commit returned" -- the durability rule
of :mod:`pyramid_txmail.queue.maildir.groupcommit`.  Where a test needs
commits to overlap, the first fsync of ``new/`` waits until every thread
has renamed its file (a gate, not a timing): then N commits are known to be
in flight together, whatever the machine's speed.
"""
from __future__ import annotations

import errno
import itertools
import os
import threading
from email.message import EmailMessage

import pytest
import transaction
from pyramid.config import Configurator

from pyramid_txmail import get_mailer
from pyramid_txmail.queue.maildir.groupcommit import DirectoryFlush
from pyramid_txmail.queue.maildir.spool import Spool

THREADS = 8
GATE_TIMEOUT = 60  # seconds a gate waits before giving up (then the test fails on counts)


class DiskLog:
    """``os.rename`` and ``os.fsync`` around the real calls, numbered in order.

    A rename is logged after it happened, an fsync's start before it
    begins and its end after it ended: the numbers never flatter the code.
    ``on_fsync(path, nth)`` (``nth`` counts fsyncs of that path, from 1) runs
    before the real fsync: a gate, or an injected failure.
    """

    def __init__(self, monkeypatch, on_fsync=None):
        self.events = []
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._per_path = {}
        self.on_fsync = on_fsync
        self.on_rename = None
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd):
            path = os.readlink(f"/proc/self/fd/{fd}")
            with self._lock:
                nth = self._per_path[path] = self._per_path.get(path, 0) + 1
            if self.on_fsync is not None:
                self.on_fsync(path, nth)
            start = self.note("fsync-start", path)
            ok = False
            try:
                real_fsync(fd)
                ok = True
            finally:
                self.note("fsync-end" if ok else "fsync-failed", path, start)

        def rename(src, dst, *args, **kwargs):
            real_rename(src, dst, *args, **kwargs)
            path = os.path.realpath(os.fspath(dst))
            self.note("rename", path)
            if self.on_rename is not None:
                self.on_rename(path)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)

    def note(self, kind, what, start=None):
        with self._lock:
            seq = next(self._seq)
            self.events.append((seq, kind, what, threading.get_ident(), start))
            return seq

    def fsyncs(self, path):
        """``(start, end)`` of every fsync of ``path`` that ended without error."""
        return [(start, seq) for seq, kind, what, _, start in self.events
                if kind == "fsync-end" and what == path]

    def renames_into(self, directory):
        return [e for e in self.events
                if e[1] == "rename" and os.path.dirname(e[2]) == directory]


def gate_until_renamed(log, new, count):
    """Hold the first fsync of ``new`` until ``count`` files were renamed into it."""
    renamed = threading.Event()

    def on_rename(path):
        if os.path.dirname(path) == new and len(log.renames_into(new)) >= count:
            renamed.set()

    def on_fsync(path, nth):
        if path == new and nth == 1:
            renamed.wait(GATE_TIMEOUT)  # on a timeout the counts below say what happened

    log.on_rename = on_rename
    return on_fsync


@pytest.fixture
def spool_app(tmp_path):
    spool = tmp_path / "spool"
    config = Configurator(settings={"mail.queue_path": str(spool), "mail.delivery": "queue",
                                    "mail.default_sender": "app@example.org"})
    config.include("pyramid_txmail")
    config.commit()
    Spool(str(spool))
    return config.registry, os.path.realpath(spool / "new")


def commit_from_threads(registry, log, count=THREADS):
    """``count`` threads, each committing one message in its own transaction.

    Returns ``{thread ident: (message_id, seq of the return, error)}``.
    """
    barrier, results = threading.Barrier(count), {}

    def one(i):
        manager = transaction.TransactionManager(explicit=True)
        mailer = get_mailer(registry, manager)
        msg = EmailMessage()
        msg["To"] = f"user{i}@example.net"
        msg["Subject"] = f"group commit {i}"
        msg.set_content(f"message {i}\n")
        barrier.wait(GATE_TIMEOUT)
        manager.begin()
        message_id, error = mailer.send(msg), None
        try:
            manager.commit()
        except OSError as exc:
            error = exc
            manager.abort()
        results[threading.get_ident()] = (message_id, log.note("returned", i), error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * GATE_TIMEOUT)
    assert len(results) == count, "a committing thread did not finish"
    return results


def _file_of(log, new, ident):
    [rename] = [e for e in log.renames_into(new) if e[3] == ident]
    return rename


def test_each_concurrent_commit_returns_after_an_fsync_of_new_that_began_after_its_rename(
        spool_app, monkeypatch):
    registry, new = spool_app
    log = DiskLog(monkeypatch)
    log.on_fsync = gate_until_renamed(log, new, THREADS)
    results = commit_from_threads(registry, log)
    fsyncs = log.fsyncs(new)
    for ident, (message_id, returned, error) in results.items():
        assert error is None, error
        seq, _, path, _, _ = _file_of(log, new, ident)
        with open(path, "rb") as f:  # in new/, and it is this thread's message
            assert message_id.encode() in f.read()
        covering = [(s, e) for s, e in fsyncs if seq < s and e < returned]
        assert covering, (f"{message_id}: its commit returned (#{returned}) without an "
                          f"fsync of new/ that began after its rename (#{seq}): {fsyncs}")


def test_concurrent_commits_cost_fewer_fsyncs_of_new_than_commits(spool_app, monkeypatch):
    """8 commits in flight together: the first fsync of new/ waits until all 8 renamed,
    so one more fsync covers the 7 others (2 in all; 8 when each commit flushes alone)."""
    registry, new = spool_app
    log = DiskLog(monkeypatch)
    log.on_fsync = gate_until_renamed(log, new, THREADS)
    results = commit_from_threads(registry, log)
    assert all(error is None for _, _, error in results.values())
    assert len(os.listdir(new)) == THREADS
    assert len(log.fsyncs(new)) <= 2, log.fsyncs(new)


def test_a_failed_shared_fsync_fails_every_commit_that_waited_for_it(spool_app, monkeypatch):
    """No commit that waited for a failed fsync returns as if it were durable."""
    registry, new = spool_app
    log = DiskLog(monkeypatch)
    gate = gate_until_renamed(log, new, THREADS)

    def on_fsync(path, nth):
        gate(path, nth)  # the first fsync of new/ (the leader's) waits, then succeeds
        if path == new and nth > 1:
            raise OSError(errno.EIO, "injected I/O error")

    log.on_fsync = on_fsync
    results = commit_from_threads(registry, log)
    [(start, end)] = log.fsyncs(new)  # the only fsync that succeeded: the leader's
    failed = [r for r in results.values() if r[2] is not None]
    succeeded = [r for r in results.values() if r[2] is None]
    assert len(succeeded) == 1 and len(failed) == THREADS - 1
    for _, _, error in failed:
        assert error.errno == errno.EIO and new in str(error)


# -- DirectoryFlush on its own: a failed or interrupted flush ----------------------------


class Interrupted(BaseException):
    """Not an fsync error: what a KeyboardInterrupt in the leader looks like."""


def _start_follower(flush, outcome):
    def follow():
        try:
            flush.flush()
            outcome.append(None)
        except BaseException as exc:  # noqa: B902 (the test reports it)
            outcome.append(exc)

    thread = threading.Thread(target=follow)
    thread.start()
    return thread


def test_followers_of_a_failed_fsync_get_its_error_and_a_later_caller_does_not(
        tmp_path, monkeypatch):
    directory = os.path.realpath(tmp_path)
    flush = DirectoryFlush(directory)
    first_started, release_first = threading.Event(), threading.Event()

    def on_fsync(path, nth):
        if nth == 1:  # the leader's: held until the followers have called flush()
            first_started.set()
            release_first.wait(GATE_TIMEOUT)
        elif nth == 2:  # the followers' flush
            raise OSError(errno.EIO, "injected I/O error")

    log = DiskLog(monkeypatch, on_fsync)
    leader = []
    leader_thread = _start_follower(flush, leader)
    assert first_started.wait(GATE_TIMEOUT)
    followers = [[], []]
    threads = [_start_follower(flush, outcome) for outcome in followers]
    release_first.set()
    for thread in [leader_thread, *threads]:
        thread.join(GATE_TIMEOUT)
    assert leader == [None]
    for outcome in followers:  # both needed flush 2 (flush 1 may predate their call)
        [error] = outcome
        assert isinstance(error, OSError) and error.errno == errno.EIO
        assert directory in str(error)
    flush.flush()  # a new caller needs a new flush, which succeeds
    assert len(log.fsyncs(directory)) == 2


def test_an_interrupted_leader_leaves_its_followers_a_real_flush(tmp_path, monkeypatch):
    directory = os.path.realpath(tmp_path)
    flush = DirectoryFlush(directory)
    first_started, release_first = threading.Event(), threading.Event()

    def on_fsync(path, nth):
        if nth == 1:
            first_started.set()
            release_first.wait(GATE_TIMEOUT)
            raise Interrupted()

    log = DiskLog(monkeypatch, on_fsync)
    leader = []
    leader_thread = _start_follower(flush, leader)
    assert first_started.wait(GATE_TIMEOUT)
    follower = []
    called = log.note("follower calls", directory)
    follower_thread = _start_follower(flush, follower)
    release_first.set()
    leader_thread.join(GATE_TIMEOUT)
    follower_thread.join(GATE_TIMEOUT)
    assert len(leader) == 1 and isinstance(leader[0], Interrupted)
    assert follower == [None]
    [(start, end)] = log.fsyncs(directory)  # the leader's never ended: this one is new
    assert called < start  # and it began after the follower called
