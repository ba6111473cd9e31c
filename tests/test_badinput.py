"""Bad input, property-based: whatever a view hands to ``send``, a clear error or the same mail.

For random headers (CR, LF, NUL and other controls, non-ASCII, very long,
encoded words), display names, subjects, bodies (bare CR and LF, long lines),
attachments and internationalised addresses, given to ``send`` as a
:class:`pyramid_txmail.Mail`, an :class:`email.message.EmailMessage` (or a
legacy ``Message``) or a pyramid_mailer ``Message``, exactly one of these holds:

* ``send`` raises, naming the header, address or file at fault, and nothing is
  queued or sent;
* the real server (aiosmtpd on 127.0.0.1, default line limits, with or without
  SMTPUTF8) receives bytes that parse back to the same message -- same headers
  (decoded) and no others, same text, HTML and attachments -- through the queue
  and the processor, and through direct delivery;
* (only for a UTF-8 mailbox and a server without SMTPUTF8) it is dead-lettered
  with the reason.

Every connection is recorded byte for byte: no bare CR or LF, no lenient end of
DATA, one MAIL transaction per message (no SMTP smuggling).
"""
from __future__ import annotations

import collections
import email.errors
import email.policy
import email.utils
from email.message import EmailMessage
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyramid_txmail import Mail
from pyramid_txmail.message import LINE_BREAKS

from .badinput_support import (GENERATED, Harness, Tally, check_transcripts, decoded,
                               idna_address,
                               mailboxes, raw_headers, read_back)
from .reliability import runs

pytestmark = pytest.mark.reliability


def examples(quick, long):
    return settings(max_examples=runs(quick, long), deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    harness = Harness(str(tmp_path_factory.mktemp("badinput")))
    yield harness
    harness.close()


# -- strategies ---------------------------------------------------------------------------

CONTROLS = ["\r", "\n", "\r\n", "\x00", "\x0b", "\x0c", "\x1b", "\x7f"]
SPECIALS = ["=?utf-8?q?caf=C3=A9?=", "=?iso-8859-1?b?4A==?=", "=?bogus?q?x?=",
            "\nBcc: victim@example.com", "\r\n\r\nbody", " ", "  ", "\t", '"', "(", ")",
            ",", "<", ">", "@", ";", ":", "\\", "ü", "€", "😀", "\u200b", "\x85", "\u2028",
            "é" * 40, "x" * 1200, "word " * 250]
_any = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


def text_with(pieces, max_size=8, plain=_printable):
    return st.lists(st.one_of(plain, st.sampled_from(pieces)), max_size=max_size).map("".join)


header_value = text_with(SPECIALS + CONTROLS, plain=_any)
clean_header_value = text_with(SPECIALS)
valid_header_name = st.one_of(
    st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True),
    st.sampled_from(["Comments", "Keywords", "In-Reply-To", "References",
                     "List-Unsubscribe", "Organization", "X-Mailer", "x-lower"]))
header_name = valid_header_name | st.sampled_from(
    ["Subject", "X Bad", "X:Colon", "Ünï", "", "X-\x00", "X-\n"])  # invalid, or twice
line_break = st.sampled_from(["\n", "\r\n", "\r"])
body_line = st.one_of(text_with(SPECIALS[3:], 6), st.sampled_from(
    [".", "..", ". ", "From me", "x" * 1500, "é" * 700, "\x00", "a\tb "]))
body_text = st.lists(st.tuples(body_line, line_break), max_size=10).map(
    lambda pairs: "".join(line + br for line, br in pairs)) | text_with(
    ["\r\n.\r\n", "\n.\n", "\n.\r\n", "\r.\r", "\r\n.\n", "\n.\r", "x" * 2000] + CONTROLS)

ascii_local = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,10}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s)
utf8_local = st.sampled_from(["jörg", "用户", "δοκιμή", "müller.k"])
domain = st.sampled_from(["example.com", "example.org", "bücher.example.com",
                          "münchen.example.org", "例え.example.jp"])
good_address = st.builds(lambda local, dom: f"{local}@{dom}",
                         st.one_of(ascii_local, ascii_local, utf8_local), domain)
BAD_ADDRESSES = ["no-at-sign", "a@@example.com", "a b@example.com", "@example.com",
                 "a@-bad-.com", "a@localhost", "a@", "a\n@example.com", "a@exa\rmple.com"]
bad_address = st.sampled_from(BAD_ADDRESSES)
display_name = text_with(SPECIALS + CONTROLS, 5, plain=_any)
clean_display_name = text_with(SPECIALS, 5)
attachment_data = st.binary(max_size=3000) | st.sampled_from(
    [b"\r\n.\r\n", b"a\n.\nMAIL FROM:<x@example.com>\n", b"\r.\r\n.\n" * 50])
content_type = st.sampled_from(["application/octet-stream", "text/plain", "image/png"])
attachment = st.tuples(attachment_data, text_with(SPECIALS + CONTROLS, 4, _any), content_type)
clean_attachment = st.tuples(attachment_data, text_with(SPECIALS, 4), content_type)


def suspicious(text):
    """Control characters (not TAB): a clear error for them is fine."""
    return any(ord(c) < 32 and c != "\t" or c == "\x7f" for c in text)


def phrase(name):
    """A display name as readers compare it: runs of SP/TAB are one, none at the ends
    (RFC 5322 3.2.2: they are folding white space, not part of the name)."""
    return re.sub(r"[ \t]+", " ", name).strip(" \t")


def eol(text):
    return text.replace("\r\n", "\n").replace("\r", "\n")


def names_culprit(exc, culprits):
    """The error names one of ``culprits`` (a header name, address or filename)."""
    text = str(exc)
    return any(repr(c) in text or (c and (c in text or repr(c)[1:-1] in text))
               for c in culprits)


HEADER_NAME_OK = re.compile(r"[!-9;-~]+")


def questionable(headers=(), addresses=(), names=(), filenames=()):
    """Something a clear error may refuse: a control character in a header value,
    display name or filename, a bad header name, or an address that is not one."""
    counts = collections.Counter(n.lower() for n, _ in headers)
    return (any(not HEADER_NAME_OK.fullmatch(n) or suspicious(v) for n, v in headers)
            or any(c > (email.policy.default.header_max_count(n) or c)  # e.g. 2 Subjects
                   for n, c in counts.items())
            or any(suspicious(t) for t in names)
            or any(suspicious(t) or "\t" in t for t in filenames)  # TAB too, in a filename
            or any(a in BAD_ADDRESSES for a in addresses))


def check_held(outcome, utf8):
    """True when the message was (rightly) dead-lettered instead of delivered: only a
    UTF-8 mailbox or header for a server without SMTPUTF8, with that reason."""
    if not outcome.held:
        return False
    [(state, reason)] = outcome.held
    assert not utf8 and state == "failed" and "SMTPUTF8" in reason, outcome.held
    return True


# -- the Mail builder ---------------------------------------------------------------------

def dirty(draw):
    """About one example in four carries bad input somewhere; the rest must arrive.
    (Clean is 0: what hypothesis shrinks towards.)"""
    return draw(st.integers(0, 3)) == 3


@st.composite
def mail_inputs(draw):
    bad = dirty(draw)
    text = header_value if bad else clean_header_value
    name = header_name if bad else valid_header_name
    to = draw(st.lists(st.tuples(display_name if bad else clean_display_name,
                                 good_address | bad_address if bad else good_address),
                       min_size=1, max_size=3))
    return {"subject": draw(st.none() | text), "to": to,
            "headers": draw(st.lists(st.tuples(name, text), max_size=3)),
            "text": draw(st.none() | body_text), "html": draw(st.none() | body_text),
            "attachments": draw(st.lists(attachment if bad else clean_attachment,
                                         max_size=2))}


def check_mail_arrived(spec, outcome):
    [got] = outcome.received
    msg = read_back(got.data)
    raw = raw_headers(got.data)
    given_headers = ([("Subject", spec["subject"])] if spec["subject"] is not None else []) \
        + spec["headers"]
    # a header value can never add a header: exactly the ones set, and ours
    names = sorted(n.lower() for n, _ in raw if n.lower() not in GENERATED_NAMES)
    assert names == sorted(["to"] + [n.lower() for n, _ in given_headers])
    for name, value in given_headers:
        got_values = [decoded(v) for n, v in raw if n.lower() == name.lower()]
        assert value.strip() in [v.strip() for v in got_values], (name, value, got_values)
    [to] = [v for n, v in raw if n.lower() == "to"]
    assert [(phrase(n), idna_address(a)) for n, a in mailboxes(to)] == \
        [(phrase(n), idna_address(a)) for n, a in spec["to"]]
    assert sorted(map(idna_address, got.rcpt_tos)) == \
        sorted({idna_address(a) for _, a in spec["to"]})
    if spec["text"] is not None:
        assert eol(msg.get_body(("plain",)).get_content()).rstrip("\n") == \
            eol(spec["text"]).rstrip("\n")
    if spec["html"] is not None:
        assert eol(msg.get_body(("html",)).get_content()).rstrip("\n") == \
            eol(spec["html"]).rstrip("\n")
    found = [(a.get_filename(), a.get_payload(decode=True)) for a in msg.iter_attachments()
             if a.get_content_disposition() == "attachment"]
    # (the email package strips white space around a filename: " a " reads as "a")
    assert [(n and n.strip(), d) for n, d in found] == \
        [((name or None) and name.strip(), data) for data, name, _ in spec["attachments"]]


GENERATED_NAMES = {"from", "message-id", "date", "mime-version", "content-type",
                   "content-transfer-encoding"}


def test_mail_builder_round_trips_or_is_refused(harness):
    tally = Tally()

    @examples(150, 3000)
    @given(spec=mail_inputs(), mode=st.sampled_from(["queue", "direct"]), utf8=st.booleans())
    def example(spec, mode, utf8):
        culprits = [n for n, _ in spec["headers"]] + ["Subject", "To"] + \
            [a for _, a in spec["to"]] + [f for _, f, _ in spec["attachments"]]
        may_refuse = questionable(
            spec["headers"] + [("Subject", spec["subject"] or "")],
            [a for _, a in spec["to"]], [n for n, _ in spec["to"]],
            [f for _, f, _ in spec["attachments"]])
        try:
            mail = Mail(subject=spec["subject"], to=spec["to"], headers=spec["headers"],
                        text=spec["text"], html=spec["html"])
            for data, filename, content_type in spec["attachments"]:
                mail.attach(data, filename=filename or None, content_type=content_type)
        except ValueError as exc:  # the builder refuses at once: same rules as send()
            tally.counts["bad_inputs"] += 1
            tally.counts["held"] += 1
            assert may_refuse and names_culprit(exc, culprits), exc
            return
        outcome = harness.send(mail, mode, utf8)
        tally.add(outcome)
        assert outcome.lost == 0
        if outcome.refused is not None:
            assert isinstance(outcome.refused, ValueError), repr(outcome.refused)
            assert may_refuse and names_culprit(outcome.refused, culprits), outcome.refused
            return
        check_transcripts(outcome)
        if not check_held(outcome, utf8):
            check_mail_arrived(spec, outcome)

    example()
    tally.record("Mail builder: random headers, names, bodies, attachments, addresses")
    assert tally["lost"] == 0


# -- EmailMessage and legacy Message --------------------------------------------------------

@st.composite
def email_message_inputs(draw):
    bad = dirty(draw)
    text = header_value if bad else clean_header_value
    to = draw(st.lists(st.tuples((display_name if bad else clean_display_name).filter(
        lambda t: "=?" not in t), good_address | bad_address if bad else good_address),
        min_size=1, max_size=3))
    envelope = draw(st.none() | st.lists(good_address | bad_address if bad else good_address,
                                         min_size=1, max_size=2))
    # (no "=?" text here: in the caller's own message it is the email package's
    # business -- it decodes such text when it is set, and its decoders add or
    # drop a space next to an encoded word; the Mail property covers "=?" text)
    text = text.filter(lambda t: "=?" not in t)
    return {"kind": draw(st.sampled_from(["EmailMessage", "Message"])), "to": to,
            "headers": draw(st.lists(st.tuples(valid_header_name if not bad else header_name,
                                               text), max_size=3)),
            "text": draw(body_text), "html": draw(st.none() | body_text),
            "attachments": draw(st.lists(clean_attachment.filter(lambda a: "=?" not in a[1]),
                                         max_size=2)),
            "envelope": envelope}


def build_email_message(spec):
    """The message as a caller would build it; ``None`` when the email package
    itself refuses a value (in the caller's code, before any send)."""
    import email.message

    to = ", ".join(email.utils.formataddr((n, a)) if a.isascii()
                   else f'"{email.utils.quote(n)}" <{a}>' if n else a for n, a in spec["to"])
    try:
        if spec["kind"] == "EmailMessage":
            msg = email.message.EmailMessage()
            msg["To"] = to
            for name, value in spec["headers"]:
                msg[name] = value
            msg.set_content(spec["text"])
            if spec["html"] is not None:
                msg.add_alternative(spec["html"], subtype="html")
            for data, filename, content_type in spec["attachments"]:
                maintype, subtype = content_type.split("/")
                msg.add_attachment(data, maintype=maintype, subtype=subtype,
                                   filename=filename or None)
        else:
            msg = email.message.Message()
            msg["To"] = to
            for name, value in spec["headers"]:
                msg[name] = value
            body = spec["text"]
            msg.set_payload(body, None if body.isascii() else "utf-8")
        return msg
    except (ValueError, TypeError, IndexError, email.errors.MessageError):
        return None


def caller_mailboxes(msg):
    """The To mailboxes as the email package reads the caller's own message."""
    value = msg["To"]
    if hasattr(value, "addresses"):
        return [(phrase(a.display_name), idna_address(a.addr_spec)) for a in value.addresses]
    return [(phrase(decoded(n) if "=?" in n else n), idna_address(a))
            for n, a in email.utils.getaddresses([value])]


def check_email_message_arrived(spec, msg, outcome):
    """What arrived reads like the caller's message object: the same headers
    (decoded, none added), the To mailboxes as given (or as the email package
    itself reads them), the same text, HTML and attachments."""
    [got] = outcome.received
    back, raw = read_back(got.data), raw_headers(got.data)
    ours = GENERATED | {"to", "bcc"}
    given = [(n.lower(), decoded(v) if isinstance(msg, EmailMessage) is False else str(v))
             for n, v in msg.items() if n.lower() not in ours]
    arrived_headers = [(n.lower(), decoded(v)) for n, v in raw if n.lower() not in ours]
    assert sorted((n, v.strip()) for n, v in arrived_headers) == \
        sorted((n, v.strip()) for n, v in given)
    [to] = [v for n, v in raw if n == "To"]
    arrived = [(phrase(n), idna_address(a)) for n, a in mailboxes(to)]
    assert arrived in ([(phrase(n), idna_address(a)) for n, a in spec["to"]],
                       caller_mailboxes(msg)), (arrived, spec["to"])
    if isinstance(msg, EmailMessage):
        for kind in ("plain", "html"):
            part = msg.get_body((kind,))
            if part is not None:
                assert eol(back.get_body((kind,)).get_content()) == eol(part.get_content())
        assert [(a.get_filename(), a.get_content()) for a in back.iter_attachments()] == \
            [(a.get_filename(), a.get_content()) for a in msg.iter_attachments()]
    else:
        # (SMTP data ends with a line break: one may be added at the end)
        assert eol(back.get_payload(decode=True).decode("utf-8")).rstrip("\n") == \
            eol(msg.get_payload(decode=True).decode("utf-8")).rstrip("\n")


def test_email_message_round_trips_or_is_refused(harness):
    tally = Tally()

    @examples(150, 3000)
    @given(spec=email_message_inputs(), mode=st.sampled_from(["queue", "direct"]),
           utf8=st.booleans())
    def example(spec, mode, utf8):
        msg = build_email_message(spec)
        if msg is None:  # the email package refused it in the caller's code
            tally.counts["bad_inputs"] += 1
            tally.counts["held"] += 1
            return
        envelope = spec["envelope"]
        args = ("sender@example.org", envelope) if envelope else None
        outcome = harness.send(msg, mode, utf8, args=args)
        tally.add(outcome)
        assert outcome.lost == 0
        addresses = [a for _, a in spec["to"]] + (envelope or [])
        if outcome.refused is not None:
            filenames = [f for _, f, _ in spec["attachments"]]
            culprits = [n for n, _ in spec["headers"]] + ["To", "Content-Disposition"] + \
                addresses
            assert isinstance(outcome.refused, ValueError), repr(outcome.refused)
            names = [n for n, _ in spec["to"]]
            raw_breaks = spec["kind"] == "Message" and any(  # a legacy value is raw text
                c in LINE_BREAKS for c in "".join(names + [v for _, v in spec["headers"]]))
            assert raw_breaks or questionable(spec["headers"] + [("To", "")], addresses, names,
                                              filenames), outcome.refused
            assert names_culprit(outcome.refused, culprits), outcome.refused
            return
        check_transcripts(outcome)
        if not check_held(outcome, utf8):
            if envelope:
                assert sorted(map(idna_address, outcome.received[0].rcpt_tos)) == \
                    sorted(set(map(idna_address, envelope)))
            check_email_message_arrived(spec, msg, outcome)

    example()
    tally.record("EmailMessage / legacy Message: random headers, bodies, attachments, "
                 "envelopes")
    assert tally["lost"] == 0


# -- pyramid_mailer's Message ------------------------------------------------------------

@st.composite
def pyramid_mailer_inputs(draw):
    bad = dirty(draw)
    text = (header_value if bad else clean_header_value).filter(lambda t: "=?" not in t)
    address = good_address | bad_address if bad else good_address
    return {"subject": draw(text), "sender": draw(st.none() | good_address),
            "recipients": draw(st.lists(address, min_size=1, max_size=2)),
            "cc": draw(st.lists(address, max_size=1)), "bcc": draw(st.lists(address, max_size=1)),
            "extra_headers": draw(st.dictionaries(valid_header_name, text, max_size=2)),
            # (pyramid_mailer refuses an empty body: "No data provided to attachment")
            "body": draw(body_text.filter(bool)), "html": draw(st.none() | body_text.filter(bool)),
            "attachments": draw(st.lists(st.tuples(
                st.binary(min_size=1, max_size=2000),
                st.from_regex(r"[A-Za-z0-9_-]{1,20}\.(bin|dat)", fullmatch=True)), max_size=2))}


def pyramid_mailer_bodies(message):
    """``{"plain": text, "html": text}`` of the message pyramid_mailer itself builds
    (its quoted-printable encoder reads a bare CR its own way)."""
    import copy

    message = copy.copy(message)
    message.sender = message.sender or "sender@example.org"
    found = {}
    for part in message.to_message().walk():
        kind = part.get_content_subtype()
        if part.get_content_maintype() == "text" and kind in ("plain", "html") and \
                part.get_content_disposition() != "attachment" and kind not in found:
            found[kind] = part.get_payload(decode=True).decode(part.get_content_charset())
    return found


def test_pyramid_mailer_message_round_trips_or_is_refused(harness):
    from pyramid_mailer.exceptions import InvalidMessage
    from pyramid_mailer.message import Attachment, Message

    tally = Tally()

    @examples(80, 1500)
    @given(spec=pyramid_mailer_inputs(), mode=st.sampled_from(["queue", "direct"]),
           utf8=st.booleans())
    def example(spec, mode, utf8):
        message = Message(subject=spec["subject"], sender=spec["sender"],
                          recipients=spec["recipients"], cc=spec["cc"], bcc=spec["bcc"],
                          extra_headers=spec["extra_headers"], body=spec["body"],
                          html=spec["html"], attachments=[
                              Attachment(name, "application/octet-stream", data)
                              for data, name in spec["attachments"]])
        outcome = harness.send(message, mode, utf8)
        tally.add(outcome)
        assert outcome.lost == 0
        addresses = spec["recipients"] + spec["cc"] + spec["bcc"]
        if outcome.refused is not None:
            headers = [("Subject", spec["subject"]), *spec["extra_headers"].items()]
            if isinstance(outcome.refused, InvalidMessage):  # pyramid_mailer's own check
                assert not spec["body"] and not spec["html"], outcome.refused
                return
            assert isinstance(outcome.refused, ValueError), repr(outcome.refused)
            breaks = any(c in LINE_BREAKS for _, v in headers for c in v)  # raw values
            assert breaks or questionable(headers, addresses), outcome.refused
            assert names_culprit(outcome.refused, [n for n, _ in headers] +
                                 ["To", "Cc", "Bcc", "pyramid_mailer Message"] + addresses)
            return
        check_transcripts(outcome)
        if check_held(outcome, utf8):
            return
        [got] = outcome.received
        raw, back = raw_headers(got.data), read_back(got.data)
        ours = GENERATED | {"to", "cc", "subject", "content-disposition"}  # (inline body)
        assert sorted(n.lower() for n, _ in raw if n.lower() not in ours) == \
            sorted(n.lower() for n, v in spec["extra_headers"].items() if v)  # (empty: left out)
        # (pyramid_mailer leaves out an empty Subject)
        assert decoded(dict(raw).get("Subject", "")).strip() == spec["subject"].strip()
        assert sorted(map(idna_address, got.rcpt_tos)) == \
            sorted(set(map(idna_address, addresses)))
        for kind, text in pyramid_mailer_bodies(message).items():  # as it writes them
            assert eol(back.get_body((kind,)).get_content()).rstrip("\n") == \
                eol(text).rstrip("\n")
        assert [(a.get_filename(), a.get_content()) for a in back.iter_attachments()] == \
            [(name, data) for data, name in spec["attachments"]]

    example()
    tally.record("pyramid_mailer Message: random subjects, headers, bodies, recipients")
    assert tally["lost"] == 0


# -- defects the properties found, pinned ---------------------------------------------------

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


def test_an_encoded_line_break_in_a_legacy_address_header_names_the_header(harness):
    """Was: ValueError('invalid arguments; address parts cannot contain CR or LF')
    out of send(), naming no header: a legacy To whose encoded-word display name
    decodes to a line break, written for a UTF-8 mailbox."""
    import email.message

    from pyramid_txmail import HeaderInjection

    legacy = email.message.Message()
    legacy["To"] = "jörg@example.com, jörg@example.com, " + email.utils.formataddr(
        ("000\xa0\xa0\xa0\xa0\xa0\nBcc: victim@example.com", "a@example.com"))
    legacy.set_payload("t")
    refused = harness.send(legacy, "queue").refused
    assert isinstance(refused, HeaderInjection) and str(refused).startswith("To:"), refused
