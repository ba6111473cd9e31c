"""txmail-qp killed (kill -9) while it works through a deferred backlog (issue 11, finding 8).

The retry schedule lives in the names of the files in ``deferred/``
(``DUE~NAME``, :mod:`pyramid_txmail.queue.maildir.schedule`).  A pass renames an older
version's plain-named files to their indexed names, claims the due ones
(``deferred/DUE~NAME`` → ``cur/NAME``) and defers again (``cur/NAME`` →
``deferred/DUE~NAME``).  Killed at any of those moments, nothing may be lost,
and no file may be left with a due time its state file does not say (so it
can never be "never due").  A real ``txmail-qp`` process is killed by the
SMTP server when the k-th message arrives; the recovery is a processor run
two hours later, as in test_crash.
"""
from __future__ import annotations

import collections
import email
import os
import random
import signal
import subprocess
import time

import pytest

from pyramid_txmail.queue.maildir.spool import Spool

from .reliability import record, runs
from .smtpserver import SMTPServer
from .test_crash import QP, KillingHandler, drain, spool_left, write_ini

pytestmark = pytest.mark.reliability


def fill(spool, rand, tag):
    """Older-style deferred files (due now or in an hour) and new messages; half of all
    have a recipient that the server answers 451 until the kill.  Returns
    ``{Message-ID: recipients}``."""
    expected = {}
    now = time.time()
    for i in range(rand.randint(10, 30)):
        mid = f"<{tag}.{i}@example.org>"
        rcpts = [f"a{i}@example.org"] + ([f"later{i}@example.org"] if i % 2 else [])
        data = (f"From: app@example.org\nTo: a{i}@example.org\nSubject: {i}\n"
                f"Message-ID: {mid}\n\nbody {i}\n").encode()
        name = spool.write_tmp("app@example.org", rcpts, data)
        kind = rand.choice(("new", "deferred due", "deferred later"))
        if kind == "new":
            spool.commit_tmp([name])
        else:
            due = now - 5 if kind == "deferred due" else now + 3600
            spool.write_meta(name, {"attempts": 1, "first_attempt": now - 300,
                                    "last_attempt": now - 300, "next_attempt": due,
                                    "queued_at": now - 300, "delivered": [],
                                    "failed_recipients": [], "history": []})
            os.rename(os.path.join(spool.path, "tmp", name),
                      os.path.join(spool.path, "deferred", name))  # plain name: unindexed
        expected[mid] = rcpts
    return expected


def arrivals(server):
    """(Message-ID, recipient) → copies that arrived."""
    got = collections.Counter()
    for message in server.messages:
        mid = email.message_from_bytes(message.data)["Message-ID"]
        for rcpt in message.rcpt_tos:
            got[mid, rcpt] += 1
    return got


def check_schedule(spool):
    """Every deferred/ file is unindexed or indexed by its state file's next_attempt."""
    for item in spool.scheduled():
        if item.stamp is not None:
            due = spool.read_meta(item.name)["next_attempt"]
            assert due <= item.due_at() < due + 0.001, item


def test_txmail_qp_killed_while_retrying_a_deferred_backlog(tmp_path):
    rand = random.Random(11)
    totals = collections.Counter()
    for run in range(runs(3, 30)):
        path = tmp_path / f"run{run}"
        path.mkdir()
        spool = Spool(str(path / "spool"))
        expected = fill(spool, rand, f"r{run}")
        handler = KillingHandler(rand.randint(1, 6), before_reply=rand.random() < 0.5)
        handler.script = {"rcpt": {r: "451 4.2.1 busy" for rcpts in expected.values()
                                   for r in rcpts if r.startswith("later")}}
        with SMTPServer(handler=handler) as server:
            ini = write_ini(path, server, "mail.workers = 1\n")
            proc = subprocess.Popen([QP, ini, "--no-app", "-q"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            handler.pid = proc.pid
            proc.wait(timeout=60)
            totals["killed"] += proc.returncode == -signal.SIGKILL
            check_schedule(spool)
            handler.refusing, handler.script = False, {}
            drain(spool, server)  # two hours later: the claim comes back, all are due
            got = arrivals(server)
        wanted = {(mid, r) for mid, rcpts in expected.items() for r in rcpts}
        assert set(got) == wanted, wanted - set(got)
        duplicated = sum(n - 1 for n in got.values())
        assert duplicated <= 1  # only the message in flight at the kill (one worker)
        assert spool_left(spool) == {}, spool_left(spool)
        totals["messages"] += len(expected)
        totals["delivered"] += len({mid for mid, _ in got})
        totals["duplicated"] += duplicated
    assert totals["killed"] >= 1
    record("crash", "txmail-qp killed (kill -9) while retrying an older version's "
           "deferred backlog and deferring again", runs=runs(3, 30),
           messages=totals["messages"], delivered=totals["delivered"],
           duplicated=totals["duplicated"], lost=0,
           detail=f"{totals['killed']} runs killed mid-pass (the others finished before "
                  "the k-th message); every deferred/ file afterwards unindexed or indexed "
                  "by its state file's next attempt; duplicates only of the message in "
                  "flight")
