"""One attempt and what becomes of its message: the processor's delivery policy.

A mixin of :class:`pyramid_txmail.processor.processor.Processor` (it uses the
processor's ``queue``, ``settings``, ``clock``, ``rand``, ``registry`` and
``transaction_manager``), kept apart because it is one job: from the
transport's per-recipient result, decide -- delivered, retried with backoff
and jitter, or given up (refused, expired, poison, state unknown) with a
reason -- and tell the queue in the order that makes a crash cost at most one
more attempt::

    deliver → record (attempts, delivered) → dead-letter copy → record (failed)
            → retire | defer until next_attempt

It knows the queue only by :mod:`pyramid_txmail.queue.interface`: whatever is
given up lands in the queue's failed state with a reason, never silently
dropped, whatever the backend.
"""
from __future__ import annotations

import dataclasses

from .. import events as mail_events
from ..queue.interface import ClaimLost, QueueAway
from ..queue.queue_state import age as queue_age, dead_letter, expired as past_max_age
from ..queue.queue_state import record_attempt
from ..relay.result import PERMANENT, SENT, TEMPORARY, DeliveryResult, RecipientResult
from ..util.printable import get_logger
from .pass_stats import format_duration

log = get_logger("pyramid_txmail.processor")

#: Retry delays are spread by this fraction either way, so that messages
#: deferred together by one relay outage do not all come back at once.
JITTER = 0.2

#: A retry due more than retry_max (+ jitter) and this many seconds ahead was
#: scheduled by a clock that was ahead: it is due now (:func:`retry_horizon`).
CLOCK_SLACK = 60.0


def retry_horizon(settings):
    """The furthest ahead a retry is ever scheduled (retry_max plus the jitter,
    plus a minute): a due time beyond it was set by a clock that was ahead."""
    return settings.retry_max * (1 + JITTER) + CLOCK_SLACK


def _one_or_all(values):
    values = list(dict.fromkeys(v for v in values if v is not None))
    return None if not values else values[0] if len(values) == 1 else values


def log_fields(job, results):
    """The fields of a JSON log line (``mail.log_format = json``,
    :mod:`pyramid_txmail.util.logformat`): Message-ID, attempt, and the
    recipient, reply code and relay -- one value, or the list when they differ."""
    return {"message_id": job.message_id, "attempt": job.meta.get("attempts"),
            "recipient": _one_or_all(r.recipient for r in results),
            "code": _one_or_all(r.code for r in results),
            "relay": _one_or_all(getattr(r, "relay", None) for r in results)}


def _summary(results):
    return DeliveryResult(None, tuple(results)).summary()


@dataclasses.dataclass
class Job:
    """One claimed message and its state, while it is being handled."""

    claimed: object  # an IClaimed
    fromaddr: str
    toaddrs: tuple
    data: object  # bytes or a wire.Stream
    message_id: str | None
    meta: dict


class Outcomes:
    # -- one attempt ------------------------------------------------------------

    def _attempt(self, transport, job, pending):
        """Send to ``pending`` and record the outcome durably before anything moves.

        A first attempt that every recipient accepted records nothing: the
        message is simply retired next.  A crash in between sends that one
        message again (at-least-once), as after any crash mid-send.  Nor does
        a retry that every recipient accepted need its state recorded when
        that fails (a full disk): it is retired all the same, rather than left
        claimed and sent again.
        """
        result = self._deliver(transport, job, pending)
        try:
            held = self.queue.holds(job.claimed)
        except QueueAway as exc:  # not known either way: never taken for a lost claim
            raise QueueAway(f"{exc}; the relay's answer ({result.summary()}) for "
                            f"{job.message_id} is not recorded") from None
        if not held:
            raise ClaimLost(f"the relay's answer was {result.summary()}")
        all_sent = all(r.status == SENT for r in result.results)
        if not job.meta and all_sent:
            return result
        now = self.clock()
        meta = record_attempt(job.meta, job.message_id, result.results, now,
                              now + self._retry_delay(job.meta.get("attempts", 0) + 1),
                              job.claimed.queued_at or now)
        try:
            self.queue.record(job.claimed, meta)
        except (OSError, QueueAway) as exc:  # a full disk; a database away too long
            if not all_sent:
                raise
            log.warning("%s: cannot record the attempt in %s (%s); every recipient "
                        "accepted %s, so it leaves the queue anyway", job.claimed.name,
                        self.queue.where, getattr(exc, "strerror", None) or exc,
                        job.message_id)
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
            log.exception("%s: the transport raised; a %s failure", job.claimed.name, status)
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
        """Dead-letter, defer or retire, in that order; returns the events to send."""
        now = self.clock()
        sent = [r for r in result.results if r.status == SENT]
        temporary = [r for r in result.results if r.status == TEMPORARY]
        permanent = [r for r in result.results if r.status not in (SENT, TEMPORARY)]
        expired = bool(temporary) and past_max_age(job.meta, now,
                                                   self.settings.max_queue_time)
        dead = permanent + (temporary if expired else [])
        retry = [] if expired else temporary
        found = []
        if sent:
            log.info("sent %s from %s to %s (%s)", job.message_id, job.fromaddr,
                     ", ".join(r.recipient for r in sent), _summary(sent),
                     extra=log_fields(job, sent))
            found.append(self._event(mail_events.MailSent, job, sent))
        if dead:
            reason = self._reason(job, permanent, temporary if expired else [], now)
            self._bury(job, dead, reason, now, stats)
            found.append(self._event(mail_events.MailFailed, job, dead, reason))
        if retry:
            self._defer(job, retry, stats)
            found.append(self._event(mail_events.MailDeferred, job, retry, _summary(retry)))
        elif not self._is_whole(job, dead):
            self.queue.retire(job.claimed, bool(job.meta))
            if not dead:
                stats.sent += 1
        return found

    def _reason(self, job, permanent, expired, now):
        """One line saying why these recipients were given up (past max_queue_time
        at this attempt and the one before it: see
        :func:`pyramid_txmail.queue.queue_state.expired`)."""
        parts = []
        if permanent:
            parts.append("permanent failure: " + _summary(permanent))
        if expired:
            age = format_duration(queue_age(job.meta, now))
            parts.append(f"expired after {job.meta['attempts']} attempts over {age}: "
                         f"last error {_summary(expired)}")
        return "; ".join(parts)

    def _defer(self, job, retry, stats):
        """Back to the queue until next_attempt (already recorded)."""
        self.queue.defer(job.claimed, job.meta["next_attempt"])
        stats.deferred += 1
        wait = format_duration(job.meta["next_attempt"] - job.meta["last_attempt"])
        log.warning("deferred %s to %s: %s (attempt %d, next in %s)", job.message_id,
                    ", ".join(r.recipient for r in retry), _summary(retry),
                    job.meta["attempts"], wait, extra=log_fields(job, retry))

    # -- dead letters -----------------------------------------------------------

    def _is_whole(self, job, dead):
        """True when the dead recipients are the message's entire envelope."""
        return set(r.recipient for r in dead) == set(job.toaddrs)

    def _bury(self, job, dead, reason, now, stats):
        """Dead-letter ``dead``: the message itself when it is all of them, else a copy.

        The copy's envelope is exactly the failed recipients, so retrying a
        dead letter can never reach a recipient that already accepted.  The
        original's state then records them as failed -- after the copy is
        durable, so a crash in between means a second try, not a lost recipient.
        """
        meta = self._failure_meta(job, dead, reason, now)
        if self._is_whole(job, dead):
            where = self.queue.bury(job.claimed, meta)
        else:
            where = self.queue.bury_copy(job.fromaddr, [r.recipient for r in dead],
                                         job.data, meta)
            job.meta["failed_recipients"] = (job.meta["failed_recipients"]
                                             + [r.recipient for r in dead])
            self.queue.record(job.claimed, job.meta)
        stats.failed += 1
        log.error("dead letter %s from %s to %s: %s (failed/%s)", job.message_id,
                  job.fromaddr, ", ".join(r.recipient for r in dead), reason, where,
                  extra=log_fields(job, dead))

    def _failure_meta(self, job, dead, reason, now):
        return dead_letter(job.meta, job.message_id, dead, reason, now, job.claimed.name)

    def _bury_poison(self, claimed, meta, why, stats):
        """A message that cannot be sent as it is goes to failed untouched, with the reason."""
        now = self.clock()
        reason = f"poison: {why}"
        where = self.queue.bury(claimed, dead_letter(meta, None, [], reason, now,
                                                     claimed.name))
        stats.failed += 1
        log.error("dead letter failed/%s: %s", where, reason)
        self._dispatch([mail_events.MailFailed(None, "", (), reason=reason)])

    def _bury_unknown_state(self, job, stats):
        """A corrupt state hides who already got the message: stop, do not guess.

        Sending again could reach recipients twice, so the message is
        dead-lettered whole for a person to look at.
        """
        now = self.clock()
        why = job.meta.get("meta_problem") or "corrupt"
        reason = (f"{_state_record(job.claimed)} is {why}, so the recipients already "
                  "delivered are unknown; not sent again")
        dead = [RecipientResult(r, PERMANENT, None, "delivery state unknown")
                for r in job.toaddrs]
        job.meta = {}
        where = self.queue.bury(job.claimed, self._failure_meta(job, dead, reason, now))
        stats.failed += 1
        log.error("dead letter %s to %s: %s (failed/%s)", job.message_id,
                  ", ".join(job.toaddrs), reason, where)
        self._dispatch([self._event(mail_events.MailFailed, job, dead, reason)])

    # -- events -----------------------------------------------------------------

    def _event(self, kind, job, results, reason=None):
        return kind(job.message_id, job.fromaddr, [r.recipient for r in results],
                    results, reason=reason)

    def _dispatch(self, found):
        """Notify subscribers, only now that the queue's state is durable.

        Workers are threads: the app's registry is made current for them
        (``get_current_registry()`` in a subscriber), and a transaction
        manager that is not thread-local is used by one worker at a time.
        """
        if self.registry is None or not found:
            return
        from pyramid.threadlocal import manager as threadlocals  # only with an app to notify

        threadlocals.push({"registry": self.registry, "request": None})
        try:
            if self._shared_manager:
                with self._dispatch_lock:
                    mail_events.dispatch(self.registry, found, self.transaction_manager)
            else:
                mail_events.dispatch(self.registry, found, self.transaction_manager)
        finally:
            threadlocals.pop()


def _state_record(claimed):
    """Where a claimed message's state is kept, in words (a backend may not say)."""
    return getattr(claimed, "state_record", None) or f"the stored state of {claimed.name}"
