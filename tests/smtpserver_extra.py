"""Extras for the scriptable test SMTP server (tests/smtpserver.py).

:class:`ExtraHandler` is a :class:`ScriptedHandler` that also

* logs the commands it saw (``handler.commands``: "EHLO", "MAIL", "RCPT",
  "RSET", "QUIT", "DATA" -- the DATA *command*, before any message data),
* changes its EHLO reply: ``script["ehlo"] = "502 ..."`` refuses EHLO (the
  client falls back to HELO), ``script["ehlo-without"] = ["8BITMIME", "SIZE"]``
  leaves extensions out, ``script["ehlo-with"] = ["PIPELINING"]`` adds some
  (aiosmtpd reads pipelined commands in order, it only does not announce it),
* waits before a reply: ``script["delay"] = {"mail": 2.0}`` (also "ehlo",
  "rcpt", "data" = after the final dot),
* answers the DATA command itself: ``script["data-command"] = "451 ..."``
  instead of 354, or ``script["drop"] = "data-command"`` to close the
  connection before the client sent any message data,
* can close every open connection as an idle timeout would
  (:meth:`close_connections`).

:func:`extra_server` starts a ``tests.smtpserver.SMTPServer`` with it (the DATA command
needs an aiosmtpd ``SMTP`` subclass, installed as the controller's factory).
"""
from __future__ import annotations

import asyncio

from aiosmtpd.smtp import SMTP

from .smtpserver import ScriptedHandler


class ExtraHandler(ScriptedHandler):
    def __init__(self, script=None):
        super().__init__(script)
        self.commands = []
        self.transports = []
        self.loop = None

    async def _delay(self, stage):
        seconds = (self.script.get("delay") or {}).get(stage)
        if seconds:
            await asyncio.sleep(seconds)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.commands.append("EHLO")
        self.transports.append(server.transport)
        self.loop = asyncio.get_running_loop()
        await self._delay("ehlo")
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        if self.script.get("ehlo"):
            return [self.script["ehlo"]]
        without = {word.upper() for word in self.script.get("ehlo-without", ())}
        responses = [line for line in responses
                     if line[4:].split()[0].upper() not in without]
        extra = ["250-" + word for word in self.script.get("ehlo-with", ())]
        return responses[:-1] + extra + responses[-1:]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.commands.append("MAIL")
        await self._delay("mail")
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.commands.append("RCPT")
        await self._delay("rcpt")
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_RSET(self, server, session, envelope):
        self.commands.append("RSET")
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope):
        self.commands.append("QUIT")
        return "221 Bye"

    async def handle_DATA(self, server, session, envelope):
        await self._delay("data")
        return await super().handle_DATA(server, session, envelope)

    def close_connections(self):
        """Close every connection from the server side, and wait until closed."""
        async def close():
            for transport in self.transports:
                transport.close()
            await asyncio.sleep(0.05)  # let the loop run the close callbacks

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)


class ExtraSMTP(SMTP):
    async def smtp_DATA(self, arg):
        handler = self.event_handler
        handler.commands.append("DATA")
        if self.envelope.rcpt_tos:
            if handler.script.get("drop") == "data-command":
                self.transport.close()
                return
            reply = handler.script.get("data-command")
            if reply:
                await self.push(reply)
                return
        await super().smtp_DATA(arg)


def extra_server(make_smtp_server, script=None, **kwargs):
    """``make_smtp_server`` (the conftest fixture) with an ExtraHandler."""
    server = make_smtp_server(handler=ExtraHandler(script), **kwargs)
    controller = server.controller
    controller.factory = lambda: ExtraSMTP(controller.handler, **controller.SMTP_kwargs)
    return server
