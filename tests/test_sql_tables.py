"""Missing or incompatible outbox tables are a configuration problem, said in
one line: ``init-db`` refuses (exit 78) to call a table of another shape
"ready", ``txmail-qp`` exits 78 for one pass, and a daemon's passes say it at
most once a minute -- never a traceback."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import sqlalchemy as sa

from pyramid_txmail.processor.pass_stats import PassStats
from pyramid_txmail.queue.sql import SQLQueue, outbox_chunk

from .sql_support import db_url, settings  # noqa: F401

BIN = os.path.dirname(sys.executable)
QP = os.path.join(BIN, "txmail-qp")
QUEUE = os.path.join(BIN, "txmail-queue")


def write_ini(tmp_path, url):
    path = tmp_path / "app.ini"
    path.write_text(textwrap.dedent(f"""\
        [app:main]
        mail.queue_url = {url}
        mail.host = 127.0.0.1
        mail.port = 1
        """))
    return str(path)


def run(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


def old_table(url, with_chunks=False):
    """A txmail_outbox of another shape (and, if asked, our chunk table beside it)."""
    engine = SQLQueue(url).engine
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE txmail_outbox (id INTEGER PRIMARY KEY, "
                                   "state VARCHAR(20) NOT NULL, payload TEXT NOT NULL)")
        if with_chunks:
            outbox_chunk.create(connection)
    engine.dispose()


def test_init_db_refuses_an_incompatible_table_and_names_what_differs(tmp_path, db_url):
    old_table(db_url)
    proc = run(QUEUE, write_ini(tmp_path, db_url), "init-db")
    assert proc.returncode == 78, proc.stderr
    assert "Traceback" not in proc.stderr and "ready" not in proc.stdout
    assert "txmail_outbox has no column" in proc.stderr and "sender" in proc.stderr
    assert "payload" in proc.stderr  # the NOT NULL column we would never fill


def test_one_pass_without_tables_or_with_others_exits_78_in_one_line(tmp_path, db_url):
    ini = write_ini(tmp_path, db_url)
    proc = run(QP, ini, "--no-app")
    assert proc.returncode == 78, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "has no outbox tables" in proc.stderr and "init-db" in proc.stderr
    old_table(db_url, with_chunks=True)  # both tables there: one is not ours
    proc = run(QP, ini, "--no-app")
    assert proc.returncode == 78 and "Traceback" not in proc.stderr
    assert "has no column" in proc.stderr


def test_passes_on_missing_tables_log_one_line_a_minute(db_url, caplog):
    queue = SQLQueue(db_url)
    try:
        caplog.set_level(logging.DEBUG, logger="pyramid_txmail")
        for _ in range(3):
            stats = PassStats()
            assert list(queue.candidates(queue.clock(), 10 ** 6, stats)) == []
            assert stats.errors == 1
            queue.next_due(settings(), queue.clock(), 10 ** 6)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert errors[0].exc_info is None and "init-db" in errors[0].getMessage()
    finally:
        queue.close()


def test_the_start_up_checks_ask_postgresql_once_each(pg_url):
    """txmail-qp looks at the tables at every start: one catalog query per check
    (SQLAlchemy's Inspector took eight round trips)."""
    from pyramid_txmail.queue.sql import SQLQueue, init_db

    queue = SQLQueue(pg_url)
    init_db(queue.engine)
    sent = []

    def count(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    sa.event.listen(queue.engine, "before_cursor_execute", count)
    try:
        assert queue.missing_tables() == []
        queue.check_tables()
    finally:
        sa.event.remove(queue.engine, "before_cursor_execute", count)
        queue.close()
    assert len(sent) == 2
