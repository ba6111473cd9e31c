"""Direct delivery within a bound: the request waits at most ``mail.direct_timeout``.

Direct delivery sends after the commit, in the committing (request) thread.
A relay that never answers the final dot held that thread for
``mail.data_timeout`` (RFC 5321: 10 minutes), and a few such requests took
every thread of the web server: pages that send no mail were not served.

So the SMTP transaction runs in a sender thread, and the committing thread
waits for it at most ``mail.direct_timeout``.  What was settled by then is
reported as before (MailSent, MailQueued, MailFailed after the response).
When the bound passes:

* the message being sent *stays with its sender thread*, which finishes the
  SMTP transaction (each step bounded by ``mail.timeout``, the final dot by
  ``mail.data_timeout``) and settles it exactly as it would have in the
  request -- sent, or handed to the fallback queue, or reported -- and then
  notifies the events itself.  The request never gives up on a transaction
  that is under way: after the final dot the relay may already have the
  message (RFC 1047), and queueing a copy then would deliver it twice.  So
  the bound adds no duplicate; only ``mail.data_timeout`` itself can, as in
  the queue.
* the messages of the same commit not started yet are put in the fallback
  queue at once by the committing thread (``mail.direct_fallback = queue``);
  they never reached the relay, so nothing is duplicated.  Without a
  fallback they stay with the sender thread, which sends them after the
  response (there is nowhere else to keep them).

At most :data:`MAX_SENDERS` sender threads exist per outbox: a relay that
hangs cannot pile up threads and sockets.  When all are busy, a commit's
messages go straight to the fallback queue without waiting; without a
fallback the committing thread waits for a free sender up to
``mail.direct_timeout`` and then reports them (ERROR log + MailFailed).

Durability: a message is only in memory between the commit and the relay's
reply -- as it always was with direct delivery.  A process that exits
normally (a script after its commit, a web server stopped with Ctrl-C)
waits for the transactions under way at most ``mail.direct_timeout`` more
(an ``atexit`` hook), then exits and logs an ERROR naming the Message-IDs
whose outcome it never learnt.  Sender threads are daemon threads for that
reason: as non-daemon threads they held the exit for as long as a relay
kept them (``mail.data_timeout``, 10 minutes), and a server did not stop on
SIGINT.  A process *killed* while a sender thread still waits for the relay
loses that message's outcome the same way (the hand-over is logged with its
Message-ID); use ``mail.delivery = queue`` where that matters.
"""
from __future__ import annotations

import atexit
import threading
import time

import transaction
from pyramid.threadlocal import manager as threadlocals

from ..util.printable import get_logger
from ..events import dispatch

log = get_logger("pyramid_txmail")

#: Sender threads per direct outbox (each holds one SMTP connection).
MAX_SENDERS = 8

#: The batches whose sender thread is still running (see :func:`_at_exit`).
_in_flight = set()
_in_flight_lock = threading.Lock()


def _at_exit():
    """At interpreter exit: wait a bounded time for the sender threads, then name
    the messages whose outcome is lost (each batch waits at most its
    ``mail.direct_timeout``, all together at most the longest of them)."""
    with _in_flight_lock:
        batches = list(_in_flight)
    if not batches:
        return
    deadline = time.monotonic() + max(batch.bound for batch in batches)
    lost = []
    for batch in batches:
        with batch.cond:
            batch.wait_finished(deadline)
            if not batch.finished:
                lost += [p.message_id for p in ([batch.current] if batch.current else [])
                         + batch.pending]
    if lost:
        log.error("exiting with %d direct deliveries unfinished after waiting "
                  "mail.direct_timeout: the outcome of %s is not known (the relay may or may "
                  "not have them; mail.delivery = queue keeps mail across an exit)",
                  len(lost), ", ".join(lost))


atexit.register(_at_exit)


class _Batch:
    """The messages of one commit, shared by the committing and the sender thread."""

    def __init__(self, messages):
        self.cond = threading.Condition()
        self.pending = list(messages)  # not started; taken under cond
        self.current = None  # the message being sent
        self.events = []  # of the messages settled while the committing thread waits
        self.finished = False
        self.abandoned = False  # the committing thread stopped waiting
        self.bound = 0.0  # how long an exiting process waits for it (mail.direct_timeout)

    def wait_finished(self, deadline):
        """With ``cond`` held: wait until the batch is finished or the
        ``time.monotonic()`` ``deadline`` has passed."""
        while not self.finished:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.cond.wait(remaining)


class DirectSenders:
    """Runs direct deliveries in at most :data:`MAX_SENDERS` threads; see the module doc.

    ``attempt(transport, prepared)`` sends one message and settles it
    (fallback included), returning its events; ``unsent(messages, why)``
    settles messages that were never tried (fallback queue or report) and
    returns their events; ``notify(events)`` delivers events that come after
    the committing thread has stopped waiting.
    """

    def __init__(self, transport_factory, attempt, unsent, notify, timeout,
                 has_fallback, limit=MAX_SENDERS):
        self.transport_factory = transport_factory
        self.attempt = attempt
        self.unsent = unsent
        self.notify = notify
        self.timeout = timeout
        self.has_fallback = has_fallback
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def send(self, messages):
        """Deliver ``messages``; returns the events of what was settled in time."""
        deadline = time.monotonic() + self.timeout
        if not self._slots.acquire(blocking=False):
            busy = (f"not sent directly: {self.limit} direct deliveries are still waiting "
                    "for the relay")
            if self.has_fallback or not self._slots.acquire(timeout=self.timeout):
                return self.unsent(messages, busy)
        batch = _Batch(messages)
        batch.bound = self.timeout
        with _in_flight_lock:
            _in_flight.add(batch)
        # A daemon thread: an exiting process waits for it at most
        # mail.direct_timeout (_at_exit), not for as long as the relay likes.
        threading.Thread(target=self._work, args=(batch,), name="txmail-direct",
                         daemon=True).start()
        with batch.cond:
            batch.wait_finished(deadline)
            events, batch.events = batch.events, []
            if batch.finished:
                return events
            batch.abandoned = True
            current = batch.current
            unstarted = []
            if self.has_fallback:
                unstarted, batch.pending = batch.pending, []
        if current is not None:
            log.warning("direct delivery of %s to %s: no outcome within mail.direct_timeout "
                        "(%gs); it is finished in the background", current.message_id,
                        ", ".join(current.toaddrs), self.timeout)
        if unstarted:
            events += self.unsent(unstarted, f"not sent directly: the relay took longer "
                                  f"than mail.direct_timeout ({self.timeout:g}s)")
        return events

    def _work(self, batch):
        try:
            self._send_all(batch)
        except Exception:  # e.g. the transport cannot be made: nothing of it was sent
            log.exception("direct delivery failed before the relay was reached")
            with batch.cond:
                left, batch.pending = batch.pending, []
            self._settled(batch, self.unsent(left, "not sent: internal error") if left else [])
        finally:
            with batch.cond:
                batch.finished = True
                batch.cond.notify_all()
            with _in_flight_lock:
                _in_flight.discard(batch)
            self._slots.release()

    def _send_all(self, batch):
        transport = self.transport_factory()
        try:
            while True:
                with batch.cond:
                    if not batch.pending:
                        batch.finished = True  # the committing thread need not wait for QUIT
                        batch.cond.notify_all()
                        return
                    batch.current = prepared = batch.pending.pop(0)
                events = self.attempt(transport, prepared)
                with batch.cond:
                    batch.current = None
                self._settled(batch, events)
        finally:
            close = getattr(transport, "close", None)
            if close is not None:
                close()

    def _settled(self, batch, events):
        with batch.cond:
            if not batch.abandoned:
                batch.events.extend(events)
                batch.cond.notify_all()
                return
        if events:
            self.notify(events)


def notifier(registry):
    """``notify(events)`` for a sender thread: the events, each in a new transaction,
    with ``registry`` current (as the processor's workers do)."""
    def notify(events):
        if registry is None:
            return
        threadlocals.push({"registry": registry, "request": None})
        try:
            dispatch(registry, events, transaction.TransactionManager(explicit=True))
        finally:
            threadlocals.pop()

    return notify
