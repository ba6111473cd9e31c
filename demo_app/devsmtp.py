"""A local development SMTP server that drops every message into an inbox directory.

Nothing is relayed anywhere: each message the server accepts becomes one file
``<UTC time>-<counter>.eml`` in the inbox directory, so the demo's ``/inbox``
page (or any mail client, or ``ls``) can show what the application sent.

The file holds the message bytes exactly as they came over the wire (CRLF line
endings, dot-stuffing undone), with the SMTP envelope prepended as two header
lines, the way an MTA prepends ``Return-Path:``/``Delivered-To:`` on final
delivery::

    X-Envelope-From: demo@example.com
    X-Envelope-To: newcomer@example.org

A file is written under a dot-name first and renamed into place when complete,
so a reader never sees half a message (readers skip dotfiles).

Run it on its own::

    python -m demo_app.devsmtp --port 8025 --inbox var/demo/inbox
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import signal
import threading
import time

from aiosmtpd.controller import Controller

log = logging.getLogger(__name__)

_counter = itertools.count()
_counter_lock = threading.Lock()


def _inbox_name():
    """A file name that sorts by arrival time and is unique within this process."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    with _counter_lock:
        count = next(_counter)
    return f"{stamp}.{int(now % 1 * 1e6):06d}Z-{os.getpid()}-{count}.eml"


def _envelope_value(value):
    # Addresses may be UTF-8 (SMTPUTF8); header lines must not break.
    return value.replace("\r", " ").replace("\n", " ").encode("utf-8")


def write_message(inbox, mail_from, rcpt_tos, data):
    """Store one received message in ``inbox``; return the file's path."""
    os.makedirs(inbox, exist_ok=True)
    name = _inbox_name()
    tmp_path = os.path.join(inbox, "." + name + ".tmp")
    final_path = os.path.join(inbox, name)
    envelope = (b"X-Envelope-From: " + _envelope_value(mail_from or "") + b"\r\n"
                + b"X-Envelope-To: " + _envelope_value(", ".join(rcpt_tos)) + b"\r\n")
    with open(tmp_path, "xb") as fh:
        fh.write(envelope)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp_path, final_path)
    return final_path


class InboxHandler:
    """aiosmtpd handler: accept every message and write it to the inbox."""

    def __init__(self, inbox):
        self.inbox = str(inbox)

    async def handle_DATA(self, server, session, envelope):
        try:
            path = write_message(self.inbox, envelope.mail_from,
                                 envelope.rcpt_tos, envelope.original_content)
        except OSError as exc:
            log.error("devsmtp: cannot store message in %s: %s", self.inbox, exc)
            return "451 4.3.0 cannot store the message in the inbox"
        log.info("devsmtp: message from %s to %s stored as %s",
                 envelope.mail_from, ", ".join(envelope.rcpt_tos),
                 os.path.basename(path))
        return "250 2.0.0 OK stored in inbox"


class DevSMTPServer:
    """The dev server in a background thread: ``start()`` / ``stop()`` or ``with``."""

    def __init__(self, inbox, host="127.0.0.1", port=8025):
        self.inbox = str(inbox)
        self.host = host
        self.port = port
        self._controller = Controller(InboxHandler(self.inbox), hostname=host,
                                      port=port, enable_SMTPUTF8=True)

    def start(self):
        os.makedirs(self.inbox, exist_ok=True)
        self._controller.start()
        log.debug("devsmtp: listening on %s:%s, inbox %s", self.host, self.port, self.inbox)
        return self

    def stop(self):
        self._controller.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m demo_app.devsmtp",
        description="Local development SMTP server: stores every message it "
                    "receives as an .eml file in an inbox directory.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8025,
                        help="port to listen on (default: %(default)s)")
    parser.add_argument("--inbox", required=True, help="directory for received messages")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)  # aiosmtpd's own "mail.log" chatter stays at WARNING
    # SIGTERM and SIGINT are blocked before the server's thread starts (it
    # inherits the mask) and taken here with sigwait: no Python signal handler
    # runs, so none can interrupt a lock held by this thread (a handler calling
    # Event.set() while the main thread sits in Event.wait() deadlocks).
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    for signum in stop_signals:  # not ignored (as in a background job): sigwait sees it
        signal.signal(signum, signal.SIG_DFL)
    try:
        server = DevSMTPServer(args.inbox, args.host, args.port).start()
    except (OSError, RuntimeError) as exc:
        parser.exit(2, f"devsmtp: cannot listen on {args.host}:{args.port}: {exc}\n")
    print(f"devsmtp: listening on {args.host}:{args.port}, writing to "
          f"{os.path.abspath(args.inbox)} (Ctrl-C to stop)", flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
