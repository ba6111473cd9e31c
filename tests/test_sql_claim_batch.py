"""Fewer round trips per message on the SQL outbox, with the same guarantees.

A pass claims a few rows per statement and gets their envelopes and inline
bodies back with the claim (read() of a small message asks nothing more);
holds() is answered by the lease renewer while it knows the lease runs; the
retire of a first-attempt delivery does not wait for the disk.  Counted in
statements sent to the database (never in time).
"""
from __future__ import annotations

import contextlib
import time

import pytest
import sqlalchemy as sa

from pyramid_txmail.processor.pass_stats import PassStats
from pyramid_txmail.queue.sql import SQLQueue, outbox
from pyramid_txmail.queue.sql.claiming import BODY_WITH_CLAIM
from pyramid_txmail.queue.sql.errors import ClaimLost
from pyramid_txmail.queue.sql.schema import CHUNK

from .sql_support import (claim_all, db_url, make_queue, message, put, queue,  # noqa: F401
                          row, settings)


@contextlib.contextmanager
def statements(queue):
    """The SQL statements ``queue``'s engine sends while the block runs."""
    sent = []

    def count(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    sa.event.listen(queue.engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        sa.event.remove(queue.engine, "before_cursor_execute", count)


def _expire_and_take(queue, ident):
    """Another processor takes ``ident`` after its lease was made to run out."""
    with queue.engine.begin() as connection:
        connection.execute(outbox.update().where(outbox.c.id == ident).values(lease_until=0))
    assert queue.housekeep(settings(), None, time.time()) == 1
    [theirs] = claim_all(make_queue(str(queue.engine.url.render_as_string(False))))
    return theirs


def test_the_batch_is_two_per_worker_and_bounded():
    url = "sqlite://"
    assert SQLQueue.from_settings(settings(workers=4, queue_url=url)).claim_batch == 8
    assert SQLQueue.from_settings(settings(workers=64, queue_url=url)).claim_batch == 32
    assert SQLQueue.from_settings(settings(workers=1, queue_url=url)).claim_batch == 2


def test_one_statement_claims_a_batch_and_small_messages_need_no_read(db_url):
    queue = make_queue(db_url, claim_batch=3)
    ids = [put(queue, message(body=f"body {i}\r\n".encode())) for i in range(5)]
    candidates = queue.candidates(time.time(), 10 ** 9, PassStats())
    with statements(queue) as sent:
        first = next(candidates)
    claims = [s for s in sent if "claim_token" in s]
    assert len(claims) == 1
    assert [row(queue, i).state for i in ids] == ["in_progress"] * 3 + ["queued"] * 2
    with statements(queue) as sent:
        got = [first] + [next(candidates) for _ in range(2)]
        reads = [queue.read(c, None) for c in got]
    assert sent == []  # neither the next two claims nor the reads asked the database
    assert [c.id for c in got] == ids[:3]  # queue order within the batch
    assert [r[2].endswith(f"body {i}\r\n".encode()) for i, r in enumerate(reads)] == [True] * 3
    assert reads[0][:2] == ("a@example.com", ["b@example.com"])
    rest = list(candidates)
    assert [c.id for c in rest] == ids[3:]
    assert len({c.token for c in got + rest}) == 5  # a token of its own per row
    for claimed in got + rest:
        queue.retire(claimed)


def test_a_large_message_claimed_in_a_batch_is_still_read_from_its_chunks(db_url):
    queue = make_queue(db_url)
    big = message(body=b"x" * 70 + b"\r\n") * (CHUNK // 70 * 2)
    ident = put(queue, big)
    [claimed] = claim_all(queue)
    assert claimed.id == ident
    assert queue.read(claimed, None)[2] == big
    queue.retire(claimed)
    assert row(queue, ident).state == "delivered"


def test_a_body_over_the_claims_share_is_read_when_its_worker_starts(db_url):
    """A batch holds little memory: an inline body over BODY_WITH_CLAIM is not
    returned by the claim, and read() fetches it then."""
    queue = make_queue(db_url)
    medium = message(body=b"m" * 70 + b"\r\n") * (BODY_WITH_CLAIM // 70 + 10)
    assert BODY_WITH_CLAIM < len(medium) < CHUNK
    ident = put(queue, medium)
    [claimed] = claim_all(queue)
    assert claimed.row.body is None
    with statements(queue) as sent:
        assert queue.read(claimed, None)[2] == medium
    assert len(sent) == 1
    queue.retire(claimed)
    assert row(queue, ident).state == "delivered"


def test_holds_asks_nothing_while_the_renewer_vouches_for_the_lease(db_url):
    queue = make_queue(db_url)
    put(queue)
    with queue.pass_scope(settings()) as scope:
        claimed = queue.claim(next(queue.candidates(time.time(), 10 ** 9, PassStats())))
        scope.add(claimed)
        with statements(queue) as sent:
            assert queue.holds(claimed)
        assert sent == []
        scope.beat()  # the renewal confirms it: still vouched for
        with statements(queue) as sent:
            assert queue.holds(claimed)
        assert sent == []
        queue.retire(claimed)
        scope.discard(claimed)
    assert row(queue, claimed.id).state == "delivered"


def test_a_claim_taken_meanwhile_is_never_settled_over_the_new_holder(db_url):
    """A "yes" from the renewer's knowledge cannot overwrite: the settle is conditioned
    on the token; and once a renewal finds the token gone, holds() says no."""
    queue = make_queue(db_url)
    ident = put(queue)
    with queue.pass_scope(settings()) as scope:
        mine = queue.claim(next(queue.candidates(time.time(), 10 ** 9, PassStats())))
        scope.add(mine)
        theirs = _expire_and_take(queue, ident)  # as `txmail-queue release --force` would
        with pytest.raises(ClaimLost, match=f"outbox row {ident}"):
            queue.retire(mine)
        scope.beat()
        assert not queue.holds(mine)
        scope.discard(mine)
    stored = row(queue, ident)
    assert (stored.state, stored.claim_token) == ("in_progress", theirs.token)


def test_only_a_first_attempt_retire_commits_without_waiting_for_the_disk(pg_url):
    queue = make_queue(pg_url)
    for _ in range(3):
        put(queue)
    first, recorded, deferred = claim_all(queue)
    with statements(queue) as sent:
        queue.retire(first, False)
    assert [s for s in sent if "set_config" in s]
    with statements(queue) as sent:
        queue.record(recorded, {"attempts": 1, "delivered": ["b@example.com"]})
        queue.retire(recorded, True)
        queue.defer(deferred, time.time() + 60)
    assert not [s for s in sent if "set_config" in s]
    with queue.engine.connect() as connection:  # the setting was the transaction's only
        assert connection.execute(sa.text("SHOW synchronous_commit")).scalar() == "on"
    assert [row(queue, c.id).state for c in (first, recorded, deferred)] == [
        "delivered", "delivered", "deferred"]
