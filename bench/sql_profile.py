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
        f"server, waited for at {wait * 1e6:.0f} us per message in all; claims are made "
        "a few rows per statement, the next batch claimed ahead by a helper thread while "
        "the current one is handed out (the claim returns the envelope and a small "
        "body), holds() is answered by the lease renewer, the retires of the workers "
        "are committed in groups of one statement each, a group of first-attempt "
        "retires without waiting for the WAL flush, and every other settling commit "
        "waits for it (fsync=on).  On this machine the server's CPU "
        f"({db_cpu / count * 1e6:.0f} us per message) competes with the client's for "
        "the same cores."])


# -- enqueue ------------------------------------------------------------------------

#: (group, function names whose cumulative time it is), within enqueue() only
ENQUEUE_GROUPS = (
    ("building the statement (`insert().values(**row).returning(...)`, per call)",
     ("values", "returning", "insert")),
    ("SQLAlchemy's cache key and compiled-statement lookup", ("_compile_w_cache",)),
    ("the driver and the database (execute, fetch the id)", ("do_execute", "first")),
    ("the message and envelope (Message-ID, 8-bit checks, envelope checks)",
     ("message_id_of", "message_id_in", "check_envelope", "header_block")),
)


#: the statement is built right in these (store.py)
ENQUEUE_CALLERS = ("enqueue", "_insert")


def enqueue_section(ctx, url, label, count=None):
    """What one ``enqueue()`` call spends its time on, under cProfile, on ``url``:
    transactions of one enqueue each, the profiler on around the call only."""
    import cProfile

    from pyramid_txmail.queue.sql import enqueue
    from sql_db import SENDER_ADDRESS, message_bytes
    from harness import RECIPIENT
    import sql_enqueue

    count = count or (30 if ctx.options.quick else 300)
    paths = sql_enqueue.Paths(ctx, url)
    data, profiler = message_bytes(ctx), cProfile.Profile()
    try:
        with paths.engine.connect() as connection:
            for i in range(20 + count):  # 20 to warm the caches, not profiled
                with connection.begin():
                    if i >= 20:
                        profiler.enable()
                    enqueue(connection, SENDER_ADDRESS, [RECIPIENT], data)
                    profiler.disable()
    finally:
        paths.close()
    stats = pstats.Stats(profiler)
    total = max((v[3] for f, v in stats.stats.items()
                 if f[2] == "enqueue" and "sql/store.py" in f[0]), default=0.0)
    rows, counted = [], 0.0
    for group, names in ENQUEUE_GROUPS:
        seconds = _outermost(stats, names, ENQUEUE_CALLERS if group == ENQUEUE_GROUPS[0][0]
                             else None)
        counted += seconds
        rows.append((group, f"{seconds / count * 1e6:.0f}",
                     f"{seconds / total:.0%}" if total else "n/a"))
    rest = max(total - counted, 0.0)
    rows.append(("the rest (SQLAlchemy's execute and result handling, enqueue's own code)",
                 f"{rest / count * 1e6:.0f}", f"{rest / total:.0%}" if total else "n/a"))
    return "\n\n".join([
        f"#### Where `enqueue()` spends its time ({label}, cProfile, {count} calls)",
        f"`enqueue()` took {total / count * 1e6:.0f} us per call under the profiler "
        "(which inflates Python code, not the database's time); cumulative time of its "
        "parts:",
        table(["part of enqueue()", "us / call", "share"], rows),
        _enqueue_verdict(rows)])


def _enqueue_verdict(rows):
    """What limits ``enqueue()``: its largest measured parts, and what they are for."""
    parts = sorted(rows, key=lambda row: -float(row[1]))[:2]
    return (f"**What limits it**: the largest parts are {parts[0][0]} ({parts[0][1]} us) "
            f"and {parts[1][0]} ({parts[1][1]} us).  Beyond the application's INSERT, "
            "on PostgreSQL the outbox row returns its id (`RETURNING`, with the "
            "transaction's one `pg_notify` in it for its first row), so the driver fetches "
            "a row and SQLAlchemy builds a result (SQLite's id is the cursor's lastrowid); "
            "enqueue finds the Message-ID in the message, checks the envelope and the "
            "lines' lengths, and encodes the recipients as JSON.  On SQLite, where an "
            "INSERT into a local file costs tens of microseconds, that fixed Python work "
            "is most of the cost.")


def _outermost(stats, names, only_from=None):
    """Cumulative seconds of the functions called ``names``, counted once: only the
    calls from a caller not itself named in ``names`` (SQLAlchemy's generated
    wrappers call a method of the same name), and with ``only_from`` only the calls
    straight from functions of those names."""
    seconds = 0.0
    for func, (_, _, _, _, callers) in stats.stats.items():
        if func[2] in names:
            seconds += sum(edge[3] for caller, edge in callers.items()
                           if caller[2] not in names
                           and (only_from is None or caller[2] in only_from))
    return seconds
