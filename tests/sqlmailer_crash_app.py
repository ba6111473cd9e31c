"""The application process of tests/test_sqlmailer_crash.py, killed with SIGKILL.

``python -m tests.sqlmailer_crash_app URL PREFIX [--kill-at POINT --kill-on N] [--seed S]``
builds the app of tests/sqlmailer_app.py (pyramid_tm, zope.sqlalchemy, the SQL
outbox on the database at URL) and sends it requests in a loop: each inserts
an application row and sends a mail (its row goes into the same transaction),
and a quarter of them fail or are doomed after that (nothing may commit).  It
prints ``ready`` once set up, then each address as it is handed to ``send()``.
Without ``--kill-at`` it runs until the test kills it at a random moment; with
it, request ``N`` kills its own process at ``POINT`` (:data:`KILL_POINTS`).

The database is the truth, and the only store: after any kill every committed
application row must have exactly its mail row, and no mail row may exist
without its application row.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys

import transaction
import webtest
from transaction.interfaces import IDataManager
from zope.interface import implementer

from .sqlmailer_app import make_app

#: Where request N kills its process: (sort key of the killing data manager, phase).
#: Our mail data manager sorts as "!pyramid_txmail", zope.sqlalchemy's as
#: "~sqlalchemy" (it commits the database in its tpc_vote).  ``in-view`` kills
#: right after the send, before the view returns.
KILL_POINTS = {
    "in-view": None,                                 # row INSERTed, nothing committed
    "before-db-commit": (" kill", "tpc_vote"),       # nothing voted yet
    "after-db-commit": ("~~kill", "tpc_vote"),       # the database committed
    "after-finish": ("~~kill", "tpc_finish"),        # the transaction finished
}
#: The points at which the killed request's rows are committed.
COMMITTED_AT = ("after-db-commit", "after-finish")


def die():
    os.kill(os.getpid(), signal.SIGKILL)


@implementer(IDataManager)
class Killer:
    """A data manager that SIGKILLs its own process in one phase of the commit."""

    def __init__(self, key, phase):
        self.key, self.phase = key, phase
        self.transaction_manager = transaction.manager

    def sortKey(self):
        return self.key

    def tpc_vote(self, txn):
        if self.phase == "tpc_vote":
            die()

    def tpc_finish(self, txn):
        if self.phase == "tpc_finish":
            die()

    def abort(self, txn):
        pass

    tpc_begin = commit = tpc_abort = abort


def kill_hook(request):
    """Called by the view after the send (``sqlmailer_app.signup``'s ``test.after_send``)."""
    point = request.params.get("kill")
    if point == "in-view":
        die()
    elif point:
        request.tm.get().join(Killer(*KILL_POINTS[point]))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("--kill-at", choices=sorted(KILL_POINTS))
    parser.add_argument("--kill-on", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rand = random.Random(args.seed)
    app = webtest.TestApp(make_app(args.url))
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        email = f"{args.prefix}-{n}@example.org"
        params = {"email": email}
        roll = rand.random()
        if roll < 0.125:
            params["outcome"] = "exception"
        elif roll < 0.25:
            params["outcome"] = "doom"
        if args.kill_at and n == args.kill_on:
            params = {"email": email, "kill": args.kill_at}
        print(email, flush=True)  # the test counts the sends that never committed
        try:
            app.get("/signup", params, extra_environ={"test.after_send": kill_hook})
        except RuntimeError:
            pass


if __name__ == "__main__":
    sys.exit(main())
