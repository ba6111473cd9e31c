"""Drain the spool: claim, send, then record the outcome before moving the file.

One :meth:`Processor.run_once` pass puts stale claims back, then hands every
message in ``new/`` (oldest first) and every message in ``deferred/`` whose
retry is due to ``mail.workers`` threads, each sending over its own reused
transport connection.

The order of the disk writes is the whole point of this module.  After each
attempt that was not a complete first-time success, the message's state
file (``meta/NAME.json``) is rewritten and fsynced *before* the message file
moves, so a crash at any moment can cause at most one more attempt for the
recipients not yet recorded -- never a second copy to a recipient that
accepted, and never a silent drop.  A message every recipient accepted at
its first attempt is simply retired (renamed into ``done/``); a crash just
before that sends it once more, as after any crash mid-send::

    deliver → meta (attempts, delivered) → dead-letter copy → meta (failed)
            → remove | move to deferred/DUE~NAME (queue/maildir/schedule.py)

State file of a message waiting in ``new/``, ``cur/`` or ``deferred/``::

    attempts, first_attempt, last_attempt, next_attempt   (epoch seconds)
    delivered          recipients that accepted (never sent again)
    failed_recipients  recipients already dead-lettered (never sent again)
    history            the last 3 attempts (queue_state.HISTORY_KEEP):
                       [{"attempt", "time", "results": [{recipient, status, code, text}]}]
    earlier            the attempts before those, counted: {"attempts", "first_time",
                       "last_time", "statuses": {status: n}, "codes": {code: n}}
    message_id

State file of a dead letter in ``failed/``: ``reason`` (one line),
``failed_at``, ``attempts``, ``first_attempt``, ``last_attempt``,
``recipients`` (code and text per recipient), ``history`` (and ``earlier``),
``message_id`` and ``dead_letter_of`` (the queue file it came from).  It holds no
``delivered``/``failed_recipients`` keys: moving a dead letter back to
``new/`` resends it to its whole envelope, which is exactly the recipients
that failed, and the processor starts it with fresh retry state.
"""
from __future__ import annotations

import dataclasses
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import transaction
from pyramid.threadlocal import manager as threadlocals

from ..util.printable import get_logger
from .. import events as mail_events
from ..compose import wire
from ..queue.maildir.claims import Heartbeat, heartbeat_interval
from ..queue.maildir.queue_state import (age as queue_age, checked, expired as past_max_age,
                                         record_attempt)
from ..relay.result import PERMANENT, SENT, TEMPORARY, DeliveryResult, RecipientResult
from .ratelimit import RateLimiter
from ..queue.maildir.recovery import recover
from ..queue.maildir.deadletters import DeadLetters
from .pass_stats import PassStats, format_duration  # noqa: F401 (public here too)
from ..queue.maildir.schedule import count_in
from ..queue.maildir.spool import PoisonMessage, enqueued_at

log = get_logger("pyramid_txmail.processor")

#: Retry delays are spread by this fraction either way, so that messages
#: deferred together by one relay outage do not all come back at once.
JITTER = 0.2

#: Queue files larger than this are streamed to the relay in blocks.
STREAM_OVER = 1 << 20

#: A retry due more than retry_max (+ jitter) and this many seconds ahead was
#: scheduled by a clock that was ahead: it is due now (:meth:`Processor.retry_horizon`).
CLOCK_SLACK = 60.0

#: Threads deleting delivered files from ``done/``: a journalling file system
#: makes each unlink wait for the journal, and concurrent ones share a commit.
REAPERS = 4


@dataclasses.dataclass
class _Job:
    """One claimed message and its state file, while it is being handled."""

    entry: object
    fromaddr: str
    toaddrs: tuple
    data: object  # bytes or a wire.Stream
    message_id: str | None
    meta: dict


class ClaimLost(Exception):
    """The claimed file left ``cur/`` (or was replaced) while it was being sent."""


def retry_horizon(settings):
    """The furthest ahead a retry is ever scheduled (retry_max plus the jitter,
    plus a minute): a due time beyond it was set by a clock that was ahead."""
    return settings.retry_max * (1 + JITTER) + CLOCK_SLACK


def _summary(results):
    return DeliveryResult(None, tuple(results)).summary()


class Processor(DeadLetters):
    """Delivers what is in a :class:`~pyramid_txmail.queue.maildir.spool.Spool` through transports.

    ``transport`` is ``None`` (an SMTP transport per worker, from
    ``settings``, sharing which relays are resting; the sendmail binary with
    ``mail.delivery = sendmail``), a factory returning a
    new transport per worker, or one transport object (then one worker; the
    caller opens and closes it).  A transport is anything with
    ``deliver(fromaddr, toaddrs, data, message_id=None) -> DeliveryResult``.
    ``workers`` defaults to ``settings.workers``.  ``clock`` and ``rand``
    are injectable so that retry timing can be tested without sleeping.
    With a ``registry``, MailSent/MailDeferred/MailFailed are notified after
    the files are durable, each in a new transaction of
    ``transaction_manager`` (default: the thread-local ``transaction.manager``).
    """

    def __init__(self, spool, transport, settings, *, registry=None,
                 transaction_manager=None, clock=time.time, rand=random.random,
                 workers=None, limiter=None):
        if registry is not None and transaction_manager is None:
            transaction_manager = transaction.manager
        self.spool = spool
        self.settings = settings
        self.registry = registry
        self.transaction_manager = transaction_manager
        self.clock = clock
        self.rand = rand
        self.transport = None
        self.relays = None
        if transport is None and settings.delivery == "sendmail":
            # The queue of sendmail delivery (its fallback) is drained the same way.
            from ..relay.sendmail import SendmailTransport

            self.transport_factory = lambda: SendmailTransport.from_settings(settings)
        elif transport is None:
            from ..relay.smtp import SMTPTransport
            from ..relay.smtp_session import Relays

            hosts = [(settings.host, settings.port)] + [
                (h, p or settings.port) for h, p in settings.fallback_hosts]
            self.relays = Relays(dict.fromkeys(hosts), settings.host_rest)
            self.transport_factory = lambda: SMTPTransport.from_settings(settings, self.relays)
        elif hasattr(transport, "deliver"):
            self.transport, self.transport_factory = transport, None
        else:
            self.transport_factory = transport
        self.workers = 1 if self.transport is not None else (workers or settings.workers)
        if limiter is None and settings.rate_limit:
            limiter = RateLimiter(settings.rate_limit)
        self.limiter = limiter
        self._dispatch_lock = threading.Lock()
        self._deferred_now = set()
        # A manager that is not thread-local must not be used by two workers at once.
        self._shared_manager = not isinstance(transaction_manager,
                                              (type(None), transaction.ThreadTransactionManager))

    # -- the pass ---------------------------------------------------------------

    def run_once(self, stop=None):
        """One pass over the spool; returns :class:`PassStats`.

        Stale claims go back to ``new/``; then every message in ``new/``
        (oldest first) and every due message in ``deferred/`` is handed to
        the workers, each with its own transport (one connection reused for
        many messages).  ``stop`` is an optional :class:`threading.Event`:
        once it is set, the messages being sent are finished and the pass
        ends there.  Each directory is listed once per pass, and a state
        file is read only for a message that is sent: names are O(N), reads
        O(due).
        """
        stats = PassStats()
        now = self.clock()
        self._housekeep("deleting delivered files in done/", self.spool.reap)
        stats.recovered = len(self._housekeep(
            "putting back stale claims from cur/", self.spool.recover_stale,
            self.settings.claim_timeout, now) or ())
        stats.recovered += self._housekeep(
            "resolving leftovers in tmp/ and prepared/", recover, self.spool,
            self.settings.commit_grace, self.settings.commit_check, self.registry, now) or 0
        self._deferred_now = set()  # files this pass deferred (not "skipped" as well)
        jobs = self._jobs(now, stats, stop)
        with Heartbeat(heartbeat_interval(self.settings.claim_timeout)) as self._heartbeat, \
                ThreadPoolExecutor(REAPERS, thread_name_prefix="txmail-reaper") as self._reaper:
            self._run(jobs, stats, stop)
        return stats

    def _housekeep(self, what, step, *args):
        """One housekeeping step; an error in it is logged and the pass still sends.

        Each step already isolates its entries (an odd one is left and said
        once: :mod:`pyramid_txmail.queue.maildir.leftovers`); this is the guard behind it,
        so that no bug or I/O error there can stop the mail (issue 11, round
        2, finding 1: one directory in done/ stopped every pass).
        """
        try:
            return step(*args)
        except Exception:
            log.exception("%s failed in %s; sending the queue all the same", what,
                          self.spool.path)
            return None

    def _run(self, jobs, stats, stop):
        if self.transport is not None:
            self._work(self.transport, jobs, stats, stop)
            return
        lock = threading.Lock()

        def take():
            with lock:
                return next(jobs, None)

        per_worker = [PassStats() for _ in range(self.workers)]
        threads = [threading.Thread(target=self._worker, args=(take, own, stop),
                                    name=f"txmail-worker-{i}", daemon=True)
                   for i, own in enumerate(per_worker)]
        if len(threads) == 1:
            threads[0].run()
        else:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        for own in per_worker:
            stats.add(own)

    def _jobs(self, now, stats, stop):
        """``(state, name)`` of every message to try in this pass, in order.

        It runs in the workers (under their lock), so an exception here would
        end a worker thread with a traceback on stderr only, and the pass
        would report no error: one is counted and logged instead, and the
        pass sends what was listed.  A problem with one deferred file is
        that file's alone (:meth:`~pyramid_txmail.queue.maildir.schedule.DeferredIndex.due_files`).
        """
        try:
            yield from self._listed_jobs(now, stats, stop)
        except Exception:
            stats.errors += 1
            log.exception("cannot list the messages to send in %s; this pass sends "
                          "what it listed before", self.spool.path)

    def _listed_jobs(self, now, stats, stop):
        """``deferred/`` is read from its names (:mod:`pyramid_txmail.queue.maildir.schedule`):
        one listing, and a state file is opened only for a message that is
        due -- a pass costs O(due), not O(deferred)."""
        for name in self.spool.iter_names("new"):
            if stop is not None and stop.is_set():
                return
            yield "new", name
        errors = []
        due, later = self.spool.due_files(now, self.retry_horizon(), errors)
        stats.errors += len(errors)
        # those this very pass deferred were counted as deferred, not skipped
        stats.skipped += len(later) - count_in(later, self._deferred_now)
        for filename in due:
            if stop is not None and stop.is_set():
                return
            yield "deferred", filename

    def _worker(self, take, stats, stop):
        """One worker: its own transport, closed when the pass ends."""
        transport = self.transport_factory()
        try:
            self._work(transport, iter(take, None), stats, stop)
        finally:
            close = getattr(transport, "close", None)
            if close is not None:
                close()

    def _work(self, transport, jobs, stats, stop):
        for state, name in jobs:
            if self.limiter is not None:
                self.limiter.wait(stop)
                if stop is not None and stop.is_set():
                    return  # stopped while waiting for a slot: not started, left queued
            self._process_safely(transport, state, name, stats)
            if stop is not None and stop.is_set():
                return

    def _process_safely(self, transport, state, name, stats):
        """One message's bug or I/O error must not stop the queue behind it.

        Whatever was recorded in its state file stands; the claim is put
        back by a later pass after ``claim_timeout``.  A claim lost to
        another process (its file gone from ``cur/``) is that process's
        now: logged, and the pass goes on.
        """
        try:
            self._process(transport, state, name, stats)
        except (ClaimLost, FileNotFoundError) as exc:
            stats.skipped += 1
            log.warning("%s: this processor lost its claim while handling it (%s); the "
                        "message is left to whoever holds it now (released by "
                        "`txmail-queue release --force`, or taken after its heartbeat "
                        "stopped for mail.claim_timeout)", name, exc)
        except Exception:
            stats.errors += 1
            log.exception("%s: unexpected error; the message stays claimed in cur/ "
                          "until claim_timeout puts it back", name)

    def _process(self, transport, state, name, stats):
        """Claim, read, attempt and settle one message; a bad file never stops the pass."""
        entry = self.spool.claim(state, name)
        if entry is None:
            stats.skipped += 1
            return
        if entry.claim is not None:
            self._heartbeat.add(entry.claim)
        try:
            self._handle(transport, entry, stats)
        finally:
            self._heartbeat.discard(entry.claim)
            entry.release()

    def _handle(self, transport, entry, stats):
        meta = self._load_meta(entry)
        if entry.problem:
            self._bury_poison(entry, meta, entry.problem, stats)
            return
        try:
            fromaddr, toaddrs, data = self.spool.read(entry, stream_over=STREAM_OVER)
        except PoisonMessage as exc:
            self._bury_poison(entry, meta, str(exc), stats)
            return
        job = _Job(entry, fromaddr, toaddrs, data, wire.message_id_of(data), meta)
        if meta.get("corrupt_meta"):
            self._bury_unknown_state(job, stats)
            return
        pending = self._pending(job)
        if not pending:
            self._retire(entry)  # a crash hit after the last attempt was recorded
            stats.sent += 1
            return
        result = self._attempt(transport, job, pending)
        self._dispatch(self._settle(job, result, stats))

    def _load_meta(self, entry):
        """The state file, with unusable values dropped (logged: see
        :func:`~pyramid_txmail.queue.maildir.queue_state.checked`); a dead letter put back
        for a retry starts afresh."""
        meta, problems = checked(self.spool.read_meta(entry.name))
        if problems:
            log.warning("%s: its state file meta/%s.json has %s, which %s not usable; "
                        "treated as unknown", entry.name, entry.name, ", ".join(problems),
                        "is" if len(problems) == 1 else "are")
        if "failed_at" in meta:
            log.info("%s: retrying a dead letter (was: %s)", entry.name, meta.get("reason"))
            return {"retried_after": meta.get("reason"), "queued_at": self.clock()}
        return meta

    def _pending(self, job):
        """Envelope recipients neither delivered nor dead-lettered yet, in order."""
        done = set(job.meta.get("delivered", ())) | set(job.meta.get("failed_recipients", ()))
        return [r for r in dict.fromkeys(job.toaddrs) if r not in done]

    # -- one attempt ------------------------------------------------------------

    def _attempt(self, transport, job, pending):
        """Send to ``pending`` and record the outcome durably before anything moves.

        A first attempt that every recipient accepted writes no state file:
        the message file is simply removed next.  A crash in between sends
        that one message again (at-least-once), as after any crash mid-send.
        Nor does a retry that every recipient accepted need its state file
        when it cannot be written (a full disk): it is retired all the same,
        rather than left claimed and sent again.
        """
        result = self._deliver(transport, job, pending)
        if job.entry.claim is not None and not job.entry.claim.holds(job.entry.path):
            raise ClaimLost(f"the relay's answer was {result.summary()}")
        all_sent = all(r.status == SENT for r in result.results)
        if not job.meta and all_sent:
            return result
        now = self.clock()
        meta = record_attempt(job.meta, job.message_id, result.results, now,
                              now + self._retry_delay(job.meta.get("attempts", 0) + 1),
                              enqueued_at(job.entry.name) or now)
        try:
            self.spool.write_meta(job.entry.name, meta)
        except OSError as exc:
            if not all_sent:
                raise
            log.warning("%s: cannot record the attempt in %s (%s); every recipient "
                        "accepted %s, so it leaves the queue anyway", job.entry.name,
                        self.spool.path, exc.strerror or exc, job.message_id)
        return result

    def _deliver(self, transport, job, pending):
        """The transport's result, with one entry per pending recipient.

        Transports raise only for arguments they cannot send (ValueError,
        TypeError): retrying cannot help, so that is a permanent failure.
        Any other exception is a transport bug and, like a missing
        recipient, a temporary failure: retried later, never lost.
        """
        try:
            result = transport.deliver(job.fromaddr, list(pending), job.data,
                                            message_id=job.message_id)
        except Exception as exc:
            status = PERMANENT if isinstance(exc, (ValueError, TypeError)) else TEMPORARY
            log.exception("%s: the transport raised; a %s failure", job.entry.name, status)
            result = DeliveryResult(job.message_id, tuple(
                RecipientResult(r, status, None, f"transport error: {exc!r}")
                for r in pending))
        seen = {r.recipient: r for r in result.results if r.recipient in pending}
        return DeliveryResult(job.message_id, tuple(
            seen.get(r) or RecipientResult(r, TEMPORARY, None, "no result from the transport")
            for r in pending))

    def retry_horizon(self):
        return retry_horizon(self.settings)

    def _retry_delay(self, attempts):
        """Exponential backoff from retry_initial, capped at retry_max, with jitter."""
        base = min(self.settings.retry_max,  # 2 ** 64: past any retry_max, still a float
                   self.settings.retry_initial * 2 ** min(max(attempts - 1, 0), 64))
        return base * (1 + JITTER * (2 * self.rand() - 1))

    # -- outcomes ---------------------------------------------------------------

    def _settle(self, job, result, stats):
        """Dead-letter, defer or remove, in that order; returns the events to send."""
        now = self.clock()
        sent = [r for r in result.results if r.status == SENT]
        temporary = [r for r in result.results if r.status == TEMPORARY]
        permanent = [r for r in result.results if r.status not in (SENT, TEMPORARY)]
        expired = bool(temporary) and self._expired(job, now)
        dead = permanent + (temporary if expired else [])
        retry = [] if expired else temporary
        found = []
        if sent:
            log.info("sent %s from %s to %s (%s)", job.message_id, job.fromaddr,
                     ", ".join(r.recipient for r in sent), _summary(sent))
            found.append(self._event(mail_events.MailSent, job, sent))
        if dead:
            reason = self._reason(job, permanent, temporary if expired else [], now)
            self._bury(job, dead, reason, now, stats)
            found.append(self._event(mail_events.MailFailed, job, dead, reason))
        if retry:
            self._defer(job, retry, stats)
            found.append(self._event(mail_events.MailDeferred, job, retry, _summary(retry)))
        elif not self._is_whole(job, dead):
            self._retire(job.entry, has_meta=bool(job.meta))
            if not dead:
                stats.sent += 1
        return found

    def _retire(self, entry, has_meta=True):
        """Out of the queue now (a rename); the file is deleted in the background."""
        self._reaper.submit(self.spool.reap_path, self.spool.retire(entry, has_meta))

    def _expired(self, job, now):
        """Past max_queue_time at this attempt and the one before it (see
        :func:`pyramid_txmail.queue.maildir.queue_state.expired`: one wrong clock reading never
        gives a message up)."""
        return past_max_age(job.meta, now, self.settings.max_queue_time)

    def _reason(self, job, permanent, expired, now):
        """One line saying why these recipients were given up."""
        parts = []
        if permanent:
            parts.append("permanent failure: " + _summary(permanent))
        if expired:
            age = format_duration(queue_age(job.meta, now))
            parts.append(f"expired after {job.meta['attempts']} attempts over {age}: "
                         f"last error {_summary(expired)}")
        return "; ".join(parts)

    def _defer(self, job, retry, stats):
        """Park the message in deferred/ (its next_attempt is already on disk)."""
        self._deferred_now.add(self.spool.defer(job.entry, job.meta["next_attempt"]).name)
        stats.deferred += 1
        wait = format_duration(job.meta["next_attempt"] - job.meta["last_attempt"])
        log.warning("deferred %s to %s: %s (attempt %d, next in %s)", job.message_id,
                    ", ".join(r.recipient for r in retry), _summary(retry),
                    job.meta["attempts"], wait)

    # -- events -----------------------------------------------------------------

    def _event(self, kind, job, results, reason=None):
        return kind(job.message_id, job.fromaddr, [r.recipient for r in results],
                    results, reason=reason)

    def _dispatch(self, found):
        """Notify subscribers, only now that the spool state is durable.

        Workers are threads: the app's registry is made current for them
        (``get_current_registry()`` in a subscriber), and a transaction
        manager that is not thread-local is used by one worker at a time.
        """
        if self.registry is None or not found:
            return
        threadlocals.push({"registry": self.registry, "request": None})
        try:
            if self._shared_manager:
                with self._dispatch_lock:
                    mail_events.dispatch(self.registry, found, self.transaction_manager)
            else:
                mail_events.dispatch(self.registry, found, self.transaction_manager)
        finally:
            threadlocals.pop()
