"""Drain: txmail-qp (defaults; 1 process with 1, 2, 4 workers) vs repoze's qp vs smtp-source.

Into smtp-sink, also the daemon's rate: ``txmail-qp --daemon`` with the defaults,
already running and idle, given a burst of the same count (bench/daemon_drain.py).

All drains of one sink go to the same sink process, on the same queue
size, each configuration ``repeats`` times (median reported).  Rates are
given two ways: over the whole wall clock of the child, and net of the
tool's start-up (a pass over an empty spool: interpreter, imports, ini),
which is what a long-running or large pass sees.  The targets are judged
on the net rate; the wall-clock ratios are printed next to them.
"""
from __future__ import annotations

import dataclasses
import os

import daemon_drain
import drains
import latency
from harness import (BIN, SectionResult, Target, fmt, median, net_seconds, rate, ratio,
                     table)
from profiling import profile_section

DEFAULT_WORKERS = 4  # mail.workers' default
#: Also drained by this many txmail-qp processes with DEFAULT_WORKERS / PROCESSES
#: workers each: the same number of workers, not sharing one interpreter lock.
PROCESSES = 2
SPLIT = f"{PROCESSES} txmail-qp processes x {DEFAULT_WORKERS // PROCESSES} workers"


def _cores_usable():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


#: The default configuration: mail.processes' default (one process per usable core),
#: each with mail.workers' default.
DEFAULT = f"txmail-qp defaults ({_cores_usable()} processes x {DEFAULT_WORKERS} workers)"
#: The daemon with the default settings, measured on smtp-sink only (its counting
#: twin records when the last message arrived; see daemon_drain.py).
DAEMON = "txmail-qp --daemon, defaults, running and idle (start-up excluded)"
DAEMON_SINK = "smtp-sink"


def _configs(ctx, sink_name=None):
    configs = [(DEFAULT, "default", None)]
    if sink_name == DAEMON_SINK:
        configs.append((DAEMON, "daemon", None))
    configs += [(f"txmail-qp, 1 process, {w} worker{'s' * (w > 1)}"
                 + (" (the default before mail.processes)" if w == DEFAULT_WORKERS else ""),
                 "txmail", w)
                for w in ctx.options.workers]
    configs.append((SPLIT, "split", (PROCESSES, DEFAULT_WORKERS // PROCESSES)))
    configs.append(("repoze.sendmail qp", "repoze", None))
    configs += [("smtp-source, 1 session (floor)", "source", 1),
                ("smtp-source, 4 sessions (floor)", "source", 4)]
    return configs


def _drain(ctx, sink, kind, arg, count):
    if kind == "default":
        return drains.drain_txmail(ctx, sink, count, qp_processes=None)
    if kind == "txmail":
        return drains.drain_txmail(ctx, sink, count, arg)
    if kind == "split":
        return drains.drain_txmail(ctx, sink, count, arg[1], processes=arg[0])
    if kind == "daemon":
        counting = ctx.sink("smtp-sink -c", daemon_drain.start_counting_sink)
        return daemon_drain.drain_daemon(ctx, counting, count)
    if kind == "repoze":
        return drains.drain_repoze(ctx, sink, count)
    return drains.drain_smtp_source(ctx, sink, count, arg)


def measure(ctx, sink_name, count):
    """``{label: Figure}`` for every configuration, into one sink."""
    sink = ctx.sink(sink_name)
    txmail = drains.startup_of(ctx, "txmail")  # processes start side by side: the same
    startups = {"txmail": txmail, "split": txmail, "repoze": drains.startup_of(ctx, "repoze"),
                "default": drains.startup_of(ctx, "txmail-default"),
                "source": drains.Startup(0, 0), "daemon": drains.Startup(0, 0)}
    configs = _configs(ctx, sink_name)
    runs = {label: [] for label, _, _ in configs}
    for _ in range(ctx.options.repeats):
        for label, kind, arg in configs:  # interleaved
            runs[label].append(_drain(ctx, sink, kind, arg, count))
    figures = {}
    for label, kind, _ in configs:
        got = runs[label]
        wall = median([r.wall for r in got])
        net = net_seconds(wall, startups[kind].wall)
        # each command pays its start-up (the default's children are forked: its
        # start-up, measured as a whole, is the parent's and the children's)
        starts = PROCESSES if kind == "split" else 1
        cpu = max(median([r.cpu for r in got]) - starts * startups[kind].cpu, 0) / count
        user = max(median([r.user for r in got]) - starts * startups[kind].user, 0) / count
        sink_cpu = median([r.sink_cpu for r in got]) / count
        sessions = [getattr(r, "smtp_sessions", None) for r in got]
        figures[label] = Figure(wall, rate(count, wall), rate(count, net), cpu, user,
                                sink_cpu, max(r.peak_rss_kb for r in got),
                                [r.wall for r in got],
                                None if None in sessions else median(sessions))
    return figures, startups


@dataclasses.dataclass
class Figure:
    wall: float
    wall_rate: float
    net_rate: float  # None when the start-up is most of the run
    cpu_per_message: float  # seconds, user + system, start-up's subtracted
    user_per_message: float  # of which user time
    sink_cpu_per_message: float  # what the sink spent on each message meanwhile
    peak_rss_kb: int
    walls: list
    smtp_sessions: float = None  # the daemon's burst: SMTP sessions it opened (median)


def _cores(figure, per_message):
    """CPU seconds per second of the net run, at ``per_message`` CPU seconds."""
    return None if figure.net_rate is None else per_message * figure.net_rate


def _split_note(default, split):
    """What draining with processes instead of threads says about the limit."""
    if split is None or split.net_rate is None or not default.net_rate:
        return ""  # a quick run's drain can end within its start-up: no net rate
    gain = split.net_rate / default.net_rate
    if gain >= 1.25:
        verdict = ("so the limit is mostly inside one process -- the interpreter lock's "
                   "hand-offs: run several txmail-qp processes, each with fewer workers")
    elif gain > 1.05:
        verdict = ("so a little of the limit is inside one process (the interpreter "
                   "lock) and most of it is what the processes share: the CPUs, the "
                   "kernel (directories, sockets), the disk or the sink")
    else:
        verdict = ("so the limit is not the interpreter lock but what the processes "
                   "share: the CPUs, the kernel (directories, sockets), the disk or the "
                   "sink")
    return (f"  {SPLIT} (the same {DEFAULT_WORKERS} workers in {PROCESSES} interpreters, "
            "on one spool: claims are atomic renames) reached "
            f"{split.net_rate:.0f} msg/s, {gain:.2f}x one process with {DEFAULT_WORKERS} "
            f"workers, {verdict}.")


def _ceiling(default, one, repoze, split=None, single=None):
    """Why the default configuration stops where it does, from its own figures."""
    if default.net_rate is None or repoze.net_rate is None or default.user_per_message <= 0:
        return ""
    client = _cores(default, default.cpu_per_message)
    python = _cores(default, default.user_per_message)
    both = _cores(default, default.cpu_per_message + default.sink_cpu_per_message)
    cores, needed = os.cpu_count() or 1, 4 * repoze.net_rate
    head = (f"**What limits the default configuration**: {DEFAULT} "
            f"reached {default.net_rate:.0f} msg/s; 4x repoze qp would be "
            f"{needed:.0f}.  It kept {client:.2f} cores busy ({python:.2f} of them in "
            f"user time: {default.user_per_message * 1e6:.0f} us per message), the sink "
            f"{both - client:.2f} more: {both:.2f} of this machine's {cores}.  ")
    if both >= 0.8 * cores:
        body = ("The machine's CPUs are nearly full, shared by the client, the sink and "
                "this harness: more throughput needs less CPU per message (or more cores).")
    elif python >= 0.8:
        body = ("The workers are threads of one Python process and only one runs Python "
                "at a time: its user time alone caps it near 1 / "
                f"{default.user_per_message * 1e6:.0f} us = "
                f"{1 / default.user_per_message:.0f} msg/s.")
    else:
        gain = ratio(default.net_rate, one.net_rate) if one is not None else None
        system = default.cpu_per_message - default.user_per_message
        body = ("Neither the CPUs nor the interpreter lock are full: of its "
                f"{default.cpu_per_message * 1e6:.0f} us of CPU per message, "
                f"{system * 1e6:.0f} us are system time (claim and retire renames, reads, "
                "socket I/O)"
                + (f", and {DEFAULT_WORKERS} workers reached {gain:.2f}x the rate of one"
                   if gain else "")
                + ".  The workers wait more than they compute.")
    body += _split_note(single or default, split)  # against one process, 4 workers
    return (head + body + "  What would lift it in any case: less CPU per message, "
            "user and system (the profile below shows where one worker's goes).")


def _strict(ctx, count=20):
    found = drains.strict_sink_check(ctx, count)
    rows = [(name, f"{accepted} of {count}", left, hidden)
            for name, (accepted, left, hidden) in (("txmail-qp", found["txmail"]),
                                                   ("repoze.sendmail qp", found["repoze"]))]
    return ("### Into aiosmtpd with its default (strict) line limit\n\n"
            "The drains above use a lenient aiosmtpd, so that repoze.sendmail's qp is "
            "measured delivering.  With aiosmtpd's defaults, qp's messages are refused: "
            "it sends bare LF line endings, so a ~2 KB message is one over-long line "
            "(\"500 Line too long\"), and qp then hides it as a `.rejected-*` dotfile "
            f"that nothing retries.  {count} messages each:\n\n"
            + table(["tool", "accepted by the sink", "queue files left",
                     "hidden .rejected-* files left"], rows))


#: The offered load of the latency figure (messages per second, one per transaction).
LATENCY_RATE = 100


def _latency(ctx, lines):
    """p50/p90/p99/max of queued-to-accepted for the daemon at LATENCY_RATE msg/s."""
    count = 300 if ctx.options.quick else 30 * LATENCY_RATE
    got = latency.measure(ctx.scratch("latency"), BIN, rate=LATENCY_RATE, count=count,
                          env=drains.bytecode_env(ctx))
    ms = [f"{value * 1000:.1f}" for value in (got.p50, got.p90, got.p99, got.worst)]
    lines.append(f"daemon latency at {LATENCY_RATE} msg/s, queued to accepted: p50 {ms[0]} ms, "
                 f"p99 {ms[2]} ms")
    return ("### Queued-to-accepted latency of the daemon\n\n"
            f"`txmail-qp --daemon --no-app` with the default settings; an application "
            f"process sends {got.count} messages (~2 KB, one per transaction, through "
            f"`get_mailer`) at a steady {LATENCY_RATE} per second into the spool; an "
            "aiosmtpd sink in a third process notes when each message's final dot "
            "arrived.  Latency = that time minus the time the application's commit "
            f"returned, joined on the Message-ID.  {got.received} of {got.count} received; "
            f"1-minute load average at the end {got.load:.2f}.\n\n"
            + table(["p50 ms", "p90 ms", "p99 ms", "max ms"], [ms]))


def _label(ctx, workers):
    return next(label for label, kind, w in _configs(ctx) if kind == "txmail" and w == workers)


def _target(text, measured, wall_measured, threshold, as_percent=False):
    spec = ".0%" if as_percent else ".2f"
    unit = "" if as_percent else "x"
    detail = (f"{fmt(measured, spec, unit)} net of start-up "
              f"({fmt(wall_measured, spec, unit)} on wall clock)")
    return Target(text, measured is not None and measured >= threshold, detail)


def run(ctx):
    count = ctx.options.drain_size
    parts, lines, targets = [], [], []
    flag = ("`txmail-qp --workers N`" if drains.qp_has_workers_flag()
            else "`mail.workers = N` in the ini (this txmail-qp has no --workers flag yet)")
    parts.append(f"{count} queued messages per drain (~2 KB, one recipient); median of "
                 f"{ctx.options.repeats} runs per configuration, interleaved.  Workers set "
                 f"with {flag}.  txmail-qp runs with `--no-app -q`; repoze qp with "
                 "`--no-tls`; smtp-source with `-d` (one connection per session for all "
                 "its messages) and the same message file.  \"msg/s (net)\" divides by "
                 "the wall clock minus the tool's start-up (a pass over an empty spool); "
                 "\"CPU us / msg\" is the client's user+system time (its threads "
                 "included, start-up subtracted) and the sink's, per message, steadier "
                 "than the wall clock on a busy machine; \"cores busy\" is both per "
                 f"second of the net rate (this machine has {os.cpu_count()} cores, "
                 "shared by the sink, the client and this harness).")
    if DAEMON_SINK in ctx.options.sinks:
        parts[-1] += (f"  \"{DAEMON}\" (into {DAEMON_SINK} only): `txmail-qp INI --daemon "
                      "--no-app -q` with the default settings, started on an empty spool, "
                      f"warmed up with {daemon_drain.WARMUP} messages and idle again; then "
                      f"the {count} files, written and synced beforehand in a staging "
                      "directory on the same disk, are renamed into `new/` in one go.  Its "
                      "wall clock runs from the first rename to the sink's acceptance of "
                      "the last message (a second smtp-sink, with `-c`: it writes its "
                      "running count as each final dot arrives, read by this harness "
                      "every 2 ms), so start-up is excluded and the net rate is the "
                      "rate; its CPU is the daemon's processes' (parent and children) "
                      "from the first rename until the spool is empty and they are idle.")
    results = {}
    for sink_name in ctx.options.sinks:
        figures, startups = measure(ctx, sink_name, count)
        results[sink_name] = figures
        repoze = figures["repoze.sendmail qp"]
        rows = [(label, f"{f.wall:.2f}", fmt(f.wall_rate), fmt(f.net_rate),
                 fmt(ratio(f.net_rate, repoze.net_rate), ".2f", "x"),
                 f"{f.cpu_per_message * 1e6:.0f} / {f.sink_cpu_per_message * 1e6:.0f}",
                 fmt(_cores(f, f.cpu_per_message + f.sink_cpu_per_message), ".2f"),
                 f"{f.peak_rss_kb / 1024:.1f}", ", ".join(f"{w:.2f}" for w in f.walls))
                for label, f in figures.items()]
        parts.append(f"### into {sink_name}\n\n"
                     f"Start-up (pass over an empty spool): txmail-qp "
                     f"{startups['txmail'].wall:.2f} s, repoze qp "
                     f"{startups['repoze'].wall:.2f} s.\n\n"
                     + table(["configuration", "wall s", "msg/s (wall)", "msg/s (net)",
                              "net vs repoze qp", "CPU us / msg (client / sink)",
                              "cores busy (both)",
                              "peak RSS MB", "wall s, each run"], rows))
        lines.append(f"drain into {sink_name}, msg/s net (wall): " + "; ".join(
            f"{label.split(' (')[0]} {fmt(f.net_rate)} ({fmt(f.wall_rate)})"
            for label, f in figures.items()))
    sink = "smtp-sink" if "smtp-sink" in results else ctx.options.sinks[0]
    figures = results[sink]
    repoze = figures["repoze.sendmail qp"]
    default = figures[DEFAULT]
    targets.append(_target(f"drain with default settings >= 4x repoze qp into {sink}",
                           ratio(default.net_rate, repoze.net_rate),
                           ratio(default.wall_rate, repoze.wall_rate), 4))
    if 1 in ctx.options.workers:
        one, source = figures[_label(ctx, 1)], figures["smtp-source, 1 session (floor)"]
        targets.append(_target(f"one worker >= 50% of smtp-source's single session ({sink})",
                               ratio(one.net_rate, source.net_rate),
                               ratio(one.wall_rate, source.wall_rate), 0.5, as_percent=True))
    daemon = figures.get(DAEMON)
    if daemon is not None:
        targets.append(daemon_drain.target(daemon, repoze, sink))
        parts.append(daemon_drain.how_far_goal(daemon, repoze, figures, count))
    for label, f in figures.items():
        if label.startswith("txmail-qp"):
            lines.append(f"{label} / repoze qp into {sink}: "
                         f"{fmt(ratio(f.net_rate, repoze.net_rate), '.2f', 'x')} net")
    if DEFAULT_WORKERS in ctx.options.workers:
        before = figures[_label(ctx, DEFAULT_WORKERS)]
        lines.append(f"default drain after/before mail.processes into {sink}: "
                     f"{fmt(ratio(default.net_rate, before.net_rate), '.2f', 'x')} net, "
                     f"{fmt(ratio(default.wall_rate, before.wall_rate), '.2f', 'x')} "
                     "end to end (start-up included)")
    if not targets[0].met:
        one = figures[_label(ctx, 1)] if 1 in ctx.options.workers else None
        single = (figures[_label(ctx, DEFAULT_WORKERS)]
                  if DEFAULT_WORKERS in ctx.options.workers else None)
        parts.append(_ceiling(default, one, repoze, figures.get(SPLIT), single))
    parts.append(_strict(ctx))
    parts.append(_latency(ctx, lines))
    if not all(t.met for t in targets):
        parts.append(profile_section(ctx, ctx.sink(sink), count))
    return SectionResult("Drain: txmail-qp vs repoze.sendmail qp vs smtp-source",
                         "\n\n".join(parts), lines, targets)
