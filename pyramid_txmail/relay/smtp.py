"""SMTP transport: send CRLF bytes over a reused session, classify every reply.

:class:`SMTPTransport` talks to one relay (or the first reachable of
``mail.host`` and ``mail.fallback_hosts``) over one connection that it opens
on first use and keeps for the next messages: RSET in between, and a
connection the server dropped while idle is reopened once, before anything
of the new message was accepted.  After ``max_messages`` messages the
connection is closed and a new one opened.

Failover per message, as Postfix does with several relay hosts: when the
relay answers 4yz to MAIL FROM, RCPT TO or DATA (or to the final dot), or
drops the connection before the final dot, the same attempt offers the
recipients still pending to the next relays of ``mail.fallback_hosts``
(:meth:`SMTPTransport._fail_over`).  A recipient a relay accepted is never
offered again, nor is one whose final dot got no reply (it may have
arrived).  The primary session is kept; the fallbacks' are opened on
demand and kept for later failovers.  When the server offers
PIPELINING (RFC 2920), RSET, MAIL, RCPT and DATA go out in one write, so a
message costs two round trips instead of four or more.  Every recipient
still gets its own reply code.  Opening the session (TLS, AUTH) is
:mod:`pyramid_txmail.relay.smtp_session`'s job.

:meth:`SMTPTransport.deliver` never raises for a network, TLS, AUTH or SMTP
problem: it returns a :class:`~pyramid_txmail.relay.result.DeliveryResult` with
one result per recipient, classified as RFC 5321 and Postfix do:

* 2yz after the final dot: sent.
* 4yz, a dropped connection, a timeout, and any failure to set up the
  session (connect, greeting, EHLO, STARTTLS, certificate, AUTH): temporary.
* 5yz to MAIL, RCPT or DATA: permanent for the recipients it applies to --
  except 552 to RCPT, which RFC 5321 4.5.3.1.10 says to treat as 452 (too
  many recipients), as Postfix does.
* SMTPUTF8 needed but not offered: permanent (retrying will not help).

``mail.tls = true`` means STARTTLS is required: a server that does not offer
it gets nothing, not a plaintext copy.  The message may be ``bytes`` or a
:class:`~pyramid_txmail.compose.wire.Stream`, which is sent block by block.
"""
from __future__ import annotations

import copy
import dataclasses
import email.message
import email.policy
import email.utils
import smtplib
import threading

from zope.interface import implementer

from ..util.printable import get_logger
from ..compose import wire
from ..interfaces import IMailer
from .result import SENT, TEMPORARY, DeliveryResult, RecipientResult
from .smtp_session import (Relays, SessionFailure, SessionOpener, _is_loopback,  # noqa: F401
                           format_address)
from .smtp_transaction import RelaySession, Stale, angle as _angle  # noqa: F401

__all__ = ["SMTPTransport", "SMTPDeliveryError"]

log = get_logger("pyramid_txmail.smtp")


class SMTPDeliveryError(Exception):
    """``send()`` could not deliver to every recipient; ``result`` says why."""

    def __init__(self, result):
        super().__init__(result)
        self.result = result

    def __str__(self):
        failed = [r for r in self.result.results if r.status != SENT]
        return "not accepted by every recipient: " + "; ".join(
            f"{r.recipient}: {r.status} {r.code or '-'} {r.text}" for r in failed)


def _check_args(fromaddr, toaddrs, data):
    if not isinstance(fromaddr, str):
        raise TypeError(f"fromaddr must be a str, not {type(fromaddr).__name__}")
    if isinstance(toaddrs, (str, bytes)):
        raise TypeError("toaddrs must be a sequence of addresses, not one string")
    toaddrs = list(toaddrs)
    if not toaddrs:
        raise ValueError("toaddrs is empty: no recipient to deliver to")
    for address in [fromaddr, *toaddrs]:
        if not isinstance(address, str):
            raise TypeError(f"addresses must be str, not {type(address).__name__}")
        if "\r" in address or "\n" in address:
            raise ValueError(f"address contains a line break: {address!r}")
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, (bytes, wire.Stream)):
        raise TypeError("data must be the message as bytes or a wire.Stream, "
                        f"not {type(data).__name__}")
    return fromaddr, toaddrs, data


@implementer(IMailer)
class SMTPTransport:
    """One SMTP relay (plus fallbacks), one reusable connection.

    Not for concurrent use from several threads at once (calls are
    serialised by a lock); give each worker its own transport, and the same
    :class:`~pyramid_txmail.relay.smtp_session.Relays` so they share which relays
    are resting.
    """

    def __init__(self, host="localhost", port=25, *, username=None, password=None,
                 tls=False, ssl=False, keyfile=None, certfile=None, cafile=None,
                 timeout=30.0, debug=0, local_hostname=None, fallback_hosts=(),
                 host_rest=300.0, max_messages=None, relays=None, data_timeout=600.0,
                 dkim=None):
        self.opener = SessionOpener(username=username, password=password, tls=tls, ssl=ssl,
                                    keyfile=keyfile, certfile=certfile, cafile=cafile,
                                    timeout=timeout, debug=debug,
                                    local_hostname=local_hostname)
        self.host = host
        self.port = int(port)
        if relays is None:
            hosts = [(host, self.port)] + [(h, int(p or self.port)) for h, p in fallback_hosts]
            relays = Relays(dict.fromkeys(hosts), host_rest)
        self.relays = relays
        self.max_messages = max_messages
        #: The wait for the reply to the final dot: never shorter than ``timeout``
        #: (refused, not quietly raised: see mail.data_timeout).
        self.data_timeout = float(data_timeout)
        if self.data_timeout < self.opener.timeout:
            raise ValueError(f"data_timeout ({self.data_timeout:g}s) is shorter than timeout "
                             f"({self.opener.timeout:g}s); the reply to the final dot must "
                             "be waited for at least as long as any other reply")
        #: A :class:`~pyramid_txmail.relay.dkim.DKIMSigner`, or None: sign nothing.
        self.dkim = dkim
        #: How many connections this transport has opened (tests assert reuse).
        self.connections_opened = 0
        #: The session with the first relay that took it, kept for the next
        #: messages; the fallback relays' sessions, opened on demand (per-message
        #: failover) and kept too.
        self._primary = None
        self._fallbacks = {}
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings, relays=None):
        """A transport for a :class:`pyramid_txmail.settings.MailSettings`."""
        return cls(settings.host, settings.port, username=settings.username,
                   password=settings.password, tls=settings.tls, ssl=settings.ssl,
                   keyfile=settings.keyfile, certfile=settings.certfile,
                   cafile=settings.tls_cafile, timeout=settings.timeout,
                   debug=settings.debug, fallback_hosts=settings.fallback_hosts,
                   host_rest=settings.host_rest,
                   max_messages=settings.connection_max_messages, relays=relays,
                   data_timeout=settings.data_timeout, dkim=settings.dkim)

    username = property(lambda self: self.opener.username)
    tls = property(lambda self: self.opener.tls)
    ssl = property(lambda self: self.opener.ssl)
    cafile = property(lambda self: self.opener.cafile)
    timeout = property(lambda self: self.opener.timeout)
    debug = property(lambda self: self.opener.debug)

    @property
    def address(self):
        """The relay connected to (or the first one, when not connected)."""
        if self._primary is not None:
            return self._primary.address
        return format_address(self.host, self.port)

    def __repr__(self):
        mode = "ssl" if self.ssl else "starttls" if self.tls else "plain"
        user = f" user={self.username!r}" if self.username else ""
        return f"<SMTPTransport {self.address} {mode}{user}>"

    # -- public API -----------------------------------------------------------

    def deliver(self, fromaddr, toaddrs, data, message_id=None) -> DeliveryResult:
        """Send ``data`` (bytes or a wire.Stream) to each of ``toaddrs``.

        One result per recipient.  Raises only for bad arguments, never for
        a delivery problem.
        """
        fromaddr, toaddrs, data = _check_args(fromaddr, toaddrs, data)
        if message_id is None:
            message_id = wire.message_id_of(data)
        with self._lock:
            try:
                results = self._attempt(fromaddr, toaddrs, data, message_id)
            except SessionFailure as failure:
                if failure.drop:
                    self._drop()
                results = [RecipientResult(r, failure.status, failure.code, failure.text)
                           for r in toaddrs]
        result = DeliveryResult(message_id, tuple(results))
        via = ", ".join(dict.fromkeys(r.relay for r in results if r.relay)) or self.address
        if result.ok:
            # DEBUG: the caller (processor, direct delivery) logs the INFO line
            log.debug("sent %s from <%s> to %s via %s", message_id, fromaddr,
                      ", ".join(toaddrs), via)
        else:
            log.warning("%s from <%s> not accepted by every recipient via %s: %s",
                        message_id, fromaddr, via, result.summary())
        return result

    def send(self, fromaddr, toaddrs, message):
        """repoze.sendmail's IMailer: send now, raise unless every recipient took it.

        ``message`` is an :class:`email.message.Message` (Bcc headers are left
        out, a missing Message-ID is added to the copy sent) or bytes.
        Returns the :class:`DeliveryResult`; raises :class:`SMTPDeliveryError`.
        """
        message_id = None
        if isinstance(message, email.message.Message):
            message, message_id = _serialize(message)
        return _deliver_or_raise(self, fromaddr, toaddrs, message, message_id)

    def close(self):
        """QUIT and close the connections (primary and fallbacks) still open."""
        with self._lock:
            sessions = [self._primary, *self._fallbacks.values()]
            self._primary, self._fallbacks = None, {}
            for session in sessions:
                if session is not None:
                    session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- the sessions ----------------------------------------------------------

    @property
    def _smtp(self):
        """The primary session's ``smtplib.SMTP`` (``None`` when not connected)."""
        return self._primary.smtp if self._primary is not None else None

    def _drop(self):
        if self._primary is not None:
            self._primary.drop()

    def _connect(self, host):
        """A new :class:`RelaySession` with ``host``, or :class:`SessionFailure`.

        Only here is a relay's health judged: a relay that cannot set up a
        session counts towards its rest; one that refuses a message (4yz to
        MAIL, RCPT or DATA) works, and is not rested for it.
        """
        try:
            smtp = self.opener.open(*host)
        except SessionFailure as failure:
            self.connections_opened += failure.connected
            self.relays.failed(host)
            raise
        self.connections_opened += 1
        self.relays.succeeded(host)
        return RelaySession(smtp, host, self)

    def _open(self):
        """A new primary session with the first relay that takes it."""
        failures = []
        for host in self.relays.candidates():
            spare = self._fallbacks.pop(host, None)
            if spare is not None and spare.alive:  # already open for failover: take it
                self._primary = spare
                return spare
            try:
                session = self._connect(host)
            except SessionFailure as failure:
                failures.append(failure)
                continue
            if failures:
                log.warning("relay %s used instead: %s", session.address,
                            "; ".join(f.text for f in failures))
            self._primary = session
            return session
        if len(failures) == 1:
            raise failures[0]
        raise SessionFailure("no relay took the session: " + "; ".join(f.text for f in failures),
                             failures[-1].code)

    def _fallback(self, host, fresh=False):
        """The session with fallback ``host``: the one kept from an earlier
        failover (unless ``fresh``), or a new one, kept for the next."""
        session = self._fallbacks.get(host)
        if fresh or session is None or not session.alive:
            if session is not None:
                session.drop()
            session = self._fallbacks[host] = self._connect(host)
        return session

    def _relays_after(self, host):
        """The relays to fail over to from ``host``: those after it in
        ``mail.host`` + ``mail.fallback_hosts`` order, resting ones left out
        (unless every relay is resting)."""
        order = list(self.relays.hosts)
        if host not in order:
            return []
        after = order.index(host)
        return [h for h in self.relays.candidates() if order.index(h) > after]

    # -- one message ---------------------------------------------------------------

    def _attempt(self, fromaddr, toaddrs, data, message_id):
        primary = self._primary if self._primary is not None and self._primary.alive \
            else self._open()
        session, results, in_doubt = self._send(primary, self._open, fromaddr, toaddrs, data)
        pending = [i for i, r in enumerate(results)
                   if r.status == TEMPORARY and i not in in_doubt]
        if pending:
            self._fail_over(session, fromaddr, toaddrs, data, message_id, results, pending)
        return results

    def _send(self, session, reopen, fromaddr, toaddrs, data):
        """``(session, results, in_doubt)`` of one transaction over ``session``.

        A reused session found dead before anything of the message was
        accepted is replaced by ``reopen()``; that may be another kept
        session, found dead too, so this repeats (each dead one is dropped,
        and a new connection is never stale).
        """
        while True:
            try:
                results, in_doubt = session.transaction(fromaddr, toaddrs, data)
                break
            except Stale as stale:
                log.info("connection to %s is gone (%s); reconnecting", session.address,
                         stale)
                session.drop()
                session = reopen()
        if self.max_messages and session.alive and session.sent >= self.max_messages:
            log.debug("%d messages sent over the connection to %s; closing it",
                      session.sent, session.address)
            session.close()
        return session, results, in_doubt

    def _fail_over(self, session, fromaddr, toaddrs, data, message_id, results, pending):
        """Offer the recipients ``pending`` after ``session``'s 4yz (or lost
        connection) to the next relays in turn, as Postfix does with several
        relay hosts; ``results`` is updated in place.

        A recipient leaves the chain at its first 2yz or 5yz.  One still
        temporary at the end keeps the last reply had.  A recipient that is
        not sent keeps, in its text, the reply its code is from first, then
        what every other relay said (each names its relay).  A recipient in
        doubt (the final dot went out, no reply came) is never offered
        again: that relay may have it.
        """
        for host in self._relays_after(session.host):
            recipients = [toaddrs[i] for i in pending]
            try:
                session, answers, in_doubt = self._send(
                    self._fallback(host), lambda host=host: self._fallback(host, fresh=True),
                    fromaddr, recipients, data)
            except SessionFailure as failure:  # this relay cannot take it now
                for i in pending:
                    results[i] = dataclasses.replace(
                        results[i], text=f"{results[i].text}; {failure.text}")
                continue
            log.info("%s: %s failed over to %s", message_id, ", ".join(recipients),
                     session.address)
            still = []
            for j, i in enumerate(pending):
                before = results[i]  # its code goes into the text, with the relay's
                earlier = f"{before.code} {before.text}" if before.code else before.text
                answer = answers[j]
                if answer.status != SENT:
                    answer = dataclasses.replace(answer, text=f"{answer.text}; {earlier}")
                    if answer.status == TEMPORARY and j not in in_doubt:
                        still.append(i)
                results[i] = answer
            pending = still
            if not pending:
                return


def _deliver_or_raise(mailer, fromaddr, toaddrs, message, message_id):
    """The end of an IMailer's ``send`` (SMTP and sendmail): ``mailer.deliver``
    the message; its :class:`DeliveryResult`, or :class:`SMTPDeliveryError`
    unless every recipient took it."""
    result = mailer.deliver(fromaddr, toaddrs, message, message_id)
    if not result.ok:
        raise SMTPDeliveryError(result)
    return result


def _serialize(message):
    """``(bytes, Message-ID)`` of an email.message.Message, without its Bcc."""
    message = copy.copy(message)  # as smtplib.send_message does: del rebinds the header list
    del message["Bcc"]
    del message["Resent-Bcc"]
    prefix = b""
    message_id = message["Message-ID"]
    if message_id is None:
        message_id = email.utils.make_msgid()
        prefix = f"Message-ID: {message_id}\r\n".encode("ascii")
    policy = message.policy.clone(linesep="\r\n")
    try:
        data = message.as_bytes(policy=policy)
    except UnicodeError:
        if not isinstance(policy, email.policy.EmailPolicy):
            raise
        data = message.as_bytes(policy=policy.clone(utf8=True))
    return prefix + data, " ".join(str(message_id).split())
