"""Issue 11 finding 9, round 2: memory and time bounded whatever a queue file's header block.

An outside probe hand-made queue files (as a person, or repoze.sendmail's
and pyramid_mailer's queues, can) whose header block is many megabytes:
thousands of short lines, one folded field, one enormous line.  txmail-qp
held the header block about five times over (50 MiB: 279 MB), and an
enormous line went through the email package's encoded-word folding, whose
time grows faster than the line (16 MiB: 40 s; 50 MiB: minutes, deaf to
SIGTERM).

What is checked is behaviour, not timing: the peak memory of a real
txmail-qp process stays near that of a tiny message, the relay gets exactly
the message (without the envelope lines), a header line over SMTP's 998
octets is refolded when it is of a sane size, and a header field too large
to refold is dead-lettered with a reason that names it.
"""
from __future__ import annotations

import email.parser
import email.policy
import json
import os
import subprocess
import sys
import time

import pytest

from pyramid_txmail.queue.maildir.spool import Spool

from .envelope_support import MEASURE, run_qp_measured
from .reliability import record
from .smtpserver import SMTPServer

pytestmark = pytest.mark.reliability

#: The size of the big header blocks: holding one even once shows in the peak.
SIZE = 8 << 20
RECORD = b"From txmail-envelope-1 app@example.com bob@example.com\n"
LEGACY = b"X-Actually-From: app@example.com\nX-Actually-To: bob@example.com\n"
TOP = b"From: app@example.com\nTo: bob@example.com\nMessage-ID: <big@example.com>\n"
END = b"Subject: big header\n\nbody\n"


def _many(size):
    line = b"X-Filler: " + b"a" * 68 + b"\n"
    return line * (size // len(line))


def _folded(size):
    line = b" " + b"a" * 76 + b"\n"
    return b"X-Folded: start\n" + line * (size // len(line))


SHAPES = {  # name: (envelope lines, header block filler)
    "short lines": (RECORD, _many),
    "short lines, repoze.sendmail file": (LEGACY, _many),
    "one folded field": (RECORD + LEGACY, _folded),
}


def _queue(spool, envelope, message):
    """Hand-make a queue file in ``new/``, as the probe did."""
    name = f"{int(time.time())}.M1P1Q{len(spool.names('new'))}R0.handmade"
    path = os.path.join(spool.path, "tmp", name)
    with open(path, "wb") as f:
        f.write(envelope + message)
    os.rename(path, os.path.join(spool.path, "new", name))
    return name


def _send(tmp_path, server, tag, envelope, message):
    spool = Spool(str(tmp_path / f"spool-{tag}"))
    _queue(spool, envelope, message)
    peak, stderr = run_qp_measured(tmp_path, spool, server, tag)
    return spool, peak, stderr


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """txmail-qp's peak sending a tiny message, in KiB."""
    tmp_path = tmp_path_factory.mktemp("baseline")
    with SMTPServer() as server:
        _, peak, stderr = _send(tmp_path, server, "tiny", RECORD, TOP + END)
        assert len(server.messages) == 1, stderr
    return peak


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_big_header_block_is_streamed_and_arrives_exactly(tmp_path, baseline, shape):
    envelope, filler = SHAPES[shape]
    message = TOP + filler(SIZE) + END
    with SMTPServer() as server:
        spool, peak, stderr = _send(tmp_path, server, "big", envelope, message)
        assert spool.names("new") == [] and spool.names("failed") == [], stderr
        [got] = server.messages
    assert got.rcpt_tos == ["bob@example.com"] and got.mail_from == "app@example.com"
    assert got.data == message.replace(b"\n", b"\r\n"), "the relay got other bytes"
    grew = (peak - baseline) * 1024
    detail = (f"{shape}: peak RSS {peak} KiB with a {SIZE >> 20} MiB header block, "
              f"{baseline} KiB with a tiny message")
    print(detail)
    record("envelope", f"A queue file with a {SIZE >> 20} MiB header block of {shape} "
           "(txmail-qp peak memory)", messages=1, delivered=1, detail=detail)
    assert grew < SIZE / 2, f"peak memory grew by {grew >> 20} MiB for a " \
                            f"{SIZE >> 20} MiB header block"


def test_a_header_field_too_large_to_refold_is_dead_lettered(tmp_path, baseline):
    """One line of 8 MiB: re-encoding it took seconds to minutes and 5x its size."""
    message = TOP + b"X-Long: " + b"a" * SIZE + b"\n" + END
    with SMTPServer() as server:
        spool, peak, stderr = _send(tmp_path, server, "long", RECORD, message)
        assert server.messages == [], "an 8 MiB header line was sent"
    [name] = spool.names("failed")
    reason = spool.read_meta(name)["reason"]
    assert "X-Long" in reason and "998" in reason, reason
    assert "X-Long" in stderr, stderr
    grew = (peak - baseline) * 1024
    detail = f"one {SIZE >> 20} MiB header line: peak RSS {peak} KiB, dead-lettered: {reason}"
    print(detail)
    record("envelope", f"A queue file with one {SIZE >> 20} MiB header line (dead-lettered; "
           "txmail-qp peak memory)", messages=1, held=1, detail=detail)
    assert grew < SIZE / 2, f"peak memory grew by {grew >> 20} MiB for a " \
                            f"{SIZE >> 20} MiB header line"


def _fields(data):
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    return parser.parsebytes(data)


@pytest.mark.parametrize("big_body", [False, True], ids=["read whole", "streamed"])
def test_over_long_header_lines_of_a_sane_size_are_refolded(tmp_path, big_body):
    """Lines over 998 octets are folded (at whitespace, else as encoded words), each
    field on its own, whether the file is read whole or streamed."""
    spaced = " ".join(f"w{i:04d}" for i in range(2000))  # 12 KB, foldable at spaces
    solid = "b" * 20000  # no whitespace: encoded words
    body = (b"0123456789" * 7 + b"\n") * ((4 << 20) // 71 if big_body else 3)
    message = (TOP + f"X-Spaced: {spaced}\nX-Solid: {solid}\n".encode()
               + b"Subject: refolded\n\n" + body)
    with SMTPServer() as server:
        spool = Spool(str(tmp_path / "spool"))
        _queue(spool, RECORD, message)
        _, stderr = run_qp_measured(tmp_path, spool, server, "refold")
        assert spool.names("failed") == [] and spool.names("new") == [], stderr
        [got] = server.messages
    lines = got.data.split(b"\r\n")
    assert max(map(len, lines)) <= 998
    assert b"\n" not in got.data.replace(b"\r\n", b"")
    head, _, got_body = got.data.partition(b"\r\n\r\n")
    assert got_body == body.replace(b"\n", b"\r\n")
    fields = _fields(head + b"\r\n\r\n")
    assert str(fields["X-Spaced"]) == spaced and str(fields["X-Solid"]) == solid
    assert str(fields["Message-ID"]) == "<big@example.com>"
    assert b"X-Spaced: " + spaced[:60].encode() in head  # folded, not encoded


def test_the_dead_letter_reason_is_in_the_state_file_as_one_line(tmp_path):
    """The reason names the field, its size and the limit; no traceback."""
    message = TOP + b"Subject: " + b"x" * (2 << 20) + b"\n\nbody\n"
    with SMTPServer() as server:
        spool = Spool(str(tmp_path / "spool"))
        _queue(spool, RECORD, message)
        _, stderr = run_qp_measured(tmp_path, spool, server, "reason")
        assert server.messages == []
    [name] = spool.names("failed")
    with open(os.path.join(spool.path, "meta", name + ".json")) as f:
        reason = json.load(f)["reason"]
    assert "\n" not in reason and "Subject" in reason and "Traceback" not in stderr, stderr


def _boundary_files():
    """Queue files whose line endings fall on the scanner's piece boundary."""
    from pyramid_txmail.queue.maildir.spoolscan import PIECE
    for ending in (b"\n", b"\r\n", b"\r"):
        for envelope in (RECORD, LEGACY):
            for shift in (-2, -1, 0, 1):
                # the X-Pad line's ending falls around the end of the first piece;
                # a line over 998 octets but foldable: the refold path is used too
                pad = PIECE - len(b"X-Pad: ") - len(ending) + shift
                filler = b"X-Pad: " + b"p " * (pad // 2) + b"p" * (pad % 2) + b"\n"
                yield (envelope + filler + TOP + END).replace(b"\n", ending)


def test_the_scanner_reads_what_the_header_parser_reads():
    """Envelope and message as :func:`spoolfile.split_envelope` (the reader that
    holds the header block) gives them, whatever line endings and where they fall."""
    import io

    from pyramid_txmail.compose import wire
    from pyramid_txmail.queue.maildir.spoolfile import split_envelope
    from pyramid_txmail.queue.maildir.spoolscan import scan

    for data in _boundary_files():
        layout = scan(io.BytesIO(data))
        fromaddr, toaddrs, message = split_envelope(data)
        assert (layout.fromaddr, layout.toaddrs) == (fromaddr, toaddrs)
        sent = b"".join(layout.chunks(io.BytesIO(data)))
        assert wire.to_wire(sent) == wire.to_wire(message)
        assert layout.size == len(sent) and layout.message_id == "<big@example.com>"


def test_txmail_queue_lists_a_big_header_block_with_bounded_memory(tmp_path):
    """``txmail-queue list`` read every header block whole and parsed it (50 MiB:
    607 MB, 48 s); it now shows the first 256 KiB of it."""
    queue = os.path.join(os.path.dirname(sys.executable), "txmail-queue")
    peaks = {}
    for tag, filler in (("tiny", b""), ("big", _many(SIZE))):
        spool = Spool(str(tmp_path / f"spool-{tag}"))
        _queue(spool, RECORD, TOP + filler + END)
        ini = tmp_path / f"queue-{tag}.ini"
        ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {spool.path}\n")
        done = subprocess.run([sys.executable, "-c", MEASURE, queue, str(ini), "list"],
                              capture_output=True, text=True, timeout=600)
        returncode, peaks[tag] = map(int, done.stdout.splitlines()[-1].split())
        assert returncode == 0 and "app@example.com -> bob@example.com" in done.stdout, done
    grew = (peaks["big"] - peaks["tiny"]) * 1024
    assert grew < SIZE / 2, f"txmail-queue list grew by {grew >> 20} MiB for a " \
                            f"{SIZE >> 20} MiB header block"


def test_a_view_sending_a_header_field_too_large_to_refold_gets_an_error_naming_it():
    """The mailer's sibling: wire.to_wire refused nothing, and the email package
    spent seconds to minutes of the request on an enormous header line."""
    from email.message import Message

    from pyramid_txmail.compose.message import MessageError, prepare

    msg = Message()
    msg["From"] = "app@example.com"
    msg["To"] = "bob@example.com"
    msg["X-Long"] = "c" * (1 << 20)
    msg.set_payload("body\n")
    with pytest.raises(MessageError, match="X-Long.*998"):
        prepare(msg)
    del msg["X-Long"]
    msg["X-Long"] = "c" * 5000  # a sane size: refolded as before
    data = prepare(msg).data
    assert max(map(len, data.split(b"\n"))) <= 998
    assert str(_fields(data)["X-Long"]) == "c" * 5000
