"""Leases: how long a claim is a processor's, renewed while the processor is alive.

A claim sets ``lease_until`` to the database's clock plus
``mail.claim_timeout``; another processor may put the row back only once the
database's clock has passed it (housekeeping).  Judging by the database's
clock means processors on many machines agree however their own clocks
differ.

While a pass holds claims, :class:`LeaseScope` renews every one of them in
one UPDATE every :func:`renew_interval` on a connection of its own, so a live
worker keeps its claim however long its relay takes; a process that dies
stops renewing, and its leases run out.  A renewal that fails because the
database is away (a restart, a failover) is logged once and tried again
soon and often (:mod:`~pyramid_txmail.queue.sql.patience`'s pauses, never
longer than the beat), so the leases are extended the moment the database
answers again, before another processor may take them; the end of the
outage is logged too.

Each renewal returns the tokens it extended, so the scope knows, per claim,
when (on this process's monotonic clock, read *before* the statement was
sent) the database last set its lease to ``mail.claim_timeout`` ahead:
:meth:`LeaseScope.vouches` answers "do I still hold it?" from that, without a
round trip, while less than :data:`VOUCH_SHARE` of the lease has passed since.
The lease was set no earlier than that reading, so no other processor can
have taken the row meanwhile (housekeeping puts back only rows whose lease the
database's clock has passed).  Only an operator's ``release --force`` can
take a vouched claim, and then the settling statement, conditioned on the
token, matches no row and raises ClaimLost: no second copy is sent by us.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time

import sqlalchemy as sa
from zope.interface import implementer

from ..interface import IClaimed
from .engine import unreachable
from .patience import FIRST_STEP, STEP_MAX, log
from .schema import db_epoch, outbox

#: Leases are renewed every claim_timeout / 4 (as the spool's heartbeat), and at least
#: this often (seconds): ``mail.claim_timeout``'s text holds for both backends.
RENEW_MAX = 60.0
#: The share of ``claim_timeout`` after a claim's last confirmed (re)lease during
#: which :meth:`LeaseScope.vouches` answers without asking the database: two
#: thirds, leaving a third for clock rates and a late answer.
VOUCH_SHARE = 2.0 / 3.0


@implementer(IClaimed)
@dataclasses.dataclass(eq=False)
class Claimed:
    """One outbox row this process claimed (its token proves it)."""

    id: int
    token: str
    queued_at: float | None
    meta: object
    claimed_from: str
    problem: str | None = None
    #: The row's envelope and inline body as the claim returned them, read once
    #: by :meth:`SQLQueue.read` (no second round trip for a small message).
    row: object = dataclasses.field(default=None, repr=False)

    @property
    def name(self):
        return str(self.id)

    @property
    def state_record(self):
        return f"the state of outbox row {self.id}"


def claimer():
    """Who claims, for ``claimed_by`` and ``txmail-queue show``: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"[:255]


def renew_interval(timeout):
    """How often held leases are renewed: well inside ``timeout``."""
    return min(timeout / 4.0, RENEW_MAX)


def renew(connection, tokens, timeout):
    """Extend the leases of ``tokens``; returns the set of tokens still held."""
    if not tokens:
        return set()
    result = connection.execute(
        outbox.update()
        .where(outbox.c.claim_token.in_(sorted(tokens)), outbox.c.state == "in_progress")
        .values(lease_until=db_epoch() + timeout).returning(outbox.c.claim_token))
    return set(result.scalars())


class LeaseScope:
    """The claims of one pass, renewed by one thread (:class:`~IPassScope`).

    ``fresh`` claims were made by :meth:`SQLQueue.candidates` but not yet
    handed to a worker (``claim``): those still unhanded when the pass ends
    (it was stopped) go straight back to the queue instead of waiting for
    their lease to run out.
    """

    def __init__(self, queue, timeout):
        self.queue = queue
        self.timeout = timeout
        self.interval = renew_interval(timeout)
        self._held = {}
        self.fresh = {}
        self._leased = {}  # token -> time.monotonic() read before its last (re)lease
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="txmail-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        with self._lock:
            unhanded = list(self.fresh.values())
            self.fresh.clear()
            self._held.clear()
            self._leased.clear()
        for claimed in unhanded:
            self.queue.unclaim(claimed)

    def add(self, claimed):
        with self._lock:
            self._held[claimed.token] = claimed

    def discard(self, claimed):
        with self._lock:
            token = getattr(claimed, "token", None)
            self._held.pop(token, None)
            self._leased.pop(token, None)

    def add_fresh(self, claimed, leased_at=None):
        """A claim just made; ``leased_at``: ``time.monotonic()`` read before the
        claiming statement was sent."""
        with self._lock:
            self.fresh[claimed.token] = claimed
            if leased_at is not None:
                self._leased[claimed.token] = leased_at

    def vouches(self, claimed):
        """Whether this scope knows, without asking, that ``claimed``'s lease still
        runs: claimed or renewed (the database said so) less than
        :data:`VOUCH_SHARE` of the lease ago.  False means "ask the database"."""
        with self._lock:
            since = self._leased.get(claimed.token)
        return since is not None and time.monotonic() - since < self.timeout * VOUCH_SHARE

    def in_hand(self):
        """How many claims the workers hold now (handed out, not yet settled)."""
        return len(self._held)

    def hand_out(self, claimed):
        with self._lock:
            return self.fresh.pop(claimed.token, None) is not None

    def tokens(self):
        with self._lock:
            return set(self._held) | set(self.fresh)

    def beat(self):
        """One renewal of every lease held now (one UPDATE)."""
        tokens = self.tokens()
        if tokens:
            started = time.monotonic()
            # a renewal that fails leaves the last confirmed times as they were:
            # those leases were set then and still run until their end
            # the queue's _run: a connection dropped by a restart is renewed and tried once more
            held = self.queue._run(lambda c: renew(c, tokens, self.timeout), "transaction")
            with self._lock:
                for token in tokens:
                    if token in held and (token in self._held or token in self.fresh):
                        self._leased[token] = started
                    else:
                        self._leased.pop(token, None)

    def _run(self):
        wait, away = self.interval, None
        while not self._stop.wait(wait):
            try:
                self.beat()
            except sa.exc.SQLAlchemyError as exc:
                why = unreachable(exc)
                if why is None:
                    log.warning("cannot renew the leases of %d claims in %s (%s); trying "
                                "again in %gs", len(self.tokens()), self.queue.where,
                                exc.__class__.__name__, self.interval)
                    continue
                if away is None:
                    log.warning("cannot renew the leases of %d claims in %s: the database "
                                "is not available (%s); trying again until it answers",
                                len(self.tokens()), self.queue.where, why)
                    wait = FIRST_STEP
                away = why
                wait = min(wait * 2, STEP_MAX, self.interval)
                continue
            if away is not None:
                log.info("renewed the leases of %d claims in %s again", len(self.tokens()),
                         self.queue.where)
            wait, away = self.interval, None
