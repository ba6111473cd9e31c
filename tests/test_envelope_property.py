"""Property: the MAIL FROM and RCPT TO a real server sees are exactly what the app passed.

Envelopes of any valid addresses -- UTF-8 local parts, IDN domains, local
parts that look like RFC 2047 encoded words, quoted local parts with commas,
quotes, brackets and spaces -- and messages with any headers, the queue
file's own ``X-Actually-*`` lines among them, go through ``send`` on each
path (explicit envelope, To/Cc/Bcc headers of an EmailMessage or a legacy
Message, a pyramid_mailer Message) and each delivery (the queue through the
processor, direct).  The envelope is read from the raw SMTP session of an
aiosmtpd server on 127.0.0.1.

Addresses are generated in their canonical form (as email-validator
normalizes them: domains lower case, an IDN domain as its A-label when the
local part is ASCII, a local part quoted only when it must be), so that
"what the app passed" and "what must arrive" are the same string.
"""
from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from email.mime.text import MIMEText

import pytest
from hypothesis import Phase, assume, example, given, settings
from hypothesis import strategies as st

from pyramid_txmail import InvalidAddress
from pyramid_txmail.compose.message import check_address

from .badinput_support import examples
from .envelope_support import Sender, literal_server, session_envelopes
from .reliability import record

pytestmark = pytest.mark.reliability

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
LOOKALIKES = ["=?utf-8?q?attacker=40evil.example=2C?=", "=?utf-8?b?YUBiLmM=?=", "=?x?q?a?=",
              "=?utf-8?q?a?="]
QTEXT = [c for c in map(chr, range(32, 127))] + ["é", "ü", "ß", "€"]

_atom = st.text(st.sampled_from(ATEXT), min_size=1, max_size=8)
_utf8_atom = st.text(st.sampled_from(ATEXT[:20] + "éüßøåñçàÉ"), min_size=1, max_size=8)
_dot_atom = st.lists(_atom | st.sampled_from(LOOKALIKES), min_size=1, max_size=3).map(".".join)
_utf8_dot_atom = st.lists(_utf8_atom | st.sampled_from(LOOKALIKES), min_size=1,
                          max_size=3).map(".".join)


def _quoted(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_quoted_local = st.lists(st.sampled_from(QTEXT) | st.sampled_from(
    [",", '"', "\\", " ", "<", ">", "@", ",attacker@evil.example,", "=?utf-8?q?a?="]),
    min_size=1, max_size=10).map("".join).map(_quoted)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(
    lambda label: "--" not in label[2:4])
_ascii_domain = st.lists(_label, min_size=1, max_size=2).map(lambda ls: ".".join(ls) +
                                                                ".example")
_idn_label = st.sampled_from(["bücher", "münchen", "例え", "пример", "straße-x"])


@st.composite
def address(draw):
    local = draw(st.one_of(_dot_atom, _utf8_dot_atom, _quoted_local))
    domain = draw(_ascii_domain)
    if draw(st.booleans()):
        label = draw(_idn_label)
        if local.isascii():  # the envelope form of an IDN domain: its A-label
            label = label.encode("idna").decode("ascii")
        domain = f"{label}.{domain}"
    addr = f"{local}@{domain}"
    try:
        canonical = check_address("test", addr)
    except ValueError:
        canonical = None
    assume(canonical == addr)
    return addr


ENVELOPE_NAMES = ["X-Actually-From", "X-Actually-To", "x-actually-to", "X-ACTUALLY-FROM",
                  "X-Envelope-To", "Return-Path", "Delivered-To", "Comments", "X-Forwarded-For"]
_header_text = st.lists(st.sampled_from(
    ["bounces@evil.example", "a1@evil.example,a2@evil.example", ", ", "=?utf-8?q?a=40b?=",
     '"x,y"@evil.example', " <c@evil.example>", "plain words", "ü"]), min_size=1,
    max_size=4).map("".join)
_headers = st.lists(st.tuples(st.sampled_from(ENVELOPE_NAMES), _header_text), max_size=6)
PATHS = ["explicit", "email-message-headers", "legacy-headers", "pyramid-mailer"]


def build(path, fromaddr, toaddrs, headers):
    """``send`` arguments for one path; the envelope is ``fromaddr``/``toaddrs`` on each."""
    if path == "pyramid-mailer":
        from pyramid_mailer.message import Message

        extra = {}
        for name, value in headers:
            extra.setdefault(name, value)
        return (Message(subject="p", sender=fromaddr, recipients=toaddrs[:1],
                        cc=toaddrs[1:2], bcc=toaddrs[2:], body="hi", extra_headers=extra),)
    lines = [f"{name}: {value}" for name, value in headers] + ["Subject: p"]
    if path == "explicit":
        lines.append("From: sender@example.com")
    else:
        lines += [f"From: {fromaddr}", f"To: {', '.join(toaddrs[:1])}"]
        if toaddrs[1:2]:
            lines.append(f"Cc: {', '.join(toaddrs[1:2])}")
        if toaddrs[2:]:
            lines.append(f"Bcc: {', '.join(toaddrs[2:])}")
    if path == "legacy-headers":  # a legacy Message built in the app, its values str
        message = MIMEText("hello", "plain", "utf-8")
        for line in lines:
            name, _, value = line.partition(": ")
            message[name] = value
    else:  # a parsed inbound message
        raw = ("\n".join(lines) + "\n\nhello\n").encode("utf-8")
        message = email.message_from_bytes(raw, policy=email.policy.default)
    if path == "explicit":
        return fromaddr, toaddrs, message
    return (message,)


@pytest.fixture(scope="module")
def senders(tmp_path_factory):
    server = literal_server()
    root = tmp_path_factory.mktemp("envelope-property")
    yield {mode: Sender(mode, server, root / f"spool-{mode}") for mode in ("queue", "direct")}
    server.stop()


@pytest.mark.property
def test_the_relay_sees_exactly_the_envelope_the_app_passed(senders):
    counts = {"examples": 0, "messages": 0, "delivered": 0, "held": 0}

    # No shrinking: an example is a send and one or two SMTP sessions, and shrinking a
    # failure took longer than the test timeout; the failing example is printed as found.
    @settings(examples(100, 1500), phases=[Phase.explicit, Phase.generate])
    @given(fromaddr=address(), toaddrs=st.lists(address(), min_size=1, max_size=4,
                                                unique=True),
           headers=_headers, path=st.sampled_from(PATHS), mode=st.sampled_from(["queue",
                                                                               "direct"]))
    @example(fromaddr="=?utf-8?q?a?=@example.com",
             toaddrs=["=?utf-8?q?attacker=40evil.example=2C?=@victim-corp.example"],
             headers=[("X-Actually-To", "a1@evil.example,a2@evil.example")],
             path="legacy-headers", mode="queue")
    @example(fromaddr="app@example.com",
             toaddrs=['"x,attacker@evil.example,y"@victim.example', "jörg@bücher.example"],
             headers=[("X-Actually-From", "bounces@evil.example"),
                      ("X-Actually-To", "a1@evil.example")],
             path="explicit", mode="queue")
    def check(fromaddr, toaddrs, headers, path, mode):
        sender = senders[mode]
        sender.server.handler.reset()
        args = build(path, fromaddr, toaddrs, headers)
        counts["examples"] += 1
        try:
            sender.send(*args)
        except InvalidAddress as exc:
            # the email package decodes an encoded word in an address header (into
            # another address, or none): refused there, and nothing is sent
            assert path == "email-message-headers", exc
            assert any("=?" in a for a in (fromaddr, *toaddrs)), exc
            assert session_envelopes(sender.server.handler) == []
            counts["held"] += 1
            return
        counts["messages"] += 1
        seen = session_envelopes(sender.server.handler)
        assert seen == [(fromaddr, toaddrs)], (path, mode)
        [got] = sender.server.messages
        counts["delivered"] += 1
        parsed = email.message_from_bytes(got.data)
        assert parsed["X-Actually-To"] is None and parsed["X-Actually-From"] is None
        assert b"txmail-envelope" not in got.data

    check()
    record("envelope", "Envelope integrity: any valid addresses (UTF-8, IDN, encoded-word "
           "look-alikes, quoted local parts) and any headers, queue and direct",
           runs=counts["examples"], messages=counts["messages"],
           delivered=counts["delivered"], held=counts["held"], bad_inputs=counts["examples"],
           detail=f"{counts['held']} refused at send() (an encoded word the email package "
                  "decodes in an address header)" if counts["held"] else "")
    assert counts["messages"] == counts["delivered"]


@pytest.mark.property
def test_an_encoded_word_in_a_header_address_never_becomes_the_envelope(senders):
    """EmailMessage headers decode ``=?...?=`` in an address: refused, never sent."""
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = "=?utf-8?q?ceo?=@victim.example"
    with pytest.raises(InvalidAddress):
        senders["queue"].send(message)
