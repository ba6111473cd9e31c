"""enqueue() runs its INSERT as SQL compiled once, on the application's own connection.

A Core ``execute`` walks the statement for a cache key and runs every value
and the result through SQLAlchemy's processing: on SQLite that was four times
the database's own work for the row.  The INSERT is compiled once per dialect
and run with ``exec_driver_sql`` on the same Connection (so still in the
application's transaction, still seen by its engine's events), its JSON
columns serialised as the dialect does.
"""
from __future__ import annotations

import sqlalchemy as sa

from pyramid_txmail.queue.sql import enqueue

from .sql_support import db_url, make_queue, message, row  # noqa: F401


def test_enqueue_runs_precompiled_sql_inside_the_apps_transaction(db_url):
    queue = make_queue(db_url)
    seen = []

    def spy(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO TXMAIL_OUTBOX"):
            seen.append(context.compiled)

    sa.event.listen(queue.engine, "before_cursor_execute", spy)
    try:
        with queue.engine.connect() as connection:
            transaction = connection.begin()
            ident = enqueue(connection, "a@example.com", ["b@example.com", "c@example.com"],
                            message(), meta={"attempts": 2, "delivered": ["c@example.com"]},
                            state="failed")
            kept = enqueue(connection, "a@example.com", ["b@example.com"], message())
            transaction.rollback()  # the app's rollback takes the rows with it
            assert row(queue, ident) is None and row(queue, kept) is None
            with connection.begin():
                kept = enqueue(connection, "a@example.com", ["b@example.com"], message())
                dead = enqueue(connection, "a@example.com", ["c@example.com"], message(),
                               meta={"attempts": 2, "reason": "550 no"}, state="failed")
    finally:
        sa.event.remove(queue.engine, "before_cursor_execute", spy)
    assert len(seen) == 4 and seen == [None] * 4  # driver SQL: no Compiled per call
    stored, failed = row(queue, kept), row(queue, dead)
    assert (stored.state, stored.recipients, stored.meta) == ("queued", ["b@example.com"], None)
    assert failed.state == "failed" and failed.meta == {"attempts": 2, "reason": "550 no"}
    assert failed.attempts == 2 and failed.settled_at is not None
    queue.close()


def test_unobserved_enqueue_runs_on_the_apps_own_transaction_and_errors_stay_sqlalchemys(
        db_url):
    """No listener on the engine: the bare DB-API cursor path.  Its row commits and
    rolls back with the application's, and a database error is SQLAlchemy's."""
    queue = make_queue(db_url)
    engine = sa.create_engine(queue.engine.url)  # the application's: no events
    with engine.connect() as connection:
        with connection.begin() as transaction:
            gone = enqueue(connection, "a@example.com", ["b@example.com"], message())
            transaction.rollback()
        assert row(queue, gone) is None
        with connection.begin():
            kept = enqueue(connection, "a@example.com", ["b@example.com"], message(),
                           meta={"attempts": 1}, state="failed")
    stored = row(queue, kept)
    assert (stored.state, stored.recipients, stored.meta) == (
        "failed", ["b@example.com"], {"attempts": 1})
    with engine.connect() as connection:
        with connection.begin():
            connection.execute(sa.text("DROP TABLE txmail_outbox_chunk"))
            connection.execute(sa.text("DROP TABLE txmail_outbox"))
        with connection.begin():
            try:
                enqueue(connection, "a@example.com", ["b@example.com"], message())
            except sa.exc.DBAPIError as exc:
                assert "txmail_outbox" in str(exc)
            else:
                raise AssertionError("an INSERT into a missing table succeeded")
    engine.dispose()
    queue.close()
