"""Defects the bad-input properties (tests/test_badinput*.py) found, each pinned by
the smallest example: every test here failed before its fix (see the git log)."""
from __future__ import annotations

import email.utils

import pytest

from pyramid_txmail import Mail

from .badinput_strategies import phrase
from .badinput_support import decoded, mailboxes, module_harness, raw_headers, read_back

pytestmark = pytest.mark.reliability


harness = module_harness("badinput-found")


@pytest.mark.parametrize("kind", ["Mail", "EmailMessage", "Message"])
def test_idn_domain_in_a_header_goes_as_its_a_label_without_smtputf8(harness, kind):
    """Was: ``To: jorg@=?utf-8?q?b=C3=BCcher?=.example.com`` -- an encoded word
    inside an address, which no standard reader decodes (RFC 2047 section 5)."""
    import email.message

    to = "Jörg <jorg@bücher.example.com>"
    if kind == "Mail":
        message = Mail(subject="s", to=to, text="t")
    else:
        message = getattr(email.message, kind)()
        message["To"] = to if kind == "EmailMessage" else \
            "=?utf-8?q?J=C3=B6rg?= <jorg@bücher.example.com>"
        message.set_payload("t")
    outcome = harness.send(message, "queue", utf8=False)
    [got] = outcome.received
    [to_value] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert mailboxes(to_value) == [("Jörg", "jorg@xn--bcher-kva.example.com")]
    assert got.data.isascii() and got.rcpt_tos == ["jorg@xn--bcher-kva.example.com"]


LITERAL = "=?utf-8?q?caf=C3=A9?= and =?x?"


@pytest.mark.parametrize("utf8_mailbox", [False, True])
def test_text_that_looks_like_an_encoded_word_arrives_as_written(harness, utf8_mailbox):
    """Was: Mail(subject="=?utf-8?q?caf=C3=A9?=") arrived as "café" (also display
    names and attachment filenames): the reader decoded what the user wrote."""
    address = "jörg@example.com" if utf8_mailbox else "jorg@example.com"
    mail = Mail(subject=LITERAL, to=[(LITERAL, address)], text="t",
                headers={"X-Note": LITERAL})
    mail.attach(b"data", filename=LITERAL)
    [got] = harness.send(mail, "direct", utf8=True).received
    raw = dict(raw_headers(got.data))
    assert decoded(raw["Subject"]) == decoded(raw["X-Note"]) == LITERAL
    assert mailboxes(raw["To"]) == [(LITERAL, address)]
    [part] = read_back(got.data).iter_attachments()
    assert part.get_filename() == LITERAL


UNICODE_BREAKS = "a\x85b\u2028c\u2029d\x1ce"


def test_unicode_line_separators_in_encoded_words_arrive(harness):
    """Was: U+0085, U+2028, U+2029 (and FS/GS/RS) vanished from a subject, a
    display name or a filename: email.header.Header splits its text at
    str.splitlines() boundaries and drops them."""
    text = UNICODE_BREAKS.replace("\x1c", "")  # FS is a control: refused, see below
    mail = Mail(subject=text, to=[(text, "jorg@example.com")], text="t")
    mail.attach(b"data", filename=text)
    [got] = harness.send(mail, "queue", utf8=False).received
    raw = dict(raw_headers(got.data))
    assert decoded(raw["Subject"]) == text
    assert mailboxes(raw["To"]) == [(text, "jorg@example.com")]
    [part] = read_back(got.data).iter_attachments()
    assert part.get_filename() == text
    assert decoded(part.get_param("name", header="content-type")) == text


@pytest.mark.parametrize("name", ["X-Note\n", "Bcc\n", "X-Note\r\n"])
def test_a_header_name_ending_in_a_line_break_is_refused(harness, name):
    """Was: the name check used ``^...$``, and ``$`` also matches before a final
    newline: "X-Note\\n" passed, and went out as a broken header line."""
    import email.message

    mail_error = legacy_error = None
    try:
        Mail(subject="s", to="a@example.com", text="t", headers={name: "v"})
    except ValueError as exc:
        mail_error = exc
    legacy = email.message.Message()
    legacy["To"] = "a@example.com"
    legacy[name] = "victim@example.com"
    legacy.set_payload("t")
    legacy_error = harness.send(legacy, "queue").refused
    assert isinstance(mail_error, ValueError) and isinstance(legacy_error, ValueError)
    assert repr(name) in str(mail_error) and repr(name) in str(legacy_error)


def test_errors_for_bad_header_names_and_controls_say_what_is_wrong():
    """Was: every refusal said "header value contains a CR or LF line break",
    also for an empty or spaced header name and for a NUL in a value."""
    from pyramid_txmail import HeaderInjection

    cases = [({"headers": {"": "v"}}, "'': not a valid header name"),
             ({"headers": {"X Note": "v"}}, "'X Note': not a valid header name"),
             ({"subject": "a\x00b"}, "Subject: header value contains the control "
                                     "character '\\x00'"),
             ({"to": "A\x1b <a@example.com>"}, "To: header value contains the control "
                                                "character '\\x1b'"),
             ({"subject": "a\nBcc: x@example.com"}, "Subject: header value contains a "
                                                    "CR or LF line break")]
    for kwargs, message in cases:
        with pytest.raises(HeaderInjection) as info:
            Mail(**{"to": "a@example.com", "text": "t", **kwargs})
        assert str(info.value).startswith(message), info.value


@pytest.mark.parametrize("kind", ["Mail", "EmailMessage", "Message"])
def test_a_display_name_longer_than_a_line_is_encoded_not_sent_over_998(harness, kind):
    """Was: a 1,200-character display name without a space went out as one
    header line of 1,201 octets; the server refused it ("500 Line too long")
    and the message was dead-lettered."""
    import email.message

    name = "x" * 1200
    if kind == "Mail":
        message = Mail(subject="s", to=[(name, "a@example.com")], text="t")
    else:
        message = getattr(email.message, kind)()
        message["To"] = f"{name} <a@example.com>"
        message.set_payload("t")
    outcome = harness.send(message, "queue", utf8=False)
    assert not outcome.held
    [got] = outcome.received
    assert max(map(len, got.data.split(b"\r\n"))) <= 998
    [to] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert mailboxes(to) == [(name, "a@example.com")]


def test_a_tab_in_a_display_name_pair_is_whitespace_as_in_a_string(harness):
    """Was: Mail(to=[("A\\tB", addr)]) was refused as header injection (with an
    empty control character in the message), while "A\\tB <addr>" was taken."""
    mail = Mail(subject="s", to=[("Ann\tBell", "a@example.com")], text="t")
    [got] = harness.send(mail, "queue").received
    [to] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert [(phrase(n), a) for n, a in mailboxes(to)] == [("Ann Bell", "a@example.com")]


@pytest.mark.parametrize("brk", ["\x85", "\u2028", "\u2029", "\x1c", "\x0b"])
def test_a_unicode_line_break_cannot_add_a_header(harness, brk):
    """Was: Mail(to=[(brk + "Bcc: evil@example.com", "jörg@example.com")]) -- a
    UTF-8 mailbox, so the display name was written raw -- went out as a second
    header line "Bcc: evil@example.com": the email package's folder splits at
    str.splitlines() boundaries.  A legacy Message's raw value is refused."""
    import email.message

    from pyramid_txmail import HeaderInjection

    evil = f"x{brk}Bcc: evil@example.com"
    if brk >= "\x1f":  # not a control: taken, encoded
        mail = Mail(subject="s", to=[(evil, "jörg@example.com")], text="t")
        [got] = harness.send(mail, "queue").received
        assert [n for n, _ in raw_headers(got.data) if n.lower() == "bcc"] == []
        [to] = [v for n, v in raw_headers(got.data) if n == "To"]
        assert mailboxes(to) == [(evil, "jörg@example.com")]
    legacy = email.message.Message()
    legacy["To"] = f'"{evil}" <jörg@example.com>'
    legacy["X-Note"] = evil
    legacy.set_payload("t")
    refused = harness.send(legacy, "queue").refused
    assert isinstance(refused, HeaderInjection) and str(refused).startswith("To:"), refused


def test_a_legacy_message_to_a_utf8_mailbox_keeps_its_address_readable(harness):
    """Was: a legacy (compat32) Message to jörg@example.com went out with its
    whole To header as one encoded word: no reader finds the address in it."""
    import email.message

    legacy = email.message.Message()
    legacy["To"] = "Jörg <jörg@example.com>"
    legacy["Subject"] = "Grüße"
    legacy.set_payload("t")
    [got] = harness.send(legacy, "queue").received
    raw = dict(raw_headers(got.data))
    assert mailboxes(raw["To"]) == [("Jörg", "jörg@example.com")]
    assert decoded(raw["Subject"]) == "Grüße"


def test_a_non_ascii_display_name_with_a_comma_stays_one_mailbox_in_utf8_headers(harness):
    """Was: an EmailMessage to formataddr(("Jö, x", "a@example.com")) -- an
    encoded word -- and jörg@example.com (so SMTPUTF8) went out as
    ``To: Jö, x <a@example.com>, jörg@example.com``: the email package writes
    the decoded phrase unquoted, which reads as three mailboxes."""
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["To"] = email.utils.formataddr(("Jö, x", "a@example.com")) + ", jörg@example.com"
    msg.set_content("t")
    [got] = harness.send(msg, "queue", utf8=True).received
    [to] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert mailboxes(to) == [("Jö, x", "a@example.com"), ("", "jörg@example.com")]


def test_the_comma_between_mailboxes_is_never_encoded(harness):
    """Was: To: formataddr((non-ASCII name with a comma, a)), b went out with the
    separator itself as an encoded word (``=?utf-8?q?=2C?= b``): the email
    package's folder did it, and the second mailbox was unreadable."""
    from email.message import EmailMessage

    name = "\U000d42adĞ\U001068be\U001074f1³ć,L\U0003f633ĩ\U000525eaÒu\u200b"
    msg = EmailMessage()
    msg["To"] = email.utils.formataddr((name, "00@example.com")) + ", b@example.com"
    msg.set_content("t")
    [got] = harness.send(msg, "queue", utf8=False).received
    [to] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert mailboxes(to) == [(name, "00@example.com"), ("", "b@example.com")]


def test_a_legacy_encoded_display_name_is_not_encoded_twice(harness):
    """Was: a legacy Message's To of formataddr((long non-ASCII name, a)) -- already
    an encoded word over 76 characters -- was taken for a long name and encoded
    again: it arrived as the text "=?utf-8?b?...?=" instead of the name."""
    import email.message

    name = "0000" + "\xa0" * 7 + "𐀀0" + "\xa0" * 9 + "𐀀𐀀"
    legacy = email.message.Message()
    legacy["To"] = email.utils.formataddr((name, "a@example.com"))
    legacy.set_payload("t")
    [got] = harness.send(legacy, "queue", utf8=False).received
    [to] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert mailboxes(to) == [(name, "a@example.com")]


def test_a_pyramid_mailer_message_without_sender_takes_the_default_sender(harness):
    """Was: TypeError("argument of type 'NoneType' is not iterable") out of send():
    the adapter called pyramid_mailer's is_bad_headers(), which fails when sender
    is None -- the usual case with mail.default_sender set."""
    from pyramid_mailer.message import Message

    [got] = harness.send(Message(subject="s", recipients=["a@example.com"], body="t"),
                         "queue").received
    assert got.mail_from == "sender@example.org"


def test_a_pyramid_mailer_header_injection_names_the_field(harness):
    from pyramid_mailer.message import Message

    from pyramid_txmail import HeaderInjection

    for kwargs, field in [({"subject": "a\nBcc: x@example.com"}, "Subject"),
                          ({"extra_headers": {"X-Note": "a\rb"}}, "X-Note"),
                          ({"sender": "s@example.com\nBcc: x@example.com"}, "From")]:
        message = Message(**{"subject": "s", "recipients": ["a@example.com"], "body": "t",
                             **kwargs})
        refused = harness.send(message, "queue").refused
        assert isinstance(refused, HeaderInjection) and str(refused).startswith(field), refused


def test_a_long_non_ascii_legacy_subject_to_a_utf8_mailbox_arrives_intact(harness):
    """Was (since legacy messages are written with an SMTPUTF8 policy on this
    branch): a 1,200-character raw subject without spaces stayed one line over
    998 octets, and wire.to_wire's re-encoding turned its UTF-8 into U+FFFD."""
    import email.message

    subject = "\xa0" + "x" * 1200
    legacy = email.message.Message()
    legacy["To"] = "jörg@example.com"
    legacy["Subject"] = subject
    legacy.set_payload("t")
    [got] = harness.send(legacy, "queue", utf8=True).received
    assert max(map(len, got.data.split(b"\r\n"))) <= 998
    assert decoded(dict(raw_headers(got.data))["Subject"]) == subject


def test_a_non_ascii_name_that_holds_encoded_word_text_to_a_utf8_mailbox(harness):
    """Was (since non-ASCII display names are quoted for SMTPUTF8 on this branch):
    "\\xa0=?utf-8?q?caf=C3=A9?=" was quoted as it is, and read back as " café"."""
    name = "\xa0" + LITERAL
    mail = Mail(subject="s", to=[(name, "jörg@example.com")], text="t")
    [got] = harness.send(mail, "queue", utf8=True).received
    [to] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert mailboxes(to) == [(name, "jörg@example.com")]


def test_an_encoded_line_break_in_a_legacy_address_header_never_escapes(harness):
    """Was: ValueError('invalid arguments; address parts cannot contain CR or LF')
    out of send(), naming no header: a legacy To whose encoded-word display name
    decodes to a line break, written for a UTF-8 mailbox.  Now the name goes out
    encoded again (the line break inside an encoded word, no header added) -- or,
    should the policy still parse it, HeaderInjection naming To."""
    import email.message

    from pyramid_txmail import HeaderInjection

    name = "000\xa0\xa0\xa0\xa0\xa0\nBcc: victim@example.com"
    legacy = email.message.Message()
    legacy["To"] = "jörg@example.com, jörg@example.com, " + email.utils.formataddr(
        (name, "a@example.com"))
    legacy.set_payload("t")
    outcome = harness.send(legacy, "queue")
    if outcome.refused is not None:
        assert isinstance(outcome.refused, HeaderInjection), repr(outcome.refused)
        assert str(outcome.refused).startswith("To:")
        return
    [got] = outcome.received
    assert [n for n, _ in raw_headers(got.data) if n.lower() == "bcc"] == []
    [value] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert (name, "a@example.com") in mailboxes(value)


def test_encoded_word_text_beside_a_utf8_mailbox_is_still_encoded(harness):
    """Was (regression on this branch): Mail(to=[("\\xa0", "jörg@..."),
    ("=?utf-8?q?caf=C3=A9?=", "jörg@...")]): prepare() rewrote the header and
    quoted the ASCII "=?...?=" name as it is, and it was read back as "café"."""
    to = [("\xa0", "jörg@example.com"), (LITERAL, "jörg@example.com")]
    [got] = harness.send(Mail(subject="s", to=to, text="t"), "queue", utf8=True).received
    [value] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert [(phrase(n), a) for n, a in mailboxes(value)] == [("\xa0", "jörg@example.com"),
                                                             (LITERAL, "jörg@example.com")]


@pytest.mark.parametrize("kind", ["EmailMessage", "Message"])
def test_a_long_encoded_display_name_beside_a_utf8_mailbox_is_not_refolded(harness, kind):
    """Was (regression on this branch): the rewritten To put the address after the
    last encoded word, past 78 columns, so the SMTPUTF8 policy refolded it with
    the email package's parser -- minutes for a long name (a pytest timeout), or
    a ValueError for a name holding a line break."""
    import email.message

    name = "0\xa0\xa0\U00010000" + "x" * 1200 + "000\xa0\xa0\xa0"
    message = getattr(email.message, kind)()
    message["To"] = email.utils.formataddr((name, "a@example.com")) + ", jörg@example.com"
    message.set_payload("t")
    [got] = harness.send(message, "queue", utf8=True).received
    [value] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert mailboxes(value) == [(name, "a@example.com"), ("", "jörg@example.com")]


def test_a_legacy_encoded_name_with_a_colon_stays_a_name_in_utf8_headers(harness):
    """Was: a legacy To "a, b, =?utf-8?b?...?= <c>" (formataddr of "0:\\xa0\\xa0"),
    sent SMTPUTF8, was refolded by the email package, which wrote the decoded
    name unquoted -- "0:" then reads as a group and the name is lost."""
    import email.message

    name = "0:\xa0\xa0\xa0\xa0"
    legacy = email.message.Message()
    legacy["To"] = "00@example.com, 00@example.com, " + email.utils.formataddr(
        (name, "00@example.com"))
    legacy.set_payload("t")
    [got] = harness.send(legacy, "queue", args=("sender@example.org", ["jörg@example.com"])
                         ).received
    [value] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert mailboxes(value)[-1] == (name, "00@example.com")


@pytest.mark.parametrize("start", [":", "<"])
def test_a_long_quoted_ascii_display_name_keeps_its_specials(harness, start):
    """Was: an EmailMessage To of formataddr((":word word ...", addr)) -- quoted,
    over 78 columns -- was folded by the email package, which dropped the quotes:
    the ':' (or '<') and the name were lost or read as a group."""
    from email.message import EmailMessage

    name = start + "word " * 60
    msg = EmailMessage()
    msg["To"] = email.utils.formataddr((name, "00@example.com"))
    msg.set_content("t")
    [got] = harness.send(msg, "queue", utf8=False).received
    [value] = [v for n, v in raw_headers(got.data) if n == "To"]
    assert [(phrase(n), a) for n, a in mailboxes(value)] == [(phrase(name), "00@example.com")]


def test_a_long_non_ascii_comment_keeps_its_spaces(harness):
    """Was: an EmailMessage header "\\xa0word word ... word ¡" over 78 columns was
    folded by the email package, which added a space where its encoded and plain
    words meet ("word  ¡")."""
    from email.message import EmailMessage

    value = "\xa0" + "word " * 40 + "¡"
    msg = EmailMessage()
    msg["To"] = "00@example.com"
    msg["Comments"] = value
    msg.set_content("t")
    [got] = harness.send(msg, "queue", utf8=False).received
    assert decoded(dict(raw_headers(got.data))["Comments"]) == value


@pytest.mark.parametrize("value", [
    "0\xa0\xa0\xa0\xa0\xa0\xa0𐀀𐀀0\xa0\xa0\xa0\xa0\xa0ࠀ𐀀𐀀  ¡",  # what the property found
    "Grüße  aus  Köln", "ü" * 30 + "   " + "ö" * 30])
def test_whitespace_between_non_ascii_words_arrives(harness, value):
    """Was: the spaces before "¡" vanished: the email package's folder wrote them
    between two encoded words, where RFC 2047 readers drop whitespace.  A
    short value also arrives without a leading space (it starts beside the
    header's name, not on a folded line of its own)."""
    import email.message

    message = email.message.EmailMessage()
    message["To"], message["Subject"], message["X-0"] = "a@example.com", value, value
    message.set_content("t")
    [got] = harness.send(message, "queue", utf8=False).received
    raw = dict(raw_headers(got.data))
    assert got.data.isascii()
    assert decoded(raw["Subject"]) == decoded(raw["X-0"]) == value
    assert read_back(got.data)["Subject"] == value
