"""Real ``txmail-qp`` daemons draining the SQL outbox, for the ``sql`` reliability group.

Why a module of its own: every scenario of tests/test_sql_reliability.py (and
its SQLite neighbour) does the same four things against real parts --

- write messages with :func:`pyramid_txmail.queue.sql.enqueue` in committed
  transactions of the "application's" own engine (:func:`fill`);
- run ``txmail-qp --daemon`` processes from the venv on an ini naming
  ``mail.queue_url`` (:class:`Daemon`), each logging to a file of its own
  (never a pipe: 5,000 "sent" lines would fill it and stall the process);
- wait, with a generous bound that is never a measurement, until the sink
  (an aiosmtpd server on 127.0.0.1) and the table say the work is done
  (:func:`wait_for`);
- count, from the sink and the table only, what arrived and what is left
  (:func:`copies`, :func:`outbox_states`, :func:`claims_of`).

The processes' own log lines are read for what only they know: which
messages each one sent (its share) and why its daemon woke up.
"""
from __future__ import annotations

import collections
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import sqlalchemy as sa

from pyramid_txmail.queue.sql import enqueue, init_db, outbox
from pyramid_txmail.queue.sql.schema import db_epoch

QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
#: How long a scenario may wait for something that must happen (a bound: a
#: loaded 2-core machine may be slow; the tests never assert on speed).
PATIENCE = 300.0
_SENT = re.compile(r"\] sent (<[^>]*>) from ")
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


def write_ini(path, url, server, **mail):
    """An ini for txmail-qp: the outbox at ``url``, the sink ``server``, ``mail.*`` extras."""
    values = {"host": server.host, "port": server.port, "queue_url": url, "timeout": "30",
              "poll_interval": "0.1",
              # each daemon one process: the one a crash scenario kills is the one sending
              "processes": "1", **mail}
    lines = ["[app:main]", "use = egg:pyramid_txmail"]
    lines += [f"mail.{key} = {value}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def app_engine(url):
    """The application's engine (not the processors'): SQLite waits for their locks."""
    if url.startswith("sqlite"):
        return sa.create_engine(url, connect_args={"timeout": 60})
    return sa.create_engine(url, pool_pre_ping=True)  # as an app must, across restarts


def setup_outbox(url):
    engine = app_engine(url)
    init_db(engine)
    return engine


def message(mid, i):
    return (f"From: app@example.org\r\nTo: user{i}@example.org\r\nSubject: {i}\r\n"
            f"Message-ID: {mid}\r\n\r\nbody {i}\r\n").encode()


def fill(engine, count, tag, rand=None, per_transaction=(1, 10)):
    """Enqueue ``count`` messages in committed transactions of 1-10 each; their Message-IDs."""
    rand = rand or random.Random(tag)
    ids = []
    while len(ids) < count:
        batch = min(rand.randint(*per_transaction), count - len(ids))
        with engine.begin() as connection:
            for _ in range(batch):
                i = len(ids)
                mid = f"<{tag}.{i}@example.org>"
                enqueue(connection, "app@example.org", [f"user{i}@example.org"],
                        message(mid, i))
                ids.append(mid)
    return ids


class Daemon:
    """One ``txmail-qp INI --no-app --daemon`` process, its log in a file."""

    def __init__(self, ini, log_path, *extra):
        self.ini = ini
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        self.proc = subprocess.Popen([QP, ini, "--no-app", "--daemon", *extra],
                                     stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        #: ``claimed_by`` of this process's rows (host:pid, as the backend writes it)
        self.claimer = f"{socket.gethostname()}:{self.pid}"[:255]

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def started(self):
        wait_for(lambda: "daemon started" in self.log() or self.proc.poll() is not None,
                 f"txmail-qp {self.pid} to start", self)
        assert self.proc.poll() is None, self.log()[-3000:]
        return self

    def sent(self):
        """The Message-IDs this process logged as sent (its share)."""
        return _SENT.findall(self.log())

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        self.proc.kill()
        self.proc.wait(PATIENCE)
        self.log_file.close()

    def stop(self):
        """SIGTERM; the daemon finishes what is in flight and exits 0."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(PATIENCE)
        self.log_file.close()
        return code

    def close(self):
        if self.proc.poll() is None:
            self.kill()
        self.log_file.close()


def start_daemons(tmp_path, ini, count, first=0, extra=()):
    """``count`` started daemons; if one fails to start (or ^C), none is left running."""
    daemons = []
    try:
        for i in range(count):
            daemons.append(Daemon(ini, str(tmp_path / f"qp{first + i}.log"), *extra))
        return [daemon.started() for daemon in daemons]
    except BaseException:
        for daemon in daemons:
            daemon.close()
        raise


def wait_for(condition, what, *daemons, patience=PATIENCE):
    """Until ``condition()`` is true; after ``patience`` seconds a failure naming ``what``
    with the daemons' last log lines (a bound on a hang, never a measurement)."""
    deadline = time.monotonic() + patience
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {d.log_path}:\n{d.log()[-2000:]}" for d in daemons)
            raise AssertionError(f"still waiting for {what} after {patience:.0f}s\n{tails}")
        time.sleep(0.05)


def copies(server):
    """``Counter(Message-ID)`` of every copy the sink stored."""
    with server.handler.lock:
        stored = list(server.handler.messages)
    counts = collections.Counter()
    for got in stored:
        match = _MESSAGE_ID.search(got.data)
        counts[match.group(1).decode() if match else None] += 1
    return counts


def outbox_states(engine):
    """``Counter(state)`` of every row in the outbox."""
    with engine.connect() as connection:
        return collections.Counter(dict(connection.execute(
            sa.select(outbox.c.state, sa.func.count()).group_by(outbox.c.state)).all()))


def live_leases(engine):
    """Rows ``in_progress`` whose lease has not run out (by the database's clock)."""
    with engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(outbox).where(
            outbox.c.state == "in_progress", outbox.c.lease_until > db_epoch())).scalar()


def claims_of(engine, claimer):
    """Message-IDs of the rows ``claimer`` (host:pid) holds ``in_progress`` now."""
    with engine.connect() as connection:
        return set(connection.execute(sa.select(outbox.c.message_id).where(
            outbox.c.state == "in_progress", outbox.c.claimed_by == claimer)).scalars())


def settled(engine, count):
    """All ``count`` rows delivered: nothing queued, claimed, deferred or failed."""
    return outbox_states(engine) == collections.Counter(delivered=count)


def shares(daemons):
    """``{pid: messages it logged as sent}``, and the total over every process."""
    per = {d.pid: len(d.sent()) for d in daemons}
    return per, sum(per.values())


_WOKE = re.compile(r"woke up after at most [\d.]+s: (\S+)")


def wait_for_pass(daemon, after=0):
    """Until ``daemon`` logged the end of a pass after offset ``after`` of its log (with
    ``-v`` an idle pass is logged too): it is then asleep, or about to be."""
    wait_for(lambda: "txmail-qp pass over" in daemon.log()[after:], "a pass", daemon)


def wait_for_sent(daemon, message_id):
    wait_for(lambda: f"] sent {message_id} from " in daemon.log(), f"{message_id} sent",
             daemon)


def wake_before_sent(log, message_id):
    """Why the daemon woke up for the pass that sent ``message_id`` (needs ``-v``):
    ``"mail"`` (a notification, or a look that found it), ``"timeout"`` (a timer)."""
    sent = log.index(f"] sent {message_id} from ")
    reasons = _WOKE.findall(log[:sent])
    return reasons[-1] if reasons else None
