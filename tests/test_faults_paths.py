"""The fault matrix's other ways in: direct delivery and a real ``txmail-qp`` process.

Direct delivery (``mail.delivery = direct``, ``mail.direct_fallback =
queue``) sends right after the commit; whatever the relay did not take is
queued for a retry or dead-lettered, and the processor finishes the job.
``txmail-qp`` is the console script run as a subprocess, one pass per run,
so the command-line path meets the same faults.  The rules per recipient
are those of tests/test_faults.py.
"""
from __future__ import annotations

import time

import pytest
import webtest

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.queue.maildir.spool import Spool

from .app import main
from .faultserver import fault_server
from .reliability import record
from .fault_tally import Tally, copies_by_pair, queue_messages, recipients
from .test_faults import (CASES, FAILED, FAULTY, GROUP, LATER, MESSAGES, check_deferred,
                          check_outcome, describe, expand, processor_settings, walk)
from .test_processor import Clock
from .test_qp import run_qp, write_ini

pytestmark = pytest.mark.reliability


def cases(*names):
    found = {c.name: c for c in CASES}
    return [pytest.param(found[name], id=name) for name in names]


def tally_and_record(scenario, case, spool, handler, batch, ids, before_heal, attempts):
    tally = Tally(spool, handler, batch, ids)
    dups = check_outcome(case, tally, before_heal, handler)
    assert tally.lost == [] and tally.duplicated == dups and tally.waiting == []
    record(GROUP, scenario, runs=1, messages=tally.total, delivered=tally.delivered_count,
           duplicated=tally.duplicated, lost=len(tally.lost), held=tally.dead_count,
           detail=describe(case, attempts))
    return tally


@pytest.mark.parametrize("case", cases(
    "RCPT 451 to one of three", "RCPT 550 to one of three", "RCPT 550 to one, 451 to another",
    "MAIL 421", "after the final dot 451", "after the final dot 554",
    "drop mid-DATA (before the final dot)",
    "drop after the final dot, message stored (RFC 1047)"))
def test_direct_delivery_falls_back_to_the_queue(case, tmp_path, make_smtp_server, tls_files):
    """Sent after the commit; the rest queued or dead-lettered, then the processor's."""
    spool_path = str(tmp_path / "spool")
    batch = [recipients(i) for i in range(MESSAGES)]
    server = fault_server(make_smtp_server, expand(case.script, batch))
    app = webtest.TestApp(main({
        "mail.delivery": "direct", "mail.direct_fallback": "queue",
        "mail.queue_path": spool_path, "mail.host": server.host,
        "mail.port": str(server.port), "mail.timeout": "5"}))
    ids = [app.get("/send", {"to": ", ".join(rcpts), "subject": case.name}).text
           for rcpts in batch]
    spool = Spool(spool_path)
    settings = processor_settings(server, spool, case, tls_files)
    clock = Clock()
    processor = Processor(spool, None, settings, clock=clock, rand=lambda: 0.5, workers=1)
    walk(processor, clock, settings, FAULTY - 1)  # the direct send was the first attempt
    before_heal = copies_by_pair(server.handler)
    check_deferred(case, spool, batch)
    server.handler.heal()
    walk(processor, clock, settings, 2)
    tally_and_record(f"direct delivery: {case.name}", case, spool, server.handler, batch,
                     ids, before_heal, f"the direct send and {FAULTY - 1} retries under "
                     "the fault, then healed")


def wait_until_due(spool, limit=10.0):
    """Sleep until every deferred message's retry time has come (real clock)."""
    due = [spool.read_meta(n)["next_attempt"] for n in spool.names("deferred")]
    wait = max(due, default=0) - time.time()
    assert wait < limit
    time.sleep(max(wait, 0) + 0.05)


def run_summary(stderr):
    """The run's summary line: with several processes the parent's total (logged after
    each child's own line), with one the only one."""
    return [line for line in stderr.splitlines() if "txmail-qp pass " in line][-1]


@pytest.mark.parametrize("case", cases(
    "RCPT 451 to one of three", "RCPT 550 to one of three", "MAIL 421",
    "drop after the final dot, message stored (RFC 1047)"))
def test_txmail_qp_one_pass_at_a_time(case, tmp_path, make_smtp_server):
    """The console script, a pass under the fault, then a pass after the heal."""
    batch = [recipients(i) for i in range(MESSAGES)]
    server = fault_server(make_smtp_server, expand(case.script, batch))
    # mail.processes' default (the usable cores): the summary is the run's total, and a
    # sibling's fresh deferral is not "skipped" in another's pass (issue 14)
    ini = write_ini(tmp_path, server, extra="mail.retry_initial = 0.2\n")
    spool = Spool(str(tmp_path / "spool"))
    ids, _ = queue_messages(spool, batch, "qp " + case.name)

    first = run_qp(ini, "--no-app")
    assert first.returncode == 0, first.stderr
    later = any(o == LATER for o in case.outcome.values())
    failed = MESSAGES if FAILED in case.outcome.values() else 0
    # a message deferred in this pass is not also "skipped" (not yet due)
    assert (f"deferred={MESSAGES if later else 0} failed={failed} skipped=0"
            in run_summary(first.stderr)), first.stderr
    check_deferred(case, spool, batch)
    before_heal = copies_by_pair(server.handler)
    server.handler.heal()
    wait_until_due(spool)
    second = run_qp(ini, "--no-app")
    assert second.returncode == 0, second.stderr
    assert f"sent={MESSAGES if later else 0} deferred=0 failed=0" in run_summary(
        second.stderr), second.stderr
    assert "Traceback" not in first.stderr + second.stderr
    tally_and_record(f"txmail-qp: {case.name}", case, spool, server.handler, batch, ids,
                     before_heal, "one txmail-qp pass under the fault, one after the heal")
