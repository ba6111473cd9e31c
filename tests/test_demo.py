"""The demo application with its real SQLite database and SQL outbox (WebTest), and
``python -m demo_app.run --check`` end to end, on SQLite and on a private PostgreSQL.

A committed sign-up stores one user and queues one welcome mail (text + HTML +
inline logo) as a row of the outbox in the same database; a duplicate sign-up
fails at the flush after ``send`` and leaves neither a row nor a mail behind.
"""
from __future__ import annotations

import email.policy
import json
import os
import re
import smtplib
import socket
import sqlite3
import subprocess
import sys
from email.parser import BytesParser

import pytest
import webtest

import demo_app
from demo_app.devsmtp import DevSMTPServer

from .demo_process import start_demo
from .smtpserver import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGO = os.path.join(ROOT, "demo_app", "static", "logo.png")
QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
parser = BytesParser(policy=email.policy.default)


def outbox_rows(database, state="queued"):
    """``(sender, recipients, message bytes)`` of the outbox rows in ``state``, oldest first
    (the demo's messages fit in the row: no chunks)."""
    if not os.path.exists(database):
        return []
    with sqlite3.connect(database) as db:
        found = db.execute("SELECT sender, recipients, body, chunks FROM txmail_outbox "
                           "WHERE state = ? ORDER BY id", (state,)).fetchall()
    assert all(chunks == 0 for *_, chunks in found)
    return [(sender, json.loads(recipients), body) for sender, recipients, body, _ in found]


def users(database):
    with sqlite3.connect(database) as db:
        return db.execute("SELECT name, email, welcome_message_id FROM users "
                          "ORDER BY id").fetchall()


@pytest.fixture
def dirs(tmp_path):
    return {"inbox": tmp_path / "inbox", "database": tmp_path / "db" / "demo.sqlite"}


def demo_settings(dirs, smtp_port=1):
    return {
        "sqlalchemy.url": f"sqlite:///{dirs['database']}",
        "mail.queue_url": f"sqlite:///{dirs['database']}",
        "mail.host": "127.0.0.1",
        "mail.port": str(smtp_port),
        "mail.default_sender": "Demo <demo@example.com>",
        "demo.inbox_path": str(dirs["inbox"]),
    }


@pytest.fixture
def app(dirs):
    return webtest.TestApp(demo_app.main({}, **demo_settings(dirs)))


def sign_up(app, name, addr, **kwargs):
    form = app.get("/").forms["signup"]
    form["name"] = name
    form["email"] = addr
    return form.submit(**kwargs)


def queued_message(row):
    """``((envelope sender, recipients), parsed message)`` of an outbox row."""
    sender, recipients, data = row
    return (sender, ", ".join(recipients)), parser.parsebytes(data)


def test_form_page(app, dirs):
    page = app.get("/")
    form = page.forms["signup"]
    assert form.method.lower() == "post"
    assert {"name", "email"} <= set(form.fields)
    assert "0 people have signed up" in page.text
    assert dirs["database"].exists()  # the tables were created at startup


def test_signup_commits_the_user_and_queues_one_welcome_mail(app, dirs):
    response = sign_up(app, "Ada Lovelace", "ada@example.org")
    assert response.status_int == 303
    thanks = response.follow()
    message_id = thanks.request.GET["message_id"]
    assert thanks.html.find(id="message-id").text == message_id

    assert users(dirs["database"]) == [("Ada Lovelace", "ada@example.org", message_id)]
    queued = outbox_rows(dirs["database"])
    assert len(queued) == 1
    (env_from, env_to), msg = queued_message(queued[0])
    assert (env_from, env_to) == ("demo@example.com", "ada@example.org")
    assert msg["Message-ID"] == message_id
    assert msg["Subject"] == "Welcome, Ada Lovelace!"
    assert msg["To"].addresses[0].display_name == "Ada Lovelace"

    # text, and HTML with the logo inline
    assert msg.get_content_type() == "multipart/alternative"
    text_part, related = msg.get_payload()
    assert text_part.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, logo = related.get_payload()
    assert html_part.get_content_type() == "text/html"
    assert logo.get_content_type() == "image/png"
    assert logo.get_content_disposition() == "inline"
    with open(LOGO, "rb") as fh:
        assert logo.get_content() == fh.read()
    cid = logo["Content-ID"].strip("<>")
    html_text = html_part.get_content()
    assert f'src="cid:{cid}"' in html_text

    # both bodies were rendered through Pyramid: they hold the app's route URLs
    text = text_part.get_content()
    assert "Hello Ada Lovelace," in text and "ada@example.org" in text
    assert "http://localhost/inbox" in text
    assert 'href="http://localhost/"' in html_text


def test_duplicate_signup_aborts_and_queues_nothing(app, dirs):
    sign_up(app, "Ada", "ada@example.org", status=303)
    first = outbox_rows(dirs["database"])
    assert len(first) == 1

    # Same address in other case: the UNIQUE (NOCASE) column refuses it at the flush,
    # after the view already called request.mailer.send.
    page = sign_up(app, "Ada again", "ADA@example.org", status=409)
    assert "Already registered" in page.html.title.text
    assert "no mail was sent" in page.text
    assert outbox_rows(dirs["database"]) == first  # no row for the refused sign-up
    assert users(dirs["database"])[0][:2] == ("Ada", "ada@example.org")
    assert len(users(dirs["database"])) == 1

    # The aborted request left nothing behind: the next sign-up commits normally.
    sign_up(app, "Bob", "bob@example.org", status=303)
    assert [u[1] for u in users(dirs["database"])] == ["ada@example.org", "bob@example.org"]
    assert len(outbox_rows(dirs["database"])) == 2
    assert "2 people have signed up" in app.get("/").text


@pytest.mark.parametrize("name, addr, field", [
    ("", "eve@example.org", "name"),
    ("Eve", "not an address", "email"),
    ("Eve", "eve@", "email"),
])
def test_invalid_input_shows_the_form_again_and_queues_nothing(app, dirs, name, addr, field):
    page = sign_up(app, name, addr, status=400)
    errors = page.html.find(id="errors")
    assert errors.find("li", attrs={"data-field": field}) is not None
    assert page.forms["signup"]["email"].value == addr  # kept for correcting
    assert outbox_rows(dirs["database"]) == []
    assert users(dirs["database"]) == []


def test_names_are_escaped_in_pages_and_html_mail_but_not_in_text(app, dirs):
    name = '<b>Ada</b> & "Co"'
    page = sign_up(app, name, "<script>@example.org", status=400)
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text

    sign_up(app, name, "ada@example.org", status=303)
    _, msg = queued_message(outbox_rows(dirs["database"])[0])
    text_part, related = msg.get_payload()
    assert f"Hello {name}," in text_part.get_content()
    html_text = related.get_payload()[0].get_content()
    assert "<b>Ada</b>" not in html_text
    assert "Welcome, &lt;b&gt;Ada&lt;/b&gt; &amp; &#34;Co&#34;!" in html_text


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
    stored = parser.parsebytes((dirs["inbox"] / names[0]).read_bytes())
    assert stored["X-Envelope-From"] == "demo@example.com"
    assert stored["X-Envelope-To"] == "x@example.org"

    inbox = app.get("/inbox")
    assert inbox.text.index("&lt;b&gt;second&lt;/b&gt;</a>") < inbox.text.index(">first</a>")
    assert "<b>second</b>" not in inbox.text
    message = inbox.click(href=names[1])
    assert "&lt;script&gt;x&lt;/script&gt;" in message.text
    assert "<script>" not in message.text
    assert message.html.find(id="html-body") is None  # a text-only message
    app.get(f"/inbox/{names[1]}/html", status=404)
    app.get("/inbox/..%2Fspool", status=404)
    app.get("/inbox/missing.eml", status=404)


def test_delivered_welcome_mail_shows_its_html_and_inline_logo(app, dirs, tmp_path):
    """Sign up, let the real txmail-qp deliver into the dev SMTP server, read it in /inbox."""
    sign_up(app, "Ada", "ada@example.org", status=303)
    port = free_port()
    ini = tmp_path / "qp.ini"
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\n"
                   f"mail.queue_url = sqlite:///{dirs['database']}\nmail.host = 127.0.0.1\n"
                   f"mail.port = {port}\n")
    with DevSMTPServer(dirs["inbox"], port=port):
        result = subprocess.run([QP, str(ini), "--no-app"], capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "sent=1" in result.stderr
    (name,) = [p.name for p in dirs["inbox"].iterdir()]

    entry = app.get("/inbox").click("Welcome, Ada!")
    assert "Hello Ada," in entry.html.find(id="text-body").text
    parts = entry.html.find(id="parts").text
    assert "text/plain" in parts and "text/html" in parts and "image/png" in parts
    frame = entry.html.find(id="html-body")
    assert frame.has_attr("sandbox")

    html_page = app.get(frame["src"])
    policy = html_page.headers["Content-Security-Policy"]
    assert policy.startswith("sandbox;") and "script" not in policy
    images = re.findall(r'<img src="([^"]+)"', html_page.text)
    assert len(images) == 1 and images[0].startswith(f"http://localhost/inbox/{name}/cid/")
    logo = app.get(images[0])
    assert logo.content_type == "image/png"
    with open(LOGO, "rb") as fh:
        assert logo.body == fh.read()
    app.get(f"/inbox/{name}/cid/nothing@here", status=404)


def run_check(var, *extra):
    """``python -m demo_app.run --check`` on free ports: its stdout and the delivered mail's
    address, after checking that the mail went through the queue and arrived once."""
    command = [sys.executable, "-m", "demo_app.run", "--check",
               "--http-port", str(free_port()), "--smtp-port", str(free_port()),
               "--var", str(var), "--timeout", "30", *extra]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            timeout=90, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    started = re.search(r"demo: queue processor: (.*) \(the SQL outbox in ",
                        result.stdout).group(1)
    assert started.endswith(" --daemon"), started
    assert re.search(r"Form: http://127\.0\.0\.1:\d+/ +Inbox: http://127\.0\.0\.1:\d+/inbox",
                     result.stdout)
    arrived = re.search(r"Mail arrived: Welcome, Newcomer! to (newcomer-\S+@example\.org)",
                        result.stdout)
    assert arrived, result.stdout
    received = [p for p in (var / "inbox").iterdir() if p.name.endswith(".eml")]
    assert len(received) == 1
    msg = parser.parsebytes(received[0].read_bytes())
    assert msg["X-Envelope-To"] == arrived.group(1)
    assert msg.get_body(preferencelist=("html",)) is not None
    return result.stdout, arrived.group(1)


def test_run_check_end_to_end(tmp_path):
    var = tmp_path / "var"
    _, address = run_check(var)
    assert [u[1] for u in users(var / "demo.sqlite")] == [address]
    # The welcome mail went through the outbox in the same SQLite file, and was delivered.
    assert outbox_rows(var / "demo.sqlite") == []
    assert [r[1] for r in outbox_rows(var / "demo.sqlite", "delivered")] == [[address]]


def test_run_check_on_postgresql_is_one_option(tmp_path, pg_url):
    """The one line of development.ini: ``--db URL`` puts the users and the outbox on
    PostgreSQL (the daemon wakes on LISTEN/NOTIFY there)."""
    import sqlalchemy as sa

    stdout, address = run_check(tmp_path / "var", "--db", pg_url)
    assert f"the SQL outbox in {pg_url}" in stdout
    assert not (tmp_path / "var" / "demo.sqlite").exists()
    engine = sa.create_engine(pg_url)
    with engine.connect() as connection:
        emails = connection.execute(sa.text("SELECT email FROM users")).scalars().all()
        states = connection.execute(sa.text("SELECT state, recipients FROM txmail_outbox")).all()
    engine.dispose()
    assert emails == [address]
    assert [(state, list(r)) for state, r in states] == [("delivered", [address])]


def port_is_free(port):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_ctrl_c_stops_the_whole_demo_cleanly(tmp_path):
    demo = start_demo(tmp_path / "var")
    assert not port_is_free(demo.http_port) and not port_is_free(demo.smtp_port)
    code, output = demo.interrupt()
    assert code == 0, output
    assert "demo: stopped." in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    # pserve (a child in its own session) and the SMTP server are gone with it.
    assert port_is_free(demo.http_port) and port_is_free(demo.smtp_port)
