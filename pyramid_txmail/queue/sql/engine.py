"""The processors' own engine for the outbox, and the queue's name in logs.

Processors never use the application's connections: each ``txmail-qp`` makes
an engine from ``mail.queue_url``.  On PostgreSQL a bare ``postgresql://``
URL means psycopg 3 (the driver the ``sql`` extra installs).  Pooled
connections are not pinged at each checkout (a round trip per statement):
a server restart makes the first statement on an old connection fail,
SQLAlchemy then renews the whole pool, and the queue tries that statement
once more (:meth:`~pyramid_txmail.queue.sql.backend.SQLQueue._run`).

SQLite serves one machine: every transaction of the processors' engine is
``BEGIN IMMEDIATE`` (the write lock is taken at the start, so two claimers
never both read the same row as free), and a busy database is waited for
(:data:`SQLITE_BUSY_TIMEOUT`) rather than failed.  Long reads run without
a transaction (:func:`~pyramid_txmail.queue.sql.store.autocommit`).
"""
from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ...util.shown_url import shown_url

log = logging.getLogger("pyramid_txmail.queue.sql")

#: Seconds a SQLite connection waits for another's write lock before it fails.
SQLITE_BUSY_TIMEOUT = 30.0

#: libpq's TCP settings for every connection the processors open (their pool and the
#: watcher's LISTEN connection).  A connection silently dropped on the way (a NAT or
#: load balancer forgetting an idle flow, a partition) sends no RST: without these a
#: query, or the LISTEN socket, waits on it for ever.  Keepalives find an idle dead
#: peer within idle + interval * count (60s); ``tcp_user_timeout`` (milliseconds)
#: fails a socket whose sent data stays unacknowledged for 60s.  The application's
#: own engine is the application's business.
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                 "keepalives_count": 3, "tcp_user_timeout": 60000}


def normalized_url(url):
    """``url`` as a :class:`sqlalchemy.engine.URL`, with psycopg 3 for a bare postgresql://."""
    url = make_url(url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def where(url):
    """The URL for log lines and ``txmail-queue``: never with its password (in the
    netloc or in the query string)."""
    return shown_url(url)


def make_engine(url, pool_size=5):
    """An engine for the processors (not the application's)."""
    url = normalized_url(url)
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT,
                                                     "check_same_thread": False})
        _begin_immediate(engine)
        return engine
    connect_args = dict(PG_KEEPALIVES) if url.get_backend_name() == "postgresql" else {}
    connect_args.update((k, v) for k, v in url.query.items() if k in PG_KEEPALIVES)  # URL's win
    return sa.create_engine(url.difference_update_query(list(PG_KEEPALIVES)),
                            pool_size=pool_size, max_overflow=10, connect_args=connect_args)


def _begin_immediate(engine):
    """pysqlite's own transaction handling off; every transaction BEGIN IMMEDIATE.

    (SQLAlchemy's documented recipe for SQLite's locking modes.)
    """

    @sa.event.listens_for(engine, "connect")
    def _no_pysqlite_transactions(dbapi_connection, record):
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _immediate(connection):
        if not connection.get_execution_options().get("txmail_autocommit"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def unreachable(exc):
    """One line for a database that is not available (a restart, a lock: no traceback), or
    None for any other error (a bug: logged with its traceback)."""
    if isinstance(exc, sa.exc.OperationalError) or getattr(exc, "connection_invalidated",
                                                            False):
        text = str(getattr(exc, "orig", None) or exc).strip()
        return text.splitlines()[0] if text else exc.__class__.__name__
    return None


#: sqlstates of a missing table (42P01) or column (42703) on PostgreSQL.
_SCHEMA_STATES = ("42P01", "42703")
_SCHEMA_TEXTS = ("no such table", "no such column", "has no column named")
#: A missing-tables problem is logged at most once per this many seconds.
SCHEMA_LOG_INTERVAL = 60.0
_schema_logged = {}


def schema_problem(exc):
    """One line when ``exc`` says the outbox tables are missing or not ours (a
    configuration problem: no traceback), else None."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    orig = getattr(exc, "orig", None)
    text = str(orig or exc).strip()
    line = text.splitlines()[0] if text else exc.__class__.__name__
    if getattr(orig, "sqlstate", None) in _SCHEMA_STATES or any(
            t in line for t in _SCHEMA_TEXTS):
        return (f"the outbox tables are missing or not the ones this version uses "
                f"({line}): create or migrate them with `txmail-queue CONFIG_URI init-db` "
                "or the application's Alembic migrations (branch txmail)")
    return None


def log_error(what, where, exc):
    problem = schema_problem(exc)
    if problem is not None:
        last = _schema_logged.get(where)
        now = time.monotonic()
        if last is None or now - last >= SCHEMA_LOG_INTERVAL:
            _schema_logged[where] = now
            log.error("%s in %s: %s", what, where, problem)
        return
    why = unreachable(exc)
    if why is not None:
        log.error("%s in %s: the database is not available (%s)", what, where, why)
    else:
        log.exception("%s in %s", what, where)
