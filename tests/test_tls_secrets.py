"""Reliability suite, TLS: the SMTP password never appears anywhere.

Not in log records at any level, not in smtplib's debug trace (``mail.debug =
2``, which prints every command -- AUTH PLAIN and LOGIN carry the password in
base64), not in the reason recorded after a 535 (even from a server that
echoes the credentials back), not in ``txmail-queue show`` / ``status`` /
``list``, not in the output of ``txmail-qp -v`` and not in the process list
(``/proc/PID/cmdline`` of a running ``txmail-qp`` and its children).  Each
place is searched for the password and its PLAIN and LOGIN encodings.
"""
from __future__ import annotations

import base64
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from pyramid_txmail.queue.maildir.spool import Spool

from .badcerts import make_certs, server_context
from .reliability import record, runs
from .smtpserver_extra import extra_server
from .spool_tally import tally
from .test_tls import commit_messages, drain, mail_settings

pytestmark = pytest.mark.reliability

BIN = os.path.dirname(sys.executable)
USER, PASSWORD = "mailer", "Tr0ub4dor-&-3-Secret"


def encodings(user=USER, password=PASSWORD):
    """The password as it may show up: plain, LOGIN's base64, PLAIN's base64."""
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    return [password, b64(password), b64(f"\0{user}\0{password}"),
            b64(f"{user}\0{user}\0{password}")]


def assert_no_secret(where, text):
    for secret in encodings():
        assert secret not in text, f"the password ({secret!r}) appears in {where}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("secretcerts"))


def auth_server(make_smtp_server, certs, mechanisms=("PLAIN", "LOGIN"), echo=False):
    """STARTTLS + AUTH; ``echo``: a hostile server that refuses with the credentials
    (plain and as the client's base64) in its 535 reply."""
    server = extra_server(make_smtp_server, tls_context=server_context(certs["trusted"]),
                          auth=(USER, PASSWORD))
    kwargs = server.controller.SMTP_kwargs  # read for each new connection
    kwargs["auth_exclude_mechanism"] = [m for m in ("PLAIN", "LOGIN") if m not in mechanisms]
    if echo:
        def refuse(smtp, session, envelope, mechanism, data):
            assert isinstance(data, LoginPassword)
            login, password = data.login.decode(), data.password.decode()
            return AuthResult(success=False, handled=False, message=(
                f"535 5.7.8 {mechanism} {login}:{password} "
                + " ".join(encodings(login, password)[1:]) + " rejected"))

        kwargs["authenticator"] = refuse
    return server


CASES = {  # name: (mechanisms offered, echoing 535, expected outcome)
    "AUTH PLAIN accepted": (("PLAIN",), False, "delivered"),
    "AUTH LOGIN accepted": (("LOGIN",), False, "delivered"),
    "AUTH PLAIN refused with 535 echoing the credentials": (("PLAIN",), True, "deferred"),
    "AUTH LOGIN refused with 535 echoing the credentials": (("LOGIN",), True, "deferred"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_password_never_in_logs_debug_trace_or_reasons(case, certs, tmp_path, make_smtp_server,
                                                       caplog, capsys):
    mechanisms, echo, outcome = CASES[case]
    count = runs(1, 5)
    server = auth_server(make_smtp_server, certs, mechanisms, echo)
    found_all = []
    with caplog.at_level(logging.DEBUG):
        for path in ("queue", "direct"):
            spool_path = tmp_path / f"spool-{path}"
            settings = mail_settings(server, spool_path, "STARTTLS", certs["trusted"]["cafile"],
                                     delivery=path, **{"mail.username": USER,
                                                       "mail.password": PASSWORD,
                                                       "mail.debug": "2"})
            ids = commit_messages(settings, count, case)
            if path == "queue":
                drain(settings)
            found = tally(Spool(str(spool_path)), [server], ids)
            found_all.append(found)
            assert found.lost == 0 and found.duplicated == 0
            if outcome == "delivered":
                assert found.delivered == count
            else:
                assert found.held == count and found.delivered == 0
                for message_id in ids:
                    reasons = " ".join(found.reasons[message_id])
                    assert f"authentication as {USER!r} failed" in reasons
                    assert "535" in reasons
                    assert_no_secret("the recorded reason", reasons)
            meta_texts = [open(os.path.join(spool_path, "meta", n)).read()
                          for n in os.listdir(spool_path / "meta")]
            assert_no_secret("the spool's state files", "".join(meta_texts))
    trace = capsys.readouterr().err
    assert "send:" in trace and "AUTH" in trace  # smtplib's debug trace did run
    assert_no_secret("smtplib's debug trace (mail.debug = 2)", trace)
    ours = [r for r in caplog.records if r.name != "mail.log"]  # not the test server's log
    assert_no_secret("the log records", "\n".join(caplog.handler.format(r) for r in ours))
    assert_no_secret("the log records' arguments", repr([r.args for r in ours]))
    assert all(m.login == USER and m.tls for m in server.messages)
    counts = {k: sum(f.counts()[k] for f in found_all) for k in found_all[0].counts()}
    record("tls", f"password hidden: {case}", runs=2,
           detail="queue and direct; logs at DEBUG, mail.debug = 2 trace, reasons, state files",
           **counts)


def _cmdlines(pid):
    """``/proc`` command lines of ``pid`` and all its descendants."""
    lines, todo = {}, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/cmdline", "rb") as f:
                lines[current] = f.read().replace(b"\0", b" ").decode(errors="replace")
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(p) for p in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return lines


def test_password_never_in_txmail_qp_output_queue_cli_or_process_list(certs, tmp_path,
                                                                      make_smtp_server):
    good = auth_server(make_smtp_server, certs)
    echoing = auth_server(make_smtp_server, certs, echo=True)
    outputs = {}

    def ini(server, name):
        settings = mail_settings(server, tmp_path / "spool", "STARTTLS",
                                 certs["trusted"]["cafile"],
                                 **{"mail.username": USER, "mail.password": PASSWORD,
                                    "mail.debug": "2"})
        path = tmp_path / name
        path.write_text("[app:main]\nuse = egg:pyramid_txmail\n"
                        + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        return str(path), settings

    # a daemon delivering through the accepting server: its process list, its output
    good_ini, good_settings = ini(good, "good.ini")
    ids = commit_messages(good_settings, 2, "daemon")
    daemon = subprocess.Popen([os.path.join(BIN, "txmail-qp"), good_ini, "-v", "--daemon", "--no-app",
                               "--watch", "poll"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(good.messages) < 2 and time.monotonic() < deadline:
            cmdlines = _cmdlines(daemon.pid)
            assert cmdlines, "txmail-qp is not running"
            for pid, line in cmdlines.items():
                assert_no_secret(f"/proc/{pid}/cmdline ({line!r})", line)
            time.sleep(0.05)
        for pid, line in _cmdlines(daemon.pid).items():
            assert_no_secret(f"/proc/{pid}/cmdline ({line!r})", line)
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert len(good.messages) == 2
    assert "send:" in err and "AUTH" in err  # the -v / mail.debug output is there
    outputs["txmail-qp -v --daemon, mail.debug = 2"] = out + err

    # one pass against a server that refuses with the credentials in its 535
    bad_ini, bad_settings = ini(echoing, "bad.ini")
    bad_ids = commit_messages(bad_settings, 1, "refused")
    proc = subprocess.run([os.path.join(BIN, "txmail-qp"), bad_ini, "-v", "--no-app"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "535" in proc.stderr
    outputs["txmail-qp -v after a 535"] = proc.stdout + proc.stderr
    queue_cli = os.path.join(BIN, "txmail-queue")
    for argv in (["status"], ["status", "--json"], ["list"], ["list", "--json"],
                 ["show", bad_ids[0]], ["show", bad_ids[0], "--json", "--body"]):
        proc = subprocess.run([queue_cli, bad_ini, *argv], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, (argv, proc.stderr)
        outputs["txmail-queue " + " ".join(argv)] = proc.stdout + proc.stderr
    assert "535" in outputs[f"txmail-queue show {bad_ids[0]}"]
    for where, text in outputs.items():
        assert_no_secret(where, text)
    found = tally(Spool(str(tmp_path / "spool")), [good, echoing], ids + bad_ids)
    assert found.lost == 0 and found.duplicated == 0 and found.delivered == 2
    record("tls", "password hidden: txmail-qp -v output, txmail-queue output, process list",
           runs=1, detail="daemon with mail.debug = 2; a 535 echoing the credentials",
           **found.counts())
