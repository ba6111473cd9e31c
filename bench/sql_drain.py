"""SQL outbox, part 2: draining a PostgreSQL outbox beside the spool and repoze qp.

Every configuration drains the same number of the same ~2 KB message into
the same smtp-sink, in one run, interleaved, ``repeats`` times:

- the Maildir spool with ``txmail-qp``'s defaults (4 workers) -- the target;
- repoze.sendmail's ``qp`` on the same kind of spool -- the old anchor;
- a PostgreSQL outbox (a fresh database, filled in bulk) drained by 1 and by
  3 ``txmail-qp`` processes at once, each with the default workers, claiming
  with ``FOR UPDATE SKIP LOCKED``.

With ``TXMAIL_BENCH_BEFORE=DIR`` (a directory holding an older copy of the
``pyramid_txmail`` package, e.g. ``git archive OLD pyramid_txmail | tar -x -C
DIR``), the PostgreSQL drains are also run with that copy first on
``PYTHONPATH``, interleaved with the others: before/after rows from one run.

An outbox drain only counts when every row ended ``delivered``.  Besides
the client's CPU and the sink's, the server's is measured (the postmaster's
own, its live children's and the reaped backends'): on this machine the
database shares the cores with everything else.
"""
from __future__ import annotations

import dataclasses
import os

import drains
from harness import (BenchError, Target, fmt, median, net_seconds, rate, ratio, run_timed,
                     table)
from sql_db import check_delivered, engine_for, fill_queued

SINK = "smtp-sink"
SPOOL = "spool: txmail-qp, default workers"
REPOZE = "spool: repoze.sendmail qp"
PROCESSES = (1, 3)
#: A copy of an older pyramid_txmail (the directory holding its package) to drain
#: beside this one in the same run: before/after figures from one run.
BEFORE = os.environ.get("TXMAIL_BENCH_BEFORE")


def before_env(ctx):
    return dict(drains.bytecode_env(ctx), PYTHONPATH=BEFORE) if BEFORE else None


def sql_label(processes, before=False):
    return (f"PostgreSQL: {processes} txmail-qp process{'es' * (processes > 1)}, "
            "default workers" + (" (before: the older code)" if before else ""))


def write_ini(directory, url, sink):
    path = directory / "bench.ini"
    path.write_text("\n".join(["[app:main]", "use = egg:pyramid_txmail",
                               f"mail.queue_url = {url}", "mail.host = 127.0.0.1",
                               f"mail.port = {sink.port}"]) + "\n")
    return path


class Outbox:
    """A fresh outbox database holding ``count`` queued messages, and its ini."""

    def __init__(self, ctx, pg, sink, count, label):
        from pyramid_txmail.queue.sql import init_db

        self.pg, self.count = pg, count
        self.url = pg.database("drain")
        self.engine = engine_for(self.url)
        init_db(self.engine)
        if count:
            fill_queued(ctx, self.engine, count)
        self.ini = write_ini(ctx.scratch(label), self.url, sink)

    def close(self):
        self.engine.dispose()
        self.pg.drop(self.url)


def drain_sql(ctx, pg, sink, count, processes, env=None):
    """``processes`` txmail-qp at once over a full outbox; a ChildRun with ``db_cpu``."""
    outbox = Outbox(ctx, pg, sink, count, f"drain-sql-p{processes}")
    try:
        before = pg.cpu()
        run = drains.timed(drains.txmail_argv(outbox.ini), sink,
                           env=env or drains.bytecode_env(ctx),
                           processes=processes)
        run.db_cpu = pg.cpu() - before
        what = f"{processes} x txmail-qp on PostgreSQL into {sink.name}"
        if run.returncode != 0:
            tail = " | ".join(run.stderr.strip().splitlines()[-3:])
            raise BenchError(f"{what}: exit status {run.returncode}; stderr: {tail}")
        check_delivered(outbox.engine, count, what)
        return run
    finally:
        outbox.close()


def sql_startup(ctx, pg, sink, env=None):
    """Median ``(wall, cpu)`` of txmail-qp over an empty outbox (one warm-up not counted)."""
    runs = []
    for _ in range(1 if ctx.options.quick else 1 + max(3, ctx.options.repeats)):
        outbox = Outbox(ctx, pg, sink, 0, "startup-sql")
        try:
            run = run_timed(drains.txmail_argv(outbox.ini),
                            env=env or drains.bytecode_env(ctx))
        finally:
            outbox.close()
        if run.returncode != 0:
            raise BenchError(f"txmail-qp over an empty outbox: exit status "
                             f"{run.returncode}: {run.stderr.strip()[-300:]}")
        runs.append(run)
    counted = runs[1:] or runs
    return drains.Startup(median([r.wall for r in counted]), median([r.cpu for r in counted]),
                          median([r.user for r in counted]))


@dataclasses.dataclass
class Figure:
    wall: float
    wall_rate: float
    net_rate: float | None
    cpu: float  # client us per message, start-up subtracted
    sink_cpu: float
    db_cpu: float | None
    peak_rss_kb: int
    walls: list


def measure(ctx, pg, count):
    sink = ctx.sink(SINK)
    startups = {SPOOL: drains.startup_of(ctx, "txmail"), REPOZE: drains.startup_of(ctx, "repoze")}
    sql = sql_startup(ctx, pg, sink)
    configs = [(SPOOL, lambda: drains.drain_txmail(ctx, sink, count, None), 1),
               (REPOZE, lambda: drains.drain_repoze(ctx, sink, count), 1)]
    for processes in PROCESSES:
        label = sql_label(processes)
        startups[label] = sql
        configs.append((label, lambda p=processes: drain_sql(ctx, pg, sink, count, p),
                        processes))
    if BEFORE:
        old = sql_startup(ctx, pg, sink, before_env(ctx))
        for processes in PROCESSES:
            label = sql_label(processes, before=True)
            startups[label] = old
            configs.append((label, lambda p=processes: drain_sql(ctx, pg, sink, count, p,
                                                                 before_env(ctx)), processes))
    runs = {label: [] for label, _, _ in configs}
    for _ in range(ctx.options.repeats):
        for label, drain, _ in configs:  # interleaved
            runs[label].append(drain())
    figures = {}
    for label, _, starts in configs:
        got = runs[label]
        wall = median([r.wall for r in got])
        cpu = max(median([r.cpu for r in got]) - starts * startups[label].cpu, 0) / count
        db = [getattr(r, "db_cpu", None) for r in got]
        figures[label] = Figure(wall, rate(count, wall),
                                rate(count, net_seconds(wall, startups[label].wall)), cpu,
                                median([r.sink_cpu for r in got]) / count,
                                None if None in db else median(db) / count,
                                max(r.peak_rss_kb for r in got), [r.wall for r in got])
    return figures, startups


def run(ctx, pg):
    """``(markdown, lines, targets, figures)`` of the drain part."""
    count = ctx.options.drain_size
    figures, startups = measure(ctx, pg, count)
    spool, repoze = figures[SPOOL], figures[REPOZE]
    rows = [(label, f"{f.wall:.2f}", fmt(f.wall_rate), fmt(f.net_rate),
             fmt(ratio(f.net_rate, spool.net_rate), ".2f", "x"),
             fmt(ratio(f.net_rate, repoze.net_rate), ".2f", "x"),
             f"{f.cpu * 1e6:.0f} / {f.sink_cpu * 1e6:.0f} / "
             + ("" if f.db_cpu is None else f"{f.db_cpu * 1e6:.0f}"),
             f"{f.peak_rss_kb / 1024:.1f}", ", ".join(f"{w:.2f}" for w in f.walls))
            for label, f in figures.items()]
    three = figures[sql_label(3)]
    measured = ratio(three.net_rate, spool.net_rate)
    target = Target(f"PostgreSQL outbox with 3 txmail-qp >= the spool's default drain "
                    f"({SINK})", measured is not None and measured >= 1,
                    f"{fmt(three.net_rate)} vs {fmt(spool.net_rate)} msg/s net = "
                    f"{fmt(measured, '.2f', 'x')} "
                    f"({fmt(ratio(three.wall_rate, spool.wall_rate), '.2f', 'x')} on wall "
                    "clock)")
    markdown = "\n\n".join([
        f"{count} queued messages per drain (~2 KB, one recipient, the same bytes in the "
        f"spool and in the outbox) into {SINK}; median of {ctx.options.repeats} runs per "
        "configuration, interleaved; `txmail-qp --no-app -q` with no workers setting (the "
        "default, 4).  \"net\" subtracts the start-up: a pass over an empty queue "
        f"(spool {startups[SPOOL].wall:.2f} s, outbox {startups[sql_label(1)].wall:.2f} s, "
        f"repoze qp {startups[REPOZE].wall:.2f} s).  CPU is user+system per message: the "
        "client processes' (start-up subtracted), the sink's and PostgreSQL's (every "
        "server process, the reaped backends included).",
        table(["configuration", "wall s", "msg/s (wall)", "msg/s (net)",
               "net vs spool default", "net vs repoze qp",
               "CPU us / msg (client / sink / PostgreSQL)", "peak RSS MB",
               "wall s, each run"], rows)])
    lines = [f"drain into {SINK}, msg/s net (wall): " + "; ".join(
        f"{label} {fmt(f.net_rate)} ({fmt(f.wall_rate)})" for label, f in figures.items())]
    return markdown, lines, [target], figures
