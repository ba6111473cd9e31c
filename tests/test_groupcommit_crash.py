"""Crash test: kill -9 the application while commits wait on a shared fsync of ``new/``.

tests/groupcommit_crash_app.py runs the crash tests' application from 8
threads and kills itself inside an fsync of ``new/`` once at least two other
commits (database committed, file renamed into ``new/``) are waiting for the
next shared fsync.  The spool is then recovered and delivered to a real SMTP
server and checked against the database, as tests/test_crash.py does: every
committed message delivered exactly once, nothing of an uncommitted
transaction delivered, nothing left behind.

A kill -9 keeps the page cache (the renames survive it), so this checks what
recovery makes of several commits caught at once between rename and fsync,
not what a power cut leaves: that rests on the argument in
pyramid_txmail/queue/maildir/groupcommit.py (no commit returns before an
fsync that began after its rename has ended).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest

from pyramid_txmail.queue.maildir.spool import Spool

from .reliability import record, runs
from .smtpserver import SMTPServer
from .test_crash import ROOT, AppTally

pytestmark = pytest.mark.reliability


def test_app_killed_while_commits_wait_on_a_shared_fsync(tmp_path):
    tally, waiting = AppTally(), 0
    rand = random.Random(14)
    for run in range(runs(2, 10)):
        path = tmp_path / f"run{run}"
        path.mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.groupcommit_crash_app", str(path / "spool"),
             str(path / "app.db"), "--threads", "8", "--waiting", "2",
             "--seed", str(rand.randrange(1 << 30))],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        assert proc.wait(timeout=120) == -signal.SIGKILL, proc.stderr.read()
        said = proc.stderr.read()
        assert "renames waiting on the shared fsync" in said, said
        spool = Spool(str(path / "spool"))
        waiting += len(spool.names("new"))
        with SMTPServer() as server:
            tally.check_run(path, server, spool, proc=proc)
    assert tally.lost == 0 and tally.messages > 0
    record("crash", "application (8 threads) killed (kill -9) while commits waited on a "
           "shared fsync of new/", runs=tally.runs, messages=tally.messages,
           delivered=tally.delivered, lost=tally.lost, held=tally.held,
           detail=f"{waiting} message(s) in new/ at the kills (renamed, their fsync not "
                  f"ended); {tally.uncommitted} sends of transactions that did not commit: "
                  "none delivered; in-doubt files resolved by mail.commit_check")
