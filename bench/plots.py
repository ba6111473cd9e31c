"""Plots of bench/RESULTS.md, drawn from its tables (matplotlib), written beside it.

    .venv/bin/python bench/plots.py                # bench/RESULTS.md -> bench/*.svg
    .venv/bin/python bench/plots.py OTHER/RESULTS.md

``bench/run.py`` calls :func:`write_plots` after writing RESULTS.md, so ``make
bench`` redraws them; the documentation's benchmarks page shows them.  Every
figure comes from the Markdown tables run.py wrote -- nothing is typed in here:

- ``targets.svg``: each target's measured ratio against the line it had to reach
  (the Targets table);
- ``drain.svg``: msg/s net of start-up of txmail-qp, repoze.sendmail's qp and
  smtp-source, into each sink (the Drain section's tables);
- ``enqueue.svg``: microseconds per message of the durable enqueue, the floor and
  pyramid_mailer (the Enqueue section's table).

A plot whose table is missing (``run.py --only``) is skipped and said so.
"""
from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MET, MISSED, NEUTRAL, ANCHOR, FLOOR = "#3a7d44", "#c0392b", "#4a78a8", "#777777", "#c8c8c8"


class MissingTable(LookupError):
    """RESULTS.md has no such section or table (a partial run)."""


def sections(text):
    """``{heading: [table, ...]}`` for every ``#``-heading; a table is a list of row dicts."""
    found, heading, table = {}, None, None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, table = line.lstrip("#").strip(), None
            found.setdefault(heading, [])
        elif line.startswith("|") and heading is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if table is None:
                table = {"header": cells, "rows": []}
                found[heading].append(table)
            elif not all(set(c) <= set("-: ") for c in cells):
                table["rows"].append(dict(zip(table["header"], cells)))
        else:
            table = None
    return found


def table_under(found, prefix, index=0, exact=False):
    """The ``index``-th table of the first section whose heading starts with ``prefix``
    (``exact``: is ``prefix``; "into aiosmtpd" must not find "Into aiosmtpd with its
    default (strict) line limit" in a run without the aiosmtpd drain)."""
    for heading, tables in found.items():
        name, wanted = heading.lower(), prefix.lower()
        if (name == wanted if exact else name.startswith(wanted)) and len(tables) > index:
            return tables[index]["rows"]
    raise MissingTable(f"no table under a heading '{prefix}...' in RESULTS.md")


def number(text):
    """The first number in a cell, or None for a cell without one (``n/a``: a quick
    run's figure too small to measure); such a row is left out of its plot."""
    match = re.search(r"-?[0-9][0-9,]*\.?[0-9]*", text)
    return float(match.group(0).replace(",", "")) if match else None


def target_ratio(target, measured):
    """``(measured ratio, line to reach, "<=" or ">=")`` of one Targets row.

    Percentages become ratios (50% -> 0.5); "within 1.25x" means <= 1.25x;
    ">= the spool's ..." is >= 1x.
    """
    bound = re.search(r"(<=|>=)\s*([0-9.]+)\s*(x|%)", target)
    if bound:
        line = float(bound.group(2)) / (100 if bound.group(3) == "%" else 1)
        sense = bound.group(1)
    elif re.search(r"within ([0-9.]+)x", target):
        line, sense = float(re.search(r"within ([0-9.]+)x", target).group(1)), "<="
    elif ">=" in target:
        line, sense = 1.0, ">="
    else:
        raise ValueError(f"no bound in the target {target!r}")
    value = re.search(r"=\s*([0-9.]+)x", measured) or re.search(r"([0-9.]+)x", measured)
    if value:
        return float(value.group(1)), line, sense
    percent = re.search(r"([0-9.]+)%", measured)
    if percent:
        return float(percent.group(1)) / 100, line, sense
    return None, line, sense  # not measured (n/a): left out


def _figure(height):
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "pyramid_txmail"  # the same ids every run
    matplotlib.rcParams["font.size"] = 9
    from matplotlib import pyplot

    return pyplot.subplots(figsize=(10.5, height))


def _legend(axes, patches, line=None):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=colour, label=label) for colour, label in patches]
    if line:
        handles.append(Line2D([], [], color="black", linewidth=2, label=line))
    axes.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16 if line else -0.1),
                ncol=len(handles), fontsize=7, frameon=False)


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, format="svg", metadata={"Date": None})
    import matplotlib.pyplot

    matplotlib.pyplot.close(figure)


def plot_targets(found, path):
    rows = table_under(found, "Targets")
    labels, values, lines, colours = [], [], [], []
    for row in rows:
        value, line, sense = target_ratio(row["target"], row["measured"])
        if value is None:
            continue
        labels.append(textwrap.shorten(row["target"], 95, placeholder="..."))
        values.append(max(value, 0.01))  # a log axis: 0.00x drawn at its left edge
        lines.append(line)
        colours.append(MET if row["met"].strip("* ") == "yes" else MISSED)
    figure, axes = _figure(0.42 * len(values) + 1.6)
    ys = range(len(values))[::-1]
    axes.barh(list(ys), values, color=colours, height=0.6)
    for y, line in zip(ys, lines):
        axes.plot([line, line], [y - 0.4, y + 0.4], color="black", linewidth=2)
    axes.set_xscale("log")
    axes.set_yticks(list(ys), labels, fontsize=7)
    axes.set_xlabel("measured ratio against the anchor (log scale)")
    _legend(axes, [(MET, "met"), (MISSED, "missed")], line="the target's line")
    axes.set_title("Benchmark targets (bench/RESULTS.md)")
    _save(figure, path)


def plot_drain(found, path):
    sinks = [(title, rows) for title, rows in
             (("into smtp-sink", _optional(found, "into smtp-sink")),
              ("into aiosmtpd", _optional(found, "into aiosmtpd"))) if rows]
    if not sinks:
        raise MissingTable("no drain table ('into smtp-sink' / 'into aiosmtpd') in RESULTS.md")
    figure, axes = _figure(0.35 * sum(len(rows) for _, rows in sinks) + 1.6)
    labels, values, colours = [], [], []
    for title, rows in sinks:
        for row in rows:
            name, value = row["configuration"], number(row["msg/s (net)"])
            if value is None:
                continue
            labels.append(f"{name} ({title[5:]})")
            values.append(value)
            colours.append(ANCHOR if "repoze" in name else FLOOR if "smtp-source" in name
                           else NEUTRAL)
    ys = list(range(len(values)))[::-1]
    axes.barh(ys, values, color=colours, height=0.6)
    for y, value in zip(ys, values):
        axes.text(value, y, f" {value:,.0f}", va="center", fontsize=7)
    axes.set_yticks(ys, labels, fontsize=7)
    # Log scale: smtp-source's 4 sessions can be ten times the rest, which a linear
    # axis would squash into slivers; every bar carries its figure.
    axes.set_xscale("log")
    axes.set_xlim(min(values) / 2, max(values) * 2.5)
    axes.set_xlabel("messages per second, net of start-up (log scale)")
    _legend(axes, [(NEUTRAL, "txmail-qp"), (ANCHOR, "repoze.sendmail qp"),
                   (FLOOR, "smtp-source (the floor)")])
    axes.set_title("Draining 5,000 queued messages (bench/RESULTS.md)")
    _save(figure, path)


def _optional(found, prefix):
    try:
        return table_under(found, prefix, exact=True)
    except MissingTable:
        return []


def plot_enqueue(found, path):
    rows = [row for row in table_under(found, "Enqueue: durable commit")
            if number(row["us / message"]) is not None]
    figure, axes = _figure(1.2 + 0.45 * len(rows))
    names = [row["path"] for row in rows]
    values = [number(row["us / message"]) for row in rows]
    colours = [ANCHOR if name == "floor" else FLOOR if "pyramid_mailer" in name
               else NEUTRAL for name in names]
    ys = list(range(len(rows)))[::-1]
    axes.barh(ys, values, color=colours, height=0.6)
    for y, value, row in zip(ys, values, rows):
        axes.text(value, y, f" {value:,.0f} us ({row['vs floor']} the floor)", va="center",
                  fontsize=8)
    axes.set_xlim(0, max(values) * 1.45)
    axes.set_yticks(ys, [name + " (never fsyncs)" if "pyramid_mailer" in name else name
                         for name in names])
    axes.set_xlabel("microseconds per message, one per transaction (median batch)")
    axes.set_title("Durable enqueue against the floor (bench/RESULTS.md)")
    _save(figure, path)


PLOTS = {"targets.svg": plot_targets, "drain.svg": plot_drain, "enqueue.svg": plot_enqueue}


def write_plots(results=RESULTS, out=None):
    """Draw every plot of ``results`` into ``out`` (default: its directory); returns
    the paths written.  A plot whose table is missing is skipped and said so."""
    results = Path(results)
    out = Path(out) if out else results.parent
    found = sections(results.read_text())
    written = []
    for name, plot in PLOTS.items():
        try:
            plot(found, out / name)
        except MissingTable as exc:
            print(f"bench/plots.py: {name} skipped: {exc}", file=sys.stderr)
            continue
        written.append(out / name)
    return written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 or argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip().splitlines()[0] + "\nusage: bench/plots.py [RESULTS.md]")
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    results = Path(argv[0]) if argv else RESULTS
    if not results.is_file():
        print(f"bench/plots.py: {results}: no such file", file=sys.stderr)
        return 1
    for path in write_plots(results):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
