"""A private PostgreSQL cluster for the tests, and the fixtures that hand it out.

Why private: the SQL outbox is tested against a real server (claims with SKIP LOCKED,
LISTEN/NOTIFY, restarts and crashes under a running daemon), but nothing system-wide may
be configured, used or left running.  So ``PgCluster`` runs Debian's own binaries
(``make postgresql`` installs them) on a data directory in a temp dir of its own, on a
free loopback port, with its socket in that temp dir and trust authentication for
loopback only, and removes everything again on ``stop()``.

initdb and postgres refuse to run as root, and the suite runs as root here and in CI:
then they run as an existing unprivileged account (``postgres``, which Debian's package
creates, else ``nobody``) through ``runuser``, and the temp dir belongs to it.

One cluster serves the whole session (``pg_cluster``; one initdb, ~1-2 s) and each test
gets a fresh, empty database in it (``pg_url``).  A test that restarts or kills the
server makes its own ``PgCluster`` so that it cannot disturb the others.
"""
from __future__ import annotations

import atexit
import glob
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

log = logging.getLogger(__name__)

#: where Debian installs the server binaries, one directory per major version
PG_LIB = "/usr/lib/postgresql"
#: an override for other systems: a directory holding initdb, pg_ctl and postgres
BINDIR_ENV = "TXMAIL_PG_BINDIR"
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
#: the cluster's superuser, which the tests connect as (trust auth, loopback only)
SUPERUSER = "txmail"
#: how long pg_ctl may wait for the server to start or stop (a bound, not a measurement)
PG_CTL_WAIT = 60

_LIVE: set = set()  # clusters still running, stopped at interpreter exit at the latest


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


class PgClusterError(RuntimeError):
    """initdb or pg_ctl failed; the message carries the command and the server log's tail."""


def find_bindir() -> str:
    """The directory of initdb/pg_ctl/postgres: the newest Debian version, or $TXMAIL_PG_BINDIR."""
    override = os.environ.get(BINDIR_ENV)
    candidates = [override] if override else sorted(
        glob.glob(os.path.join(PG_LIB, "*", "bin")),
        key=lambda path: _version_key(os.path.basename(os.path.dirname(path))), reverse=True)
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, name), os.X_OK) for name in SERVER_BINARIES):
            return bindir
    where = f"{BINDIR_ENV}={override}" if override else f"{PG_LIB}/*/bin"
    raise PostgresMissing(
        f"PostgreSQL server binaries ({', '.join(SERVER_BINARIES)}) not found in {where}: "
        "run `make test` (its `postgresql` target installs Debian's postgresql), "
        "or `make postgresql` alone")


def _version_key(name: str):
    return tuple(int(part) if part.isdigit() else 0 for part in name.split("."))


def _unprivileged_account():
    """The account initdb/postgres run as when we are root: (name, uid, gid)."""
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return name, entry.pw_uid, entry.pw_gid
    raise PgClusterError(
        "running as root, and neither the account 'postgres' nor 'nobody' exists to run "
        "initdb/postgres as (they refuse root): install Debian's postgresql (make postgresql)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list:
    """Pids whose parent is ``pid`` (the postmaster's backends and helpers), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


class PgCluster:
    """A PostgreSQL cluster of its own: ``with PgCluster() as pg: engine = create_engine(pg.url)``.

    ``start()`` runs initdb (once) and starts the server; ``stop()`` stops it and removes
    the temp dir; ``restart()`` stops it (fast mode) and starts it again on the same port
    and data directory; ``kill()`` SIGKILLs the server processes (a crash: ``start()``
    then runs crash recovery).  ``new_database()`` / ``drop_database()`` make and remove
    empty databases.
    """

    def __init__(self, dbname: str = "txmail"):
        self.bindir = find_bindir()
        self.dbname = dbname
        self.port = None
        self.postmaster_pid = None
        self.run_as = [] if os.geteuid() != 0 else self._runuser()
        self.tempdir = tempfile.mkdtemp(prefix="txmail-pg-")
        self.datadir = os.path.join(self.tempdir, "data")
        self.logfile = os.path.join(self.tempdir, "server.log")
        if self.run_as:
            os.chown(self.tempdir, self._uid, self._gid)
        self._initialized = False

    def _runuser(self):
        name, self._uid, self._gid = _unprivileged_account()
        if shutil.which("runuser"):
            return ["runuser", "-u", name, "--"]
        return ["setpriv", f"--reuid={self._uid}", f"--regid={self._gid}", "--init-groups"]

    # -- addresses --------------------------------------------------------------------
    @property
    def url(self) -> str:
        """SQLAlchemy URL of the cluster's default database."""
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def conninfo(self, dbname: str | None = None) -> str:
        """A libpq connection string, for psycopg without SQLAlchemy."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname or self.dbname}"

    # -- life cycle -------------------------------------------------------------------
    def start(self):
        if not self._initialized:
            self._initdb()
        if self.port is not None:  # a restart: the same port, or a clear error
            self._pg_ctl_start(self.port)
        else:
            for attempt in range(5):  # another process may take the free port meanwhile
                port = free_port()
                try:
                    self._pg_ctl_start(port)
                    break
                except PgClusterError as exc:
                    if "could not bind" not in str(exc) or attempt == 4:
                        raise
                    log.info("port %s was taken before the server bound it: another", port)
            self.port = port
            self._create_database(self.dbname)
        _LIVE.add(self)
        return self

    def stop(self):
        """Stop the server (fast mode) and remove the temp dir; safe to call twice."""
        try:
            if self.postmaster_pid is not None:
                try:
                    self._run([self._bin("pg_ctl"), "-D", self.datadir, "-m", "fast", "-w",
                               "-t", str(PG_CTL_WAIT), "stop"])
                    self.postmaster_pid = None
                except PgClusterError:
                    log.warning("pg_ctl stop failed for %s; killing the server", self.datadir)
                    self.kill()
        finally:
            _LIVE.discard(self)
            shutil.rmtree(self.tempdir, ignore_errors=True)

    def restart(self):
        """Stop (fast mode) and start again on the same port and data directory.

        After ``kill()`` there is nothing to stop: it only starts (crash recovery).
        """
        if self.postmaster_pid is not None:
            self._run([self._bin("pg_ctl"), "-D", self.datadir, "-m", "fast", "-w",
                       "-t", str(PG_CTL_WAIT), "stop"])
            self.postmaster_pid = None
        return self.start()

    def kill(self):
        """SIGKILL the postmaster and its children, as a crash would; wait until they are gone."""
        if self.postmaster_pid is None:
            return
        pids = [self.postmaster_pid, *_children(self.postmaster_pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + PG_CTL_WAIT
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if os.path.exists(f"/proc/{self.postmaster_pid}"):
            # A zombie until init reaps it (the postmaster was reparented when pg_ctl
            # exited), and init may take its time.  The next postmaster would take the
            # zombie's pid in the lock files for a live server and refuse to start;
            # every process of this server is dead, so they are stale: remove them.
            stale = [os.path.join(self.datadir, "postmaster.pid"),
                     *glob.glob(os.path.join(glob.escape(self.tempdir), ".s.PGSQL.*.lock"))]
            for path in stale:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        self.postmaster_pid = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()  # no temp dir or half-started server left behind
            raise

    def __exit__(self, *exc_info):
        self.stop()

    # -- databases --------------------------------------------------------------------
    def new_database(self, name: str) -> str:
        """Create an empty database (from template0) and return its SQLAlchemy URL."""
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url_for(name)

    def drop_database(self, name: str):
        """Drop a database, ending the connections a test left open to it."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- internals --------------------------------------------------------------------
    def _bin(self, name):
        return os.path.join(self.bindir, name)

    def _run(self, argv):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        proc = subprocess.run(self.run_as + argv, cwd=self.tempdir, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PgClusterError(
                f"{' '.join(map(shlex.quote, argv))} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}\n{self._log_tail()}")
        return proc

    def _log_tail(self, lines=20):
        try:
            with open(self.logfile, errors="replace") as handle:
                tail = handle.readlines()[-lines:]
        except OSError:
            return ""
        return f"--- last lines of {self.logfile}:\n" + "".join(tail)

    def _initdb(self):
        # --no-sync: initdb's own final flush only matters if the OS crashes right after;
        # the server itself runs with fsync=on, which the durability tests rely on.
        self._run([self._bin("initdb"), "-D", self.datadir, "-U", SUPERUSER,
                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])
        # trust, but only over the private socket directory and 127.0.0.1
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w") as hba:
            hba.write("local all all trust\n"
                      "host all all 127.0.0.1/32 trust\n")
        self._initialized = True

    def _pg_ctl_start(self, port):
        options = (f"-k {shlex.quote(self.tempdir)} -p {port} "
                   "-c listen_addresses=127.0.0.1 -c fsync=on")
        self._run([self._bin("pg_ctl"), "-D", self.datadir, "-l", self.logfile, "-w",
                   "-t", str(PG_CTL_WAIT), "-o", options, "start"])
        with open(os.path.join(self.datadir, "postmaster.pid")) as pidfile:
            self.postmaster_pid = int(pidfile.readline())

    def _create_database(self, name):
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')

    def _admin(self, sql):
        import psycopg

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql)


@atexit.register
def _stop_live_clusters():
    for cluster in list(_LIVE):
        cluster.stop()


# -- fixtures (registered in tests/conftest.py) -----------------------------------------
@pytest.fixture(scope="session")
def pg_cluster():
    """One private PostgreSQL for the whole run; stopped at the end, even on failure or ^C."""
    try:
        cluster = PgCluster()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster):
    """SQLAlchemy URL of a fresh, empty PostgreSQL database, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = pg_cluster.new_database(name)
    yield url
    pg_cluster.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path):
    """SQLAlchemy URL of an SQLite database file in the test's tmp_path."""
    return f"sqlite:///{tmp_path / 'txmail.sqlite'}"
