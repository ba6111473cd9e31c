"""mail.metrics_file from cron: counters keep counting across passes (issue 15, outside
probe finding 2: each pass wrote its own counts -- failed 1, 1, 1 -- and an idle pass
dropped the series, so ``increase(txmail_messages_total{outcome="failed"}[1h])`` never
fired; a pass that raised wrote no file, so txmail_pass_errors_total stayed 0)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyramid_txmail.processor.operate import Operations
from pyramid_txmail.queue.maildir.backend import MaildirQueue
from pyramid_txmail.queue.maildir.spool import Spool
from pyramid_txmail.settings import MailSettings

from .faultserver import fault_server
from .metrics_support import parse, total, value
from .test_qp import queue as queue_on_spool
from .test_qp import write_ini

QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")


def _pass(ini):
    done = subprocess.run([QP, ini, "--no-app"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("processes", [1, 2])
def test_cron_passes_add_up_and_series_never_vanish(tmp_path, make_smtp_server, processes):
    """With several processes (the default where there are cores) the parent writes the
    file: its counters add up across cron runs as one process's do; each child's pass
    is a pass."""
    server = fault_server(make_smtp_server, {"rcpt": {"bad@example.net": "550 5.1.1 no"}})
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    prom = textdir / "txmail.prom"
    ini = write_ini(tmp_path, server,
                    extra=f"mail.metrics_file = {prom}\nmail.processes = {processes}\n")
    seen = []
    for n in range(3):
        queue_on_spool(tmp_path, ["bad@example.net"], f"<bad{n}@t>")
        queue_on_spool(tmp_path, ["ok@example.org"], f"<ok{n}@t>")
        _pass(ini)
        samples = parse(prom.read_text())
        seen.append((total(samples, "txmail_messages_total", outcome="failed"),
                     total(samples, "txmail_messages_total", outcome="sent"),
                     value(samples, "txmail_passes_total"),
                     value(samples, "txmail_delivery_attempts_total")))
    p = processes
    assert seen == [(1, 1, p, 2), (2, 2, 2 * p, 4), (3, 3, 3 * p, 6)]
    _pass(ini)  # idle: nothing queued
    samples = parse(prom.read_text())
    assert total(samples, "txmail_messages_total", outcome="failed") == 3  # still there
    assert total(samples, "txmail_messages_total", outcome="sent") == 3
    assert value(samples, "txmail_passes_total") == 4 * processes
    assert value(samples, "txmail_queued_to_accepted_seconds_count") == 3
    assert value(samples, "txmail_queue_messages", state="failed") == 3  # a gauge: as is
    # node_exporter reads *.prom only: the state beside it is a dotfile
    assert [n for n in os.listdir(textdir) if not n.startswith(".")] == ["txmail.prom"]


def test_a_pass_that_raises_still_writes_the_file_and_counts_the_error(tmp_path):
    prom = tmp_path / "txmail.prom"
    settings = MailSettings(metrics_file=str(prom))
    for expected in (1, 2):  # two processes, one after the other
        queue = MaildirQueue(Spool(str(tmp_path / "spool")))
        ops = Operations(queue, settings, daemon=False)
        ops.metrics.pass_failed()
        ops.progress.pass_failed()  # what MeteredProcessor.run_once does when a pass raises
        samples = parse(prom.read_text())
        assert value(samples, "txmail_pass_errors_total") == expected
