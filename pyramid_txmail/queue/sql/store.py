"""Writing a message into the outbox, in whatever transaction the caller is in.

:func:`enqueue` is what the application's mailer calls with its own
connection (``session.connection()`` of the request's SQLAlchemy session): it
only INSERTs (and, on PostgreSQL, NOTIFYs, which PostgreSQL delivers at the
commit and drops at a rollback), and never begins, commits or rolls back.
The row therefore exists exactly when the application's data does.

A message up to :data:`~pyramid_txmail.queue.sql.schema.CHUNK` octets is one
INSERT (with the NOTIFY folded into its ``RETURNING``, so it is one round
trip as well).  A larger one is written in chunk rows as it is produced,
never joined in memory.
"""
from __future__ import annotations

import re

import sqlalchemy as sa

from ...compose import wire
from .schema import CHUNK, db_epoch, outbox, outbox_chunk

#: The channel processors LISTEN on.
CHANNEL = "txmail_outbox"



def check_envelope(fromaddr, toaddrs):
    """``(sender, [recipients])`` as given, or ValueError naming the address.

    The envelope is stored as a record of its own, character for character;
    what a database text column cannot hold (a NUL, an unpaired surrogate)
    is refused here rather than altered.  The usual envelope (ASCII strs, no
    NUL) is recognised in one pass over all of it; anything else is looked at
    address by address, for an error that names the one at fault.
    """
    if not isinstance(fromaddr, str):
        raise ValueError(f"the envelope sender must be a str, not {type(fromaddr).__name__}")
    if isinstance(toaddrs, str) or not isinstance(toaddrs, (list, tuple)):
        raise ValueError("the envelope recipients must be a list of str, not "
                         f"{type(toaddrs).__name__}")
    recipients = list(toaddrs)
    if not recipients:
        raise ValueError("the envelope has no recipient")
    if all(type(r) is str for r in recipients):
        together = fromaddr.join(recipients) + fromaddr
        if together.isascii() and "\0" not in together:
            return fromaddr, recipients
    for role, address in [("sender", fromaddr)] + [("recipient", r) for r in recipients]:
        if not isinstance(address, str):
            raise ValueError(f"envelope {role} {address!r} is not a str")
        if "\0" in address:
            raise ValueError(f"envelope {role} {address!r} holds a NUL character")
        try:
            address.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"envelope {role} {address!r} is not valid Unicode "
                             "(an unpaired surrogate)") from None
    return fromaddr, recipients


def lines_fit(data, block=CHUNK):
    """Whether no line of ``data`` is over SMTP's 998 octets (a bare CR or LF ends a
    line too), looked at one block at a time: only then may it be sent as stored,
    from its chunks (:class:`~pyramid_txmail.compose.wire.Stream`'s promise);
    otherwise it is read whole and re-encoded, as the spool does."""
    view, carry = memoryview(data), 0
    for start in range(0, len(data), block):
        lines = re.split(rb"\r\n|\r|\n", bytes(view[start:start + block]))
        if len(lines) == 1:
            carry += len(lines[0])
        else:
            if carry + len(lines[0]) > wire.MAX_LINE or max(map(len, lines[1:-1]),
                                                             default=0) > wire.MAX_LINE:
                return False
            carry = len(lines[-1])
        if carry > wire.MAX_LINE:
            return False
    return True


def enqueue(connection, fromaddr, toaddrs, data, *, message_id=None, state="queued",
            meta=None):
    """INSERT one message into the outbox in ``connection``'s transaction; returns its id.

    ``connection`` is a SQLAlchemy ``Connection`` inside the caller's
    transaction; ``data`` is bytes or a :class:`pyramid_txmail.compose.wire.Stream`
    (written chunk by chunk).  ``message_id`` defaults to the message's
    Message-ID header.  (``state`` and ``meta`` serve the backend's
    dead-letter copies.)
    """
    sender, recipients = check_envelope(fromaddr, toaddrs)
    if state == "queued" and meta is None:  # a new message: NEW_ROW writes the constants
        row = {"sender": sender, "recipients": recipients}
    else:
        row = {"state": state, "sender": sender, "recipients": recipients,
               "attempts": attempts_of(meta), "chunks": 0}
        if meta is not None:  # a new message's NULL needs no JSON encoding
            row["meta"] = meta
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        head = wire.header_block(data)  # searched for once: the Message-ID is in it
        row.update(message_id=message_id or wire.message_id_in(head), size=len(data),
                   eightbit=not data.isascii(), head_8bit=not head.isascii(),
                   wire_ready=len(data) <= CHUNK or lines_fit(data))
        row["body"] = data if len(data) <= CHUNK else None
        ident = _insert(connection, row)
        if len(data) <= CHUNK:
            return ident
        view = memoryview(data)
        pieces = (view[i:i + CHUNK] for i in range(0, len(data), CHUNK))
        count = write_chunks(connection, ident, pieces)
        connection.execute(SET_CHUNKS, {"row_id": ident, "chunks": count})
        return ident
    if not isinstance(data, wire.Stream):
        raise TypeError(f"expected the message as bytes or a wire.Stream, not "
                        f"{type(data).__name__}")
    row.update(message_id=message_id or data.message_id, eightbit=bool(data.eightbit),
               head_8bit=bool(data.head_8bit), wire_ready=True)  # the Stream's promise
    blocks = _blocks(data)
    first = next(blocks, b"")
    second = next(blocks, None)
    if second is None:  # it fits in the row
        return _insert(connection, dict(row, body=first, size=len(first)))
    ident = _insert(connection, dict(row, body=None, size=0))
    sizes = []

    def counted():
        for block in _chain(first, second, blocks):
            sizes.append(len(block))
            yield block

    count = write_chunks(connection, ident, counted())
    connection.execute(SET_CHUNKS, {"row_id": ident, "chunks": count, "size": sum(sizes)})
    return ident


def attempts_of(meta):
    attempts = (meta or {}).get("attempts") if isinstance(meta, dict) else None
    return attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0


def insert_statement(settled, notify):
    """The INSERT of any row (a dead letter's, a copy's): times from the database's
    clock, the id returned and, with ``notify``, ``pg_notify`` in the same
    RETURNING (one round trip; it runs once, for the one row).  Built once: an
    enqueue only binds its values."""
    times = {"queued_at": db_epoch()}
    if settled:  # a dead letter is settled as it is written
        times["settled_at"] = db_epoch()
    statement = outbox.insert().values(**times).returning(outbox.c.id)
    return statement.returning(sa.func.pg_notify(CHANNEL, "")) if notify else statement


INSERTS = {(settled, notify): insert_statement(settled, notify)
           for settled in (False, True) for notify in (False, True)}


def insert_row(connection, row, notify):
    """INSERT ``row`` (every column but the times) on ``connection``; its id.

    Always ``connection.execute`` of a Core statement built once
    (:data:`INSERTS`, :data:`NEW_ROW`): on the application's connection
    everything SQLAlchemy promises for it must apply -- its
    ``schema_translate_map`` (the row and its chunks go to the same schema),
    the dialect's and engine's events (``handle_error``, ``do_execute``), the
    disconnect handling that invalidates a dead connection.  A bare DB-API
    cursor or precompiled text skipped all of them (outside probe of issue
    13); SQLAlchemy's compiled cache keeps the construct cheap."""
    settled = row["state"] != "queued"
    return connection.execute(INSERTS[settled, notify], row).first()[0]


def _literal(sql):
    return sa.literal_column(sql)


#: A new queued message (the application's send): what every new row has in common
#: is written in the statement, so only the message's own values are bound and
#: converted.  SQLite returns the id as the cursor's lastrowid (no RETURNING: no
#: result row to fetch and build); PostgreSQL returns it, and the first row of a
#: transaction carries the transaction's NOTIFY in the same RETURNING.
NEW_ROW = outbox.insert().values(state=_literal("'queued'"), attempts=_literal("0"),
                                 chunks=_literal("0"), queued_at=db_epoch())
NEW_ROW_ID = NEW_ROW.returning(outbox.c.id)
NEW_ROW_NOTIFY = NEW_ROW_ID.returning(sa.func.pg_notify(_literal(f"'{CHANNEL}'"),
                                                        _literal("''")))

#: ``connection.info`` key: the (transaction, savepoint) whose NOTIFY is sent.
NOTIFIED = "pyramid_txmail.notified"


def _insert(connection, row):
    """INSERT a row of :func:`enqueue`'s; its id."""
    if "state" in row:  # a dead letter (never announced) or a row with history
        notify = row["state"] == "queued" and connection.dialect.name == "postgresql"
        return insert_row(connection, row, notify)
    if connection.dialect.name != "postgresql":
        return connection.execute(NEW_ROW, row).lastrowid
    if notified(connection):
        return connection.execute(NEW_ROW_ID, row).scalar()
    ident = connection.execute(NEW_ROW_NOTIFY, row).first()[0]
    connection.info[NOTIFIED] = (connection.get_transaction(),
                                 connection.get_nested_transaction())
    return ident


def notified(connection):
    """Whether the NOTIFY that wakes the daemons is already in this transaction.

    One per transaction is enough: PostgreSQL delivers notifications at the
    commit (and folds identical ones anyway), so later rows of the same
    transaction need not carry it.  "The same" is strict, so that no rollback
    can take the only NOTIFY away from a row that stays: the same
    SQLAlchemy transaction object, still active, at the same savepoint
    (``begin_nested()``, which zope.sqlalchemy uses for the transaction
    manager's savepoints), still active; and not a connection in autocommit,
    where each row commits on its own.  In any other case the row carries
    the NOTIFY again, which costs a little and is never wrong.  A savepoint
    made in raw SQL (``SAVEPOINT x`` as text) is not seen: rolling back to it
    past the first row takes the NOTIFY with it, and the later rows wait for
    the daemon's next timed pass (``RESCAN_INTERVAL``, 60 s), as the rows of
    a commit made while no daemon listened do.
    """
    sent = connection.info.get(NOTIFIED)
    if sent is None:
        return False
    root, nested = sent
    return (root is connection.get_transaction() and root.is_active
            and nested is connection.get_nested_transaction()
            and (nested is None or nested.is_active)
            and getattr(connection.connection.dbapi_connection, "autocommit", True) is False)


#: A chunk row, and a large message's chunk count and size once written (built once).
CHUNK_INSERT = outbox_chunk.insert()
SET_CHUNKS = outbox.update().where(outbox.c.id == sa.bindparam("row_id"))


def _chain(first, second, rest):
    yield first
    yield second
    yield from rest


def _blocks(chunks):
    """``chunks`` regrouped into blocks of exactly CHUNK octets (the last may be short)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= CHUNK:
            yield bytes(buffer[:CHUNK])
            del buffer[:CHUNK]
    if buffer:
        yield bytes(buffer)


def write_chunks(connection, ident, pieces):
    """INSERT each piece as chunk ``seq`` 0, 1, ...; returns how many."""
    count = 0
    for seq, piece in enumerate(pieces):
        connection.execute(CHUNK_INSERT, {"outbox_id": ident, "seq": seq, "data": piece})
        count = seq + 1
    return count


def read_chunks(engine, ident, count):
    """The chunks of message ``ident`` one by one, each by its own query (a
    result set of them all would be fetched whole by the driver)."""
    with autocommit(engine) as connection:
        yield from chunks_on(connection, ident, count)


def chunks_on(connection, ident, count):
    """:func:`read_chunks` on a connection the caller holds (and may try again on)."""
    query = sa.select(outbox_chunk.c.data).where(outbox_chunk.c.outbox_id == ident,
                                                 outbox_chunk.c.seq == sa.bindparam("seq"))
    for seq in range(count):
        data = connection.execute(query, {"seq": seq}).scalar()
        if data is None:
            raise LookupError(f"outbox message {ident}: chunk {seq} of {count} is missing")
        yield bytes(data)


def copy_chunks(connection, source, target):
    """Copy message ``source``'s chunk rows to ``target`` inside the database (a
    dead-letter copy of a large message never passes through Python)."""
    columns = sa.select(sa.literal(target, outbox_chunk.c.outbox_id.type), outbox_chunk.c.seq,
                        outbox_chunk.c.data).where(outbox_chunk.c.outbox_id == source)
    connection.execute(outbox_chunk.insert().from_select(["outbox_id", "seq", "data"],
                                                         columns))


def autocommit(engine):
    """A connection whose statements each commit at once (no transaction held open).

    For reads that last (a large body streamed to a slow relay, a daemon's
    poll): on SQLite an open read transaction would stop every writer from
    committing, and on PostgreSQL it would sit idle in transaction.
    """
    connection = engine.connect()
    if engine.dialect.name == "sqlite":
        connection.execution_options(txmail_autocommit=True)
    else:
        connection.execution_options(isolation_level="AUTOCOMMIT")
    return connection
