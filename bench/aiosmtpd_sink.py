"""An aiosmtpd SMTP sink for the benchmarks: accepts every message and drops it.

Run as its own process (``python bench/aiosmtpd_sink.py PORT [--lenient]``)
so that the sink and the client under test never share an interpreter (or a
GIL).  It prints ``ready`` on stdout once it listens and runs until SIGTERM.
It keeps only a count, so that a long run cannot fill the memory.

``--lenient`` accepts lines of any length.  repoze.sendmail's ``qp`` sends
bare LF line endings, so to aiosmtpd (which splits DATA at CRLF, as RFC 5321
says) a whole 2 KB message is one 2 KB line: the default, strict sink answers
"500 Line too long" and qp then deletes the message.  The throughput drains
use the lenient sink so that qp's figure is a delivery rate.
"""
from __future__ import annotations

import signal
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class LenientSMTP(SMTP):
    """aiosmtpd without its 1001-octet line limit (bare-LF messages arrive as one line)."""

    line_length_limit = 1 << 24


class LenientController(Controller):
    def factory(self):
        return LenientSMTP(self.handler, **self.SMTP_kwargs)


class DiscardHandler:
    """250 for every message; nothing is stored."""

    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        return "250 2.0.0 Ok: discarded"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    lenient = "--lenient" in argv
    argv = [a for a in argv if a != "--lenient"]
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: aiosmtpd_sink.py PORT [--lenient]", file=sys.stderr)
        return 2
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    handler = DiscardHandler()
    factory = LenientController if lenient else Controller
    controller = factory(handler, hostname="127.0.0.1", port=int(argv[0]), ready_timeout=10)
    controller.start()
    print("ready", flush=True)
    stopped.wait()
    controller.stop()
    print(f"received {handler.count}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
