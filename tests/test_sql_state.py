"""Message state on the SQL outbox: recorded, deferred, dead-lettered, delivered and reaped.

The same state dict the spool keeps in ``meta/NAME.json`` lives in the row;
a delivered row loses its body at once and is deleted after
``mail.keep_delivered`` -- only delivered rows, only old ones.
"""
from __future__ import annotations

import time

import sqlalchemy as sa

from pyramid_txmail.compose import wire
from pyramid_txmail.queue.sql import outbox
from pyramid_txmail.queue.sql.schema import outbox_chunk

from .sql_support import claim_all, db_url, message, put, queue, row, settings  # noqa: F401

BIG = message(body=b"".join(b"%07d " % i + b"q" * 60 + b"\r\n" for i in range(40000)))


def _chunks(queue, ident):
    with queue.engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).where(
            outbox_chunk.c.outbox_id == ident)).scalar()


def _age(queue, ident, seconds):
    with queue.engine.begin() as connection:
        connection.execute(outbox.update().where(outbox.c.id == ident)
                           .values(settled_at=outbox.c.settled_at - seconds))


def test_record_then_load_state_round_trips_the_state_dict(queue):
    put(queue)
    [claimed] = claim_all(queue)
    assert queue.load_state(claimed) == {}
    state = {"attempts": 2, "delivered": ["x@example.com"], "failed_recipients": [],
             "history": [{"attempt": 2, "time": 1.5, "results": []}], "next_attempt": 99.0}
    queue.record(claimed, state)
    queue.defer(claimed, 99.0)
    [again] = claim_all(queue, now=100.0, horizon=10 ** 9)
    assert queue.load_state(again) == state
    stored = row(queue, again.id)
    assert (stored.attempts, stored.next_attempt) == (2, 99.0)


def test_retention_deletes_only_old_delivered_rows(queue):
    delivered_old, delivered_new, failed_old, waiting = [put(queue, BIG if i == 0 else None)
                                                        for i in range(4)]
    claims = {c.id: c for c in claim_all(queue)}
    assert _chunks(queue, delivered_old) > 1
    queue.retire(claims[delivered_old])
    queue.retire(claims[delivered_new])
    queue.bury(claims[failed_old], {"reason": "permanent failure: 550"})
    queue.defer(claims[waiting], time.time() + 3600)
    stored = row(queue, delivered_old)
    assert (stored.state, stored.body, _chunks(queue, delivered_old)) == ("delivered", None, 0)
    for ident in (delivered_old, failed_old):
        _age(queue, ident, 2 * 86400)
    assert queue.housekeep(settings(keep_delivered=86400.0), None, time.time()) == 0
    with queue.engine.connect() as connection:
        left = dict(connection.execute(sa.select(outbox.c.id, outbox.c.state)).all())
    assert left == {delivered_new: "delivered", failed_old: "failed", waiting: "deferred"}


def test_bury_keeps_the_message_and_its_reason(queue):
    ident = put(queue, BIG)
    [claimed] = claim_all(queue)
    assert queue.bury(claimed, {"reason": "expired", "failed_at": 5.0}) == str(ident)
    stored = row(queue, ident)
    assert (stored.state, stored.meta["reason"], stored.claim_token) == ("failed", "expired",
                                                                        None)
    assert _chunks(queue, ident) == stored.chunks > 1


def test_bury_copy_of_a_chunked_message_copies_it_for_the_failed_recipients(queue):
    ident = put(queue, BIG, toaddrs=["ok@example.com", "bad@example.com"])
    [claimed] = claim_all(queue)
    _, _, data = queue.read(claimed, stream_over=1 << 20)
    assert isinstance(data, wire.Stream)
    name = queue.bury_copy("a@example.com", ["bad@example.com"], data,
                           {"reason": "550 no such user", "attempts": 1})
    copy = row(queue, name)
    assert (copy.state, copy.recipients, copy.meta["reason"], copy.attempts) == (
        "failed", ["bad@example.com"], "550 no such user", 1)
    assert copy.settled_at is not None and copy.size == len(BIG)
    assert queue.read_body(queue.find(name)) == BIG.split(b"\r\n\r\n", 1)[1]
    queue.retire(claimed)
    assert _chunks(queue, ident) == 0 and _chunks(queue, int(name)) == copy.chunks


def test_bury_copy_of_bytes(queue):
    name = queue.bury_copy("a@example.com", ["bad@example.com"], message(),
                           {"reason": "550"})
    assert row(queue, name).state == "failed"


def test_next_due_is_the_earliest_retry_or_lease(queue):
    now = time.time()
    assert queue.next_due(settings(), now) is None
    put(queue)
    put(queue)
    first, second = claim_all(queue)
    queue.defer(first, now + 500)
    assert now + 50 < queue.next_due(settings(), now) <= now + 61  # second's lease (60 s)
    queue.defer(second, now + 10 ** 6)
    assert queue.next_due(settings(), now) == now + 500
    assert queue.next_due(settings(), now, horizon=1000) == now  # a clock that was ahead
