"""The SQL outbox under load, kills, restarts and slow relays: the ``sql`` reliability group.

Everything is real: a private PostgreSQL (tests/pg_support.py) or an SQLite
file, ``txmail-qp --daemon`` processes from the venv reading an ini with
``mail.queue_url``, and an aiosmtpd sink on 127.0.0.1.  Messages are written
by the test with :func:`pyramid_txmail.queue.sql.enqueue` in committed
transactions, as the application's mailer does.  What counts is what the sink
stored (by Message-ID) and what the table holds afterwards; the processes'
logs are read only for what only they know (which messages each one sent, why
a daemon woke up).

Each scenario that applies to both databases runs on PostgreSQL with three
processes and on SQLite with two.  SQLite serves ONE machine: its processors
serialise their claims with ``BEGIN IMMEDIATE`` on a local file and notice new
mail by polling (``mail.poll_interval``); a database file shared over a
network file system is not supported (its locks are not reliable there), so
these SQLite runs prove processes on one host, never several hosts.
"""
from __future__ import annotations

import random

import pytest

from .faultserver import fault_server
from .pg_support import PgCluster
from .reliability import record, runs
from .smtpserver import SMTPServer
from .sql_drain_support import (Daemon, claims_of, copies, fill, live_leases,
                                outbox_states, settled, setup_outbox, shares, start_daemons,
                                wait_for, wait_for_pass, wait_for_sent, wake_before_sent,
                                write_ini)

pytestmark = pytest.mark.reliability

#: Per database: its name in the report, the URL fixture, processes, and (quick, long)
#: message counts.
SETUPS = {"postgresql": ("PostgreSQL", "pg_url", 3, (600, 5000)),
          "sqlite": ("SQLite", "sqlite_url", 2, (200, 1000))}


@pytest.fixture(params=sorted(SETUPS))
def db(request):
    """``(name, url, processes, (quick, long) count)`` for PostgreSQL, then SQLite."""
    name, fixture, processes, sizes = SETUPS[request.param]
    return name, request.getfixturevalue(fixture), processes, sizes


def stop_all(daemons):
    """SIGTERM every live daemon; each must exit 0 (it never died on its own)."""
    live = [d for d in daemons if d.proc.returncode is None]
    assert all(d.alive() for d in live), [d.log()[-2000:] for d in live if not d.alive()]
    assert [d.stop() for d in live] == [0] * len(live)


def test_processes_drain_the_outbox_each_message_once_each_a_share(tmp_path, db):
    name, url, processes, sizes = db
    workers, count = 4, runs(*sizes)
    engine = setup_outbox(url)
    with SMTPServer() as server:
        ini = write_ini(tmp_path / "qp.ini", url, server, workers=workers,
                        claim_timeout="30s")
        daemons = start_daemons(tmp_path, ini, processes)
        try:
            ids = fill(engine, count, "share")
            wait_for(lambda: len(copies(server)) >= count and settled(engine, count),
                     f"{count} messages delivered", *daemons)
            stop_all(daemons)
        finally:
            for daemon in daemons:
                daemon.close()
        got = copies(server)
    per, logged = shares(daemons)
    assert outbox_states(engine) == {"delivered": count} and live_leases(engine) == 0
    engine.dispose()
    assert set(got) == set(ids)
    duplicated = {mid: n for mid, n in got.items() if n > 1}
    assert not duplicated, duplicated
    assert logged == count  # each process logged only what it sent, and together all
    assert all(n > 0 for n in per.values()), per  # every process got a share
    record("sql", f"{processes} txmail-qp daemons x {workers} workers on one {name} outbox",
           runs=1, messages=count, delivered=len(got), duplicated=0,
           lost=len(set(ids) - set(got)),
           detail="enqueued in committed transactions of 1-10 while the daemons ran; "
                  "messages per process: " + ", ".join(map(str, sorted(per.values()))))


def test_processors_killed_mid_drain_duplicate_only_what_was_in_flight(tmp_path, db):
    """kill -9 of a random daemon while the outbox drains, again and again, each time
    replaced by a new one: nothing is lost; a message arrives twice only if the killed
    process held it (its claim, read from the table right after the kill: the relay may
    have stored it before the process could write so); at the end every row is
    delivered -- nothing queued, nothing in progress under a live lease."""
    name, url, processes, sizes = db
    rand = random.Random(f"kill-{name}")
    workers, kills, lease = 2, runs(3, 25), 4.0
    batch = max(runs(*sizes) // (2 * kills), 20)
    engine = setup_outbox(url)
    server = SMTPServer()
    daemons, ids, in_flight, holders = [], [], set(), []
    try:
        ini = write_ini(tmp_path / "qp.ini", url, server, workers=workers,
                        claim_timeout=f"{lease:g}s")
        daemons += start_daemons(tmp_path, ini, processes)
        for kill in range(kills):
            more = fill(engine, batch, f"k{kill}", rand)
            ids += more
            part = rand.randint(1, batch // 2)  # the kill comes after this many arrived
            wait_for(lambda: len(set(more) & set(copies(server))) >= part,
                     "part of the batch delivered", *daemons)
            victim = rand.choice([d for d in daemons  # one that has been draining
                                  if d.alive() and "daemon started" in d.log()])
            victim.kill()
            held = claims_of(engine, victim.claimer)  # its claims died with it
            in_flight |= held
            if held:
                holders.append(victim.claimer)
            daemons.append(Daemon(ini, str(tmp_path / f"qp{len(daemons)}.log")))
        wait_for(lambda: settled(engine, len(ids)) and set(ids) <= set(copies(server)),
                 "every message delivered after the kills", *daemons)
        stop_all([d.started() for d in daemons if d.proc.returncode is None])
    finally:
        for daemon in daemons:
            daemon.close()
        server.stop()
    got = copies(server)
    duplicated = {mid: n - 1 for mid, n in got.items() if n > 1}
    assert set(got) == set(ids)
    assert set(duplicated) <= in_flight, set(duplicated) - in_flight
    assert sum(duplicated.values()) <= len(in_flight)
    assert outbox_states(engine) == {"delivered": len(ids)} and live_leases(engine) == 0
    logs = "".join(d.log() for d in daemons)
    for claimer in holders:  # the put-back says whose claim it was
        assert f"the lease of {claimer} ran out" in logs, claimer
    engine.dispose()
    record("sql", f"txmail-qp daemons killed (kill -9) mid-drain, {name}", runs=kills,
           messages=len(ids), delivered=len(set(got) & set(ids)),
           duplicated=sum(duplicated.values()), lost=len(set(ids) - set(got)),
           detail=f"{kills} kills of one of {processes} daemons x {workers} workers, each "
                  f"replaced; {len(holders)} kills found claims in flight ({len(in_flight)} "
                  f"messages in all), which came back when their {lease:g}s leases ran out; "
                  "every duplicate was among them")


def test_a_final_dot_slower_than_the_lease_sends_one_copy(tmp_path, db, make_smtp_server):
    """The relay answers the final dot only after 3x ``mail.claim_timeout`` (2 s; it has
    stored the message by then) while a second daemon with nothing else to do wakes
    whenever a lease may run out, ready to take the message as soon as it does.  The
    sending worker's lease is renewed while it waits, so its claim is never taken and
    the message arrives once.  One message at a time: a second one would keep the
    other daemon busy in a slow pass of its own, where it takes no one's claim."""
    name, url, _, _ = db
    lease, rounds = 2.0, runs(1, 6)
    engine = setup_outbox(url)
    server = fault_server(make_smtp_server, {"delay": {"data": 3 * lease}})
    ini = write_ini(tmp_path / "qp.ini", url, server, workers=2,
                    claim_timeout=f"{lease:g}s", data_timeout="60s")
    daemons = start_daemons(tmp_path, ini, 2)
    ids = []
    try:
        for round_ in range(rounds):
            ids += fill(engine, 1, f"slow{round_}")
            wait_for(lambda: settled(engine, len(ids)), "the slow message delivered",
                     *daemons)
        stop_all(daemons)
    finally:
        for daemon in daemons:
            daemon.close()
    got = copies(server)
    logs = "".join(d.log() for d in daemons)
    assert got == {mid: 1 for mid in ids}  # exactly one copy each
    assert "ran out" not in logs and "lost its claim" not in logs
    per, logged = shares(daemons)
    assert logged == rounds
    engine.dispose()
    record("sql", f"final-dot reply 3x slower than the lease, 2 daemons, {name}",
           runs=rounds, messages=rounds, delivered=len(got), duplicated=0,
           lost=len(set(ids) - set(got)),
           detail=f"mail.claim_timeout {lease:g}s, the 250 after {3 * lease:g}s, the other "
                  "daemon idle and waking when a lease may run out: leases renewed while "
                  "sending, no claim taken, one copy each")


def listen_outages_over(log):
    """Every break of the daemon's LISTEN connection logged so far has its reconnect."""
    return log.count("the LISTEN connection to") <= log.count("listening for NOTIFY again")


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
    restarts = runs(1, 4)
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
            batch = runs(100, 400)
            for round_ in range(restarts):  # restarted mid-drain
                more = fill(engine, batch, f"drain{round_}")
                ids += more
                wait_for(lambda: len(set(more) & set(copies(server))) >= batch // 3,
                         "a third of the batch delivered", daemon)
                pg.restart()
                ids += fill(engine, batch // 3, f"after{round_}")
                wait_for(lambda: settled(engine, len(ids)), "every message delivered",
                         daemon)
            # the last drain restart's outage is over (its "broke" and its "again" both
            # logged) before the mark, or its late "again" would pass for the idle one's
            wait_for(lambda: listen_outages_over(daemon.log()),
                     "the daemon to LISTEN again after the drain restarts", daemon)
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


def test_the_database_away_when_the_relay_answers_records_the_outcome_once_back(
        tmp_path, make_smtp_server):
    """PostgreSQL crashes (kill -9) after the relay stored the message and before its
    slow 250 reaches the daemon, and comes back once the daemon has said so in its log.
    The daemon then records what the relay answered: one copy, and no traceback.

    Today the check that the claim still holds, made right after the reply, raises
    the driver's error; the processor logs "unexpected error" with a traceback, the
    row stays claimed until ``mail.claim_timeout`` runs out (an hour by default), and
    the message is sent again.
    """
    with PgCluster() as pg:
        engine = setup_outbox(pg.url)
        server = fault_server(make_smtp_server, {"delay": {"data": 3.0}})
        ini = write_ini(tmp_path / "qp.ini", pg.url, server, workers=1, claim_timeout="3s",
                        data_timeout="60s")
        [daemon] = start_daemons(tmp_path, ini, 1)
        try:
            [mid] = fill(engine, 1, "away")
            wait_for(lambda: mid in copies(server), "the relay to store it", daemon)
            mark = len(daemon.log())
            pg.kill()  # the 250 is still 3 s away
            wait_for(lambda: "outbox row 1" in daemon.log()[mark:]
                     or "1: unexpected error" in daemon.log()[mark:],
                     "the daemon to meet the database away", daemon)
            pg.start()
            wait_for(lambda: settled(engine, 1), "the message settled", daemon)
            stop_all([daemon])
        finally:
            daemon.close()
        engine.dispose()
    assert copies(server) == {mid: 1}
    assert "Traceback" not in daemon.log()
