"""The daemon's wake-up on the SQL outbox: NOTIFY at commit, polling on SQLite, restarts.

A wait that must *not* end is given a short timeout and must come back
``"timeout"``; a wait that must end is given a long one and must come back
``"mail"`` -- behaviour, never a measured time.
"""
from __future__ import annotations

import logging
import select
import threading
import time

import pytest
import sqlalchemy as sa

from pyramid_txmail.queue.sql import enqueue
from pyramid_txmail.queue.wakeup import Waker

from .pg_support import PgCluster
from .sql_support import claim_all, make_queue, message, put, row, settings

PATIENCE = 60.0
QUIET = 0.5


@pytest.fixture
def waker():
    waker = Waker()
    yield waker
    waker.close()


def test_notify_wakes_the_watcher_at_commit_not_before(pg_url, waker):
    queue = make_queue(pg_url)
    watcher = queue.watcher(settings(), "auto")
    assert watcher.kind == "listen" and "txmail_outbox" in watcher.describe()
    watcher.mark()
    with queue.engine.connect() as connection:
        connection.begin()
        enqueue(connection, "a@example.com", ["b@example.com"], message())
        assert watcher.wait(QUIET, waker) == "timeout"  # written, not committed
        connection.commit()
    assert watcher.wait(PATIENCE, waker) == "mail"
    with queue.engine.connect() as connection:
        connection.begin()
        enqueue(connection, "a@example.com", ["b@example.com"], message())
        connection.rollback()
    assert watcher.wait(QUIET, waker) == "timeout"  # a rolled-back enqueue wakes nobody
    waker.wake()
    assert watcher.wait(PATIENCE, waker) == "woken"
    watcher.close()
    queue.close()


def test_mark_forgets_what_the_coming_pass_will_see(pg_url, waker):
    queue = make_queue(pg_url)
    watcher = queue.watcher(settings(), "auto")
    put(queue)
    # the notification has reached the watcher's socket (not yet read) ...
    assert select.select([watcher.connection.pgconn.socket], [], [], PATIENCE)[0]
    watcher.mark()  # ... and mark() forgets it: the pass about to start sees that mail
    assert watcher.wait(QUIET, waker) == "timeout"
    watcher.close()
    queue.close()


def test_sqlite_is_polled(sqlite_url, waker):
    queue = make_queue(sqlite_url)
    watcher = queue.watcher(settings(poll_interval=0.05), "auto")
    assert watcher.kind == "poll"
    watcher.mark()
    assert watcher.wait(QUIET, waker) == "timeout"
    put(queue)
    assert watcher.wait(PATIENCE, waker) == "mail"
    [claimed] = claim_all(queue)
    queue.bury(claimed, {"reason": "550"})
    watcher.mark()
    queue.retry(queue.find(claimed.name))  # back to queued: no new id, one more queued
    assert watcher.wait(PATIENCE, waker) == "mail"
    waker.wake()
    assert watcher.wait(PATIENCE, waker) == "woken"
    queue.close()


def test_listen_needs_postgresql(sqlite_url):
    from pyramid_txmail.queue.wakeup import WatchUnavailable

    with pytest.raises(WatchUnavailable, match="PostgreSQL"):
        make_queue(sqlite_url).watcher(settings(), "listen")


def test_a_postgresql_restart_under_the_watcher_and_the_queue(waker):
    """The LISTEN connection and the pooled ones break; both come back, nothing is lost."""
    with PgCluster() as pg:
        queue = make_queue(pg.url)
        watcher = queue.watcher(settings(), "auto")
        watcher.mark()
        held = put(queue)
        assert watcher.wait(PATIENCE, waker) == "mail"
        [claimed] = claim_all(queue)
        pg.restart()
        # the broken LISTEN connection is reopened, and that counts as "mail":
        # a notification may have been sent while nobody listened
        assert watcher.wait(PATIENCE, waker) == "mail"
        watcher.mark()
        app = sa.create_engine(pg.url, pool_pre_ping=True)  # the application's own
        with app.begin() as connection:
            after = enqueue(connection, "a@example.com", ["b@example.com"], message())
        app.dispose()
        assert watcher.wait(PATIENCE, waker) == "mail"
        queue.retire(claimed)  # a claim made before the restart still settles
        [second] = claim_all(queue)
        assert second.id == after and held != after
        pg.kill()  # a crash while the relay is answering: the outcome waits for it
        settled = threading.Thread(target=queue.record, args=(second, {"attempts": 1}))
        settled.start()
        time.sleep(1.0)
        pg.start()
        settled.join(PATIENCE)
        assert not settled.is_alive()
        assert row(queue, after).attempts == 1
        watcher.close()
        queue.close()


def test_a_pass_while_postgresql_is_down_says_so_in_one_line(caplog):
    """Nothing raises into the daemon, and no traceback fills its log."""
    from pyramid_txmail.processor.pass_stats import PassStats

    with PgCluster() as pg:
        queue = make_queue(pg.url)
        put(queue)
        pg.kill()
        now = 1000.0
        stats = PassStats()
        with queue.pass_scope(settings()):
            assert queue.housekeep(settings(), None, now) == 0
            assert list(queue.candidates(now, 10 ** 9, stats)) == []
        assert stats.errors == 1
        assert queue.next_due(settings(), now) == now + 5.0
        assert "the database is not available" in caplog.text
        assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
        pg.start()
        assert len(claim_all(queue)) == 1  # back, with nothing lost
        queue.close()


def test_the_watcher_says_once_that_it_cannot_listen_and_once_that_it_listens_again(
        monkeypatch, caplog, waker):
    """While PostgreSQL is down the watcher tries to reconnect every RECONNECT_EVERY
    (made short here, so that one wait makes many tries): the outage is logged when
    it starts and when it ends, not once per try."""
    from pyramid_txmail.queue.sql import watcher as watching

    caplog.set_level(logging.INFO, logger="pyramid_txmail.queue.sql")
    monkeypatch.setattr(watching, "RECONNECT_EVERY", 0.02)
    with PgCluster() as pg:
        queue = make_queue(pg.url)
        watcher = queue.watcher(settings(), "auto")
        watcher.mark()
        pg.kill()
        watcher.mark()  # finds the connection broken
        assert watcher.wait(QUIET, waker) == "timeout"  # ~25 tries, none works
        pg.start()
        assert watcher.wait(PATIENCE, waker) == "mail"
        watcher.close()
        queue.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot LISTEN" in m for m in messages) == 1, messages
    assert sum("listening for NOTIFY again" in m for m in messages) == 1, messages
