"""pyramid_txmail.compose.wire: CRLF, 998-octet lines, 7/8-bit, SMTPUTF8 detection."""
from __future__ import annotations

import base64
import email
import email.policy
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyramid_txmail.compose.wire import MAX_LINE, has_8bit, needs_smtputf8, to_wire


def parse(data):
    return email.message_from_bytes(data, policy=email.policy.default)


def lines_of(data):
    assert data.count(b"\r") == data.count(b"\r\n") == data.count(b"\n"), "not CRLF-only"
    return data.split(b"\r\n")


def assert_wire(data, eightbit=True):
    lines = lines_of(data)
    assert max(map(len, lines)) <= MAX_LINE
    if not eightbit:
        assert data.isascii()


def eol(text):
    """Text with every line break as LF (MIME text line breaks are CRLF)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def unfold(value):
    """RFC 5322 unfolding: drop each CRLF that is followed by whitespace."""
    return re.sub(r"\r\n(?=[ \t])", "", value)


HEAD = (b"From: a@example.com\nTo: b@example.com\nSubject: hi\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n")


# -- line endings and the fast path -------------------------------------------

def test_mixed_line_endings_become_crlf():
    data = b"A: 1\nB: 2\r\nC: 3\rD: 4\r\r\nbody\n\nx\r\ry"
    assert to_wire(data) == b"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\nbody\r\n\r\nx\r\n\r\ny"


def test_fast_path_does_not_reparse():
    # Odd but legal formatting that a parse + regenerate would change.
    data = b"Subject:no space\r\nX-Folded: a\r\n\tb\r\nFrom: a@example.com\r\n\r\nbody\r\n"
    assert to_wire(data) == data
    assert to_wire(data.replace(b"\r\n", b"\n")) == data


def test_eightbit_short_lines_pass_unchanged_when_8bitmime():
    data = (HEAD + b"\n" + "h\u00e9llo w\u00f6rld\n".encode()).replace(b"\n", b"\r\n")
    assert to_wire(data) == data


def test_7bit_message_is_unchanged_without_8bitmime():
    data = b"From: a@example.com\r\nSubject: x\r\n\r\nplain ascii\r\n"
    assert to_wire(data, eightbit=False) == data


def test_rejects_str():
    with pytest.raises(TypeError):
        to_wire("From: a@example.com\n\nbody\n")


def test_accepts_bytearray():
    assert to_wire(bytearray(b"A: 1\n\nb\n")) == b"A: 1\r\n\r\nb\r\n"


# -- headers ------------------------------------------------------------------

def test_long_header_is_folded_at_whitespace_and_unfolds_to_the_original():
    subject = " ".join(f"word{i}" for i in range(400))
    data = f"From: a@example.com\nSubject: {subject}\n\nbody\n".encode()
    out = to_wire(data)
    assert_wire(out)
    head = out.split(b"\r\n\r\n")[0].decode()
    assert unfold(head) == f"From: a@example.com\r\nSubject: {subject}"
    assert str(parse(out)["Subject"]) == subject
    assert max(map(len, head.split("\r\n"))) <= 80
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_long_header_without_whitespace_is_refolded():
    token = "x" * 1500
    data = f"From: a@example.com\nX-Token: {token}\nSubject: ok\n\nbody\n".encode()
    out = to_wire(data)
    assert_wire(out)
    message = parse(out)
    assert str(message["X-Token"]) == token
    assert str(message["Subject"]) == "ok"
    assert message.get_content() == "body\n".replace("\n", "\r\n")


# -- bodies ---------------------------------------------------------------------

def test_long_text_line_is_quoted_printable_and_other_headers_kept():
    text = "caf\u00e9 " * 400 + "\nsecond line\n"
    data = HEAD + b"\n" + text.encode()
    out = to_wire(data)
    assert_wire(out)
    message = parse(out)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    head = out.split(b"\r\n\r\n")[0]
    assert head == HEAD.replace(b"8bit", b"quoted-printable").replace(b"\n", b"\r\n")[:-2]
    assert eol(message.get_content()) == text


def test_non_mime_message_with_long_line_gets_mime_version():
    data = b"From: a@example.com\nSubject: x\n\n" + b"a" * 2000 + b"\n"
    out = to_wire(data)
    assert_wire(out)
    message = parse(out)
    assert message["MIME-Version"] == "1.0"
    assert eol(message.get_content()) == "a" * 2000 + "\n"


def multipart(text_part, attachment_part, boundary="=-=-b0und4ry-=-="):
    return (b"From: a@example.com\nTo: b@example.com\nSubject: parts\nMIME-Version: 1.0\n"
            b'Content-Type: multipart/mixed; boundary="' + boundary.encode() + b'"\n\n'
            b"preamble\n--" + boundary.encode() + b"\n" + text_part + b"\n--"
            + boundary.encode() + b"\n" + attachment_part + b"\n--" + boundary.encode()
            + b"--\n")


def test_only_the_part_that_needs_it_is_reencoded():
    blob = bytes(range(256)) * 20
    text = "short h\u00e9llo\n".encode()
    data = multipart(
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + text,
        b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
        b'Content-Disposition: attachment; filename="b.bin"\n\n'
        + base64.b64encode(blob))  # one 6828-octet line
    out = to_wire(data)
    assert_wire(out)
    assert text.replace(b"\n", b"\r\n") in out  # 8-bit text part untouched
    message = parse(out)
    body = message.get_body(("plain",))
    assert body["Content-Transfer-Encoding"] == "8bit"
    assert eol(body.get_content()) == text.decode()
    (attachment,) = message.iter_attachments()
    assert attachment.get_content() == blob
    assert attachment.get_filename() == "b.bin"


def test_without_8bitmime_bodies_become_7bit():
    blob = bytes(b for b in range(256) if b not in (10, 13)) * 3
    text = "gr\u00fc\u00dfe\n"
    data = multipart(
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        + text.encode(),
        b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: 8bit\n\n" + blob)
    assert to_wire(data, eightbit=True).count(b"\r\n") > 5  # fast path keeps 8 bit
    assert has_8bit(to_wire(data, eightbit=True))
    out = to_wire(data, eightbit=False)
    assert_wire(out, eightbit=False)
    message = parse(out)
    body = message.get_body(("plain",))
    assert body["Content-Transfer-Encoding"] == "quoted-printable"
    assert eol(body.get_content()) == text
    (attachment,) = message.iter_attachments()
    assert attachment["Content-Transfer-Encoding"] == "base64"
    assert attachment.get_content() == blob


# -- helpers ----------------------------------------------------------------------

def test_has_8bit():
    assert not has_8bit(b"plain")
    assert has_8bit("\u00e9".encode())


@pytest.mark.parametrize("fromaddr,toaddrs,data,expected", [
    ("a@example.com", ["b@example.com"], None, False),
    ("\u00e4@example.com", ["b@example.com"], None, True),
    ("a@example.com", ["b@b\u00fccher.example"], None, True),
    ("", ["b@example.com"], None, False),
    ("a@example.com", ["b@example.com"], b"Subject: x\n\nbody h\xc3\xa9\n", False),
    ("a@example.com", ["b@example.com"], b"Subject: h\xc3\xa9\n\nbody\n", True),
    ("a@example.com", ["b@example.com"], b"Subject: x\r\rbody h\xc3\xa9\n", False),
    ("a@example.com", ["b@example.com"], b"\nbody h\xc3\xa9\n", False),
])
def test_needs_smtputf8(fromaddr, toaddrs, data, expected):
    assert needs_smtputf8(fromaddr, toaddrs, data) is expected


# -- properties -----------------------------------------------------------------

line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                    max_size=40)
long_line = st.builds(lambda a, n: a * n, line_text.filter(bool), st.integers(1, 120))
breaks = st.sampled_from(["\n", "\r\n", "\r"])
body_text = st.lists(st.tuples(st.one_of(line_text, long_line), breaks), max_size=12).map(
    lambda pairs: "".join(text + br for text, br in pairs))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=body_text, eightbit=st.booleans(),
       subject=st.lists(st.from_regex(r"[A-Za-z0-9]{1,30}", fullmatch=True), max_size=300))
def test_text_message_property(text, eightbit, subject):
    subject = " ".join(subject) or "x"
    data = (b"From: a@example.com\nSubject: " + subject.encode() + b"\nMIME-Version: 1.0\n"
            b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            + text.encode("utf-8"))
    out = to_wire(data, eightbit=eightbit)
    assert_wire(out, eightbit)
    before, after = parse(data), parse(out)
    assert str(after["Subject"]) == str(before["Subject"]) == subject
    assert eol(after.get_content()) == eol(before.get_content())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=body_text, blob=st.binary(max_size=3000), eightbit=st.booleans(),
       raw_attachment=st.booleans())
def test_multipart_property(text, blob, eightbit, raw_attachment):
    if raw_attachment:  # 8-bit bytes straight in the message; CR/LF would be line breaks
        blob = blob.replace(b"\r", b"").replace(b"\n", b"")
        attachment = (b"Content-Type: application/octet-stream\n"
                      b"Content-Transfer-Encoding: 8bit\n\n" + blob)
    else:  # base64 in a single line, as some generators write it
        attachment = (b"Content-Type: application/octet-stream\n"
                      b"Content-Transfer-Encoding: base64\n\n" + base64.b64encode(blob))
    data = multipart(b"Content-Type: text/plain; charset=utf-8\n"
                     b"Content-Transfer-Encoding: 8bit\n\n" + text.encode(), attachment)
    out = to_wire(data, eightbit=eightbit)
    assert_wire(out, eightbit)
    before, after = parse(data), parse(out)
    assert eol(after.get_body(("plain",)).get_content()) == \
        eol(before.get_body(("plain",)).get_content())
    (attachment_before,) = before.iter_attachments()
    (attachment_after,) = after.iter_attachments()
    assert attachment_after.get_content() == attachment_before.get_content() == blob


# -- the DATA section, streamed --------------------------------------------------------

from pyramid_txmail.compose import wire  # noqa: E402
from pyramid_txmail.compose.wire import data_section  # noqa: E402


def _smtplib_data(message):
    """What smtplib's ``data()`` sends for CRLF-normalised ``message``."""
    import smtplib

    quoted = smtplib._quote_periods(wire._crlf(message))
    if not quoted.endswith(b"\r\n"):
        quoted += b"\r\n"
    return quoted + b".\r\n"


@given(message=st.binary(max_size=400).filter(bool)
       | st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"x" * 9]),
                  min_size=1, max_size=40).map(b"".join),
       cuts=st.lists(st.integers(0, 400), max_size=6), blocksize=st.integers(1, 64))
def test_data_section_in_any_chunks_equals_smtplib_and_cannot_end_early(message, cuts,
                                                                        blocksize):
    points = sorted({c for c in cuts if c <= len(message)})
    chunks = [message[a:b] for a, b in zip([0] + points, points + [len(message)])]
    sent = b"".join(data_section(chunks, blocksize=blocksize))
    assert sent == _smtplib_data(message)
    # the only CRLF.CRLF is the terminator: a body cannot end DATA early
    assert sent.find(b"\r\n.\r\n") in (len(sent) - 5, -1) or sent == b".\r\n"
    assert (b"\r\n" + sent).count(b"\r\n.\r\n") == 1
