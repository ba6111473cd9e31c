"""Processors whose clocks differ agree on the SQL outbox's retry times: every
time a processor records or compares there is the database's (its ``clock``).

The probe's case: two txmail-qp on one outbox, one with its wall clock ten
minutes ahead.  Before, the one ahead wrote ``next_attempt`` into the other's
future beyond the retry horizon (taken as "stray": due at once), and the one
behind wrote times the one ahead found long past: every pass hit the relay.
Here each processor is a real ``txmail-qp`` subprocess, the skewed one with
``time.time`` shifted (as a machine with a wrong clock), and the relay
answers 451: the backoff must hold whichever processor comes next.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from pyramid_txmail.queue.sql import SQLQueue, enqueue, outbox
from pyramid_txmail.queue.sql.schema import db_epoch

from .faultserver import fault_server

SKEW = 600.0
SENDER = "sender@example.org"
SKEWED = textwrap.dedent("""\
    import sys, time
    skew = float(sys.argv.pop(1)); _real = time.time
    time.time = lambda: _real() + skew
    from pyramid_txmail.scripts.qp import main
    sys.argv[0] = "txmail-qp"
    sys.exit(main())
    """)


def qp(ini, skew):
    proc = subprocess.run([sys.executable, "-c", SKEWED, str(skew), ini, "--no-app"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def row_and_db_now(url):
    engine = sa.create_engine(SQLQueue(url).engine.url)
    try:
        with engine.connect() as connection:
            row = connection.execute(sa.select(outbox.c.state, outbox.c.attempts,
                                               outbox.c.next_attempt, outbox.c.meta)).one()
            return row, connection.execute(sa.select(db_epoch())).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize("first, second", [(SKEW, 0.0), (0.0, SKEW), (-SKEW, 0.0)])
def test_processors_with_skewed_clocks_keep_the_backoff(tmp_path, pg_url, make_smtp_server,
                                                        first, second):
    server = fault_server(make_smtp_server, {"rcpt": "451 4.3.0 try later"})
    ini = tmp_path / "app.ini"
    ini.write_text(textwrap.dedent(f"""\
        [app:main]
        mail.queue_url = {pg_url}
        mail.host = {server.host}
        mail.port = {server.port}
        mail.retry_initial = 5m
        """))
    queue = SQLQueue(pg_url)
    try:
        from pyramid_txmail.queue.sql import init_db

        init_db(queue.engine)
        data = (f"From: {SENDER}\r\nTo: a@example.org\r\nSubject: skew\r\n"
                "Message-ID: <skew@example.org>\r\n\r\nbody\r\n").encode()
        with queue.engine.begin() as connection:
            enqueue(connection, SENDER, ["a@example.org"], data)
    finally:
        queue.close()

    qp(str(ini), first)
    row, db_now = row_and_db_now(pg_url)
    assert (row.state, row.attempts) == ("deferred", 1)
    # recorded on the database's clock: due retry_initial after now, not SKEW off
    assert 0 < row.next_attempt - db_now <= 300 * 1.5  # with jitter
    assert abs(row.meta["last_attempt"] - db_now) < 60
    qp(str(ini), second)  # the other clock: not due yet
    row, _ = row_and_db_now(pg_url)
    assert (row.state, row.attempts) == ("deferred", 1)
    assert len(server.handler.rcpts) == 1, server.handler.rcpts


def test_the_queue_clock_is_the_databases_whatever_the_local_one(pg_url, monkeypatch):
    import time

    queue = SQLQueue(pg_url)
    try:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + SKEW)
        estimate = queue.clock()
        with queue.engine.connect() as connection:
            db_now = connection.execute(sa.select(db_epoch())).scalar()
        assert abs(estimate - db_now) < 30  # the skew (600 s) is gone
    finally:
        queue.close()
