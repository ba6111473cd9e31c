"""Shared by the envelope tests: send through the real mailer, read what the relay saw.

The envelope a relay sees is read from the raw bytes of the SMTP session (the
``MAIL FROM`` / ``RCPT TO`` command lines, kept by
:mod:`tests.recording_server`), not from a parsed form: a parser could hide
a difference in quoting.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import transaction
from pyramid.config import Configurator

from pyramid_txmail import get_mailer
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir.spool import Spool

from .recording_server import RecordingHandler, RecordingSMTP, read_transcripts
from .smtpserver import SMTPServer

_OPTION = re.compile(rb"(?: [A-Za-z0-9-]+(?:=[!-~]+)?)*")


class Sender:
    """A configured app (queue or direct delivery) that sends to ``server``."""

    def __init__(self, mode, server, spool_path):
        self.mode = mode
        self.spool_path = str(spool_path)
        settings = {"mail.host": server.host, "mail.port": str(server.port),
                    "mail.queue_path": self.spool_path, "mail.timeout": "10",
                    "mail.delivery": mode, "mail.default_sender": "app@example.com"}
        config = Configurator(settings=settings)
        config.include("pyramid_txmail")
        self.registry = config.registry
        self.settings = parse_settings(settings)
        self.server = server

    def send(self, *args):
        """``send(*args)`` in a committed transaction, then delivered (queue: one pass)."""
        manager = transaction.TransactionManager(explicit=True)
        with manager:
            message_id = get_mailer(self.registry, manager).send(*args)
        if self.mode == "queue":
            stats = Processor(Spool(self.spool_path), None, self.settings).run_once()
            assert stats.errors == 0, stats.summary()
        return message_id


def session_envelopes(handler):
    """``[(mail_from, [rcpt_to, ...])]`` of every mail transaction the server was sent,
    exactly as the client wrote them between ``<`` and ``>``."""
    found = []
    for transcript in read_transcripts(handler):
        lines = transcript.raw.split(b"\r\n")
        in_data = False
        for line in lines:
            if in_data:
                in_data = line != b"."
                continue
            upper = line[:10].upper()
            if upper.startswith(b"MAIL FROM:"):
                found.append([_address(line[10:]), []])
            elif upper.startswith(b"RCPT TO:"):
                found[-1][1].append(_address(line[8:]))
            elif line.upper() == b"DATA":
                in_data = True
            elif line.upper() == b"RSET" and found and not found[-1][1]:
                found.pop()
    return [(mail_from, rcpts) for mail_from, rcpts in found]


def _address(rest):
    """The address of ``<address> OPTIONS``; the options must be ESMTP keywords."""
    assert rest.startswith(b"<"), rest
    end = len(rest)
    while True:  # the last '>' that only ESMTP options follow
        end = rest.rindex(b">", 0, end)
        if _OPTION.fullmatch(rest[end + 1:]):
            return rest[1:end].decode("utf-8")


class LiteralSMTP(RecordingSMTP):
    """aiosmtpd taking each address as written between ``<`` and ``>``.

    aiosmtpd parses addresses with the ``email`` package's header parser,
    which decodes RFC 2047 encoded words in them (``=?utf-8?q?a=40b?=.x@c``
    becomes another address or a 501): the same class of defect, in the
    test server.  This one accepts any address and keeps it literally.
    """

    def _getaddr(self, arg):
        rest = arg.strip()
        if not rest.startswith("<"):
            return None, None
        try:
            found = _address(rest.encode("utf-8"))
        except ValueError:
            return None, None
        return found, rest[len(found) + 2:].strip()


def literal_server():
    """A started recording server whose addresses are taken literally."""
    server = SMTPServer(handler=RecordingHandler(), enable_smtputf8=True)
    controller = server.controller
    controller.factory = lambda: LiteralSMTP(controller.handler, **controller.SMTP_kwargs)
    return server


#: ``txmail-qp`` beside this venv's python.
QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
#: Runs a command as its only child and prints that child's peak RSS in KiB.
MEASURE = ("import resource, subprocess, sys\n"
           "done = subprocess.run(sys.argv[1:])\n"
           "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def run_qp_measured(tmp_path, spool, server, tag, timeout=600):
    """One ``txmail-qp --no-app`` pass over ``spool`` into ``server``: ``(peak RSS in
    KiB, stderr)``; the pass must exit 0."""
    ini = tmp_path / f"qp-{tag}.ini"
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {spool.path}\n"
                   f"mail.host = {server.host}\nmail.port = {server.port}\n")
    done = subprocess.run([sys.executable, "-c", MEASURE, QP, str(ini), "--no-app"],
                          capture_output=True, text=True, timeout=timeout)
    returncode, peak = map(int, done.stdout.split())
    assert returncode == 0, done.stderr
    return peak, done.stderr
