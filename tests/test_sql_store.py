"""Enqueue into the SQL outbox: in the caller's transaction, one INSERT, exact round trip.

On both databases: a committed enqueue has its row and a rolled-back one has
none; the envelope comes back character for character whatever the message's
headers say; the bytes come back exactly, inline or in 1 MiB chunks, as bytes
or as a Stream read one chunk at a time.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import sqlalchemy as sa

from pyramid_txmail.compose import wire
from pyramid_txmail.queue.sql import enqueue, outbox
from pyramid_txmail.queue.sql.schema import CHUNK, outbox_chunk

from .sql_support import claim_all, db_url, message, put, queue, row  # noqa: F401

ODD_ENVELOPE = ('"odd, sender"@example.com', ["x-actually-to@example.com",
                                              "b\u00fccher@b\u00fccher.example",
                                              "with space@example.com",
                                              "=?utf-8?q?evil?=@example.com"])


def test_round_trip_of_envelope_and_bytes(queue):
    data = message(body=b"line\r\n.dot\r\n\xff\xfe raw\r\n")
    ident = put(queue, data, ODD_ENVELOPE[0], ODD_ENVELOPE[1])
    [claimed] = claim_all(queue)
    assert claimed.name == str(ident)
    fromaddr, toaddrs, got = queue.read(claimed, stream_over=1 << 20)
    assert (fromaddr, toaddrs, got) == (ODD_ENVELOPE[0], ODD_ENVELOPE[1], data)
    assert row(queue, ident).message_id == wire.message_id_of(data)


def test_headers_never_change_the_envelope(queue):
    data = (b"X-Actually-From: mallory@example.com\r\nX-Actually-To: mallory@example.com\r\n"
            b"Return-Path: <mallory@example.com>\r\nTo: mallory@example.com\r\n"
            b"Subject: hi\r\n\r\nbody\r\n")
    put(queue, data, "app@example.com", ["user@example.com"])
    [claimed] = claim_all(queue)
    assert queue.read(claimed, None) == ("app@example.com", ["user@example.com"], data)


def test_a_rolled_back_enqueue_leaves_no_row_and_a_committed_one_has_it(queue):
    with queue.engine.connect() as connection:
        with connection.begin() as tx:
            enqueue(connection, "a@example.com", ["b@example.com"], message("lost"))
            tx.rollback()
        with connection.begin():
            kept = enqueue(connection, "a@example.com", ["b@example.com"], message("kept"))
    with queue.engine.connect() as connection:
        assert connection.execute(sa.select(outbox.c.id)).scalars().all() == [kept]


def test_enqueue_neither_begins_nor_commits(queue):
    """The caller's transaction decides: after enqueue it is still open and the
    row is invisible to another connection until the caller commits."""
    with queue.engine.connect() as connection:
        connection.begin()
        ident = enqueue(connection, "a@example.com", ["b@example.com"], message())
        assert connection.in_transaction()
        with queue.engine.connect() as other:
            if queue.engine.dialect.name == "postgresql":  # SQLite's lock would wait
                assert other.execute(sa.select(outbox.c.id)).all() == []
        connection.commit()
    assert row(queue, ident).state == "queued"


def test_a_small_message_is_one_statement(queue):
    statements = []
    with queue.engine.connect() as connection:
        sa.event.listen(connection, "before_cursor_execute",
                        lambda *args: statements.append(args[2]))
        with connection.begin():
            statements.clear()  # the BEGIN (IMMEDIATE) is the transaction's, not ours
            enqueue(connection, "a@example.com", ["b@example.com"], message())
    assert len(statements) == 1, statements
    assert statements[0].lstrip().upper().startswith("INSERT")


@pytest.mark.parametrize("as_stream", [False, True], ids=["bytes", "stream"])
def test_a_large_message_is_chunked_and_read_back_exactly(queue, as_stream):
    body = b"".join(b"%07d " % i + b"y" * 70 + b"\r\n" for i in range(45000))  # ~3.5 MiB
    data = message(body=body)
    given = (wire.Stream(lambda: (data[i:i + 65536] for i in range(0, len(data), 65536)),
                         size=len(data), message_id=wire.message_id_of(data))
             if as_stream else data)
    ident = put(queue, given)
    stored = row(queue, ident)
    assert (stored.size, stored.chunks, stored.body) == (len(data), -(-len(data) // CHUNK),
                                                         None)
    with queue.engine.connect() as connection:
        sizes = connection.execute(sa.select(sa.func.length(outbox_chunk.c.data)).where(
            outbox_chunk.c.outbox_id == ident).order_by(outbox_chunk.c.seq)).scalars().all()
    assert sizes[:-1] == [CHUNK] * (len(sizes) - 1)
    [claimed] = claim_all(queue)
    _, _, streamed = queue.read(claimed, stream_over=1 << 20)
    assert isinstance(streamed, wire.Stream) and streamed.size == len(data)
    assert streamed.message_id == wire.message_id_of(data)
    assert b"".join(streamed) == data
    assert b"".join(streamed) == data  # a Stream can be sent again (a reconnect)
    assert queue.read(claimed, stream_over=None)[2] == data


def test_a_message_of_exactly_one_chunk_stays_in_the_row(queue):
    data = message(body=b"z" * 10)
    data += b"x" * (CHUNK - len(data))
    ident = put(queue, wire.Stream(lambda: iter([data]), size=len(data)))
    assert (row(queue, ident).chunks, row(queue, ident).size) == (0, CHUNK)


@pytest.mark.parametrize("fromaddr, toaddrs, word", [
    ("a\0b@example.com", ["b@example.com"], "NUL"),
    ("a@example.com", ["b\udc80@example.com"], "surrogate"),
    ("a@example.com", [], "no recipient"),
    ("a@example.com", "b@example.com", "list"),
    (None, ["b@example.com"], "str"),
])
def test_an_envelope_the_database_cannot_hold_is_refused_naming_it(queue, fromaddr,
                                                                   toaddrs, word):
    with queue.engine.begin() as connection:
        with pytest.raises(ValueError, match=word):
            enqueue(connection, fromaddr, toaddrs, message())


def test_a_large_message_with_an_over_long_line_is_read_whole_for_re_encoding(queue):
    """A Stream promises lines of at most 998 octets; a stored message that breaks
    that is handed over as bytes, which the transport re-encodes (as from a spool)."""
    fits = message(body=b"".join(b"%07d " % i + b"y" * 70 + b"\r\n" for i in range(30000)))
    long = fits + b"z" * 5000 + b"\r\n" + fits[-1000:]
    put(queue, fits)
    put(queue, long)
    first, second = claim_all(queue)
    assert isinstance(queue.read(first, stream_over=1 << 20)[2], wire.Stream)
    assert queue.read(second, stream_over=1 << 20)[2] == long


@pytest.mark.parametrize("data, fits", [
    (b"a" * 998 + b"\r\n" + b"b" * 998, True),
    (b"a" * 999 + b"\n", False),
    (b"a\n" * 10 + b"b" * 999, False),
    (b"x" * 600 + b"\r" + b"y" * 600, True),
])
@pytest.mark.parametrize("block", [7, 100, 1 << 20])
def test_lines_fit_across_block_boundaries(data, fits, block):
    from pyramid_txmail.queue.sql.store import lines_fit

    assert lines_fit(data, block) is fits


_HEADER_PIECES = st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\n", b"a", b" ", b"\t", b":",
                                  b"Message-ID", b"message-id: <a@b>", b"MESSAGE-ID:",
                                  b"X-Message-ID: <x@y>", b"<id@x>", b"Message-Id-Foo: 1",
                                  b"\r\n\t<folded@x>"])


@given(st.lists(_HEADER_PIECES, max_size=16).map(b"".join))
@settings(max_examples=2000, deadline=None)
def test_enqueues_message_id_lookup_agrees_with_wire(data):
    """enqueue (and wire.message_id_of, which the processor and relays call) finds the
    header block and the Message-ID with bytes.find (faster than the regular
    expressions); it must find what those regular expressions find."""
    head = wire.header_block(data)
    assert head == wire._HEADERS_END.split(data, 1)[0]
    found = wire._MESSAGE_ID_FIELD.search(head)
    reference = wire.message_id_value(found.group(1)) if found else None
    assert wire.message_id_in(head) == reference
    assert wire.message_id_of(data) == reference
    assert wire.message_id_of(memoryview(data)) == reference
