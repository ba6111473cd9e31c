"""Retires of several workers of one process settle in one statement (PostgreSQL).

Counted in statements sent to the database, never in time: the group's
window is made long here, so the group is complete however slowly the
threads start, and it goes the moment every claim in hand has a retire
waiting.  Each waiter still learns its own row's outcome.
"""
from __future__ import annotations

import contextlib
import threading
import time

import pytest
import sqlalchemy as sa

from pyramid_txmail.processor.pass_stats import PassStats
from pyramid_txmail.queue.sql import outbox
from pyramid_txmail.queue.sql.errors import ClaimLost

from .sql_support import make_queue, put, row, settings


@contextlib.contextmanager
def statements(queue):
    sent = []

    def count(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    sa.event.listen(queue.engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        sa.event.remove(queue.engine, "before_cursor_execute", count)


def _settles(sent):
    return [s for s in sent if s.lstrip().upper().startswith(("UPDATE", "DELETE"))]


def _in_hand(queue, scope, count, candidates=None):
    """``count`` claims handed to "workers" in ``scope`` (as the processor does)."""
    if candidates is None:
        candidates = queue.candidates(time.time(), 10 ** 9, PassStats())
    claims = []
    for _ in range(count):
        claimed = queue.claim(next(candidates))
        scope.add(claimed)
        claims.append(claimed)
    return claims


def _retire_together(queue, claims, had_state=None):
    """Each claim retired by a thread of its own; ``{id: None or the exception}``."""
    outcome = {}
    had_state = had_state or {}

    def worker(claimed):
        try:
            queue.retire(claimed, had_state.get(claimed.id, False))
            outcome[claimed.id] = None
        except Exception as exc:  # noqa: BLE001 (the test looks at it)
            outcome[claimed.id] = exc

    threads = [threading.Thread(target=worker, args=(c,)) for c in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcome


@pytest.fixture
def pg_queue(pg_url):
    queue = make_queue(pg_url, claim_batch=8, retire_group=4)
    queue._retires.window = 30.0  # complete groups, however slow the machine
    yield queue
    queue.close()


def test_the_retires_of_four_workers_are_one_statement(pg_queue):
    queue = pg_queue
    ids = [put(queue) for _ in range(4)]
    with queue.pass_scope(settings()) as scope:
        claims = _in_hand(queue, scope, 4)
        with statements(queue) as sent:
            outcome = _retire_together(queue, claims)
    assert outcome == dict.fromkeys(ids)
    assert len(_settles(sent)) == 1
    assert [row(queue, i).state for i in ids] == ["delivered"] * 4
    assert [row(queue, i).claim_token for i in ids] == [None] * 4


def test_a_lost_claim_in_a_group_is_that_waiters_alone(pg_queue):
    """One row of the group was taken by another processor meanwhile: its waiter
    gets ClaimLost and the new holder's claim stands; the others are delivered."""
    queue = pg_queue
    ids = [put(queue) for _ in range(3)]
    with queue.pass_scope(settings()) as scope:
        claims = _in_hand(queue, scope, 3)
        with queue.engine.begin() as connection:  # another processor's claim now
            connection.execute(outbox.update().where(outbox.c.id == ids[1])
                               .values(claim_token="theirs.1"))
        with statements(queue) as sent:
            outcome = _retire_together(queue, claims)
    assert len(_settles(sent)) == 1
    assert outcome[ids[0]] is None and outcome[ids[2]] is None
    assert isinstance(outcome[ids[1]], ClaimLost)
    assert f"outbox row {ids[1]}" in str(outcome[ids[1]])
    taken = row(queue, ids[1])
    assert (taken.state, taken.claim_token) == ("in_progress", "theirs.1")
    assert [row(queue, ids[i]).state for i in (0, 2)] == ["delivered"] * 2


def test_a_group_waits_for_the_disk_unless_every_retire_may_not(pg_queue):
    queue = pg_queue
    ids = [put(queue) for _ in range(4)]
    with queue.pass_scope(settings()) as scope:
        candidates = queue.candidates(time.time(), 10 ** 9, PassStats())
        first = _in_hand(queue, scope, 2, candidates)
        with statements(queue) as lazy:
            assert _retire_together(queue, first) == {c.id: None for c in first}
        for claimed in first:
            scope.discard(claimed)
        second = _in_hand(queue, scope, 2, candidates)
        with statements(queue) as mixed:  # one of them had a recorded state
            assert _retire_together(queue, second, {second[0].id: True}) == {
                c.id: None for c in second}
    assert [s for s in _settles(lazy) if "synchronous_commit" in s]
    assert _settles(mixed) and not [s for s in _settles(mixed) if "synchronous_commit" in s]
    with queue.engine.connect() as connection:  # the setting was the transaction's only
        assert connection.execute(sa.text("SHOW synchronous_commit")).scalar() == "on"
    assert [row(queue, i).state for i in ids] == ["delivered"] * 4


def test_without_delivered_rows_kept_a_group_deletes_them(pg_url):
    queue = make_queue(pg_url, keep_delivered=0, retire_group=2)
    queue._retires.window = 30.0
    ids = [put(queue) for _ in range(2)]
    with queue.pass_scope(settings()) as scope:
        claims = _in_hand(queue, scope, 2)
        with statements(queue) as sent:
            assert _retire_together(queue, claims) == dict.fromkeys(ids)
    assert len(_settles(sent)) == 1
    assert [row(queue, i) for i in ids] == [None, None]
    queue.close()


def test_an_error_of_the_groups_statement_reaches_every_waiter(pg_queue):
    """Not a false ClaimLost: each waiter gets the statement's own error, and the
    rows stay claimed (their leases put them back)."""
    queue = pg_queue
    ids = [put(queue) for _ in range(2)]

    def broken(conn, cursor, statement, parameters, context, executemany):
        if "unnest" in statement:
            raise RuntimeError("the group's statement failed")

    with queue.pass_scope(settings()) as scope:
        claims = _in_hand(queue, scope, 2)
        sa.event.listen(queue.engine, "before_cursor_execute", broken)
        try:
            outcome = _retire_together(queue, claims)
        finally:
            sa.event.remove(queue.engine, "before_cursor_execute", broken)
    assert {type(e) for e in outcome.values()} == {RuntimeError}
    assert [row(queue, i).state for i in ids] == ["in_progress"] * 2
