"""Cost growth: does a pass over N queued messages cost O(N) time and O(1) memory?

Issue point 8: "the processor streams files; resident memory does not grow
with queue size, and a pass over N messages costs O(N)".  For each queue
size and for 1 and 4 workers, a full drain into smtp-sink, timed as a child
process, with its peak resident set (VmHWM) and CPU time.

O(N) means the wall clock is a + b*N: the cost of each *additional*
message, (wall(N2) - wall(N1)) / (N2 - N1) between consecutive sizes, must
stay the same.  That slope needs no start-up correction (it cancels), so
it is what the targets judge, for wall clock and for CPU time; memory must
stay flat outright.  "Flat" means within :data:`FLAT` of the first figure.
"""
from __future__ import annotations

import tracemalloc

import drains
from harness import SectionResult, Target, fmt, median, net_seconds, ratio, table

WORKERS = (1, 4)
SINK = "smtp-sink"
FLAT = 1.25
#: Queues larger than this are drained once, not ``repeats`` times: a 100k
#: drain with one worker takes minutes, and the budget of `make bench` is ~15.
ONE_RUN_ABOVE = 10_000


def listing_peak(spool):
    """``(method, names, peak bytes)`` of listing ``new/`` the way the processor does.

    In-process, with tracemalloc: ``Spool.iter_names`` (streamed in sorted
    batches) where the spool has it, else ``Spool.names`` (one sorted list).
    """
    from pyramid_txmail.queue.maildir.spool import Spool

    queue = Spool(str(spool))
    method = "iter_names" if hasattr(queue, "iter_names") else "names"
    tracemalloc.start()
    try:
        names = sum(1 for _ in getattr(queue, method)("new"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return method, names, peak


def _measure(ctx, sink, sizes, repeats):
    """Drain every size with 1 and 4 workers; also how much listing the largest takes."""
    figures, listing = {}, []
    for size in sizes:
        for workers in WORKERS:
            times = repeats if size <= ONE_RUN_ABOVE else 1
            runs = []
            for _ in range(times):
                measure_listing = size == sizes[-1] and not listing
                runs.append(drains.drain_txmail(
                    ctx, sink, size, workers,
                    before=(lambda spool: listing.append(listing_peak(spool)))
                    if measure_listing else None))
            figures[size, workers] = dict(
                wall=median([r.wall for r in runs]), cpu=median([r.cpu for r in runs]),
                rss=max(r.peak_rss_kb for r in runs) / 1024, walls=[r.wall for r in runs])
    return figures, (listing[0] if listing else None)


def _slopes(figures, sizes, workers, key):
    """Cost of each additional message between consecutive sizes (seconds)."""
    return [(figures[b, workers][key] - figures[a, workers][key]) / (b - a)
            for a, b in zip(sizes, sizes[1:])]


def _flat(text, first, last, scale, unit):
    measured = ratio(last, first)
    return Target(text, measured is not None and measured <= FLAT,
                  f"{fmt(first * scale)} -> {fmt(last * scale)} {unit} = "
                  f"{fmt(measured, '.2f', 'x')}")


def run(ctx):
    sink = ctx.sink(SINK)
    sizes, repeats = sorted(ctx.options.sizes), ctx.options.repeats
    start = drains.startup_of(ctx, "txmail")
    figures, listing = _measure(ctx, sink, sizes, repeats)
    rows, targets, lines = [], [], []
    for workers in WORKERS:
        wall_slopes = _slopes(figures, sizes, workers, "wall")
        cpu_slopes = _slopes(figures, sizes, workers, "cpu")
        first = figures[sizes[0], workers]
        for i, size in enumerate(sizes):
            f = figures[size, workers]
            net = net_seconds(f["wall"], start.wall)
            step = (f"{sizes[i - 1]:,}->{size:,}: {wall_slopes[i - 1] * 1e6:.0f} / "
                    f"{cpu_slopes[i - 1] * 1e6:.0f}" if i else "")
            rows.append((f"{size:,}", workers, f"{f['wall']:.2f}",
                         fmt(net and net / size * 1e6), step, f"{f['rss']:.1f}",
                         fmt(ratio(f["rss"], first["rss"]), ".2f", "x"),
                         ", ".join(f"{w:.2f}" for w in f["walls"])))
        span = f"{sizes[0]:,}..{sizes[-1]:,} queued"
        if len(wall_slopes) > 1:
            targets.append(_flat(f"{workers} worker(s): each additional message costs the "
                                 f"same wall time over {span} (first vs last step, within "
                                 f"{FLAT}x)", wall_slopes[0], wall_slopes[-1], 1e6, "us"))
            targets.append(_flat(f"{workers} worker(s): each additional message costs the "
                                 f"same CPU time over {span} (first vs last step, within "
                                 f"{FLAT}x)", cpu_slopes[0], cpu_slopes[-1], 1e6, "us"))
        last = figures[sizes[-1], workers]
        targets.append(_flat(f"{workers} worker(s): peak RSS flat over {span} (within "
                             f"{FLAT}x)", first["rss"], last["rss"], 1, "MB"))
        lines.append(f"growth, {workers} worker(s): " + "; ".join(
            f"{size:,}: {figures[size, workers]['wall']:.2f} s, "
            f"{figures[size, workers]['rss']:.1f} MB" for size in sizes)
            + "; us per additional message: "
            + ", ".join(f"{s * 1e6:.0f}" for s in wall_slopes))
    parts = [
        f"Full drains into {SINK}; median of {repeats} runs (one run above "
        f"{ONE_RUN_ABOVE:,} queued, for time).  Start-up, a pass over an empty spool: "
        f"{start.wall:.2f} s.  \"us / message (net)\" is (wall - start-up) / queued; "
        "\"us per additional message\" is the slope from the previous size, wall / CPU "
        "(the child's user+system time, its threads included): constant slopes mean "
        "O(N).",
        table(["queued", "workers", "wall s", "us / message (net)",
               "us per additional message (wall / CPU)", "peak RSS MB", "vs smallest",
               "wall s, each run"], rows)]
    if listing is not None:
        rss_flat = all(t.met for t in targets if "peak RSS" in t.text)
        parts.append(_memory_note(figures, sizes, listing, rss_flat))
    return SectionResult("Cost growth: queue of " + ", ".join(f"{s:,}" for s in sizes),
                         "\n\n".join(parts), lines, targets)


def _memory_note(figures, sizes, listing, rss_flat):
    method, names, peak = listing
    grown = max(figures[sizes[-1], w]["rss"] - figures[sizes[0], w]["rss"] for w in WORKERS)
    extra = sizes[-1] - sizes[0]
    how = {"iter_names": "streamed in sorted batches",
           "names": "every name in one list, sorted oldest first"}[method]
    return (f"**Where the memory goes.**  From {sizes[0]:,} to {sizes[-1]:,} queued, peak "
            f"RSS grew by up to {grown:.1f} MB, {grown * 2**20 / extra:.0f} bytes per "
            f"additional queued message.  Listing `new/` as the processor does "
            f"(`Spool.{method}`: {how}) peaks at {peak / 2**20:.1f} MB by itself for "
            f"{names:,} names (tracemalloc"
            + (f", {peak / max(names, 1):.0f} bytes a name)." if method == "names" else
               ": the batch, not the queue, sets it).")
            + ("" if rss_flat or method != "names" else
               "  Streaming the directory (`os.scandir` in batches, each batch sorted) "
               "would keep a pass's memory bounded, at the price of strict oldest-first "
               "order across batches."))
