"""send() validates in the view and builds the envelope; errors name the culprit."""
from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message
from email.mime.text import MIMEText

import pytest

from pyramid_txmail.compose.message import (HeaderInjection, InvalidAddress, NoRecipients,
                                    NoSender, prepare)


def parse(prepared):
    return email.message_from_bytes(prepared.data, policy=email.policy.default)


def make(**headers):
    msg = EmailMessage()
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("body\n")
    return msg


def test_envelope_from_headers_and_bcc_hidden():
    p = prepare(make(To="A <a@example.com>, b@example.com", Cc="c@example.com",
                     Bcc="d@example.com", Subject="s"), "Site <site@example.com>")
    assert p.fromaddr == "site@example.com"
    assert p.toaddrs == ("a@example.com", "b@example.com", "c@example.com", "d@example.com")
    msg = parse(p)
    assert msg["From"] == "Site <site@example.com>" and msg["Bcc"] is None
    assert msg["Message-ID"] == p.message_id and msg["Date"]
    assert b"d@example.com" not in p.data


def test_existing_from_message_id_and_date_are_kept():
    p = prepare(make(From="me@example.org", To="a@example.com", Message_ID="<x@y.z>",
                     Date="Mon, 02 Jan 2006 15:04:05 +0000"), "site@example.com")
    msg = parse(p)
    assert p.fromaddr == "me@example.org" and p.message_id == "<x@y.z>"
    assert msg["Date"] == "Mon, 02 Jan 2006 15:04:05 +0000"


def test_the_callers_message_is_not_modified():
    msg = make(To="a@example.com", Bcc="b@example.com")
    prepare(msg, "site@example.com")
    assert msg["Bcc"] == "b@example.com" and msg["Message-ID"] is None


def test_the_callers_message_is_byte_for_byte_the_same_afterwards():
    """Single-part messages are copied shallowly (headers only): nothing may leak back."""
    single = make(To="a@example.com", Bcc="b@example.com", Subject="hi")
    multi = make(To="a@example.com", Bcc="b@example.com")
    multi.add_attachment(b"\x00\x01", maintype="application", subtype="octet-stream",
                         filename="a.bin")
    for msg in (single, multi):
        before = msg.as_bytes()
        p = prepare(msg, "site@example.com")
        assert msg.as_bytes() == before
        assert b"Bcc" not in p.data and b"Message-ID" in p.data and b"From" in p.data


def test_recipients_are_deduplicated():
    p = prepare(make(To="a@example.com", Cc="a@example.com"), "s@example.com")
    assert p.toaddrs == ("a@example.com",)


def test_no_recipient():
    with pytest.raises(NoRecipients, match="To, Cc or Bcc"):
        prepare(make(Subject="x"), "s@example.com")


def test_no_sender():
    with pytest.raises(NoSender, match="mail.default_sender"):
        prepare(make(To="a@example.com"), None)


@pytest.mark.parametrize("header, value, address", [
    ("To", "not an address", "not an address"),
    ("Cc", "ok@example.com, bad@@example.com", "bad@@example.com"),
    ("Reply-To", "someone@localhost", "someone@localhost"),
    ("From", "x@", "x@"),
])
def test_invalid_address_names_header_and_address(header, value, address):
    msg = Message()  # a legacy message keeps the raw value, as typed
    msg["To"] = "a@example.com"
    del msg[header]
    msg[header] = value
    msg.set_payload("body")
    with pytest.raises(InvalidAddress) as info:
        prepare(msg, "s@example.com")
    assert info.value.header == header
    assert address in str(info.value) and header in str(info.value)


def test_invalid_address_in_an_email_message_names_the_header():
    msg = make(To="a@example.com", Cc="ok@example.com, bad@@example.com")
    with pytest.raises(InvalidAddress, match="^Cc: invalid address"):
        prepare(msg, "s@example.com")


def test_header_injection_in_a_legacy_message_is_refused():
    msg = MIMEText("body")
    msg["To"] = "a@example.com"
    msg["Subject"] = "Hi\nBcc: victim@example.com"
    with pytest.raises(HeaderInjection, match="Subject"):
        prepare(msg, "s@example.com")


def test_header_injection_via_a_bare_cr_is_refused():
    msg = Message()
    msg["To"] = "a@example.com"
    msg["X-Note"] = "fine\rBcc: victim@example.com"
    msg.set_payload("body")
    with pytest.raises(HeaderInjection, match="X-Note"):
        prepare(msg, "s@example.com")


def test_header_injection_in_an_address_is_refused():
    msg = Message()
    msg["To"] = "a@example.com\nBcc: victim@example.com"
    msg.set_payload("body")
    with pytest.raises(HeaderInjection, match="To"):
        prepare(msg, "s@example.com")


def test_folded_headers_are_not_injection():
    raw = b"To: a@example.com,\n b@example.com\nSubject: long\n subject\n\nbody\n"
    p = prepare(email.message_from_bytes(raw), "s@example.com")
    assert p.toaddrs == ("a@example.com", "b@example.com")


def test_legacy_message_is_accepted():
    msg = MIMEText("legacy body")
    msg["To"] = "a@example.com"
    msg["Subject"] = "legacy"
    p = prepare(msg, "s@example.com")
    assert parse(p).get_content() == "legacy body"


def test_pyramid_mailer_message_is_accepted():
    from pyramid_mailer.message import Message as PMMessage

    msg = PMMessage(subject="pm", sender="pm@example.com", recipients=["a@example.com"],
                    cc=["c@example.com"], bcc=["hidden@example.com"], body="hello")
    p = prepare(msg, "s@example.com")
    assert p.fromaddr == "pm@example.com"
    assert set(p.toaddrs) == {"a@example.com", "c@example.com", "hidden@example.com"}
    assert b"hidden@example.com" not in p.data
    assert parse(p)["Subject"] == "pm"


def test_non_ascii_display_name_and_subject_are_encoded_words():
    p = prepare(make(To="Jörg Müller <joerg@example.com>", Subject="Grüße"), "s@example.com")
    assert p.data.isascii()
    msg = parse(p)
    assert msg["To"].addresses[0].display_name == "Jörg Müller"
    assert msg["Subject"] == "Grüße"


def test_internationalised_address_uses_utf8_headers():
    p = prepare(make(To="用户@例子.广告"), "s@example.com")
    assert p.toaddrs == ("用户@例子.广告",)
    assert "用户@例子.广告".encode() in p.data


def test_internationalised_domain_goes_to_the_envelope_as_ascii():
    p = prepare(make(To="user@bücher.example"), "s@example.com")
    assert p.toaddrs == ("user@xn--bcher-kva.example",)


def test_explicit_envelope_overrides_headers():
    p = prepare(make(To="a@example.com"), "s@example.com", "bounce@example.com",
                ["x@example.com"])
    assert (p.fromaddr, p.toaddrs) == ("bounce@example.com", ("x@example.com",))
    with pytest.raises(InvalidAddress, match="envelope recipient"):
        prepare(make(To="a@example.com"), "s@example.com", None, ["nope"])


def test_long_lines_are_re_encoded_before_spooling():
    msg = make(To="a@example.com")
    msg.set_content("x" * 5000 + "\n")
    p = prepare(msg, "s@example.com")
    assert max(len(line) for line in p.data.split(b"\n")) <= 998
    assert parse(p).get_content() == "x" * 5000 + "\n"


def test_not_a_message():
    with pytest.raises(TypeError, match="EmailMessage"):
        prepare("To: a@example.com\n\nbody", "s@example.com")


def test_long_lines_of_a_legacy_message_are_re_encoded_and_bare_cr_normalised():
    text = "y" * 3000 + "\r" + "z" * 10 + "\n"
    msg = Message()
    msg["To"] = "a@example.com"
    msg.set_payload(text)
    p = prepare(msg, "s@example.com")
    lines = p.data.split(b"\n")
    assert max(len(line) for line in lines) <= 998
    assert b"\r" not in p.data
    body = email.message_from_bytes(p.data).get_payload(decode=True)
    assert body.replace(b"\r\n", b"\n") == b"y" * 3000 + b"\n" + b"z" * 10 + b"\n"


def test_prepare_leaves_the_callers_message_untouched_multipart_too():
    from email.message import EmailMessage

    from pyramid_txmail.compose.message import prepare

    msg = EmailMessage()
    msg["To"] = "a@example.org"
    msg["Bcc"] = "hidden@example.org"
    msg["Subject"] = "x"
    msg.set_content("text")
    msg.add_alternative("<p>html</p>", subtype="html")
    before = msg.as_bytes()
    prepared = prepare(msg, default_sender="s@example.org")
    assert msg.as_bytes() == before and msg["Message-ID"] is None and msg["From"] is None
    assert b"Bcc" not in prepared.data and b"hidden" not in prepared.data
    assert b"<p>html</p>" in prepared.data
    assert prepared.toaddrs == ("a@example.org", "hidden@example.org")


@pytest.mark.parametrize("fast", [True, False])
def test_a_message_id_too_long_for_one_header_line_is_refused_in_the_view(fast):
    """A Message-ID cannot be folded: over 998 octets its line breaks SMTP's limit and
    the SQL outbox's column (refused by PostgreSQL at the commit, after the view)."""
    from pyramid_txmail.compose.message import MAX_MESSAGE_ID, MessageError, prepare

    msg = EmailMessage()
    msg["From"], msg["To"] = "a@example.com", "b@example.com"
    msg.set_content("hi")
    longest = "<" + "x" * (MAX_MESSAGE_ID - len("<@example.com>")) + "@example.com>"
    msg["Message-ID"] = longest
    assert prepare(msg, fast=fast).message_id == longest
    msg.replace_header("Message-ID", longest.replace("<", "<y", 1))
    with pytest.raises(MessageError, match=r"^Message-ID: .* at most 986 octets"):
        prepare(msg, fast=fast)
