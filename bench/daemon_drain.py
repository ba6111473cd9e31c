"""The daemon's drain rate: ``txmail-qp --daemon`` already running and idle, then a burst.

A service's throughput, its start-up excluded (as a service pays it once): the
daemon, with the default settings (``mail.processes``: one per usable core,
``mail.workers``: 4) and ``--no-app -q``, starts on an empty spool and is warmed
up with a few messages; once it is idle again, the harness renames ``count``
prepared files into ``new/`` in one go (written and synced beforehand in a
staging directory on the same file system: a file appears in ``new/`` complete,
the Maildir rule), and the rate is ``count`` / (the time from the first rename
to the sink's acceptance of the last message).

The sink's own record of arrival: an smtp-sink run with ``-c``, which writes
its running message count each time a final dot arrives, into a pipe that a
thread of this process reads every couple of milliseconds; the last message's
arrival is the read that first saw the count reach it.  It is a second
smtp-sink (same program, same options, plus ``-c``), started once per run, so
that the other drains' sink pays nothing for the counter.

The drain section (sec_drain.py) runs it beside the other drains and takes
from here the target (the daemon >= 6x repoze qp) and the paragraph on how far
10x is, with the CPU arithmetic: cores / (client + sink CPU per message).
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import drains
from harness import (BIN, POSTFIX_ENV, BenchError, ChildRun, Sink, Target, _peak_rss_kb,
                     _wait_listening, fmt, free_port, postfix_tool, ratio, stop_process)

#: Messages delivered before the measured burst: every worker process's first
#: delivery (lazy imports, first connection) is then behind it.
WARMUP = 40
#: The counter's reader sleeps this long between reads: a read then takes what
#: arrived meanwhile (fewer wake-ups on a busy machine), at this resolution.
READ_EVERY = 0.002
#: The daemon counts as idle once its processes used no CPU for this long.
IDLE_FOR = 0.3
DAEMON_TARGET = 6   # x repoze qp (issue 14)
GOAL = 10           # x repoze qp: how far it is is said, not judged
_COUNTERS = re.compile(rb"sess=(\d+) quit=\d+ mesg=(\d+)\r")


class CountingSink(Sink):
    """smtp-sink with ``-c``: :meth:`reached` says when its count reached a number,
    :attr:`sessions` how many SMTP sessions have ended."""

    def __init__(self, port, process):
        super().__init__("smtp-sink (counting)", port, process)
        self._changed = threading.Condition()
        self._history = [(0, 0.0)]  # (count, perf_counter time of the read that saw it)
        self.sessions = 0
        threading.Thread(target=self._read, name="smtp-sink-counter", daemon=True).start()

    @property
    def count(self):
        with self._changed:
            return self._history[-1][0]

    def _read(self):
        fd, tail = self.process.stdout.fileno(), b""
        while True:
            chunk = os.read(fd, 65536)
            seen = time.perf_counter()
            if not chunk:
                return
            tail = (tail + chunk)[-256:]
            counters = _COUNTERS.findall(tail)
            if counters:
                sessions, count = (int(n) for n in counters[-1])
                with self._changed:
                    self.sessions = sessions
                    if count > self._history[-1][0]:
                        self._history.append((count, seen))
                        self._changed.notify_all()
            time.sleep(READ_EVERY)

    def reached(self, count, daemon, timeout):
        """The time (``perf_counter``) the sink's count first reached ``count``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._history[-1][0] < count:
                if daemon.poll() is not None:
                    raise BenchError(f"txmail-qp --daemon exited ({daemon.returncode}) with "
                                     f"{self._history[-1][0]} of {count} messages at the sink")
                if time.monotonic() > deadline:
                    raise BenchError(f"the counting smtp-sink got {self._history[-1][0]} of "
                                     f"{count} messages in {timeout:.0f} s")
                self._changed.wait(0.2)
            return next(at for got, at in self._history if got >= count)


def start_counting_sink():
    """A Postfix smtp-sink like the run's shared one, plus ``-c`` into a pipe."""
    port = free_port()
    user = ["-u", "nobody"] if os.getuid() == 0 else []
    process = subprocess.Popen([str(postfix_tool("smtp-sink")), "-c", *user,
                                f"127.0.0.1:{port}", "256"], env=POSTFIX_ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _wait_listening(port, process, "smtp-sink -c")
    return CountingSink(port, process)


def _tree(pid):
    """``pid`` and every process below it (``/proc/PID/task/*/children``)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                todo += [int(c) for c in
                         Path(f"/proc/{current}/task/{task}/children").read_text().split()]
            except OSError:
                pass
    return found


def tree_times(pid):
    """``(user, system)`` seconds of ``pid`` and its descendants (all their threads)."""
    user = system = 0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    ticks = os.sysconf("SC_CLK_TCK")
    return user / ticks, system / ticks


def _move_all(source, spool_new, prefix=""):
    for name in sorted(os.listdir(source)):
        os.rename(source / name, spool_new / f"{prefix}{name}")


def _messages_in(spool):
    return sum(len([n for n in os.listdir(spool / state) if not n.startswith(".")])
               for state in ("new", "cur", "deferred", "failed") if (spool / state).is_dir())


def _settle(spool, daemon, timeout=60.0):
    """Until the spool holds no message and the daemon's processes are idle."""
    deadline, last, quiet_since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise BenchError(f"txmail-qp --daemon exited ({daemon.returncode})")
        now, used = time.monotonic(), sum(tree_times(daemon.pid))
        if used != last:
            last, quiet_since = used, now
        if now - quiet_since >= IDLE_FOR and not _messages_in(spool):
            return
        time.sleep(0.05)
    raise BenchError(f"txmail-qp --daemon did not settle within {timeout:.0f} s: "
                     f"{_messages_in(spool)} messages left in {spool}")


def drain_daemon(ctx, sink, count, warmup=WARMUP, timeout=300.0):
    """One burst of ``count`` into a running, idle daemon: a :class:`ChildRun` whose
    wall is first rename -> last acceptance, CPU the daemon's processes' meanwhile,
    and ``smtp_sessions`` the sessions the daemon opened for it (all ended once the
    spool is empty and the daemon idle: its connections live for one pass)."""
    base = ctx.scratch("drain-daemon")
    spool, burst, early = base / "spool", base / "burst", base / "warmup"
    ctx.fill(spool, 0)
    ctx.fill(burst, count)  # new/ of a staging spool: the same file system, synced
    ctx.fill(early, warmup)
    ini = drains.write_ini(base, spool, sink, None, None)  # the defaults
    argv = [str(BIN / "txmail-qp"), str(ini), "--daemon", "--no-app", "-q"]
    err_path = base / "daemon.stderr"
    with open(err_path, "wb") as err:
        daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err, env=drains.bytecode_env(ctx))
    try:
        before = sink.count
        _move_all(early / "new", spool / "new", prefix="warmup-")
        sink.reached(before + warmup, daemon, timeout)
        _settle(spool, daemon)
        user, system = tree_times(daemon.pid)
        sink_cpu, first, sessions = sink.cpu(), sink.count, sink.sessions
        start = time.perf_counter()
        _move_all(burst / "new", spool / "new")
        last = sink.reached(first + count, daemon, timeout)
        _settle(spool, daemon)
        user, system = (a - b for a, b in zip(tree_times(daemon.pid), (user, system)))
        sink_cpu = sink.cpu() - sink_cpu
        peak = max(_peak_rss_kb(pid) for pid in _tree(daemon.pid))
        delivered, sessions = sink.count - first, sink.sessions - sessions
    finally:
        stop_process(daemon)
    stderr = err_path.read_text(errors="replace")
    if daemon.returncode != 0 or delivered != count:
        raise BenchError(f"txmail-qp --daemon: exit status {daemon.returncode} after a "
                         f"burst of {count}, {delivered} accepted by the sink; stderr: "
                         f"{' | '.join(stderr.strip().splitlines()[-3:]) or '(empty)'}")
    run = ChildRun(argv, last - start, peak, user + system, user, daemon.returncode,
                   stderr, sink_cpu)
    run.smtp_sessions = sessions  # ended during the burst: one per worker and pass
    return run


# -- what the drain section says about it ----------------------------------------


def target(daemon, repoze, sink):
    """The issue's target for the daemon (a :class:`Target`), from the drain's figures."""
    measured = ratio(daemon.net_rate, repoze.net_rate)
    return Target(f"the daemon >= {DAEMON_TARGET}x repoze qp into {sink}",
                  measured is not None and measured >= DAEMON_TARGET,
                  f"{fmt(measured, '.2f', 'x')}: {fmt(daemon.net_rate)} vs "
                  f"{fmt(repoze.net_rate)} msg/s (the daemon running and idle before the "
                  "burst; repoze qp net of its start-up)")


def how_far_goal(daemon, repoze, figures, count):
    """How far GOAL x repoze is for the daemon, and the CPU arithmetic that caps it."""
    if not daemon.net_rate or not repoze.net_rate:  # None, or 0 in a tiny quick run
        return ""
    cores, goal = os.cpu_count() or 1, GOAL * repoze.net_rate
    both = daemon.cpu_per_message + daemon.sink_cpu_per_message
    sources = [(n, figures.get(f"smtp-source, {n} session{'s' * (n > 1)} (floor)"))
               for n in (1, 4)]
    text = (f"**The daemon, and how far {GOAL}x is.**  The running daemon took a burst of "
            f"{count} messages at {daemon.net_rate:.0f} msg/s, "
            f"{daemon.net_rate / repoze.net_rate:.2f}x repoze qp; {GOAL}x would be "
            f"{goal:.0f} msg/s, {goal / daemon.net_rate:.2f}x what it reached"
            + ("" if not daemon.smtp_sessions else
               f"; it opened {daemon.smtp_sessions:.0f} SMTP sessions for the burst "
               f"({count / daemon.smtp_sessions:.0f} messages per session: a connection "
               "lives for one pass of one worker)")
            + ".  On the same "
            "sink smtp-source reaches " + " and ".join(
                f"{f.net_rate / repoze.net_rate:.1f}x with {n} session{'s' * (n > 1)} "
                f"({f.cpu_per_message * 1e6:.0f} us of client and "
                f"{f.sink_cpu_per_message * 1e6:.0f} us of sink CPU per message)"
                for n, f in sources if f is not None and f.net_rate) + ".  ")
    if both <= 0:
        return text
    ceiling = cores / both
    budget = cores / goal - daemon.sink_cpu_per_message
    reached = daemon.net_rate / ceiling
    text += (f"The CPU arithmetic: the daemon's processes spent "
             f"{daemon.cpu_per_message * 1e6:.0f} us per message "
             f"({daemon.user_per_message * 1e6:.0f} us of it user time) and the sink "
             f"{daemon.sink_cpu_per_message * 1e6:.0f} us, {both * 1e6:.0f} us of client "
             f"and sink per message; this machine's {cores} cores can then give at most "
             f"{cores} / {both * 1e6:.0f} us = {ceiling:.0f} msg/s = "
             f"{ceiling / repoze.net_rate:.1f}x repoze qp, the ceiling.  The daemon reached "
             f"{reached:.0%} of it"
             + (": the cores were nearly full" if reached >= 0.8 else
                ", so for the rest of the burst neither client nor sink was computing "
                "(they waited -- on what is not measured here -- or other load on the "
                "machine held the cores)") + f".  {GOAL}x needs client and sink together at "
             f"most {cores} / {goal:.0f} msg/s = {cores / goal * 1e6:.0f} us per message: ")
    if daemon.cpu_per_message <= budget:
        text += (f"the daemon's {daemon.cpu_per_message * 1e6:.0f} us (with the sink's "
                 f"{daemon.sink_cpu_per_message * 1e6:.0f} us) is already within it, so "
                 "what holds it at this size is waiting, not CPU.")
    elif budget > 0:
        text += (f"with the sink's {daemon.sink_cpu_per_message * 1e6:.0f} us, the daemon's "
                 f"at most {budget * 1e6:.0f} us against "
                 f"{daemon.cpu_per_message * 1e6:.0f} us now (a cut of "
                 f"{1 - budget / daemon.cpu_per_message:.0%}).")
    else:
        text += ("the sink's own CPU per message already exceeds that, so on this machine "
                 f"{GOAL}x is out of reach whatever the client does.")
    return text
