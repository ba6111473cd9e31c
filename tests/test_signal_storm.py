"""Signal storms against a draining ``txmail-qp --daemon`` (issue 11, finding 3).

A real daemon subprocess delivers to a real SMTP server that holds the reply
to the final dot (:class:`tests.test_daemon.GatedHandler`), so that four
messages are known to be in flight while thousands of SIGHUP, SIGTERM or
SIGINT arrive, as fast as ``kill(2)`` can send them.  A daemon whose signal
handlers take a lock deadlocks here (two ``Event.set()`` calls nested in one
thread), one whose handlers run Python code nests them until RecursionError,
and one that puts the default handlers back before it exits is killed by a
signal that arrives during its shutdown.

What must hold: SIGTERM/SIGINT end the daemon with exit status 0 after the
messages in flight were delivered, each once, and every other message is
still in ``new/``, untouched; after a SIGHUP storm the daemon is alive and
delivers everything.  Nothing is lost, nothing is sent twice.  The waits are
generous deadlines, never speed assertions.  ``make test`` sends 2,000
signals per storm, ``make reliability`` 10,000.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from .reliability import record, runs
from .test_daemon import (ONE_PROCESS, RECIPIENTS, gated, log_of, received,  # noqa: F401
                          setup_for, wait_for_log, wait_until)

pytestmark = pytest.mark.reliability

STORM = runs(2000, 10_000)
QUEUED = 12
WORKERS = 4
#: Generous: a daemon starting on a loaded machine (never a speed target).
START_WAIT = 90
# What "nothing went wrong" looks like in the daemon's log.
BAD_WORDS = ("Traceback", "RecursionError", "KeyboardInterrupt", "Exception")


def _exited(pid):
    """Whether ``pid`` has ended (a zombie not yet reaped by the test, or gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def storm(pid, signums, count, halfway=None, until_exit=False):
    """Send ``count`` signals to ``pid`` as fast as possible, cycling through ``signums``.

    ``halfway`` (an Event) is set after half of them, so that the test can
    let the daemon finish while the rest are still arriving; ``until_exit``
    goes on past ``count`` until the daemon has exited (at most a minute
    more), so that signals also arrive while it shuts down.  The daemon is
    not reaped before the storm ends, so its pid cannot be reused meanwhile.
    Returns the number sent.
    """
    sent, give_up = 0, time.monotonic() + 60
    while sent < count or (until_exit and not (sent % 64 == 0 and _exited(pid))
                           and time.monotonic() < give_up):
        os.kill(pid, signums[sent % len(signums)])
        sent += 1
        if halfway is not None and sent == count // 2:
            halfway.set()
    if halfway is not None:
        halfway.set()
    return sent


def _storm_in_background(pid, signums, count):
    """The storm in a thread (``thread.sent`` once it ends), and its ``halfway`` event."""
    halfway = threading.Event()

    def run():
        thread.sent = storm(pid, signums, count, halfway, until_exit=True)

    thread = threading.Thread(target=run, name="signal-storm")
    thread.sent = None
    thread.start()
    return thread, halfway


def _spool_left(spool):
    return {state: spool.names(state) for state in ("new", "cur", "deferred", "failed")}


STOPPERS = {
    "SIGTERM": [signal.SIGTERM],
    "SIGINT": [signal.SIGINT],
    "SIGHUP and SIGTERM interleaved": [signal.SIGHUP, signal.SIGTERM],
}


@pytest.mark.parametrize("name", sorted(STOPPERS))
def test_a_storm_of_stop_signals_ends_the_daemon_with_0_and_loses_nothing(
        setup_for, gated, name):
    s = setup_for(gated, ONE_PROCESS)  # counts one process's messages in flight
    ids = s.queue(QUEUED)
    proc = s.start("--workers", str(WORKERS))
    wait_until(lambda: gated.handler.arrived == WORKERS, timeout=START_WAIT,
               what="four messages in flight")
    thread, halfway = _storm_in_background(proc.pid, STOPPERS[name], STORM)
    halfway.wait(60)
    gated.handler.gate.set()  # the messages in flight finish while the storm goes on
    thread.join(120)
    status = proc.wait(timeout=90)
    log = log_of(proc)
    assert status == 0, log
    assert not any(word in log for word in BAD_WORDS), log
    assert "stopped on SIG" in log
    counts = received(gated)
    delivered = {m for m, _ in counts}
    left = _spool_left(s.spool)
    # each message in flight arrived exactly once; the others wait in new/
    assert all(n == 1 for n in counts.values()), counts
    assert len(delivered) == WORKERS and set(counts) == {(m, r) for m in delivered
                                                        for r in RECIPIENTS}
    assert len(left["new"]) == QUEUED - WORKERS
    assert left["cur"] == left["deferred"] == left["failed"] == []
    lost = QUEUED - len(delivered) - len(left["new"])
    assert lost == 0
    record("signals", f"{STORM} x {name} while {WORKERS} messages are in flight",
           messages=len(ids), delivered=len(delivered), lost=lost, held=len(left["new"]),
           detail=f"exit 0 ({thread.sent:,} signals sent, until it had exited); the messages "
                  "in flight delivered once, the rest left in new/")


def test_a_storm_of_sighup_leaves_the_daemon_delivering(setup_for, gated):
    s = setup_for(gated, ONE_PROCESS)  # counts one process's messages in flight
    ids = s.queue(QUEUED)
    proc = s.start("--workers", str(WORKERS))
    wait_until(lambda: gated.handler.arrived == WORKERS, timeout=START_WAIT,
               what="four messages in flight")
    storm(proc.pid, [signal.SIGHUP], STORM)
    assert proc.poll() is None, log_of(proc)
    gated.handler.gate.set()
    wait_until(lambda: len(received(gated)) == QUEUED * len(RECIPIENTS),
               timeout=60, what="every message after the SIGHUP storm")
    wait_for_log(proc, "SIGHUP: re-opened")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log_of(proc)
    log = log_of(proc)
    assert not any(word in log for word in BAD_WORDS), log
    counts = received(gated)
    assert counts == {(m, r): 1 for m in ids for r in RECIPIENTS}
    assert not any(_spool_left(s.spool).values())
    record("signals", f"{STORM} x SIGHUP while {WORKERS} messages are in flight",
           messages=len(ids), delivered=len({m for m, _ in counts}),
           detail="the daemon lives on and delivers everything once; then SIGTERM: exit 0")


def test_a_storm_of_sigterm_ends_a_one_pass_run_with_0(setup_for, gated):
    import subprocess

    from .test_daemon import QP

    s = setup_for(gated, ONE_PROCESS)  # counts one process's messages in flight
    ids = s.queue(QUEUED)
    log_path = s.tmp_path / "once.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([QP, str(s.ini), "--no-app", "--workers", str(WORKERS)],
                                stdout=out, stderr=subprocess.STDOUT)
    s.procs.append(proc)
    wait_until(lambda: gated.handler.arrived == WORKERS, timeout=START_WAIT,
               what="four messages in flight")
    thread, halfway = _storm_in_background(proc.pid, [signal.SIGTERM, signal.SIGINT], STORM)
    halfway.wait(60)
    gated.handler.gate.set()
    thread.join(120)
    log = log_path.read_text()
    assert proc.wait(timeout=90) == 0, log
    assert "ended early on SIG" in log
    assert not any(word in log for word in BAD_WORDS), log
    counts = received(gated)
    assert all(n == 1 for n in counts.values()) and len({m for m, _ in counts}) == WORKERS
    left = _spool_left(s.spool)
    assert len(left["new"]) == QUEUED - WORKERS and not left["cur"]
    record("signals", f"{STORM} x SIGTERM/SIGINT against a one-pass run, {WORKERS} in flight",
           messages=len(ids), delivered=WORKERS, held=len(left["new"]),
           detail=f"exit 0 ({thread.sent:,} signals sent, until it had exited); the messages "
                  "in flight delivered once, the rest left in new/")


def test_a_storm_of_sigterm_ends_a_one_pass_run_of_two_processes_with_0(setup_for, gated):
    """The parent of a one-pass run logs its summary with its exit status, then exits
    with that status: a SIGTERM of the storm still arriving after the summary does not
    turn it into 143 (found by an outside probe with 5 quick SIGTERMs)."""
    import subprocess

    from .test_daemon import QP

    s = setup_for(gated, "mail.processes = 2\n")
    s.queue(QUEUED)
    log_path = s.tmp_path / "once.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([QP, str(s.ini), "--no-app", "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT)
    s.procs.append(proc)
    wait_until(lambda: gated.handler.arrived == 2, timeout=START_WAIT,
               what="one message in flight per child")
    thread, halfway = _storm_in_background(proc.pid, [signal.SIGTERM], STORM)
    halfway.wait(60)
    gated.handler.gate.set()
    thread.join(120)
    log = log_path.read_text()
    assert proc.wait(timeout=90) == 0, log
    assert "processes ended (exit status 0)" in log or "(exit status 0)" in log, log
    assert thread.sent > STORM // 2  # the storm went on while the run ended
    counts = received(gated)
    assert all(n == 1 for n in counts.values()) and len({m for m, _ in counts}) == 2
