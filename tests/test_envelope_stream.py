"""Issue 11 finding 9: a queue file is streamed to the relay whatever its header size.

A header block over 64 KiB (a 100 KB Subject, or thousands of recipients on
the envelope line) used to turn streaming off, and txmail-qp then held the
whole message (several copies of it) in memory.  The bound checked here is
a behaviour, not a timing: the peak memory of a real txmail-qp process
sending a large message stays far below that message's size, measured
against the same process sending a small message with the same header block.
"""
from __future__ import annotations

import pytest

from pyramid_txmail.queue.maildir.spool import Spool

from .envelope_support import run_qp_measured
from .reliability import record
from .smtpserver import SMTPServer

pytestmark = pytest.mark.reliability

BODY_LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\n"
BIG = 32 * 1024 * 1024


def _long_subject_head():
    words = " ".join(f"word{i:05d}" for i in range(10000))  # ~100 KB, folded below
    lines, line = [], "Subject:"
    for word in words.split():
        if len(line) + 1 + len(word) > 76:
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return ("\n".join(lines) + "\nMessage-ID: <big@example.com>\n").encode()


CASES = {
    "100 KB Subject": (["rcpt@example.com"], _long_subject_head()),
    "5,000 recipients": ([f"user{i:05d}@example.com" for i in range(5000)],
                         b"Subject: many\nMessage-ID: <big@example.com>\n"),
}


def _peak_kib(tmp_path, server, toaddrs, head, body_size):
    spool = Spool(str(tmp_path / f"spool-{body_size}"))
    body = BODY_LINE * (body_size // len(BODY_LINE))

    def message():
        yield head + b"\n"
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    from pyramid_txmail.compose.wire import Stream
    name = spool.write_tmp("app@example.com", toaddrs, Stream(message))
    spool.commit_tmp([name])
    del body
    peak, stderr = run_qp_measured(tmp_path, spool, server, body_size, timeout=300)
    assert spool.names("new") == [] and spool.names("failed") == [], stderr
    return peak


@pytest.mark.parametrize("case", list(CASES))
def test_a_large_message_with_a_large_header_block_is_streamed(tmp_path, case):
    toaddrs, head = CASES[case]
    with SMTPServer() as server:
        small = _peak_kib(tmp_path, server, toaddrs, head, 256 * 1024)
        big = _peak_kib(tmp_path, server, toaddrs, head, BIG)
        [_, got] = server.messages
    assert len(got.data) > BIG and got.rcpt_tos == toaddrs
    assert got.data.startswith(head.replace(b"\n", b"\r\n"))
    grew = (big - small) * 1024
    print(f"{case}: txmail-qp peak {small} KiB (256 KiB body), {big} KiB "
          f"({BIG >> 20} MiB body): grew {grew / BIG:.1%} of the message size")
    record("envelope", f"Streaming a {BIG >> 20} MiB queue file with a {case} header block "
           "(txmail-qp peak memory)", messages=1, delivered=1,
           detail=f"{case}: peak RSS {small} KiB with a 256 KiB body, {big} KiB with "
                  f"{BIG >> 20} MiB")
    assert grew < BIG / 4, f"peak memory grew by {grew >> 20} MiB for a {BIG >> 20} MiB message"
