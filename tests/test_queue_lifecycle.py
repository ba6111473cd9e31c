"""The lifecycle tables the docs draw are what the queues really do (issue 16).

docs/_ext/txmail_docs.py draws the state diagram of a queued message from
:data:`pyramid_txmail.queue.states.SPOOL_LIFECYCLE` and ``OUTBOX_LIFECYCLE``.
Here every move of those tables is made for real -- a transaction through the
mailer, txmail-qp's processor against a real SMTP server on 127.0.0.1 that
accepts, defers or refuses, what a crash leaves behind, ``txmail-queue``'s retry
and purge -- while the moves are recorded where they happen: every rename,
unlink and file creation under the spool, and, for the SQL outbox, SQLite
triggers that log each row's state change.  The moves seen must be exactly the
table's rows: a move the code makes that the table lacks fails, and so does a
row of the table that no run makes.
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
from pyramid_txmail.queue.states import CREATED, GONE, OUTBOX_LIFECYCLE, SPOOL_LIFECYCLE
from pyramid_txmail.relay.smtp import SMTPTransport
from pyramid_txmail.settings import parse_settings

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


def moves_of(lifecycle):
    return {(source, target) for source, target, _ in lifecycle}


def watch_spool(monkeypatch, root):
    """Record (from, to) for every move under ``root``: renames between its state
    directories, unlinks of its files, files created in its tmp/."""
    states = {state for move in SPOOL_LIFECYCLE for state in move[:2]} - {CREATED, GONE}
    seen = set()
    rename, unlink, open_ = os.rename, os.unlink, os.open

    def state_of(path):
        relative = os.path.relpath(os.fspath(path), root)
        top = relative.split(os.sep)[0]
        return top if top in states and not relative.startswith("..") else None

    def recording_rename(source, target, *args, **kwargs):
        rename(source, target, *args, **kwargs)
        moved = (state_of(source), state_of(target))
        if all(moved) and moved[0] != moved[1]:  # deferred/ re-indexing itself is no move
            seen.add(moved)

    def recording_unlink(path, *args, **kwargs):
        unlink(path, *args, **kwargs)
        if state_of(path):
            seen.add((state_of(path), GONE))

    def recording_open(path, flags, *args, **kwargs):
        fd = open_(path, flags, *args, **kwargs)
        if flags & os.O_CREAT and state_of(path) == "tmp":
            seen.add((CREATED, "tmp"))
        return fd

    monkeypatch.setattr(os, "rename", recording_rename)
    monkeypatch.setattr(os, "unlink", recording_unlink)
    monkeypatch.setattr(os, "open", recording_open)
    return seen


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


def test_the_spool_makes_exactly_the_moves_of_its_lifecycle_table(
        tmp_path, make_smtp_server, monkeypatch):
    root = str(tmp_path / "spool")
    server = make_smtp_server(SCRIPT)
    relay = {"mail.host": server.host, "mail.port": str(server.port), "mail.queue_path": root}
    queued = configured({**relay, "mail.delivery": "queue"})
    direct = configured({**relay, "mail.delivery": "direct", "mail.direct_fallback": "queue"})
    spool = Spool(root)
    seen = watch_spool(monkeypatch, root)
    clock = Clock()
    qp = make_processor(spool, server, clock, queue_path=root)
    tm = transaction.TransactionManager(explicit=True)

    for to in ("ann@example.org", "gone@example.org", "ok@example.org, gone@example.org",
               "cy@example.org"):
        with tm:  # committed: tmp/ -> prepared/ -> new/
            get_mailer(queued, tm).send(message(to))
    with pytest.raises(RuntimeError, match="refused the commit"):
        with tm:  # our vote wrote it, a later vote failed: prepared/ -> deleted
            tm.get().join(RefusingVote(tm))
            get_mailer(queued, tm).send(message("bob@example.org"))
    tm.abort()  # as pyramid_tm does after a failed commit
    with tm:  # sent after the commit, deferred by the relay: the fallback queues it
        get_mailer(direct, tm).send(message("busy@example.org"))
    assert spool.names("prepared") == [] and len(spool.names("new")) == 5
    # A claim whose processor died: in cur/, no lock held, older than mail.claim_timeout.
    dead = next(n for n in spool.names("new") if b"cy@" in read(root, "new", n))
    os.rename(os.path.join(root, "new", dead), os.path.join(root, "cur", dead))
    age(os.path.join(root, "cur", dead), 2 * HOUR)
    # What a crash leaves: a write in tmp/ and a commit in doubt in prepared/.
    age(os.path.join(root, "tmp", spool.write_tmp("app@example.org", ["d@example.org"],
                                                  bytes(message("d")))), 2 * HOUR)
    age(os.path.join(root, "prepared", spool.prepare("app@example.org", ["e@example.org"],
                                                     bytes(message("e")))), 2 * HOUR)

    stats = qp.run_once()
    assert (stats.failed, stats.recovered) == (2, 3), stats
    assert len(spool.names("deferred")) == 1 and len(spool.names("failed")) == 3

    server.handler.script = {}  # the busy recipient accepts its retry
    clock.now += 2 * HOUR
    assert qp.run_once().sent == 1
    first, second, *_ = spool_admin.messages(spool, ("failed",))
    spool_admin.retry(spool, first)
    spool_admin.purge(spool, second)
    assert qp.run_once().sent == 1
    assert moves_of(SPOOL_LIFECYCLE) - seen == set(), "moves of the table no run made"
    assert seen - moves_of(SPOOL_LIFECYCLE) == set(), "moves the table lacks"


#: The database records each row's state change itself (rolled back with its transaction).
OUTBOX_TRIGGERS = (
    "CREATE TABLE moves (source TEXT, target TEXT)",
    "CREATE TRIGGER created AFTER INSERT ON txmail_outbox "
    "BEGIN INSERT INTO moves VALUES ('{created}', NEW.state); END",
    "CREATE TRIGGER changed AFTER UPDATE OF state ON txmail_outbox "
    "WHEN OLD.state != NEW.state BEGIN INSERT INTO moves VALUES (OLD.state, NEW.state); END",
    "CREATE TRIGGER deleted AFTER DELETE ON txmail_outbox "
    "BEGIN INSERT INTO moves VALUES (OLD.state, '{gone}'); END",
)


def test_the_outbox_makes_exactly_the_moves_of_its_lifecycle_table(tmp_path, make_smtp_server):
    url = "sqlite:///" + str(tmp_path / "app.sqlite")
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
    for to in ("ann@example.org", "busy@example.org", "gone@example.org",
               "ok@example.org, gone@example.org"):
        with tm:
            get_mailer(config.registry, tm, session=session).send(message(to))

    clock = Clock()
    # A processor that claims and dies: its lease (claim_timeout, at least 1 s) runs out.
    abandoned = SQLQueue(url, claim_timeout=1.0)
    with tm:
        get_mailer(config.registry, tm, session=session).send(message("cy@example.org"))
    session.close()
    claimed = claim_all(abandoned)
    assert claimed, "the abandoned claim"
    time.sleep(1.5)  # sets the scene: past the lease; nothing is asserted on timing

    queue = SQLQueue(url, claim_timeout=1.0, keep_delivered=0.001)
    qp = make_processor(queue, server, clock, queue_url=url, claim_timeout="1s",
                        keep_delivered="0.001s")
    stats = qp.run_once()
    assert stats.sent >= 2, stats
    server.handler.script = {}
    clock.now += 2 * HOUR
    qp.run_once()
    first, second, *_ = queue.messages(("failed",))
    queue.retry(first)
    queue.purge(second)
    qp.run_once()
    qp.run_once()  # deletes the delivered rows past mail.keep_delivered
    with engine.connect() as connection:
        seen = set(connection.exec_driver_sql("SELECT source, target FROM moves").all())
    queue.close()
    abandoned.close()
    engine.dispose()
    assert moves_of(OUTBOX_LIFECYCLE) - seen == set(), "moves of the table no run made"
    assert seen - moves_of(OUTBOX_LIFECYCLE) == set(), "moves the table lacks"
