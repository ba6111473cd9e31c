"""Within a pass, the next batch is claimed ahead, while the current one is handed out.

The processor's workers take their next message under one lock; if the claim
of the next batch ran under it, every worker would wait for that round trip.
So once half of a batch was handed out, a helper thread claims the next one.
Seen in the statements sent (not in time): the next claim is on its way
before anyone asked for a message of it, and a pass stopped early gives back
every claim never handed out, the ones claimed ahead included.
"""
from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from pyramid_txmail.processor.pass_stats import PassStats

from .sql_support import db_url, make_queue, put, row, settings  # noqa: F401


def _claims_sent(queue):
    """An Event set at each claiming statement, and the list of them."""
    seen, sent = threading.Event(), []

    def spy(conn, cursor, statement, parameters, context, executemany):
        text = statement.lstrip().upper()
        if text.startswith("UPDATE") and "LIMIT" in text:  # the claim: UPDATE .. IN (.. LIMIT n)
            sent.append(statement)
            seen.set()

    sa.event.listen(queue.engine, "before_cursor_execute", spy)
    return seen, sent, lambda: sa.event.remove(queue.engine, "before_cursor_execute", spy)


def test_a_pass_first_claims_one_row_per_worker_and_nothing_ahead(db_url):
    """Idle processes woken by one burst share it: the first claim of a pass takes
    half a batch (one row per worker: claim_batch is two per worker) and nothing is
    claimed ahead of it until a worker comes back for more (outside probe of issue
    13: 4 processes x 3 workers took a burst of 12 as 6+6+0+0)."""
    queue = make_queue(db_url, claim_batch=4)  # 2 workers
    ids = [put(queue) for _ in range(8)]
    with queue.pass_scope(settings()):
        candidates = queue.candidates(time.time(), 10 ** 9, PassStats())
        handed = [next(candidates), next(candidates)]  # one for each worker
        assert [row(queue, i).state for i in ids] == ["in_progress"] * 2 + ["queued"] * 6
        rest = list(candidates)
        for claimed in handed + rest:
            queue.retire(queue.claim(claimed))
    assert [c.id for c in handed + rest] == ids
    assert [row(queue, i).state for i in ids] == ["delivered"] * 8


def test_the_next_batch_is_claimed_once_half_of_this_one_is_handed_out(db_url):
    queue = make_queue(db_url, claim_batch=4)
    ids = [put(queue) for _ in range(10)]
    with queue.pass_scope(settings()):
        candidates = queue.candidates(time.time(), 10 ** 9, PassStats())
        handed = [next(candidates), next(candidates)]  # the first, half batch: rows 0-1
        handed.append(next(candidates))  # a worker came back: rows 2-5 claimed
        assert [row(queue, i).state for i in ids[:6]] == ["in_progress"] * 6
        seen, sent, stop = _claims_sent(queue)
        try:
            handed += [next(candidates), next(candidates)]  # two of four left
            assert seen.wait(30), "the next batch was not claimed ahead"
        finally:
            stop()
        rest = list(candidates)
        assert [c.id for c in handed + rest] == ids
        for claimed in handed + rest:
            queue.retire(queue.claim(claimed))
    assert [row(queue, i).state for i in ids] == ["delivered"] * 10


def test_a_pass_stopped_early_gives_back_what_it_claimed_ahead(db_url):
    queue = make_queue(db_url, claim_batch=4)
    ids = [put(queue) for _ in range(8)]
    with queue.pass_scope(settings()) as scope:
        candidates = queue.candidates(time.time(), 10 ** 9, PassStats())
        handed = [queue.claim(next(candidates)) for _ in range(3)]
        for claimed in handed:
            scope.add(claimed)
        candidates.close()  # the pass stops here (as the processor's stop does)
        for claimed in handed:
            queue.retire(claimed)
            scope.discard(claimed)
    states = [row(queue, i).state for i in ids]
    assert states == ["delivered"] * 3 + ["queued"] * 5
    assert [row(queue, i).claim_token for i in ids[3:]] == [None] * 5
