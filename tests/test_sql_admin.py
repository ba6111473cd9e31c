"""``txmail-queue``'s operations on the SQL outbox, with the spool's output shapes.

The JSON of ``status`` and ``list`` must have the spool's keys, so that
monitoring written for a spool reads an outbox unchanged; each change is
conditioned on the state the operator saw.
"""
from __future__ import annotations

import time

import pytest

from pyramid_txmail.queue.maildir import spool_admin
from pyramid_txmail.queue.sql.errors import Ambiguous, NotFound, Refused, Vanished
from pyramid_txmail.queue.sql.schema import outbox
from pyramid_txmail.queue.maildir.spool import Spool

from .sql_support import claim_all, db_url, message, put, queue, row  # noqa: F401

BIG = message(subject="big", body=b"".join(b"%07d\r\n" % i for i in range(200000)))


def _spool_shapes(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    spool.commit_tmp([spool.write_tmp("a@example.com", ["b@example.com"], message())])
    [msg] = spool_admin.messages(spool)
    return set(spool_admin.status(spool)), set(spool_admin.status(spool)["states"]), \
        set(msg.as_dict(time.time()))


def test_status_and_list_have_the_spools_keys(queue, tmp_path):
    status_keys, state_keys, list_keys = _spool_shapes(tmp_path)
    put(queue)
    status = queue.status(time.time())
    assert status_keys <= set(status) and set(status) - status_keys == {"delivered"}
    assert set(status["states"]) == state_keys
    assert (status["queued"], status["states"]["new"]["count"]) == (1, 1)
    [msg] = queue.messages(("new",))
    assert set(msg.as_dict(time.time())) == list_keys
    assert msg.as_dict(time.time())["label"] == "queued"


def test_status_counts_every_state(queue):
    now = time.time()
    for _ in range(5):
        put(queue)
    a, b, c, d, _ = claim_all(queue)
    queue.defer(a, now - 1)
    queue.defer(b, now + 600)
    queue.bury(c, {"reason": "550", "failed_at": now})
    queue.retire(d)
    status = queue.status(now)
    assert {k: status[k] for k in ("queued", "in_progress", "deferred", "failed", "tmp",
                                   "prepared", "delivered", "deferred_due")} == {
        "queued": 0, "in_progress": 1, "deferred": 2, "failed": 1, "tmp": 0,
        "prepared": 0, "delivered": 1, "deferred_due": 1}
    assert status["next_retry"] == now - 1


def test_list_shows_envelope_headers_and_state(queue):
    ident = put(queue, BIG, toaddrs=["x@example.com", "y@example.com"])
    [claimed] = claim_all(queue)
    queue.record(claimed, {"attempts": 1, "history": [{"attempt": 1, "time": 1.0, "results": [
        {"recipient": "y@example.com", "status": "temporary", "code": 451, "text": "later"}]}]})
    queue.defer(claimed, time.time() + 60)
    [msg] = queue.messages(("deferred",))
    assert (msg.name, msg.fromaddr, msg.toaddrs, msg.subject) == (
        str(ident), "a@example.com", ("x@example.com", "y@example.com"), "big")
    assert (msg.attempts, msg.last_error) == (1, "y@example.com: 451 later")
    assert msg.as_dict(time.time())["next_attempt"] == row(queue, ident).next_attempt


def test_find_by_id_state_slash_id_or_message_id(queue):
    ident = put(queue, message(message_id="<unique@example.com>"))
    assert queue.find(str(ident)).id == ident
    assert queue.find(f"new/{ident}").id == ident
    assert queue.find("unique@example.com").id == ident
    assert queue.find("<unique@example.com>").id == ident
    put(queue, message(message_id="<twice@example.com>"))
    put(queue, message(message_id="<twice@example.com>"))
    with pytest.raises(Ambiguous) as info:
        queue.find("<twice@example.com>")
    assert len(info.value.candidates) == 2
    with pytest.raises(NotFound, match="nothing@example.com"):
        queue.find("nothing@example.com")


def test_retry_a_dead_letter_and_refusals(queue):
    ident = put(queue)
    [claimed] = claim_all(queue)
    with pytest.raises(Refused, match="being sent"):
        queue.retry(queue.find(str(ident)))
    queue.bury(claimed, {"reason": "550 no", "failed_at": 1.0})
    failed = queue.find(str(ident))
    assert "to queued" in queue.retry(failed)
    assert row(queue, ident).state == "queued"
    with pytest.raises(Vanished):
        queue.retry(failed)  # it is no longer the dead letter that was looked at
    [again] = claim_all(queue)
    assert queue.load_state(again)["failed_at"] == 1.0  # the processor starts it afresh


def test_purge_only_what_is_settled(queue):
    old, new = put(queue, BIG), put(queue)
    a, b = claim_all(queue)
    queue.bury(a, {"reason": "550"})
    queue.bury(b, {"reason": "550"})
    with queue.engine.begin() as connection:
        connection.execute(outbox.update().where(outbox.c.id == old)
                           .values(settled_at=outbox.c.settled_at - 8 * 86400))
    with pytest.raises(Refused):
        queue.purge_candidates("new", None)
    [stale] = queue.purge_candidates("failed", 7 * 86400, time.time())
    assert stale.id == old
    queue.purge(stale)
    assert row(queue, old) is None and row(queue, new).state == "failed"
    with pytest.raises(Vanished):
        queue.purge(stale)
    assert queue.purge_candidates("tmp", None) == []


def test_release_waits_for_the_lease_unless_forced(queue):
    ident = put(queue)
    [claimed] = claim_all(queue)
    msg = queue.find(str(ident))
    with pytest.raises(Refused, match="holds it"):
        queue.release_claim(msg, 60.0)
    assert "--force" in queue.release_claim(msg, 60.0, force=True)
    assert row(queue, ident).state == "queued"
    assert not queue.holds(claimed)


def test_release_stale_puts_back_only_expired_leases(queue):
    expired, alive = put(queue), put(queue)
    claim_all(queue)
    with queue.engine.begin() as connection:
        connection.execute(outbox.update().where(outbox.c.id == expired)
                           .values(lease_until=0))
    assert queue.release_stale(60.0, time.time()) == [str(expired)]
    assert (row(queue, expired).state, row(queue, alive).state) == ("queued", "in_progress")


def test_read_body_is_the_message_after_its_headers(queue):
    ident = put(queue, BIG)
    assert queue.read_body(queue.find(str(ident))) == BIG.split(b"\r\n\r\n", 1)[1]
