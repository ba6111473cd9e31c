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
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import drains
from harness import (BIN, POSTFIX_ENV, BenchError, ChildRun, Sink, _peak_rss_kb,
                     _wait_listening, free_port, postfix_tool, stop_process)

#: Messages delivered before the measured burst: every worker process's first
#: delivery (lazy imports, first connection) is then behind it.
WARMUP = 40
#: The counter's reader sleeps this long between reads: a read then takes what
#: arrived meanwhile (fewer wake-ups on a busy machine), at this resolution.
READ_EVERY = 0.002
#: The daemon counts as idle once its processes used no CPU for this long.
IDLE_FOR = 0.3
_COUNT = re.compile(rb"mesg=(\d+)\r")


class CountingSink(Sink):
    """smtp-sink with ``-c``: :meth:`reached` says when its count reached a number."""

    def __init__(self, port, process):
        super().__init__("smtp-sink (counting)", port, process)
        self._changed = threading.Condition()
        self._history = [(0, 0.0)]  # (count, perf_counter time of the read that saw it)
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
            counts = _COUNT.findall(tail)
            if counts and int(counts[-1]) > self._history[-1][0]:
                with self._changed:
                    self._history.append((int(counts[-1]), seen))
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
    wall is first rename -> last acceptance, CPU the daemon's processes' meanwhile."""
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
        sink_cpu, first = sink.cpu(), sink.count
        start = time.perf_counter()
        _move_all(burst / "new", spool / "new")
        last = sink.reached(first + count, daemon, timeout)
        _settle(spool, daemon)
        user, system = (a - b for a, b in zip(tree_times(daemon.pid), (user, system)))
        sink_cpu = sink.cpu() - sink_cpu
        peak = max(_peak_rss_kb(pid) for pid in _tree(daemon.pid))
        delivered = sink.count - first
    finally:
        stop_process(daemon)
    stderr = err_path.read_text(errors="replace")
    if daemon.returncode != 0 or delivered != count:
        raise BenchError(f"txmail-qp --daemon: exit status {daemon.returncode} after a "
                         f"burst of {count}, {delivered} accepted by the sink; stderr: "
                         f"{' | '.join(stderr.strip().splitlines()[-3:]) or '(empty)'}")
    return ChildRun(argv, last - start, peak, user + system, user, daemon.returncode,
                    stderr, sink_cpu)
