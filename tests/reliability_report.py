"""Write docs/RELIABILITY.md from a ``make reliability`` run.

``python tests/reliability_report.py OUTDIR REPORT`` reads ``OUTDIR/counts.jsonl``
(one line per scenario, written by :func:`tests.reliability.record`) and
``OUTDIR/junit.xml`` (pytest's outcome), and writes the report: per scenario
the runs, messages, delivered, duplicated, lost and held counts, and the bad
inputs tried.
"""
from __future__ import annotations

import collections
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

COUNTS = ("runs", "messages", "delivered", "duplicated", "lost", "held", "bad_inputs")
HEADINGS = ("scenario", "runs", "messages", "delivered", "duplicated", "lost", "held",
            "bad inputs")
GROUPS = {
    "faults": "Fault-injecting SMTP server",
    "crash": "Crashes (kill -9)",
    "disk": "Disk and permissions",
    "badinput": "Bad input (property-based)",
    "tls": "TLS and secrets",
    "postfix": "A real Postfix in the path",
    # issue 11's scenarios
    "envelope": "Envelope integrity (property-based)",
    "signals": "Signal storms against a draining daemon",
    "direct": "Direct delivery with a hanging relay",
    "builder": "Large messages built in the view",
    # issue 13's scenarios
    "sql": "The SQL outbox: many processors, kills, restarts, slow relays",
}

#: Said under a group's heading when its unit is not the message.
GROUP_NOTES = {
    "faults": "Counted in (message, recipient) pairs: one message can be delivered to one "
              "recipient, deferred for another and dead-lettered for a third.",
    "badinput": "Counted in examples, one message each.  Held: refused in send() with an "
                "error naming the header, address or file (nothing queued), or "
                "dead-lettered with the reason (a UTF-8 mailbox for a server without "
                "SMTPUTF8, a broken queue file); every other example arrived and parsed "
                "back to the same message.",
    "postfix": "Counted in messages: a message Postfix took for some recipients counts "
               "as delivered (its refused recipients are dead-lettered with Postfix's "
               "reply), one it refused for every recipient as held.",
    "sql": "Counted in messages enqueued with enqueue() in committed transactions and "
           "drained by real txmail-qp daemons (PostgreSQL: a private server, 3 processes; "
           "SQLite: 2 processes on one machine, the only setup it serves), checked at "
           "the SMTP sink by Message-ID and in the table (every row delivered at the "
           "end).  Duplicates are allowed only for messages a killed processor held, or "
           "in flight when PostgreSQL restarted.",
}

HEADER = """\
Written by `make reliability`: the long versions of the reliability suite (`make test` runs
the quick ones).  Rerun it to refresh this file.

`make reliability` is a gate: the same commit gives the same result on every clone.  Its
property tests are derandomized (hypothesis draws each test's examples from a hash of its
code; no example database; hypothesis pinned in pyproject.toml), and every case found so far runs
first as an explicit example (tests/badinput_pinned.py).  New cases are looked for
separately, by `make explore` (random seeds, a time budget, findings in
test-artifacts/explore/FINDINGS.md); each finding is pinned, seen to fail, and fixed, so the
gate keeps it fixed.  docs/reliability.rst has the workflow.
"""

EXPLAIN = """\
Columns, summed over the scenario's runs:

- **messages**: messages that had to arrive (committed, or accepted for delivery);
- **delivered**: of those, how many arrived;
- **duplicated**: messages that arrived more than once.  Expected only where the outcome
  of a delivery could not be recorded: a connection or process died between the server
  storing the message and the client reading its reply (the RFC 1047 window), or a full
  disk kept the processor from writing which recipients already had it.  Delivery is at
  least once, like Postfix's after a crash;
- **lost**: messages neither delivered, nor waiting for a retry, nor dead-lettered with a
  reason -- must be 0;
- **held**: messages kept on purpose instead of delivered (deferred for a retry,
  dead-lettered with the reason, or refused with an error before the commit);
- **bad inputs**: bad or random inputs tried.
"""


def load(outdir):
    rows = collections.OrderedDict()
    path = os.path.join(outdir, "counts.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                key = (row["group"], row["scenario"])
                if key not in rows:
                    rows[key] = dict(row)
                else:
                    for name in COUNTS:
                        rows[key][name] += row[name]
                    if row["detail"] and row["detail"] not in rows[key]["detail"]:
                        rows[key]["detail"] = "; ".join(
                            filter(None, [rows[key]["detail"], row["detail"]]))
    return list(rows.values())


def outcome(outdir):
    path = os.path.join(outdir, "junit.xml")
    if not os.path.exists(path):
        return "pytest wrote no junit.xml (it did not run to the end)"
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    get = lambda name: int(suite.get(name, 0))  # noqa: E731
    failed = get("failures") + get("errors")
    return (f"{get('tests') - failed - get('skipped')} passed, {failed} failed, "
            f"{get('skipped')} skipped, in {float(suite.get('time', 0)):.0f} s")


def _cell(value):
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows):
    lines = ["| " + " | ".join(HEADINGS) + " |", "|" + "---|" * len(HEADINGS)]
    for row in rows:
        lines.append("| " + " | ".join(
            [_cell(row["scenario"])] + [str(row[name]) for name in COUNTS]) + " |")
    return lines


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def hypothesis_profile():
    """Which examples the property tests drew: the profile, seed and hypothesis version."""
    profile = os.environ.get("TXMAIL_HYPOTHESIS", "gate")
    try:
        from importlib.metadata import version

        found = version("hypothesis")
    except Exception:  # noqa: BLE001 -- the report is written anyway
        found = "unknown"
    how = "derandomized" if profile == "gate" else "random seeds"
    return f"hypothesis {found} ({profile}: {how})"


def render(rows, result):
    totals = {name: sum(r[name] for r in rows) for name in COUNTS}
    out = ["# Reliability report", "", HEADER,
           f"- run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
           f"{commit()}, Python {platform.python_version()}, {platform.system()} "
           f"{platform.release()}, {os.cpu_count()} CPUs, {hypothesis_profile()}",
           f"- pytest: {result}",
           f"- scenarios: {len(rows)}; runs {totals['runs']}; messages "
           f"{totals['messages']}; delivered {totals['delivered']}; duplicated "
           f"{totals['duplicated']}; **lost {totals['lost']}**; held {totals['held']}; "
           f"bad inputs tried {totals['bad_inputs']}", "", EXPLAIN]
    by_group = collections.defaultdict(list)
    for row in rows:
        by_group[row["group"]].append(row)
    for group in list(GROUPS) + sorted(set(by_group) - set(GROUPS)):
        if group not in by_group:
            continue
        out += [f"## {GROUPS.get(group, group)}", ""]
        if group in GROUP_NOTES:
            out += [GROUP_NOTES[group], ""]
        out += table(by_group[group]) + [""]
        details = [(r["scenario"], r["detail"]) for r in by_group[group] if r["detail"]]
        for scenario, detail in details:
            out.append(f"- *{_cell(scenario)}*: {_cell(detail)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    outdir, report = argv
    rows = load(outdir)
    text = render(rows, outcome(outdir))
    os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
    with open(report, "w", encoding="utf-8") as f:
        f.write(text)
    lost = sum(r["lost"] for r in rows)
    print(f"wrote {report}: {len(rows)} scenarios, lost {lost}")
    return 1 if lost or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
