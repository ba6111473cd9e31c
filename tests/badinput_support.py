"""The harness of tests/test_badinput.py: send one input for real, read back what arrived.

:class:`Harness` owns two recording aiosmtpd servers on 127.0.0.1 (one
offering SMTPUTF8, one not) and, per (delivery mode, server), a configured
registry and its spool.  :meth:`Harness.send` puts one message through
``request.mailer.send`` in a transaction -- queued then drained by the
:class:`~pyramid_txmail.processor.processor.Processor`, or delivered directly after the
commit -- and returns an :class:`Outcome`: refused in ``send`` (nothing may
be queued), delivered (the bytes the server got), or held in the spool with
a reason.  :func:`read_back` parses what arrived the way a standards-following
reader does.
"""
from __future__ import annotations

import collections
import dataclasses
import email
import email.header
import email.policy
import email.utils
import os
import re
import shutil

import pytest
import transaction
from hypothesis import HealthCheck, settings
from pyramid.config import Configurator

from pyramid_txmail import get_mailer
from pyramid_txmail.compose.reading import filename as filename_of  # noqa: F401 -- shared
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.relay.smtp import SMTPTransport
from pyramid_txmail.queue.maildir.spool import STATES, Spool

from .recording_server import read_transcripts, recording_server
from .reliability import runs

SENDER = "Sender <sender@example.org>"
#: Headers ``send`` (or the MIME structure) writes itself.
GENERATED = {"from", "message-id", "date", "mime-version", "content-type",
             "content-transfer-encoding"}
#: SMTP commands a client may send around one message.
CLIENT_VERBS = {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "QUIT", "NOOP"}


@dataclasses.dataclass
class Outcome:
    refused: Exception | None = None
    received: list = dataclasses.field(default_factory=list)  # tests.smtpserver.Received
    held: list = dataclasses.field(default_factory=list)  # (state, reason)
    transcripts: list = dataclasses.field(default_factory=list)
    lost: int = 0


class Tally:
    """Counts for tests/reliability.record, over every example of one property."""

    def __init__(self):
        self.counts = collections.Counter()

    def add(self, outcome):
        c = self.counts
        c["bad_inputs"] += 1
        if outcome.refused is not None:
            c["held"] += 1  # refused before the commit
            return
        c["messages"] += 1
        c["delivered"] += min(len(outcome.received), 1)
        c["duplicated"] += max(len(outcome.received) - 1, 0)
        c["held"] += len(outcome.held)
        c["lost"] += outcome.lost

    def __getitem__(self, key):
        return self.counts[key]

    def record(self, scenario, detail=""):
        from .reliability import record

        c = self.counts
        record("badinput", scenario, runs=c["bad_inputs"], messages=c["messages"],
               delivered=c["delivered"], duplicated=c["duplicated"], lost=c["lost"],
               held=c["held"], bad_inputs=c["bad_inputs"], detail=detail)


class Harness:
    def __init__(self, root):
        self.root = root
        self.servers = {True: recording_server(smtputf8=True),
                        False: recording_server(smtputf8=False)}
        self._registries = {}

    def close(self):
        for server in self.servers.values():
            server.stop()

    def spool_path(self, mode, utf8):
        return os.path.join(self.root, f"{mode}-{'utf8' if utf8 else 'ascii'}")

    def settings(self, mode, utf8):
        server = self.servers[utf8]
        return {"mail.host": server.host, "mail.port": str(server.port),
                "mail.queue_path": self.spool_path(mode, utf8), "mail.timeout": "10",
                "mail.default_sender": SENDER, "mail.workers": "1",
                "mail.delivery": mode}

    def registry(self, mode, utf8):
        key = (mode, utf8)
        if key not in self._registries:
            config = Configurator(settings=self.settings(mode, utf8))
            config.include("pyramid_txmail")
            config.commit()
            self._registries[key] = config.registry
        return self._registries[key]

    def send(self, message, mode="queue", utf8=True, args=None):
        """One message through ``mailer.send`` (``args``: an explicit envelope)."""
        server = self.servers[utf8]
        server.handler.reset()
        spool = Spool(self.spool_path(mode, utf8))
        self._clear(spool)
        manager = transaction.TransactionManager(explicit=True)
        mailer = get_mailer(self.registry(mode, utf8), manager)
        outcome = Outcome()
        try:
            with manager:
                mailer.send(*(args or ()), message)
        except Exception as exc:  # noqa: BLE001 -- the property looks at it
            outcome.refused = exc
            leftover = [n for s in ("tmp", "new") for n in os.listdir(spool._dir(s))]
            assert not leftover, f"refused in send() but left {leftover} in the spool"
            assert not server.messages, "refused in send() but something was sent"
            return outcome
        committed = 1
        if mode == "queue":
            settings = parse_settings(self.settings(mode, utf8))
            with SMTPTransport.from_settings(settings) as transport:
                stats = Processor(spool, transport, settings).run_once()
            assert stats.errors == 0, stats.summary()
        outcome.received = list(server.messages)
        outcome.transcripts = read_transcripts(server.handler)
        for state in ("new", "deferred", "failed", "cur"):
            for name in spool.names(state):
                reason = spool.read_meta(name).get("reason") if state == "failed" else state
                outcome.held.append((state, reason))
        outcome.lost = max(committed - min(len(outcome.received), 1) - len(outcome.held), 0)
        return outcome

    @staticmethod
    def _clear(spool):
        for state in STATES:
            directory = spool._dir(state)
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


# -- reading back what arrived ----------------------------------------------------------

def read_back(data):
    """The received bytes as a message, for its bodies and attachments (headers
    are read with :func:`raw_headers`: RFC 6532 UTF-8 text decoded as UTF-8)."""
    return email.message_from_bytes(data, policy=email.policy.default)


def unfold(value):
    """A header value unfolded as RFC 5322 section 2.2.3 says: "simply removing any
    CRLF that is immediately followed by WSP" -- the WSP stays, and the unfolded
    form is the value "for further syntactic and semantic evaluation".

    Both what arrived and a caller's legacy ``Message`` value (raw text, where
    ``"0\\n 0"`` is a folded line) are compared in this form.
    """
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def raw_headers(data):
    """``[(name, unfolded raw value)]`` of the top-level header block, as sent."""
    text = data.decode("utf-8", "surrogateescape")
    message = email.message_from_string(text, policy=email.policy.compat32)
    return [(name, unfold(value)) for name, value in message.items()]


def decoded(raw):
    """An unstructured header value decoded as RFC 2047 says (an encoded word in
    an unknown charset, or raw 8-bit text, read as the email package reads it)."""
    try:
        return str(email.header.make_header(email.header.decode_header(raw)))
    except (LookupError, UnicodeError):
        return str(email.policy.default.header_factory("x-any", raw))


def mailboxes(raw):
    """``[(display name, addr-spec)]`` of an address header, read strictly:
    encoded words only in the display name, never inside the address."""
    found = []
    for name, addr in email.utils.getaddresses([raw]):
        assert "=?" not in addr, f"an encoded word inside the address {addr!r}"
        found.append((decoded(name) if "=?" in name else name, addr))
    return found


def idna_address(address):
    """``local@domain`` with the domain in its ASCII (A-label) form."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.encode('idna').decode('ascii').lower()}"


def check_transcripts(outcome, sends=1):
    """No bare CR/LF, no early end of DATA, nothing but SMTP client commands, at
    most one MAIL transaction and one DATA section per send, and a DATA section
    for every message the server received (one it refused may have had one)."""
    mails = sections = 0
    for transcript in outcome.transcripts:
        assert transcript.bare_line_endings == 0, transcript.raw[:2000]
        assert transcript.early_ends() == 0
        assert set(transcript.commands) <= CLIENT_VERBS, transcript.commands
        assert not transcript.incomplete
        mails += transcript.commands.count("MAIL")
        sections += len(transcript.data)
        assert transcript.commands.count("DATA") <= transcript.commands.count("MAIL")
    assert len(outcome.received) <= sends and mails <= sends and sections <= sends
    assert sections >= len(outcome.received)


def examples(quick, long):
    """hypothesis settings: ``runs(quick, long)`` examples, no deadline; the seed and
    the example database are the profile's (tests/reliability.py: gate or explore)."""
    return settings(max_examples=runs(quick, long), deadline=None,
                    suppress_health_check=list(HealthCheck))


def module_harness(name):
    """A module-scoped ``harness`` fixture: one :class:`Harness` per test module."""
    @pytest.fixture(scope="module")
    def harness(tmp_path_factory):
        harness = Harness(str(tmp_path_factory.mktemp(name)))
        yield harness
        harness.close()

    return harness
