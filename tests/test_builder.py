"""The message builder: structure, encodings, streamed attachments, validation.

Every message is parsed back with the ``email`` package (policy.default) and
compared with what went in; end to end it goes through the real spool, the
queue processor and an aiosmtpd server.
"""
from __future__ import annotations

import email
import email.header
import io
import os
import string
from email import policy
from email.headerregistry import Address

import pytest
import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyramid.config import Configurator

from pyramid_txmail import HeaderInjection, InvalidAddress, get_mailer
from pyramid_txmail.compose.builder import Mail, _encoded_words
from pyramid_txmail.compose.message import prepare
from pyramid_txmail.compose.mimeparts import BLOCK, AttachmentError, base64_size
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.relay.smtp import SMTPTransport
from pyramid_txmail.queue.maildir.spool import Spool, split_envelope
from pyramid_txmail.compose.wire import Stream

SENDER = "Sender <sender@example.org>"


def parse(data):
    if isinstance(data, Stream):
        data = b"".join(data)
    return email.message_from_bytes(data, policy=policy.default)


def structure(part):
    """The MIME tree as nested (content type, [children]) tuples."""
    if part.is_multipart():
        return (part.get_content_type(), [structure(p) for p in part.iter_parts()])
    return part.get_content_type()


def attachments(message):
    return [(a.get_filename(), a.get_content_type(), a.get_payload(decode=True))
            for a in message.iter_attachments()]


class NonSeekable(io.RawIOBase):
    """A pipe-like binary stream: no seek, short reads."""

    def __init__(self, data):
        self._data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        chunk = self._data.read(min(len(buffer), 1000))
        buffer[:len(chunk)] = chunk
        return len(chunk)


class CountingBytesIO(io.BytesIO):
    """Records the size of every read: proves a file is read block by block."""

    def __init__(self, data):
        super().__init__(data)
        self.reads = []

    def read(self, size=-1):
        self.reads.append(size)
        return super().read(size)


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "report.bin"
    path.write_bytes(os.urandom(3 * BLOCK + 1234))
    return path


def full_mail(big_file):
    mail = Mail(subject="Grüße – your report", to=["Jörg Müller <jorg@example.com>",
                                                  ("Ünal, Ayşe", "ayse@example.net")],
                cc=Address("Zoë", "zoe", "example.org"), bcc="hidden@example.com",
                reply_to="Support <support@example.org>", text="Hello Jörg,\nsee attached.\n",
                headers={"X-Campaign": "spring €", "List-Unsubscribe": "<https://x.test/u>"})
    logo = mail.inline(b"\x89PNG\r\n\x1a\nfake png", filename="logo.png")
    mail.html = f'<p>Hello Jörg, <img src="cid:{logo}"></p>\n'
    mail.attach(str(big_file), filename="Überweisung März.bin")
    seekable = io.BytesIO(b"HEADER|csv,data\n1,2\n")
    seekable.read(7)  # attached from where the caller left it
    mail.attach(seekable, filename="data.csv")
    mail.attach(NonSeekable(b"piped bytes " * 5000), filename="pipe.txt")
    return mail, logo


def test_structure_contents_and_names_round_trip(big_file):
    mail, logo = full_mail(big_file)
    prepared = prepare(mail, SENDER)
    assert isinstance(prepared.data, Stream)
    msg = parse(prepared.data)

    assert structure(msg) == ("multipart/mixed", [
        ("multipart/alternative", ["text/plain", ("multipart/related", ["text/html",
                                                                       "image/png"])]),
        "application/octet-stream", "text/csv", "text/plain"])
    assert msg["Subject"] == "Grüße – your report"
    assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [
        ("Jörg Müller", "jorg@example.com"), ("Ünal, Ayşe", "ayse@example.net")]
    assert msg["Cc"].addresses[0].display_name == "Zoë"
    assert msg["Reply-To"] == "Support <support@example.org>"
    assert msg["From"] == SENDER
    assert msg["X-Campaign"] == "spring €"
    assert msg["List-Unsubscribe"] == "<https://x.test/u>"
    assert msg["Bcc"] is None and b"hidden@" not in b"".join(prepared.data)
    assert msg["Message-ID"] == prepared.message_id and msg["Date"]
    assert prepared.toaddrs == ("jorg@example.com", "ayse@example.net", "zoe@example.org",
                                "hidden@example.com")
    assert prepared.fromaddr == "sender@example.org"

    assert msg.get_body(("plain",)).get_content() == "Hello Jörg,\nsee attached.\n"
    html = msg.get_body(("html",))
    assert html.get_content() == mail.html
    related = msg.get_body(("related",))
    image = list(related.iter_parts())[1]
    assert image["Content-ID"] == f"<{logo}>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == b"\x89PNG\r\n\x1a\nfake png"
    assert related.get_param("type") == "text/html"

    assert attachments(msg) == [
        ("Überweisung März.bin", "application/octet-stream", big_file.read_bytes()),
        ("data.csv", "text/csv", b"csv,data\n1,2\n"),
        ("pipe.txt", "text/plain", b"piped bytes " * 5000)]


def test_stream_is_re_iterable_sized_and_wire_clean(big_file):
    mail, _ = full_mail(big_file)
    stream = prepare(mail, SENDER).data
    first, second = b"".join(stream), b"".join(stream.factory())
    assert first == second  # a resend after a reconnect sends the same message
    assert stream.size == len(first)
    assert first.startswith(stream.head) and stream.head.endswith(b"\n\n")
    assert first.isascii() and b"\r" not in first
    assert max(map(len, first.split(b"\n"))) <= 78


def test_file_objects_are_read_block_by_block_not_whole():
    data = os.urandom(5 * BLOCK + 17)
    source = CountingBytesIO(data)
    mail = Mail(subject="big", to="a@example.com", text="x")
    mail.attach(source, filename="big.bin")
    prepared = prepare(mail, SENDER)
    assert isinstance(prepared.data, Stream)
    assert [n for n in source.reads if n != 0] == []  # nothing read by send()
    assert attachments(parse(prepared.data))[0][2] == data
    assert source.reads and max(source.reads) <= BLOCK


def test_base64_size_matches_encoder():
    import base64

    for n in [0, 1, 2, 3, 56, 57, 58, 114, 1000, BLOCK, BLOCK + 1]:
        assert base64_size(n) == len(base64.encodebytes(b"x" * n))


def test_in_memory_message_is_plain_bytes():
    mail = Mail(subject="Hi", to="a@example.com", text="plain only")
    mail.attach(b"\x00\x01binary", filename="a.bin")
    data = prepare(mail, SENDER).data
    assert isinstance(data, bytes)
    msg = parse(data)
    assert structure(msg) == ("multipart/mixed", ["text/plain", "application/octet-stream"])
    assert attachments(msg) == [("a.bin", "application/octet-stream", b"\x00\x01binary")]


@pytest.mark.parametrize("kwargs, expected", [
    ({"text": "only text"}, "text/plain"),
    ({"html": "<b>only html</b>"}, "text/html"),
    ({"text": "t", "html": "<b>h</b>"}, ("multipart/alternative", ["text/plain", "text/html"])),
    ({}, "text/plain"),
])
def test_body_shapes(kwargs, expected):
    msg = parse(prepare(Mail(subject="s", to="a@example.com", **kwargs), SENDER).data)
    assert structure(msg) == expected


def test_text_line_breaks_are_normalised_and_end_with_one():
    mail = Mail(subject="s", to="a@example.com", text="a\r\nb\rc", html="<p>\r\n</p>")
    msg = parse(prepare(mail, SENDER).data)
    assert msg.get_body(("plain",)).get_content() == "a\nb\nc\n"
    assert msg.get_body(("html",)).get_content() == "<p>\n</p>\n"


def test_headers_may_be_pairs_and_repeat():
    mail = Mail(subject="s", to="a@example.com", text="t",
                headers=[("Comments", "one"), ("Comments", "two"), ("X-Id", 42)])
    msg = parse(prepare(mail, SENDER).data)
    assert msg.get_all("Comments") == ["one", "two"] and msg["X-Id"] == "42"


def test_attachments_only_have_no_empty_text_part():
    mail = Mail(subject="s", to="a@example.com")
    mail.attach(b"%PDF-1.4", filename="x.pdf")
    msg = parse(prepare(mail, SENDER).data)
    assert structure(msg) == ("multipart/mixed", ["application/pdf"])


def test_long_lines_and_non_ascii_text_are_encoded_within_limits():
    text = "ü" * 3000 + "\n" + "plain line\n"
    mail = Mail(subject="s", to="a@example.com", text=text, html="<p>" + "x" * 5000 + "</p>")
    data = prepare(mail, SENDER).data
    assert data.isascii() and max(map(len, data.split(b"\n"))) <= 998
    msg = parse(data)
    assert msg.get_body(("plain",)).get_content() == text
    assert msg.get_body(("html",)).get_content() == "<p>" + "x" * 5000 + "</p>\n"


def test_content_type_guessed_and_overridden(tmp_path):
    path = tmp_path / "photo.jpeg"
    path.write_bytes(b"\xff\xd8jpeg")
    mail = Mail(subject="s", to="a@example.com", text="t")
    mail.attach(str(path))
    mail.attach(path, filename="renamed.dat", content_type="image/jpeg")
    mail.attach(io.BytesIO(b"?"))
    found = attachments(parse(prepare(mail, SENDER).data))
    assert found == [("photo.jpeg", "image/jpeg", b"\xff\xd8jpeg"),
                     ("renamed.dat", "image/jpeg", b"\xff\xd8jpeg"),
                     (None, "application/octet-stream", b"?")]


def test_non_ascii_filename_uses_rfc2231_and_an_encoded_name():
    mail = Mail(subject="s", to="a@example.com", text="t")
    mail.attach(b"x", filename="Überweisung für März.pdf")
    data = prepare(mail, SENDER).data
    assert b"filename*=utf-8''%C3%9Cberweisung%20f%C3%BCr%20M%C3%A4rz.pdf" in data
    assert b'name="=?utf-8?b?w5xiZXJ3ZWlzdW5nIGbDvHIgTcOkcnoucGRm?="' in data


def test_mailbox_with_non_ascii_local_part_uses_utf8_headers():
    mail = Mail(subject="s", to=["jörg@example.com", ("Zoë", "zoë@example.com")], text="t")
    prepared = prepare(mail, SENDER)
    assert prepared.toaddrs == ("jörg@example.com", "zoë@example.com")
    # (the email package reads raw UTF-8 headers only from str)
    msg = email.message_from_string(prepared.data.decode("utf-8"), policy=policy.default)
    assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [
        ("", "jörg@example.com"), ("Zoë", "zoë@example.com")]


# -- validation: errors name what is wrong ------------------------------------------------

def test_subject_or_header_with_line_break_is_header_injection():
    with pytest.raises(HeaderInjection, match="Subject"):
        Mail(subject="Hi\r\nBcc: victim@example.com", to="a@example.com")
    with pytest.raises(HeaderInjection, match="X-Note"):
        Mail(to="a@example.com", headers={"X-Note": "a\nBcc: victim@example.com"})
    with pytest.raises(HeaderInjection, match="Bad:Name"):
        Mail(to="a@example.com", headers={"Bad:Name": "x"})
    with pytest.raises(HeaderInjection, match="To"):
        Mail(to="a@example.com\nBcc: victim@example.com")
    with pytest.raises(HeaderInjection, match="Cc"):
        Mail(to="a@example.com", cc=[("Evil\r\nBcc: v@example.com", "b@example.com")])


def test_headers_the_builder_writes_cannot_be_given():
    with pytest.raises(ValueError, match="Content-Type"):
        Mail(to="a@example.com", headers={"Content-Type": "text/html"})


def test_addresses_are_validated_when_the_mail_is_made():
    with pytest.raises(InvalidAddress, match="To.*not-an-address"):
        Mail(subject="s", to="not-an-address", text="t")
    with pytest.raises(InvalidAddress, match="Reply-To.*bad@"):
        Mail(subject="s", to="a@example.com", reply_to="bad@", text="t")
    with pytest.raises(InvalidAddress, match="Cc.*nope"):
        Mail(subject="s", to="a@example.com", cc=[("Name", "nope")], text="t")
    with pytest.raises(InvalidAddress, match="From"):
        prepare(Mail(subject="s", to="a@example.com", text="t"), "broken sender")


def test_bad_attachment_inputs_name_the_culprit(tmp_path):
    mail = Mail(subject="s", to="a@example.com", text="t", html="<p></p>")
    missing = str(tmp_path / "nope.pdf")
    with pytest.raises(AttachmentError, match="nope.pdf"):
        mail.attach(missing)
    with pytest.raises(AttachmentError, match="cannot be read"):
        mail.attach(str(tmp_path))
    with pytest.raises(TypeError, match="binary mode"):
        mail.attach(io.StringIO("text"), filename="t.txt")
    with pytest.raises(TypeError, match="int"):
        mail.attach(42)
    with pytest.raises(ValueError, match="filename 'a\\\\nb'"):
        mail.attach(b"x", filename="a\nb")
    with pytest.raises(ValueError, match="content_type 'pdf'"):
        mail.attach(b"x", filename="a.pdf", content_type="pdf")
    with pytest.raises(ValueError, match="cid 'no spaces@x'"):
        mail.inline(b"x", cid="no spaces@x")
    mail.inline(b"x", cid="one@x")
    with pytest.raises(ValueError, match="used twice"):
        mail.inline(b"y", cid="one@x")


def test_inline_parts_need_html():
    mail = Mail(subject="s", to="a@example.com", text="t")
    mail.inline(b"img")
    with pytest.raises(ValueError, match="html="):
        prepare(mail, SENDER)


def test_file_shrunk_after_send_fails_the_write_naming_it(tmp_path):
    path = tmp_path / "shrinks.bin"
    path.write_bytes(b"x" * 1000)
    mail = Mail(subject="s", to="a@example.com", text="t")
    mail.attach(str(path))
    stream = prepare(mail, SENDER).data
    path.write_bytes(b"x" * 10)
    with pytest.raises(AttachmentError, match="shrinks.bin.*10 of 1000"):
        b"".join(stream)


# -- through the mailer, the spool, the processor and a real SMTP server -------------------

@pytest.fixture
def spool_path(tmp_path):
    return str(tmp_path / "spool")


def queue_mailer(spool_path):
    config = Configurator(settings={"mail.queue_path": spool_path,
                                    "mail.default_sender": SENDER})
    config.include("pyramid_txmail")
    config.commit()
    manager = transaction.TransactionManager(explicit=True)
    return get_mailer(config.registry, manager), manager


def drain(spool_path, server):
    settings = parse_settings({"mail.host": server.host, "mail.port": str(server.port),
                               "mail.queue_path": spool_path, "mail.timeout": "10"})
    with SMTPTransport.from_settings(settings) as transport:
        return Processor(Spool(spool_path), transport, settings).run_once()


def test_sent_through_queue_and_processor_arrives_equal(spool_path, big_file, smtp_server):
    mail, logo = full_mail(big_file)
    mailer, manager = queue_mailer(spool_path)
    with manager:
        message_id = mailer.send(mail)
    [name] = Spool(spool_path).names("new")
    with open(os.path.join(spool_path, "new", name), "rb") as f:
        stored = split_envelope(f.read())
    assert os.stat(os.path.join(spool_path, "new", name)).st_mode & 0o777 == 0o600

    stats = drain(spool_path, smtp_server)
    assert stats.sent == 1
    [got] = smtp_server.messages
    assert got.rcpt_tos == ["jorg@example.com", "ayse@example.net", "zoe@example.org",
                            "hidden@example.com"]
    msg = parse(got.data)
    assert msg["Message-ID"] == message_id
    assert msg["Bcc"] is None
    assert attachments(msg)[0] == ("Überweisung März.bin", "application/octet-stream",
                                   big_file.read_bytes())
    assert msg.get_body(("html",)).get_content().replace("\r\n", "\n") == mail.html
    assert list(msg.get_body(("related",)).iter_parts())[1]["Content-ID"] == f"<{logo}>"
    assert stored is not None


def test_direct_delivery_streams_the_built_message_to_the_relay(big_file, smtp_server):
    config = Configurator(settings={"mail.delivery": "direct", "mail.host": smtp_server.host,
                                    "mail.port": str(smtp_server.port), "mail.timeout": "10",
                                    "mail.default_sender": SENDER})
    config.include("pyramid_txmail")
    config.commit()
    manager = transaction.TransactionManager(explicit=True)
    mail, logo = full_mail(big_file)
    with manager:
        message_id = get_mailer(config.registry, manager).send(mail)
    [got] = smtp_server.messages
    assert got.rcpt_tos[-1] == "hidden@example.com"
    msg = parse(got.data)
    assert msg["Message-ID"] == message_id
    assert [a[2] for a in attachments(msg)] == [
        big_file.read_bytes(), b"csv,data\n1,2\n", b"piped bytes " * 5000]


def test_direct_delivery_of_a_vanished_attachment_fails_naming_it(tmp_path, smtp_server):
    from pyramid_txmail.interfaces import IMailFailed

    failed = []
    config = Configurator(settings={"mail.delivery": "direct", "mail.host": smtp_server.host,
                                    "mail.port": str(smtp_server.port), "mail.timeout": "10",
                                    "mail.default_sender": SENDER})
    config.include("pyramid_txmail")
    config.add_subscriber(failed.append, IMailFailed)
    config.commit()
    manager = transaction.TransactionManager(explicit=True)
    path = tmp_path / "gone.bin"
    path.write_bytes(b"x" * 300_000)
    mail = Mail(subject="s", to="a@example.com", text="t")
    mail.attach(str(path))
    with manager:  # the commit itself succeeds: direct delivery runs after it
        get_mailer(config.registry, manager).send(mail)
        path.unlink()
    assert smtp_server.messages == []  # no truncated message was accepted
    [event] = failed
    assert "gone.bin" in event.reason and "cannot be read" in event.reason


def test_unreadable_attachment_at_commit_aborts_and_leaves_no_file(spool_path, tmp_path):
    path = tmp_path / "gone.pdf"
    path.write_bytes(b"%PDF")
    mailer, manager = queue_mailer(spool_path)
    mail = Mail(subject="s", to="a@example.com", text="t")
    mail.attach(str(path))
    with pytest.raises(OSError, match="gone.pdf"):
        with manager:
            mailer.send(mail)
            path.unlink()
    spool = Spool(spool_path)
    assert spool.names("new") == [] and os.listdir(os.path.join(spool_path, "tmp")) == []


def test_open_file_may_be_closed_right_after_attach(spool_path, big_file, smtp_server):
    mailer, manager = queue_mailer(spool_path)
    with manager:
        mail = Mail(subject="s", to="a@example.com", text="t")
        with open(big_file, "rb") as f:
            f.read(100)  # attached from where the caller left it
            mail.attach(f)
        assert f.closed
        mailer.send(mail)
    assert drain(spool_path, smtp_server).sent == 1
    assert attachments(parse(smtp_server.messages[0].data)) == [
        ("report.bin", "application/octet-stream", big_file.read_bytes()[100:])]


def test_closed_in_memory_file_object_aborts_naming_it(spool_path):
    mailer, manager = queue_mailer(spool_path)
    upload = io.BytesIO(b"data")
    mail = Mail(subject="s", to="a@example.com", text="t")
    mail.attach(upload, filename="upload.bin")
    with pytest.raises(OSError, match="attachment 'upload.bin': the file object was "
                                      "closed before the message was written"):
        with manager:
            mailer.send(mail)
            upload.close()
    assert Spool(spool_path).names("new") == []


# -- non-ASCII names, filenames and subjects, generated ------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1,
                max_size=60)
_word = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs")),
                min_size=1, max_size=20)
_phrase = st.lists(_word, min_size=1, max_size=4).map(" ".join)
_local = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
# Left out: "<name>" (email.utils.unquote, used by get_filename, strips the angle
# brackets) and text that is itself an encoded word ("=?...?=", decoded on the way in).
_filename = _phrase.filter(lambda f: not (f.startswith("<") and f.endswith(">"))
                           and "=?" not in f)


def rfc2047_display_name(data):
    """The To display name decoded as RFC 2047 says: whitespace between two
    encoded words is ignored.  (The email package's address parser keeps one
    space there, for our output and for its own: a stdlib parser bug.)"""
    raw = email.message_from_bytes(data, policy=policy.compat32)["To"]
    phrase = raw.rpartition("<")[0].strip()
    return str(email.header.make_header(email.header.decode_header(phrase)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=_phrase, name=_phrase, local=_local, filename=_filename, body=_text)
def test_non_ascii_round_trip(subject, name, local, filename, body):
    mail = Mail(subject=subject, to=[(name, f"{local}@example.com")], text=body,
                html=f"<p>{body}</p>")
    mail.attach(body.encode("utf-8"), filename=filename, content_type="application/x-test")
    prepared = prepare(mail, SENDER)
    assert prepared.data.isascii()
    assert max(map(len, prepared.data.split(b"\n"))) <= 998
    msg = parse(prepared.data)
    assert msg["Subject"] == subject
    [address] = msg["To"].addresses
    assert address.addr_spec == f"{local}@example.com"
    if name.isascii() or "\n" not in _encoded_words(name):
        assert address.display_name == name
    else:
        assert rfc2047_display_name(prepared.data) == name
    assert msg.get_body(("plain",)).get_content() == body + "\n"
    assert msg.get_body(("html",)).get_content() == f"<p>{body}</p>\n"
    assert attachments(msg) == [(filename, "application/x-test", body.encode("utf-8"))]
