"""One NOTIFY per transaction on PostgreSQL, and never none for a committed row.

enqueue() puts ``pg_notify`` in the RETURNING of the first row of a
transaction only: PostgreSQL delivers notifications at the commit, so later
rows need none.  What must hold: whatever the application rolls back (a
savepoint with the first row in it, a whole transaction), a commit that leaves
a row in the outbox wakes the listening daemon.  Each case counts the INSERTs
that carried ``pg_notify`` and then asks the watcher whether it was woken
(a wait that must end gets a long timeout and must say ``"mail"``; one that
must not gets a short one and must say ``"timeout"`` -- behaviour, not time).
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from pyramid_txmail.queue.sql import enqueue
from pyramid_txmail.queue.wakeup import Waker

from .sql_support import make_queue, message, settings

PATIENCE = 60.0
QUIET = 0.5


def _send(connection):
    enqueue(connection, "a@example.com", ["b@example.com"], message())


def two_rows(connection):
    with connection.begin():
        _send(connection)
        _send(connection)


def first_row_in_a_rolled_back_savepoint(connection):
    with connection.begin():
        savepoint = connection.begin_nested()
        _send(connection)  # carries the NOTIFY ...
        savepoint.rollback()  # ... which goes with it
        _send(connection)  # so this one must carry it again


def second_row_in_a_rolled_back_savepoint(connection):
    with connection.begin():
        _send(connection)
        savepoint = connection.begin_nested()
        _send(connection)
        savepoint.rollback()


def rows_in_two_transactions(connection):
    for _ in range(2):
        with connection.begin():
            _send(connection)


def rows_in_autocommit(connection):
    connection.execution_options(isolation_level="AUTOCOMMIT")
    _send(connection)
    _send(connection)  # committed on its own: it must announce itself


@pytest.mark.parametrize("write, rows, notifies", [
    (two_rows, 2, 1),
    (first_row_in_a_rolled_back_savepoint, 1, 2),
    (second_row_in_a_rolled_back_savepoint, 1, 2),
    (rows_in_two_transactions, 2, 2),
    (rows_in_autocommit, 2, 2),
])
def test_every_commit_that_leaves_a_row_wakes_the_listener(pg_url, write, rows, notifies):
    queue = make_queue(pg_url)
    waker = Waker()
    watcher = queue.watcher(settings(), "listen")
    watcher.mark()
    carried = []
    engine = sa.create_engine(pg_url)  # the application's
    sa.event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *rest:
                    carried.append("pg_notify" in statement)
                    if statement.startswith("INSERT INTO txmail_outbox") else None)
    try:
        with engine.connect() as connection:
            write(connection)
        assert carried.count(True) == notifies
        with engine.connect() as connection:
            count = connection.execute(sa.text("SELECT count(*) FROM txmail_outbox")).scalar()
        assert count == rows
        assert watcher.wait(PATIENCE, waker) == "mail"
    finally:
        watcher.close()
        waker.close()
        engine.dispose()
        queue.close()


def test_a_rolled_back_transaction_wakes_nobody_and_the_next_one_does(pg_url):
    """The NOTIFY remembered from a rolled-back transaction is not the next one's."""
    queue = make_queue(pg_url)
    waker = Waker()
    watcher = queue.watcher(settings(), "listen")
    watcher.mark()
    try:
        with queue.engine.connect() as connection:
            transaction = connection.begin()
            _send(connection)
            transaction.rollback()
            assert watcher.wait(QUIET, waker) == "timeout"
            with connection.begin():
                _send(connection)
        assert watcher.wait(PATIENCE, waker) == "mail"
    finally:
        watcher.close()
        waker.close()
        queue.close()
