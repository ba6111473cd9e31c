"""``make bench``: run every benchmark section and write bench/RESULTS.md.

    .venv/bin/python bench/run.py                 # everything (~20 min)
    .venv/bin/python bench/run.py --quick         # small sizes: a smoke test
    .venv/bin/python bench/run.py --only drain --sizes 1000,10000

A section is a module of bench/ with a function ``run(ctx) ->
SectionResult`` (see harness.py); adding one is one line in :data:`SECTIONS`.  Spools are written under
``var/bench/run-*`` in the repository (its disk, not a tmpfs) unless
--workdir says otherwise, and removed at the end.  Exit status: 0 when
every section ran (a missed target is a result, not an error), 1 when a
benchmark could not run, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import machine  # noqa: E402
import tried  # noqa: E402

#: section name -> the module in bench/ whose ``run(ctx)`` measures it; the
#: order is the order of RESULTS.md.  A new section is one more line here.
SECTIONS = {
    "enqueue": "sec_enqueue",
    "concurrent": "sec_concurrent",
    "drain": "sec_drain",
    "growth": "sec_growth",
    "attachment": "sec_attachment",
    "sql": "sec_sql",
}

FULL = dict(sizes=[1000, 10000, 100000], drain_size=5000, enqueue_count=1000, repeats=3)
QUICK = dict(sizes=[10, 20, 40], drain_size=20, enqueue_count=10, repeats=1)


def _sizes(text):
    try:
        sizes = [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give queue sizes like 1000,10000") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least two positive sizes")
    return sizes


def _sinks(text):
    sinks = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sinks if s not in harness.SINK_STARTERS]
    if unknown or not sinks:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from "
                                         + ", ".join(harness.SINK_STARTERS))
    return sinks


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive whole number is needed")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Run every benchmark section and write bench/RESULTS.md (what "
                    "`make bench` does): enqueue, concurrent requests (waitress and ab), drain, "
                    "cost growth, attachment memory "
                    "and the SQL outbox (on a private PostgreSQL of the run), against "
                    "smtp-sink and aiosmtpd on 127.0.0.1.",
        epilog="sections: " + ", ".join(SECTIONS) + ".  Full-run defaults: sizes "
               f"{','.join(map(str, FULL['sizes']))}, drain size {FULL['drain_size']}, "
               f"{FULL['enqueue_count']} enqueues, {FULL['repeats']} runs each.  Exit "
               "status: 0 when every section ran (a missed target is a result), 1 when "
               "a benchmark could not run, 2 on a usage error, 130 on Ctrl-C.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and one run each: a smoke test, not figures")
    parser.add_argument("--sizes", type=_sizes, metavar="N,N,...",
                        help="queue sizes of the growth section")
    parser.add_argument("--only", action="append", choices=list(SECTIONS),
                        metavar="SECTION", help="run only this section (repeatable): "
                        + ", ".join(SECTIONS))
    parser.add_argument("--drain-size", type=_positive, metavar="N",
                        help="messages per drain in the drain section")
    parser.add_argument("--enqueue-count", type=_positive, metavar="N",
                        help="messages (one per transaction) per enqueue run")
    parser.add_argument("--repeats", type=_positive, metavar="N",
                        help="runs per configuration (the median is reported)")
    parser.add_argument("--sinks", type=_sinks, default=list(harness.SINK_STARTERS),
                        help="sinks of the drain section, comma-separated "
                             "(default: smtp-sink,aiosmtpd)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "RESULTS.md",
                        help="where to write the results (default: bench/RESULTS.md)")
    parser.add_argument("--workdir", type=Path, default=harness.ROOT / "var" / "bench",
                        help="where the run makes its scratch directory for the spools, "
                             "on the disk to measure (default: var/bench in the "
                             "repository); the scratch directory is removed afterwards")
    return parser


def options_from(args):
    base = QUICK if args.quick else FULL
    return harness.Options(quick=args.quick, sizes=args.sizes or base["sizes"],
                           drain_size=args.drain_size or base["drain_size"],
                           enqueue_count=args.enqueue_count or base["enqueue_count"],
                           repeats=args.repeats or base["repeats"], sinks=args.sinks,
                           workers=[1, 4] if args.quick else [1, 2, 4])


def render(ctx, results, started, elapsed, argv, loads):
    targets = [t for r in results for t in r.targets]
    out = ["# pyramid_txmail benchmarks", "",
           f"Written by `{' '.join(['bench/run.py', *argv])}`"
           + ("" if argv else " (`make bench`)") + " on "
           f"{started:%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} min.  "
           + ("**Quick run: small sizes, one run each -- a smoke test, not figures.**"
              if ctx.options.quick else "Every figure is measured in this run."),
           "", "## Machine", "",
           harness.table(["", ""], machine.machine(ctx.workdir)
                         + [("load at the start", loads[0]), ("load at the end", loads[-1])]),
           "", "## Versions", "", harness.table(["", ""], machine.versions()),
           "", "## Targets", "",
           harness.table(["target", "met", "measured"],
                         [(t.text, "yes" if t.met else "**no**", t.detail) for t in targets])]
    out += tried.markdown([t for t in targets if not t.met])
    for result in results:
        out += ["", f"## {result.title}", "", result.markdown]
    return "\n".join(out) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    started, clock = datetime.datetime.now(datetime.timezone.utc), time.monotonic()
    loads = [machine.load()]
    try:
        options = options_from(args)
        try:
            args.workdir.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir)).resolve()
        except OSError as exc:
            raise harness.BenchError(f"--workdir {args.workdir}: {exc.strerror}") from None
        ctx = harness.Context(options, scratch)
        results = []
        try:
            for name, module in SECTIONS.items():
                if args.only and name not in args.only:
                    continue
                print(f"== {name}", flush=True)
                result = importlib.import_module(module).run(ctx)
                results.append(result)
                for line in result.lines:
                    print("   " + line, flush=True)
        finally:
            ctx.close()
            shutil.rmtree(scratch, ignore_errors=True)
    except harness.BenchError as exc:
        print(f"bench/run.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/run.py: interrupted; nothing written", file=sys.stderr)
        return 130
    loads.append(machine.load())
    args.out.write_text(render(ctx, results, started, time.monotonic() - clock, argv, loads))
    print("== targets")
    for target in (t for r in results for t in r.targets):
        print(f"   [{'met' if target.met else 'MISSED'}] {target.text}: {target.detail}")
    print(f"results written to {args.out}")
    return draw_plots(args.out)


def draw_plots(results):
    """The plots of ``results`` beside it (bench/plots.py; the docs show them)."""
    try:
        import plots
        written = plots.write_plots(results)
    except ImportError as exc:  # matplotlib: the docs extra, which `make install` installs
        print(f"bench/run.py: the plots were not drawn: {exc}; install the docs extra "
              "(pip install -e '.[docs]') and run bench/plots.py", file=sys.stderr)
        return 1
    except (ValueError, KeyError) as exc:  # a table plots.py cannot read: say which
        print(f"bench/run.py: the plots were not drawn from {results}: {exc!r} "
              "(the results are written; fix bench/plots.py and run it)", file=sys.stderr)
        return 1
    for path in written:
        print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
