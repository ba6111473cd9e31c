"""DKIM signatures survive the real Postfix: signed by txmail, relayed, still valid.

A private Postfix (tests/postfix.py) relays to an aiosmtpd sink.  The mail is
queued by the WebTest app of tests/postfix_mail.py (plain, non-ASCII, SMTPUTF8
mailboxes, attachments, and a 1.5 MiB message that ``txmail-qp`` streams from the
spool) and signed by the real ``txmail-qp``; the sendmail path pipes to Postfix's
own ``sendmail``.  What the sink got -- with the Received field Postfix put on
top -- is verified by dkimpy's verifier, DNS answered by a dict.
"""
from __future__ import annotations

import pytest
from pyramid_mailer.message import Message

from .dkim_support import KeyRecords, signature_tags, verify, write_key
from .postfix import postfix_relay, wait_until  # noqa: F401 (the fixture)
from .postfix_mail import BIG, by_message, pairs, queue_messages, run_qp, wait_for_all, \
    write_ini
from .smtpserver import SMTPServer
from .test_sendmail import arrived, make_mailer, postfix, sendmail_settings  # noqa: F401


@pytest.fixture
def key(tmp_path):
    (tmp_path / "keys").mkdir(mode=0o700)
    return write_key(tmp_path / "keys")


def test_signatures_made_by_txmail_qp_verify_after_postfix_relayed_them(
        tmp_path, postfix_relay, key):
    total = 8  # message 0 is the 1.5 MiB one, streamed from the spool
    sink = SMTPServer()
    try:
        relay = postfix_relay(sink.port)
        spool_path = str(tmp_path / "spool")
        queued = queue_messages(spool_path, total)
        assert any(len(data) > BIG for _, _, data in queued.values())
        run_qp(write_ini(tmp_path, spool_path, relay.port,
                         f"mail.dkim_private_key = {key[0]}\nmail.dkim_selector = s1\n"
                         "mail.dkim_domain = example.com\n"))
        got = wait_for_all(sink, relay, queued)
        copies = by_message(sink.messages)
    finally:
        sink.stop()
    assert set(got) == pairs(queued)
    records = KeyRecords().publish("s1", "example.com", key[1])
    for mid in queued:
        for _, _, data in copies[mid]:
            assert data.startswith(b"Received: "), data[:200]  # Postfix's, on top
            ok, why = verify(data, records)
            assert ok, (mid, why)
            assert signature_tags(data)["d"] == "example.com"
    assert len(records.asked) == sum(len(c) for c in copies.values())


def test_signatures_made_for_the_sendmail_binary_verify_after_postfix(postfix, key):
    sink, relay = postfix
    mailer = make_mailer(sendmail_settings(relay, **{
        "mail.dkim_private_key": key[0], "mail.dkim_selector": "s1",
        "mail.dkim_domain": "example.com"}))
    msg = Message(subject="Über sendmail", sender="shop@example.com",
                  recipients=["bob@example.org"],
                  body="Hello\n.\n..two dots\nend  \n\n")
    with mailer.transaction_manager:
        mailer.send_sendmail(msg)
    mailer.send_immediately_sendmail(msg)
    received = arrived(sink, relay, 2)
    records = KeyRecords().publish("s1", "example.com", key[1])
    for got in received:
        assert got.data.startswith(b"Received: ")
        ok, why = verify(got.data, records)
        assert ok, why
        assert b"\r\n..two" in got.data  # (pyramid_mailer made the body quoted-printable)
