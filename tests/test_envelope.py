"""Issue 11 finding 1: nothing in a message can change its envelope, on any path.

The envelope is what the application passed to ``send`` (or what its
headers say when it passed none).  A forwarded message's own
``X-Actually-From:`` / ``X-Actually-To:`` lines, and addresses that look
like RFC 2047 encoded words, reach the relay as they are -- through the
queue (spool file, processor) and through direct delivery alike.
"""
from __future__ import annotations

import email
import email.policy
from email.mime.text import MIMEText

import pytest

from pyramid_txmail import InvalidAddress

from .envelope_support import Sender, session_envelopes
from .recording_server import recording_server

INBOUND = (b"From: Mallory <mallory@evil.example>\n"
           b"To: support@example.com\n"
           b"X-Actually-From: bounces@evil.example\n"
           b"X-Actually-To: a1@evil.example,a2@evil.example\n"
           b"x-actually-to: a3@evil.example\n"
           b"Subject: please help\n\n"
           b"body\n")
LOOKALIKE_FROM = "=?utf-8?q?a?=@example.com"
LOOKALIKE_TO = "=?utf-8?q?attacker=40evil.example=2C?=@victim-corp.example"


@pytest.fixture(scope="module")
def server():
    server = recording_server()
    yield server
    server.stop()


@pytest.fixture(params=["queue", "direct"])
def sender(request, server, tmp_path):
    server.handler.reset()
    return Sender(request.param, server, tmp_path / "spool")


def _pyramid_mailer_message(sender, recipients, extra_headers=None):
    from pyramid_mailer.message import Message

    return Message(subject="hi", sender=sender, recipients=recipients, body="hello",
                   extra_headers=extra_headers or {})


def _received(server):
    [got] = server.messages
    return got, email.message_from_bytes(got.data)


@pytest.mark.parametrize("kind", ["email-message", "legacy-message"])
def test_a_forwarded_message_cannot_choose_its_recipients(sender, server, kind):
    """(a): send(app, [support], inbound) goes from app to support only."""
    policy = email.policy.default if kind == "email-message" else email.policy.compat32
    inbound = email.message_from_bytes(INBOUND, policy=policy)
    sender.send("app@example.com", ["support@example.com"], inbound)
    assert session_envelopes(server.handler) == [("app@example.com",
                                                   ["support@example.com"])]
    got, msg = _received(server)
    assert msg["X-Actually-To"] is None and msg["X-Actually-From"] is None
    assert msg["Subject"] == "please help"


def test_a_pyramid_mailer_messages_extra_headers_cannot_choose_its_recipients(sender,
                                                                             server):
    message = _pyramid_mailer_message("app@example.com", ["support@example.com"], {
        "X-Actually-From": "bounces@evil.example",
        "X-Actually-To": "a1@evil.example,a2@evil.example"})
    sender.send(message)
    assert session_envelopes(server.handler) == [("app@example.com",
                                                   ["support@example.com"])]
    assert _received(server)[1]["X-Actually-To"] is None


@pytest.mark.parametrize("path", ["legacy-mimetext", "three-arguments", "pyramid-mailer"])
def test_encoded_word_lookalike_addresses_are_sent_as_they_are(sender, server, path):
    """(b): an address is never RFC 2047-decoded, neither in the spool nor in the relay."""
    if path == "legacy-mimetext":
        message = MIMEText("hello")
        message["From"], message["To"] = LOOKALIKE_FROM, LOOKALIKE_TO
        sender.send(message)
    elif path == "three-arguments":
        sender.send(LOOKALIKE_FROM, [LOOKALIKE_TO], MIMEText("hello"))
    else:
        sender.send(_pyramid_mailer_message(LOOKALIKE_FROM, [LOOKALIKE_TO]))
    # (aiosmtpd's own parsed envelope decodes encoded words too: the session is the truth)
    assert session_envelopes(server.handler) == [(LOOKALIKE_FROM, [LOOKALIKE_TO])]
    assert len(server.messages) == 1


QUOTED = ['"x,attacker@evil.example,y"@victim.example', '"a b"@example.com',
          '"a\\"b"@example.com', '"<evil@x.example>"@victim.example']


def test_quoted_local_parts_with_commas_quotes_and_brackets_arrive_whole(sender, server):
    sender.send('"s,1"@example.com', QUOTED, MIMEText("hello"))
    assert session_envelopes(server.handler) == [('"s,1"@example.com', QUOTED)]


def test_utf8_and_idn_addresses_arrive_whole(sender, server):
    toaddrs = ["jörg@bücher.example", "a@xn--bcher-kva.example", "ü=?x?=@example.com"]
    sender.send("zoë@example.com", toaddrs, MIMEText("hello"))
    assert session_envelopes(server.handler) == [("zoë@example.com", toaddrs)]


def test_an_encoded_word_inside_an_address_header_is_refused(sender):
    """The email package decodes ``=?utf-8?q?ceo?=@example.com`` in a To header
    to ceo@example.com: the envelope taken from it would not be what was written."""
    from email.message import EmailMessage

    message = EmailMessage()
    message["To"] = "=?utf-8?q?ceo?=@example.com"
    message.set_content("hello")
    with pytest.raises(InvalidAddress, match="encoded word"):
        sender.send(message)
    message = EmailMessage()
    message["From"] = "=?utf-8?q?J=C3=B6rg?= <jorg@example.com>"  # a display name: fine
    message["To"] = "bob@example.com"
    sender.send(message)


def test_a_parsed_inbound_message_with_raw_utf8_headers_can_be_forwarded(sender, server):
    """Found by the envelope property: ``X-Forwarded-For: ü`` as raw UTF-8 in a parsed
    message raised UnicodeEncodeError (a surrogate) from send()."""
    inbound = email.message_from_bytes(INBOUND.replace(b"Subject: please help",
                                                       "Subject: bitte ü\nX-Forwarded-For: ü"
                                                       .encode()), policy=email.policy.default)
    sender.send("app@example.com", ["support@example.com"], inbound)
    assert session_envelopes(server.handler) == [("app@example.com", ["support@example.com"])]
    got, msg = _received(server)
    assert str(email.message_from_bytes(got.data, policy=email.policy.default)
               ["X-Forwarded-For"]) == "ü"


def test_a_parsed_inbound_message_with_raw_utf8_addresses_can_be_sent(sender, server):
    """Found by the envelope property: a raw UTF-8 From in a parsed message was refolded
    by the email package and refused as a header injection."""
    sender_address = "må.=?utf-8?b?YUBiLmM=?=@例え.example"
    inbound = email.message_from_bytes(f"From: {sender_address}\nTo: b@example.com\n\nhi\n"
                                       .encode(), policy=email.policy.default)
    sender.send(inbound)
    assert session_envelopes(server.handler) == [(sender_address, ["b@example.com"])]
    got, _ = _received(server)
    assert str(email.message_from_bytes(got.data, policy=email.policy.default)["From"]) \
        == sender_address


def test_a_parsed_messages_address_headers_are_read_as_written(sender, server):
    """Found by the envelope property: the email package decoded ``=?x?q?a?=.e@...``
    in a parsed Cc header to a.e@..., leaving no trace in its parse tree."""
    inbound = email.message_from_bytes(b"From: app@example.com\nTo: b@example.com\n"
                                       b"Cc: =?x?q?a?=.e@example.com\n\nhi\n",
                                       policy=email.policy.default)
    sender.send(inbound)
    assert session_envelopes(server.handler) == [
        ("app@example.com", ["b@example.com", "=?x?q?a?=.e@example.com"])]
