"""The SQL outbox in the tests: one fixture for both databases, and small helpers.

``db_url`` runs a test once on SQLite (a file in tmp_path) and once on a fresh
database of the session's private PostgreSQL (:mod:`tests.pg_support`).
"""
from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from pyramid_txmail.processor.pass_stats import PassStats
from pyramid_txmail.queue.sql import SQLQueue, enqueue, init_db, outbox
from pyramid_txmail.settings import MailSettings

DATABASES = ("sqlite", "postgresql")


@pytest.fixture(params=DATABASES)
def db_url(request):
    """The URL of an empty database: SQLite, then PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def settings(**values):
    return MailSettings(**{"claim_timeout": 60.0, **values})


def make_queue(url, **kw):
    queue = SQLQueue(url, **{"claim_timeout": 60.0, **kw})
    init_db(queue.engine)
    return queue


@pytest.fixture
def queue(db_url):
    queue = make_queue(db_url)
    yield queue
    queue.close()


def message(subject="hello", body=b"body\r\n", message_id=None):
    mid = message_id or f"<{time.monotonic_ns()}@example.com>"
    return (f"Message-ID: {mid}\r\nSubject: {subject}\r\nFrom: a@example.com\r\n"
            "To: b@example.com\r\n\r\n").encode() + body


def put(queue, data=None, fromaddr="a@example.com", toaddrs=("b@example.com",), **kw):
    """Enqueue one message in a transaction of its own; its id."""
    with queue.engine.begin() as connection:
        return enqueue(connection, fromaddr, list(toaddrs), data or message(), **kw)


def claim_all(queue, now=None, horizon=10 ** 9, stats=None):
    """Every claim one pass of ``candidates`` makes (outside a pass scope)."""
    stats = stats if stats is not None else PassStats()
    return list(queue.candidates(time.time() if now is None else now, horizon, stats))


def row(queue, ident):
    with queue.engine.connect() as connection:
        return connection.execute(sa.select(outbox).where(outbox.c.id == int(ident))).first()


def states(queue):
    with queue.engine.connect() as connection:
        return dict(connection.execute(sa.select(outbox.c.id, outbox.c.state)).all())
