"""Several txmail-qp processes over one spool share it out (issue 14).

Child ``i`` of ``N`` takes first the spool files whose CRC-32 is ``i`` modulo
``N``, then steals what its siblings left (pyramid_txmail.queue.maildir.shares).
Here: the order on a real spool, in-process (two queue objects stand for two
processes), what counts as ``skipped``, and real ``txmail-qp`` runs with two
processes into aiosmtpd on 127.0.0.1 -- every message once, few claims lost,
and a child whose relay is stuck does not keep its share waiting.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import zlib

import pytest

from pyramid_txmail.processor.pass_stats import PassStats
from pyramid_txmail.queue.maildir.backend import MaildirQueue
from pyramid_txmail.queue.maildir.shares import Share
from pyramid_txmail.queue.maildir.spool import Spool

from .smtpserver import ScriptedHandler
from .test_daemon import WAIT, received, wait_until
from .test_qp import QP, write_ini

FUTURE = time.time() + 3600


def fill(spool, count, tag="m"):
    """``count`` messages in new/, oldest first; ``{file name: Message-ID}``."""
    made = {}
    for i in range(count):
        message_id = f"<{tag}{i}.{os.getpid()}@shares.example.org>"
        data = (f"From: a@example.org\nTo: b@example.org\nSubject: {tag} {i}\n"
                f"Message-ID: {message_id}\n\nbody {i}\n").encode()
        made[spool.write_tmp("a@example.org", ["b@example.org"], data)] = message_id
    spool.commit_tmp(list(made))
    return made


def tickets(queue, stats=None, now=None):
    return list(queue.candidates(time.time() if now is None else now, None,
                                 stats if stats is not None else PassStats()))


def defer(queue, name, due):
    """What a processor does to a message it could not send: claim, then defer."""
    claimed = queue.claim(("new", name))
    assert claimed is not None
    queue.defer(claimed, due)
    queue.release(claimed)


# -- which share a name is in --------------------------------------------------------

def test_every_name_is_in_one_share_and_the_same_one_in_every_process(tmp_path):
    names = list(fill(Spool(str(tmp_path / "spool")), 40))
    for count in (2, 3, 5):
        owners = [[i for i in range(count) if Share(i, count).holds(n)] for n in names]
        assert all(len(found) == 1 for found in owners)
    # Python's str hash is salted per process: the share must not depend on it
    code = ("import sys\nfrom pyramid_txmail.queue.maildir.shares import Share\n"
            "print([next(i for i in range(3) if Share(i, 3).holds(n)) "
            "for n in sys.argv[1:]])")
    seen = {subprocess.run([sys.executable, "-c", code, *names], capture_output=True,
                           text=True, env=dict(os.environ, PYTHONHASHSEED=seed),
                           check=True).stdout for seed in ("1", "2", "3")}
    assert seen == {str([next(i for i in range(3) if Share(i, 3).holds(n))
                         for n in names]) + "\n"}
    assert [hash(n) % 3 for n in names] != [zlib.crc32(n.encode()) % 3 for n in names]


def test_a_share_index_outside_the_count_is_refused():
    with pytest.raises(ValueError, match="share 2 of 2: the index must be from 0 to 1"):
        Share(2, 2)


# -- the order of a pass --------------------------------------------------------------

def test_a_process_takes_its_share_oldest_first_then_the_others_in_its_own_order(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    fill(spool, 30)
    oldest_first = spool.names("new")
    queue = MaildirQueue(spool)
    assert tickets(queue) == [("new", n) for n in oldest_first]  # no share: as before
    queue.prefer_share(1, 2)
    mine = [n for n in oldest_first if Share(1, 2).holds(n)]
    theirs = [n for n in oldest_first if not Share(1, 2).holds(n)]
    assert mine and theirs
    assert tickets(queue) == [("new", n) for n in mine + theirs[::-1]]  # one thief: newest
    assert Share(1, 2).steal_order(theirs) == theirs[::-1]
    queue.prefer_share(0, 1)  # one process: everything in the plain order
    assert tickets(queue) == [("new", n) for n in oldest_first]


def test_due_deferred_files_of_the_share_come_first_then_the_others_in_its_order(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    names = list(fill(spool, 16))
    queue = MaildirQueue(spool)
    past = time.time() - 1000
    for i, name in enumerate(names):
        defer(queue, name, past + i)  # due in the order of names
    due = spool.due_files(time.time())[0]
    queue.prefer_share(0, 2)
    share = Share(0, 2)
    mine = [f for f in due if share.holds(f.split("~", 1)[1])]
    theirs = [f for f in due if not share.holds(f.split("~", 1)[1])]
    assert mine and theirs
    assert tickets(queue) == [("deferred", f) for f in mine + theirs[::-1]]


def test_two_thieves_of_one_share_seldom_meet(tmp_path):
    """Share 0's owner is stuck; processes 1 and 2 of 3 both steal it, one claim each
    in turn.  Walking it in the same order (newest first) they met at every file:
    one claim lost per message.  Now each takes its own part of it first."""
    spool = Spool(str(tmp_path / "spool"))
    fill(spool, 300)
    for name in spool.names("new"):
        if not Share(0, 3).holds(name):
            os.unlink(os.path.join(spool.path, "new", name))
    orphans = spool.names("new")
    thieves = []
    for index in (1, 2):
        queue = MaildirQueue(spool)
        queue.prefer_share(index, 3)
        thieves.append((queue, queue.candidates(time.time(), None, PassStats())))
    claimed, lost = [], 0
    while thieves:
        for thief in list(thieves):
            queue, walk = thief
            ticket = next(walk, None)
            if ticket is None:
                thieves.remove(thief)
            elif queue.claim(ticket) is None:
                lost += 1
            else:
                claimed.append(ticket[1])
    assert sorted(claimed) == orphans  # each once
    assert lost <= len(orphans) // 5, (lost, len(orphans))  # the same order: all but a few


def test_a_process_whose_share_is_empty_takes_the_others_messages(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    fill(spool, 20)
    for name in spool.names("new"):
        if Share(0, 2).holds(name):
            os.unlink(os.path.join(spool.path, "new", name))
    left = spool.names("new")
    assert left
    queue = MaildirQueue(spool)
    queue.prefer_share(0, 2)  # a sibling stuck or gone: nothing may wait for it
    assert sorted(n for _, n in tickets(queue)) == sorted(left)


def test_after_a_claim_lost_to_a_sibling_new_is_listed_again(tmp_path):
    """The thief (share 0) takes share 1's names in its own order; the owner (share
    1) took some of them meanwhile: the thief's first lost claim makes it list new/
    again, so it never tries the other names the owner took."""
    spool = Spool(str(tmp_path / "spool"))
    fill(spool, 40)
    thief, owner = MaildirQueue(spool), MaildirQueue(spool)
    thief.prefer_share(0, 2)
    owner.prefer_share(1, 2)
    owners = [n for n in spool.names("new") if Share(1, 2).holds(n)]
    assert len(owners) >= 6
    stats = PassStats()
    walk = thief.candidates(time.time(), None, stats)
    for state, name in walk:
        if Share(1, 2).holds(name):
            first_stolen = name
            break
        assert thief.claim((state, name)) is not None  # its own share: all claimed
    in_thiefs_order = Share(0, 2).steal_order(owners)
    assert first_stolen == in_thiefs_order[0]
    taken_by_owner = in_thiefs_order[:4]  # the owner got there first
    for name in taken_by_owner:
        assert owner.claim(("new", name)) is not None
    assert thief.claim(("new", first_stolen)) is None  # lost: the sibling has it
    rest = [name for _, name in walk]
    assert rest == in_thiefs_order[4:]  # listed again: only what the owner left
    assert all(thief.claim(("new", name)) is not None for name in rest)
    assert stats.errors == 0


# -- what counts as skipped ------------------------------------------------------------

def test_a_siblings_deferral_during_the_pass_is_not_skipped(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    waiting, mine, siblings = fill(spool, 3)
    queue, sibling = MaildirQueue(spool), MaildirQueue(spool)
    defer(MaildirQueue(spool), waiting, FUTURE)  # an earlier run's: skipped
    stats = PassStats()
    walk = queue.candidates(time.time(), None, stats)
    assert next(walk) in (("new", mine), ("new", siblings))  # the pass has begun
    defer(sibling, siblings, FUTURE)  # during the pass, by another process
    list(walk)
    assert stats.skipped == 1  # the one waiting before; the sibling's is its news
    stats = PassStats()
    tickets(queue, stats)
    assert stats.skipped == 2  # the next pass finds both waiting


def in_share(names, index, count=2):
    return [n for n in names if Share(index, count).holds(n)]


def test_a_one_pass_run_counts_its_share_of_what_waited_when_the_run_began(tmp_path):
    """A child may start its pass after a sibling has already deferred mail of the
    same run: not skipped (it is not in the parent's listing, taken before the
    forks); and each child counts its own share of what waits, so the run's total
    counts it once."""
    spool = Spool(str(tmp_path / "spool"))
    names = list(fill(spool, 20))
    (before_run, during_run), (theirs, *_) = in_share(names, 0)[:2], in_share(names, 1)
    queue = MaildirQueue(spool)
    for name in (before_run, theirs):
        defer(MaildirQueue(spool), name, FUTURE)
    run_listing = Spool(spool.path).deferred_files()  # the parent's, before it forks
    defer(MaildirQueue(spool), during_run, FUTURE)
    counted = []
    for index in (0, 1):
        queue.prefer_share(index, 2, waiting_before=run_listing)
        stats = PassStats()
        tickets(queue, stats)
        counted.append(stats.skipped)
    assert counted == [1, 1]  # before_run, theirs: once each; during_run is the run's
    counted = []
    for index in (0, 1):  # a daemon's passes: all three were there when they began
        queue.prefer_share(index, 2)
        stats = PassStats()
        tickets(queue, stats)
        counted.append(stats.skipped)
    assert counted == [2, 1]


# -- txmail-qp with two processes -------------------------------------------------------

SUMMARY = re.compile(r"pass by 2 processes: sent=(\d+) deferred=(\d+) failed=(\d+) "
                     r"skipped=(\d+) recovered=\d+ errors=(\d+) taken=(\d+)")

#: Messages of the drain below.  Before the shares every one of them cost one lost
#: claim (taken=2000 of 2000 into smtp-sink, and into aiosmtpd); now a few.
DRAIN = 2000


def run_qp(ini, *args):
    return subprocess.run([QP, ini, "--no-app", *args], capture_output=True, text=True,
                          timeout=300)


def test_two_processes_deliver_each_message_once_and_seldom_race(tmp_path, smtp_server):
    spool = Spool(str(tmp_path / "spool"))
    made = fill(spool, DRAIN)
    ini = write_ini(tmp_path, smtp_server, "mail.processes = 2\n")
    proc = run_qp(ini)
    assert proc.returncode == 0, proc.stderr
    sent, deferred, failed, skipped, errors, taken = map(
        int, SUMMARY.search(proc.stderr).groups())
    assert (sent, deferred, failed, skipped, errors) == (DRAIN, 0, 0, 0, 0)
    assert received(smtp_server) == {(m, "b@example.org"): 1 for m in made.values()}
    assert taken <= DRAIN // 20, proc.stderr  # the old figure: DRAIN
    assert spool.names("new") == spool.names("cur") == []


def test_a_one_pass_run_by_two_processes_counts_each_waiting_message_once(tmp_path,
                                                                          smtp_server):
    spool = Spool(str(tmp_path / "spool"))
    names = list(fill(spool, 10))
    queue = MaildirQueue(spool)
    for name in names[:6]:
        defer(queue, name, FUTURE)
    proc = run_qp(write_ini(tmp_path, smtp_server, "mail.processes = 2\n"))
    assert proc.returncode == 0, proc.stderr
    # (each process used to count all six: skipped=12)
    assert SUMMARY.search(proc.stderr).groups()[:5] == ("4", "0", "0", "6", "0"), proc.stderr


class StuckFirst(ScriptedHandler):
    """Holds the reply to the first message's final dot until :attr:`gate` is set:
    the relay of whichever process sent it is stuck; every other message goes through."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.stuck = None  # the Message-ID held
        self.held = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        import asyncio

        if self.stuck is None:
            self.stuck = _message_id(envelope.content)
            self.held.set()
            deadline = time.monotonic() + 120
            while not self.gate.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        return await super().handle_DATA(server, session, envelope)


def _message_id(data):
    return next(line.split(b":", 1)[1].strip().decode() for line in data.splitlines()
                if line.lower().startswith(b"message-id:"))


def test_a_process_with_a_stuck_relay_does_not_keep_its_share_waiting(tmp_path,
                                                                      make_smtp_server):
    server = make_smtp_server(handler=StuckFirst())
    spool = Spool(str(tmp_path / "spool"))
    made = fill(spool, 24)
    by_id = {m: n for n, m in made.items()}
    assert all(sum(Share(i, 2).holds(n) for n in made) >= 4 for i in (0, 1))
    ini = write_ini(tmp_path, server, "mail.processes = 2\n")
    with open(ini) as f:  # the held reply must not time out
        text = f.read().replace("mail.timeout = 10", "mail.timeout = 120")
    with open(ini, "w") as f:
        f.write(text)
    proc = subprocess.Popen([QP, ini, "--no-app", "--workers", "1"], stderr=subprocess.PIPE,
                            text=True)
    try:
        if not server.handler.held.wait(WAIT):
            proc.kill()
            pytest.fail("no message reached the relay: " + proc.communicate()[1])
        # the stuck process (one worker, held) took that message from its own share;
        # the rest of its share is delivered by the other process meanwhile
        wait_until(lambda: len(server.messages) == len(made) - 1, WAIT,
                   "every message but the one held")
        stuck_share = next(i for i in (0, 1) if Share(i, 2).holds(by_id[server.handler.stuck]))
        stolen = [m for m, _ in received(server) if Share(stuck_share, 2).holds(by_id[m])]
        assert len(stolen) == sum(Share(stuck_share, 2).holds(n) for n in made) - 1
        server.handler.gate.set()
        assert proc.wait(timeout=120) == 0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert received(server) == {(m, "b@example.org"): 1 for m in made.values()}
    assert SUMMARY.search(err).groups()[:5] == (str(len(made)), "0", "0", "0", "0"), err
