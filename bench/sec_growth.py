"""Cost growth: does a pass over N queued messages cost O(N) time and O(1) memory?

Issue point 8: "the processor streams files; resident memory does not grow
with queue size, and a pass over N messages costs O(N)".  For each queue
size and for 1 and 4 workers, a full drain into smtp-sink: time per message
(net of the start-up, a pass over an empty spool) and the child's peak
resident set (VmHWM).  Flat means: the largest queue's figure is
within :data:`FLAT` of the smallest queue's.
"""
from __future__ import annotations

import drains
from harness import SectionResult, Target, fmt, median, net_seconds, ratio, table

WORKERS = (1, 4)
#: Queues larger than this are drained once, not ``repeats`` times: a 100k
#: drain with one worker takes minutes, and the budget of `make bench` is ~15.
ONE_RUN_ABOVE = 10_000
SINK = "smtp-sink"
FLAT = 1.25


def _flat(text, small, large, unit_scale, unit):
    measured = ratio(large, small)
    return Target(text, measured is not None and measured <= FLAT,
                  f"{fmt(small and small * unit_scale)} -> {fmt(large and large * unit_scale)}"
                  f" {unit} = {fmt(measured, '.2f', 'x')}")


def run(ctx):
    sink = ctx.sink(SINK)
    sizes, repeats = sorted(ctx.options.sizes), ctx.options.repeats
    start = drains.startup_of(ctx, "txmail")
    figures = {}
    for size in sizes:
        for workers in WORKERS:
            times = repeats if size <= ONE_RUN_ABOVE else 1
            runs = [drains.drain_txmail(ctx, sink, size, workers) for _ in range(times)]
            wall = median([r.wall for r in runs])
            net = net_seconds(wall, start.wall)
            cpu = max(median([r.cpu for r in runs]) - start.cpu, 0) / size
            figures[size, workers] = (wall, net and net / size,
                                      max(r.peak_rss_kb for r in runs) / 1024,
                                      [r.wall for r in runs], cpu)
    rows = []
    for (size, workers), (wall, per, rss, walls, cpu) in sorted(figures.items()):
        small = figures[sizes[0], workers]
        rows.append((f"{size:,}", workers, f"{wall:.2f}", fmt(per and per * 1e6),
                     fmt(ratio(per, small[1]), ".2f", "x"), f"{cpu * 1e6:.0f}",
                     fmt(ratio(cpu, small[4]), ".2f", "x"), f"{rss:.1f}",
                     fmt(ratio(rss, small[2]), ".2f", "x"),
                     ", ".join(f"{w:.2f}" for w in walls)))
    targets, lines = [], []
    span = f"from {sizes[0]:,} to {sizes[-1]:,} queued (within {FLAT}x)"
    for workers in WORKERS:
        small, large = figures[sizes[0], workers], figures[sizes[-1], workers]
        targets.append(_flat(f"{workers} worker(s): time per message flat {span}",
                             small[1], large[1], 1e6, "us/msg"))
        targets.append(_flat(f"{workers} worker(s): CPU time per message flat {span}",
                             small[4], large[4], 1e6, "us/msg"))
        targets.append(_flat(f"{workers} worker(s): peak RSS flat {span}",
                             small[2], large[2], 1, "MB"))
        lines.append(f"growth, {workers} worker(s): " + "; ".join(
            f"{size:,}: {fmt(figures[size, workers][1] and figures[size, workers][1] * 1e6)}"
            f" us/msg, {figures[size, workers][2]:.1f} MB" for size in sizes))
    markdown = "\n\n".join([
        f"Full drains into {SINK}; median of {repeats} runs (one run above "
        f"{ONE_RUN_ABOVE:,} queued, for time); the per-message time is "
        f"(wall clock - start-up) / queued, start-up being {start.wall:.2f} s (a pass over "
        "an empty spool); CPU is the child's user+system time, start-up's subtracted; "
        "peak RSS is the largest VmHWM of the runs.",
        table(["queued", "workers", "wall s", "us / message (net)", "vs smallest",
               "CPU us / message", "vs smallest", "peak RSS MB", "vs smallest", "wall s, each run"], rows)])
    return SectionResult("Cost growth: queue of " + ", ".join(f"{s:,}" for s in sizes),
                         markdown, lines, targets)
