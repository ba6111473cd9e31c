"""enqueue() runs every statement on the application's connection as SQLAlchemy's own.

The application hands enqueue its connection (the request's session's): its
``schema_translate_map``, its engine's and dialect's events (``do_execute``,
``handle_error``) and SQLAlchemy's disconnect handling must apply to the
outbox rows as to its own statements.  A bare DB-API cursor or precompiled
driver SQL (an earlier speed-up) skipped all three: a row went to the wrong
schema while its chunks went to the right one, an application's error
translation never saw enqueue's errors, and a dead connection was not
invalidated (outside probe of issue 13).  Each statement is therefore
``connection.execute`` of a Core construct built once.
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from pyramid_txmail.queue.sql import enqueue
from pyramid_txmail.queue.sql.schema import CHUNK, metadata

from .sql_support import db_url, make_queue, message, row  # noqa: F401


def test_enqueue_runs_core_statements_inside_the_apps_transaction(db_url):
    queue = make_queue(db_url)
    seen = []

    def spy(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO TXMAIL_OUTBOX"):
            seen.append(context.compiled is not None)

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
    assert seen == [True] * 4  # compiled Core statements, not driver SQL
    stored, failed = row(queue, kept), row(queue, dead)
    assert (stored.state, stored.recipients, stored.meta) == ("queued", ["b@example.com"], None)
    assert failed.state == "failed" and failed.meta == {"attempts": 2, "reason": "550 no"}
    assert failed.attempts == 2 and failed.settled_at is not None
    queue.close()


def test_the_apps_do_execute_and_handle_error_hooks_see_enqueue(db_url):
    """A unique index of the application's on message_id: its handle_error hook
    translates enqueue's IntegrityError as it does its own statements'."""
    queue = make_queue(db_url)
    engine = sa.create_engine(queue.engine.url)  # the application's
    with engine.begin() as connection:
        connection.execute(sa.text(
            "CREATE UNIQUE INDEX app_unique_mid ON txmail_outbox (message_id)"))

    class AppDuplicate(Exception):
        pass

    executed, handled = [], []

    @sa.event.listens_for(engine, "do_execute")
    def do_execute(cursor, statement, parameters, context):
        executed.append(statement.split()[:3])

    @sa.event.listens_for(engine, "handle_error")
    def handle_error(context):
        handled.append(type(context.sqlalchemy_exception).__name__)
        if isinstance(context.sqlalchemy_exception, sa.exc.IntegrityError):
            return AppDuplicate("the application's own translation")

    data = message(message_id="<dup@example.com>")
    with engine.begin() as connection:
        enqueue(connection, "a@example.com", ["b@example.com"], data)
    with pytest.raises(AppDuplicate):
        with engine.begin() as connection:
            enqueue(connection, "a@example.com", ["b@example.com"], data)
    assert handled == ["IntegrityError"]
    assert [s for s in executed if s[:3] == ["INSERT", "INTO", "txmail_outbox"]]
    engine.dispose()
    queue.close()


def test_enqueue_honours_the_apps_schema_translate_map(pg_url):
    """The row and its chunks (a message over one chunk) go to the translated schema."""
    engine = sa.create_engine(pg_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE SCHEMA tenant"))
    metadata.create_all(engine)  # public's tables exist too: nothing may land there
    tenant = engine.execution_options(schema_translate_map={None: "tenant"})
    metadata.create_all(tenant)
    large = message(body=b"x" * 76 + b"\r\n") + (b"y" * 76 + b"\r\n") * (CHUNK // 78 + 10)
    with tenant.begin() as connection:
        enqueue(connection, "a@example.com", ["b@example.com"], message())
        big = enqueue(connection, "a@example.com", ["b@example.com"], large)
    with engine.connect() as connection:
        count = lambda table: connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()  # noqa: E731
        assert count("public.txmail_outbox") == 0 and count("public.txmail_outbox_chunk") == 0
        assert count("tenant.txmail_outbox") == 2 and count("tenant.txmail_outbox_chunk") == 2
        stored = connection.execute(sa.text(
            "SELECT chunks, size FROM tenant.txmail_outbox WHERE id = :i"), {"i": big}).one()
        assert tuple(stored) == (2, len(large))
    engine.dispose()


def test_a_lost_connection_during_enqueue_is_a_disconnect(pg_url):
    """The application's backend was terminated: enqueue's error says the connection
    was invalidated, as the application's own statement's would."""
    queue = make_queue(pg_url)
    engine = sa.create_engine(pg_url)
    connection = engine.connect()
    connection.begin()
    pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    with queue.engine.connect() as killer:
        killer.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    with pytest.raises(sa.exc.DBAPIError) as raised:
        enqueue(connection, "a@example.com", ["b@example.com"], message())
    assert raised.value.connection_invalidated and connection.invalidated
    connection.close()
    engine.dispose()
    queue.close()
