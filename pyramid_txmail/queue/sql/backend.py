"""The outbox as a queue for processors: claims with leases, state in the row.

:class:`SQLQueue` implements :class:`~pyramid_txmail.queue.interface.IQueue`
(and, through :class:`~pyramid_txmail.queue.sql.admin.SqlAdmin`,
``IQueueAdmin``) over an engine of the processors' own, made from
``mail.queue_url``.

A claim is one short transaction: the oldest claimable row is picked with
``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL: concurrent claimers skip
each other's rows instead of waiting) and set to ``in_progress`` with a fresh
random ``claim_token``, ``claimed_by`` (host:pid) and a lease on the
database's clock (:mod:`~pyramid_txmail.queue.sql.leases`).  On SQLite the
transaction is ``BEGIN IMMEDIATE`` instead, which serialises claimers on one
machine: SQLite serves a single machine, never a shared network file.

Every change a processor makes to a claimed row is conditioned on its token
(``WHERE id = :id AND claim_token = :token``): when no row matched, the claim
was lost (its lease ran out and another processor took it, or an operator
released it) and :class:`~pyramid_txmail.queue.sql.errors.ClaimLost` is
raised -- nothing of the new holder's is overwritten.

The claims are made in :meth:`SQLQueue.candidates` in small batches (one
statement claims up to ``claim_batch`` rows, about two per worker, and returns
their envelopes and inline bodies, so a small message needs no read of its
own): a claim waits briefly for a free worker, its lease renewed meanwhile,
and claims never handed out go back when the pass ends.  Keeping the batch
small keeps the work spread across processes.  Delivered rows are kept ``mail.keep_delivered`` (their body
deleted at once) and then deleted by :meth:`SQLQueue.housekeep`.
"""
from __future__ import annotations

import contextlib

import sqlalchemy as sa
from zope.interface import implementer

from ...compose import wire
from ..interface import IQueue, IQueueAdmin
from .admin import SqlAdmin
from .dbclock import DbClock
from .engine import log_error, make_engine, schema_problem, unreachable, where as url_where
from .errors import ClaimLost, PoisonMessage
from .claiming import (CLAIM_BATCH_MAX, READ_COLUMNS, STATEMENTS, DriverClaims, claim_params,
                       claimed_batches, claims_of, handed_out)
from .leases import LeaseScope, log
from . import patience
from .patience import patiently
from .retiring import RetireGroup, group_sql
from .schema import PG_EPOCH, SETTLED_WHERE, db_epoch, outbox, outbox_chunk
from .store import (attempts_of, autocommit, chunks_on, copy_chunks, enqueue, insert_row,
                    read_chunks)

#: How long delivered rows are kept by default (``mail.keep_delivered``): a day,
#: as Rails' Solid Queue keeps finished jobs.  Long enough to answer "did the
#: mail for this order go out?" while support looks; short enough that a site
#: sending a million a day keeps a million small rows (no body), which the
#: partial indexes never see.
KEEP_DELIVERED = 86400.0
#: Delivered rows deleted per statement by housekeeping (short locks).
REAP_BATCH = 10000
#: While the database cannot be reached, the daemon looks again this often (seconds).
AWAY_RETRY = 5.0
_CLEAR_CLAIM = {"claim_token": None, "claimed_by": None, "lease_until": None}


def engine_from_settings(settings):
    """The processors' engine for ``mail.queue_url`` (``txmail-queue init-db`` too)."""
    return make_engine(settings.queue_url, pool_size=settings.workers + 4)


@implementer(IQueue, IQueueAdmin)
class SQLQueue(SqlAdmin):
    """The outbox at ``url`` (a SQLAlchemy URL, or an Engine of the processors')."""

    def __init__(self, url, *, claim_timeout=3600.0, keep_delivered=KEEP_DELIVERED,
                 pool_size=5, claim_batch=8, retire_group=1):
        if isinstance(url, sa.engine.Engine):
            self.engine = url
        else:
            self.engine = make_engine(url, pool_size)
        self.where = url_where(self.engine.url)
        self.clock = DbClock(self.engine)  # every time on the outbox is the database's
        self.claim_timeout = claim_timeout
        self.keep_delivered = keep_delivered
        self.claim_batch = max(1, min(int(claim_batch), CLAIM_BATCH_MAX))
        self._scope = None
        #: PostgreSQL: the retires of this process's workers settled in groups
        #: (:mod:`~pyramid_txmail.queue.sql.retiring`), up to one per worker.
        self._retires = self._driver_claims = None
        if self.engine.dialect.name == "postgresql":
            self._retires = RetireGroup(self._settle_group, self._in_hand, retire_group,
                                        one=self._retire_one)
            self._driver_claims = DriverClaims(self.engine.dialect)
        #: An Event set when the process is asked to stop (txmail-qp sets it): the
        #: wait for a database that is away then ends at once (QueueAway).
        self.stopping = None

    @classmethod
    def from_settings(cls, settings):
        return cls(engine_from_settings(settings), claim_timeout=settings.claim_timeout,
                   keep_delivered=settings.keep_delivered,
                   claim_batch=2 * settings.workers, retire_group=settings.workers)

    def close(self):
        self.engine.dispose()

    # -- a pass --------------------------------------------------------------

    def housekeep(self, settings, registry, now):
        """Put back rows whose lease ran out; delete delivered rows past their keep."""
        self.claim_timeout = settings.claim_timeout
        self.keep_delivered = getattr(settings, "keep_delivered", self.keep_delivered)
        put_back = []
        try:
            put_back = self.release_stale(self.claim_timeout, now)
        except sa.exc.SQLAlchemyError as exc:
            log_error("cannot put back the expired claims", self.where, exc)
        try:
            self.reap_delivered()
        except sa.exc.SQLAlchemyError as exc:
            log_error(f"cannot delete the delivered rows older than "
                       f"{self.keep_delivered:g}s", self.where, exc)
        return len(put_back)

    def reap_delivered(self):
        """Delete delivered rows settled more than ``keep_delivered`` ago; returns how many.

        The settled index's own WHERE is repeated in the query: SQLite uses a
        partial index only when the query's terms imply its WHERE, and it does not
        see that ``state = 'delivered'`` implies ``state IN (...)``; without it,
        the reap scanned every row at every pass of the daemon."""
        old = sa.select(outbox.c.id).where(
            sa.text(SETTLED_WHERE), outbox.c.state == "delivered",
            outbox.c.settled_at < db_epoch() - self.keep_delivered).limit(REAP_BATCH)
        deleted = 0
        while True:
            with self.engine.begin() as connection:
                ids = connection.execute(old).scalars().all()
                if ids:
                    connection.execute(outbox_chunk.delete().where(
                        outbox_chunk.c.outbox_id.in_(ids)))
                    connection.execute(outbox.delete().where(outbox.c.id.in_(ids),
                                                             outbox.c.state == "delivered"))
            deleted += len(ids)
            if len(ids) < REAP_BATCH:
                return deleted

    @contextlib.contextmanager
    def pass_scope(self, settings):
        """Renews this pass's leases; claims never handed out go back at the end."""
        self.claim_timeout = settings.claim_timeout
        with LeaseScope(self, self.claim_timeout) as scope:
            self._scope = scope
            try:
                yield scope
            finally:
                self._scope = None

    def candidates(self, now, horizon, stats):
        """Claim, a few at a time: queued rows oldest first, then due deferred rows
        (one due beyond ``horizon`` was scheduled by a clock that was ahead)."""
        try:
            stats.skipped += self._not_due(now, horizon)
        except sa.exc.SQLAlchemyError as exc:
            stats.errors += 1
            log_error("cannot count the deferred mail", self.where, exc)
            return  # the claims would fail the same way
        if self._scope is None:
            yield from handed_out(claimed_batches(self, now, horizon, stats), 0)
            return
        # within a pass: first one row per worker, nothing ahead of it (idle processes
        # share a burst); then the next batch is claimed while this one is handed out
        half = max(1, self.claim_batch // 2)
        yield from handed_out(claimed_batches(self, now, horizon, stats, first=half), half,
                              ahead_of_first=False)

    def _not_due(self, now, horizon):
        query = sa.select(sa.func.count()).select_from(outbox).where(
            outbox.c.state == "deferred", outbox.c.next_attempt > now,
            outbox.c.next_attempt <= now + horizon)
        return self._run(lambda c: c.execute(query).scalar(), "read")

    def _claim_batch(self, which, now, horizon, size=None):
        params, prefix = claim_params(which, now, horizon, size or self.claim_batch,
                                      self.claim_timeout)
        if self._driver_claims is not None:
            rows = self._run(lambda c: self._driver_claims.run(c, which, params), "write")
        else:
            statement = STATEMENTS[which]
            rows = self._run(lambda c: c.execute(statement, params).all(), "write")
        return claims_of(rows, which, prefix)

    def claim(self, ticket):
        """The claim :meth:`candidates` made (None if the pass gave it back meanwhile)."""
        if self._scope is not None and not self._scope.hand_out(ticket):
            return None
        return ticket

    def unclaim(self, claimed):
        """Give back a claim never handed to a worker (the pass was stopped)."""
        try:
            self._settle(claimed, dict(_CLEAR_CLAIM, state=claimed.claimed_from))
        except (ClaimLost, sa.exc.SQLAlchemyError) as exc:
            log.warning("outbox row %s: could not give back its claim (%s); its lease "
                        "runs out after mail.claim_timeout", claimed.id, exc)

    # -- one claimed message ---------------------------------------------------

    def read(self, claimed, stream_over):
        """``(fromaddr, toaddrs, data)``: bytes, or a Stream of its chunks when it is
        larger than ``stream_over`` (then read one chunk at a time)."""
        row, claimed.row = getattr(claimed, "row", None), None  # read once, then freed
        if row is not None and not row.chunks and row.body is None:
            row = None  # a larger inline body, not returned by the claim
        if row is None:
            row = self._patient(claimed, lambda c: c.execute(sa.select(*READ_COLUMNS).where(
                outbox.c.id == claimed.id)).first(), "read")
        if row is None:
            raise ClaimLost(f"outbox row {claimed.id} is gone")
        recipients = row.recipients
        if (not isinstance(row.sender, str) or not isinstance(recipients, list)
                or not recipients or not all(isinstance(r, str) for r in recipients)):
            raise PoisonMessage(f"outbox row {claimed.id}: its envelope is not a sender "
                                "and a list of recipient addresses")
        if not row.chunks:
            if row.body is None:
                raise PoisonMessage(f"outbox row {claimed.id} has no body")
            return row.sender, recipients, bytes(row.body)
        chunks = lambda: read_chunks(self.engine, claimed.id, row.chunks)  # noqa: E731
        try:
            if stream_over is None or row.size <= stream_over or not row.wire_ready:
                return row.sender, recipients, self._patient(claimed, lambda c: b"".join(
                    chunks_on(c, claimed.id, row.chunks)), "read")
        except LookupError as exc:
            raise PoisonMessage(str(exc)) from None
        stream = wire.Stream(chunks, size=row.size, eightbit=row.eightbit,
                             message_id=row.message_id, head_8bit=row.head_8bit)
        stream.outbox_source = (self, claimed.id, row.chunks)  # bury_copy copies in SQL
        return row.sender, recipients, stream

    def load_state(self, claimed):
        """The state read with the claim (no statement of its own)."""
        meta = claimed.meta
        if meta is None:
            return {}
        return dict(meta) if isinstance(meta, dict) else meta

    def holds(self, claimed):
        """Whether this claim still holds its row: answered by the lease renewer
        when it knows (:meth:`LeaseScope.vouches`), else by the database.  A wrong
        "yes" cannot send a second copy: every settle is conditioned on the token."""
        if self._scope is not None and self._scope.vouches(claimed):
            return True
        query = sa.select(outbox.c.id).where(outbox.c.id == claimed.id,
                                             outbox.c.claim_token == claimed.token,
                                             outbox.c.state == "in_progress")
        return self._patient(claimed, lambda c: c.execute(query).first(), "read") is not None

    def _patient(self, claimed, work, how):
        """:meth:`_run` for a claimed message: a database that is away is waited for
        (:mod:`~pyramid_txmail.queue.sql.patience`), then QueueAway -- never an
        answer that says the claim was lost.

        The wait lasts as long as the lease may still be this processor's
        (``claim_timeout``: it was renewed less than a beat ago), at least
        :data:`~pyramid_txmail.queue.sql.patience.PATIENCE`: a database back
        within it still holds the claim, so what the relay answered is
        recorded instead of the message being sent again.
        """
        about = f"outbox row {claimed.id}" if hasattr(claimed, "id") else str(claimed)
        return patiently(lambda: self._run(work, how), about, self.where,
                         max(patience.PATIENCE, self.claim_timeout), self.stopping)

    def _run(self, work, how):
        """``work(connection)``: ``how`` is ``read`` (no transaction held), ``write``
        (one statement that is a transaction by itself: autocommit on PostgreSQL,
        one round trip instead of three; ``BEGIN IMMEDIATE`` on SQLite, where
        two claimers must never read the same row as free) or ``transaction``.

        A pooled connection that died with a database restart fails once and
        SQLAlchemy renews the whole pool: that one failure is tried again on a
        new connection (cheaper than pinging at every checkout).
        """
        for attempt in (1, 2):
            if how == "read" or (how == "write" and self.engine.dialect.name != "sqlite"):
                opened = autocommit(self.engine)
            else:
                opened = self.engine.begin()
            try:
                with opened as connection:
                    return work(connection)
            except sa.exc.DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise

    def _settle(self, claimed, values, lazy_commit=False):
        """UPDATE the row (DELETE it when ``values`` is None) if this claim still holds
        it, else ClaimLost; returns the row's ``chunks``.

        A database that dropped the connection or cannot be reached (a
        restart, a failover) is waited for (:meth:`_patient`): a relay's
        answer is not thrown away for a blip.  (Had the dropped attempt
        committed, the retry finds the row settled and says ClaimLost: the
        message is where it should be.)
        """
        mine = (outbox.c.id == claimed.id, outbox.c.claim_token == claimed.token,
                outbox.c.state == "in_progress")
        statement = (outbox.delete() if values is None else outbox.update().values(**values)
                     ).where(*mine).returning(outbox.c.chunks)
        if lazy_commit and self.engine.dialect.name == "postgresql":
            # evaluated for the row before its (autocommitted) statement commits:
            # this one commit is not waited for on disk (see retire())
            statement = statement.returning(
                sa.func.set_config("synchronous_commit", "off", True))
        row = self._patient(claimed, lambda c: c.execute(statement).first(), "write")
        if row is None:
            raise ClaimLost(f"outbox row {claimed.id}: this processor's claim was lost "
                            "(its lease ran out, or it was released)")
        return row.chunks

    def record(self, claimed, state):
        self._settle(claimed, {"meta": state, "attempts": attempts_of(state)})
        claimed.meta = state

    def retire(self, claimed, had_state=True):
        """Delivered: the body goes now, the row after ``keep_delivered``.

        When every recipient accepted at the first attempt (``had_state`` false),
        the commit is asynchronous on PostgreSQL (``synchronous_commit = off``
        for that one statement's transaction; the server writes it to disk
        within ``wal_writer_delay`` x 3, by default 0.6 s): a PostgreSQL crash
        in that window loses only the retire, so the row is put back when its
        lease runs out and the message sent once more -- the same
        at-least-once window as a processor crash between the relay's 250 and
        the retire, never a loss.  Everything else stays synchronous: record()
        (which recipients were delivered: losing it would re-send to them
        after a partial delivery that was already acknowledged), defer and
        bury (losing them would move a message back, or out of the dead
        letters), and the retire of a message with a recorded state.

        On PostgreSQL the retires of the process's workers are settled in
        groups, one statement each (:mod:`~pyramid_txmail.queue.sql.retiring`,
        which gives the durability argument); such a group commits without
        waiting for the disk only if each of its retires may.
        """
        if self._retires is not None:
            chunks = self._retires.retire(claimed, not had_state)
        else:
            chunks = self._retire_one(claimed, not had_state)
        if chunks:
            self._drop_chunks(claimed.id)

    def _retire_one(self, claimed, lazy):
        """The retire of one row in a statement (and transaction) of its own; its chunks."""
        if self.keep_delivered:
            return self._settle(claimed, dict(_CLEAR_CLAIM, state="delivered", body=None,
                                              settled_at=db_epoch(), next_attempt=None),
                                lazy_commit=lazy)
        return self._settle(claimed, None, lazy_commit=lazy)  # kept for no time at all

    def _in_hand(self):
        scope = self._scope
        return scope.in_hand() if scope is not None else 0

    def _settle_group(self, pairs, lazy):
        """Retire ``pairs`` (id, token) in one statement (:mod:`.retiring`); returns
        ``{(id, token): chunks}`` of the rows this process's tokens still held."""
        sql = group_sql(not self.keep_delivered, lazy, PG_EPOCH)
        params = {"ids": [i for i, _ in pairs], "tokens": [t for _, t in pairs]}
        about = "outbox row" + "s" * (len(pairs) > 1) + " " + ", ".join(str(i) for i, _ in pairs)
        rows = self._patient(about, lambda c: c.exec_driver_sql(sql, params).all(), "write")
        return {(row[0], row[1]): row[2] for row in rows}

    def _drop_chunks(self, ident):
        """A delivered body's chunks; if that fails they go with the row (housekeeping)."""
        try:
            self._run(lambda c: c.execute(outbox_chunk.delete().where(
                outbox_chunk.c.outbox_id == ident)), "transaction")
        except sa.exc.SQLAlchemyError as exc:
            log.warning("outbox row %s: delivered, but its body stays until housekeeping "
                        "deletes the row (%s)", ident, unreachable(exc) or exc)

    def defer(self, claimed, next_attempt):
        self._settle(claimed, dict(_CLEAR_CLAIM, state="deferred",
                                   next_attempt=float(next_attempt)))

    def bury(self, claimed, state):
        self._settle(claimed, dict(_CLEAR_CLAIM, state="failed", meta=state,
                                   attempts=attempts_of(state), settled_at=db_epoch(),
                                   next_attempt=None))
        return claimed.name

    def bury_copy(self, fromaddr, recipients, data, state):
        """A dead letter addressed to ``recipients`` only, committed before it returns
        (a database that is away is waited for, as for the claimed message's own row)."""
        source = getattr(data, "outbox_source", None)
        about = f"the dead-letter copy for {', '.join(recipients)}"
        return self._patient(about, lambda connection: self._copy(
            connection, source, fromaddr, recipients, data, state), "transaction")

    def _copy(self, connection, source, fromaddr, recipients, data, state):
        if source is None or source[0] is not self:
            return str(enqueue(connection, fromaddr, recipients, data, state="failed",
                               meta=state))
        _, ident, count = source
        row = {"state": "failed", "sender": fromaddr, "recipients": list(recipients),
               "meta": state, "attempts": attempts_of(state),
               "message_id": data.message_id, "size": data.size, "chunks": count,
               "body": None, "eightbit": bool(data.eightbit),
               "head_8bit": bool(data.head_8bit), "wire_ready": True}
        copy = insert_row(connection, row, notify=False)
        copy_chunks(connection, ident, copy)
        return str(copy)

    def release(self, claimed):
        """Stop renewing its lease (no statement: the settling step freed the row)."""
        if self._scope is not None:
            self._scope.discard(claimed)

    # -- the daemon ------------------------------------------------------------

    def next_due(self, settings, now, horizon=None):
        """The earliest retry (now for one beyond ``horizon``: a clock that was ahead),
        or the earliest lease that may run out (converted from the database's clock
        to ``now``'s); None when neither."""
        deferred = outbox.c.state == "deferred"
        far = 10.0 ** 300 if horizon is None else now + horizon
        query = sa.select(
            sa.select(sa.func.min(outbox.c.next_attempt))
            .where(deferred, outbox.c.next_attempt <= far).scalar_subquery(),
            sa.select(sa.func.count()).select_from(outbox)
            .where(deferred, sa.or_(outbox.c.next_attempt > far,
                                    outbox.c.next_attempt.is_(None))).scalar_subquery(),
            sa.select(sa.func.min(outbox.c.lease_until) - db_epoch())
            .where(outbox.c.state == "in_progress").scalar_subquery())
        try:
            retry, strays, lease_left = self._run(lambda c: c.execute(query).first(), "read")
        except sa.exc.SQLAlchemyError as exc:
            if schema_problem(exc) is not None:  # logged once a minute, no traceback
                log_error("cannot read the retry times", self.where, exc)
                return now + AWAY_RETRY
            if unreachable(exc) is None:
                raise
            log.warning("cannot read the retry times in %s (%s); looking again in %gs",
                        self.where, unreachable(exc), AWAY_RETRY)
            return now + AWAY_RETRY
        due = [now] if strays else []
        if retry is not None:
            due.append(retry)
        if lease_left is not None:
            due.append(now + max(lease_left, 0.0))
        return min(due) if due else None

    def watcher(self, settings, how="auto"):
        from .watcher import make_watcher

        return make_watcher(self, settings, how)
