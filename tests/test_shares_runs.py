"""The children's shares under trouble (probe findings): clocks that disagree with
``deferred/``'s mtimes, thieves that meet, and a child killed during a one-pass run.

Real ``txmail-qp`` runs into aiosmtpd on 127.0.0.1, as in :mod:`tests.test_shares`.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time

import pytest

from pyramid_txmail.processor.pass_stats import PassStats
from pyramid_txmail.queue.maildir.backend import MaildirQueue
from pyramid_txmail.queue.maildir.shares import Share
from pyramid_txmail.queue.maildir.spool import Spool

from .test_daemon import WAIT, received, wait_until
from .test_qp import QP, write_ini
from .test_shares import FUTURE, StuckFirst, defer, fill, run_qp, tickets

SUMMARY = re.compile(r"pass by (\d) processes: sent=(\d+) deferred=(\d+) failed=(\d+) "
                     r"skipped=(\d+) recovered=\d+ errors=(\d+) taken=(\d+)(.*)")


def summary(stderr):
    found = SUMMARY.search(stderr)
    assert found, stderr
    return found.groups()


def deferred_not_due(tmp_path, count):
    spool = Spool(str(tmp_path / "spool"))
    queue = MaildirQueue(spool)
    for name in fill(spool, count, tag="w"):
        defer(queue, name, FUTURE)
    return spool


@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_waiting_mail_whose_mtimes_are_in_the_future_is_skipped_by_every_count(
        tmp_path, smtp_server, processes):
    """A clock stepped back, a file server's clock ahead, files restored: ``skipped``
    must not depend on the files' mtimes (it once said 0 with 2 or more processes)."""
    spool = deferred_not_due(tmp_path, 12)
    ahead = time.time() + 3600
    for filename in os.listdir(os.path.join(spool.path, "deferred")):
        os.utime(os.path.join(spool.path, "deferred", filename), (ahead, ahead))
    proc = run_qp(write_ini(tmp_path, smtp_server, f"mail.processes = {processes}\n"))
    assert proc.returncode == 0, proc.stderr
    if processes == 1:
        assert "skipped=12 " in proc.stderr, proc.stderr
    else:
        assert summary(proc.stderr)[1:6] == ("0", "0", "0", "12", "0"), proc.stderr


def test_a_daemon_child_counts_its_share_of_the_waiting_mail(tmp_path):
    """Each child of a daemon says ``skipped`` in its own stop line: its share, as a
    one-pass child does, not all of ``deferred/`` (which every child would repeat)."""
    spool = deferred_not_due(tmp_path, 20)
    names = spool.names("deferred")
    counted = []
    for index in (0, 1, 2):
        queue = MaildirQueue(spool)
        queue.prefer_share(index, 3)  # a daemon's: no run listing
        for _ in range(2):  # the second pass reuses the unchanged listing
            stats = PassStats()
            tickets(queue, stats)
            counted.append(stats.skipped)
        assert counted[-2:] == [sum(Share(index, 3).holds(n) for n in names)] * 2
    assert sum(counted) == 2 * len(names)


def test_a_run_counts_what_waited_when_it_began_not_what_a_sibling_deferred(tmp_path):
    """The parent lists ``deferred/`` before it forks; a child counts its share of
    those files still waiting -- not a file a sibling deferred during the run, whatever
    the files' mtimes say."""
    spool = deferred_not_due(tmp_path, 6)
    later_names = list(fill(spool, 6, tag="late"))
    run_listing = Spool(spool.path).deferred_files()
    for name in later_names:  # deferred by siblings during the run
        defer(MaildirQueue(spool), name, FUTURE)
    counted = []
    for index in (0, 1):
        queue = MaildirQueue(spool)
        queue.prefer_share(index, 2, waiting_before=run_listing)
        stats = PassStats()
        tickets(queue, stats)
        counted.append(stats.skipped)
    assert sum(counted) == 6


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


@contextlib.contextmanager
def stuck_run(tmp_path, server, messages, processes):
    """txmail-qp with ``processes`` of one worker each over ``messages`` new ones,
    entered once the relay holds the first message; killed on the way out if it is
    still running.  Its stderr goes to a file (a full pipe would stop the run)."""
    spool = Spool(str(tmp_path / "spool"))
    made = fill(spool, messages)
    ini = write_ini(tmp_path, server, f"mail.processes = {processes}\n")
    with open(ini) as f:  # the held reply must not time out
        text = f.read().replace("mail.timeout = 10", "mail.timeout = 120")
    with open(ini, "w") as f:
        f.write(text)
    with open(tmp_path / "qp.log", "w+") as log:
        proc = subprocess.Popen([QP, ini, "--no-app", "--workers", "1"], stderr=log)
        try:
            if not server.handler.held.wait(WAIT):
                pytest.fail("no message reached the relay: " + _read(log))
            yield spool, made, proc.pid, lambda status: _ended(proc, status, log)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _ended(proc, status, log):
    """Its stderr once it has ended with ``status``."""
    assert proc.wait(timeout=120) == status, _read(log)
    return _read(log)


def _read(log):
    log.seek(0)
    return log.read()


#: Messages of the run with a stuck relay.  Thieves that walked the orphaned share in
#: the same order (newest first) met at nearly every file of it: taken=195 of 600
#: (N = 3, a share of about 200); each in its own part first, 11 to 24 in 10 runs
#: made two at a time.
STUCK_RUN = 600


def test_thieves_of_a_stuck_siblings_share_seldom_meet(tmp_path, make_smtp_server):
    server = make_smtp_server(handler=StuckFirst())
    with stuck_run(tmp_path, server, STUCK_RUN, 3) as (spool, made, _, ended):
        wait_until(lambda: len(server.messages) == len(made) - 1, 120,
                   "every message but the one held")
        server.handler.gate.set()
        err = ended(0)
    assert received(server) == {(m, "b@example.org"): 1 for m in made.values()}
    processes, sent, deferred, failed, skipped, errors, taken, rest = summary(err)
    assert (processes, sent, deferred, failed, errors) == ("3", str(STUCK_RUN), "0", "0", "0")
    assert int(taken) <= STUCK_RUN // 10, err
    assert spool.names("new") == spool.names("cur") == []


def test_a_one_pass_summary_says_a_killed_childs_counts_are_missing(tmp_path,
                                                                   make_smtp_server):
    """3000 messages, 3 processes, one killed with SIGKILL: the sink had 2998 and the
    summary said sent=2796 as if that were all.  It says that it is partial."""
    server = make_smtp_server(handler=StuckFirst())
    with stuck_run(tmp_path, server, 60, 3) as (_, _, qp, ended):
        with open(f"/proc/{qp}/task/{qp}/children") as f:
            victim = int(f.read().split()[0])
        os.kill(victim, signal.SIGKILL)
        server.handler.gate.set()
        err = ended(1)
    rest = summary(err)[-1]
    assert rest.startswith(" (1 process was killed by SIGKILL: its counts are missing)"), err
