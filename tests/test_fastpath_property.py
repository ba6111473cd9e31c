"""Property: the enqueue fast path (compose/headblock.py) gives what the stdlib path gives.

``prepare(msg)`` tries the fast path first; ``prepare(msg, fast=False)`` is the
``email`` package's path, the reference.  For generated messages of every
kind ``send`` takes -- EmailMessage, legacy ``Message``, pyramid_mailer
``Message``, the builder's ``Mail`` -- with well-formed headers and, mixed in,
the bad-input strategies' values (controls, encoded-word look-alikes,
non-ASCII, long runs), both calls must end alike: the same envelope, the same
Message-ID and the same bytes, or the same error.  So the fast path never
accepts what the stdlib path refuses, and never writes other bytes.

Message-ID and Date are made fixed for the comparison (both paths call
``email.utils.make_msgid`` / ``formatdate``), and multipart boundaries, which
are random in both, are compared as placeholders.

Messages may carry attachments, so that a multipart part is nested in
another (body + html + attachment): the fast path once left the boundaries
it gave nested parts on a legacy message, which the stdlib path then wrote
unfolded (84 columns where the reference folds at 78) once a non-ASCII
mailbox made the message SMTPUTF8 -- a pyramid_mailer ``Message`` with
``body=``, ``html=`` and an attachment (poison2 finding 2).
"""
from __future__ import annotations

import email.utils
import re
from contextlib import contextmanager
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from unittest import mock

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from pyramid_mailer.message import Attachment as PyramidMailerAttachment
from pyramid_mailer.message import Message as PyramidMailerMessage

from pyramid_txmail.builder import Mail
from pyramid_txmail.compose import headblock, textpart
from pyramid_txmail.compose import message as compose

from .badinput_strategies import SPECIALS, header_value, valid_header_name
from .badinput_support import examples

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
ODD_LOCAL = ["jane", "a.b", "o'brien", "x+tag", "=?x?q?a?=", "jörg", '"a,b"', "a..b", ".a"]
ODD_DOMAIN = ["Example.ORG", "bücher.example", "xn--bcher-kva.example", "localhost",
              "[127.0.0.1]", "-x-.com", "a" * 70 + ".example.com"]
ODD_DISPLAY = ['"Doe, Jane"', '"Jane  Doe"', '""', "J. Doe", "Jörg Müller",
               "=?utf-8?q?J=C3=B6rg?=", "(comment) Jane", '"a\\"b"', "x" * 80, "Jane (x)"]
ODD_LIST = ["", "undisclosed-recipients:;", "a@example.com,b@example.com",
            "a@example.com,\n b@example.com", "a@example.com, ", "<a@example.com>"]


def mostly(plain, odd):
    """``plain`` four times in five, else one of ``odd`` (a strategy or values)."""
    odd = odd if isinstance(odd, st.SearchStrategy) else st.sampled_from(odd)
    return st.integers(0, 4).flatmap(lambda i: odd if i == 0 else plain)


clean_address = st.builds(lambda lp, dom: f"{lp}@{dom}",
                          st.text(st.sampled_from(ATEXT), min_size=1, max_size=10),
                          st.sampled_from(["example.com", "mail.example.co.uk", "example.org"]))
words = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,8}( [A-Za-z0-9'-]{1,8}){0,3}",
                      fullmatch=True)
clean_mailbox = clean_address | st.builds(lambda d, a: f"{d} <{a}>",
                                          words | st.just('"Doe, Jane"'), clean_address)
clean_list = st.lists(clean_mailbox, min_size=1, max_size=3).map(", ".join)
clean_subject = st.from_regex(r"[ -~]{0,70}", fullmatch=True)

local = mostly(st.text(st.sampled_from(ATEXT), min_size=1, max_size=10), ODD_LOCAL)
domain = mostly(st.sampled_from(["example.com", "mail.example.co.uk", "example.org"]),
                ODD_DOMAIN)
address = st.builds(lambda lp, dom: f"{lp}@{dom}", local, domain)
display = mostly(words, st.sampled_from(ODD_DISPLAY) | st.text(max_size=6))
mailbox = st.one_of(address, st.builds(lambda d, a: f"{d} <{a}>", display, address))
address_list = mostly(st.lists(mailbox, min_size=1, max_size=3).map(", ".join), ODD_LIST)
subject = mostly(clean_subject, st.sampled_from(SPECIALS) | header_value)
body = st.sampled_from(["Hello\n", "Hello\r\nworld\r\n", "Grüße\n", "x" * 1200 + "\n", "",
                        "From me\n.\n", "line\rbare cr\n"])
EXTRA_NAMES = ["Message-ID", "Date", "Sender", "Reply-To", "X-Actually-To", "Resent-From",
               "MIME-Version"]
EXTRA_VALUES = ["<a.b@example.com>", "Wed, 02 Dec 2026 02:44:39 +0000", "1.0",
                "  Spaced  out  "]
extra = st.lists(st.tuples(valid_header_name | st.sampled_from(EXTRA_NAMES),
                           subject | address_list | st.sampled_from(EXTRA_VALUES)), max_size=3)
clean_extra = st.lists(st.tuples(valid_header_name, clean_subject), max_size=2)
envelope = mostly(st.none(), st.tuples(st.none() | address, st.none() | st.lists(address,
                                                                                 max_size=2)))
KINDS = ("email", "legacy", "pyramid_mailer", "mail")
#: Headers a message has at most one of (policy.header_max_count), and one it may repeat.
REPEATED = ["To", "From", "Cc", "Bcc", "Reply-To", "Sender", "Subject", "Date", "Message-ID",
            "MIME-Version", "Content-Type", "X-Tag"]

_BOUNDARY = re.compile(rb"===============\d+==|=_[0-9a-f]{32}")
_MSGID = "<1764643479.4242.1234567890@{}>"
_DATE = "Wed, 02 Dec 2026 02:44:39 +0000"


@contextmanager
def fixed_id_and_date():
    with mock.patch("email.utils.make_msgid",
                    lambda idstring=None, domain=None: _MSGID.format(domain)), \
            mock.patch("email.utils.formatdate", lambda *args, **kwargs: _DATE):
        yield


#: ``(filename, content type, data)`` of an attachment (text, so every kind can take it)
ATTACHMENTS = [("a.txt", "text/plain", b"data\n"), ("r.pdf", "application/pdf", b"%PDF-1.4\n"),
               ("Grüße.txt", "text/plain", b"Gr\xc3\xbc\xc3\x9fe\n")]
attachments = st.lists(st.sampled_from(ATTACHMENTS), max_size=2)


def build(kind, headers, text, html, attached=()):
    """A message of ``kind`` with ``headers`` (name, value), ``text``, maybe ``html``
    and ``attached`` files (:data:`ATTACHMENTS`)."""
    if kind == "mail":
        # The first of each field the builder names goes to its keyword; every other
        # header -- a repeat of one of those too -- to headers=, as a list (a dict
        # would drop the repeats that Mail(headers=[("To", ...)]) can carry).
        keyword = {"Subject": "subject", "To": "to", "Cc": "cc", "Bcc": "bcc",
                   "From": "sender", "Reply-To": "reply_to"}
        fields, rest = {}, []
        for name, value in headers:
            if name in keyword and keyword[name] not in fields:
                fields[keyword[name]] = value if name == "Subject" else value or None
            else:
                rest.append((name, value))
        mail = Mail(headers=rest, text=text, html=html, **fields)
        for filename, content_type, data in attached:
            mail.attach(data, filename, content_type)
        return mail
    if kind == "pyramid_mailer":
        fields = dict(headers)
        return PyramidMailerMessage(
            subject=fields.pop("Subject", ""), sender=fields.pop("From", None),
            recipients=[fields.pop("To")] if fields.get("To") else [],
            cc=[fields.pop("Cc")] if fields.get("Cc") else [],
            bcc=[fields.pop("Bcc")] if fields.get("Bcc") else [],
            body=text, html=html, extra_headers=fields,
            attachments=[PyramidMailerAttachment(f, t, d) for f, t, d in attached])
    if kind == "legacy" and (html is not None or attached):
        message = _legacy_multipart(text, html, attached)
    else:
        message = EmailMessage() if kind == "email" else Message()
    for name, value in headers:
        message[name] = value
    if kind == "email":
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
        for filename, content_type, data in attached:
            maintype, _, subtype = content_type.partition("/")
            message.add_attachment(data, maintype, subtype, filename=filename)
    elif not message.is_multipart():
        message.set_payload(text)
    return message


def _legacy_multipart(text, html, attached):
    """A compat32 MIME tree as code written for pyramid_mailer's era builds one."""
    body = MIMEText(text)
    if html is not None:
        body = MIMEMultipart("alternative", _subparts=[body, MIMEText(html, "html")])
    if not attached:
        return body
    message = MIMEMultipart("mixed", _subparts=[body])
    for filename, content_type, data in attached:
        part = MIMEApplication(data, content_type.partition("/")[2])
        part.add_header("Content-Disposition", "attachment", filename=filename)
        message.attach(part)
    return message


def outcome(kind, headers, text, html, env, default_sender, fast, attached=()):
    """``("ok", envelope, Message-ID, bytes)`` or ``("error", type, text)`` of one
    prepare() of a freshly built message (building can refuse it too)."""
    return prepared_by(lambda: build(kind, headers, text, html, attached), env,
                       default_sender, fast)


def prepared_by(make, env, default_sender, fast):
    """:func:`outcome` of the message ``make()`` builds."""
    fromaddr, toaddrs = env if env is not None else (None, None)
    with fixed_id_and_date():
        try:
            message = make()
            prepared = compose.prepare(message, default_sender, fromaddr, toaddrs, fast=fast)
        except Exception as exc:  # noqa: BLE001 (pyramid_mailer's own refusals too)
            return ("error", type(exc), str(exc))
    data = prepared.data if isinstance(prepared.data, bytes) else b"".join(prepared.data)
    return ("ok", prepared.fromaddr, prepared.toaddrs, prepared.message_id,
            _BOUNDARY.sub(b"BOUNDARY", data))


def headers_of(draw, clean):
    """Headers of a message: well-formed ones when ``clean``, else with odd and bad
    values mixed in."""
    headers = []
    if draw(st.integers(0, 3)):
        headers.append(("From", draw(clean_mailbox if clean else mailbox)))
    headers.append(("To", draw(clean_list if clean else address_list)))
    for name in ("Cc", "Bcc", "Reply-To"):
        if draw(st.integers(0, 3)) == 0:
            headers.append((name, draw(clean_list if clean else address_list)))
    if draw(st.booleans()):
        headers.append(("Subject", draw(clean_subject if clean else subject)))
    headers.extend(draw(clean_extra if clean else extra))
    if draw(st.integers(0, 3)) == 0:  # a header repeated: the stdlib path's max_count rule
        name = draw(st.sampled_from(REPEATED))
        value = draw(st.sampled_from(EXTRA_VALUES) | (clean_list if clean else address_list))
        headers.insert(draw(st.integers(0, len(headers))), (name, value))
    return headers


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(KINDS))
    clean = draw(st.booleans())
    html = draw(st.none() | st.just("<p>Hello</p>\n"))
    return (kind, headers_of(draw, clean), draw(body), html,
            None if clean else draw(envelope),
            draw(clean_mailbox if clean else st.none() | mailbox), draw(attachments))


@examples(300, 3000)
@given(cases())
@example(("email", [("From", "Shop <shop@example.com>"), ("To", "jane@example.com"),
                    ("Subject", "Your order #100001 has shipped")], "Hello\n", None, None, None))
@example(("legacy", [("To", "a@example.com, B <b@example.com>")], "Hi\n", None, None,
          "shop@example.com"))
@example(("mail", [("To", "Jane <jane@example.com>"), ("Subject", "Hi")], "Hi\n",
          "<p>Hi</p>\n", None, "shop@example.com"))
@example(("email", [("To", "a@example.com"), ("Subject", "x  y")], "Hi\n", None,
          (None, ["b@example.com"]), "S <s@example.com>"))
@example(("mail", [("From", "a@example.com"), ("To", "x@example.com"), ("To", "b@example.com")],
          "hi\n", None, None, None))
@example(("mail", [("To", "x@example.com"), ("Subject", "s"), ("Subject", "t")], "hi\n", None,
          None, "a@example.com"))
@example(("mail", [("To", "x@example.com"), ("Message-ID", "<a@b.c>"),
                   ("Message-ID", "<d@e.f>")], "hi\n", None, None, "a@example.com"))
@example(("mail", [("To", "x@example.com"), ("Subject", "Grüße"), ("Subject", "t")], "hi\n",
          None, None, "a@example.com"))
@example(("mail", [("To", "x@example.com"), ("Subject", "s"), ("Subject", "Grüße")], "hi\n",
          None, None, "a@example.com"))
def test_fast_path_ends_as_the_stdlib_path_does(case):
    kind, headers, text, html, env, default_sender, *attached = case
    attached = attached[0] if attached else ()
    slow = outcome(kind, headers, text, html, env, default_sender, False, attached)
    taken, patches = _spy()
    with patches[0], patches[1]:
        fast = outcome(kind, headers, text, html, env, default_sender, True, attached)
    event(f"{kind}: {'fast path' if any(taken) else 'stdlib path'}, {fast[0]}"
          f"{', attachments' if attached else ''}")
    assert fast == slow


#: Non-ASCII mailboxes: each makes a message SMTPUTF8 (RFC 6531), wherever it is.
UTF8_MAILBOXES = ["jörg@example.com", "Jörg <jörg@example.com>", "shop@bücher.example",
                  "Bücher <info@bücher.example>"]
#: Where a non-ASCII mailbox goes: a header, the envelope, or the default sender.
UTF8_PLACES = ("From", "To", "Cc", "fromaddr", "toaddrs", "default_sender")


@st.composite
def nested_utf8_cases(draw):
    """A message of any kind whose text, html and attachments nest one multipart
    in another, with a non-ASCII mailbox in one of :data:`UTF8_PLACES`."""
    kind = draw(st.sampled_from(KINDS))
    place, utf8 = draw(st.sampled_from(UTF8_PLACES)), draw(st.sampled_from(UTF8_MAILBOXES))
    headers = [("From", draw(clean_mailbox)), ("To", draw(clean_list)),
               ("Subject", draw(clean_subject))]
    env, default_sender = None, draw(clean_mailbox)
    if place in ("From", "To", "Cc"):
        headers = [(n, v) for n, v in headers if n != place] + [(place, utf8)]
    elif place == "fromaddr":
        env = (utf8.rpartition("<")[2].rstrip(">"), None)
    elif place == "toaddrs":
        env = (None, [utf8.rpartition("<")[2].rstrip(">")])
    else:
        headers, default_sender = headers[1:], utf8
    attached = draw(st.lists(st.sampled_from(ATTACHMENTS), min_size=1, max_size=2))
    text = draw(st.sampled_from(["Hello\n", "Grüße\n"]))
    return kind, headers, text, "<p>Hello</p>\n", env, default_sender, attached


@examples(100, 1000)
@given(nested_utf8_cases())
@example(("pyramid_mailer", [("From", "s@example.org"), ("To", "rü@exämple.org"),
                             ("Subject", "hi")], "plain", "<p>html</p>", None, None,
          [("a.txt", "text/plain", b"data")]))
def test_nested_parts_of_an_smtputf8_message_as_on_the_stdlib_path(case):
    """body + html + attachments and a non-ASCII mailbox anywhere: every part's
    headers, nested ones too, are written as the stdlib path writes them."""
    kind, headers, text, html, env, default_sender, attached = case
    slow = outcome(kind, headers, text, html, env, default_sender, False, attached)
    fast = outcome(kind, headers, text, html, env, default_sender, True, attached)
    event(f"{kind}: {slow[0]}")
    assert fast == slow


@examples(300, 3000)
@given(st.lists(st.builds(lambda d, a: f"{d} <{a}>" if d else a,
                          st.none() | st.from_regex(
                              r'[A-Za-z0-9!#$%&\'*+/=?^_`{|}~-]+( [A-Za-z0-9.-]+){0,2}'
                              r'|"[ !#-\[\]-~]{0,10}"', fullmatch=True),
                          st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9]+){0,2}"
                                        r"@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+){0,2}",
                                        fullmatch=True)),
                min_size=1, max_size=4).map(", ".join))
def test_simple_addresses_are_what_getaddresses_finds(text):
    """The fast path's mailbox grammar reads the addresses the email package reads."""
    found = headblock.simple_addresses(text)
    if found is not None:
        assert found == [addr for _, addr in email.utils.getaddresses([text])]


def _spy():
    taken = []

    def wrap(function):
        def spy(*args, **kwargs):
            result = function(*args, **kwargs)
            taken.append(result is not None)
            return result
        return spy

    patches = [mock.patch.object(compose, name, wrap(getattr(compose, name)))
               for name in ("_fast_message", "_fast_mail")]
    return taken, patches


COMMON = [(kind, html, text) for kind in KINDS for html in (None, "<p>Hello</p>\n")
          for text in ("Hello,\n\nyour parcel left today.\n", "Grüße aus Köln\n")
          if kind != "legacy" or html is None and text.isascii()]  # legacy: one ASCII part


@pytest.mark.parametrize("kind, html, text", COMMON)
def test_common_messages_take_the_fast_path(kind, html, text):
    """Plain notifications -- ASCII headers, simple mailboxes, any body -- do not
    pay the header registry (and give the stdlib path's bytes)."""
    headers = [("From", "Shop <shop@example.com>"), ("To", "Jane Doe <jane@example.com>"),
               ("Subject", "Your order #100001 has shipped")]
    taken, patches = _spy()
    for patch in patches:
        patch.start()
    try:
        fast = outcome(kind, headers, text, html, None, None, fast=True)
    finally:
        for patch in patches:
            patch.stop()
    assert taken and taken[-1] is True
    assert fast == outcome(kind, headers, text, html, None, None, fast=False)
    assert fast[0] == "ok"


@examples(300, 3000)
@given(st.lists(st.sampled_from(list("ab \t.\r\n\x0b\x0c\x1cé=") + ["x" * 78, "y" * 79]),
                max_size=12).map("".join) | st.text(max_size=30),
       st.sampled_from(["plain", "html"]))
def test_a_text_part_is_the_email_packages(text, subtype):
    """The builder's text part, its headers made once per encoding, has the headers
    and body that set_content gives it (7bit, quoted-printable and base64)."""
    made, reference = textpart.text_part(text, subtype), textpart.text_part_stdlib(text, subtype)
    assert [(n, str(v)) for n, v in made.headers.items()] == \
        [(n, str(v)) for n, v in reference.headers.items()]
    assert made.body == reference.body
    assert made.head_bytes() == reference.head_bytes()


def test_a_payload_the_generator_refuses_is_refused_as_the_stdlib_path_refuses_it():
    """The fast path writes the body before it checks the headers: an error of the
    body must not come before the stdlib path's header errors."""
    def make():
        message = Message()
        message["To"] = "not an address"
        message.set_payload(42)  # no text: the generator raises TypeError
        return message
    with pytest.raises(Exception) as slow:
        compose.prepare(make(), "shop@example.com", fast=False)
    with pytest.raises(Exception) as fast:
        compose.prepare(make(), "shop@example.com")
    assert (type(fast.value), str(fast.value)) == (type(slow.value), str(slow.value))


def people_strategy(text):
    """A builder argument naming people: ``text`` (a mailbox), an ``Address``, a
    ``(name, address)`` pair, or a list of these."""
    names = st.sampled_from(["", "Jane Doe", "Doe, Jane", "Jörg Müller", 'Say "hi"',
                             "=?utf-8?q?x?=", "x" * 80]) | words
    person = st.one_of(
        text, st.tuples(names, clean_address if text is clean_mailbox else address),
        st.builds(lambda name, local_part, dom: ("Address", name, local_part, dom),
                  st.sampled_from(["", "Jane", "Doe, Jane", "Grüße"]),
                  st.text(st.sampled_from(ATEXT), min_size=1, max_size=10),
                  st.sampled_from(["example.com", "example.org", "bücher.example"])))
    return person, st.none() | person | st.lists(person, min_size=1, max_size=3)


CLEAN_PEOPLE, ODD_PEOPLE = people_strategy(clean_mailbox), people_strategy(mailbox)
attachment = st.tuples(st.binary(max_size=300),
                       st.none() | st.sampled_from(["a.pdf", "Grüße.txt", "x" * 90 + ".png",
                                                    '"q".txt', "=?x?q?y?=.bin"]),
                       st.none() | st.sampled_from(["text/plain", "image/png"]))


def _person(item):
    """A drawn person as the builder takes it (``Address`` objects are made here)."""
    if isinstance(item, tuple) and item[0] == "Address":
        return Address(item[1], item[2], item[3])
    return item


def _people(value):
    return [_person(v) for v in value] if isinstance(value, list) else _person(value)


@st.composite
def mail_cases(draw):
    """Keyword arguments of a Mail, its attachments and inline part, an envelope and a
    default sender: every kind of value the builder takes, well-formed half the time."""
    clean = draw(st.booleans())
    person, people = CLEAN_PEOPLE if clean else ODD_PEOPLE
    found = {key: _people(draw(people)) for key in ("to", "cc", "bcc", "reply_to")}
    if clean and found["to"] is None:
        found["to"] = _people(draw(person))
    headers = draw(clean_extra if clean else extra)
    kwargs = dict(found, sender=_person(draw(st.none() | person)),
                  subject=draw(st.none() | (clean_subject if clean else subject)),
                  text=draw(st.none() | body), html=draw(st.none() | st.just("<p>Hi</p>\n")),
                  headers=dict(headers) if draw(st.booleans()) else headers)
    attachments = draw(st.lists(attachment, max_size=2))
    inline = draw(st.none() | st.binary(min_size=1, max_size=100))
    return (kwargs, attachments, inline, None if clean else draw(envelope),
            draw(clean_mailbox if clean else st.none() | clean_mailbox))


def make_mail(kwargs, attachments, inline):
    mail = Mail(**kwargs)
    for data, filename, content_type in attachments:
        mail.attach(data, filename, content_type)
    if inline is not None:
        mail.inline(inline, cid="logo@example.com", content_type="image/png")
    return mail


@examples(300, 3000)
@given(mail_cases())
@example(({"to": [("Jörg Müller", "jorg@example.com"), "b@example.com"],
           "sender": ("Shop", "shop@example.com"), "subject": "Hi", "text": "Hi\n",
           "html": "<p>Hi</p>\n", "headers": {"List-Unsubscribe": "<https://x.example/u>"}},
          [(b"%PDF", "a.pdf", None)], b"png", None, None))
def test_a_mail_ends_on_the_fast_path_as_on_the_stdlib_path(case):
    """Every input the builder takes -- addresses as text, ``Address`` objects and
    pairs, lists of them, headers as a dict or pairs, attachments, an inline part --
    gives the stdlib path's envelope, Message-ID and bytes, or its error."""
    kwargs, attachments, inline, env, default_sender = case

    def make():
        return make_mail(kwargs, attachments, inline)

    slow = prepared_by(make, env, default_sender, fast=False)
    taken, patches = _spy()
    with patches[0], patches[1]:
        fast = prepared_by(make, env, default_sender, fast=True)
    event(f"mail: {'fast path' if any(taken) else 'stdlib path'}, {fast[0]}")
    assert fast == slow


@pytest.mark.parametrize("now", [1764643479.25, 1764643479.9999996, 1764643480.0])
def test_the_date_stamp_is_formatdates_for_that_instant(now):
    """The fast path's Date, made once a second, is what ``formatdate`` makes at that
    instant -- also just before a second ends, where formatdate rounds into the next."""
    expected = email.utils.formatdate(now, localtime=True)
    with mock.patch.object(headblock.time, "time", lambda: now):
        assert headblock._date_stamp() == expected
        assert headblock._date_stamp() == expected  # remembered, or made again
    later = now + 1
    with mock.patch.object(headblock.time, "time", lambda: later):
        assert headblock._date_stamp() == email.utils.formatdate(later, localtime=True)
