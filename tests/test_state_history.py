"""A message's state file stays bounded however often it is retried (issue 11, 10d).

A 5,000-recipient message with half of them deferred had a 0.8 MB state file
that grew by 0.43 MB per retry: every attempt's result for every recipient
was kept.  Now the last ``HISTORY_KEEP`` attempts are kept in full and the
earlier ones counted.  A real aiosmtpd server defers half the recipients;
the clock is injected, as in test_processor.
"""
from __future__ import annotations

import os

import pytest

from pyramid_txmail.queue.maildir import queue_state
from pyramid_txmail.scripts import queue_text
from pyramid_txmail.queue.maildir import spool_admin as admin
from pyramid_txmail.queue.maildir.spool import Spool

from .test_deferred_index import processor
from .test_processor import Clock, queue

RECIPIENTS = [f"r{n:04d}@example.org" for n in range(1000)]
DEFERRED = RECIPIENTS[1::2]
RETRIES = 12
#: (a default, so that the test runs -- and fails on growth -- before the fix)
HISTORY_KEEP = getattr(queue_state, "HISTORY_KEEP", 3)


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path / "spool"))


def state_size(spool, name):
    return os.path.getsize(os.path.join(spool.path, "meta", name + ".json"))


def test_the_state_file_stops_growing_and_the_dead_letter_keeps_every_reason(
        spool, make_smtp_server):
    clock = Clock()
    server = make_smtp_server({"rcpt": {r: "451 4.2.1 mailbox busy" for r in DEFERRED}})
    qp = processor(server, spool, clock, max_queue_time="10d")
    name = queue(spool, RECIPIENTS)
    sizes = []
    for attempt in range(1, RETRIES + 1):
        stats = qp.run_once()
        assert stats.deferred == 1, f"attempt {attempt}"
        sizes.append(state_size(spool, name))
        clock.advance(86400 / 2)  # past any retry time (retry_max is about an hour)
    # was: 1 MB more per retry (every attempt's 500 deferrals kept)
    settled = sizes[HISTORY_KEEP:]
    assert max(settled) <= max(sizes[:HISTORY_KEEP + 1])
    assert max(settled) - min(settled) < 100  # only counters change
    meta = spool.read_meta(name)
    assert meta["attempts"] == RETRIES
    assert [h["attempt"] for h in meta["history"]] == list(
        range(RETRIES - HISTORY_KEEP + 1, RETRIES + 1))
    earlier = meta["earlier"]
    assert earlier["attempts"] == RETRIES - HISTORY_KEEP
    assert earlier["codes"]["451"] == len(DEFERRED) * (RETRIES - HISTORY_KEEP)
    assert earlier["statuses"]["sent"] == len(DEFERRED)  # the first attempt's

    # show: the attempts kept are numbered as they happened, the earlier counted
    [msg] = [m for m in admin.messages(spool) if m.name == name]
    shown = "\n".join(queue_text.show_lines(msg, clock.now))
    assert f"{RETRIES - HISTORY_KEEP} attempts from" in shown and "451 " in shown
    assert f"  {RETRIES}. " in shown and "   1. " not in shown

    clock.advance(11 * 86400)  # past max_queue_time: seen once, retried once more
    assert qp.run_once().deferred == 1
    clock.advance(86400 / 2)  # seen past it twice in a row: the deferred half is given up
    stats = qp.run_once()
    assert stats.failed == 1 and spool.names("deferred") == []
    [dead] = spool.names("failed")
    letter = spool.read_meta(dead)
    assert letter["attempts"] == RETRIES + 2 and letter["failed_at"] == clock.now
    assert f"expired after {RETRIES + 2} attempts" in letter["reason"]
    assert sorted(r["recipient"] for r in letter["recipients"]) == DEFERRED
    assert {r["code"] for r in letter["recipients"]} == {451}
    assert all(r["text"].startswith("4.2.1 mailbox busy") for r in letter["recipients"])
    # bounded by the recipients (their last reply, the one-line reason), not the attempts
    assert state_size(spool, dead) < 1.5 * max(sizes)
    assert len(server.messages) == 1  # the accepted half once, never again
