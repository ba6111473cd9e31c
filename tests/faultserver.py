"""A fault-injecting SMTP server for the reliability suite (aiosmtpd, 127.0.0.1).

:class:`FaultHandler` is the :class:`~tests.smtpserver_extra.ExtraHandler`
(itself a :class:`~tests.smtpserver.ScriptedHandler`) with the faults a real
relay shows, all driven by ``handler.script``:

* replies at every stage: ``"mail"``, ``"rcpt"`` (one reply, or a dict
  recipient → reply), ``"data-command"`` (instead of 354) and ``"data"``
  (after the final dot); a list of replies is used one per command, the
  last one sticking (``{"mail": ["451 ...", "250 OK"]}`` refuses only the
  first message).  Any 421 reply is followed by closing the
  connection, as RFC 5321 3.8 says a server that sends 421 does, and
  ``script["close"] = stage`` closes it after a refusal at that stage;
  ``script["ehlo"] = "421 ..."`` refuses the session at EHLO (and closes);
* drops (``script["drop"]``): ``"mail"``, ``"rcpt"`` (``script["drop-rcpt"]``
  lists the recipients whose RCPT is dropped, else the first one),
  ``"data-command"`` (before the 354), ``"data-mid"`` (after the 354 and the
  first line of data: before the final dot, nothing stored),
  ``"data-before"`` (whole message read, nothing stored, no reply) and
  ``"data-after"`` (message stored, connection closed instead of the 250 --
  the RFC 1047 duplicate window);
* slow replies (``script["delay"]`` in seconds per stage): ``"ehlo"``,
  ``"mail"``, ``"rcpt"``, ``"data-command"``, ``"data"`` (the message is
  stored *first*, then the 250 comes late: a client that times out there
  has in fact delivered it);
* STARTTLS offered or not: start the server with a ``tls_context`` and hide
  it with ``script["ehlo-without"] = ["STARTTLS"]``;
* STARTTLS offered but refused: ``script["starttls"] = "454 ..."``;
* AUTH refused with 535: start the server with ``auth=(user, password)`` and
  set ``script["auth"] = "refuse"``.

``handler.heal()`` clears the script: from then on everything is accepted.

What was received is countable per recipient: every RCPT seen with its reply
code (``handler.rcpts``: ``[(address, code)]``) and every message stored
(``handler.messages``); :meth:`FaultHandler.copies` gives how many copies
of each Message-ID each recipient got.
"""
from __future__ import annotations

import collections
import re

from aiosmtpd.smtp import SMTP, AuthResult

from .smtpserver import ScriptedHandler
from .smtpserver_extra import ExtraHandler

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


def message_id(data):
    """The Message-ID header of raw message bytes (``None`` if it has none)."""
    match = _MESSAGE_ID.search(data)
    return match.group(1).decode("ascii", "replace") if match else None


def _code(reply):
    return int(reply[:3])


def _closes(reply, stage, script):
    """Whether the connection closes after this reply: after 421, or when scripted.

    RFC 5321 3.8 and 4.2.3: a 421 reply (possible to any command) means the
    server closes the channel now.
    ``script["close"] = stage`` closes it after a refusal (any reply but
    2yz) at that stage, as some servers do.
    """
    return reply.startswith("421") or (script.get("close") == stage
                                       and not reply.startswith("2"))


class FaultHandler(ExtraHandler):
    """The scripted faults (see the module docstring) and what was received.

    A hook whose reply ends the session sets ``session.fault_closes``;
    :class:`FaultSMTP` closes the connection once that reply is sent.
    """

    def __init__(self, script=None):
        super().__init__(script)
        self.rcpts = []

    def heal(self):
        """From now on accept everything: no reply, drop, delay or AUTH fault."""
        self.script = {}

    def copies(self):
        """``{(recipient, Message-ID): number of copies stored}``."""
        counts = collections.Counter()
        with self.lock:
            for received in self.messages:
                for rcpt in received.rcpt_tos:
                    counts[rcpt, message_id(received.data)] += 1
        return counts

    def refused(self, address):
        """The codes of every RCPT of ``address`` that was not accepted."""
        return [code for rcpt, code in self.rcpts if rcpt == address and code != 250]

    def rcpt_count(self, address):
        """How many times ``address`` was given in a RCPT command."""
        return sum(1 for rcpt, _ in self.rcpts if rcpt == address)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = await super().handle_MAIL(server, session, envelope, address, mail_options)
        session.fault_closes = _closes(reply, "mail", self.script)
        return reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        dropping = self.script.get("drop") == "rcpt"
        only = self.script.get("drop-rcpt")
        if dropping and only is not None and address not in only:
            # the drop is for another recipient: this one is answered normally
            dropping = False
            self.commands.append("RCPT")
            reply = self._reply("rcpt", "250 OK", address)
            if reply.startswith("250"):
                envelope.rcpt_tos.append(address)
        else:
            reply = await super().handle_RCPT(server, session, envelope, address,
                                              rcpt_options)
        with self.lock:  # a dropped RCPT got no reply at all: code None
            self.rcpts.append((address, None if dropping else _code(reply)))
        session.fault_closes = _closes(reply, "rcpt", self.script)
        return reply

    async def handle_DATA(self, server, session, envelope):
        # ScriptedHandler's: store (unless a fault says otherwise), then the
        # late reply -- the message is already received when the delay runs.
        reply = await ScriptedHandler.handle_DATA(self, server, session, envelope)
        await self._delay("data")
        session.fault_closes = _closes(reply, "data", self.script)
        return reply


class FaultSMTP(SMTP):
    """Closes after a reply that ends the session (before reading another
    command, so no later reply of a pipelined group goes out); the DATA
    command's own faults: slow 354, 421 before it, a drop mid-data."""

    async def _then_maybe_close(self, command):
        self.session.fault_closes = False
        await command
        if self.session.fault_closes and self.transport is not None:
            self.transport.close()

    async def smtp_EHLO(self, hostname):
        await super().smtp_EHLO(hostname)
        if (self.event_handler.script.get("ehlo") or "").startswith("421"):
            self.transport.close()

    async def smtp_STARTTLS(self, arg):
        reply = self.event_handler.script.get("starttls")
        if reply:  # offered, then refused (e.g. 454 TLS not available)
            await self.push(reply)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_MAIL(self, arg):
        await self._then_maybe_close(super().smtp_MAIL(arg))

    async def smtp_RCPT(self, arg):
        await self._then_maybe_close(super().smtp_RCPT(arg))

    async def smtp_DATA(self, arg):
        handler = self.event_handler
        script = handler.script
        handler.commands.append("DATA")
        if not self.envelope.rcpt_tos:
            await super().smtp_DATA(arg)  # aiosmtpd's 503
            return
        await handler._delay("data-command")
        reply = handler._reply("data-command", None)
        drop = script.get("drop")
        if drop == "data-command":
            self.transport.close()
        elif reply:
            await self.push(reply)
            if reply.startswith("421"):
                self.transport.close()
        elif drop == "data-mid":
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")  # the first line, then gone
            self.transport.close()
        else:
            await self._then_maybe_close(super().smtp_DATA(arg))


def fault_server(make_smtp_server, script=None, **kwargs):
    """``make_smtp_server`` (the conftest fixture) running a :class:`FaultHandler`."""
    handler = FaultHandler(script)
    server = make_smtp_server(handler=handler, **kwargs)
    controller = server.controller
    authenticator = controller.SMTP_kwargs.get("authenticator")
    if authenticator is not None:
        def refusing(smtp, session, envelope, mechanism, auth_data):
            if handler.script.get("auth") == "refuse":
                return AuthResult(success=False, handled=False)  # aiosmtpd: 535 5.7.8
            return authenticator(smtp, session, envelope, mechanism, auth_data)

        controller.SMTP_kwargs["authenticator"] = refusing
    controller.factory = lambda: FaultSMTP(controller.handler, **controller.SMTP_kwargs)
    return server
