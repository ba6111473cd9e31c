"""Where one txmail-qp worker spends its time: cProfile of a real drain, grouped.

Run when a drain target is missed, so that RESULTS.md says what limits the
rate, measured, rather than guessed.  The profile is of the real console
script (bench/profile_qp.py wraps ``txmail-qp`` and profiles every thread),
draining the same spool into the same sink as the drain section.
"""
from __future__ import annotations

import pstats
import sys
from pathlib import Path

import drains
from harness import BenchError, rate, run_timed

#: (group, test on the profile's function name), first match wins.
GROUPS = (
    ("fsync (file and directory)", lambda f: "posix.fsync" in f),
    ("SMTP socket send/receive", lambda f: "_socket.socket" in f),
    ("other file-system calls (open, read, rename, unlink, utime, listdir, stat)",
     lambda f: f.startswith("<built-in method posix.") or "io.open" in f
     or "_io." in f),
    ("waiting on a lock or thread (idle main thread)",
     lambda f: "_thread.lock" in f or "acquire" in f),
)
OTHER = "Python code (smtplib, email, json, processor, logging)"


def _name(func):
    filename, line, name = func
    if filename == "~":
        return name
    parts = Path(filename).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else filename
    return f"{short}:{line}({name})"


def grouped(stats):
    """``{group: seconds}`` of own time (tottime) over every function."""
    totals = {group: 0.0 for group, _ in GROUPS}
    totals[OTHER] = 0.0
    for func, (_, _, tottime, _, _) in stats.stats.items():
        name = _name(func)
        group = next((g for g, test in GROUPS if test(name)), OTHER)
        totals[group] += tottime
    return totals


def top(stats, count=15):
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:count]
    return [(item[1][1], item[1][2], item[1][3], _name(item[0])) for item in rows]


def profile(ctx, sink, count):
    """Drain ``count`` messages with one worker under cProfile; ``(wall, Stats)``."""
    base = ctx.scratch("profile")
    spool = base / "spool"
    ctx.fill(spool, count)
    ini = drains.write_ini(base, spool, sink, 1)
    out = base / "txmail-qp.prof"
    argv = drains.txmail_argv(ini, 1)[1:]
    run = run_timed([sys.executable, Path(__file__).parent / "profile_qp.py", out, *argv])
    if run.returncode != 0 or not out.exists():
        raise BenchError(f"profiled txmail-qp failed (status {run.returncode}): "
                         f"{run.stderr.strip()[-300:]}")
    return run.wall, pstats.Stats(str(out))


def profile_section(ctx, sink, count):
    """Markdown: grouped own time per message, and the top functions."""
    wall, stats = profile(ctx, sink, count)
    totals = grouped(stats)
    profiled = sum(totals.values())
    rows = [f"| {group} | {seconds:.2f} | {seconds / count * 1e6:.0f} | "
            f"{seconds / profiled:.0%} |"
            for group, seconds in sorted(totals.items(), key=lambda kv: -kv[1])]
    funcs = [f"{calls:>9} {tottime:8.3f} {cumtime:8.3f}  {name}"
             for calls, tottime, cumtime, name in top(stats)]
    return "\n".join([
        f"### Profile: txmail-qp, 1 worker, {count} messages into {sink.name}",
        "",
        f"cProfile of the real console script (bench/profile_qp.py), every thread; "
        f"{wall:.2f} s wall under the profiler ({rate(count, wall):.0f} msg/s; cProfile "
        f"slows Python code down, not system calls).  Own time (tottime) by kind:",
        "",
        "| spent in | s | us / message | share |",
        "|---|---|---|---|",
        *rows,
        "",
        "Top functions by own time:",
        "",
        "```",
        f"{'calls':>9} {'tottime':>8} {'cumtime':>8}  function",
        *funcs,
        "```",
    ])
