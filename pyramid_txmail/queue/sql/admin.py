"""What an operator does to the outbox: look, requeue, purge, release.

The library half of ``txmail-queue`` on a SQL queue, with the spool's shapes
(:mod:`pyramid_txmail.queue.maildir.spool_admin`): messages are reported in the spool's
state names (``new`` for queued, ``cur`` for in progress, ``deferred``,
``failed``) whose labels are the outbox's own state names, and ``status`` has
the spool's keys (``tmp`` and ``prepared`` are always 0: a database
transaction leaves nothing half-committed) plus ``delivered``, the rows kept
for ``mail.keep_delivered``.

It is safe beside running processors: every change is one UPDATE or DELETE
conditioned on the state the operator saw (and, for ``release``, on the
claim's token), so exactly one of the operator and a processor wins; the
loser sees :class:`~pyramid_txmail.queue.sql.errors.Vanished`.  Listing reads
only the first :data:`HEAD_LIMIT` octets of each body, in the database.
"""
from __future__ import annotations

import dataclasses
import email.policy
import re
import time
from email.parser import BytesHeaderParser

import sqlalchemy as sa

from ..queue_state import epoch
from ..queued_view import QueuedView
from ..states import ALL_STATES, LABELS, QUEUE_STATES
from .errors import Ambiguous, NotFound, Refused, Vanished
from .leases import log
from .schema import db_epoch, outbox, outbox_chunk, parse_id
from .store import CHANNEL, autocommit, read_chunks

#: The state names txmail-queue shows, and the outbox's for them (their labels).
TO_DB = {state: LABELS[state] for state in QUEUE_STATES}
FROM_DB = {db: state for state, db in TO_DB.items()}
#: A spool's own states, always empty here (kept in ``status`` for its shape).
SPOOL_ONLY = tuple(s for s in ALL_STATES if s not in QUEUE_STATES)
#: How much of a body is read to find its header block.
HEAD_LIMIT = 256 * 1024

_HEADERS_END = re.compile(rb"\r?\n\r?\n")


def _head_column():
    """The first HEAD_LIMIT octets of a body: inline, or from its first chunk."""
    first_chunk = (sa.select(sa.func.substr(outbox_chunk.c.data, 1, HEAD_LIMIT,
                                            type_=sa.LargeBinary()))
                   .where(outbox_chunk.c.outbox_id == outbox.c.id, outbox_chunk.c.seq == 0)
                   .scalar_subquery())
    return sa.func.coalesce(sa.func.substr(outbox.c.body, 1, HEAD_LIMIT,
                                           type_=sa.LargeBinary()),
                            first_chunk, type_=sa.LargeBinary()).label("head")


def _headers(head):
    """``[(name, value)]`` of a header block, decoded for reading; a header that does
    not decode is shown raw."""
    head = bytes(head or b"")
    match = _HEADERS_END.search(head)
    parsed = BytesHeaderParser(policy=email.policy.default).parsebytes(
        head[:match.start()] + b"\n\n" if match else head)
    items = []
    for name, raw in parsed.raw_items():
        try:
            text = str(parsed.policy.header_fetch_parse(name, raw))
        except Exception:
            text = str(raw)
        items.append((name, " ".join(text.split())))
    return items


@dataclasses.dataclass
class SqlMessage(QueuedView):
    """One outbox row as an operator sees it (the spool's ``QueuedMessage`` shape)."""

    queue: object
    state: str
    name: str
    queued_at: float
    fromaddr: str | None
    toaddrs: tuple
    headers: list
    meta: dict
    problem: str | None = None
    filename: str | None = None
    id: int = 0
    token: str | None = None
    claimed_by: str | None = None
    lease_left: float | None = None
    failed_at: float | None = None
    next_attempt: float | None = None
    path = None  # no file: the row is in queue.where

    @property
    def settled_at(self):
        """When it entered its state, for ``purge``: a dead letter's failure, else queued."""
        if self.state == "failed" and self.failed_at is not None:
            return self.failed_at
        return self.queued_at

    def label(self):
        return TO_DB[self.state]

    def due(self):
        return epoch(self.next_attempt)


def _notify(connection):
    """Wake the daemons (PostgreSQL; delivered at the commit)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_notify(CHANNEL, "")))


class SqlAdmin:
    """``IQueueAdmin`` over ``self.engine`` (mixed into :class:`SQLQueue`)."""

    states = QUEUE_STATES

    def _now(self):
        """The database's time when this is the SQL queue (its rows' times are on it)."""
        return getattr(self, "clock", time.time)()

    def _select(self, *where):
        columns = (outbox.c.id, outbox.c.state, outbox.c.queued_at, outbox.c.sender,
                   outbox.c.recipients, outbox.c.meta, outbox.c.message_id,
                   outbox.c.claim_token, outbox.c.claimed_by, outbox.c.settled_at,
                   outbox.c.next_attempt,
                   (outbox.c.lease_until - db_epoch()).label("lease_left"), _head_column())
        query = sa.select(*columns).where(*where).order_by(outbox.c.queued_at, outbox.c.id)
        with autocommit(self.engine) as connection:
            rows = connection.execute(query).all()
        return [self._message(row) for row in rows]

    def _message(self, row):
        problem = None
        try:
            headers = _headers(row.head)
        except Exception as exc:
            headers, problem = [], f"unparsable header block: {exc}"
        meta = row.meta if isinstance(row.meta, dict) else {}
        if row.message_id and "message_id" not in meta:
            meta = dict(meta, message_id=row.message_id)
        recipients = row.recipients if isinstance(row.recipients, list) else []
        return SqlMessage(self, FROM_DB[row.state], str(row.id), row.queued_at, row.sender,
                          tuple(recipients), headers, meta, problem, id=row.id,
                          token=row.claim_token, claimed_by=row.claimed_by,
                          lease_left=row.lease_left, failed_at=row.settled_at,
                          next_attempt=row.next_attempt)

    def messages(self, states=QUEUE_STATES):
        """Every message in ``states``, oldest first within a state."""
        found = self._select(outbox.c.state.in_([TO_DB[s] for s in states if s in TO_DB]))
        return sorted(found, key=lambda m: (states.index(m.state), m.queued_at, m.id))

    def filtered_messages(self, states, *, queued_before=None, queued_after=None,
                          message_id=None):
        """:meth:`messages` narrowed in the query where an index or a column does it
        cheaply (``txmail-queue list``'s age and Message-ID filters): queued at or
        before ``queued_before``, after ``queued_after`` (epoch seconds), with this
        Message-ID (``<>`` optional).  Recipient and reason filters stay in Python."""
        where = [outbox.c.state.in_([TO_DB[s] for s in states if s in TO_DB])]
        if queued_before is not None:
            where.append(outbox.c.queued_at <= queued_before)
        if queued_after is not None:
            where.append(outbox.c.queued_at > queued_after)
        if message_id:
            bare = message_id.strip().strip("<>").strip()
            where.append(outbox.c.message_id.in_([bare, f"<{bare}>"]))
        found = self._select(*where)
        return sorted(found, key=lambda m: (states.index(m.state), m.queued_at, m.id))

    def missing_tables(self):
        """The outbox tables the database lacks (``txmail-queue INI init-db`` creates
        them), or None when the database cannot be asked now (the daemon waits it out)."""
        from .tables import missing

        try:
            return missing(self.engine)
        except sa.exc.SQLAlchemyError:
            return None

    def check_tables(self):
        """IncompatibleTables (one line) unless the outbox tables are this version's."""
        from .tables import check

        check(self.engine, self.where)

    def status(self, now=None):
        """Counts and oldest age per state, the earliest retry (the spool's keys)."""
        now = self._now() if now is None else now
        by_state = sa.select(outbox.c.state, sa.func.count(), sa.func.min(outbox.c.queued_at)
                             ).group_by(outbox.c.state)
        retries = sa.select(sa.func.min(outbox.c.next_attempt),
                            sa.func.count().filter(outbox.c.next_attempt <= now)
                            ).where(outbox.c.state == "deferred")
        with autocommit(self.engine) as connection:
            counts = {s: (n, first) for s, n, first in connection.execute(by_state)}
            earliest, due = connection.execute(retries).first()
        result = {"spool": self.where, "queue": self.where, "backend": "sql", "time": now,
                  "states": {}}  # "spool": the key readers of a spool's status know
        oldest = None
        for state in QUEUE_STATES + SPOOL_ONLY:
            count, first = counts.get(TO_DB.get(state), (0, None))
            label = TO_DB.get(state, state)
            result[label] = count
            result["states"][state] = {"label": label, "count": count, "oldest_age":
                                       None if first is None else round(now - first, 3)}
            if first is not None:
                oldest = first if oldest is None else min(oldest, first)
        result["oldest_age"] = None if oldest is None else round(now - oldest, 3)
        result["next_retry"] = earliest
        result["next_retry_in"] = None if earliest is None else round(earliest - now, 3)
        result["deferred_due"] = due or 0
        result["delivered"] = counts.get("delivered", (0, None))[0]
        return result

    def find(self, ident):
        """The one message ``ident`` names: its id (``42``, ``new/42``) or its Message-ID."""
        ident = ident.strip()
        head, sep, tail = ident.partition("/")
        key = tail if sep and head in QUEUE_STATES else ident
        live = outbox.c.state.in_(list(TO_DB.values()))
        if not key:
            raise NotFound("an empty id matches nothing")
        number = parse_id(key)
        matches = [] if number is None else self._select(live, outbox.c.id == number)
        kind = "id"
        if not matches:
            bare = ident.strip("<>").strip()
            matches = self._select(live, outbox.c.message_id.in_([bare, f"<{bare}>"]))
            kind = "Message-ID"
        if not matches:
            raise NotFound(f"no message in {self.where} has the id or Message-ID {ident!r}")
        if len(matches) > 1:
            raise Ambiguous(f"{len(matches)} messages match the {kind} {ident!r}; give "
                            "the id of one", matches)
        return matches[0]

    def _change(self, msg, values, then=None, **where):
        """One conditioned UPDATE (or DELETE with ``values`` None); Vanished if 0 rows."""
        conditions = [outbox.c.id == msg.id, outbox.c.state == TO_DB[msg.state]]
        conditions += [outbox.c[k] == v for k, v in where.items()]
        with self.engine.begin() as connection:
            statement = (outbox.delete() if values is None else
                         outbox.update().values(**values)).where(*conditions)
            if values is None:
                connection.execute(outbox_chunk.delete().where(
                    outbox_chunk.c.outbox_id == msg.id))
            if connection.execute(statement).rowcount == 0:
                raise Vanished(f"{msg.state}/{msg.name} is gone: a processor or another "
                               "txmail-queue took it meanwhile")
            if then is not None:
                then(connection)

    def retry(self, msg):
        """Deferred or dead letter back to the queue, due now (a dead letter is sent
        afresh to its envelope; a deferred one keeps its attempts)."""
        if msg.state == "cur":
            raise Refused("it is being sent right now (claimed by a processor); it will "
                          "be delivered, deferred or dead-lettered when that attempt ends "
                          "-- retry it then.  If its processor died, `release` puts it "
                          "back (release --stale: every claim whose lease ran out)")
        if msg.state == "new":
            return "already queued; nothing to do"
        self._change(msg, {"state": "queued", "next_attempt": None, "settled_at": None},
                     _notify)
        return f"moved from {TO_DB[msg.state]} to queued; the next txmail-qp pass sends it"

    def purge_candidates(self, state, older_than=None, now=None):
        if state in ("new", "cur"):
            raise Refused(f"refusing to purge {TO_DB[state]} mail: it is still being "
                          "delivered; purge only deferred or failed")
        if state not in TO_DB:
            return []
        now = self._now() if now is None else now
        return [m for m in self.messages((state,))
                if older_than is None or now - m.settled_at >= older_than]

    def purge(self, msg):
        """Remove a deferred message or dead letter for good (row and chunks)."""
        if msg.state in ("new", "cur"):
            raise Refused(f"refusing to purge {TO_DB[msg.state]} mail: it is still being "
                          "delivered")
        self._change(msg, None)

    def release_claim(self, msg, claim_timeout, force=False, now=None):
        """Put a claim back into the queue once its lease ran out (``force``: at once)."""
        if msg.state != "cur":
            raise Refused(f"it is not claimed (it is {TO_DB[msg.state]}); release applies "
                          "to in_progress messages")
        held = msg.lease_left is not None and msg.lease_left > 0
        if held and not force:
            raise Refused(f"{msg.claimed_by} holds it, with a lease that runs for another "
                          f"{msg.lease_left:.0f}s (renewed while it is sending); --force "
                          "releases it anyway, and may send it twice")
        self._change(msg, {"state": "queued", "claim_token": None, "claimed_by": None,
                           "lease_until": None}, _notify, claim_token=msg.token)
        forced = f" although {msg.claimed_by} held it (--force)" if held else ""
        return f"released to queued{forced}; the next txmail-qp pass sends it"

    def release_stale(self, claim_timeout=None, now=None):
        """Every claim whose lease ran out goes back to the queue; returns their ids.

        The stale rows are selected (and locked: a renewal that commits first
        makes them not stale any more) before they are changed, so that the log
        can name who held each -- an UPDATE's RETURNING gives the new, cleared
        ``claimed_by``.
        """
        stale = (sa.select(outbox.c.id, outbox.c.claimed_by)
                 .where(outbox.c.state == "in_progress", outbox.c.lease_until < db_epoch())
                 .with_for_update(skip_locked=True))
        with self.engine.begin() as connection:
            rows = connection.execute(stale).all()
            if rows:
                connection.execute(outbox.update()
                                   .where(outbox.c.id.in_([ident for ident, _ in rows]))
                                   .values(state="queued", claim_token=None, claimed_by=None,
                                           lease_until=None))
                _notify(connection)
        for ident, owner in rows:
            log.warning("outbox row %s: the lease of %s ran out (it died, or lost the "
                        "database); put back in the queue", ident, owner)
        return [str(ident) for ident, _ in rows]

    def read_body(self, msg):
        """The message after its header block, as stored (None if it is gone)."""
        with autocommit(self.engine) as connection:
            row = connection.execute(sa.select(outbox.c.body, outbox.c.chunks).where(
                outbox.c.id == msg.id)).first()
        if row is None:
            return None
        data = bytes(row.body) if not row.chunks else b"".join(
            read_chunks(self.engine, msg.id, row.chunks))
        match = _HEADERS_END.search(data)
        return data[match.end():] if match else b""

