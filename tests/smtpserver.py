"""A real, scriptable SMTP server on 127.0.0.1 for the tests (aiosmtpd).

``SMTPServer(...)`` starts an aiosmtpd controller in a thread.  Replies can be
scripted per stage and per recipient, the connection can be dropped at a
stage, STARTTLS / implicit TLS / AUTH can be turned on.  Everything the
server accepted is in ``server.messages`` (envelope and the exact bytes).
"""
from __future__ import annotations

import dataclasses
import socket
import ssl
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class Received:
    mail_from: str
    rcpt_tos: list
    data: bytes
    tls: bool
    login: str | None
    mail_options: list


class Drop(Exception):
    """Raised inside a hook to drop the connection without a reply."""


class ScriptedHandler:
    """aiosmtpd handler whose replies come from a script.

    ``script`` keys: ``"mail"`` (reply to MAIL FROM), ``"rcpt"`` (a dict
    recipient → reply, or one reply for all), ``"data"`` (reply after the final
    dot), ``"drop"`` (a stage name: "mail", "rcpt", "data-before" (before the
    reply to DATA's end, message not stored) or "data-after" (message stored,
    connection dropped instead of the 250)).
    A reply is a string like ``"451 4.3.0 try later"``; a list of replies is
    consumed one per use (the last one sticks).
    """

    def __init__(self, script=None):
        self.script = dict(script or {})
        self.messages = []
        self.lock = threading.Lock()
        self.connections = 0

    def _reply(self, key, default, recipient=None):
        value = self.script.get(key)
        if isinstance(value, dict):
            value = value.get(recipient)
        if isinstance(value, list):
            value = value.pop(0) if len(value) > 1 else value[0]
        return value or default

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.script.get("drop") == "mail":
            server.transport.close()
            return "421 dropping"
        reply = self._reply("mail", "250 OK")
        if reply.startswith("250"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.script.get("drop") == "rcpt":
            server.transport.close()
            return "421 dropping"
        reply = self._reply("rcpt", "250 OK", address)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        drop = self.script.get("drop")
        if drop == "data-before":
            server.transport.close()
            return "421 dropping"
        reply = self._reply("data", "250 Message accepted for delivery")
        if reply.startswith("250"):
            with self.lock:
                self.messages.append(Received(
                    envelope.mail_from, list(envelope.rcpt_tos),
                    envelope.original_content or envelope.content,
                    server.transport.get_extra_info("sslcontext") is not None,
                    session.auth_data,
                    list(envelope.mail_options)))
        if drop == "data-after":
            server.transport.close()
        return reply


class SMTPServer:
    """A running aiosmtpd server; use as a context manager or call stop()."""

    def __init__(self, script=None, *, tls_context=None, implicit_tls=False,
                 require_starttls=False, auth=None, handler=None, enable_smtputf8=True):
        self.handler = handler or ScriptedHandler(script)
        self.host = "127.0.0.1"
        self.port = free_port()
        kwargs = dict(hostname=self.host, port=self.port,
                      enable_SMTPUTF8=enable_smtputf8, decode_data=False,
                      data_size_limit=200 * 1024 * 1024)
        if tls_context is not None and implicit_tls:
            kwargs["ssl_context"] = tls_context
        elif tls_context is not None:
            kwargs["tls_context"] = tls_context
            kwargs["require_starttls"] = require_starttls
        if auth is not None:
            user, password = auth

            def authenticator(server, session, envelope, mechanism, auth_data):
                if (isinstance(auth_data, LoginPassword)
                        and auth_data.login.decode() == user
                        and auth_data.password.decode() == password):
                    return AuthResult(success=True, auth_data=user)
                return AuthResult(success=False, handled=False)

            kwargs["authenticator"] = authenticator
            kwargs["auth_require_tls"] = tls_context is not None
        self.controller = Controller(self.handler, **kwargs)
        self.controller.start()

    @property
    def messages(self):
        return self.handler.messages

    def stop(self):
        self.controller.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def client_context(cafile):
    return ssl.create_default_context(cafile=cafile)
