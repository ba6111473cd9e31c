"""Switching from pyramid_mailer and back loses nothing: both tools read both queues."""
from __future__ import annotations

import email
import os
import subprocess
import sys

import transaction
import webtest

from .app import main

BIN = os.path.dirname(sys.executable)


def test_pyramid_mailers_qp_delivers_what_request_mailer_queued(tmp_path, smtp_server):
    """A user who rolls back to pyramid_mailer runs its ``qp`` on our spool."""
    spool = tmp_path / "spool"
    app = webtest.TestApp(main({"mail.queue_path": str(spool)}))
    msgid = app.get("/send", {"to": "a@example.com", "bcc": "b@example.com"}).text
    done = subprocess.run([os.path.join(BIN, "qp"), "--hostname", smtp_server.host,
                           "--port", str(smtp_server.port), "--no-tls", str(spool)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [got] = smtp_server.messages
    assert (got.mail_from, got.rcpt_tos) == ("sender@example.com",
                                             ["a@example.com", "b@example.com"])
    msg = email.message_from_bytes(got.data)
    assert msg["Message-ID"] == msgid and msg["X-Actually-To"] is None
    assert os.listdir(spool / "new") == []


def test_txmail_qp_delivers_what_pyramid_mailer_queued(tmp_path, smtp_server):
    """pyramid_mailer's Mailer.send_to_queue, then our txmail-qp on the same directory."""
    from pyramid_mailer.mailer import Mailer
    from pyramid_mailer.message import Message

    spool = tmp_path / "spool"
    mailer = Mailer(queue_path=str(spool))
    mailer.send_to_queue(Message(subject="from pyramid_mailer", sender="pm@example.com",
                                 recipients=["a@example.com"], bcc=["b@example.com"],
                                 body="queued by pyramid_mailer"))
    transaction.commit()
    ini = tmp_path / "app.ini"
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {spool}\n"
                   f"mail.host = {smtp_server.host}\nmail.port = {smtp_server.port}\n")
    done = subprocess.run([os.path.join(BIN, "txmail-qp"), str(ini), "--no-app"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [got] = smtp_server.messages
    assert got.mail_from == "pm@example.com"
    assert sorted(got.rcpt_tos) == ["a@example.com", "b@example.com"]
    msg = email.message_from_bytes(got.data)
    assert msg["Subject"] == "from pyramid_mailer" and msg["X-Actually-From"] is None
    assert b"\r\n" in got.data and b"\n" not in got.data.replace(b"\r\n", b"")
