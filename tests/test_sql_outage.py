"""Every statement the SQL outbox runs for a claimed message waits out a database
that is away (a PostgreSQL killed and started again), and one that stays away
too long is a QueueAway -- never a lost claim.

Real parts: a private PostgreSQL cluster (tests/pg_support.py), killed with
SIGKILL and started again while the backend's calls are in flight in a thread.
The test waits for the backend's own log line saying the database is away
before it starts the server again: no timing is asserted.
"""
from __future__ import annotations

import logging
import threading
import time
import types

import pytest
import sqlalchemy as sa

from pyramid_txmail.queue.interface import QueueAway
from pyramid_txmail.queue.sql import outbox, patience
from pyramid_txmail.queue.sql.backend import SQLQueue

from .pg_support import PgCluster
from .sql_drain_support import fill, setup_outbox


def _claim_all(queue, count):
    stats = types.SimpleNamespace(skipped=0, errors=0)
    claims = list(queue.candidates(time.time(), 3600.0, stats))
    assert len(claims) == count and stats.errors == 0
    return claims


def _wait_for_log(caplog, text, thread):
    deadline = time.monotonic() + 120
    while text not in caplog.text:
        assert thread.is_alive(), caplog.text
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)


def test_each_step_of_a_claimed_message_waits_for_the_database_to_come_back(caplog):
    caplog.set_level(logging.INFO, logger="pyramid_txmail.queue.sql")
    with PgCluster() as pg:
        app = setup_outbox(pg.url)
        fill(app, 3, "outage", per_transaction=(3, 3))
        queue = SQLQueue(pg.url, claim_timeout=600.0, keep_delivered=3600.0)
        first, second, third = _claim_all(queue, 3)
        done = {}

        def steps():
            try:
                done["holds"] = queue.holds(first)
                done["read"] = queue.read(first, None)
                queue.record(first, {"attempts": 1})
                queue.retire(first)
                queue.defer(second, time.time() + 600)
                done["copy"] = queue.bury_copy("app@example.org", ["user2@example.org"],
                                               b"Subject: x\r\n\r\nx\r\n", {"reason": "r"})
                queue.bury(third, {"attempts": 1, "reason": "refused"})
            except BaseException as exc:  # seen by the assertions below
                done["error"] = exc

        pg.kill()
        thread = threading.Thread(target=steps)
        thread.start()
        _wait_for_log(caplog, "outbox row 1: the database at", thread)
        pg.start()
        thread.join()
        assert "error" not in done, done
        assert done["holds"] is True
        assert done["read"][:2] == ("app@example.org", ["user0@example.org"])
        with app.connect() as connection:
            states = dict(connection.execute(sa.select(outbox.c.id, outbox.c.state)).all())
        queue.close()
        app.dispose()
    assert states == {1: "delivered", 2: "deferred", 3: "failed", int(done["copy"]): "failed"}
    assert "answers again" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_claim_the_database_cannot_confirm_is_queue_away_not_lost(monkeypatch, caplog):
    monkeypatch.setattr(patience, "PATIENCE", 1.0)
    with PgCluster() as pg:
        app = setup_outbox(pg.url)
        fill(app, 1, "away")
        queue = SQLQueue(pg.url, claim_timeout=1.0)  # waits max(PATIENCE, claim_timeout)
        [claimed] = _claim_all(queue, 1)
        pg.kill()
        with pytest.raises(QueueAway, match=r"outbox row 1: the database at postgresql"):
            queue.holds(claimed)  # not False: the claim is not known to be lost
        with pytest.raises(QueueAway, match="outbox row 1"):
            queue.record(claimed, {"attempts": 1})
        queue.claim_timeout = 3600.0  # now it would wait an hour, but the process stops:
        queue.stopping = threading.Event()
        queue.stopping.set()
        with pytest.raises(QueueAway, match="this process is stopping"):
            queue.holds(claimed)
        queue.stopping = None
        pg.start()
        assert queue.holds(claimed) is True
        queue.close()
        app.dispose()


def test_every_processor_connection_has_tcp_keepalives_and_a_user_timeout():
    """A connection dropped silently on the way (no RST) must not hang a query or the
    LISTEN socket for ever: libpq's keepalives and tcp_user_timeout are set on the
    processors' pooled connections and on the watcher's own, and a value given in
    mail.queue_url wins."""
    from pyramid_txmail.queue.sql.engine import PG_KEEPALIVES

    with PgCluster() as pg:
        queue = SQLQueue(pg.url + "?keepalives_idle=7")
        with queue.engine.connect() as connection:
            params = connection.connection.driver_connection.info.get_parameters()
        watcher = queue.watcher(types.SimpleNamespace(poll_interval=1.0), "listen")
        listen = watcher.connection.info.get_parameters()
        watcher.close()
        queue.close()
    for got in (params, listen):
        assert got["keepalives_idle"] == "7"
        for key in ("keepalives", "keepalives_interval", "keepalives_count",
                    "tcp_user_timeout"):
            assert got[key] == str(PG_KEEPALIVES[key]), (key, got)
