"""Drain a queue: claim, send, then record the outcome before the message moves on.

One :meth:`Processor.run_once` pass lets the queue put back what crashed
processors held (:meth:`~pyramid_txmail.queue.interface.IQueue.housekeep`),
then hands every queued message (oldest first) and every deferred message
whose retry is due to ``mail.workers`` threads, each sending over its own
reused transport connection.

The processor knows the queue only by :mod:`pyramid_txmail.queue.interface`
-- a spool (:mod:`pyramid_txmail.queue.maildir.backend`) or an outbox table
-- and keeps the policy: which recipients are still pending, backoff with
jitter, expiry, the reasons of dead letters, the events, the rate limit and
the pass's statistics (:mod:`pyramid_txmail.processor.outcomes`).  The order of the
writes is the whole point: after each attempt that was not a complete
first-time success, the message's state is recorded durably *before* the
message moves, so a crash at any moment can cause at most one more attempt
for the recipients not yet recorded -- never a second copy to a recipient
that accepted, and never a silent drop.

A message's state (the dict of :mod:`pyramid_txmail.queue.queue_state`)::

    attempts, first_attempt, last_attempt, next_attempt   (epoch seconds)
    delivered          recipients that accepted (never sent again)
    failed_recipients  recipients already dead-lettered (never sent again)
    history            the last 3 attempts (queue_state.HISTORY_KEEP):
                       [{"attempt", "time", "results": [{recipient, status, code, text}]}]
    earlier            the attempts before those, counted: {"attempts", "first_time",
                       "last_time", "statuses": {status: n}, "codes": {code: n}}
    message_id

A dead letter's state: ``reason`` (one line), ``failed_at``, ``attempts``,
``first_attempt``, ``last_attempt``, ``recipients`` (code and text per
recipient), ``history`` (and ``earlier``), ``message_id`` and
``dead_letter_of`` (the message it came from).  It holds no
``delivered``/``failed_recipients`` keys: a dead letter put back in the
queue is sent to its whole envelope, which is exactly the recipients that
failed, and the processor starts it with fresh retry state.
"""
from __future__ import annotations

import itertools
import random
import threading
import time

from ..compose import wire
from ..queue import as_queue
from ..queue.interface import ClaimLost, PoisonMessage, QueueAway
from ..queue.queue_state import checked
from ..util.printable import get_logger
from .outcomes import (  # noqa: F401 (public here too)
    CLOCK_SLACK, JITTER, Job, Outcomes, retry_horizon)
from .pass_stats import PassStats, format_duration  # noqa: F401 (public here too)
from .ratelimit import RateLimiter

log = get_logger("pyramid_txmail.processor")

#: Messages larger than this are streamed to the relay in blocks.
STREAM_OVER = 1 << 20


class Processor(Outcomes):
    """Delivers what is in a queue through transports.

    ``queue`` is an :class:`~pyramid_txmail.queue.interface.IQueue` (see
    :func:`pyramid_txmail.queue.open_queue`), or a
    :class:`~pyramid_txmail.queue.maildir.spool.Spool`, which is wrapped in a
    :class:`~pyramid_txmail.queue.maildir.backend.MaildirQueue`.
    ``transport`` is ``None`` (an SMTP transport per worker, from
    ``settings``, sharing which relays are resting; the sendmail binary with
    ``mail.delivery = sendmail``), a factory returning a
    new transport per worker, or one transport object (then one worker; the
    caller opens and closes it).  A transport is anything with
    ``deliver(fromaddr, toaddrs, data, message_id=None) -> DeliveryResult``.
    ``workers`` defaults to ``settings.workers``.  ``clock`` and ``rand``
    are injectable so that retry timing can be tested without sleeping;
    without one the queue's ``clock`` is used (the database's on the SQL outbox).
    With a ``registry``, MailSent/MailDeferred/MailFailed are notified after
    the queue's state is durable, each in a new transaction of
    ``transaction_manager`` (default: the thread-local ``transaction.manager``).
    """

    def __init__(self, queue, transport, settings, *, registry=None,
                 transaction_manager=None, clock=None, rand=random.random,
                 workers=None, limiter=None):
        if registry is not None and transaction_manager is None:
            import transaction  # only with an app to notify: a pass without one never needs it

            transaction_manager = transaction.manager
        self.queue = as_queue(queue)
        self.settings = settings
        self.registry = registry
        self.transaction_manager = transaction_manager
        # The queue's clock unless one is injected: on the SQL outbox the
        # database's, so that processors whose clocks differ agree on retries.
        self.clock = clock if clock is not None else getattr(self.queue, "clock", time.time)
        self.rand = rand
        self.transport = None
        self._relays = None
        self._relay_hosts = None
        if transport is None and settings.delivery == "sendmail":
            # The queue of sendmail delivery (its fallback) is drained the same way.
            from ..relay.sendmail import SendmailTransport

            self.transport_factory = lambda: SendmailTransport.from_settings(settings)
        elif transport is None:
            self._relay_hosts = [(settings.host, settings.port)] + [
                (h, p or settings.port) for h, p in settings.fallback_hosts]
            self.transport_factory = self._smtp_transport
        elif hasattr(transport, "deliver"):
            self.transport, self.transport_factory = transport, None
        else:
            self.transport_factory = transport
        self.workers = 1 if self.transport is not None else (workers or settings.workers)
        if limiter is None and settings.rate_limit:
            limiter = RateLimiter(settings.rate_limit)
        self.limiter = limiter
        self._dispatch_lock = threading.Lock()
        self._relays_lock = threading.Lock()
        self._scope = None
        # A manager that is not thread-local must not be used by two workers at once.
        self._shared_manager = _shared_manager(transaction_manager)

    @property
    def relays(self):
        """Which SMTP relays are resting, shared by the workers' transports (None
        when the processor does not send over SMTP).  Made, and the SMTP code
        imported, when first needed: a pass with nothing to send never does."""
        if self._relay_hosts is None:
            return None
        with self._relays_lock:
            if self._relays is None:
                from ..relay.smtp_session import Relays

                self._relays = Relays(dict.fromkeys(self._relay_hosts), self.settings.host_rest)
            return self._relays

    def _smtp_transport(self):
        from ..relay.smtp import SMTPTransport

        return SMTPTransport.from_settings(self.settings, self.relays)

    @property
    def spool(self):
        """The :class:`~pyramid_txmail.queue.maildir.spool.Spool` of a spool queue (None for another
        backend): for callers that knew the processor by its spool."""
        return getattr(self.queue, "spool", None)

    # -- the pass ---------------------------------------------------------------

    def run_once(self, stop=None):
        """One pass over the queue; returns :class:`PassStats`.

        What crashed processors held goes back to the queue; then every
        queued message (oldest first) and every due deferred one is handed
        to the workers, each with its own transport (one connection reused
        for many messages).  ``stop`` is an optional
        :class:`threading.Event`: once it is set, the messages being sent
        are finished and the pass ends there.
        """
        stats = PassStats()
        now = self.clock()
        stats.recovered = self._housekeep(now)
        with self.queue.pass_scope(self.settings) as self._scope:
            self._run(self._jobs(now, stats, stop), stats, stop)
        return stats

    def _housekeep(self, now):
        """The queue's housekeeping; an error in it is logged and the pass still sends
        (each step of it is guarded by the backend too)."""
        try:
            return self.queue.housekeep(self.settings, self.registry, now) or 0
        except Exception:
            log.exception("housekeeping failed in %s; sending the queue all the same",
                          self.queue.where)
            return 0

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
        """The queue's candidates for this pass, until ``stop`` is set.

        It runs in the workers (under their lock), so an exception here would
        end a worker thread with a traceback on stderr only, and the pass
        would report no error: one is counted and logged instead, and the
        pass sends what was listed.  ``stop`` is looked at before each next
        candidate is asked for, so a stopped pass lists no further.
        """
        try:
            candidates = iter(self.queue.candidates(now, self.retry_horizon(), stats))
            while stop is None or not stop.is_set():
                ticket = next(candidates, None)
                if ticket is None:
                    return
                yield ticket
        except Exception:
            stats.errors += 1
            log.exception("cannot list the messages to send in %s; this pass sends "
                          "what it listed before", self.queue.where)

    def _worker(self, take, stats, stop):
        """One worker: its own transport, closed when the pass ends; made once the
        worker has a message, so that an empty pass opens no connection."""
        first = take()
        if first is None:
            return
        transport = self.transport_factory()
        try:
            self._work(transport, itertools.chain((first,), iter(take, None)), stats, stop)
        finally:
            close = getattr(transport, "close", None)
            if close is not None:
                close()

    def _work(self, transport, jobs, stats, stop):
        for ticket in jobs:
            if self.limiter is not None:
                self.limiter.wait(stop)
                if stop is not None and stop.is_set():
                    return  # stopped while waiting for a slot: not started, left queued
            self._process_safely(transport, ticket, stats)
            if stop is not None and stop.is_set():
                return

    def _process_safely(self, transport, ticket, stats):
        """One message's bug or I/O error must not stop the queue behind it.

        Whatever was recorded in its state stands; the claim is put back by
        a later pass after ``claim_timeout``.  A claim lost to another
        process is that process's now: logged, and the pass goes on.
        """
        try:
            self._process(transport, ticket, stats)
        except (ClaimLost, FileNotFoundError) as exc:
            stats.taken += 1
            log.warning("%s: this processor lost its claim while handling it (%s); the "
                        "message is left to whoever holds it now (released by "
                        "`txmail-queue release --force`, or taken after its heartbeat "
                        "stopped for mail.claim_timeout)", _ticket_name(ticket), exc)
        except QueueAway as exc:  # its store did not answer for the backend's patience
            stats.errors += 1
            log.error("%s; the message stays claimed, and is taken again once its claim "
                      "runs out (mail.claim_timeout)", exc)
        except Exception:
            stats.errors += 1
            log.exception("%s: unexpected error; the message stays claimed until "
                          "claim_timeout puts it back", _ticket_name(ticket))

    def _process(self, transport, ticket, stats):
        """Claim, read, attempt and settle one message; a bad one never stops the pass."""
        claimed = self.queue.claim(ticket)
        if claimed is None:  # another processor's (a sibling process, another txmail-qp)
            stats.taken += 1
            return
        self._scope.add(claimed)
        try:
            self._handle(transport, claimed, stats)
        finally:
            self._scope.discard(claimed)
            self.queue.release(claimed)

    def _handle(self, transport, claimed, stats):
        meta = self._load_state(claimed)
        if claimed.problem:
            self._bury_poison(claimed, meta, claimed.problem, stats)
            return
        try:
            fromaddr, toaddrs, data = self.queue.read(claimed, STREAM_OVER)
        except PoisonMessage as exc:
            self._bury_poison(claimed, meta, str(exc), stats)
            return
        job = Job(claimed, fromaddr, toaddrs, data, wire.message_id_of(data), meta)
        if meta.get("corrupt_meta"):
            self._bury_unknown_state(job, stats)
            return
        pending = self._pending(job)
        if not pending:
            self.queue.retire(claimed, True)  # a crash hit after the last attempt was recorded
            stats.sent += 1
            return
        result = self._attempt(transport, job, pending)
        self._dispatch(self._settle(job, result, stats))

    def _load_state(self, claimed):
        """The stored state, with unusable values dropped (logged: see
        :func:`~pyramid_txmail.queue.queue_state.checked`); a dead letter put back
        for a retry starts afresh."""
        meta, problems = checked(self.queue.load_state(claimed))
        if problems:
            where = getattr(claimed, "state_record", None) or "its stored state"
            log.warning("%s: %s has %s, which %s not usable; treated as unknown",
                        claimed.name, where.replace("the ", "its ", 1), ", ".join(problems),
                        "is" if len(problems) == 1 else "are")
        if "failed_at" in meta:
            log.info("%s: retrying a dead letter (was: %s)", claimed.name, meta.get("reason"))
            return {"retried_after": meta.get("reason"), "queued_at": self.clock()}
        return meta

    def _pending(self, job):
        """Envelope recipients neither delivered nor dead-lettered yet, in order."""
        done = set(job.meta.get("delivered", ())) | set(job.meta.get("failed_recipients", ()))
        return [r for r in dict.fromkeys(job.toaddrs) if r not in done]


def _shared_manager(transaction_manager):
    """Whether ``transaction_manager`` is one object for every thread (None is none)."""
    if transaction_manager is None:
        return False
    import transaction

    return not isinstance(transaction_manager, transaction.ThreadTransactionManager)


def _ticket_name(ticket):
    """A candidate's name for a log line: a spool's is ``(state, name)``, another
    backend's may be its claim already."""
    name = getattr(ticket, "name", None)
    if name is None and isinstance(ticket, tuple) and ticket:
        name = ticket[-1]
    return name if name is not None else ticket
