"""kill -9 of the application with the SQL outbox on PostgreSQL (issue 13, item 4, the app half).

The application process (tests/sqlmailer_crash_app.py) loops over requests that
each insert an application row and send a mail through the SQL outbox; it is
killed with SIGKILL at random moments, and at each point of the commit.  After
every kill, on the private PostgreSQL:

- every committed application row has exactly one mail row, and no mail row
  exists without its application row (the mail commits exactly with the data);
- nothing is in doubt: no prepared (two-phase) transaction exists, and no state
  but ``queued`` was written -- there is nothing for a ``commit_check`` to do.

Delivering those rows exactly once is the processor's side (the SQL backend's
own crash tests).  ``make test`` runs a few rounds (about 30 s);
``make reliability`` (TXMAIL_RELIABILITY=long) many more.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from pyramid_txmail.queue.sql import outbox

from .reliability import record, runs
from .sqlmailer_app import create_tables, recipients_of, rows
from .sqlmailer_crash_app import COMMITTED_AT, KILL_POINTS

pytestmark = pytest.mark.reliability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_app(url, prefix, *args):
    proc = subprocess.Popen([sys.executable, "-m", "tests.sqlmailer_crash_app", url, prefix,
                             *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line != "ready\n":
        proc.kill()
        pytest.fail(f"the app did not start: {line!r}\n{proc.stderr.read()}")
    return proc


class Tally:
    """Counts over the rounds of one scenario, and the check after each kill."""

    def __init__(self, engine):
        self.engine = engine
        self.runs = self.committed = self.uncommitted = 0

    def check(self, proc):
        """The invariant, after ``proc`` was killed; returns the committed addresses."""
        sends = proc.stdout.read().split()
        proc.stderr.close()
        emails, mails = rows(self.engine)
        assert emails == recipients_of(mails), (
            "application rows and mail rows differ: "
            f"{sorted(set(emails) ^ set(recipients_of(mails)))}")
        assert len(mails) == len({m for m, _ in mails}), "a message has two mail rows"
        with self.engine.connect() as connection:
            prepared = connection.execute(sa.text("SELECT gid FROM pg_prepared_xacts")).all()
            states = set(connection.execute(sa.select(outbox.c.state).distinct()).scalars())
        assert prepared == [], f"transactions left prepared (in doubt): {prepared}"
        assert states <= {"queued"}, states
        mine = [e for e in emails if e in set(sends)]
        self.runs += 1
        self.committed += len(mine)
        self.uncommitted += len(sends) - len(mine)
        return set(mine), sends


@pytest.fixture
def engine(pg_url):
    engine = sa.create_engine(pg_url)
    create_tables(engine)
    yield engine
    engine.dispose()


def test_app_killed_at_random_moments(engine, pg_url):
    tally = Tally(engine)
    rand = random.Random(13)
    for round_ in range(runs(8, 80)):
        proc = start_app(pg_url, f"r{round_}", "--seed", str(rand.randrange(1 << 30)))
        time.sleep(rand.uniform(0.0, 0.4))
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
        tally.check(proc)
    assert tally.committed > 0
    record("sql", "application killed (kill -9) at a random moment, SQL outbox on "
           "PostgreSQL", runs=tally.runs, messages=tally.committed, lost=0,
           detail=f"after every kill each committed app row had exactly its mail row and "
                  f"no mail row was without one; {tally.uncommitted} sends of transactions "
                  "that did not commit left no row; nothing prepared or in doubt")


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_app_killed_at_each_point_of_the_commit(engine, pg_url, point):
    tally = Tally(engine)
    rand = random.Random(point)
    for round_ in range(runs(1, 8)):
        kill_on = rand.randint(1, 6)
        proc = start_app(pg_url, f"{point}{round_}", "--kill-at", point,
                         "--kill-on", str(kill_on), "--seed", str(rand.randrange(1 << 30)))
        assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read()
        committed, sends = tally.check(proc)
        killed = sends[-1]  # the request that killed its process
        assert sends == [f"{point}{round_}-{n}@example.org" for n in range(1, kill_on + 1)]
        # The kill point decides whether that request's rows committed -- both or neither.
        assert (killed in committed) == (point in COMMITTED_AT), (point, killed, committed)
    record("sql", f"application killed (kill -9) {point}, SQL outbox on PostgreSQL",
           runs=tally.runs, messages=tally.committed, lost=0,
           detail=f"{tally.uncommitted} sends that did not commit left no row; the "
                  "killed request's app row and mail row committed together or not at all")
