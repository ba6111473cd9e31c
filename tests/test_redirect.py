"""mail.redirect_to: every message goes to the staging addresses, originals kept in a header."""
from __future__ import annotations

import email
import email.policy
import logging

import pytest
import webtest
from pyramid.exceptions import ConfigurationError

from pyramid_txmail.interfaces import IMailOutbox
from pyramid_txmail.compose.message import Prepared
from pyramid_txmail.compose.redirect import ORIGINAL_TO_HEADER, original_to_header, redirect
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir.spool import Spool
from pyramid_txmail.compose.wire import Stream

from .app import main
from .test_qp import run_qp, write_ini

REDIRECT = "QA Team <qa@example.com>, dev@example.com"


def parsed(data):
    return email.message_from_bytes(data, policy=email.policy.default)


def test_direct_delivery_goes_to_the_redirect_addresses(smtp_server):
    app = webtest.TestApp(main({"mail.delivery": "direct", "mail.host": smtp_server.host,
                                "mail.port": str(smtp_server.port), "mail.timeout": "5",
                                "mail.redirect_to": REDIRECT}))
    msgid = app.get("/send", {"to": "Bob <bob@example.com>", "bcc": "carol@example.com"}).text
    [received] = smtp_server.messages
    assert received.rcpt_tos == ["qa@example.com", "dev@example.com"]
    msg = parsed(received.data)
    assert msg[ORIGINAL_TO_HEADER] == "bob@example.com, carol@example.com"
    assert msg["To"] == "Bob <bob@example.com>"  # headers untouched
    assert msg["Bcc"] is None and msg["Message-ID"] == msgid


def test_a_non_ascii_original_recipient_is_kept_as_utf8(smtp_server):
    app = webtest.TestApp(main({"mail.delivery": "direct", "mail.host": smtp_server.host,
                                "mail.port": str(smtp_server.port), "mail.timeout": "5",
                                "mail.redirect_to": "qa@example.com"}))
    app.get("/send", {"to": "jörg@bücher.example"})
    [received] = smtp_server.messages
    assert received.rcpt_tos == ["qa@example.com"]
    assert "SMTPUTF8" in received.mail_options  # the header block is UTF-8 (RFC 6532)
    assert parsed(received.data)[ORIGINAL_TO_HEADER] == "jörg@bücher.example"


def test_queue_delivery_and_txmail_qp(tmp_path, smtp_server):
    spool_dir = tmp_path / "spool"
    app = webtest.TestApp(main({"mail.queue_path": str(spool_dir),
                                "mail.redirect_to": "qa@example.com"}))
    app.get("/send", {"to": "customer@example.org"})
    app.get("/abort", {"to": "customer@example.org"})
    ini = write_ini(tmp_path, smtp_server, extra="mail.redirect_to = qa@example.com")
    proc = run_qp(ini, "--no-app")
    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.messages
    assert received.rcpt_tos == ["qa@example.com"]
    assert parsed(received.data)[ORIGINAL_TO_HEADER] == "customer@example.org"
    assert b"customer@example.org" in received.data  # the To header
    assert Spool(str(spool_dir)).names("new") == []


@pytest.mark.parametrize("mode", ["memory", "console", "null"])
def test_every_delivery_mode_is_redirected(mode, caplog):
    caplog.set_level(logging.INFO, logger="pyramid_txmail")
    app = webtest.TestApp(main({"mail.delivery": mode, "mail.redirect_to": "qa@example.com"}))
    app.get("/send", {"to": "bob@example.com"})
    if mode == "memory":
        [mail] = app.app.registry.getUtility(IMailOutbox).messages
        assert mail.toaddrs == ("qa@example.com",)
        assert mail[ORIGINAL_TO_HEADER] == "bob@example.com"
    elif mode == "null":
        assert "to qa@example.com (mail.delivery = null)" in caplog.text


def test_a_warning_says_it_is_active(caplog):
    webtest.TestApp(main({"mail.delivery": "memory", "mail.redirect_to": REDIRECT}))
    [record] = [r for r in caplog.records if "redirect_to" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        "mail.redirect_to is active: every message goes to qa@example.com, dev@example.com "
        "instead of its recipients")


def test_no_warning_without_it(caplog):
    webtest.TestApp(main({"mail.delivery": "memory"}))
    assert "redirect" not in caplog.text


@pytest.mark.parametrize("value, expected", [
    ("qa@example.com", ("qa@example.com",)),
    (REDIRECT, ("qa@example.com", "dev@example.com")),
    ("\nqa@example.com\ndev@example.com,\nqa@example.com\n",
     ("qa@example.com", "dev@example.com")),
    ("qa@bücher.example", ("qa@xn--bcher-kva.example",)),
])
def test_setting_values(value, expected):
    assert parse_settings({"mail.redirect_to": value}).redirect_to == expected


def test_unset_or_empty_means_off():
    assert parse_settings({}).redirect_to == ()
    assert parse_settings({"mail.redirect_to": "  "}).redirect_to == ()


@pytest.mark.parametrize("value, expected", [
    ("qa@example.com, Bob", "mail.redirect_to = 'qa@example.com, Bob': invalid address 'Bob': "
                            "An email address must have an @-sign"),
    ("qa@", "mail.redirect_to = 'qa@': invalid address 'qa@'"),
    ("qa@example.com dev@example.com", "mail.redirect_to = 'qa@example.com dev@example.com': "
                                       "invalid address 'qa@example.com dev@example.com': not a "
                                       "list of addresses; separate addresses with commas or "
                                       "put one per line"),
])
def test_bad_addresses_are_startup_errors_naming_the_key(value, expected):
    with pytest.raises(ConfigurationError) as info:
        main({"mail.delivery": "memory", "mail.redirect_to": value})
    assert str(info.value).startswith(expected)


def test_the_header_is_folded_and_injection_safe():
    recipients = [f"user{i}@example.com" for i in range(40)] + ["evil@example.com\r\nBcc: x"]
    header = original_to_header(recipients)
    lines = header.split(b"\n")[:-1]
    assert all(len(line) <= 78 for line in lines)
    assert all(line[:1] == b" " for line in lines[1:])  # continuation lines only
    assert b"\r" not in header
    msg = parsed(header + b"Subject: x\n\nbody\n")
    assert msg[ORIGINAL_TO_HEADER].split(", ")[:2] == ["user0@example.com", "user1@example.com"]
    assert msg["Bcc"] is None and len(msg.keys()) == 2


def test_a_streamed_message_gets_the_header_in_front():
    head = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: big\r\n\r\n"
    stream = Stream(lambda: iter([head, b"body\r\n"]), head=head, size=len(head) + 6)
    result = redirect(Prepared("a@example.com", ("b@example.com",), "<s@x>", stream),
                      ("qa@example.com",))
    data = b"".join(result.data)
    assert data == b"X-Txmail-Original-To: b@example.com\r\n" + head + b"body\r\n"
    assert result.data.size == len(data) and result.data.head.startswith(b"X-Txmail")
    assert b"".join(result.data) == data  # the factory gives it again (e.g. after a reconnect)
    assert result.toaddrs == ("qa@example.com",) and result.message_id == "<s@x>"
