"""DKIM signing (issue 15 item 4): what a receiver gets verifies with dkimpy.

Every message here goes through the real mailer and the real transport to an
aiosmtpd server on 127.0.0.1 (direct delivery, send_immediately, the queue
drained by the processor); what the server received is verified with dkimpy's
verifier, its DNS answered by :class:`tests.dkim_support.KeyRecords`.  The
body hash computed chunk by chunk is checked against dkimpy's own over the
whole body, for every split of the input.  Through the real Postfix:
tests/test_dkim_postfix.py; start-up errors: tests/test_dkim_config.py.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import time

import dkim
import pytest
import transaction
from dkim.canonicalization import CanonicalizationPolicy
from pyramid.config import Configurator

from pyramid_txmail import Mail, get_mailer
from pyramid_txmail.compose import wire
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.queue.maildir.spool import Spool
from pyramid_txmail.relay.dkim import BodyHash, DKIMSigner, DomainKey, load_key
from pyramid_txmail.settings import parse_settings

from .dkim_support import KeyRecords, signature_tags, verify, write_key
from .smtpserver import SMTPServer


@pytest.fixture
def key(tmp_path):
    """(path, public DER) of a 2048-bit key for example.com, selector s1."""
    return write_key(tmp_path)


@pytest.fixture
def server():
    with SMTPServer() as srv:
        yield srv


def registry_for(server, tmp_path, **extra):
    settings = {"mail.host": server.host, "mail.port": str(server.port),
                "mail.timeout": "10", "mail.default_sender": "Shop <shop@example.com>"}
    settings.update(extra)
    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    config.commit()
    return config.registry


def send(registry, *messages):
    manager = transaction.TransactionManager(explicit=True)
    with manager:
        mailer = get_mailer(registry, manager)
        return [mailer.send(m) for m in messages]


def dkim_settings(path, **extra):
    return {"mail.dkim_private_key": path, "mail.dkim_selector": "s1",
            "mail.dkim_domain": "example.com", **extra}


# -- the body hash, chunk by chunk -----------------------------------------------------

BODIES = [
    b"", b"\r\n", b"\r\n\r\n\r\n", b"a", b"a\r\n", b"a\r\n\r\n\r\n", b"  \r\n\t\r\n",
    b"x  y\t\tz  \r\n \r\nend \t", b".\r\n..dots\r\n.\r\n", b"tail\r\n\r\n \r\n",
    b"\r\n\r\nstarts empty\r\n", b"caf\xc3\xa9 8-bit\r\n\t indented\r\n",
    b"line one\r\n" * 20 + b"\r\n" * 5,
]


def _dkimpy_bh(body, canon):
    """dkimpy's bh= for ``body`` as the receiver has it: the DATA section ends every
    message with CRLF, so a last line without one gets it (dkimpy given "end \\t" without
    CRLF would keep the trailing whitespace a receiver's relaxed canonicalization drops)."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/" + canon)
    return base64.b64encode(hashlib.sha256(policy.canonicalize_body(body)).digest())


def _ours(pieces, relaxed):
    hasher = BodyHash(relaxed)
    for piece in pieces:
        hasher.update(piece)
    return hasher.digest_b64()


@pytest.mark.parametrize("canon", [b"relaxed", b"simple"])
def test_the_body_hash_over_any_split_equals_dkimpys_over_the_whole_body(canon):
    relaxed = canon == b"relaxed"
    for body in BODIES:
        expected = _dkimpy_bh(body, canon)
        assert _ours([body], relaxed) == expected, body
        assert _ours([body[i:i + 1] for i in range(len(body))], relaxed) == expected, body
        for cut in range(len(body) + 1):
            assert _ours([body[:cut], body[cut:]], relaxed) == expected, (body, cut)


def _signer(path, clock=None, **kwargs):
    key, bits = load_key(path)
    keys = {"example.com": DomainKey("example.com", "s1", path, bits, key)}
    return DKIMSigner(keys, clock=clock or time.time, **kwargs)


def _big_message():
    mail = Mail(subject="Report", to="bob@example.org", sender="shop@example.com",
                text="See the attachment.\n" + ".starts with a dot\n" * 3)
    mail.attach(bytes(range(256)) * 4000, filename="data.bin")
    return mail


def test_a_streamed_message_gets_the_signature_the_whole_message_gets_from_dkimpy(
        key, monkeypatch):
    from pyramid_txmail.compose.message import prepare

    data = wire.to_wire(prepare(_big_message(), None).data)
    lf = data.replace(b"\r\n", b"\n")

    def pieces():  # LF line endings, cut every 7 octets: CRLF is made on the way
        return (lf[i:i + 7] for i in range(0, len(lf), 7))

    stream = wire.Stream(pieces, head=lf[:lf.index(b"\n\n") + 1])
    signer = _signer(key[0], clock=lambda: 1_800_000_000)
    streamed = signer.signature(stream)
    assert streamed == signer.signature((data,))
    monkeypatch.setattr(dkim.time, "time", lambda: 1_800_000_000)
    include = signature_tags(streamed + data)["h"].split(":")
    whole = dkim.sign(data, b"s1", b"example.com", open(key[0], "rb").read(),
                      canonicalize=(b"relaxed", b"relaxed"),
                      include_headers=[h.encode() for h in include])
    assert streamed == whole
    assert verify(streamed + data, KeyRecords().publish("s1", "example.com", key[1]))[0]


# -- sent, received, verified ------------------------------------------------------------

CASES = {
    "plain": dict(subject="Your order", to="bob@example.org", text="Thanks!\n"),
    "8-bit and SMTPUTF8": dict(subject="Grüße aus Köln ✓", to="Jörg <jörg@example.org>",
                               sender="Bücher <bücher@example.com>",
                               text="Grüß Gott, Jörg! 12,50 €\n日本語\n"),
    "lines starting with dots": dict(subject="Dots", to="bob@example.org",
                                     text=".\n..\n.hidden\n. space\nend\n.\n"),
    "long lines re-encoded": dict(subject="Long", to="bob@example.org",
                                  text="word " * 900 + "\n" + "x" * 3000 + "\n"),
    "trailing blank lines and spaces": dict(subject="Spaces", to="bob@example.org",
                                            text="a  b\t\tc   \n\n\n\n"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("how", ["direct", "send_immediately", "queue"])
def test_what_the_relay_receives_verifies(server, tmp_path, key, case, how):
    spool = str(tmp_path / "spool")
    registry = registry_for(server, tmp_path, **dkim_settings(
        key[0], **{"mail.delivery": "queue" if how == "queue" else "direct",
                   "mail.queue_path": spool}))
    mail = Mail(**CASES[case])
    if how == "send_immediately":
        get_mailer(registry, transaction.TransactionManager()).send_immediately(mail)
    else:
        send(registry, mail)
    if how == "queue":
        settings = parse_settings(registry.settings)
        stats = Processor(Spool(spool), None, settings).run_once()
        assert stats.errors == 0, stats.summary()
    [got] = server.messages
    assert got.data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    ok, why = verify(got.data, KeyRecords().publish("s1", "example.com", key[1]))
    assert ok, why
    tags = signature_tags(got.data)
    assert tags["d"] == "example.com" and tags["s"] == "s1"
    signed = tags["h"].split(":")
    assert signed[-1] == "from" and {"from", "to", "subject", "date", "message-id",
                                     "mime-version", "content-type"} <= set(signed)
    if case == "8-bit and SMTPUTF8":
        assert "SMTPUTF8" in got.mail_options and "bücher@example.com".encode() in got.data
    if case == "long lines re-encoded":
        assert max(map(len, got.data.split(b"\r\n"))) <= 998
    if case == "lines starting with dots":
        assert b"\r\n..\r\n" in got.data and b"\r\n.hidden\r\n" in got.data


def test_a_changed_body_or_header_does_not_verify(server, tmp_path, key):
    """The verifier is not a rubber stamp: one octet changed breaks the signature."""
    send(registry_for(server, tmp_path, **dkim_settings(key[0])),
         Mail(subject="Original", to="bob@example.org", text="Pay 10 EUR\n"))
    [got] = server.messages
    records = KeyRecords().publish("s1", "example.com", key[1])
    assert verify(got.data, records)[0]
    assert not verify(got.data.replace(b"Pay 10", b"Pay 90"), records)[0]
    assert not verify(got.data.replace(b"Subject: Original", b"Subject: Changed"), records)[0]
    assert not verify(b"From: evil@example.net\r\n" + got.data, records)[0]  # From oversigned


def test_the_redirected_message_is_signed_as_it_is_sent(server, tmp_path, key):
    registry = registry_for(server, tmp_path, **dkim_settings(
        key[0], **{"mail.redirect_to": "qa@example.com",
                   "mail.dkim_headers": "From To Subject X-Txmail-Original-To"}))
    send(registry, Mail(subject="Staging", to="customer@example.org", text="Hi\n"))
    [got] = server.messages
    assert got.rcpt_tos == ["qa@example.com"]
    assert b"X-Txmail-Original-To: customer@example.org" in got.data
    ok, why = verify(got.data, KeyRecords().publish("s1", "example.com", key[1]))
    assert ok, why
    signed = signature_tags(got.data)["h"].split(":")  # in the message's order, From again
    assert sorted(signed) == ["from", "from", "subject", "to", "x-txmail-original-to"]
    assert signed[0] == "x-txmail-original-to" and signed[-1] == "from"


def test_the_from_domain_picks_the_key_and_a_domain_without_one_goes_unsigned(
        server, tmp_path, caplog):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path_a, der_a = write_key(tmp_path / "a", seed=1)
    path_b, der_b = write_key(tmp_path / "b", seed=2)
    path_c, der_c = write_key(tmp_path, seed=3)
    registry = registry_for(server, tmp_path, **{
        "mail.dkim_domains": f"\nshop.example {'mail2026'} {path_a}\n"
                             f"news.example nl {path_b}\n",
        "mail.dkim_private_key": path_c, "mail.dkim_selector": "one",
        "mail.dkim_domain": "bücher.example"})
    senders = {"shop": "Shop <orders@shop.example>", "news": "news@news.example",
               "sub": "alerts@eu.shop.example", "idn": "info@bücher.example",
               "none": "someone@other.example"}
    with caplog.at_level(logging.DEBUG, logger="pyramid_txmail.dkim"):
        send(registry, *[Mail(subject=k, sender=v, to="bob@example.org", text=f"{k}\n")
                         for k, v in senders.items()])
    records = (KeyRecords().publish("mail2026", "shop.example", der_a)
               .publish("nl", "news.example", der_b)
               .publish("one", "xn--bcher-kva.example", der_c))
    got = {m.data.split(b"Subject: ")[1].split(b"\r\n")[0].decode(): m.data
           for m in server.messages}
    expected = {"shop": ("shop.example", "mail2026"), "news": ("news.example", "nl"),
                "sub": ("shop.example", "mail2026"), "idn": ("xn--bcher-kva.example", "one")}
    for subject, (domain, selector) in expected.items():
        ok, why = verify(got[subject], records)
        assert ok, (subject, why)
        tags = signature_tags(got[subject])
        assert (tags["d"], tags["s"]) == (domain, selector), subject
    assert b"DKIM-Signature" not in got["none"]
    [line] = [r.getMessage() for r in caplog.records if "not DKIM-signed" in r.getMessage()]
    assert "other.example" in line and caplog.records[0].levelno == logging.DEBUG


def test_simple_canonicalization_and_an_own_header_list(server, tmp_path, key):
    send(registry_for(server, tmp_path, **dkim_settings(
        key[0], **{"mail.dkim_canonicalization": "simple/simple",
                   "mail.dkim_headers": "Subject, Date"})),
         Mail(subject="Simple", to="bob@example.org", text="a  b  \n\n"))
    [got] = server.messages
    ok, why = verify(got.data, KeyRecords().publish("s1", "example.com", key[1]))
    assert ok, why
    tags = signature_tags(got.data)
    assert tags["c"] == "simple/simple" and tags["h"] == "subject:from:date:from"


def test_the_queue_file_is_never_changed(server, tmp_path, key):
    """The signature is prepended to the bytes sent, never written into the spool: the
    dead-lettered file is the one the application committed."""
    spool_path = str(tmp_path / "spool")
    server.handler.script["data"] = "554 5.7.1 no"
    registry = registry_for(server, tmp_path, **dkim_settings(
        key[0], **{"mail.queue_path": spool_path}))
    send(registry, Mail(subject="Refused", to="bob@example.org", text="Hello\n"))
    spool = Spool(spool_path)
    [name] = spool.names("new")
    before = (tmp_path / "spool" / "new" / name).read_bytes()
    Processor(spool, None, parse_settings(registry.settings)).run_once()
    assert spool.names("failed") == [name]
    assert (tmp_path / "spool" / "failed" / name).read_bytes() == before
    assert b"DKIM-Signature" not in before


@pytest.mark.parametrize("how", ["direct", "send_immediately"])
def test_a_message_streamed_from_an_attached_file_and_redirected_verifies(
        server, tmp_path, key, how):
    """An attachment given as a path makes the message a wire.Stream (never whole in
    memory), and mail.redirect_to puts its header in front of that stream: signed after
    both, over the stream, it verifies."""
    attachment = tmp_path / "report.csv"
    attachment.write_bytes(b"id;name;note\r\n" + b"1;.dot;  spaced\t\r\n" * 100_000)
    registry = registry_for(server, tmp_path, **dkim_settings(
        key[0], **{"mail.redirect_to": "qa@example.com"}))
    mail = Mail(subject="Streamed", to="customer@example.org", text="Attached.\n")
    mail.attach(str(attachment))
    from pyramid_txmail.compose.message import prepare

    assert isinstance(prepare(mail, "shop@example.com").data, wire.Stream)
    if how == "send_immediately":
        get_mailer(registry, transaction.TransactionManager()).send_immediately(mail)
    else:
        send(registry, mail)
    [got] = server.messages
    assert got.rcpt_tos == ["qa@example.com"] and len(got.data) > 1_900_000
    ok, why = verify(got.data, KeyRecords().publish("s1", "example.com", key[1]))
    assert ok, why


def test_obsolete_header_syntax_is_left_unsigned_not_refused(server, key):
    """A field with a space before its colon (RFC 5322 obsolete syntax) is sent, not
    signed: dkimpy's parser (like many verifiers') refuses it in what it signs."""
    from pyramid_txmail.relay.smtp import SMTPTransport

    signer = parse_settings(dkim_settings(key[0])).dkim
    data = (b"From: shop@example.com\r\nTo: bob@example.org\r\nSubject : old style\r\n"
            b"Message-ID: <obs@example.com>\r\n\r\nBody\r\n")
    with SMTPTransport(server.host, server.port, dkim=signer) as transport:
        assert transport.deliver("shop@example.com", ["bob@example.org"], data).ok
    [got] = server.messages
    assert signature_tags(got.data)["h"] == "from:to:message-id:from"
    # dkimpy cannot parse such a message at all; the field is unsigned, so renamed it
    # changes nothing the signature covers:
    renamed = got.data.replace(b"Subject : old style", b"X-Subject: old style")
    assert verify(renamed, KeyRecords().publish("s1", "example.com", key[1]))[0]


def test_a_message_that_cannot_be_read_while_signing_is_temporary_and_nothing_is_sent(
        server, key):
    """Reading the message to sign it fails (a queue file on a failing disk): the
    recipients are deferred with the reason, and not a byte of it went to the relay."""
    from pyramid_txmail.relay.result import TEMPORARY
    from pyramid_txmail.relay.smtp import SMTPTransport

    def failing():
        yield b"From: shop@example.com\r\nTo: bob@example.org\r\n\r\nfirst block\r\n"
        raise OSError(5, "Input/output error")

    signer = parse_settings(dkim_settings(key[0])).dkim
    with SMTPTransport(server.host, server.port, dkim=signer) as transport:
        result = transport.deliver("shop@example.com", ["bob@example.org"],
                                   wire.Stream(failing, message_id="<eio@example.com>"))
    [only] = result.results
    assert only.status == TEMPORARY and "cannot read the message to sign it" in only.text
    assert "Input/output error" in only.text
    assert server.messages == []


def test_the_sendmail_transport_defers_a_message_it_cannot_read_to_sign(tmp_path, key):
    """The same for the sendmail binary: deferred with the reason, the binary never run."""
    from pyramid_txmail.relay.result import TEMPORARY
    from pyramid_txmail.relay.sendmail import SendmailTransport

    ran = tmp_path / "ran"
    app = tmp_path / "sendmail"
    app.write_text(f"#!/bin/sh\ntouch {ran}\ncat >/dev/null\n")
    app.chmod(0o700)

    def failing():
        yield b"From: shop@example.com\nTo: bob@example.org\n\nfirst block\n"
        raise OSError(5, "Input/output error")

    signer = parse_settings(dkim_settings(key[0])).dkim
    transport = SendmailTransport(str(app), ["{sendmail_app}", "-i", "-f", "{sender}"],
                                  dkim=signer)
    result = transport.deliver("shop@example.com", ["bob@example.org"],
                               wire.Stream(failing, message_id="<eio@example.com>"))
    [only] = result.results
    assert only.status == TEMPORARY and "cannot read the message to sign it" in only.text
    assert not ran.exists()
