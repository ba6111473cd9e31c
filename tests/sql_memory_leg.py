"""One leg of a large message's way through the SQL outbox, in a process of its own.

``python tests/sql_memory_leg.py URL LEG SIZE``, LEG one of:

* ``write-stream``: enqueue a SIZE-octet message given as a wire.Stream whose
  blocks are made as they are asked for (the mailer's large attachment);
* ``write-bytes``: enqueue it given as one bytes object (already in memory);
* ``read``: claim the queued message and read it as the processor does (a
  Stream of its chunks), consuming every block as a relay would.

It prints the number of octets written or read; the test measures its peak RSS.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyramid_txmail.compose import wire  # noqa: E402
from pyramid_txmail.processor.pass_stats import PassStats  # noqa: E402
from pyramid_txmail.queue.sql import SQLQueue, enqueue, init_db  # noqa: E402

HEAD = (b"Message-ID: <big@example.com>\r\nFrom: a@example.com\r\nTo: b@example.com\r\n"
        b"Subject: a large attachment\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n")
LINE = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU2Nzg5YWJjZGVmZ2hpamtsbW5vcHFy\r\n"
BLOCK = LINE * 1024


def blocks(size):
    """The message in blocks of ~74 KiB, made one at a time."""
    yield HEAD
    left = size - len(HEAD)
    while left > 0:
        block = BLOCK[:left]
        left -= len(block)
        yield block


def main(url, leg, size):
    size = int(size)
    queue = SQLQueue(url)
    init_db(queue.engine)
    if leg.startswith("write"):
        data = (wire.Stream(lambda: blocks(size), size=size) if leg == "write-stream"
                else b"".join(blocks(size)))
        with queue.engine.begin() as connection:
            enqueue(connection, "a@example.com", ["b@example.com"], data)
        print(size)
        return
    [claimed] = list(queue.candidates(time.time(), 10 ** 9, PassStats()))
    _, _, data = queue.read(claimed, stream_over=1 << 20)
    total = sum(len(block) for block in data) if isinstance(data, wire.Stream) else len(data)
    queue.retire(claimed)
    print(total)


if __name__ == "__main__":
    main(*sys.argv[1:])
