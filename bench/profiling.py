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
    ("waiting: locks, queues, idle helper threads",
     lambda f: "_thread.lock" in f or "acquire" in f or "_queue.SimpleQueue" in f),
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


def calls_per_message(stats, count, names=("posix.fsync", "posix.unlink", "posix.rename",
                                              "posix.utime", "posix.open", "io.open")):
    """How often each system call ran per message: what the disk is asked to do."""
    found = {name: 0 for name in names}
    for func, (_, ncalls, _, _, _) in stats.stats.items():
        for name in names:
            if func[0] == "~" and func[2] == f"<built-in method {name}>":
                found[name] += ncalls
    return {name: calls / count for name, calls in found.items()}


def own_time(stats, fragment):
    return sum(v[2] for f, v in stats.stats.items() if fragment in _name(f))


def _by_file(stats, count, limit=6):
    """Python own time per message by source file, largest first (built-ins left out)."""
    files = {}
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():
        if filename != "~":
            short = "/".join(Path(filename).parts[-2:])
            files[short] = files.get(short, 0.0) + tottime
    ranked = sorted(files.items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join(f"{name} {seconds / count * 1e6:.0f} us" for name, seconds in ranked)


def top(stats, count=15):
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:count]
    return [(item[1][1], item[1][2], item[1][3], _name(item[0])) for item in rows]


def _busy(stats):
    """Own time that is not waiting: how much work a thread did."""
    return sum(seconds for group, seconds in grouped(stats).items()
               if not group.startswith("waiting"))


def profile(ctx, sink, count):
    """Drain ``count`` messages with one worker under cProfile.

    ``(wall, sender, helpers)``: the Stats of the busiest thread (the one
    sending: its time is the critical path of one worker) and of every
    other thread merged (reapers, idle waiters), or None without any.
    """
    base = ctx.scratch("profile")
    spool = base / "spool"
    ctx.fill(spool, count)
    ini = drains.write_ini(base, spool, sink, 1)
    out = base / "profiles"
    argv = drains.txmail_argv(ini, 1)[1:]
    run = run_timed([sys.executable, Path(__file__).parent / "profile_qp.py", out, *argv])
    files = sorted(out.glob("*.prof")) if out.is_dir() else []
    if run.returncode != 0 or not files:
        raise BenchError(f"profiled txmail-qp failed (status {run.returncode}): "
                         f"{run.stderr.strip()[-300:]}")
    threads = sorted((pstats.Stats(str(f)) for f in files), key=_busy, reverse=True)
    helpers = None
    if len(threads) > 1:
        helpers = threads[1]
        for more in threads[2:]:
            helpers.add(more)
    return run.wall, threads[0], helpers, len(threads)


def _limits(stats, totals, count):
    """What limits one worker and what would lift it, from this profile's numbers."""
    per = calls_per_message(stats, count)
    us = {group: seconds / count * 1e6 for group, seconds in totals.items()}
    ranked = [kv for kv in sorted(us.items(), key=lambda kv: -kv[1])
              if not kv[0].startswith("waiting")]
    unlink_calls = per["posix.unlink"] * count
    unlink_us = own_time(stats, "posix.unlink") / unlink_calls * 1e6 if unlink_calls else 0
    recv = sum(v[1] for f, v in stats.stats.items() if "recv_into" in _name(f)) / count
    lifts = []
    if per["posix.fsync"] >= 0.5:
        lifts.append(f"{per['posix.fsync']:.1f} fsync per message cost "
                     f"{us[GROUPS[0][0]]:.0f} us: record several messages per fsync "
                     "(group commit), or none for a message every recipient accepted.")
    if unlink_us >= 100:
        lifts.append(f"unlink took {unlink_us:.0f} us per call ({per['posix.unlink']:.1f} "
                     "calls per message): on ext4 an unlink waits for the journal, which "
                     "every fsync on the same disk holds.  It costs a message nothing "
                     "only when it runs in another thread than the SMTP session's.")
    lifts.append(f"{recv:.1f} socket reads per message ({us[GROUPS[1][0]]:.0f} us): "
                 "each is one wait for the sink's reply (PIPELINING already sends "
                 "MAIL, RCPT and DATA together); a single session cannot hide it, "
                 "parallel sessions can -- compare smtp-source's 1- and 4-session rows.")
    lifts.append(f"{us[OTHER]:.0f} us per message of Python code under the profiler "
                 "(which inflates this part, not the waits): " + (
                     "the largest share, so less Python work per message is what lifts "
                     "one worker most.  By file, own time per message: "
                     if ranked[0][0] == OTHER else "smaller than the waits above.  By "
                     "file, own time per message: ") + _by_file(stats, count) + ".")
    lifts.append("More workers overlap all of these waits; `mail.workers` defaults to 4 "
                 "(see the 1/2/4-worker rows).")
    return [
        "System calls per message: " + ", ".join(
            f"{name.replace('posix.', 'os.').replace('io.open', 'open()')} {n:.1f}"
            for name, n in per.items()) + ".",
        "",
        "**What limits one worker**: it handles one message at a time, so the waits add "
        "up -- per message, " + "; ".join(f"{group} {v:.0f} us" for group, v in ranked
                                          if v >= 1) + ".",
        "",
        "**What would lift it**:",
        "",
        *[f"- {lift}" for lift in lifts],
    ]


def profile_section(ctx, sink, count):
    """Markdown: the sending thread's own time per message, what limits it, top functions."""
    wall, stats, helpers, nthreads = profile(ctx, sink, count)
    totals = grouped(stats)
    profiled = sum(totals.values())
    rows = [f"| {group} | {seconds:.2f} | {seconds / count * 1e6:.0f} | "
            f"{seconds / profiled:.0%} |"
            for group, seconds in sorted(totals.items(), key=lambda kv: -kv[1])]
    funcs = [f"{calls:>9} {tottime:8.3f} {cumtime:8.3f}  {name}"
             for calls, tottime, cumtime, name in top(stats)]
    helper_line = []
    if helpers is not None:
        work = grouped(helpers)
        helper_line = ["", f"The other {nthreads - 1} thread(s) together (off the sending "
                       "path): " + "; ".join(f"{group} {seconds:.2f} s"
                                             for group, seconds in work.items()
                                             if seconds >= 0.01) + "."]
    return "\n".join([
        f"### Profile: txmail-qp, 1 worker, {count} messages into {sink.name}",
        "",
        f"cProfile of the real console script (bench/profile_qp.py), one profile per "
        f"thread; {wall:.2f} s wall under the profiler ({rate(count, wall):.0f} msg/s; "
        "cProfile slows Python code down, not system calls).  Own time (tottime) of the "
        "thread that sends (the busiest), by kind, start-up included:",
        "",
        "| spent in | s | us / message | share |",
        "|---|---|---|---|",
        *rows,
        *helper_line,
        "",
        *_limits(stats, totals, count),
        "",
        "Top functions of the sending thread by own time:",
        "",
        "```",
        f"{'calls':>9} {'tottime':>8} {'cumtime':>8}  function",
        *funcs,
        "```",
    ])
