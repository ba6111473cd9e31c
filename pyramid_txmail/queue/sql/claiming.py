"""The claiming statement: a few rows per round trip, each with a token of its own.

One UPDATE takes up to ``batch`` claimable rows in queue order (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL: concurrent claimers pass each other's rows
instead of waiting; SQLite's claimers are serialised by ``BEGIN IMMEDIATE``),
sets them ``in_progress`` with a lease on the database's clock, and RETURNs
what the worker needs next: the state, the envelope and a small inline body.
A small message then costs no read of its own.  The batch is kept small
(about two per worker, :data:`CLAIM_BATCH_MAX` at most), so rows claimed but
not yet started wait briefly -- their leases renewed meanwhile -- and the work
stays spread across processes.

Within a pass the next batch is claimed ahead (:func:`handed_out`), by a
helper thread, once half of the current one was handed out: the workers,
which take their next message under one lock, then never wait on that lock
while a claiming statement makes its round trip.

The first claim of a pass takes only half a batch (one row per worker) and
nothing is claimed ahead of it: idle processes woken by the same burst then
share it (4 processes x 3 workers, 12 messages: 3 each, not 6+6+0+0, outside
probe of issue 13); a process claims more only once its workers come back
for it.
"""
from __future__ import annotations

import secrets
import threading
import time

import sqlalchemy as sa

from .engine import log_error
from .leases import Claimed, claimer
from .schema import db_epoch, outbox

#: Most rows one claiming statement takes (about two per worker, never more).
CLAIM_BATCH_MAX = 32
#: Inline bodies up to this size come back with the claim; a larger one (up to
#: CHUNK) is read when its worker starts on it, so a batch holds little memory.
BODY_WITH_CLAIM = 64 * 1024

#: What :meth:`SQLQueue.read` needs of a row (returned by the claim too).
READ_COLUMNS = (outbox.c.sender, outbox.c.recipients, outbox.c.size, outbox.c.chunks,
                outbox.c.body, outbox.c.eightbit, outbox.c.head_8bit,
                outbox.c.message_id, outbox.c.wire_ready)

_CLAIM_COLUMNS = tuple(c for c in READ_COLUMNS if c is not outbox.c.body) + (
    sa.case((outbox.c.size <= BODY_WITH_CLAIM, outbox.c.body), else_=sa.null())
    .label("body"),)


def claim_statement(which):
    """The UPDATE claiming up to ``:batch`` rows of kind ``which`` (``queued``;
    ``due`` deferred rows; ``stray`` deferred rows due beyond ``:far``,
    scheduled by a clock that was ahead), built once: a claim only binds
    :func:`claim_params`.

    Each row's token is ``:prefix`` + its id (at most 32 characters): unique
    per claim, and every settle is conditioned on id and token together.
    """
    if which == "queued":
        where, order = outbox.c.state == "queued", (outbox.c.queued_at, outbox.c.id)
    else:
        when = (outbox.c.next_attempt <= sa.bindparam("now", type_=sa.Double())
                if which == "due" else
                sa.or_(outbox.c.next_attempt > sa.bindparam("far", type_=sa.Double()),
                       outbox.c.next_attempt.is_(None)))
        where, order = (sa.and_(outbox.c.state == "deferred", when),
                        (outbox.c.next_attempt, outbox.c.id))
    pick = (sa.select(outbox.c.id).where(where).order_by(*order)
            .limit(sa.bindparam("batch", type_=sa.Integer())).with_for_update(skip_locked=True))
    token = sa.bindparam("prefix", type_=sa.String()) + sa.cast(outbox.c.id, sa.String)
    return (outbox.update().where(outbox.c.id.in_(pick.scalar_subquery()))
            .values(state="in_progress", claim_token=token,
                    claimed_by=sa.bindparam("claimer", type_=sa.String()),
                    lease_until=db_epoch() + sa.bindparam("timeout", type_=sa.Double()))
            .returning(outbox.c.id, outbox.c.queued_at, outbox.c.next_attempt,
                       outbox.c.meta, *_CLAIM_COLUMNS))


def claim_params(which, now, horizon, batch, timeout):
    """``(params, prefix)`` of one claim: a fresh token prefix, and only the values
    its kind's statement binds."""
    prefix = secrets.token_hex(6) + "."
    params = {"prefix": prefix, "claimer": claimer(), "timeout": float(timeout),
              "batch": int(batch), "state": "in_progress"}
    if which == "due":
        params["now"] = float(now)
    elif which == "stray":
        params["far"] = float(now + horizon)
    return params, prefix


STATEMENTS = {which: claim_statement(which) for which in ("queued", "due", "stray")}


class DriverClaims:
    """The claiming statements compiled once for an engine's dialect, run as text on
    the driver (``exec_driver_sql``): no statement to build, no cache key to walk,
    no compiled-cache lookup per claim (PostgreSQL; psycopg returns the JSON and
    bytea columns as Python objects itself)."""

    def __init__(self, dialect):
        self.sql = {}
        for which, statement in STATEMENTS.items():
            compiled = statement.compile(dialect=dialect)
            self.sql[which] = (compiled.string, dict(compiled.params))

    def run(self, connection, which, params):
        sql, fixed = self.sql[which]
        return connection.exec_driver_sql(sql, {**fixed, **params}).all()


def claims_of(rows, which, prefix):
    """The :class:`Claimed` of the returned ``rows``, in queue order (RETURNING
    has none of its own)."""
    if which == "queued":
        rows = sorted(rows, key=lambda r: (r.queued_at, r.id))
    else:  # NULLs last, as PostgreSQL orders them
        rows = sorted(rows, key=lambda r: (r.next_attempt is None, r.next_attempt or 0, r.id))
    source = "queued" if which == "queued" else "deferred"
    return [Claimed(row.id, f"{prefix}{row.id}", row.queued_at, row.meta, source, row=row)
            for row in rows]


def claimed_batches(queue, now, horizon, stats, first=None):
    """``queue``'s claimed batches in queue order: queued rows, then due deferred
    rows, then strays.  A claim that fails is counted and logged, and ends them
    (the pass sends what it claimed before); each claim made in a pass is the
    pass scope's to renew, and to give back if it is never handed out.  The
    first batch takes ``first`` rows at most (``queue.claim_batch`` if None)."""
    size = first or queue.claim_batch
    for which in ("queued", "due", "stray"):
        while True:
            started = time.monotonic()
            try:
                batch = queue._claim_batch(which, now, horizon, size)
            except sa.exc.SQLAlchemyError as exc:
                stats.errors += 1
                log_error("cannot claim the next messages (this pass sends what it "
                          "claimed before)", queue.where, exc)
                return
            if not batch:
                break
            scope = queue._scope
            if scope is not None:
                for claimed in batch:
                    scope.add_fresh(claimed, started)
            yield batch
            full, size = len(batch) >= size, queue.claim_batch
            if not full:
                break


class _Ahead:
    """``next(batches)`` in a helper thread; :meth:`result` waits for it."""

    def __init__(self, batches):
        self._batch, self._error = [], None
        self._thread = threading.Thread(target=self._claim, args=(batches,),
                                        name="txmail-claim-ahead", daemon=True)
        self._thread.start()

    def _claim(self, batches):
        try:
            self._batch = next(batches, [])
        except BaseException as exc:  # raised where the claims are taken, as before
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._batch


def handed_out(batches, ahead_at, ahead_of_first=True):
    """The claims of ``batches`` one by one.  With ``ahead_at``, the next batch is
    claimed by a helper thread once that many claims of the current one are
    left (not during the first batch unless ``ahead_of_first``), so whoever takes the next claim rarely waits for a round trip; at
    most one claiming statement runs at a time, and at most two batches are
    claimed but not handed out.  When the caller stops early, the claim under
    way is waited for (its rows are then in the pass scope, which gives them
    back)."""
    ahead = None
    batch = next(batches, [])
    early = ahead_at if ahead_of_first else 0
    try:
        while batch:
            for index, claimed in enumerate(batch):
                if ahead is None and early and len(batch) - index <= early:
                    ahead = _Ahead(batches)
                yield claimed
            batch = ahead.result() if ahead is not None else next(batches, [])
            ahead, early = None, ahead_at
    finally:
        if ahead is not None:
            ahead.result()
