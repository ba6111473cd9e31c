"""Bad input on the wire: SMTP smuggling, hand-edited queue files, very large messages.

* Bodies, attachments and pre-serialized messages holding "\\r\\n.\\r\\n",
  "\\n.\\n", "\\n.\\r\\n", "\\r.\\r", "\\r\\n.\\n", "\\n.\\r"... never end DATA early:
  each connection the server saw (recorded byte for byte) holds one MAIL
  transaction per message, only CRLF line endings and no lenient end of data,
  and the server receives exactly one message per send, whole.
* Queue files edited by hand or written by repoze.sendmail with odd bytes are
  delivered or dead-lettered with a reason; the processor's pass never fails.
* Multi-megabyte bodies, lines over 100 kB and a large attachment arrive equal.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyramid_txmail import Mail
from pyramid_txmail.compose import wire
from pyramid_txmail.processor.processor import STREAM_OVER, Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.relay.smtp import SMTPTransport
from pyramid_txmail.queue.maildir.spool import Spool, envelope_lines

from .badinput_support import (Outcome, Tally, check_transcripts, examples, module_harness,
                               read_back)
from .recording_server import read_transcripts

pytestmark = pytest.mark.reliability

SMUGGLE = [b"\r\n.\r\n", b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\n.\r", b"\r.\n",
           b".\r\n", b".", b"..", b"\r", b"\n", b"\r\n", b"\x00",
           b"MAIL FROM:<evil@example.com>", b"RCPT TO:<victim@example.com>", b"DATA",
           b"QUIT", b"RSET", b"x" * 1100, "é".encode(), b"text "]
smuggling_body = st.lists(st.sampled_from(SMUGGLE) | st.binary(max_size=20),
                          max_size=30).map(b"".join)
HEAD = b"From: sender@example.org\nTo: a@example.com\nSubject: smuggling\n"


harness = module_harness("badinput-wire")


def drain(harness, spool_path, utf8=True):
    settings = parse_settings({**harness.settings("queue", utf8),
                               "mail.queue_path": spool_path})
    with SMTPTransport.from_settings(settings) as transport:
        return Processor(Spool(spool_path), transport, settings).run_once()


def outcome_of(harness, utf8=True):
    server = harness.servers[utf8]
    return Outcome(received=list(server.messages), transcripts=read_transcripts(server.handler))


def crlf_body(data):
    """The body the server must hold for raw ``data`` (CRLF line breaks, ending in one)."""
    body = wire.to_wire(data).partition(b"\r\n\r\n")[2]
    return body if body.endswith(b"\r\n") or not body else body + b"\r\n"


# -- smuggling ------------------------------------------------------------------------------

@pytest.mark.property
def test_no_body_ends_data_early(harness, tmp_path_factory):
    tally = Tally()
    root = tmp_path_factory.mktemp("smuggling")

    @examples(120, 1200)
    @given(body=smuggling_body, path=st.sampled_from(["transport", "queue-file", "Mail",
                                                      "attachment", "stream"]))
    def example(body, path):
        server = harness.servers[True]
        server.handler.reset()
        data = HEAD + b"\n" + body
        if path == "transport":  # a pre-serialized message handed to the transport
            with SMTPTransport(server.host, server.port, timeout=10) as transport:
                result = transport.deliver("sender@example.org", ["a@example.com"], data)
            assert result.ok, result.summary()
            outcome = outcome_of(harness)
        elif path in ("queue-file", "stream"):  # as repoze.sendmail writes one
            if path == "stream":  # over STREAM_OVER: sent block by block (wire.data_section)
                data = HEAD + b"\n" + (b"padding line\n" * (STREAM_OVER // 13 + 1)) + body
            spool = Spool(str(root / f"spool-{tally['bad_inputs']}"))
            name = spool.write_tmp("sender@example.org", ["a@example.com"], data)
            spool.commit_tmp([name])
            stats = drain(harness, spool.path)
            assert stats.errors == 0 and stats.sent == 1, stats.summary()
            outcome = outcome_of(harness)
        else:
            mail = Mail(subject="smuggling", to="a@example.com",
                        text=body.decode("utf-8", "replace") if path == "Mail" else "t")
            if path == "attachment":
                mail.attach(body or b"-", filename="smuggle.bin")
            outcome = harness.send(mail, "queue")
        tally.add(outcome)
        check_transcripts(outcome)
        [got] = outcome.received
        for transcript in outcome.transcripts:
            assert transcript.commands in (["EHLO", "MAIL", "RCPT", "DATA", "QUIT"],
                                           ["EHLO", "MAIL", "RCPT", "DATA"]), \
                transcript.commands
        if path in ("transport", "queue-file", "stream"):
            assert got.data.partition(b"\r\n\r\n")[2] == crlf_body(data)
        elif path == "attachment":
            [part] = read_back(got.data).iter_attachments()
            assert part.get_content() == (body or b"-")

    example()
    tally.record("SMTP smuggling: dot and line-ending sequences in bodies, attachments, "
                 "pre-serialized and streamed messages")
    assert tally["lost"] == 0 and tally["duplicated"] == 0


# -- queue files edited by hand ---------------------------------------------------------------

ODD = [b"\x00", b"\xff\xfe", b"\r", b"\n", b"\r\n", b"\r\n\r\n", b":", b" ", b"\t",
       b"X-Actually-From: sender@example.org\n", b"X-Actually-To: a@example.com\n",
       b"X-Actually-To: =?utf-8?q?a=0D=0AB@example.com?=\n",
       b"X-Actually-From: =?bogus?q?x?=\n", b"X-Actually-To: ,,,\n",
       b"X-Actually-To: not an address\n", b"Subject: x\n", b"\n\n", b"x" * 1500,
       "Grüße".encode(), b"=?utf-8?b?////?="]
queue_file = st.lists(st.sampled_from(ODD) | st.binary(max_size=30), max_size=25).map(b"".join)


@pytest.mark.property
def test_odd_queue_files_are_delivered_or_dead_lettered_never_crash_the_pass(
        harness, tmp_path_factory):
    tally = Tally()
    root = tmp_path_factory.mktemp("queue-files")

    @examples(150, 2000)
    @given(content=queue_file, envelope=st.booleans())
    def example(content, envelope):
        server = harness.servers[True]
        server.handler.reset()
        spool = Spool(str(root / f"spool-{tally['bad_inputs']}"))
        if envelope:
            content = envelope_lines("sender@example.org", ["a@example.com"]) + content
        path = os.path.join(spool.path, "new", "1700000000.M1P1Q1.handmade")
        with open(path, "wb") as f:
            f.write(content)
        stats = drain(harness, spool.path)
        assert stats.errors == 0, stats.summary()
        outcome = outcome_of(harness)
        failed = spool.names("failed")
        outcome.held = [("failed", spool.read_meta(n).get("reason")) for n in failed]
        left = [n for state in ("new", "cur", "deferred") for n in spool.names(state)]
        assert not left, left
        # (delivered to some recipients and dead-lettered for others counts once)
        outcome.lost = 0 if outcome.received or outcome.held else 1
        tally.add(outcome)
        assert outcome.lost == 0 and len(outcome.received) <= 1
        for _, reason in outcome.held:
            assert reason, "a dead letter without its reason"
        check_transcripts(outcome)

    example()
    tally.record("Queue files edited by hand (odd bytes, broken envelopes)")
    assert tally["lost"] == 0


# -- very large messages ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["queue", "direct"])
def test_multi_megabyte_bodies_and_100k_lines_arrive_equal(harness, mode):
    line = "é" + "x" * 120_000  # one line of over 100 kB
    text = (line + "\n") * 3 + "Grüße\n" * 200_000  # ~1.7 MB of text
    html = "<p>" + "y" * 150_000 + "</p>\n"
    blob = os.urandom(3 * 1024 * 1024)
    mail = Mail(subject="big", to="a@example.com", text=text, html=html)
    mail.attach(blob, filename="big.bin")
    outcome = harness.send(mail, mode, utf8=False)
    tally = Tally()
    tally.add(outcome)
    tally.record(f"Multi-megabyte bodies, 100 kB lines, 3 MiB attachment ({mode})")
    check_transcripts(outcome)
    [got] = outcome.received
    assert max(map(len, got.data.split(b"\r\n"))) <= 998
    back = read_back(got.data)
    assert back.get_body(("plain",)).get_content().replace("\r\n", "\n") == text
    assert back.get_body(("html",)).get_content().replace("\r\n", "\n") == html
    [part] = back.iter_attachments()
    assert part.get_content() == blob
