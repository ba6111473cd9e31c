"""txmail-qp and txmail-queue on the SQL outbox: real processes, real databases.

Each test runs on SQLite (a file) and on a private PostgreSQL
(:mod:`tests.pg_support`): messages are enqueued in committed transactions
(:func:`pyramid_txmail.queue.sql.enqueue`), and the real ``txmail-qp`` and
``txmail-queue`` console scripts, run as subprocesses against an ini with
``mail.queue_url``, deliver them to aiosmtpd servers on 127.0.0.1 (the fault
server for refusals) and report on them with the spool's output and JSON keys.
"""
from __future__ import annotations

import configparser
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from sqlalchemy.engine import make_url

from pyramid_txmail.queue.sql import SQLQueue, enqueue, init_db

from .faultserver import fault_server
from .sql_support import db_url  # noqa: F401 (fixture)
from .test_daemon import received, wait_until
from .test_queue_cli import enqueue as spool_enqueue
from .test_queue_cli import send_pass as spool_pass

BIN = os.path.dirname(sys.executable)
QP = os.path.join(BIN, "txmail-qp")
QUEUE = os.path.join(BIN, "txmail-queue")
SENDER = "sender@example.org"
WAIT = 30.0  # generous: a loaded machine, never a speed target


def write_ini(tmp_path, url, server, extra=""):
    path = tmp_path / "app.ini"
    path.write_text(textwrap.dedent(f"""\
        [app:main]
        mail.queue_url = {url}
        mail.host = {server.host}
        mail.port = {server.port}
        mail.timeout = 30
        """) + ("" if "retry_initial" in extra else "mail.retry_initial = 5m\n")
        + textwrap.dedent(extra))
    return str(path)


def run(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


def create_tables(ini):
    """The outbox tables for a test whose subject is not ``init-db``: made in this
    process (``init_db``, what ``txmail-queue INI init-db`` runs), from the ini's own
    ``mail.queue_url``.  A console script costs ~1 s of CPU to start; ``init-db`` itself
    is run as one by the tests about it (the ``outbox`` fixture, the password test, the
    two tests of an outbox without its tables)."""
    queue = SQLQueue(_ini_value(ini, "mail.queue_url"))
    try:
        init_db(queue.engine)
    finally:
        queue.close()


def _ini_value(ini, key):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini)
    return parser["app:main"][key]


def queue_json(ini, *args):
    proc = run(QUEUE, ini, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def put(url, to, n=1, subject="hello"):
    """``n`` messages to ``to``, each committed in a transaction of its own."""
    queue = SQLQueue(url)
    ids = []
    try:
        for i in range(n):
            mid = f"<{subject}-{i}-{time.monotonic_ns()}@example.org>"
            data = (f"From: {SENDER}\r\nTo: {', '.join(to)}\r\nSubject: {subject} {i}\r\n"
                    f"Message-ID: {mid}\r\n\r\nbody {i}\r\n").encode()
            with queue.engine.begin() as connection:
                ids.append(enqueue(connection, SENDER, list(to), data))
    finally:
        queue.close()
    return ids


@pytest.fixture
def outbox(tmp_path, db_url, smtp_server):
    """An ini on an initialised outbox (through ``txmail-queue init-db``)."""
    ini = write_ini(tmp_path, db_url, smtp_server)
    proc = run(QUEUE, ini, "init-db")
    assert proc.returncode == 0, proc.stderr
    assert "the SQL outbox's tables are ready in" in proc.stdout
    return ini


# -- one pass ------------------------------------------------------------------------------

def test_init_db_twice_changes_nothing(outbox, db_url):
    proc = run(QUEUE, outbox, "init-db")
    assert proc.returncode == 0, proc.stderr
    assert queue_json(outbox, "status")["queued"] == 0


def test_one_pass_delivers_every_committed_message(outbox, db_url, smtp_server):
    put(db_url, ["a@example.org", "b@example.net"], n=3)
    assert queue_json(outbox, "status")["queued"] == 3
    proc = run(QP, outbox, "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert "sent=3 deferred=0 failed=0" in proc.stderr
    assert sorted(received(smtp_server).values()) == [1] * 6
    status = queue_json(outbox, "status")
    assert (status["queued"], status["in_progress"], status["failed"]) == (0, 0, 0)
    assert run(QP, outbox, "--no-app").returncode == 0
    assert len(smtp_server.messages) == 3  # never again


def test_the_password_in_the_url_is_never_printed(tmp_path, pg_url, smtp_server):
    """The test cluster trusts loopback connections, so the password is not checked:
    every command works, and none of them shows it."""
    url = make_url(pg_url).set(password="S3cret-Pw").render_as_string(hide_password=False)
    ini = write_ini(tmp_path, url, smtp_server)
    create_tables(ini)
    put(url, ["a@example.org"])
    for argv in ([QUEUE, ini, "init-db"], [QP, ini, "--no-app", "-v"],
                 [QUEUE, ini, "status"], [QUEUE, ini, "list", "--json"]):
        proc = run(*argv)
        assert proc.returncode == 0, proc.stderr
        assert "S3cret-Pw" not in proc.stdout + proc.stderr
        assert "***" in proc.stdout + proc.stderr or argv[-1] == "--json"
    assert len(smtp_server.messages) == 1


# -- deferral, retry and dead letters through the fault server ----------------------------

REFUSING = {"rcpt": {"later@example.org": "451 4.3.0 mailbox busy, try later",
                     "gone@example.org": "550 5.1.1 no such user here"}}


def test_deferral_dead_letters_retry_and_purge(tmp_path, db_url, make_smtp_server):
    server = fault_server(make_smtp_server, dict(REFUSING))
    ini = write_ini(tmp_path, db_url, server)
    create_tables(ini)
    [ident] = put(db_url, ["ok@example.org", "later@example.org", "gone@example.org"])
    proc = run(QP, ini, "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert "sent=0 deferred=1 failed=1" in proc.stderr
    status = queue_json(ini, "status")
    assert (status["deferred"], status["failed"], status["queued"]) == (1, 1, 0)

    listed = {m["state"]: m for m in queue_json(ini, "list")}
    assert listed["deferred"]["id"] == str(ident)
    assert listed["deferred"]["to"] == ["ok@example.org", "later@example.org",
                                        "gone@example.org"]
    assert listed["deferred"]["attempts"] == 1 and listed["deferred"]["next_attempt"]
    assert "451" in listed["deferred"]["last_error"]
    dead = listed["failed"]
    assert dead["to"] == ["gone@example.org"] and "550" in dead["last_error"]
    shown = queue_json(ini, "show", dead["id"])
    assert shown["meta"]["dead_letter_of"] == str(ident) and "550" in shown["meta"]["reason"]

    # the deferred message: due now by hand, the relay healed -- only "later" is asked
    server.handler.heal()
    proc = run(QUEUE, ini, "retry", str(ident))
    assert proc.returncode == 0, proc.stderr
    assert run(QP, ini, "--no-app").returncode == 0
    copies = server.handler.copies()
    assert {rcpt: n for (rcpt, mid), n in copies.items()} == {
        "ok@example.org": 1, "later@example.org": 1}

    # the dead letter: retried, it goes to "gone" alone
    assert run(QUEUE, ini, "retry", "--all-failed").returncode == 0
    assert run(QP, ini, "--no-app").returncode == 0
    assert server.handler.messages[-1].rcpt_tos == ["gone@example.org"]
    status = queue_json(ini, "status")
    assert (status["queued"], status["deferred"], status["failed"]) == (0, 0, 0)


def test_purge_removes_dead_letters_only_when_asked(tmp_path, db_url, make_smtp_server):
    server = fault_server(make_smtp_server, dict(REFUSING))
    ini = write_ini(tmp_path, db_url, server)
    create_tables(ini)
    put(db_url, ["gone@example.org"], n=2)
    assert run(QP, ini, "--no-app").returncode == 0
    assert queue_json(ini, "status")["failed"] == 2
    proc = run(QUEUE, ini, "purge", "--state", "failed", "--all", "--dry-run")
    assert proc.returncode == 0 and "would remove 2 messages from failed/" in proc.stdout
    assert queue_json(ini, "status")["failed"] == 2
    refused = run(QUEUE, ini, "purge", "--state", "queued", "--all")
    assert refused.returncode == 2 and "refusing to purge new/" in refused.stderr
    proc = run(QUEUE, ini, "purge", "--state", "failed", "--all")
    assert proc.returncode == 0 and "removed 2 messages from failed/" in proc.stdout
    assert queue_json(ini, "status")["failed"] == 0


def test_the_json_keys_are_the_spool_s(tmp_path, db_url, make_smtp_server):
    """status, list and show --json: the same keys on the outbox as on a spool."""
    server = fault_server(make_smtp_server, dict(REFUSING))
    ini = write_ini(tmp_path, db_url, server)
    create_tables(ini)
    put(db_url, ["later@example.org"])
    assert run(QP, ini, "--no-app").returncode == 0

    from pyramid_txmail.queue.maildir.spool import Spool
    spool = Spool(str(tmp_path / "spool"))
    spool_enqueue(spool, ["later@example.org"], "<spool-1@example.org>")
    server.handler.script.update(REFUSING)
    spool_pass(spool, server)
    spool_ini = tmp_path / "spool.ini"
    spool_ini.write_text(f"[app:main]\nmail.queue_path = {spool.path}\n")

    sql, disk = queue_json(ini, "status"), queue_json(str(spool_ini), "status")
    assert set(sql) >= set(disk) and set(sql["states"]) == set(disk["states"])
    [sql_msg], [disk_msg] = queue_json(ini, "list"), queue_json(str(spool_ini), "list")
    assert set(sql_msg) == set(disk_msg)
    assert set(queue_json(ini, "show", sql_msg["id"])) == set(
        queue_json(str(spool_ini), "show", disk_msg["id"]))


def test_release_puts_back_a_claim_of_a_dead_processor(tmp_path, db_url, smtp_server):
    """A claim whose lease ran out (its processor was killed) goes back with
    ``release --stale``; a live one is refused without --force."""
    ini = write_ini(tmp_path, db_url, smtp_server, "mail.claim_timeout = 1s\n")
    create_tables(ini)
    [ident] = put(db_url, ["a@example.org"])
    queue = SQLQueue(db_url, claim_timeout=1.0)
    try:
        from pyramid_txmail.processor.pass_stats import PassStats
        [claimed] = list(queue.candidates(time.time(), 10 ** 9, PassStats()))
    finally:
        queue.close()
    assert queue_json(ini, "status")["in_progress"] == 1
    wait_until(lambda: "1 stale claim" in run(QUEUE, ini, "release", "--stale").stdout,
               WAIT, "the lease to run out")
    assert queue_json(ini, "status")["queued"] == 1
    assert run(QP, ini, "--no-app").returncode == 0
    assert len(smtp_server.messages) == 1


# -- the daemon --------------------------------------------------------------------------

def start_daemon(ini, tmp_path, *args):
    log_path = tmp_path / "daemon.log"
    stream = open(log_path, "ab")
    proc = subprocess.Popen([QP, ini, "--no-app", "--daemon", "-v", *args], stdout=stream,
                            stderr=subprocess.STDOUT)
    stream.close()
    proc.log_path = log_path
    return proc


def log_of(proc):
    return proc.log_path.read_text()


@pytest.fixture
def daemons():
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_daemon_is_woken_by_the_commit_on_postgresql(tmp_path, pg_url, smtp_server,
                                                          daemons):
    """LISTEN/NOTIFY: the pass that sends the message was started by the watcher's
    "mail" (the commit's notification), not by a timer: the poll interval is an
    hour and no retry or claim is due, so no timer could have started it."""
    ini = write_ini(tmp_path, pg_url, smtp_server, "mail.poll_interval = 1h\n")
    create_tables(ini)
    proc = start_daemon(ini, tmp_path)
    daemons.append(proc)
    wait_until(lambda: "daemon started on" in log_of(proc), WAIT, "the daemon to start")
    assert "LISTEN" in log_of(proc) or "listen" in log_of(proc).lower()
    wait_until(lambda: "woke up" in log_of(proc) or "pass over" in log_of(proc), WAIT,
               "the first pass")
    before = log_of(proc)
    [ident] = put(pg_url, ["a@example.org"])
    wait_until(lambda: len(smtp_server.messages) == 1, WAIT, "the message to be sent")
    woke = log_of(proc)[len(before):]
    assert "woke up after at most" in woke and woke.split("woke up after at most", 1)[1] \
        .split("\n", 1)[0].endswith(": mail")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert "daemon stopped" in log_of(proc)


def test_an_uncommitted_message_does_not_wake_the_daemon(tmp_path, pg_url, smtp_server,
                                                         daemons):
    """NOTIFY is delivered at the commit: a rolled-back enqueue is never sent."""
    ini = write_ini(tmp_path, pg_url, smtp_server, "mail.poll_interval = 1h\n")
    create_tables(ini)
    proc = start_daemon(ini, tmp_path)
    daemons.append(proc)
    wait_until(lambda: "daemon started on" in log_of(proc), WAIT, "the daemon to start")
    queue = SQLQueue(pg_url)
    try:
        with queue.engine.connect() as connection:
            with connection.begin() as tx:
                enqueue(connection, SENDER, ["rolled@example.org"],
                        b"Subject: no\r\nMessage-ID: <no@example.org>\r\n\r\nno\r\n")
                tx.rollback()
    finally:
        queue.close()
    [ident] = put(pg_url, ["a@example.org"])
    wait_until(lambda: len(smtp_server.messages) == 1, WAIT, "the committed message")
    assert [m.rcpt_tos for m in smtp_server.messages] == [["a@example.org"]]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_the_daemon_polls_sqlite(tmp_path, sqlite_url, smtp_server, daemons):
    ini = write_ini(tmp_path, sqlite_url, smtp_server, "mail.poll_interval = 0.2s\n")
    create_tables(ini)
    proc = start_daemon(ini, tmp_path)
    daemons.append(proc)
    wait_until(lambda: "daemon started on" in log_of(proc), WAIT, "the daemon to start")
    assert "polling" in log_of(proc)
    put(sqlite_url, ["a@example.org"], n=2)
    wait_until(lambda: len(smtp_server.messages) == 2, WAIT, "both messages to be sent")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0


def test_the_daemon_retries_a_deferred_message_when_it_is_due(tmp_path, db_url,
                                                              make_smtp_server, daemons):
    """The timer (the outbox's next_due) wakes the daemon for the retry: the poll
    interval is an hour and no new mail arrives."""
    server = fault_server(make_smtp_server, {"rcpt": ["451 4.3.0 try later", "250 OK"]})
    ini = write_ini(tmp_path, db_url, server, "mail.retry_initial = 1s\n"
                    "mail.retry_max = 2s\nmail.poll_interval = 1h\n")
    create_tables(ini)
    [ident] = put(db_url, ["a@example.org"])
    proc = start_daemon(ini, tmp_path)
    daemons.append(proc)
    wait_until(lambda: len(server.handler.messages) == 1, WAIT, "the retried message")
    wait_until(lambda: queue_json(ini, "status")["deferred"] == 0, WAIT, "no deferred mail")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    log = log_of(proc)
    assert "deferred=1" in log and "sent=1" in log
    assert server.handler.refused("a@example.org") == [451]


def test_a_database_that_cannot_be_reached_is_one_clear_line(tmp_path, smtp_server):
    """txmail-queue names the setting and the reason; no traceback, no password."""
    from .pg_support import free_port
    url = f"postgresql://mailer:S3cret-Pw@127.0.0.1:{free_port()}/nowhere"
    ini = write_ini(tmp_path, url, smtp_server)
    for command in (["init-db"], ["status"], ["list", "--json"]):
        proc = run(QUEUE, ini, *command)
        assert proc.returncode == 1, proc.stderr
        [line] = proc.stderr.splitlines()
        assert line.startswith("txmail-queue: error: the database of mail.queue_url "
                               "(postgresql://mailer:***@127.0.0.1:")
        assert "is not available" in line and "Connection refused" in line
        assert "S3cret-Pw" not in proc.stdout + proc.stderr


def test_an_outbox_without_its_tables_says_to_run_init_db(tmp_path, db_url, smtp_server):
    ini = write_ini(tmp_path, db_url, smtp_server)
    proc = run(QUEUE, ini, "status")
    assert proc.returncode == 78, proc.stderr
    [line] = proc.stderr.splitlines()
    assert "has no outbox tables" in line and "txmail-queue CONFIG_URI init-db" in line
    assert run(QUEUE, ini, "init-db").returncode == 0
    assert run(QUEUE, ini, "status").returncode == 0


def test_status_names_the_outbox_url_not_a_spool(tmp_path, pg_url, smtp_server):
    """The first line of ``status`` on the outbox is its URL with the password hidden; the
    JSON keeps ``spool`` for old readers and has ``queue`` and ``backend`` beside it."""
    url = make_url(pg_url).set(password="S3cret-Pw").render_as_string(hide_password=False)
    ini = write_ini(tmp_path, url, smtp_server)
    create_tables(ini)
    proc = run(QUEUE, ini, "status")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("queue: postgresql+psycopg://") and "***" in first, first
    assert "spool" not in proc.stdout and "tmp/" not in proc.stdout, proc.stdout
    status = queue_json(ini, "status")
    assert status["spool"] == status["queue"] and status["backend"] == "sql"
    assert "S3cret-Pw" not in proc.stdout + json.dumps(status)


def test_txmail_qp_on_an_outbox_without_tables_says_to_run_init_db_once(
        tmp_path, sqlite_url, smtp_server, daemons):
    """One pass: one line naming init-db, exit 78 (as txmail-queue).  A daemon: that
    line once, no "no such table" per step, and it starts once init-db has run."""
    ini = write_ini(tmp_path, sqlite_url, smtp_server, "mail.poll_interval = 0.2s\n")
    proc = run(QP, ini, "--no-app")
    assert proc.returncode == 78, proc.stderr
    [line] = proc.stderr.splitlines()
    assert "has no outbox tables" in line and "txmail-queue CONFIG_URI init-db" in line, line
    daemon = start_daemon(ini, tmp_path)
    daemons.append(daemon)
    wait_until(lambda: "has no outbox tables" in log_of(daemon), WAIT, "the daemon to say so")
    assert run(QUEUE, ini, "init-db").returncode == 0
    put(sqlite_url, ["a@example.org"])
    wait_until(lambda: len(smtp_server.messages) == 1, WAIT, "the message to be sent")
    daemon.send_signal(signal.SIGINT)
    assert daemon.wait(timeout=60) == 0
    text = log_of(daemon)
    assert text.count("has no outbox tables") == 1, text
    assert "no such table" not in text, text
    assert "Traceback" not in text
