"""The spool drain's batched work keeps the spool's promises (issue 14, item 2).

Delivered files leave the queue by a rename into ``done/`` and are deleted by
reaper threads in batches (``REAP_BATCH``): a pass must still delete every one
before it returns, whether it retired fewer than a batch, several batches, or a
batch and a remainder; and a message is still read right when it is read whole
(in memory) rather than streamed.
"""
from __future__ import annotations

import os

import pytest

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.queue.maildir.backend import REAP_BATCH, MaildirQueue
from pyramid_txmail.queue.maildir.spool import Spool
from pyramid_txmail.settings import parse_settings

FROM = "sender@example.org"


def _queue(spool, count):
    for i in range(count):
        data = (f"From: {FROM}\r\nTo: r{i}@example.org\r\nSubject: n{i}\r\n"
                f"Message-ID: <b{i}@example.org>\r\n\r\nbody {i}\r\n").encode()
        spool.commit_tmp([spool.write_tmp(FROM, [f"r{i}@example.org"], data)])


@pytest.mark.parametrize("count", [1, REAP_BATCH, 2 * REAP_BATCH + 3])
def test_a_pass_deletes_every_delivered_file_before_it_returns(tmp_path, smtp_server, count):
    spool = Spool(str(tmp_path / "spool"))
    _queue(spool, count)
    settings = parse_settings({"mail.queue_path": spool.path, "mail.host": smtp_server.host,
                               "mail.port": str(smtp_server.port), "mail.workers": "2"})
    stats = Processor(MaildirQueue(spool), None, settings).run_once()
    assert stats.sent == count and stats.errors == 0
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(
        f"r{i}@example.org" for i in range(count))
    for state in ("new", "cur", "meta", "done"):
        assert os.listdir(os.path.join(spool.path, state)) == [], state


def test_a_message_read_whole_is_the_message_streamed(tmp_path):
    """The in-memory read (files up to stream_over) and the streamed read give the
    same envelope and bytes, a long header field refolded in both."""
    spool = Spool(str(tmp_path / "spool"))
    long_value = " ".join(f"word{i}" for i in range(400))  # one line over 998 octets
    data = (f"From: {FROM}\nTo: a@example.org\nX-Long: {long_value}\n"
            "Message-ID: <w@example.org>\n\nbody\n").encode()
    spool.commit_tmp([spool.write_tmp(FROM, ["a@example.org", "b@example.org"], data)])
    [name] = spool.names("new")
    entry = spool.claim("new", name)
    try:
        whole = spool.read(entry, stream_over=None)
        streamed = spool.read(entry, stream_over=1)
        streamed_bytes = b"".join(streamed[2])  # read through the claim's fd, still open
    finally:
        entry.release()
    assert whole[0] == streamed[0] == FROM
    assert list(whole[1]) == list(streamed[1]) == ["a@example.org", "b@example.org"]
    assert isinstance(whole[2], bytes)
    assert whole[2] == streamed_bytes
    assert max(len(line) for line in whole[2].split(b"\r\n")) <= 998
