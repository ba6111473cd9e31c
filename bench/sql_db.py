"""The databases of the ``sql`` section: one private PostgreSQL per run, SQLite files.

The PostgreSQL is the tests' own :class:`pg_support.PgCluster` (initdb in a
temp dir as an unprivileged user, a free loopback port, ``fsync=on``, the
server's default settings otherwise), started when the section starts and
stopped when it ends: nothing system-wide is used or left running.  Each
measurement gets a fresh database in it, so that one part's dead rows and
caches never weigh on the next.

Filling an outbox is not measured, so it is done in bulk: one message is
written by :func:`pyramid_txmail.queue.sql.enqueue` (the row the application
writes, byte for byte), and the rest are copies of that row made by the
server (``INSERT ... SELECT ... generate_series``), then ``VACUUM ANALYZE``
-- what autovacuum would have done by the time a real queue is that full.
"""
from __future__ import annotations

import os
import sys
import uuid

from harness import RECIPIENT, ROOT, BenchError, strip_envelope

sys.path.insert(0, str(ROOT / "tests"))

SENDER_ADDRESS = "sender@example.com"

#: the outbox columns a copy of a row does not carry over (its own id, no claim)
NOT_COPIED = ("id", "claim_token", "claimed_by", "lease_until")


def message_bytes(ctx):
    """The ~2 KB message of every part: the very bytes our own path wrote into the
    spool that the spool's drains read (its envelope lines taken off)."""
    return strip_envelope(ctx.template())


class Postgres:
    """A private PostgreSQL for the section: ``with Postgres() as pg: url = pg.database()``."""

    def __init__(self):
        try:
            from pg_support import PgCluster, PgClusterError, PostgresMissing
        except ImportError as exc:  # SQLAlchemy/psycopg missing: the sql extra
            raise BenchError(f"the sql section needs the sql extra ({exc}): run "
                             "`make install`") from None
        self._errors = (PgClusterError, PostgresMissing)
        try:
            self.cluster = PgCluster(dbname="bench")
        except self._errors as exc:
            raise BenchError(str(exc).splitlines()[0]) from None

    def __enter__(self):
        try:
            self.cluster.start()
        except self._errors as exc:
            self.cluster.stop()
            raise BenchError(f"cannot start the benchmark's PostgreSQL: {exc}") from None
        return self

    def __exit__(self, *exc_info):
        self.cluster.stop()

    def database(self, label):
        """A fresh empty database; its SQLAlchemy URL."""
        return self.cluster.new_database(f"{label}_{uuid.uuid4().hex[:8]}")

    def drop(self, url):
        self.cluster.drop_database(url.rsplit("/", 1)[1])

    def cpu(self):
        """CPU seconds the server has used so far: the postmaster, its live children,
        and the children it has reaped (a backend's time lands there when its
        connection closes)."""
        pid = self.cluster.postmaster_pid
        total = _cpu_of(pid, children=True)
        for child in _children(pid):
            total += _cpu_of(child)
        return total

    def facts(self, engine):
        """``[(what, value)]`` about the server, for RESULTS.md."""
        import sqlalchemy as sa

        with engine.connect() as connection:
            show = {name: connection.exec_driver_sql(f"SHOW {name}").scalar()
                    for name in ("server_version", "fsync", "synchronous_commit",
                                 "shared_buffers", "wal_level")}
        import machine

        fstype, device, mount = machine.filesystem_of(self.cluster.datadir)
        return [("PostgreSQL", f"{show['server_version']} (Debian's binaries, a private "
                 f"cluster of this run; fsync={show['fsync']}, synchronous_commit="
                 f"{show['synchronous_commit']}, shared_buffers={show['shared_buffers']}, "
                 "otherwise the defaults)"),
                ("its data directory", f"{fstype} on {device} (mounted at {mount}), like "
                 f"the spools: {self.cluster.datadir}"),
                ("SQLAlchemy, psycopg", f"{sa.__version__}, {_version('psycopg')}")]


def _version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _stat_fields(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def _cpu_of(pid, children=False):
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(entry)
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def engine_for(url):
    import sqlalchemy as sa

    return sa.create_engine(url)


def autocommit_sql(engine, sql):
    """Run ``sql`` outside a transaction (VACUUM must)."""
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(sql)


def copy_rows(connection, source_id, count, state_sql="state", extra=None):
    """``count`` copies of outbox row ``source_id``, made by the server.

    ``state_sql`` and ``extra`` (column -> SQL expression over the series
    value ``g``) change what a copy is: a delivered or failed history row, a
    deferred row not due yet.
    """
    from pyramid_txmail.queue.sql import outbox

    if count <= 0:
        return
    copied = [c.name for c in outbox.columns if c.name not in NOT_COPIED]
    values = dict({c: c for c in copied}, state=state_sql, **(extra or {}))
    columns = ", ".join(copied)
    select = ", ".join(f"{values[c]} AS {c}" for c in copied)
    connection.exec_driver_sql(
        f"INSERT INTO txmail_outbox ({columns}) SELECT {select} FROM txmail_outbox "
        f"CROSS JOIN generate_series(1, {int(count)}) AS g WHERE id = {int(source_id)}")


def fill_queued(ctx, engine, count):
    """``count`` queued messages: one through ``enqueue``, the rest server-side copies."""
    from pyramid_txmail.queue.sql import enqueue

    with engine.begin() as connection:
        first = enqueue(connection, SENDER_ADDRESS, [RECIPIENT], message_bytes(ctx))
        copy_rows(connection, first, count - 1)
    autocommit_sql(engine, "VACUUM ANALYZE txmail_outbox")


def states(engine):
    """``{state: rows}`` of the outbox."""
    with engine.connect() as connection:
        return dict(connection.exec_driver_sql(
            "SELECT state, count(*) FROM txmail_outbox GROUP BY state").all())


def check_delivered(engine, count, what):
    found = states(engine)
    if found != {"delivered": count}:
        raise BenchError(f"{what}: the outbox holds {found}, expected {count} delivered")
