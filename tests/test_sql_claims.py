"""Claims on the SQL outbox: never one message twice, leases kept while alive, lost when dead.

Real concurrency on both databases (threads, processes), SKIP LOCKED on
PostgreSQL, a claimer killed with SIGKILL, and every settling UPDATE refused
once the claim has gone to someone else.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from pyramid_txmail.processor.pass_stats import PassStats
from pyramid_txmail.queue.sql import outbox
from pyramid_txmail.queue.sql.errors import ClaimLost

from .sql_support import (claim_all, db_url, make_queue, message, put, queue,  # noqa: F401
                          row, settings, states)

CLAIMER = os.path.join(os.path.dirname(__file__), "sql_claimer.py")
#: Bounds on waiting for another process (never a measurement).
PATIENCE = 60.0
#: A short claim_timeout (renewed every third of it), and a wait past two of them:
#: only renewal keeps a claim that long.  Wide enough for a loaded machine.
LEASE = 3.0
PAST_TWO_LEASES = 2 * LEASE + 0.5


def _drain(queue, taken):
    for claimed in queue.candidates(time.time(), 10 ** 9, PassStats()):
        taken.append(claimed.id)
        queue.retire(claimed)


def test_two_threads_never_claim_one_message_twice(db_url):
    queues = [make_queue(db_url) for _ in range(2)]
    ids = {put(queues[0]) for _ in range(120)}
    taken = [[], []]
    threads = [threading.Thread(target=_drain, args=(q, t)) for q, t in zip(queues, taken)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert not any(t.is_alive() for t in threads)
    assert sorted(taken[0] + taken[1]) == sorted(ids)
    assert set(states(queues[0]).values()) == {"delivered"}


def test_two_processes_never_claim_one_message_twice(db_url):
    queue = make_queue(db_url)
    ids = {put(queue) for _ in range(150)}
    procs = [subprocess.Popen([sys.executable, CLAIMER, db_url, "drain"],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=PATIENCE)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert all(out[-1] == "done" for out in outputs)
    taken = [int(i) for out in outputs for i in out[:-1]]
    assert sorted(taken) == sorted(ids)  # each exactly once


def test_skip_locked_three_claimers_pass_a_locked_row(pg_url):
    """A row locked by another transaction is skipped, not waited for."""
    queue = make_queue(pg_url)
    locked, *others = [put(queue) for _ in range(4)]
    got, errors = [], []
    barrier = threading.Barrier(3)

    def claim_one():
        own = make_queue(pg_url, claim_batch=1)  # one row each: which ones were skipped
        try:
            barrier.wait()
            got.append(next(own.candidates(time.time(), 10 ** 9, PassStats())).id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with queue.engine.connect() as holder:
        holder.begin()
        holder.execute(sa.select(outbox.c.id).where(outbox.c.id == locked).with_for_update())
        threads = [threading.Thread(target=claim_one, daemon=True) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE)
        blocked = [t for t in threads if t.is_alive()]
        holder.rollback()
    assert not blocked and not errors
    assert sorted(got) == sorted(others)


def test_a_live_claim_outlasts_its_timeout_by_renewal(db_url):
    queue, other = make_queue(db_url, claim_timeout=LEASE), make_queue(db_url,
                                                                         claim_timeout=LEASE)
    put(queue)
    with queue.pass_scope(settings(claim_timeout=LEASE)) as scope:
        claimed = queue.claim(next(queue.candidates(time.time(), 10 ** 9, PassStats())))
        scope.add(claimed)
        time.sleep(PAST_TWO_LEASES)  # only renewal keeps it
        assert other.housekeep(settings(claim_timeout=LEASE), None, time.time()) == 0
        assert claim_all(other) == []
        assert queue.holds(claimed)
        queue.retire(claimed)
        scope.discard(claimed)
    assert row(queue, claimed.id).state == "delivered"


def test_a_killed_claimers_lease_runs_out_and_is_taken(db_url):
    queue = make_queue(db_url, claim_timeout=LEASE)
    ident = put(queue)
    proc = subprocess.Popen([sys.executable, CLAIMER, db_url, "hold", str(LEASE)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == str(ident)
        time.sleep(PAST_TWO_LEASES)  # past its timeout, alive: renewed, never taken
        assert queue.housekeep(settings(claim_timeout=LEASE), None, time.time()) == 0
        assert row(queue, ident).state == "in_progress"
        owner = row(queue, ident).claimed_by
        assert owner.endswith(f":{proc.pid}")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + PATIENCE
    while not queue.housekeep(settings(claim_timeout=LEASE), None, time.time()):
        assert time.monotonic() < deadline, "the dead claimer's lease never ran out"
        time.sleep(0.2)
    [claimed] = claim_all(queue)
    assert claimed.id == ident and row(queue, ident).claimed_by != owner


def _expire(queue, ident):
    with queue.engine.begin() as connection:
        connection.execute(outbox.update().where(outbox.c.id == ident).values(lease_until=0))


@pytest.mark.parametrize("step", ["record", "retire", "defer", "bury"])
def test_settling_after_the_claim_was_lost_raises_claim_lost(queue, step):
    ident = put(queue)
    [mine] = claim_all(queue)
    _expire(queue, ident)
    assert queue.housekeep(settings(), None, time.time()) == 1
    [theirs] = claim_all(queue)
    assert not queue.holds(mine) and queue.holds(theirs)
    args = {"record": ({"attempts": 1},), "retire": (), "defer": (time.time() + 60,),
            "bury": ({"reason": "x"},)}[step]
    with pytest.raises(ClaimLost, match=f"outbox row {ident}"):
        getattr(queue, step)(mine, *args)
    stored = row(queue, ident)
    assert (stored.state, stored.claim_token, stored.meta) == ("in_progress", theirs.token,
                                                               None)


def test_order_queued_oldest_first_then_due_deferred_then_clock_strays(queue):
    now = time.time()
    first, later, stray, fresh = [put(queue) for _ in range(4)]
    claims = {c.id: c for c in claim_all(queue)}
    queue.defer(claims[first], now - 10)
    queue.defer(claims[later], now + 100)
    queue.defer(claims[stray], now + 10 ** 6)  # a clock that was ahead
    queue.defer(claims[fresh], now - 20)
    newest = put(queue)
    stats = PassStats()
    order = [c.id for c in claim_all(queue, now=now, horizon=1000, stats=stats)]
    assert order == [newest, fresh, first, stray]
    assert stats.skipped == 1  # later: not due


def test_a_pass_gives_back_the_claims_it_never_handed_out(queue):
    ident = put(queue)
    with queue.pass_scope(settings()):
        next(queue.candidates(time.time(), 10 ** 9, PassStats()))
        assert row(queue, ident).state == "in_progress"
    stored = row(queue, ident)
    assert (stored.state, stored.claim_token, stored.lease_until) == ("queued", None, None)


def test_leases_are_renewed_as_often_as_the_spool_heartbeat_as_the_settings_say():
    """mail.claim_timeout's text promises one interval (claim_timeout/4, at least every
    minute) for both backends: the outbox's lease and the spool's heartbeat."""
    from pyramid_txmail.queue.maildir.claims import heartbeat_interval
    from pyramid_txmail.queue.sql.leases import renew_interval
    from pyramid_txmail.settings import SETTINGS

    for timeout in (1.0, 3.0, 30.0, 240.0, 3600.0):
        assert renew_interval(timeout) == heartbeat_interval(timeout)
    [text] = [s.doc for s in SETTINGS if s.name == "claim_timeout"]
    assert "claim_timeout/4" in text and "lease" in text
