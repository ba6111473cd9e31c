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
from pyramid_txmail.queue.sql.leases import Claimed
from pyramid_txmail.queue.sql.retiring import RetireGroup

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


def test_an_error_of_the_groups_statement_makes_each_waiter_retire_alone(pg_queue):
    """Not an outage (here: an error raised as the group's statement goes out): the
    members retire one at a time, each in a statement of its own, and are delivered
    -- not left claimed to be sent again when their leases run out."""
    queue = pg_queue
    ids = [put(queue) for _ in range(2)]

    def broken(conn, cursor, statement, parameters, context, executemany):
        if "unnest" in statement:
            raise RuntimeError("the group's statement failed")

    with queue.pass_scope(settings()) as scope:
        claims = _in_hand(queue, scope, 2)
        sa.event.listen(queue.engine, "before_cursor_execute", broken)
        try:
            with statements(queue) as sent:
                outcome = _retire_together(queue, claims)
        finally:
            sa.event.remove(queue.engine, "before_cursor_execute", broken)
    assert outcome == dict.fromkeys(ids)
    assert len([s for s in _settles(sent) if "unnest" not in s]) == 2
    assert [row(queue, i).state for i in ids] == ["delivered"] * 2


def test_a_row_refused_by_a_trigger_fails_its_own_retire_only(pg_queue):
    """One row's retire raises in the database (a trigger; a constraint alike): only
    that waiter gets the error; the others of its group are delivered, not left
    claimed to be sent again."""
    queue = pg_queue
    ids = [put(queue) for _ in range(3)]
    culprit = ids[1]
    with queue.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF OLD.id = {culprit} AND NEW.state = 'delivered' THEN "
            f"RAISE EXCEPTION 'row {culprit} refuses'; END IF; RETURN NEW; END $$")
        connection.exec_driver_sql("CREATE TRIGGER refuse_one BEFORE UPDATE ON txmail_outbox "
                                   "FOR EACH ROW EXECUTE FUNCTION refuse_one()")
    try:
        with queue.pass_scope(settings()) as scope:
            claims = _in_hand(queue, scope, 3)
            outcome = _retire_together(queue, claims)
    finally:
        with queue.engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER refuse_one ON txmail_outbox")
            connection.exec_driver_sql("DROP FUNCTION refuse_one()")
    assert outcome[ids[0]] is None and outcome[ids[2]] is None
    assert isinstance(outcome[culprit], sa.exc.DBAPIError)
    assert f"row {culprit} refuses" in str(outcome[culprit])
    assert [row(queue, i).state for i in ids] == ["delivered", "in_progress", "delivered"]


def test_two_retires_of_one_row_under_different_tokens_are_told_apart(pg_queue):
    """A stale claim of a row (released by force, then claimed again by another
    worker of the same process) meets the current one in a group: only the
    current token's retire succeeds; the stale one gets ClaimLost, as alone."""
    queue = pg_queue
    ident = put(queue)
    with queue.engine.begin() as connection:
        connection.execute(outbox.update().where(outbox.c.id == ident).values(
            state="in_progress", claim_token="new.tok", lease_until=1e12))
    queue._retires = RetireGroup(queue._settle_group, lambda: 2, 2, window=30.0)
    outcome = {}

    def worker(token):
        try:
            queue._retires.retire(Claimed(ident, token, None, None, "queued"), True)
            outcome[token] = None
        except ClaimLost as exc:
            outcome[token] = exc

    threads = [threading.Thread(target=worker, args=(t,)) for t in ("old.tok", "new.tok")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcome["new.tok"] is None
    assert isinstance(outcome["old.tok"], ClaimLost)
    assert row(queue, ident).state == "delivered"
