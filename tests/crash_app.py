"""The application process of the crash tests (tests/test_crash.py), killed with SIGKILL.

``python -m tests.crash_app SPOOL DB [--kill-at POINT --kill-on N] [--seed S]``
builds a Pyramid app like a real one (pyramid_tm, a SQLite database through
SQLAlchemy and zope.sqlalchemy, queue delivery) and sends requests to it in a
loop: each inserts a row holding the Message-ID that ``request.mailer.send``
returned, and a quarter of them fail after sending (the transaction aborts).
It prints ``ready`` once set up, then each Message-ID as it is handed to
``send()``.  Without ``--kill-at`` it runs until the
test kills it at a random moment; with it, request ``N`` kills its own
process at ``POINT`` of the two-phase commit (see :data:`KILL_POINTS`).

The database is the truth: a message must be delivered if and only if its
row committed.  :func:`committed` is the ``mail.commit_check`` that asks it.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import sys
from email.message import EmailMessage

import sqlalchemy as sa
import transaction
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.response import Response
from sqlalchemy.orm import sessionmaker
from transaction.interfaces import IDataManager
from zope.interface import implementer

#: Where a request kills its process: (sort key of the killing data
#: manager, phase).  Our spool sorts as "!pyramid_txmail", zope.sqlalchemy
#: as "~sqlalchemy", and both vote (and finish) in that order.
KILL_POINTS = {
    "before-vote": (" kill", "tpc_vote"),           # nothing voted yet
    "after-mail-vote": ('"kill', "tpc_vote"),       # prepared/, database not committed
    "after-db-commit": ("~~kill", "tpc_vote"),      # prepared/, database committed
    "after-finish": ("~~kill", "tpc_finish"),       # new/, database committed
}


@implementer(IDataManager)
class Killer:
    """A data manager that SIGKILLs its own process in one phase of the commit."""

    def __init__(self, key, phase):
        self.key, self.phase = key, phase
        self.transaction_manager = transaction.manager

    def sortKey(self):
        return self.key

    def _maybe_die(self, phase):
        if phase == self.phase:
            os.kill(os.getpid(), signal.SIGKILL)

    def tpc_vote(self, txn):
        self._maybe_die("tpc_vote")

    def tpc_finish(self, txn):
        self._maybe_die("tpc_finish")

    def abort(self, txn):
        pass

    tpc_begin = commit = tpc_abort = abort


def make_app(spool, db, **settings):
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS sent "
                             "(message_id TEXT PRIMARY KEY, n INTEGER)")
    session_factory = sessionmaker(bind=engine)
    config = Configurator(settings={
        "mail.queue_path": spool, "mail.default_sender": "app@example.org",
        "tm.manager_hook": "pyramid_tm.explicit_manager", "crash.db": db, **settings})
    config.include("pyramid_tm")
    config.include("pyramid_txmail")

    def dbsession(request):
        session = session_factory()
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        return session

    config.add_request_method(dbsession, reify=True)

    def send(request):
        n = int(request.params["n"])
        msg = EmailMessage()
        msg["To"] = f"user{n}@example.org"
        msg["Subject"] = f"message {n}"
        msg.set_content(f"Message number {n}.\n")
        message_id = request.mailer.send(msg)
        print(message_id, flush=True)  # the test counts the sends that never committed
        request.dbsession.execute(sa.text("INSERT INTO sent VALUES (:m, :n)"),
                                  {"m": message_id, "n": n})
        zope.sqlalchemy.mark_changed(request.dbsession)
        if request.params.get("fail"):
            raise RuntimeError("the view failed after sending")
        kill = request.params.get("kill")
        if kill:
            request.tm.get().join(Killer(*KILL_POINTS[kill]))
        return Response(message_id)

    config.add_route("send", "/send")
    config.add_view(send, route_name="send")
    return config.make_wsgi_app()


def ini_app(global_config, **settings):
    """The app as an ini's ``use = call:tests.crash_app:ini_app`` loads it (txmail-qp)."""
    return make_app(settings.pop("mail.queue_path"), settings.pop("crash.db", ":memory:"),
                    **settings)


def committed_ids(db):
    """The Message-IDs whose transaction committed (the rows in the database)."""
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT message_id FROM sent")}


def committed_in(db, message_id):
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT 1 FROM sent WHERE message_id = ?",
                            (message_id,)).fetchone() is not None


def committed(message_id, registry):
    """``mail.commit_check``: did the transaction that sent ``message_id`` commit?"""
    return committed_in(registry.settings["crash.db"], message_id)


def main(argv=None):
    import webtest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spool")
    parser.add_argument("db")
    parser.add_argument("--kill-at", choices=sorted(KILL_POINTS))
    parser.add_argument("--kill-on", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    app = webtest.TestApp(make_app(args.spool, args.db))
    rand = random.Random(args.seed)
    print("ready", flush=True)
    for n in range(1, 100000):
        params = {"n": str(n)}
        if args.kill_at and n == args.kill_on:
            params["kill"] = args.kill_at
        elif rand.random() < 0.25:
            params["fail"] = "1"
        try:
            app.get("/send", params)
        except RuntimeError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
