"""Health and service management (issue 15, item 2): ``/healthz`` of a real daemon,
systemd's notify protocol on a fake ``NOTIFY_SOCKET``, the shipped unit file.
"""
from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid

import pytest

from pyramid_txmail.processor.health import Health, Progress
from pyramid_txmail.processor.pass_stats import PassStats
from pyramid_txmail.processor.sdnotify import Notifier
from pyramid_txmail.queue.maildir.backend import MaildirQueue
from pyramid_txmail.settings import MailSettings

from .metrics_support import QP, RunningDaemon, wait_until
from .smtpserver import SMTPServer, free_port
from .test_qp import queue as queue_on_spool
from .test_qp import write_ini

UNIT = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "examples",
                    "txmail-qp.service")


def _problems(body):
    return {p["problem"] for p in body["problems"]}


def test_healthz_200_then_503_when_every_relay_fails_then_when_the_spool_is_gone(tmp_path):
    server = SMTPServer()  # stopped by the test itself
    port = free_port()
    ini = write_ini(tmp_path, server, extra=f"mail.metrics_port = {port}\n"
                                            "mail.workers = 1\nmail.retry_initial = 1h\n")
    queue_on_spool(tmp_path, ["a@example.org"], "<first@t>")
    with RunningDaemon(ini, port) as daemon:
        wait_until(lambda: server.messages, what="the first message delivered")
        status, body = daemon.health()
        assert (status, body["status"], body["problems"]) == (200, "ok", []), body
        server.stop()  # the only relay is down: no session can be set up
        for i in range(3):
            queue_on_spool(tmp_path, ["a@example.org"], f"<down{i}@t>")
        status, body = wait_until(lambda: (lambda h: h[0] == 503 and h)(daemon.health()),
                                  what="/healthz to fail")
        assert _problems(body) == {"every relay is resting"}, body
        assert f"{server.host}:{server.port}" in body["problems"][0]["detail"]
        shutil.rmtree(tmp_path / "spool")
        status, body = daemon.health()
        assert status == 503
        assert "queue unreachable" in _problems(body), body
        assert str(tmp_path / "spool") in str(body["problems"])
        assert daemon.scrape()[("txmail_queue_up", frozenset())] == 0
        assert daemon.stop() == 0, daemon.stderr()


def test_stuck_when_work_is_due_and_nothing_progressed(tmp_path):
    """The verdict with a clock of its own: no pass for claim_timeout + the rescan interval."""
    now = [1000.0]
    queue = MaildirQueue.open(str(tmp_path / "spool"), create=True)
    progress = Progress(queue, clock=lambda: now[0])
    health = Health(progress, MailSettings(claim_timeout=600.0))
    assert health.check()[0]
    now[0] += health.stuck_after() + 1
    assert health.check()[0]  # nothing due: an idle queue is not stuck
    queue_on_spool(tmp_path, ["a@example.org"])
    progress.reader.invalidate()  # the queue is read at most every few seconds
    healthy, body = health.check()
    assert not healthy and _problems(body) == {"stuck"}, body
    progress.pass_done(PassStats(), 0)
    assert health.check()[0] and health.progressing()


@pytest.fixture
def notify_socket():
    """A datagram socket standing in for systemd's (a short path: sun_path is 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="txn", dir="/tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = os.path.join(directory, "notify")
    sock.bind(path)
    sock.settimeout(30)
    yield sock, path
    sock.close()
    shutil.rmtree(directory)


def _receive_until(sock, predicate, got):
    while not predicate(got):
        got.extend(sock.recv(4096).decode().split("\n"))  # timeout: socket.timeout
    return got


@pytest.mark.parametrize("abstract", [False, True])
def test_daemon_notifies_systemd(tmp_path, smtp_server, notify_socket, abstract):
    sock, path = notify_socket
    if abstract:  # '@name': Linux's abstract socket namespace
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"txmail-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        sock.settimeout(30)
        path = "@" + name
    ini = write_ini(tmp_path, smtp_server)
    queue_on_spool(tmp_path, ["a@example.org"])
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    got = []
    with RunningDaemon(ini, env=env) as daemon:
        _receive_until(sock, lambda g: "READY=1" in g, got)
        _receive_until(sock, lambda g: any("sent=1" in line for line in g
                                           if line.startswith("STATUS=")), got)
        _receive_until(sock, lambda g: "WATCHDOG=1" in g, got)
        assert daemon.stop() == 0, daemon.stderr()
        _receive_until(sock, lambda g: "STOPPING=1" in g, got)
    assert got.index("READY=1") < got.index("STOPPING=1")
    [status] = [line for line in got if "sent=1" in line][:1]
    assert status.startswith("STATUS=last pass: sent=1 ") and "queued=0" in status
    assert len(smtp_server.messages) == 1
    if abstract:
        sock.close()


def test_the_watchdog_stops_petting_once_progress_stops(notify_socket):
    """Four looks at progress, the last two negative: exactly two WATCHDOG=1 arrive."""
    sock, path = notify_socket
    answers = iter([True, True, False, False])
    done = threading.Event()

    def progressing():
        answer = next(answers, None)
        if answer is None:
            done.set()
            return False
        return answer

    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000"})
    notifier.start_watchdog(progressing)
    assert done.wait(30)
    notifier.stopping()
    notifier.close()
    got = _receive_until(sock, lambda g: "STOPPING=1" in g, [])
    assert got.count("WATCHDOG=1") == 2 and got[-1] == "STOPPING=1"


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier({"WATCHDOG_USEC": "1000"})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("x")  # no socket: a no-op, no error


def test_the_shipped_unit_file_parses(tmp_path):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify" and service["WatchdogSec"]
    for key in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "ReadWritePaths", "User"):
        assert service[key], key
    assert "--daemon" in service["ExecStart"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the keys above are what can be checked without systemd
    text = open(UNIT).read()  # verify needs an existing program and account
    text = text.replace("/srv/app/.venv/bin/txmail-qp", QP).replace("User=app", "User=root")
    text = text.replace("Group=app", "Group=root")
    copy = tmp_path / "txmail-qp.service"
    copy.write_text(text)
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for complaint in ("Unknown key", "Failed to parse", "Invalid", "ignoring"):
        assert complaint not in output, output


def test_the_readme_shows_the_shipped_unit_and_the_operating_section():
    readme = open(os.path.join(os.path.dirname(UNIT), os.pardir, "operating.rst")).read()
    for line in open(UNIT).read().splitlines():
        if line.strip() and not line.startswith("#"):
            assert f"    {line}\n" in readme, line
    for text in ("txmail_queue_messages{state}", "txmail_messages_total", "/healthz",
                 "livenessProbe", "readinessProbe", "textfile", "mail.metrics_port",
                 "mail.metrics_host", "mail.metrics_file", "pyramid_txmail[ops]",
                 "WATCHDOG=1", "READY=1"):
        assert text in readme, text


def test_a_database_that_does_not_answer_is_queue_unreachable():
    """The SQL outbox on a PostgreSQL port where nothing listens: 503, naming the database."""
    from pyramid_txmail.queue.sql import SQLQueue

    port = free_port()  # free: nothing listens there
    queue = SQLQueue(f"postgresql+psycopg://txmail@127.0.0.1:{port}/outbox")
    try:
        healthy, body = Health(Progress(queue), MailSettings()).check()
    finally:
        queue.close()
    assert not healthy and _problems(body) == {"queue unreachable"}, body
    detail = body["problems"][0]["detail"]
    assert f"127.0.0.1:{port}" in detail and "SQL" not in detail, detail


@pytest.mark.parametrize("usec", ["0", "-5", "junk", "", "1e9", " 12 "])
def test_a_watchdog_usec_that_is_not_a_positive_integer_means_no_watchdog(usec):
    """sd_watchdog_enabled(3) ignores WATCHDOG_USEC unless it is a positive integer
    (probe 15 finding 7: 0 made the pet loop spin)."""
    notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": usec})
    assert notifier.watchdog_interval is None


def test_a_tiny_watchdog_usec_is_floored():
    """WATCHDOG_USEC=1 (1 microsecond) would pet a million times a second: floored."""
    notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": "1"})
    assert notifier.watchdog_interval >= Notifier.MIN_WATCHDOG_INTERVAL > 0
    usual = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "120000000"})
    assert usual.watchdog_interval == 60.0
