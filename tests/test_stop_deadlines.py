"""Stop deadlines cover a message in flight (issue 15, outside probe finding 1).

The probe: the shipped unit's ``TimeoutStopSec=90`` and gunicorn's default
``graceful_timeout`` (30 s) are shorter than ``mail.data_timeout`` (600 s);
a SIGKILL after the relay took the message sent it again.  Here: every
deadline we ship or advise covers the default in-flight wait, the daemon
(under systemd) and the in-app thread (under gunicorn) warn about a shorter
one they can read, and a stop claims nothing new on either backend.
"""
from __future__ import annotations

import configparser
import json
import logging
import os
import re
import signal
import stat

import pytest

from pyramid_txmail.processor.stop_deadline import (in_flight_deadline, parse_timespan,
                                                    systemd_stop_timeout, check_systemd)
from pyramid_txmail.settings import MailSettings

from .smtpserver import SMTPServer
from .sql_support import db_url  # noqa: F401 (fixture)
from .test_daemon import GatedHandler, received, signal_taken
from .test_inapp import Site, start_gunicorn, wait_until as inapp_wait
from .test_sql_qp import QUEUE, put, run, start_daemon, write_ini
from .test_sql_qp import log_of as sql_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "docs", "examples", "txmail-qp.service")
README = os.path.join(ROOT, "docs", "operating.rst")  # where README's operating text moved
DEFAULT = in_flight_deadline(MailSettings())


def _readme():
    with open(README) as f:
        return f.read()


def test_the_shipped_unit_stops_no_sooner_than_a_message_in_flight_may_take():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    assert parse_timespan(unit["Service"]["TimeoutStopSec"]) > DEFAULT > 600


def test_the_readme_shows_the_shipped_unit_byte_for_byte():
    readme = _readme()
    head = ".. code-block:: ini\n    :caption: docs/examples/txmail-qp.service\n\n"
    block = readme.split(head, 1)[1]
    shown = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        shown.append(line[4:])
    with open(UNIT) as f:
        assert "\n".join(shown).strip() + "\n" == f.read()


def test_every_stop_deadline_the_docs_advise_covers_the_default_wait():
    from pyramid_txmail.scripts.qp import build_parser

    readme = _readme()
    texts = {"README": readme, "txmail-qp --help": build_parser().format_help()}
    for where, text in texts.items():
        values = re.findall(r"TimeoutStopSec=(\d+[a-z]*)", text)
        assert values, where
        for value in values:
            assert parse_timespan(value) > DEFAULT, (where, value)
    for pattern in (r"terminationGracePeriodSeconds: (\d+)", r"--graceful-timeout (\d+)",
                    r"worker-reload-mercy = (\d+)"):
        found = re.findall(pattern, readme)
        assert found, pattern
        assert all(int(v) > DEFAULT for v in found), (pattern, found)
    assert "if you raised that" not in readme


def _fake_systemctl(tmp_path, answer):
    """A stand-in for systemctl (no systemd here): prints what `show` would."""
    path = tmp_path / "systemctl"
    path.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'asked'}\n"
                    f"echo 'TimeoutStopUSec={answer}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/system.slice/txmail-qp.service\n")
    return {"systemctl": str(path), "cgroup": str(cgroup)}


@pytest.mark.parametrize("answer, seconds, warned", [
    ("1min 30s", 90, True), ("12min", 720, False), ("infinity", None, False)])
def test_under_systemd_a_short_timeoutstopsec_is_warned_about(tmp_path, caplog, answer,
                                                             seconds, warned):
    where = _fake_systemctl(tmp_path, answer)
    env = {"INVOCATION_ID": "0123"}
    assert systemd_stop_timeout(env, **where) == seconds
    assert (tmp_path / "asked").read_text().split() == [
        "show", "--property=TimeoutStopUSec", "txmail-qp.service"]
    with caplog.at_level(logging.WARNING, "pyramid_txmail"):
        assert check_systemd(MailSettings(), env, **where) is warned
    if warned:
        assert "TimeoutStopSec of this unit is 90s" in caplog.text
        assert "mail.data_timeout 600s" in caplog.text and "at least 720s" in caplog.text
    assert systemd_stop_timeout({}, **where) is None  # not a unit: nothing asked


def test_under_gunicorn_a_short_graceful_timeout_is_warned_about(tmp_path):
    """gunicorn with --graceful-timeout 60: each worker's thread says so, in its own words."""
    with SMTPServer() as sink:
        site = Site(tmp_path, sink)
        try:
            start_gunicorn(site)
            site.get("/threads")
            inapp_wait(lambda: site.log_file.exists()
                       and "graceful_timeout is 60s" in site.log_file.read_text(),
                       what="the graceful_timeout warning")
            text = site.log_file.read_text()
            assert "in-app processor thread (mail.processor = thread) in pid" in text
            assert "txmail-qp daemon" not in text
            assert site.terminate() == 0
        finally:
            site.kill()


def test_the_in_app_thread_refuses_metrics_port():
    from pyramid.config import Configurator
    from pyramid.exceptions import ConfigurationError

    settings = {"mail.queue_path": "/nonexistent/spool", "mail.processor": "thread",
                "mail.metrics_port": "9464"}
    with pytest.raises(ConfigurationError, match=r"mail\.metrics_port = 9464.*thread"):
        with Configurator(settings=settings) as config:
            config.include("pyramid_txmail")


def test_a_stop_claims_nothing_new_from_the_sql_outbox(tmp_path, db_url, make_smtp_server):
    """The spool's twin is tests/test_daemon.py's
    test_a_stop_signal_finishes_the_message_in_flight_and_leaves_the_rest."""
    gated = make_smtp_server(handler=GatedHandler())
    ini = write_ini(tmp_path, db_url, gated, "mail.workers = 1\nmail.processes = 1\n")
    assert run(QUEUE, ini, "init-db").returncode == 0
    put(db_url, ["a@example.org"], n=3)
    proc = start_daemon(ini, tmp_path)
    try:
        inapp_wait(lambda: gated.handler.in_data.is_set(), what="a message in flight")
        signal_taken(proc, signal.SIGTERM)
        gated.handler.gate.set()
        assert proc.wait(timeout=120) == 0, sql_log(proc)
    finally:
        gated.handler.gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert gated.handler.arrived == 1 and len(received(gated)) == 1  # the one in flight
    status = run(QUEUE, ini, "status", "--json")
    assert status.returncode == 0, status.stderr
    states = json.loads(status.stdout)["states"]
    assert states["new"]["count"] == 2, states  # never claimed: nothing recorded either
    assert states["cur"]["count"] == 0 and states["deferred"]["count"] == 0, states
