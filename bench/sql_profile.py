"""Where a txmail-qp draining a PostgreSQL outbox spends its time, when the target is missed.

The real console script under cProfile (bench/profile_qp.py: one profile per
thread), with the default workers, over a fresh outbox into the same sink;
meanwhile the server's CPU is measured.  Own time is grouped into waiting
for PostgreSQL (psycopg's ``wait``: the round trips), the SMTP socket,
locks and queues (workers waiting for the one that claims), and Python.
The statements per message are counted from psycopg's send calls.
"""
from __future__ import annotations

import glob
import pstats
import sys
from pathlib import Path

import drains
from harness import BenchError, run_timed, table
from profiling import top
from sql_drain import SINK, Outbox

GROUPS = (
    ("waiting for PostgreSQL (psycopg: a statement's round trip)",
     lambda f: "psycopg/connection.py" in f and "(wait)" in f),
    ("SMTP socket send/receive", lambda f: "_socket.socket" in f),
    ("locks and queues (waiting for the claiming worker, idle helpers)",
     lambda f: "_thread.lock" in f or "acquire" in f or "_queue." in f
     or "sigwait" in f),
)
OTHER = "Python code (SQLAlchemy, psycopg, smtplib, processor)"
SENDS = ("_execute_send", "_send_query_prepared", "_exec_command")


def _name(func):
    filename, line, name = func
    if filename == "~":
        return name
    return "/".join(Path(filename).parts[-2:]) + f":{line}({name})"


def profile(ctx, pg, count):
    sink = ctx.sink(SINK)
    outbox = Outbox(ctx, pg, sink, count, "profile-sql")
    out = ctx.scratch("profile-sql-prof")
    try:
        before = pg.cpu()
        run = run_timed([sys.executable, Path(__file__).parent / "profile_qp.py", out,
                         *drains.txmail_argv(outbox.ini)[1:]])
        db_cpu = pg.cpu() - before
        if run.returncode != 0:
            raise BenchError(f"profiled txmail-qp on PostgreSQL: exit status "
                             f"{run.returncode}: {run.stderr.strip()[-300:]}")
    finally:
        outbox.close()
    stats = pstats.Stats(*sorted(glob.glob(str(out / "*.prof"))))
    return run, db_cpu, stats


def section(ctx, pg, count):
    run, db_cpu, stats = profile(ctx, pg, count)
    totals = {group: 0.0 for group, _ in GROUPS}
    totals[OTHER] = 0.0
    sends = 0
    for func, (_, ncalls, tottime, _, _) in stats.stats.items():
        name = _name(func)
        totals[next((g for g, test in GROUPS if test(name)), OTHER)] += tottime
        if "psycopg" in func[0] and func[2] in SENDS:
            sends += ncalls
    every = sum(totals.values())
    rows = [(group, f"{seconds:.2f}", f"{seconds / count * 1e6:.0f}",
             f"{seconds / every:.0%}") for group, seconds in totals.items()]
    tops = "\n".join(f"{n:>9} {t:8.3f} {c:8.3f}  {name}" for n, t, c, name in top(stats))
    wait = totals[GROUPS[0][0]] / count
    return "\n\n".join([
        f"### Profile: one txmail-qp (default workers) draining {count} messages from "
        "PostgreSQL",
        f"cProfile of the real console script, every thread, start-up included: "
        f"{run.wall:.2f} s wall under the profiler, {run.cpu / count * 1e6:.0f} us of "
        f"client CPU and {db_cpu / count * 1e6:.0f} us of PostgreSQL CPU per message; "
        f"{sends / count:.1f} statements (and transaction commands) sent per message.  "
        "Own time summed over the threads (the workers wait in parallel, so the sum "
        "exceeds the wall clock):",
        table(["spent in", "s (all threads)", "us / message", "share"], rows),
        "```\n    calls  tottime  cumtime  function\n" + tops + "\n```",
        f"**What limits it**: each message costs {sends / count:.1f} round trips to the "
        f"server, waited for at {wait * 1e6:.0f} us per message in all; the claim is one "
        "committed transaction per message, taken under the pass's candidate lock, so "
        "one process claims serially however many workers it has, and every commit "
        "waits for the WAL flush (fsync=on).  On this machine the server's CPU "
        f"({db_cpu / count * 1e6:.0f} us per message) competes with the client's for "
        "the same cores."])
