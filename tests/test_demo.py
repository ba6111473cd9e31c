"""The demo application: the form queues exactly one mail, a failing request none,
and ``python -m demo_app.run --check`` shows one mail going all the way through."""
from __future__ import annotations

import email.policy
import html
import os
import smtplib
import socket
import subprocess
import sys
from email.parser import BytesParser

import pytest
import webtest

import demo_app
from demo_app.devsmtp import DevSMTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spool_files(spool, state):
    directory = spool / state
    if not directory.exists():
        return []
    return [p for p in directory.iterdir() if not p.name.startswith(".")]


@pytest.fixture
def dirs(tmp_path):
    return {"spool": tmp_path / "spool", "inbox": tmp_path / "inbox"}


@pytest.fixture
def app(dirs):
    wsgi = demo_app.main({}, **{
        "mail.queue_path": str(dirs["spool"]),
        "mail.host": "127.0.0.1",
        "mail.port": "1",
        "mail.default_sender": "Demo <demo@example.com>",
        "demo.inbox_path": str(dirs["inbox"]),
    })
    return webtest.TestApp(wsgi)


def test_form_page(app):
    page = app.get("/")
    assert page.forms[0].method.lower() == "post"
    assert {"name", "email", "fail"} <= set(page.forms[0].fields)


def test_signup_queues_exactly_one_mail(app, dirs):
    form = app.get("/").forms[0]
    form["name"] = "Ada"
    form["email"] = "ada@example.org"
    response = form.submit()
    assert response.status_int == 303
    thanks = response.follow()
    queued = spool_files(dirs["spool"], "new")
    assert len(queued) == 1
    raw = queued[0].read_bytes()
    assert b"ada@example.org" in raw
    assert b"Subject: Welcome, Ada!" in raw
    message_id = thanks.request.GET["message_id"]
    assert message_id and html.escape(message_id) in thanks.text
    assert message_id.encode() in raw
    assert spool_files(dirs["spool"], "tmp") == []


def test_fail_after_sending_queues_nothing(app, dirs):
    form = app.get("/").forms[0]
    form["name"] = "Bob"
    form["email"] = "bob@example.org"
    form["fail"] = True
    response = form.submit(status=500)
    assert "not</strong> queued" in response.text
    assert spool_files(dirs["spool"], "new") == []
    assert spool_files(dirs["spool"], "tmp") == []
    # The next request still works and queues its own mail only.
    app.post("/", {"name": "Cy", "email": "cy@example.org"}, status=303)
    assert len(spool_files(dirs["spool"], "new")) == 1


def test_invalid_address_is_shown_on_the_form(app, dirs):
    response = app.post("/", {"name": "Eve", "email": "not an address"}, status=400)
    assert "email address" in response.text
    assert spool_files(dirs["spool"], "new") == []


def test_inbox_lists_and_shows_received_mail_escaped(app, dirs):
    port = free_port()
    with DevSMTPServer(dirs["inbox"], port=port):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("demo@example.com", ["x@example.org"],
                            b"From: demo@example.com\r\nTo: x@example.org\r\n"
                            b"Subject: first\r\n\r\nhello\r\n")
            client.sendmail("demo@example.com", ["y@example.org"],
                            b"From: demo@example.com\r\nTo: y@example.org\r\n"
                            b"Subject: <b>second</b>\r\n\r\n<script>x</script>\r\n")
    names = sorted(p.name for p in dirs["inbox"].iterdir())
    assert len(names) == 2 and all(n.endswith(".eml") for n in names)
    stored = BytesParser(policy=email.policy.default).parsebytes(
        (dirs["inbox"] / names[0]).read_bytes())
    assert stored["X-Envelope-From"] == "demo@example.com"
    assert stored["X-Envelope-To"] == "x@example.org"

    inbox = app.get("/inbox")
    assert inbox.text.index("&lt;b&gt;second&lt;/b&gt;</a>") < inbox.text.index(">first</a>")
    assert "<b>second</b>" not in inbox.text
    message = inbox.click(href=names[1])
    assert "&lt;script&gt;x&lt;/script&gt;" in message.text
    assert "<script>" not in message.text
    app.get("/inbox/..%2Fspool", status=404)
    app.get("/inbox/missing.eml", status=404)


def test_run_check_end_to_end(tmp_path):
    var = tmp_path / "var"
    command = [sys.executable, "-m", "demo_app.run", "--check",
               "--http-port", str(free_port()), "--smtp-port", str(free_port()),
               "--var", str(var), "--timeout", "30"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Form: http://127.0.0.1:" in result.stdout
    assert "Mail arrived: Welcome, Newcomer! to newcomer@example.org" in result.stdout
    received = [p for p in (var / "inbox").iterdir() if p.name.endswith(".eml")]
    assert len(received) == 1
    assert b"newcomer@example.org" in received[0].read_bytes()
    assert spool_files(var / "spool", "new") == []
