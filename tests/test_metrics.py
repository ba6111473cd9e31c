"""Prometheus metrics (issue 15, item 1): a real daemon scraped over HTTP, a cron pass's
textfile, ``txmail-queue INI metrics`` -- the numbers checked against what a real sink
(tests/faultserver.py) received and what the queue holds, on the spool and the SQL outbox.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .faultserver import fault_server
from .metrics_support import RunningDaemon, parse, total, value, wait_until
from .smtpserver import free_port
from .test_qp import queue as queue_on_spool
from .test_qp import write_ini

QUEUE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "txmail-queue")
SCRIPT = {"rcpt": {"later@example.net": "451 4.3.0 try later",
                   "bad@example.net": "550 5.1.1 no such user",
                   "bad2@example.net": "550 5.1.1 no such user"}}
#: (Message-ID, envelope): three sent whole, one deferred, one refused, and one that
#: one recipient accepts and another refuses (a dead-letter copy; not "sent" whole).
MAILS = [("<ok1@t>", ["ok1@example.org"]), ("<ok2@t>", ["ok2@example.org"]),
         ("<ok3@t>", ["ok3@example.org", "ok4@example.org"]),
         ("<later@t>", ["later@example.net"]), ("<bad@t>", ["bad@example.net"]),
         ("<mixed@t>", ["ok5@example.org", "bad2@example.net"])]


def _data(msgid, to):
    return (f"From: sender@example.org\r\nTo: {to}\r\nSubject: m\r\nMessage-ID: {msgid}\r\n"
            "\r\nbody\r\n").encode()


def _fill(kind, tmp_path, url):
    """Queue MAILS on the spool or the SQL outbox; the ini lines naming the queue."""
    if kind == "spool":
        for msgid, toaddrs in MAILS:
            queue_on_spool(tmp_path, toaddrs, msgid)
        return ""
    from .sql_support import make_queue, put

    q = make_queue(url)
    try:
        for msgid, toaddrs in MAILS:
            put(q, _data(msgid, toaddrs[0]), "sender@example.org", toaddrs)
    finally:
        q.close()
    return f"mail.queue_url = {url}\n"


def _passed(samples):
    """A pass completed: with several processes (mail.processes), the last message is
    counted a moment before its pass ends."""
    return value(samples, "txmail_passes_total") >= 1


def _settled(samples):
    return total(samples, "txmail_messages_total") == len(MAILS) and value(
        samples, "txmail_queue_messages", state="failed") == 2


@pytest.mark.parametrize("kind", ["spool", "sqlite", "postgresql"])
def test_daemon_metrics_match_the_sink_and_the_queue(kind, tmp_path, make_smtp_server,
                                                     request):
    url = None if kind == "spool" else request.getfixturevalue(
        "sqlite_url" if kind == "sqlite" else "pg_url")
    server = fault_server(make_smtp_server, SCRIPT)
    extra = _fill(kind, tmp_path, url)
    port = free_port()
    ini = write_ini(tmp_path, server, spool=kind == "spool", extra=(
        f"{extra}mail.metrics_port = {port}\nmail.retry_initial = 1h\nmail.workers = 2\n"))
    with RunningDaemon(ini, port) as daemon:
        samples = wait_until(lambda: (lambda s: _settled(s) and _passed(s) and s)(
            daemon.scrape()), what="every message settled, its pass done")
        assert daemon.stop() == 0, daemon.stderr()
    relay = f"{server.host}:{server.port}"
    accepted = sum(len(m.rcpt_tos) for m in server.messages)
    assert accepted == 5 and len(server.messages) == 4  # the sink's own count
    # messages: the pass summary's numbers, labelled by relay and reply-code class
    assert value(samples, "txmail_messages_total", outcome="sent", relay=relay,
                 code_class="2xx") == 3
    assert value(samples, "txmail_messages_total", outcome="deferred", relay=relay,
                 code_class="4xx") == 1
    assert value(samples, "txmail_messages_total", outcome="failed", relay=relay,
                 code_class="5xx") == 2
    # recipients: exactly what the sink accepted, refused and deferred
    assert value(samples, "txmail_recipients_total", outcome="sent", relay=relay,
                 code_class="2xx") == accepted
    assert value(samples, "txmail_recipients_total", outcome="deferred", relay=relay,
                 code_class="4xx") == 1
    assert value(samples, "txmail_recipients_total", outcome="failed", relay=relay,
                 code_class="5xx") == 2
    assert value(samples, "txmail_delivery_attempts_total") == len(MAILS)
    # one latency observation per attempt some recipient accepted
    assert value(samples, "txmail_queued_to_accepted_seconds_count") == len(server.messages)
    assert value(samples, "txmail_smtp_sessions_total", relay=relay) >= 1
    assert total(samples, "txmail_smtp_session_failures_total") == 0
    assert value(samples, "txmail_relays_resting") == 0
    assert value(samples, "txmail_passes_total") >= 1
    assert value(samples, "txmail_last_successful_pass_timestamp_seconds") > 0
    # the queue gauges: what the queue holds now
    assert value(samples, "txmail_queue_up") == 1
    for state, count in (("queued", 0), ("in_progress", 0), ("deferred", 1), ("failed", 2)):
        assert value(samples, "txmail_queue_messages", state=state) == count, state
    assert value(samples, "txmail_queue_oldest_age_seconds", state="deferred") > 0
    assert value(samples, "txmail_queue_oldest_age_seconds", state="queued") == 0


def test_a_cron_pass_writes_the_textfile_and_txmail_queue_prints_the_gauges(
        tmp_path, make_smtp_server):
    server = fault_server(make_smtp_server, SCRIPT)
    _fill("spool", tmp_path, None)
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    prom = textdir / "txmail.prom"
    ini = write_ini(tmp_path, server, extra=f"mail.metrics_file = {prom}\n"
                                            "mail.retry_initial = 1h\n")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "txmail-qp"), ini,
                           "--no-app"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # renamed into place, no temporary left; beside it the counters' totals and their lock
    assert sorted(os.listdir(textdir)) == [".txmail.prom.counters.json", ".txmail.prom.lock",
                                           "txmail.prom"]
    samples = parse(prom.read_text())
    assert total(samples, "txmail_messages_total", outcome="sent") == 3
    assert total(samples, "txmail_recipients_total", outcome="sent") == sum(
        len(m.rcpt_tos) for m in server.messages)
    assert value(samples, "txmail_queue_messages", state="deferred") == 1
    assert value(samples, "txmail_queue_messages", state="failed") == 2

    listed = subprocess.run([QUEUE_SCRIPT, ini, "metrics"], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    gauges = parse(listed.stdout)
    assert value(gauges, "txmail_queue_up") == 1
    assert value(gauges, "txmail_queue_messages", state="deferred") == 1
    assert value(gauges, "txmail_queue_messages", state="failed") == 2
    assert value(gauges, "txmail_queue_messages", state="queued") == 0
    # the delivery counters belong to txmail-qp: not printed here (say so, not zeros)
    assert not any(name.startswith(("txmail_messages", "txmail_recipients"))
                   for name, _ in gauges)


WITHOUT_PROMETHEUS = ("import sys; sys.modules['prometheus_client'] = None; "
                      "from pyramid_txmail.scripts.{mod} import main; "
                      "sys.argv[0] = '{prog}'; sys.exit(main())")


@pytest.mark.parametrize("mod,prog,args,key", [
    ("qp", "txmail-qp", ["--no-app"], "mail.metrics_file"),
    ("queue", "txmail-queue", ["metrics"], "txmail-queue INI metrics"),
])
def test_without_prometheus_client_the_error_names_the_extra(tmp_path, mod, prog, args, key):
    queue_on_spool(tmp_path, ["a@example.org"])
    ini = write_ini(tmp_path, extra=f"mail.metrics_file = {tmp_path / 'm.prom'}\n")
    proc = subprocess.run([sys.executable, "-c", WITHOUT_PROMETHEUS.format(mod=mod, prog=prog),
                           ini, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "pyramid_txmail[ops]" in proc.stderr and key in proc.stderr
    assert not (tmp_path / "m.prom").exists()
