"""The SQL outbox on PostgreSQL under load, kills, restarts and slow relays (``sql`` group).

Everything is real: a private PostgreSQL (tests/pg_support.py), ``txmail-qp
--daemon`` processes from the venv reading an ini with ``mail.queue_url``,
and an aiosmtpd sink on 127.0.0.1.  Messages are written by the test with
:func:`pyramid_txmail.queue.sql.enqueue` in committed transactions, as the
application's mailer does.  What counts is what the sink stored (by
Message-ID) and what the table holds afterwards; the processes' logs are read
only for what only they know (which messages each one sent, why a daemon woke).

The same scenarios on SQLite (one machine) are in test_sql_reliability_sqlite.py.
"""
from __future__ import annotations

import pytest

from .faultserver import fault_server
from .pg_support import PgCluster
from .reliability import record, runs
from .smtpserver import SMTPServer
from .sql_drain_support import (copies, fill, live_leases, outbox_states, settled,
                                setup_outbox, shares, start_daemons, wait_for,
                                wait_for_pass, wait_for_sent, wake_before_sent,
                                write_ini)

pytestmark = pytest.mark.reliability


def drain_with_processes(tmp_path, url, processes, workers, count, tag):
    """``processes`` daemons x ``workers`` drain ``count`` messages enqueued while they run;
    returns (sink copies, per-process shares, Message-IDs)."""
    engine = setup_outbox(url)
    with SMTPServer() as server:
        ini = write_ini(tmp_path / "qp.ini", url, server, workers=workers,
                        claim_timeout="30s")
        daemons = start_daemons(tmp_path, ini, processes)
        try:
            ids = fill(engine, count, tag)
            wait_for(lambda: len(copies(server)) >= count and settled(engine, count),
                     f"{count} messages delivered", *daemons)
            assert all(d.alive() for d in daemons)
            assert [d.stop() for d in daemons] == [0] * processes
        finally:
            for daemon in daemons:
                daemon.close()
        got = copies(server)
    per, logged = shares(daemons)
    assert outbox_states(engine) == {"delivered": count} and live_leases(engine) == 0
    engine.dispose()
    return got, per, logged, ids


def test_three_processes_drain_the_outbox_each_message_once(tmp_path, pg_url):
    count = runs(600, 5000)
    got, per, logged, ids = drain_with_processes(tmp_path, pg_url, 3, 4, count, "share")
    assert set(got) == set(ids)
    duplicated = {mid: n for mid, n in got.items() if n > 1}
    assert not duplicated, duplicated
    assert logged == count  # each process logged only what it sent, and together all
    assert all(n > 0 for n in per.values()), per  # every process got a share
    record("sql", "3 txmail-qp daemons x 4 workers on one PostgreSQL", runs=1,
           messages=count, delivered=len(got), duplicated=0, lost=count - len(got),
           detail="enqueued in committed transactions of 1-10 while the daemons ran; "
                  "shares per process: " + ", ".join(str(n) for n in sorted(per.values())))


def test_postgresql_restarts_under_a_running_daemon(tmp_path, make_smtp_server):
    """``pg_ctl restart`` (fast: every connection cut) while the daemon drains, then while
    it is idle: the daemon stays up, reconnects and LISTENs again, and delivers everything.

    Only what was in flight at the restart may arrive twice: a message the relay took
    whose outcome could not be written (the database was gone) is sent again once its
    lease runs out -- at most one per worker.  Mail enqueued after the idle restart
    wakes the daemon by NOTIFY (its log says why it woke: ``mail``, not ``timeout``;
    nothing else would wake it before its 60 s rescan).
    """
    workers = 2
    restarts = runs(1, 5)
    with PgCluster() as pg:
        engine = setup_outbox(pg.url)
        server = fault_server(make_smtp_server, {"delay": {"data": 0.02}})
        ini = write_ini(tmp_path / "qp.ini", pg.url, server, workers=workers,
                        claim_timeout="3s")
        [daemon] = start_daemons(tmp_path, ini, 1, extra=["-v"])
        try:
            wait_for_pass(daemon)  # asleep: only a wake-up can send the next message
            ids = fill(engine, 1, "before")  # LISTEN works before any restart
            wait_for_sent(daemon, ids[0])
            assert wake_before_sent(daemon.log(), ids[0]) == "mail"
            batch = runs(150, 1000)
            for round_ in range(restarts):  # restarted mid-drain
                more = fill(engine, batch, f"drain{round_}")
                ids += more
                wait_for(lambda: len(set(more) & set(copies(server))) >= batch // 3,
                         "a third of the batch delivered", daemon)
                pg.restart()
                ids += fill(engine, batch // 3, f"after{round_}")
                wait_for(lambda: settled(engine, len(ids)), "every message delivered",
                         daemon)
            mark = len(daemon.log())
            pg.restart()  # restarted while idle
            wait_for(lambda: "listening for NOTIFY again" in daemon.log()[mark:],
                     "the daemon to LISTEN again", daemon)
            wait_for_pass(daemon, daemon.log().index("listening for NOTIFY again", mark))
            late = fill(engine, 1, "idle")
            ids += late
            wait_for_sent(daemon, late[0])
            wait_for(lambda: settled(engine, len(ids)), "the message after the restart",
                     daemon)
            log = daemon.log()
            assert wake_before_sent(log, late[0]) == "mail", log[mark:]
            assert "the LISTEN connection to" in log[mark:]  # it said it lost it
            assert daemon.alive()  # never exited
            assert daemon.stop() == 0
        finally:
            daemon.close()
        got = copies(server)
        assert outbox_states(engine) == {"delivered": len(ids)}
        engine.dispose()
    assert set(got) == set(ids)
    duplicated = sum(n - 1 for n in got.values())
    assert duplicated <= workers * (restarts + 1), got
    record("sql", "PostgreSQL restarted under txmail-qp --daemon (mid-drain, then idle)",
           runs=restarts + 1, messages=len(ids), delivered=len(set(got) & set(ids)),
           duplicated=duplicated, lost=len(set(ids) - set(got)),
           detail=f"{restarts} restart(s) mid-drain and 1 while idle, the daemon never "
                  "exited; after the idle one it LISTENed again and new mail woke it by "
                  "NOTIFY; duplicates only of messages in flight at a restart (at most "
                  f"{workers}, one per worker, each time)")
