"""Crash tests: kill -9 the application around its commit, and the processor mid-drain.

After every kill the spool is delivered to a real SMTP server on 127.0.0.1
and checked against the truth:

- the application (tests/crash_app.py) keeps a SQLite row per committed
  message: every committed message is delivered exactly once, no message of
  an uncommitted transaction is ever delivered, and nothing is left in
  ``tmp/``, ``prepared/``, ``new/`` or ``cur/``;
- the processor (a real ``txmail-qp`` process) is killed while it sends:
  afterwards every message reaches every recipient, and only messages in
  flight at the kill (at most one per worker) may arrive twice.
"""
from __future__ import annotations

import asyncio
import collections
import email
import functools
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir.spool import Spool

from .crash_app import KILL_POINTS, committed_ids, committed_in
from .reliability import record, runs
from .smtpserver import ScriptedHandler, SMTPServer

pytestmark = pytest.mark.reliability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
LATER = 2 * 3600.0  # past mail.commit_grace and mail.claim_timeout (1 h each)
LIVE = ("tmp", "prepared", "new", "cur", "deferred")


def received_ids(server):
    """Message-ID → how many copies arrived (one per recipient counts once)."""
    counts = collections.Counter()
    for got in server.messages:
        counts[email.message_from_bytes(got.data)["Message-ID"]] += 1
    return counts


def spool_left(spool):
    return {state: spool.names(state) for state in LIVE + ("failed",) if spool.names(state)}


def start_app(tmp_path, *args):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_app", str(tmp_path / "spool"),
         str(tmp_path / "app.db"), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n", proc.stderr.read()
    return proc


def drain(spool, server, check=None):
    """Recovery and delivery as ``txmail-qp`` does it, two hours later."""
    settings = {"mail.queue_path": spool.path, "mail.host": server.host,
                "mail.port": str(server.port)}
    if check is not None:
        settings["mail.commit_check"] = check
    processor = Processor(spool, None, parse_settings(settings),
                          clock=lambda: time.time() + LATER)
    return processor.run_once()


class AppTally:
    """Counts over the runs of one application crash scenario."""

    def __init__(self):
        self.runs = self.messages = self.delivered = self.duplicated = self.lost = 0
        self.held = self.leftovers = self.uncommitted = 0

    def check_run(self, tmp_path, server, spool, with_check=True, proc=None):
        db = str(tmp_path / "app.db")
        left = {state: len(spool.names(state)) for state in ("tmp", "prepared")}
        check = functools.partial(committed_in_check, db) if with_check else None
        drain(spool, server, check)
        truth = committed_ids(db)
        got = received_ids(server)
        uncommitted = set(got) - truth
        assert not uncommitted, f"delivered without a committed transaction: {uncommitted}"
        duplicates = {m: n for m, n in got.items() if n > 1}
        assert not duplicates, f"delivered twice: {duplicates}"
        remaining = spool_left(spool)
        held = set()
        for name in remaining.pop("failed", []):
            meta = spool.read_meta(name)
            assert meta.get("in_doubt") and not with_check, meta
            held.add(meta["message_id"])
        assert remaining == {}, remaining
        lost = truth - set(got) - held
        assert not lost, f"committed but neither delivered nor held: {lost}"
        if proc is not None:  # every send() the app made; those not committed never arrive
            sends = set(proc.stdout.read().split())
            assert truth <= sends
            self.uncommitted += len(sends - truth)
        self.runs += 1
        self.messages += len(truth)
        self.delivered += len(set(got) & truth)
        self.held += len(held)
        self.leftovers += left["tmp"] + left["prepared"]
        return left, held


def committed_in_check(db, message_id, registry):
    return committed_in(db, message_id)


@pytest.fixture
def run_dir(tmp_path):
    """A fresh directory per run (spool + database)."""
    count = iter(range(1000))

    def make():
        path = tmp_path / f"run{next(count)}"
        path.mkdir()
        return path

    return make


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_app_killed_at_each_point_of_the_commit(run_dir, point):
    tally, doubts = AppTally(), collections.Counter()
    rand = random.Random(point)
    for _ in range(runs(2, 13)):
        path = run_dir()
        proc = start_app(path, "--kill-at", point, "--kill-on", str(rand.randint(1, 8)),
                         "--seed", str(rand.randrange(1 << 30)))
        assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read()
        spool = Spool(str(path / "spool"))
        in_prepared = spool.names("prepared")
        with SMTPServer() as server:
            left, _ = tally.check_run(path, server, spool, proc=proc)
        # the kill point decides what is left, and so what recovery must do
        expected = {"before-vote": (0, 0), "after-mail-vote": (0, 1),
                    "after-db-commit": (0, 1), "after-finish": (0, 0)}[point]
        assert (left["tmp"], left["prepared"]) == expected, left
        for name in in_prepared:
            doubts["committed" if point == "after-db-commit" else "not committed"] += 1
    assert tally.lost == 0
    record("crash", f"application killed (kill -9) at {point}", runs=tally.runs,
           messages=tally.messages, delivered=tally.delivered, lost=tally.lost,
           held=tally.held,
           detail=f"{tally.uncommitted} sends of transactions that did not commit (the "
                  "view failed, or the kill came first): none delivered; in doubt in "
                  "prepared/, resolved by mail.commit_check: "
                  + (", ".join(f"{n} {k}" for k, n in sorted(doubts.items())) or "none"))


def test_app_killed_at_random_moments(run_dir):
    tally = AppTally()
    rand = random.Random(6)
    for _ in range(runs(4, 50)):
        path = run_dir()
        proc = start_app(path, "--seed", str(rand.randrange(1 << 30)))
        time.sleep(rand.uniform(0.0, 0.3))
        proc.kill()
        proc.wait(timeout=60)
        with SMTPServer() as server:
            tally.check_run(path, server, Spool(str(path / "spool")), proc=proc)
    assert tally.lost == 0 and tally.messages > 0
    record("crash", "application killed (kill -9) at a random moment", runs=tally.runs,
           messages=tally.messages, delivered=tally.delivered, lost=tally.lost,
           detail=f"{tally.uncommitted} sends of transactions that did not commit: none "
                  f"delivered; {tally.leftovers} half-committed file(s) left in tmp/ or "
                  "prepared/ by the kills, all resolved")


def killed_in_doubt(path, kill_on, seed):
    """The app killed between its database's commit and the spool's finish: its spool."""
    proc = start_app(path, "--kill-at", "after-db-commit", "--kill-on", str(kill_on),
                     "--seed", str(seed))
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read()
    return Spool(str(path / "spool"))


def test_in_doubt_without_a_commit_check_is_held_not_lost_nor_sent(run_dir):
    """No mail.commit_check: the committed in-doubt message waits in failed/ for a person."""
    path = run_dir()
    spool = killed_in_doubt(path, kill_on=3, seed=1)
    tally = AppTally()
    with SMTPServer() as server:
        _, held = tally.check_run(path, server, spool, with_check=False)
        assert len(held) == 1 and held <= committed_ids(str(path / "app.db"))
        # the person checks, and retries it: then it is delivered
        [name] = spool.names("failed")
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "txmail-queue"),
                               write_ini(path, server), "retry", name],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        drain(spool, server)
        assert set(received_ids(server)) == committed_ids(str(path / "app.db"))
        tally.delivered = len(received_ids(server))
    record("crash", "killed between the database commit and the spool's finish, "
           "no mail.commit_check", runs=1, messages=tally.messages,
           delivered=tally.delivered, held=tally.held, lost=0,
           detail="the in-doubt message (held) waited in failed/ with its reason until "
                  "txmail-queue retry, which then delivered it")


def write_ini(path, server, extra=""):
    ini = path / "app.ini"
    ini.write_text("[app:main]\nuse = call:tests.crash_app:ini_app\n"
                   f"mail.queue_path = {path / 'spool'}\nmail.host = {server.host}\n"
                   f"mail.port = {server.port}\nmail.timeout = 10\n"
                   # the process killed must be the one that sends (tests/test_processes.py
                   # kills children of several processes)
                   f"mail.processes = 1\n{extra}")
    return str(ini)


# -- the processor, killed mid-drain --------------------------------------------------


class KillingHandler(ScriptedHandler):
    """Accepts mail, and SIGKILLs the sending process when message ``kill_on`` arrives.

    ``before_reply``: the kill comes after the message is stored but before
    the 250 goes out (the client never learns it was delivered: the RFC 1047
    window, a duplicate is expected); otherwise just after the reply.
    """

    def __init__(self, kill_on, before_reply):
        super().__init__()
        self.kill_on, self.before_reply = kill_on, before_reply
        self.pid = None
        self.killed = threading.Event()
        self.refusing = False

    async def handle_DATA(self, server, session, envelope):
        if self.refusing:  # the killed process's other connection: it is gone
            return "421 gone"
        reply = await super().handle_DATA(server, session, envelope)
        if len(self.messages) >= self.kill_on and self.pid and not self.killed.is_set():
            self.killed.set()
            self.refusing = True
            kill = functools.partial(os.kill, self.pid, signal.SIGKILL)
            if self.before_reply:
                kill()
            else:  # once the reply below has been written to the socket
                asyncio.get_running_loop().call_soon(kill)
        return reply


def fill(spool, count, tag):
    ids = []
    for i in range(count):
        mid = f"<{tag}.{i}@example.org>"
        data = (f"From: app@example.org\nTo: a{i}@example.org\nSubject: {i}\n"
                f"Message-ID: {mid}\n\nbody {i}\n").encode()
        name = spool.prepare("app@example.org", [f"a{i}@example.org", f"b{i}@example.net"],
                             data)
        spool.commit_prepared([name])
        ids.append(mid)
    return ids


def test_processor_killed_mid_drain(run_dir):
    rand = random.Random(7)
    workers = 2
    totals = collections.Counter()
    for run in range(runs(4, 50)):
        path = run_dir()
        spool = Spool(str(path / "spool"))
        count = rand.randint(5, 40)
        ids = fill(spool, count, f"r{run}")
        handler = KillingHandler(rand.randint(1, count), before_reply=rand.random() < 0.5)
        with SMTPServer(handler=handler) as server:
            ini = write_ini(path, server, f"mail.workers = {workers}\n")
            proc = subprocess.Popen([QP, ini, "--no-app", "-q"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            handler.pid = proc.pid
            proc.wait(timeout=60)
            assert handler.killed.is_set() and proc.returncode == -signal.SIGKILL, \
                proc.stderr.read()
            handler.refusing = False
            claimed = len(spool.names("cur"))  # in flight at the kill
            stats = drain(spool, server)  # two hours later: the stale claims come back
            # every message reached both its recipients: each DATA carries both
            got = received_ids(server)
            assert set(got) == set(ids), set(ids) - set(got)
            duplicated = {m: n for m, n in got.items() if n > 1}
            assert all(n == 2 for n in duplicated.values())
            assert len(duplicated) <= workers, duplicated  # only what was in flight
            assert spool_left(spool) == {}, spool_left(spool)
            # what was in flight came back (a state file the kill cut short is cleaned
            # up too, and counted with them)
            assert claimed <= workers and stats.recovered >= claimed
        totals["runs"] += 1
        totals["messages"] += count
        totals["delivered"] += len(got)
        totals["duplicated"] += len(duplicated)
        totals["kills_before_reply"] += handler.before_reply
    record("crash", f"txmail-qp ({workers} workers) killed (kill -9) mid-drain",
           runs=totals["runs"], messages=totals["messages"], delivered=totals["delivered"],
           duplicated=totals["duplicated"], lost=0,
           detail=f"{totals['kills_before_reply']} kills between a stored message and its "
                  "250 reply (RFC 1047 window: a duplicate is expected there), the others "
                  "just after a reply; duplicates only among messages in flight")


def test_txmail_qp_asks_the_apps_commit_check(run_dir):
    """The real command: it loads the app, whose registry the check reads its database from."""
    path = run_dir()
    spool = killed_in_doubt(path, kill_on=2, seed=3)
    [name] = spool.names("prepared")
    then = time.time() - 120
    os.utime(os.path.join(spool.path, "prepared", name), (then, then))
    with SMTPServer() as server:
        ini = write_ini(path, server, f"crash.db = {path / 'app.db'}\nmail.commit_grace = 1m\n"
                                      "mail.commit_check = tests.crash_app:committed\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        done = subprocess.run([QP, ini], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"in doubt {name}" in done.stderr and "committed; queued" in done.stderr
        assert set(received_ids(server)) == committed_ids(str(path / "app.db"))
    assert spool_left(spool) == {}
