"""CPU per message of a several-process ``txmail-qp`` cron pass, and its lost claim races.

Usage::

    python bench/share_drain.py [--messages 3000] [--processes 2] [--rounds 3]
                                [--variant before=/path/to/older/source ...]

Why: with ``mail.processes`` > 1 every child used to list all of ``new/`` and
race its siblings for the same names; a loser's claim fails (``taken``) after
an lstat, an open or a rename, and the listing was walked in full by each
(issue 14).  Each child now takes its own share of the names first
(:mod:`pyramid_txmail.queue.maildir.shares`).  This script drains the same
spool ``--rounds`` times with each variant, interleaved (so that a change in
the machine's load hits every variant alike), into Postfix's smtp-sink, and
prints the CPU seconds per message (the parent and its children, from
``wait4``) and the ``taken`` count of each pass.

A variant is ``label=PATH``: PATH goes first on ``PYTHONPATH``, so it runs
the ``pyramid_txmail`` package found there (e.g. ``git archive main
pyramid_txmail | tar -x -C /tmp/base``).  The installed code always runs as
``after``.  A measurement, not a test: figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from drains import bytecode_env, write_ini  # noqa: E402
from harness import (BIN, BenchError, Context, Options, median,  # noqa: E402
                     run_timed)

_TAKEN = re.compile(r"pass by \d+ processes: .*\btaken=(\d+)")


def _variant(text):
    label, sep, path = text.partition("=")
    if not sep or not label or not Path(path, "pyramid_txmail").is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=PATH, PATH holding a "
                                         "pyramid_txmail package")
    return label, str(Path(path).resolve())


def drain(ctx, sink, label, pythonpath, messages, processes):
    """One pass over a full spool; ``(cpu seconds, taken)``.  The spool must end empty."""
    base = ctx.scratch(f"share-{label}")
    spool = base / "spool"
    ctx.fill(spool, messages)
    ini = write_ini(base, spool, sink, qp_processes=processes)
    env = bytecode_env(ctx)
    env["PYTHONPYCACHEPREFIX"] += "-" + label  # each variant its own bytecode
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath,
                                                          env.get("PYTHONPATH")]))
    run = run_timed([BIN / "txmail-qp", ini, "--no-app"], env=env)
    left = sum(len(os.listdir(spool / state)) for state in ("new", "cur", "deferred"))
    found = _TAKEN.search(run.stderr)
    if run.returncode != 0 or left or not found:
        raise BenchError(f"{label}: exit status {run.returncode}, {left} left in the spool; "
                         f"stderr: {run.stderr.strip()[-300:]}")
    return run.cpu, int(found.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", type=_variant, action="append", default=[])
    args = parser.parse_args()
    variants = args.variant + [("after", None)]
    options = Options(quick=False, sizes=[], drain_size=args.messages, enqueue_count=0,
                      repeats=args.rounds, sinks=["smtp-sink"], workers=[])
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as work:
        ctx = Context(options, work)
        try:
            sink = ctx.sink("smtp-sink")
            for label, path in variants:  # warm-up: bytecode, page cache; not counted
                drain(ctx, sink, label, path, 50, args.processes)
            found = {label: [] for label, _ in variants}
            for round_ in range(1, args.rounds + 1):
                for label, path in variants:
                    cpu, taken = drain(ctx, sink, label, path, args.messages,
                                       args.processes)
                    found[label].append((cpu, taken))
                    print(f"round {round_} {label:>8}: {cpu / args.messages * 1e6:6.0f} us "
                          f"CPU/message ({cpu:.2f} s), taken={taken}", flush=True)
        finally:
            ctx.close()
    for label, runs in found.items():
        print(f"{label:>8}: median {median([c for c, _ in runs]) / args.messages * 1e6:.0f} "
              f"us CPU/message, taken {[t for _, t in runs]} "
              f"({args.messages} messages, {args.processes} processes, smtp-sink)")


if __name__ == "__main__":
    main()
