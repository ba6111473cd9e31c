"""A 50 MiB queue file is DKIM-signed without being loaded whole.

The bound is a behaviour, not a timing: the peak memory of a real ``txmail-qp``
process signing and sending a 50 MiB message stays far below the message's size,
measured against the same process signing a 256 KiB one (as
tests/test_envelope_stream.py measures streaming itself).  The 50 MiB message the
server got verifies with dkimpy.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from pyramid_txmail.compose.wire import Stream
from pyramid_txmail.queue.maildir.spool import Spool

from .dkim_support import KeyRecords, signature_tags, verify, write_key
from .envelope_support import MEASURE, QP
from .reliability import record
from .smtpserver import SMTPServer

pytestmark = pytest.mark.reliability

BIG = 50 * 1024 * 1024
HEAD = (b"From: Reports <reports@example.com>\nTo: bob@example.org\nSubject: the big one\n"
        b"Message-ID: <big-dkim@example.com>\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=us-ascii\n\n")
LINE = b".0123456789abcdefghijklmnopqrstuvwxyz  ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 \t\n"


def _peak_kib(tmp_path, server, key_path, body_size, sign=True):
    tag = f"{body_size}-{'signed' if sign else 'plain'}"
    spool = Spool(str(tmp_path / f"spool-{tag}"))
    lines = body_size // len(LINE)

    def message():
        yield HEAD
        block = LINE * 8192
        for _ in range(lines // 8192):
            yield block
        yield LINE * (lines % 8192)

    name = spool.write_tmp("reports@example.com", ["bob@example.org"], Stream(message))
    spool.commit_tmp([name])
    ini = tmp_path / f"qp-{tag}.ini"
    dkim = (f"mail.dkim_private_key = {key_path}\nmail.dkim_selector = s1\n"
            "mail.dkim_domain = example.com\n") if sign else ""
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {spool.path}\n"
                   f"mail.host = {server.host}\nmail.port = {server.port}\n{dkim}")
    done = subprocess.run([sys.executable, "-c", MEASURE, QP, str(ini), "--no-app"],
                          capture_output=True, text=True, timeout=600)
    returncode, peak = map(int, done.stdout.split())
    assert returncode == 0, done.stderr
    assert spool.names("new") == [] and spool.names("failed") == [], done.stderr
    return peak


def test_a_50_mib_message_is_signed_in_bounded_memory_and_verifies(tmp_path):
    key_path, der = write_key(tmp_path)
    with SMTPServer() as server:
        small = _peak_kib(tmp_path, server, key_path, 256 * 1024)
        big = _peak_kib(tmp_path, server, key_path, BIG)
        unsigned = _peak_kib(tmp_path, server, key_path, BIG, sign=False)
        _, got, plain = server.messages
    assert len(got.data) > BIG and signature_tags(got.data)["d"] == "example.com"
    assert b"DKIM-Signature" not in plain.data
    ok, why = verify(got.data, KeyRecords().publish("s1", "example.com", der))
    assert ok, why
    grew = (big - small) * 1024
    print(f"txmail-qp peak RSS signing: {small} KiB (256 KiB body), {big} KiB "
          f"({BIG >> 20} MiB body), {unsigned} KiB for the {BIG >> 20} MiB body unsigned")
    record("dkim", f"DKIM-signing a {BIG >> 20} MiB queue file (txmail-qp peak memory)",
           messages=1, delivered=1,
           detail=f"peak RSS {small} KiB with a 256 KiB body, {big} KiB with "
                  f"{BIG >> 20} MiB ({unsigned} KiB unsigned)")
    assert grew < BIG / 4, f"peak memory grew by {grew >> 20} MiB for a {BIG >> 20} MiB message"
