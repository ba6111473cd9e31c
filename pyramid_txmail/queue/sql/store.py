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

_HEADERS_END = re.compile(rb"\r?\n\r?\n")


def check_envelope(fromaddr, toaddrs):
    """``(sender, [recipients])`` as given, or ValueError naming the address.

    The envelope is stored as a record of its own, character for character;
    what a database text column cannot hold (a NUL, an unpaired surrogate)
    is refused here rather than altered.
    """
    if not isinstance(fromaddr, str):
        raise ValueError(f"the envelope sender must be a str, not {type(fromaddr).__name__}")
    if isinstance(toaddrs, str) or not isinstance(toaddrs, (list, tuple)):
        raise ValueError("the envelope recipients must be a list of str, not "
                         f"{type(toaddrs).__name__}")
    recipients = list(toaddrs)
    if not recipients:
        raise ValueError("the envelope has no recipient")
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


def _head_of(data):
    match = _HEADERS_END.search(data)
    return data[:match.start()] if match else data


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
    row = {"state": state, "sender": sender, "recipients": recipients,
           "attempts": attempts_of(meta)}
    if meta is not None:  # a new message's NULL needs no JSON encoding
        row["meta"] = meta
    notify = connection.dialect.name == "postgresql" and state == "queued"
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        head = _head_of(data)  # searched for once: the Message-ID is in it
        row.update(message_id=message_id or wire.message_id_of(head), size=len(data),
                   eightbit=not data.isascii(), head_8bit=not head.isascii(),
                   wire_ready=len(data) <= CHUNK or lines_fit(data))
        if len(data) <= CHUNK:
            return insert_row(connection, dict(row, body=data, chunks=0), notify)
        ident = insert_row(connection, dict(row, body=None, chunks=0), notify)
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
        return insert_row(connection, dict(row, body=first, size=len(first), chunks=0), notify)
    ident = insert_row(connection, dict(row, body=None, size=0, chunks=0), notify)
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
    """The INSERT of one row: times from the database's clock, the id returned and,
    with ``notify``, ``pg_notify`` in the same RETURNING (one round trip; it runs
    once, for the one row).  Built once: an enqueue only binds its values."""
    times = {"queued_at": db_epoch()}
    if settled:  # a dead letter is settled as it is written
        times["settled_at"] = db_epoch()
    statement = outbox.insert().values(**times).returning(outbox.c.id)
    return statement.returning(sa.func.pg_notify(CHANNEL, "")) if notify else statement


INSERTS = {(settled, notify): insert_statement(settled, notify)
           for settled in (False, True) for notify in (False, True)}


def insert_row(connection, row, notify):
    """INSERT ``row`` on ``connection``; its id.

    Always ``connection.execute`` of a Core statement built once
    (:data:`INSERTS`): on the application's connection everything SQLAlchemy
    promises for it must apply -- its ``schema_translate_map`` (the row and its
    chunks go to the same schema), the dialect's and engine's events
    (``handle_error``, ``do_execute``), the disconnect handling that
    invalidates a dead connection.  A bare DB-API cursor or precompiled text
    skipped all of them (outside probe of issue 13); SQLAlchemy's compiled
    cache keeps the construct cheap."""
    settled = row["state"] != "queued"
    return connection.execute(INSERTS[settled, notify], row).first()[0]


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
