"""The lifecycle tables the docs draw are what the queues really do (issue 16).

docs/_ext/lifecycle_graph.py draws the state diagrams of a queued message from
:data:`pyramid_txmail.queue.states.SPOOL_LIFECYCLE` and ``OUTBOX_LIFECYCLE``: one
row per cause of a move, each naming the code that makes it.  Here every cause is
made to happen for real -- transactions that commit, abort or hit a full disk,
direct delivery's fallback, txmail-qp's processor against a real SMTP server on
127.0.0.1 that accepts, defers or refuses, what a crash leaves behind (with
``mail.commit_check`` answering yes, no and don't know), poison and corrupt state,
``txmail-queue``'s retry, purge and release -- while the moves are recorded where
they happen, with the functions on the stack (tests/lifecycle_support.py): every
rename, unlink and file creation under the spool, and, for the SQL outbox, SQLite
triggers that log each row's state change.  Each move seen must be explained by a
row (the innermost row whose code was on its stack), and every row must have been
seen: a move the code makes that the table lacks fails, and so does a row no run
makes.  And the meta-check: every function of the queue backends and the scripts
that renames or deletes a file, or changes outbox rows (found by reading the
source), must have run here, or be exempt with a reason -- so a new way of moving
a message fails this test until it is driven here and has its row.
"""
from __future__ import annotations

import os
import time
from email.message import EmailMessage

import pytest
import sqlalchemy as sa
import transaction
import zope.sqlalchemy
from pyramid.config import Configurator
from sqlalchemy.orm import sessionmaker

from pyramid_txmail import get_mailer
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.queue.maildir import spool_admin
from pyramid_txmail.queue.maildir.spool import Spool
from pyramid_txmail.queue.sql import SQLQueue, init_db
from pyramid_txmail.processor.pass_stats import PassStats
from pyramid_txmail.queue.states import CREATED, GONE, OUTBOX_LIFECYCLE, SPOOL_LIFECYCLE
from pyramid_txmail.relay.smtp import SMTPTransport
from pyramid_txmail.settings import parse_settings

from .lifecycle_support import (
    FILE_CALLS, OUTBOX_TRIGGERS, ROW_CALLS, SQL_TEXTS, explained, moving_functions,
    read_outbox_moves, unexplained, watch_outbox, watch_spool)
from .sql_support import claim_all

#: The relay's answers, by recipient: everyone else is accepted.
SCRIPT = {"rcpt": {"busy@example.org": "451 4.3.0 try later",
                   "gone@example.org": "550 5.1.1 no such user"}}
HOUR = 3600.0


class Clock:
    """Real time, moved forward when a retry must come due."""

    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def message(to):
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = to
    msg["Subject"] = "lifecycle"
    msg.set_content("Hello.\n")
    return msg


class RefusingVote:
    """A second resource that votes no after ours voted: the transaction aborts."""

    def __init__(self, manager):
        self.transaction_manager = manager

    def abort(self, txn):
        pass

    tpc_begin = commit = tpc_finish = tpc_abort = abort

    def tpc_vote(self, txn):
        raise RuntimeError("the database refused the commit")

    def sortKey(self):
        return "~~refusing"


def make_processor(queue, server, clock, **extra):
    raw = {"mail.host": server.host, "mail.port": str(server.port), "mail.timeout": "10",
           **{f"mail.{k}": v for k, v in extra.items()}}
    settings = parse_settings(raw)
    transport = SMTPTransport.from_settings(settings) if isinstance(queue, Spool) else None
    return Processor(queue, transport, settings, clock=clock, rand=lambda: 0.5)


def configured(settings):
    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    config.commit()
    return config.registry


def read(root, state, name):
    with open(os.path.join(root, state, name), "rb") as file:
        return file.read()


def age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then))


#: What ``mail.commit_check`` answers for an in-doubt message, by its Message-ID.
VERDICTS = {}


def commit_check(message_id, registry):
    return VERDICTS.get(message_id)


def in_doubt(spool, to, verdict):
    """A commit a crash left in prepared/, old enough to be resolved, that
    mail.commit_check answers ``verdict`` for."""
    msg = message(to)
    msg["Message-ID"] = f"<{to.split('@')[0]}@lifecycle>"
    VERDICTS[msg["Message-ID"]] = verdict
    name = spool.prepare("app@example.org", [to], bytes(msg))
    age(os.path.join(spool.path, "prepared", name), 2 * HOUR)


def queued_to(spool, address):
    return next(n for n in spool.names("new") if address in read(spool.path, "new", n))


def failing_fsync(fd):
    raise OSError(28, "No space left on device")


def check_moves(seen, lifecycle):
    """Every move explained by one row of ``lifecycle``, and every row made."""
    assert unexplained(seen, lifecycle) == [], "moves the table lacks (with their code)"
    assert [row for row in lifecycle if row not in explained(seen, lifecycle)] == [], \
        "rows of the table no run made"


def check_code_ran(seen, moving, exempt):
    """The meta-check: every function that can move a message (``moving``, read from
    the source) was on the stack of a change this run made, or is exempt, with why."""
    assert moving - seen.functions() - set(exempt) == set(), \
        "code that moves messages and that no run made: drive it, and give it a row"
    assert set(exempt) <= moving, "an exemption for code that no longer moves anything"


#: Functions of queue/ and scripts/ that rename or delete files but move no message
#: between states, and why (the meta-check's exemptions).
SPOOL_EXEMPT = {
    "pyramid_txmail.queue.maildir.spool._unlink_quietly":
        "removes a half-written state file (meta/.NAME.tmp) when writing it failed",
    "pyramid_txmail.queue.maildir.schedule.DeferredIndex.index":
        "renames a file within deferred/ (a name without its due time gets one): "
        "the message stays deferred",
}


def test_the_spool_makes_exactly_the_moves_of_its_lifecycle_table(
        tmp_path, make_smtp_server, monkeypatch):
    root = str(tmp_path / "spool")
    server = make_smtp_server(SCRIPT)
    relay = {"mail.host": server.host, "mail.port": str(server.port), "mail.queue_path": root}
    queued = configured({**relay, "mail.delivery": "queue"})
    direct = configured({**relay, "mail.delivery": "direct", "mail.direct_fallback": "queue"})
    spool = Spool(root)
    seen = watch_spool(monkeypatch, root, {m[i] for m in SPOOL_LIFECYCLE for i in (0, 1)}
                       - {CREATED, GONE})
    clock = Clock()
    qp = make_processor(spool, server, clock, queue_path=root, commit_check=commit_check)
    tm = transaction.TransactionManager(explicit=True)

    for to in ("ann@example.org", "gone@example.org", "ok@example.org, gone@example.org",
               "cy@example.org", "dee@example.org", "eve@example.org"):
        with tm:  # committed: tmp/ -> prepared/ -> new/
            get_mailer(queued, tm).send(message(to))
    with pytest.raises(RuntimeError, match="refused the commit"):
        with tm:  # our vote wrote it, a later vote failed: prepared/ -> deleted
            tm.get().join(RefusingVote(tm))
            get_mailer(queued, tm).send(message("bob@example.org"))
    tm.abort()  # as pyramid_tm does after a failed commit
    with monkeypatch.context() as full_disk, pytest.raises(OSError, match="No space"):
        full_disk.setattr(os, "fsync", failing_fsync)
        with tm:  # the write fails: tmp/ -> deleted at once
            get_mailer(queued, tm).send(message("fay@example.org"))
    tm.abort()
    for to in ("busy@example.org", "gone@example.org"):
        with tm:  # sent after the commit, deferred or refused: the fallback keeps it
            get_mailer(direct, tm).send(message(to))
    assert spool.names("prepared") == [] and len(spool.names("new")) == 7

    with seen.paused():  # the stage: what a crash left, what a person put there
        dead = queued_to(spool, b"cy@")
        os.rename(os.path.join(root, "new", dead), os.path.join(root, "cur", dead))
        age(os.path.join(root, "cur", dead), 2 * HOUR)  # its processor died
        corrupt = queued_to(spool, b"dee@")
        with open(os.path.join(root, "meta", corrupt + ".json"), "w") as file:
            file.write("{not json")
        os.symlink("/nonexistent", os.path.join(root, "new", "1.M1P1.poison"))
        age(os.path.join(root, "tmp", spool.write_tmp(
            "app@example.org", ["d@example.org"], bytes(message("d")))), 2 * HOUR)
        for to, verdict in (("yes@example.org", True), ("no@example.org", False),
                            ("maybe@example.org", None)):
            in_doubt(spool, to, verdict)

    stats = qp.run_once()
    assert (stats.failed, stats.recovered) == (4, 5), stats
    assert len(spool.names("deferred")) == 1 and len(spool.names("failed")) == 6

    server.handler.script = {}  # the busy recipient accepts its retry
    clock.now += 2 * HOUR
    assert qp.run_once().sent == 1
    server.handler.script = SCRIPT
    for to in ("busy@example.org", "busy@example.org"):
        with tm:
            get_mailer(queued, tm).send(message(to))
    qp.run_once()
    first, second = spool_admin.messages(spool, ("deferred",))
    spool_admin.retry(spool, first)  # txmail-queue retry
    spool_admin.purge(spool, second)  # txmail-queue purge --state deferred
    first, second, *_ = spool_admin.messages(spool, ("failed",))
    spool_admin.retry(spool, first)
    spool_admin.purge(spool, second)
    with seen.paused():
        spool.write_tmp("app@example.org", ["t@example.org"], bytes(message("t")))
        claimed = [spool.claim("new", n) for n in spool.names("new")[:2]]
        for entry in claimed:  # two claims whose processor died (their locks freed)
            entry.release()
        age(os.path.join(root, "cur", claimed[1].name), 2 * HOUR)
        with open(os.path.join(root, "done", "1.M2P2.delivered"), "wb"):
            pass  # retired by a pass that crashed before its reaper deleted it
    for msg in spool_admin.purge_candidates(spool, "tmp"):
        spool_admin.purge(spool, msg)  # txmail-queue purge --state tmp --older-than 0
    spool_admin.release(spool, spool_admin.inspect(spool, "cur", claimed[0].name),
                        claim_timeout=HOUR, force=True)  # txmail-queue release NAME
    assert spool_admin.release_stale(spool, HOUR) == [claimed[1].name]  # release --stale
    server.handler.script = {}
    qp.run_once()  # the released claims, the retried messages
    with tm:
        get_mailer(queued, tm).send(message("gus@example.org"))
    outside = qp.queue  # the IQueue API without a pass: the retired file goes at once
    outside.retire(outside.claim(next(outside.candidates(clock(), HOUR, PassStats()))), False)
    assert [spool.names(state) for state in ("tmp", "prepared", "new", "cur", "done")] \
        == [[]] * 5
    check_moves(seen, SPOOL_LIFECYCLE)
    check_code_ran(seen, moving_functions(FILE_CALLS), SPOOL_EXEMPT)


#: The same for the SQL outbox.
OUTBOX_NOT_MOVES = {
    "pyramid_txmail.queue.sql.leases.renew":
        "renews the leases of a pass's claims (lease_until only): no state changes",
}
#: Functions that build a statement once, at import, and the function that runs it
#: (which must have run).
OUTBOX_BUILDERS = {
    "pyramid_txmail.queue.sql.claiming.claim_statement":
        "pyramid_txmail.queue.sql.backend.SQLQueue._claim_batch",
    "pyramid_txmail.queue.sql.store.insert_statement": "pyramid_txmail.queue.sql.store.insert_row",
}
OUTBOX_EXEMPT = {
    **OUTBOX_NOT_MOVES,
    **{builder: f"builds a statement once, at import; {runner} runs it"
       for builder, runner in OUTBOX_BUILDERS.items()},
    "pyramid_txmail.queue.sql.retiring.group_sql":
        "PostgreSQL's retire of a group of rows in one statement: the moves of "
        "SQLQueue._retire_one (in_progress -> delivered / deleted), which SQLite runs",
}


def test_the_outbox_makes_exactly_the_moves_of_its_lifecycle_table(tmp_path, make_smtp_server):
    url = "sqlite:///" + str(tmp_path / "app.sqlite")
    with watch_outbox() as seen:
        engine = sa.create_engine(url)
        init_db(engine)
        with engine.begin() as connection:
            for statement in OUTBOX_TRIGGERS:
                connection.exec_driver_sql(statement.format(created=CREATED, gone=GONE))
        server = make_smtp_server(SCRIPT)
        config = Configurator(settings={"mail.queue_url": url, "mail.delivery": "queue"})
        config.include("pyramid_txmail")
        tm = transaction.TransactionManager(explicit=True)
        session = sessionmaker(bind=engine)()
        zope.sqlalchemy.register(session, transaction_manager=tm)

        def send(*addresses):
            for to in addresses:
                with tm:
                    get_mailer(config.registry, tm, session=session).send(message(to))

        send("ann@example.org", "busy@example.org", "gone@example.org",
             "ok@example.org, gone@example.org", "cy@example.org")
        # A processor that claims them and dies: its leases (claim_timeout, at least 1 s)
        # run out.
        abandoned = SQLQueue(url, claim_timeout=1.0)
        assert claim_all(abandoned), "the abandoned claim"
        send("poison@example.org", "dee@example.org")
        with engine.begin() as connection, seen.paused():  # a hand-made row, a bad state
            connection.exec_driver_sql("UPDATE txmail_outbox SET recipients = '[]' "
                                       "WHERE recipients LIKE '%poison@%'")
            connection.exec_driver_sql("UPDATE txmail_outbox SET meta = '\"not a record\"' "
                                       "WHERE recipients LIKE '%dee@%'")
        time.sleep(1.5)  # sets the scene: past the lease; nothing is asserted on timing

        queue = SQLQueue(url, claim_timeout=1.0, keep_delivered=0.001)
        clock = Clock()
        qp = make_processor(queue, server, clock, queue_url=url, claim_timeout="1s",
                            keep_delivered="0.001s")
        stats = qp.run_once()
        assert (stats.sent, stats.failed, stats.recovered) == (2, 4, 5), stats
        server.handler.script = {}
        clock.now += 2 * HOUR
        assert qp.run_once().sent == 1  # busy, due now
        server.handler.script = SCRIPT
        send("busy@example.org", "busy@example.org")
        qp.run_once()
        first, second = queue.messages(("deferred",))
        queue.retry(first)  # txmail-queue retry
        queue.purge(second)  # txmail-queue purge --state deferred
        first, second, *_ = queue.messages(("failed",))
        queue.retry(first)
        queue.purge(second)
        claim_all(abandoned)
        queue.release_claim(queue.messages(("cur",))[0], 1.0, force=True)  # txmail-queue release
        with queue.pass_scope(parse_settings({})):  # a pass stopped before handing out
            candidates = queue.candidates(time.time(), 10 ** 9, PassStats())
            next(candidates)
            candidates.close()
        server.handler.script = {}
        qp.run_once()
        qp.run_once()  # deletes the delivered rows past mail.keep_delivered
        send("fay@example.org")
        at_once = SQLQueue(url, keep_delivered=0)  # delivered: the row deleted at once
        at_once.retire(claim_all(at_once)[0])
        read_outbox_moves(engine, seen)
        for done in (queue, abandoned, at_once):
            done.close()
        session.close()
        engine.dispose()
    check_moves(seen, OUTBOX_LIFECYCLE)
    check_code_ran(seen, moving_functions(ROW_CALLS, SQL_TEXTS), OUTBOX_EXEMPT)
    assert set(OUTBOX_BUILDERS.values()) - seen.functions() == set()
