"""Reliability suite, disk: a full disk, a read-only or foreign-owned spool, umask 000.

- A full disk (a small tmpfs mounted by the test as root, filled to the last
  byte; ``RLIMIT_FSIZE`` where mounting is not allowed -- tests/diskfull.py)
  aborts the sending transaction of a WebTest app whose view also inserts a
  row into a real SQLite table through zope.sqlalchemy: the error names the
  spool, the row is not committed, no tmp file is left, and the mail that was
  already queued is delivered, even while the disk is still full.
- The processor on a full disk, unable to write its state files, loses
  nothing: once there is room again every message is delivered, deferred
  with its reason or dead-lettered with its reason.
- A read-only spool and a spool owned by another user are a clear startup
  error naming the path, at ``config.include`` and at ``txmail-qp`` start
  (exit 78, one line, no traceback).
- With umask 000 every file pyramid_txmail creates is 0600 and every
  directory 0700 (those are in test_disk_perms.py).
"""
from __future__ import annotations

import itertools
import os
import time
from email.message import EmailMessage

import pytest
import sqlalchemy as sa
import webtest
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.response import Response
from sqlalchemy.orm import Session

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.queue.maildir.queue_state import record_attempt
from pyramid_txmail.relay.result import TEMPORARY, RecipientResult
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir.spool import Entry, Spool

from .diskfull import Disk
from .reliability import record, runs
from .spool_tally import received, tally

pytestmark = pytest.mark.reliability

SENDER = "sender@example.org"
_serial = itertools.count()
HOUR = 3600.0

metadata = sa.MetaData()
signups = sa.Table("signups", metadata, sa.Column("id", sa.Integer, primary_key=True),
                   sa.Column("email", sa.String(200), nullable=False))


def signup_app(spool_path, db_path):
    """A real app: the view inserts a row and sends a mail, in the request's transaction."""
    engine = sa.create_engine(f"sqlite:///{db_path}")
    metadata.create_all(engine)

    def dbsession(request):
        session = Session(bind=engine)
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        return session

    def signup(request):
        email = request.params["email"]
        request.dbsession.execute(signups.insert().values(email=email))
        zope.sqlalchemy.mark_changed(request.dbsession)
        msg = EmailMessage()
        msg["To"] = email
        msg["Subject"] = "Welcome"
        msg["Message-ID"] = request.params["id"]
        msg.set_content("Welcome!\n" + "x" * int(request.params.get("pad", 0)) + "\n")
        return Response(request.mailer.send(msg))

    config = Configurator(settings={"mail.queue_path": str(spool_path),
                                    "mail.default_sender": SENDER})
    config.include("pyramid_txmail")
    config.add_request_method(dbsession, reify=True)
    config.add_route("signup", "/signup")
    config.add_view(signup, route_name="signup", request_method="POST")
    return webtest.TestApp(config.make_wsgi_app()), engine


def rows(engine):
    with engine.connect() as conn:
        return [r.email for r in conn.execute(sa.select(signups.c.email))]


def new_id():
    return f"<disk-{next(_serial)}@example.org>"


def drain(spool, server, clock=time.time, **extra):
    settings = parse_settings({"mail.host": server.host, "mail.port": str(server.port),
                               "mail.queue_path": spool.path, "mail.timeout": "5",
                               **extra})
    return Processor(spool, None, settings, clock=clock).run_once()


def leftovers(spool):
    """Files no state accounts for: tmp/ and prepared/ files, hidden temporaries anywhere."""
    found = []
    for state in ("tmp", "prepared", "new", "cur", "deferred", "failed", "meta", "done"):
        for name in os.listdir(os.path.join(spool.path, state)):
            if state in ("tmp", "prepared") or name.startswith("."):
                found.append(f"{state}/{name}")
    return found


@pytest.fixture(params=["tmpfs", "fsize"])
def disk(request, tmp_path):
    made = Disk.make(tmp_path / "disk", request.param)
    yield made
    made.close()


# -- a full disk in the application --------------------------------------------------

def test_full_disk_aborts_the_transaction_and_keeps_what_was_queued(disk, tmp_path,
                                                                    smtp_server):
    queued_before, refused = runs(3, 30), runs(2, 20)
    spool_path = os.path.join(disk.path, "spool")
    app, engine = signup_app(spool_path, tmp_path / "app.sqlite")
    ids = []
    for n in range(queued_before):
        ids.append(new_id())
        app.post("/signup", {"email": f"early{n}@example.org", "id": ids[-1]})
    spool = Spool(spool_path)
    assert len(spool.names("new")) == queued_before
    refused_ids = []
    with disk.full():
        for n in range(refused):
            refused_ids.append(new_id())
            with pytest.raises(OSError) as raised:
                app.post("/signup", {"email": f"late{n}@example.org", "id": refused_ids[-1],
                                     "pad": 256 * 1024})
            assert f"cannot write the mail spool {spool.path}" in str(raised.value)
            assert "the transaction is aborted" in str(raised.value)
        # nothing of the aborted transactions, everything of the committed ones
        assert rows(engine) == [f"early{n}@example.org" for n in range(queued_before)]
        assert leftovers(spool) == []
        # the processor delivers what was queued, with the disk still full
        stats = drain(spool, smtp_server)
    assert stats.sent == queued_before and stats.errors == 0
    found = tally(spool, [smtp_server], ids + refused_ids)
    assert found.lost == len(refused_ids)  # never committed: must not be anywhere
    assert all(found.where[i] == "lost" for i in refused_ids)
    assert all(found.where[i] == "delivered" for i in ids) and found.duplicated == 0
    # there is room again: the app works and nothing old comes back
    app.post("/signup", {"email": "after@example.org", "id": new_id()})
    drain(spool, smtp_server)
    assert len(smtp_server.messages) == queued_before + 1
    assert rows(engine)[-1] == "after@example.org"
    record("disk", f"full disk during the commit ({disk.how})", runs=refused,
           messages=queued_before, delivered=found.delivered, duplicated=found.duplicated,
           lost=0, held=refused, detail="WebTest app + SQLite row in the same transaction: "
           "refused with an error naming the spool, row not committed, no tmp file left; "
           "mail queued before delivered while the disk was still full")


# -- a full disk under the processor -------------------------------------------------

REPLIES = {"rcpt": {"later@example.org": "451 4.3.0 mailbox busy, try later",
                    "gone@example.org": "550 5.1.1 no such user"}}


def test_processor_on_a_full_disk_loses_nothing(disk, make_smtp_server):
    rounds = runs(1, 10)
    server = make_smtp_server(REPLIES)
    spool = Spool(os.path.join(disk.path, "spool"))
    kinds = {"ok": ["ok@example.org"], "later": ["later@example.org"],
             "partial": ["ok@example.org", "gone@example.org"], "gone": ["gone@example.org"],
             "retried": ["ok@example.org"]}
    ids = {}
    for _ in range(rounds):
        for kind, rcpts in kinds.items():
            message_id = new_id()
            ids[message_id] = kind
            data = (f"From: {SENDER}\nTo: {', '.join(rcpts)}\nSubject: {kind}\n"
                    f"Message-ID: {message_id}\n\nbody\n").encode()
            name = spool.write_tmp(SENDER, rcpts, data)
            spool.commit_tmp([name])
            if kind == "retried":  # deferred once before, due now: a state file exists
                now = time.time()
                spool.write_meta(name, record_attempt(
                    {}, message_id, [RecipientResult(rcpts[0], TEMPORARY, 451, "busy")],
                    now - 600, now - 1, now - 600))
                spool.move(Entry(spool, "new", name), "deferred")
    with disk.full(limit=100):  # fsize: a state file is larger, its write is cut short
        stats = drain(spool, server)
    assert leftovers(spool) == []  # no half-written state file left behind
    # no state file could be written: what every recipient accepted left the queue
    # (first attempts and the retries), the rest stays claimed in cur/
    assert stats.sent == 2 * rounds
    # room again; a later pass (claims of the failed attempts have gone stale)
    later = lambda: time.time() + 2 * HOUR  # noqa: E731
    drain(spool, server, clock=later)
    assert leftovers(spool) == []
    found = tally(spool, [server], list(ids))
    assert found.lost == 0, found.where
    for message_id, kind in ids.items():
        expected = {"ok": "delivered", "partial": "delivered", "later": "deferred",
                    "gone": "failed", "retried": "delivered"}[kind]
        assert found.where[message_id] == expected, (kind, found.where[message_id])
        if kind == "later":
            assert any("4.3.0 mailbox busy" in r for r in found.reasons[message_id]), \
                found.reasons[message_id]
    failed = {spool.read_meta(n).get("message_id"): spool.read_meta(n)
              for n in spool.names("failed")}
    for message_id, kind in ids.items():
        if kind in ("partial", "gone"):  # dead-lettered for gone@ with the 550, not guessed
            assert "550 5.1.1 no such user" in failed[message_id]["reason"], failed[message_id]
    # a retry that every recipient accepted needs no state file: it is not sent twice
    copies = received([server])
    for message_id, kind in ids.items():
        if kind in ("ok", "retried"):
            assert copies[message_id, "ok@example.org"] == 1, (kind, message_id)
    # a recipient that accepted while the others' outcome could not be written gets it
    # again: at-least-once, as after a crash (the partial messages' ok@ copy)
    assert found.duplicated <= rounds
    record("disk", f"processor on a full disk, state files unwritable ({disk.how})",
           runs=rounds, detail="per run: delivered, 451-deferred, partly 550, all 550, a "
           "retry delivered; afterwards each is delivered, deferred or dead-lettered with "
           "its reason.  Duplicated: the partly refused message's accepted recipient, "
           "whose acceptance could not be recorded, gets it again once there is room "
           "(at-least-once, as after a crash)",
           **found.counts())


def test_a_write_cut_short_is_continued_until_the_whole_message_is_in_the_file(
        tmp_path, monkeypatch):
    """The vote writes a message with ``os.write``, which may write part of it
    without an error (a signal, a nearly full disk): the rest follows, and the
    file holds the whole message before its fsync."""
    from pyramid_txmail.queue.maildir.spoolfile import envelope_lines

    spool = Spool(str(tmp_path / "spool"))
    real_write, sizes = os.write, []

    def short_write(fd, data):
        sizes.append(real_write(fd, bytes(data[:100])))
        return sizes[-1]

    monkeypatch.setattr(os, "write", short_write)
    data = b"Subject: x\n\n" + b"y" * 1000 + b"\n"
    name = spool.prepare("a@example.com", ["b@example.com"], data)
    monkeypatch.undo()
    with open(tmp_path / "spool" / "prepared" / name, "rb") as f:
        assert f.read() == envelope_lines("a@example.com", ["b@example.com"]) + data
    assert len(sizes) > 10
