"""Exploration: the property tests with fresh random seeds, for a time budget (``make explore``).

``make reliability`` is a gate: derandomized, so a commit always tries the
same examples, and it is red only when the code regressed.  Looking for new
cases is this script's job instead.  It runs every test marked ``property``
(long size, ``TXMAIL_HYPOTHESIS=explore``: a random seed each time, and an
example database under test-artifacts/explore that replays what it found),
one test per pytest process, round after round (each in a new order) until
the budget is spent; a run still going then is stopped and counted as cut off.

It writes ``OUT/FINDINGS.md``: every run with its seed and outcome, and each
falsifying example as hypothesis printed it, with the command that reproduces
it.  A finding is then pinned as an explicit example (tests/badinput_pinned.py
for the bad-input properties), seen to fail, and fixed -- in the library, or
in the property's oracle when that was wrong.  Exit status: 1 when anything
failed, else 0.

usage: python tests/explore.py [--minutes M] [--out DIR] [PYTEST ARGS...]
(PYTEST ARGS choose the tests, e.g. ``-k mail_builder`` or a file.)
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Where a pytest failure shows hypothesis's own report of the example.
_REPORT = re.compile(r"^E\s+(Falsifying|Failing) (explicit )?(example|test case)")


def property_tests(pytest_args):
    """The node ids of the tests marked ``property``."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-m", "property", "-p", "no:cacheprovider", *pytest_args],
                         cwd=ROOT, capture_output=True, text=True, check=False).stdout
    return [line.strip() for line in out.splitlines() if "::" in line]


def run_one(node, seed, log_path, seconds):
    """``passed``, ``failed`` or ``cut off``: one property test with one seed."""
    env = {**os.environ, "TXMAIL_HYPOTHESIS": "explore", "TXMAIL_RELIABILITY": "long"}
    env.pop("TXMAIL_RELIABILITY_OUT", None)  # not a report run
    command = [sys.executable, "-m", "pytest", node, f"--hypothesis-seed={seed}", "-q",
               "-p", "no:cacheprovider", "-o", "timeout=0"]
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = process.wait(timeout=max(seconds, 1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: this run only
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return "cut off"
    return "passed" if status == 0 else "failed"


def falsifying_examples(log_path):
    """hypothesis's report of each failing example in a pytest log, as text blocks."""
    blocks, current = [], None
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if _REPORT.match(line):
                current = []
                blocks.append(current)
            elif current is not None and not line.startswith("E "):
                current = None
            if current is not None:
                current.append(re.sub(r"^E {0,7}", "", line.rstrip("\n")))
    return ["\n".join(block).rstrip() for block in blocks]


def findings_report(runs, minutes, started):
    import hypothesis

    failed = [r for r in runs if r["outcome"] == "failed"]
    lines = ["# Exploration findings", "",
             f"`make explore`: {len(runs)} runs of the property tests with random seeds in "
             f"{minutes:g} minutes, started {time.strftime('%Y-%m-%d %H:%M UTC', started)}, "
             f"hypothesis {hypothesis.__version__}.  Not the gate: see docs/reliability.rst, "
             "\"Reliability suite\".", "",
             "| test | seed | outcome |", "|---|---|---|"]
    lines += [f"| {r['node']} | {r['seed']} | {r['outcome']} |" for r in runs]
    lines += ["", f"## Failures: {len(failed)}", ""]
    if not failed:
        lines.append("None in this budget.")
    seen = set()
    for run in failed:
        lines += [f"### {run['node']} (seed {run['seed']})", "",
                  f"Log: `{os.path.relpath(run['log'], ROOT)}`.  Reproduce:", "",
                  "    TXMAIL_HYPOTHESIS=explore TXMAIL_RELIABILITY=long .venv/bin/python -m "
                  f"pytest '{run['node']}' --hypothesis-seed={run['seed']} -p no:cacheprovider",
                  ""]
        for block in falsifying_examples(run["log"]):
            if block in seen:
                lines += ["(the same example as above)", ""]
                continue
            seen.add(block)
            lines += ["```", block, "```", ""]
    lines += ["To pin a finding: add it as an explicit example (tests/badinput_pinned.py "
              "for the bad-input properties), check that it fails, then fix the library "
              "or the property's oracle and say which and why in the commit."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget")
    parser.add_argument("--out", default=os.path.join(ROOT, "test-artifacts", "explore"))
    args, pytest_args = parser.parse_known_args(argv)
    logs = os.path.join(args.out, "logs")
    os.makedirs(logs, exist_ok=True)
    for name in os.listdir(logs):  # this run's logs only; the example database stays
        os.unlink(os.path.join(logs, name))
    nodes = property_tests(pytest_args)
    if not nodes:
        print("explore: no test is marked 'property'", file=sys.stderr)
        return 2
    started, deadline = time.gmtime(), time.monotonic() + args.minutes * 60
    rng, runs = random.SystemRandom(), []
    while time.monotonic() < deadline:
        rng.shuffle(nodes)  # a short budget still reaches every test, over several runs
        for node in nodes:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            seed = rng.randrange(2 ** 32)
            log = os.path.join(logs, f"{len(runs):03d}-{node.rpartition('::')[2]}-{seed}.log")
            outcome = run_one(node, seed, log, left)
            runs.append({"node": node, "seed": seed, "log": log, "outcome": outcome})
            print(f"explore: {node} seed {seed}: {outcome}", flush=True)
    report = os.path.join(args.out, "FINDINGS.md")
    with open(report, "w", encoding="utf-8") as f:
        f.write(findings_report(runs, args.minutes, started))
    failed = sum(r["outcome"] == "failed" for r in runs)
    print(f"explore: {len(runs)} runs, {failed} failed; wrote {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
