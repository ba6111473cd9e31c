"""The private PostgreSQL of tests/pg_support.py does what the SQL outbox tests rely on.

A real cluster each time: SQLAlchemy through psycopg 3 reaches it, LISTEN/NOTIFY
round-trips, a restart keeps committed data on the same port, a SIGKILL is a crash that
loses only what was not committed, and after ``stop()`` neither a process nor a file is
left.  Missing binaries fail the fixture with a hint to run ``make test``; never a skip.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from .pg_support import PgCluster, PostgresMissing, _children

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _uid_of(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def _pgrep(pattern):
    """Pids of processes whose command line contains ``pattern`` (pgrep -f)."""
    proc = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(pid) for pid in proc.stdout.split()]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sqlalchemy_with_psycopg_reaches_a_private_server(pg_cluster, pg_url):
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.dialect.driver == "psycopg"
            assert conn.scalar(sa.text("SELECT current_database()")) == pg_url.rsplit("/", 1)[1]
            assert conn.scalar(sa.text("SHOW fsync")) == "on"
            assert conn.scalar(sa.text("SHOW listen_addresses")) == "127.0.0.1"
            assert conn.scalar(sa.text("SHOW server_version")).split(".")[0] == \
                os.path.basename(os.path.dirname(pg_cluster.bindir))
            # a fresh database: no tables of an earlier test
            assert conn.scalar(sa.text(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")) == 0
    finally:
        engine.dispose()
    assert pg_cluster.tempdir in pg_cluster.datadir
    assert _uid_of(pg_cluster.postmaster_pid) != 0  # never the superuser's server


def test_each_test_gets_its_own_database_dropped_afterwards(pg_cluster):
    first = pg_cluster.new_database("t_support_a")
    second = pg_cluster.new_database("t_support_b")
    assert first != second
    engine = sa.create_engine(first)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_in_a (id int)"))
        with engine.connect():  # an open connection does not stop the drop
            pg_cluster.drop_database("t_support_a")
    finally:
        engine.dispose()
    pg_cluster.drop_database("t_support_b")
    admin = sa.create_engine(pg_cluster.url_for("postgres"))
    try:
        with admin.connect() as conn:
            names = conn.scalars(sa.text("SELECT datname FROM pg_database")).all()
    finally:
        admin.dispose()
    assert "t_support_a" not in names and "t_support_b" not in names


def test_listen_notify_round_trips_between_two_connections(pg_url):
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as listener:
            listener.exec_driver_sql("LISTEN txmail_outbox")
            with engine.begin() as sender:
                sender.execute(sa.text("SELECT pg_notify('txmail_outbox', 'row 42')"))
            # timeout bounds the wait should the notification never come; not a measurement
            driver = listener.connection.driver_connection
            received = list(driver.notifies(timeout=30, stop_after=1))
    finally:
        engine.dispose()
    assert [(n.channel, n.payload) for n in received] == [("txmail_outbox", "row 42")]


def test_restart_keeps_committed_data_on_the_same_port():
    with PgCluster() as cluster:
        port = cluster.port
        engine = sa.create_engine(cluster.url, pool_pre_ping=True)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE TABLE kept (v text)"))
                conn.execute(sa.text("INSERT INTO kept VALUES ('before restart')"))
            old_pid = cluster.postmaster_pid
            cluster.restart()
            assert cluster.port == port
            assert cluster.postmaster_pid != old_pid
            with engine.connect() as conn:  # the pool's stale connection is replaced
                assert conn.scalars(sa.text("SELECT v FROM kept")).all() == ["before restart"]
        finally:
            engine.dispose()


def test_kill_is_a_crash_that_keeps_only_committed_rows():
    with PgCluster() as cluster:
        engine = sa.create_engine(cluster.url, pool_pre_ping=True)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE TABLE t (v text)"))
                conn.execute(sa.text("INSERT INTO t VALUES ('committed')"))
            open_tx = engine.connect()
            open_tx.begin()
            open_tx.execute(sa.text("INSERT INTO t VALUES ('in flight')"))
            backends = [cluster.postmaster_pid, *_children(cluster.postmaster_pid)]
            assert len(backends) > 1
            cluster.kill()
            assert not any(_alive(pid) for pid in backends)
            assert _pgrep(cluster.datadir) == []
            open_tx.invalidate()
            cluster.restart()  # nothing to stop after a kill: crash recovery, same port
            with engine.connect() as conn:
                assert conn.scalars(sa.text("SELECT v FROM t")).all() == ["committed"]
        finally:
            engine.dispose()


def test_stop_leaves_no_process_and_no_files():
    cluster = PgCluster()
    try:
        cluster.start()
        engine = sa.create_engine(cluster.url)
        conn = engine.connect()  # a backend process that stop() must end too
        conn.execute(sa.text("SELECT 1"))
        postmaster = cluster.postmaster_pid
        server_pids = [postmaster, *subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()]
        assert len(server_pids) > 1
        assert postmaster in _pgrep(cluster.datadir)
    finally:
        cluster.stop()
    conn.invalidate()
    engine.dispose()
    assert not os.path.exists(cluster.tempdir)
    assert _pgrep(cluster.datadir) == []
    assert not any(_alive(int(pid)) for pid in server_pids)
    cluster.stop()  # twice is harmless


def test_missing_binaries_raise_with_the_make_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("TXMAIL_PG_BINDIR", str(tmp_path))
    with pytest.raises(PostgresMissing, match="run `make test`"):
        PgCluster()


def test_missing_binaries_fail_the_fixture_never_skip(tmp_path):
    """A run without PostgreSQL errors out with the hint; it is not a quiet skip."""
    (tmp_path / "conftest.py").write_text(
        "from tests.pg_support import pg_cluster, pg_url  # noqa: F401\n")
    (tmp_path / "test_needs_pg.py").write_text(textwrap.dedent("""
        def test_uses_pg(pg_url):
            pass
    """))
    env = {**os.environ, "TXMAIL_PG_BINDIR": str(tmp_path / "nothing"),
           "PYTHONPATH": REPO}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
         "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 error" in proc.stdout and "skipped" not in proc.stdout, proc.stdout
    assert "run `make test`" in proc.stdout, proc.stdout
