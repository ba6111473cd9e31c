"""The queue interface: what the processor and ``txmail-queue`` ask of a backend.

The processor owns the *policy* (which recipients are still pending, the
retry delay, expiry, events); a backend owns the *storage* (how a message is
claimed, read, recorded, deferred, dead-lettered and retired) and keeps the
same guarantees whatever it is built on:

* a claim held by a live process is never taken by another, however long its
  relay takes to answer (the backend renews it while the processor holds it);
* a recipient recorded as delivered is never asked again;
* what is recorded with :meth:`IQueue.record` is durable before the processor
  moves the message on, so a crash costs at most one more attempt;
* nothing leaves the queue without a reason: it is retired (every recipient
  accepted) or dead-lettered with a state saying why.

A message's *state* is the dict of :mod:`pyramid_txmail.queue.queue_state`
(``attempts``, ``first_attempt``, ``last_attempt``, ``next_attempt``,
``delivered``, ``failed_recipients``, ``history``, ``earlier``, ``message_id``;
a dead letter's adds ``reason``, ``failed_at``, ``recipients``,
``dead_letter_of``), whatever the backend stores it as.  Message states seen
by people (``txmail-queue``, metrics) are the labels ``queued``,
``in_progress``, ``deferred``, ``failed``.
"""
from __future__ import annotations

from zope.interface import Attribute, Interface


class PoisonMessage(ValueError):
    """A queued message that can never be sent as it is (its reason is the text)."""


class ClaimLost(Exception):
    """The claim left this process while it was sending (another took it, or an
    operator released it): what the message becomes is the new holder's business."""


class QueueUnavailable(Exception):
    """The queue named by the settings cannot be opened (the text names the key,
    the path or URL, and what to fix)."""


class QueueAway(Exception):
    """The queue's store stopped answering while a claimed message was handled, for
    longer than the backend waits (a database down): nothing about the message
    could be confirmed or recorded, so it stays claimed and is taken again once
    its claim runs out.  Not a lost claim: the text says what was not recorded."""


class NotFound(LookupError):
    """No message matches the id given (``IQueueAdmin.find``)."""


class Ambiguous(LookupError):
    """More than one message matches the id given; ``candidates`` lists them."""

    def __init__(self, message, candidates):
        super().__init__(message)
        self.candidates = candidates


class Refused(Exception):
    """The admin operation does not apply to a message in its state (says why)."""


class Vanished(Exception):
    """The message left its state between looking and acting (another process took it)."""


class IClaimed(Interface):
    """One message a processor holds while it sends it."""

    name = Attribute("Its id in this queue, for logs and dead-letter records.")
    queued_at = Attribute("When it was queued (epoch seconds), or None if unknown.")
    problem = Attribute("Why it cannot be sent at all (dead-lettered as poison), or None.")
    state_record = Attribute("Where its state is stored, for a person reading a log line "
                             "or a dead letter's reason (``the state file "
                             "meta/NAME.json``, ``the state of outbox row 42``).")


class IPassScope(Interface):
    """The claims of one pass, kept alive while they are held (a context manager)."""

    def add(claimed):
        """Keep ``claimed`` alive (heartbeat / lease renewal) until discarded."""

    def discard(claimed):
        """Stop keeping ``claimed`` alive (it is settled or released)."""


class IQueue(Interface):
    """What :class:`~pyramid_txmail.processor.processor.Processor` needs from a backend.

    Not declared, as a backend need not have it: ``prefer_share(index, count,
    waiting_before=None)`` -- this process is ``index`` of ``count`` draining the queue
    together (``mail.processes``): take that share of the messages first, then the
    others' (a preference: a sibling that is slow or gone must never leave mail
    waiting); ``waiting_before`` is what waited when their one-pass run began (None
    for a daemon), for ``skipped``.  The spool has it
    (:mod:`pyramid_txmail.queue.maildir.shares`); the SQL outbox, whose claims do not race (``SKIP LOCKED``), has none.
    """

    where = Attribute("The queue's name in log lines: the spool path, or the database URL "
                      "without its password.")

    def housekeep(settings, registry, now):
        """Put back what crashed processors held (stale claims, expired leases), resolve what
        crashed commits left, delete retired messages; returns how many were put back.
        Each step isolates its own entries: one odd entry never stops the others."""

    def pass_scope(settings):
        """A context manager for one pass, entered before the first claim: yields an
        :class:`IPassScope`; on exit, background work of the pass is finished."""

    def candidates(now, horizon, stats):
        """Yield the tickets to try in this pass, in order: queued mail oldest first, then
        deferred mail whose retry is due (one due more than ``horizon`` seconds ahead was
        scheduled by a clock that was ahead: it is due now).  A problem with one entry adds
        to ``stats.errors`` and is logged; deferred mail not due adds to ``stats.skipped``."""

    def claim(ticket):
        """Take the message for this process: an :class:`IClaimed`, or None when another
        process has it (or it is gone)."""

    def read(claimed, stream_over):
        """``(fromaddr, toaddrs, data)``: ``data`` is bytes, or a
        :class:`pyramid_txmail.compose.wire.Stream` when the message is larger than
        ``stream_over`` octets (memory must not grow with the message).
        Raises :class:`PoisonMessage`."""

    def load_state(claimed):
        """The message's state dict as stored (``{}`` for a first attempt).  Checked by the
        processor (:func:`~pyramid_txmail.queue.queue_state.checked`)."""

    def holds(claimed):
        """True while the claim is still this process's (False: another took it)."""

    def record(claimed, state):
        """Store ``state`` durably (before the processor moves the message on)."""

    def retire(claimed, had_state):
        """Every recipient accepted: the message leaves the queue."""

    def defer(claimed, next_attempt):
        """Back to the queue, not to be tried before ``next_attempt`` (epoch seconds); its
        state was recorded just before."""

    def bury(claimed, state):
        """Dead-letter the whole message with ``state`` (which has its ``reason``);
        returns its name in the failed state, for the log."""

    def bury_copy(fromaddr, recipients, data, state):
        """Dead-letter a copy addressed to ``recipients`` only (the others accepted or are
        retried); returns its name.  Durable before it returns."""

    def release(claimed):
        """Let go of what the claim holds (an open file, a lease) after it was settled."""

    def clock():
        """Optional: epoch seconds on the clock the queue's times are on (the
        database's for the SQL outbox, shared by processors on many machines;
        ``time.time`` for a spool).  A Processor or Daemon given no ``clock``
        uses it, so that every time it records or compares agrees."""

    def next_due(settings, now, horizon=None):
        """Epoch seconds when something becomes due without new mail arriving (the earliest
        retry, the earliest claim that may turn stale), or None.  A retry due more than
        ``horizon`` seconds ahead counts as due ``now`` (as in :meth:`candidates`)."""

    def watcher(settings, how="auto"):
        """For the daemon: inotify on a spool, LISTEN/NOTIFY on PostgreSQL, polling
        otherwise (``how``: ``auto``, ``poll``, or a backend's own such as ``inotify``).
        Raises ``WatchUnavailable`` when the ``how`` asked for cannot be had.

        The object has ``describe()`` (for the start-up log line), ``mark()`` (just
        before a pass: what is there now is not new), ``wait(timeout, waker)`` -> why
        it ended: ``"mail"``, ``"timeout"`` or ``"woken"`` (the daemon's
        :class:`~pyramid_txmail.queue.maildir.watch.Waker`, poked by a signal, must end the wait
        at once: select on ``waker.read_fd`` and ``waker.drain()`` it, or poll
        ``waker.wait(interval)``), and ``close()``.  ``wait`` may raise
        ``WatchLost``: the daemon then asks for ``watcher(settings, "poll")``."""


class IQueueAdmin(Interface):
    """What ``txmail-queue`` needs: look, requeue, purge, release (safe beside processors).

    Messages are returned as objects with ``name``, ``state`` (``new``, ``cur``,
    ``deferred``, ``failed``, and backend-specific ones such as ``tmp``), ``queued_at``,
    ``fromaddr``, ``toaddrs``, ``headers``, ``meta``, ``problem``, ``subject``,
    ``message_id``, ``attempts``, ``last_error``, ``settled_at``, ``path`` (its
    file, or None where it has none) and ``as_dict(now)`` -- the keys of
    ``txmail-queue list --json``.  The state names and their labels are
    :mod:`pyramid_txmail.queue.states`.
    """

    def status(now):
        """Counts and oldest age per state (the keys of ``txmail-queue status --json``)."""

    def messages(states):
        """Every message in ``states``, oldest first within a state."""

    where = Attribute("The queue's name for people (as :attr:`IQueue.where`).")
    states = Attribute("The states this backend has, in pipeline order: "
                       ":data:`pyramid_txmail.queue.states.QUEUE_STATES` and its own "
                       "(``tmp``, ``prepared`` for a spool).")

    def find(ident):
        """The one message ``ident`` names (id, unique prefix, or Message-ID); raises
        :class:`NotFound` or :class:`Ambiguous`."""

    def retry(msg):
        """Deferred or dead letter back to the queue, due now; returns a sentence.
        Raises :class:`Refused` (not for its state) or :class:`Vanished` (gone
        meanwhile), as do ``purge`` and ``release_claim``."""

    def purge_candidates(state, older_than, now):
        """The messages of ``state`` that ``purge`` would remove."""

    def purge(msg):
        """Remove a deferred message or dead letter for good; returns a sentence."""

    def release_claim(msg, claim_timeout, force, now):
        """Put back a claimed message whose owner is gone (``force``: even if alive);
        returns a sentence.  (Not ``release``: a backend implements IQueue too, whose
        ``release(claimed)`` lets go of this process's own claim.)"""

    def release_stale(claim_timeout, now):
        """Put back every stale claim; returns their names."""

    def read_body(msg):
        """The message's bytes, for ``show --body``."""
