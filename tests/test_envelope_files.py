"""Issue 11 finding 1, the files: every reader and writer of a stored envelope.

Queue files in both directions with repoze.sendmail (its ``qp`` reading ours,
our processor reading its), files of older versions, ``txmail-queue show``
and the preview of ``mail.delivery = file`` -- each must read exactly the
envelope that was written, whatever the message carries.
"""
from __future__ import annotations

import email
import json
import os
import re
import subprocess
import sys
import urllib.parse
from email.mime.text import MIMEText
from unittest import mock

import pytest
import transaction
from hypothesis import given, settings
from hypothesis import strategies as st

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir.spool import Spool
from pyramid_txmail.queue.maildir import spoolfile
from pyramid_txmail.queue.maildir.spoolfile import envelope_lines, split_envelope

from .envelope_support import Sender, session_envelopes
from .recording_server import recording_server
from .test_envelope import INBOUND, LOOKALIKE_FROM, LOOKALIKE_TO

BIN = os.path.dirname(sys.executable)


@pytest.fixture
def server():
    server = recording_server()
    yield server
    server.stop()


def queue_with_txmail(tmp_path, server, *args):
    Sender("queue", server, tmp_path / "spool").registry  # creates the spool
    sender = Sender("queue", server, tmp_path / "spool")
    manager = transaction.TransactionManager(explicit=True)
    from pyramid_txmail import get_mailer
    with manager:
        get_mailer(sender.registry, manager).send(*args)
    return tmp_path / "spool"


def run_repoze_qp(server, spool):
    done = subprocess.run([os.path.join(BIN, "qp"), "--hostname", server.host, "--port",
                           str(server.port), "--no-tls", str(spool)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def drain_with_txmail(server, spool):
    settings = parse_settings({"mail.host": server.host, "mail.port": str(server.port),
                               "mail.queue_path": str(spool)})
    return Processor(Spool(str(spool)), None, settings).run_once()


def test_repoze_qp_reads_exactly_our_envelope(tmp_path, server):
    """Our file of a forwarded message with look-alike addresses: repoze.sendmail's
    reader takes the first X-Actually-* lines (ours) and decodes what we encoded."""
    inbound = email.message_from_bytes(INBOUND)
    toaddrs = [LOOKALIKE_TO, '"a b"@example.com', "b@example.com"]
    spool = queue_with_txmail(tmp_path, server, LOOKALIKE_FROM, toaddrs, inbound)
    run_repoze_qp(server, spool)
    assert session_envelopes(server.handler) == [(LOOKALIKE_FROM, toaddrs)]
    msg = email.message_from_bytes(server.messages[0].data)
    assert msg["X-Actually-To"] is None and b"txmail-envelope" not in server.messages[0].data
    assert os.listdir(spool / "new") == []


def test_repoze_reader_decodes_our_utf8_envelope_exactly(tmp_path, server):
    """(repoze.sendmail's SMTP mailer cannot send UTF-8 addresses -- it never asks for
    SMTPUTF8 -- so its reader is checked on its own.)"""
    from repoze.sendmail.queue import QueueProcessor

    toaddrs = ["jörg@bücher.example", "=?utf-8?q?x?=é@example.com", "b@example.com"]
    spool = queue_with_txmail(tmp_path, server, "zoë@example.com", toaddrs,
                              email.message_from_bytes(INBOUND))
    [name] = os.listdir(spool / "new")
    with open(spool / "new" / name, encoding="utf-8") as f:
        fromaddr, got, message = QueueProcessor._parseMessage(None, f)
    assert (fromaddr, got) == ("zoë@example.com", tuple(toaddrs))
    assert message.get_unixfrom().startswith("From txmail-envelope-1 ")
    assert "txmail-envelope" not in message.as_string()


def test_repoze_qp_refuses_a_recipient_it_cannot_split_rather_than_send_pieces(
        tmp_path, server):
    """repoze.sendmail splits X-Actually-To at every comma: "x,attacker@evil.example,y"
    would send to attacker@evil.example.  Such a file has no X-Actually-To line: qp
    logs an error and leaves it; txmail-qp then delivers it whole."""
    toaddrs = ['"x,attacker@evil.example,y"@victim.example', "b@example.com"]
    spool = queue_with_txmail(tmp_path, server, "app@example.com", toaddrs, MIMEText("hi"))
    done = run_repoze_qp(server, spool)
    assert server.messages == [] and "Error while sending" in done.stderr
    [name] = [n for n in os.listdir(spool / "new") if not n.startswith(".")]
    for leftover in os.listdir(spool / "new"):  # qp's .sending- link, as after its crash
        if leftover.startswith("."):
            os.unlink(spool / "new" / leftover)
    assert drain_with_txmail(server, spool).sent == 1
    assert session_envelopes(server.handler)[-1] == ("app@example.com", toaddrs)


def repoze_queue(spool, fromaddr, toaddrs, message):
    from repoze.sendmail.delivery import QueuedMailDelivery

    manager = transaction.TransactionManager(explicit=True)
    with manager:
        QueuedMailDelivery(str(spool), manager).send(fromaddr, toaddrs, message)


def test_txmail_reads_repoze_files_with_utf8_and_quoted_addresses_exactly(tmp_path, server):
    spool = tmp_path / "spool"
    toaddrs = ["jörg@bücher.example", '"a,b"@example.com', LOOKALIKE_TO]
    repoze_queue(spool, "zoë@example.com", toaddrs, MIMEText("hi"))
    assert drain_with_txmail(server, spool).sent == 1
    assert session_envelopes(server.handler) == [("zoë@example.com", toaddrs)]


def test_a_repoze_file_whose_message_carried_its_own_envelope_lines_is_dead_lettered(
        tmp_path, server):
    """Which X-Actually-To did its writer mean?  repoze.sendmail's own qp takes the
    first (the message's); we send to neither and keep it with the reason."""
    spool = tmp_path / "spool"
    repoze_queue(spool, "app@example.com", ["support@example.com"],
                 email.message_from_bytes(INBOUND))
    stats = drain_with_txmail(server, spool)
    assert (stats.sent, stats.failed) == (0, 1) and server.messages == []
    [name] = os.listdir(spool / "failed")
    reason = json.loads((spool / "meta" / f"{name}.json").read_text())["reason"]
    assert "ambiguous envelope" in reason and "X-Actually-To" in reason


def test_files_of_older_versions_are_read_literally(tmp_path, server):
    """Before the record, ASCII addresses were written raw: one that looks like an
    encoded word is taken as it is, not decoded."""
    spool = Spool(str(tmp_path / "spool"))
    old = (f"X-Actually-From: {LOOKALIKE_FROM}\nX-Actually-To: {LOOKALIKE_TO},"
           f"=?utf-8?b?am9yZ0BleGFtcGxlLmNvbQ==?=\nSubject: old\n\nbody\n").encode()
    with open(os.path.join(spool.path, "new", "1700000000.M1P1Q1.old"), "wb") as f:
        f.write(old)
    assert drain_with_txmail(server, spool.path).sent == 1
    assert session_envelopes(server.handler) == [
        (LOOKALIKE_FROM, [LOOKALIKE_TO, "=?utf-8?b?am9yZ0BleGFtcGxlLmNvbQ==?="])]


def test_the_record_is_the_first_line_and_message_lines_cannot_join_it():
    data = envelope_lines("a@example.com", ['"b c"@example.com', "d%e@example.com"]) + \
        b"X-Actually-To: evil@example.com\nSubject: x\n\nbody\n"
    assert data.startswith(b"From txmail-envelope-1 a@example.com %22b%20c%22@example.com "
                           b"d%25e@example.com\n")
    fromaddr, toaddrs, message = split_envelope(data)
    assert (fromaddr, toaddrs) == ("a@example.com", ('"b c"@example.com', "d%e@example.com"))
    assert message == b"Subject: x\n\nbody\n"


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1)
       | st.from_regex(r"[A-Za-z0-9_.~@+%,\"\\ -]{1,20}", fullmatch=True))
def test_an_address_is_recorded_as_percent_encoding_writes_it(address):
    """The record skips ``urllib.parse.quote`` for an address it would give back
    unchanged: whatever the address, the record holds what quote writes."""
    assert spoolfile._quote(address) == urllib.parse.quote(address, safe="@+",
                                                           errors="strict")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a@example.com", "x.y+z@mail.example.org", "a,b@example.com",
                                 '"b c"@example.com', "=?x?q?y?=@example.com", "jörg@example.com",
                                 "d%e@example.com", "", "a\n@example.com", "~_-.@x"]),
                min_size=1, max_size=4))
def test_the_common_envelope_is_written_as_every_envelope_is(addresses):
    """envelope_lines writes a plain envelope without its checks and encodings: the
    same bytes (or error) as with them."""
    def lines():
        try:
            return envelope_lines(addresses[0], addresses[1:])
        except ValueError as exc:
            return str(exc)
    written = lines()
    with mock.patch.object(spoolfile, "_UNQUOTED", re.compile(r"(?!)")):  # matches nothing
        assert written == lines()


def test_txmail_queue_show_reads_the_exact_envelope_however_long(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    toaddrs = [LOOKALIKE_TO] + [f"user{i:05d}@example.com" for i in range(15000)]
    name = spool.write_tmp(LOOKALIKE_FROM, toaddrs, b"Subject: many\n\nbody\n")
    spool.commit_tmp([name])
    ini = tmp_path / "app.ini"
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {spool.path}\n")
    done = subprocess.run([os.path.join(BIN, "txmail-queue"), str(ini), "list", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [listed] = json.loads(done.stdout)["messages"] if "messages" in json.loads(done.stdout) \
        else json.loads(done.stdout)
    assert (listed["from"], listed["to"]) == (LOOKALIKE_FROM, toaddrs)
    assert listed["subject"] == "many" and listed["last_error"] is None


def test_the_preview_of_file_delivery_shows_the_envelope_as_sent(tmp_path):
    from .test_preview import make_app

    directory = tmp_path / "mail"
    settings = {"mail.delivery": "file", "mail.file_path": str(directory),
                "mail.default_sender": "app@example.com"}
    sender_app = make_app(settings)
    from pyramid_txmail import get_mailer
    manager = transaction.TransactionManager(explicit=True)
    toaddrs = [LOOKALIKE_TO, '"x,y"@example.com']
    with manager:
        get_mailer(sender_app.app.registry, manager).send(
            LOOKALIKE_FROM, toaddrs, email.message_from_bytes(
                INBOUND.replace(b"X-Actually", b"X-Envelope")))
    from pyramid_txmail.dev.previewsource import file_envelope
    [name] = os.listdir(directory)
    assert file_envelope((directory / name).read_bytes()) == (LOOKALIKE_FROM, tuple(toaddrs))
    from pyramid_txmail.dev.previewsource import list_entries, sources
    from pyramid_txmail.settings import parse_settings as parse
    [source] = sources(parse(settings), sender_app.app.registry)
    [entry] = list_entries(source, sender_app.app.registry)
    assert (entry.fromaddr, entry.toaddrs) == (LOOKALIKE_FROM, tuple(toaddrs))


def test_an_in_doubt_message_with_a_long_envelope_is_found_by_its_message_id(tmp_path,
                                                                             server):
    """Recovery asks mail.commit_check by Message-ID; it read only the first 64 KiB,
    which a record of thousands of recipients fills."""
    import time as clock

    from pyramid_txmail.queue.maildir.recovery import recover

    spool = Spool(str(tmp_path / "spool"))
    toaddrs = [f"user{i:05d}@example.com" for i in range(5000)]
    spool.prepare("app@example.com", toaddrs, b"Message-ID: <doubt@example.com>\n\nhi\n")
    asked = []

    def check(message_id, registry):
        asked.append(message_id)
        return True

    assert recover(spool, 0, check, None, clock.time() + 60) == 1
    assert asked == ["<doubt@example.com>"] and len(spool.names("new")) == 1


def test_a_repoze_file_with_the_null_sender_is_sent_from_it(tmp_path, server):
    spool = tmp_path / "spool"
    repoze_queue(spool, "", ["b@example.com"], MIMEText("hi"))
    assert drain_with_txmail(server, spool).sent == 1
    assert session_envelopes(server.handler) == [("", ["b@example.com"])]
