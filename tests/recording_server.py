"""An aiosmtpd server that keeps every byte each client sent, and reads it back.

SMTP smuggling (CVE-2023-51764/51765/51766) needs a sender that puts a line
ending other than CRLF, or an unstuffed dot line, into the DATA section: a
receiver that is lenient about "\\n.\\n" then ends the message early and runs
the rest as commands.  aiosmtpd itself is strict, so looking at what it
accepted would prove little; instead :class:`RecordingSMTP` keeps the raw
transcript of each connection (``data_received``), and :func:`read_transcript`
splits it into commands and DATA sections the strict way while checking the
lenient ways cannot see anything else.
"""
from __future__ import annotations

import re
import threading

from aiosmtpd.smtp import SMTP

from .smtpserver import ScriptedHandler, SMTPServer

#: Every sequence some receiver has taken as the end of DATA (dot between any
#: two line endings) -- only CRLF.CRLF is legal, and only as the terminator.
LENIENT_END = re.compile(rb"(?:\r\n|\r|\n)\.(?:\r\n|\r|\n)")
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class RecordingHandler(ScriptedHandler):
    """A :class:`ScriptedHandler` that also holds the raw bytes of each connection."""

    def __init__(self, script=None):
        super().__init__(script)
        self.transcripts = []
        self._transcript_lock = threading.Lock()

    def new_transcript(self):
        buffer = bytearray()
        with self._transcript_lock:
            self.transcripts.append(buffer)
        return buffer

    def reset(self):
        with self.lock, self._transcript_lock:
            self.messages.clear()
            self.transcripts.clear()


class RecordingSMTP(SMTP):
    def connection_made(self, transport):
        self._transcript = self.event_handler.new_transcript()
        super().connection_made(transport)

    def data_received(self, data):
        self._transcript.extend(data)
        super().data_received(data)


def recording_server(*, smtputf8=True, **kwargs):
    """A started :class:`SMTPServer` whose connections are recorded."""
    server = SMTPServer(handler=RecordingHandler(), enable_smtputf8=smtputf8, **kwargs)
    controller = server.controller
    controller.factory = lambda: RecordingSMTP(controller.handler, **controller.SMTP_kwargs)
    return server


class Transcript:
    """One connection read the strict way: ``commands`` (verbs) and ``data`` sections."""

    def __init__(self, raw):
        self.raw = bytes(raw)
        self.commands = []
        self.data = []
        self.bare_line_endings = len(_BARE.findall(self.raw))
        lines = self.raw.split(b"\r\n")
        tail = lines.pop()  # what followed the last CRLF (nothing, when complete)
        self.incomplete = tail
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper().decode("ascii", "replace")
            self.commands.append(verb)
            if verb == "DATA":
                body = []
                while i < len(lines) and lines[i] != b".":
                    body.append(lines[i])
                    i += 1
                i += 1  # the terminating "."
                self.data.append(b"\r\n".join(body) + b"\r\n" if body else b"")

    def early_ends(self):
        """Lenient end-of-data sequences inside a DATA section (must be none)."""
        return sum(len(LENIENT_END.findall(b"\r\n" + section)) for section in self.data)


def read_transcripts(handler):
    with handler._transcript_lock:
        return [Transcript(raw) for raw in handler.transcripts]
