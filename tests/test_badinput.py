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
DATA, one MAIL transaction per message (no SMTP smuggling).  Smuggling, queue
files and very large messages: tests/test_badinput_wire.py; each defect found,
pinned: tests/test_badinput_found.py.
"""
from __future__ import annotations

import email.errors
import email.policy
import email.utils
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyramid_txmail import Mail
from pyramid_txmail.compose.message import LINE_BREAKS

from .badinput_pinned import EMAIL_MESSAGE, MAIL, PYRAMID_MAILER, pinned, pinned_detail
from .badinput_strategies import (attachment, bad_address, body_text, check_held,
                                  clean_attachment, clean_display_name, clean_header_value,
                                  dirty, display_name, eol, good_address, header_name,
                                  header_value, names_culprit, phrase, questionable,
                                  valid_header_name)
from .badinput_support import (GENERATED, Tally, check_transcripts, decoded, examples,
                               filename_of, idna_address, mailboxes, module_harness,
                               raw_headers, read_back, unfold)

pytestmark = pytest.mark.reliability


harness = module_harness("badinput")


# -- the Mail builder ---------------------------------------------------------------------

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
    names = sorted(n.lower() for n, _ in raw if n.lower() not in GENERATED)
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
    found = [(filename_of(a), a.get_payload(decode=True)) for a in msg.iter_attachments()
             if a.get_content_disposition() == "attachment"]
    assert found == [(name or None, data) for data, name, _ in spec["attachments"]]


@pytest.mark.property
def test_mail_builder_round_trips_or_is_refused(harness):
    tally = Tally()

    @examples(150, 3000)
    @given(spec=mail_inputs(), mode=st.sampled_from(["queue", "direct"]), utf8=st.booleans())
    @pinned(MAIL)
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
    tally.record("Mail builder: random headers, names, bodies, attachments, addresses",
                 pinned_detail(MAIL))
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
    # (a legacy value is raw text: "0\n 0" is folded, and means "0 0" -- RFC 5322 2.2.3)
    given = [(n.lower(), str(v) if isinstance(msg, EmailMessage) else decoded(unfold(v)))
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
        assert [(filename_of(a), a.get_content()) for a in back.iter_attachments()] == \
            [(filename_of(a), a.get_content()) for a in msg.iter_attachments()]
    else:
        # (SMTP data ends with a line break: one may be added at the end)
        assert eol(back.get_payload(decode=True).decode("utf-8")).rstrip("\n") == \
            eol(msg.get_payload(decode=True).decode("utf-8")).rstrip("\n")


@pytest.mark.property
def test_email_message_round_trips_or_is_refused(harness):
    tally = Tally()

    @examples(150, 3000)
    @given(spec=email_message_inputs(), mode=st.sampled_from(["queue", "direct"]),
           utf8=st.booleans())
    @pinned(EMAIL_MESSAGE)
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
                 "envelopes", pinned_detail(EMAIL_MESSAGE))
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


@pytest.mark.property
def test_pyramid_mailer_message_round_trips_or_is_refused(harness):
    from pyramid_mailer.exceptions import InvalidMessage
    from pyramid_mailer.message import Attachment, Message

    tally = Tally()

    @examples(80, 1500)
    @given(spec=pyramid_mailer_inputs(), mode=st.sampled_from(["queue", "direct"]),
           utf8=st.booleans())
    @pinned(PYRAMID_MAILER)
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
    tally.record("pyramid_mailer Message: random subjects, headers, bodies, recipients",
                 pinned_detail(PYRAMID_MAILER))
    assert tally["lost"] == 0
