"""The spool behind the queue interface: :class:`MaildirQueue`.

Everything a processor and ``txmail-queue`` do to a spool goes through here,
so that they know a queue only by :mod:`pyramid_txmail.queue.interface`.  This
module adds no behaviour: it is the order of calls the processor made on the
spool before, kept in one place with the spool's own vocabulary --
:class:`~pyramid_txmail.queue.maildir.spool.Spool` (the directories), claims and their
heartbeat (:mod:`pyramid_txmail.queue.maildir.claims`), the crash leftovers
(:mod:`pyramid_txmail.queue.maildir.recovery`), the schedule in the names of ``deferred/``
(:mod:`pyramid_txmail.queue.maildir.schedule`), dead letters
(:func:`pyramid_txmail.queue.maildir.deadletters.bury`), inotify (:mod:`pyramid_txmail.queue.maildir.watch`)
and the operator's functions (:mod:`pyramid_txmail.queue.maildir.spool_admin`).  The format
on disk, the interop with repoze.sendmail and every guarantee are the spool's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from zope.interface import implementer

from ...util.printable import get_logger
from . import spool_admin as admin
from .claims import Heartbeat, heartbeat_interval
from .deadletters import bury
from .recovery import recover
from . import shares
from .spool import Spool, SpoolError, enqueued_at
from ..interface import IClaimed, IPassScope, IQueue, IQueueAdmin, QueueUnavailable
from ..states import ALL_STATES

log = get_logger("pyramid_txmail.processor")

#: Threads deleting delivered files from ``done/``: a journalling file system
#: makes each unlink wait for the journal, and concurrent ones share a commit.
REAPERS = 4
#: Delivered files handed to a reaper at a time.  One hand-off per message (a
#: reaper woken, the interpreter lock passed to it and back) cost the worker
#: more than the rest of retiring a message; a batch is one hand-off.
REAP_BATCH = 64


@implementer(IClaimed)
@dataclasses.dataclass
class Claimed:
    """A message this process took into ``cur/``: the spool's
    :class:`~pyramid_txmail.queue.maildir.spool.Entry`, which holds the claim's locked fd."""

    entry: object

    @property
    def name(self):
        return self.entry.name

    @property
    def problem(self):
        return self.entry.problem

    @property
    def queued_at(self):
        """From the Maildir name (the state file's ``queued_at`` wins where it has one)."""
        return enqueued_at(self.entry.name)

    @property
    def state_record(self):
        return f"the state file meta/{self.entry.name}.json"


@implementer(IPassScope)
class _PassScope:
    """The heartbeat of a pass's claims (their mtime, see :mod:`pyramid_txmail.queue.maildir.claims`)."""

    def __init__(self, heartbeat):
        self.heartbeat = heartbeat

    def add(self, claimed):
        if claimed.entry.claim is not None:
            self.heartbeat.add(claimed.entry.claim)

    def discard(self, claimed):
        self.heartbeat.discard(claimed.entry.claim)


@implementer(IQueue, IQueueAdmin)
class MaildirQueue:
    """A queue over one :class:`~pyramid_txmail.queue.maildir.spool.Spool` object.

    Keep one per spool and process: the spool object caches its directory
    listings (:mod:`pyramid_txmail.util.dirlisting`), so a pass over a quiet
    backlog lists neither ``deferred/`` nor ``meta/`` again.
    """

    states = ALL_STATES
    #: The clock of the times in the spool: this machine's (one machine per spool).
    clock = staticmethod(time.time)

    def __init__(self, spool):
        self.spool = spool
        self.share = None  # which files to take first (prefer_share)
        self._waiting_memo = {}  # a daemon's share of deferred/ not due (shares.waiting)
        self.lost_claims = 0  # claims of this object lost to another process, ever
        self._reaper = None
        self._retired = []  # in done/, not yet handed to a reaper
        self._retired_lock = threading.Lock()

    @classmethod
    def open(cls, path, create=False):
        """The spool at ``path`` (``mail.queue_path``).

        Without ``create``, a missing directory is an error, never created:
        creating it would hide a wrong path (a processor would drain an empty
        spool of its own and report ``sent=0`` while the mail waits
        elsewhere).  The application creates the spool when it starts
        (``config.include``).  State directories missing from an existing
        spool (an older layout, or repoze.sendmail's Maildir) are added.
        """
        if not create and not os.path.isdir(path):
            raise QueueUnavailable(
                f"mail.queue_path = {path!r}: no spool directory there (nothing was ever "
                "queued, or the path is wrong); the application creates it when it starts")
        try:
            return cls(Spool(path))
        except SpoolError as exc:
            raise QueueUnavailable(f"mail.queue_path: {exc}") from None

    @property
    def where(self):
        return self.spool.path

    def __repr__(self):
        return f"<MaildirQueue {self.spool.path}>"

    # -- IQueue: a pass ---------------------------------------------------------------

    def housekeep(self, settings, registry, now):
        """``done/`` reaped, stale claims put back from ``cur/``, ``tmp/`` and
        ``prepared/`` resolved; returns how many were put back or resolved.

        Each step is guarded on its own: it already isolates its entries (an
        odd one is left and said once: :mod:`pyramid_txmail.queue.maildir.leftovers`), and
        no bug or I/O error in one may stop the others or the mail (issue 11,
        round 2, finding 1: one directory in done/ stopped every pass).
        """
        self._step("deleting delivered files in done/", self.spool.reap)
        stale = self._step("putting back stale claims from cur/", self.spool.recover_stale,
                           settings.claim_timeout, now)
        resolved = self._step("resolving leftovers in tmp/ and prepared/", recover,
                              self.spool, settings.commit_grace, settings.commit_check,
                              registry, now)
        return len(stale or ()) + (resolved or 0)

    def _step(self, what, step, *args):
        try:
            return step(*args)
        except Exception:
            log.exception("%s failed in %s; sending the queue all the same", what,
                          self.spool.path)
            return None

    @contextlib.contextmanager
    def pass_scope(self, settings):
        """The heartbeat thread of the pass's claims, and the threads that delete
        what it retired from ``done/`` (finished before the pass returns)."""
        with Heartbeat(heartbeat_interval(settings.claim_timeout)) as heartbeat, \
                ThreadPoolExecutor(REAPERS, thread_name_prefix="txmail-reaper") as reaper:
            self._reaper = reaper
            try:
                yield _PassScope(heartbeat)
            finally:
                self._reaper = None
                self._hand_over_retired(reaper, 0)  # the rest, deleted before the pass ends

    def prefer_share(self, index, count, waiting_before=None):
        """Take first the files of share ``index`` of ``count`` (process ``index`` of
        ``txmail-qp``'s ``count``), then the others' (:mod:`.shares`);
        ``waiting_before``: ``deferred/``'s listing when their one-pass run began
        (:func:`.shares.waiting`).  A preference only: nothing is ever left waiting."""
        self.share = shares.Share(index, count, waiting_before)

    def candidates(self, now, horizon, stats):
        """``new/`` oldest first, then the due files of ``deferred/``; with a share
        (:meth:`prefer_share`), each state's files of the share first.

        ``deferred/`` is read from its names (:mod:`pyramid_txmail.queue.maildir.schedule`):
        one listing, and a state file is opened only for a message that is due
        -- a pass costs O(due), not O(deferred).  A problem with one deferred
        file is that file's alone (:meth:`~pyramid_txmail.queue.maildir.schedule.DeferredIndex.due_files`).
        ``skipped`` counts what was waiting when the pass began (:func:`.shares.waiting`).
        """
        before = self.spool.deferred_files()  # runs at the first ticket: before any claim
        misses = self._lost_claims
        for name in shares.new_names(self.spool, self.share, misses):
            yield "new", name
        errors = []
        listing = self.spool.deferred_files()
        due, later = self.spool.due_files(now, horizon, errors, listing)
        stats.errors += len(errors)
        stats.skipped += shares.waiting(self.spool, later, before, listing, self.share,
                                        self._waiting_memo)
        for filename in shares.due_files(self.spool, due, self.share, misses):
            yield "deferred", filename

    def _lost_claims(self):
        return self.lost_claims

    def claim(self, ticket):
        state, name = ticket
        entry = self.spool.claim(state, name)
        if entry is None:
            self.lost_claims += 1  # (a lost increment under a race is harmless: a hint)
            return None
        return Claimed(entry)

    def read(self, claimed, stream_over):
        return self.spool.read(claimed.entry, stream_over=stream_over)

    def load_state(self, claimed):
        return self.spool.read_meta(claimed.entry.name)

    def holds(self, claimed):
        claim = claimed.entry.claim
        return claim is None or claim.holds(claimed.entry.path)

    def record(self, claimed, state):
        self.spool.write_meta(claimed.entry.name, state)

    def retire(self, claimed, had_state):
        """Out of the queue now (a rename into ``done/``); the file is deleted in
        the background, or here when no pass is running."""
        done = self.spool.retire(claimed.entry, had_state)
        reaper = self._reaper
        if reaper is None:
            self.spool.reap_path(done)
            return
        with self._retired_lock:
            self._retired.append(done)
        self._hand_over_retired(reaper, REAP_BATCH)

    def _hand_over_retired(self, reaper, at_least):
        """Give the files retired so far to a reaper once there are ``at_least``
        (a file left in done/ by a crash meanwhile is deleted by the next pass's
        :meth:`housekeep`: it is out of the queue already)."""
        with self._retired_lock:
            if not self._retired or len(self._retired) < at_least:
                return
            batch, self._retired = self._retired, []
        reaper.submit(_reap_all, self.spool.reap_path, batch)

    def defer(self, claimed, next_attempt):
        self.spool.defer(claimed.entry, next_attempt)

    def bury(self, claimed, state):
        return bury(self.spool, claimed.entry, state).name

    def bury_copy(self, fromaddr, recipients, data, state):
        return self.spool.dead_letter_copy(fromaddr, recipients, data, state).name

    def release(self, claimed):
        claimed.entry.release()

    def next_due(self, settings, now, horizon=None):
        """The earliest retry (from the names in ``deferred/``; only unindexed
        files have their state file read) or stale claim in ``cur/``."""
        times = [t for t in (self.spool.earliest_retry(now, horizon),
                             self.spool.next_claim_expiry(settings.claim_timeout, now))
                 if t is not None]
        return min(times) if times else None

    def watcher(self, settings, how="auto"):
        """inotify on ``new/`` (polling on a network file system or with ``poll``)."""
        from .watch import make_watcher  # ctypes (inotify): only for a daemon

        return make_watcher(how, os.path.join(self.spool.path, "new"),
                            settings.poll_interval)

    # -- IQueueAdmin (pyramid_txmail.queue.maildir.spool_admin does the work) -----------------------

    def status(self, now):
        return admin.status(self.spool, now)

    def messages(self, states):
        return admin.messages(self.spool, tuple(states))

    def iter_messages(self, states):
        return admin.iter_messages(self.spool, tuple(states))

    def find(self, ident):
        return admin.find(self.spool, ident)

    def retry(self, msg):
        return admin.retry(self.spool, msg)

    def purge_candidates(self, state, older_than, now):
        return admin.purge_candidates(self.spool, state, older_than, now)

    def purge(self, msg):
        return admin.purge(self.spool, msg)

    def release_claim(self, msg, claim_timeout, force, now):
        return admin.release(self.spool, msg, claim_timeout, force, now)

    def release_stale(self, claim_timeout, now):
        return admin.release_stale(self.spool, claim_timeout, now)

    def read_body(self, msg):
        return admin.read_body(msg)


def _reap_all(reap_path, paths):
    for path in paths:
        reap_path(path)
