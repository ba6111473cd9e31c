"""The benchmark harness must not rot: ``bench/run.py --quick`` runs every section.

No figure is judged here (speed is for ``make bench`` to measure, never for a
test to assert); what is checked is that each section ran against the real
sinks and tools and wrote its tables with numbers in them -- into a temporary
file, never over bench/RESULTS.md.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"
NUMBER = r"\d[\d,]*(?:\.\d+)?"

sys.path.insert(0, str(ROOT / "bench"))
import harness  # noqa: E402
import sec_drain  # noqa: E402

#: The quick run takes minutes on a busy 2-core machine (its own subprocess timeout
#: is 600 s): the suite's 120 s would cut the fixture that runs it.
pytestmark = pytest.mark.timeout(900)


def _row(text, first_cell):
    """The cells of the Markdown table row starting with ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in:\n{text}")


def _cell(text, first_cell, header):
    """The cell under ``header`` in the table row starting with ``first_cell``."""
    headers = next(_row(text, h) for h in ("configuration",) if h in text)
    return _row(text, first_cell)[headers.index(header)]


def _section(text, heading):
    """The text under ``## heading...`` up to the next ``## `` heading."""
    start = text.index("\n## " + heading)
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    official = ROOT / "bench" / "RESULTS.md"
    before = official.read_bytes() if official.exists() else None
    out = base / "RESULTS.md"
    done = subprocess.run([sys.executable, str(RUN), "--quick", "--out", str(out),
                           "--workdir", str(base / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    after = official.read_bytes() if official.exists() else None
    return done, out, before, after, base


def test_quick_run_writes_every_section_with_numbers(quick_run):
    done, out, before, after, base = quick_run
    assert done.returncode == 0, done.stderr + done.stdout
    text = out.read_text()
    for heading in ("## Machine", "## Versions", "## Targets", "## Enqueue", "## Drain",
                    "### into smtp-sink", "### into aiosmtpd", "## Cost growth"):
        assert heading in text
    enqueue, drain = _section(text, "Enqueue"), _section(text, "Drain")
    for path in ("txmail", "pyramid_mailer", "floor"):
        cells = _row(enqueue, path)
        assert re.fullmatch(NUMBER, cells[1]) and float(cells[1]) > 0, cells
    for config in (sec_drain.DEFAULT, sec_drain.DAEMON, "txmail-qp, 1 process, 1 worker",
                   "txmail-qp, 1 process, 4 workers (the default before mail.processes)",
                   sec_drain.SPLIT,
                   "repoze.sendmail qp", "smtp-source, 1 session (floor)"):
        for header in ("wall s", "peak RSS MB"):
            cell = _cell(drain, config, header)
            assert re.fullmatch(NUMBER, cell) and float(cell) > 0, (config, header, cell)
        # start-up's CPU is subtracted: with --quick's 20 messages it may round to 0
        cpu = _cell(drain, config, "CPU us / msg (client / sink)")
        assert re.fullmatch(f"{NUMBER} / {NUMBER}", cpu), (config, cpu)
    # the daemon's burst is timed by the sink, without a start-up: its net rate is a number
    assert re.fullmatch(NUMBER, _cell(drain, sec_drain.DAEMON, "msg/s (net)"))
    assert len(_rows(drain, sec_drain.DAEMON)) == 1  # into smtp-sink only
    assert "The daemon, and how far 10x is" in drain
    cells = _row(_section(text, "Cost growth"), "40")  # the largest quick size
    assert cells[1] in ("1", "4") and re.fullmatch(NUMBER, cells[2]), cells
    targets = _section(text, "Targets")
    assert "durable enqueue" in targets and "peak RSS flat" in targets
    assert "each additional message costs the same CPU time" in targets
    assert "the daemon >= 6x repoze qp into smtp-sink" in targets
    assert re.search(r"\| (yes|\*\*no\*\*) \|", targets)
    assert "results written to" in done.stdout
    assert "[met]" in done.stdout or "[MISSED]" in done.stdout


def test_every_missed_target_says_what_limits_it_and_what_was_tried(quick_run):
    """A missed target is never a bare "no": bench/tried.py has an entry for it."""
    done, out, *_ = quick_run
    text = out.read_text()
    missed = [cells[0] for cells in _rows(_section(text, "Targets"))
              if len(cells) == 3 and cells[1] == "**no**"]
    if not missed:
        assert "## What limits each missed target" not in text
        return
    why = _section(text, "What limits each missed target")
    for target in missed:
        assert f"### {target}\n" in why, target
    assert "Nothing recorded yet" not in why


def _rows(text, *first_cells):
    """The cells of every Markdown table row starting with ``first_cells``."""
    found = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if tuple(cells[:len(first_cells)]) == first_cells:
                found.append(cells)
    return found


def test_quick_run_writes_the_sql_section_beside_the_spools(quick_run):
    """The SQL outbox on the run's private PostgreSQL and on SQLite, with its anchors."""
    done, out, before, after, base = quick_run
    assert done.returncode == 0, done.stderr + done.stdout
    sql = _section(out.read_text(), "SQL outbox")
    for heading in ("### Enqueue", "### Drain", "### Claims as the table grows"):
        assert heading in sql
    assert re.search(r"\| PostgreSQL \| \d+\.\d+", sql)  # the server's version
    for database in ("PostgreSQL", "SQLite"):
        for path in ("app", "app + row", "app + enqueue"):
            [cells] = _rows(sql, database, path)
            assert all(re.fullmatch(NUMBER, c) for c in cells[2:4]), cells
    drain = sql[sql.index("### Drain"):sql.index("### Claims")]
    for config in ("spool: txmail-qp, default workers", "spool: repoze.sendmail qp",
                   "PostgreSQL: 1 txmail-qp process, default workers",
                   "PostgreSQL: 3 txmail-qp processes, default workers"):
        cell = _cell(drain, config, "wall s")
        assert re.fullmatch(NUMBER, cell) and float(cell) > 0, (config, cell)
    for config in ("PostgreSQL: 1 txmail-qp process, default workers",
                   "PostgreSQL: 3 txmail-qp processes, default workers"):
        cpu = _cell(drain, config, "CPU us / msg (client / sink / PostgreSQL)")
        assert re.fullmatch(f"{NUMBER} / {NUMBER} / {NUMBER}", cpu), (config, cpu)
    claims = sql[sql.index("### Claims"):]
    sizes = [cells for cells in _rows(claims, "2,000")]  # the largest quick size
    assert sizes and re.fullmatch(NUMBER, sizes[0][2]), sizes
    assert "claim the oldest queued row" in claims and "LockRows" in claims
    targets = _section(out.read_text(), "Targets")
    for text in ("one comparable INSERT (PostgreSQL)", "one comparable INSERT (SQLite)",
                 "PostgreSQL outbox with 3 txmail-qp", "claims/s flat"):
        assert text in targets


def test_quick_run_writes_the_concurrent_section(quick_run):
    """Four apps under waitress and ab -c 8, each with a rate and a CPU figure."""
    done, out, before, after, base = quick_run
    assert done.returncode == 0, done.stderr + done.stdout
    concurrent = _section(out.read_text(), "Concurrent")
    for app in ("the same view sending nothing", "pyramid_mailer send_to_queue (not durable)",
                "pyramid_txmail queued delivery",
                "pyramid_txmail queued delivery, the mail built with Mail"):
        [cells] = _rows(concurrent, app)
        assert re.fullmatch(NUMBER, cells[1]) and float(cells[1]) > 0, cells
    [floor] = [c for c in _rows(concurrent) if c[0].startswith("the durable floor")]
    assert floor[3] == "1.00x", floor
    targets = _section(out.read_text(), "Targets")
    assert "pyramid_mailer's throughput" in targets and "the floor's per request" in targets
    assert targets.count("(the mail built with Mail: ") == 2  # beside, not a verdict of its own
    # the two views' files were compared on disk: same envelope, headers and text
    assert "a file of each holds the same envelope" in concurrent


def test_quick_run_leaves_the_committed_results_and_its_spools_alone(quick_run):
    done, out, before, after, base = quick_run
    assert done.returncode == 0, done.stderr
    assert before == after
    assert list((base / "work").iterdir()) == []  # the run's scratch spools are removed


def test_quick_run_draws_its_plots_beside_its_results(quick_run):
    """bench/plots.py's figures (the docs' benchmarks page) go beside --out, from its tables."""
    done, out, before, after, base = quick_run
    assert done.returncode == 0, done.stderr
    for plot in ("targets.svg", "drain.svg", "enqueue.svg"):
        assert f"plot written to {base / plot}" in done.stdout
        assert "<svg" in (base / plot).read_text()


def test_a_bad_option_is_a_usage_error_naming_it():
    done = subprocess.run([sys.executable, str(RUN), "--sizes", "ten"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--sizes" in done.stderr and "'ten'" in done.stderr
    assert "Traceback" not in done.stderr


def test_peak_rss_is_the_childs_own_not_the_parents():
    """ru_maxrss would report at least the parent's size for every child (see harness)."""
    ballast = bytearray(150 * 1024 * 1024)
    ballast[::4096] = b"\1" * len(ballast[::4096])
    small = harness.run_timed([sys.executable, "-c", "import time; time.sleep(0.2)"])
    big = harness.run_timed([sys.executable, "-c",
                             "import time; b = bytearray(120 << 20); b[::4096] = b'1' * "
                             "len(b[::4096]); time.sleep(0.2)"])
    del ballast
    assert small.returncode == big.returncode == 0
    assert 0 < small.peak_rss_kb < 60 * 1024
    assert big.peak_rss_kb > 120 * 1024
    assert big.cpu > 0
