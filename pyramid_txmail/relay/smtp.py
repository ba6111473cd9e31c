"""SMTP transport: send CRLF bytes over a reused session, classify every reply.

:class:`SMTPTransport` talks to one relay (or the first reachable of
``mail.host`` and ``mail.fallback_hosts``) over one connection that it opens
on first use and keeps for the next messages: RSET in between, and a
connection the server dropped while idle is reopened once, before anything
of the new message was accepted.  After ``max_messages`` messages the
connection is closed and a new one opened.  When the server offers
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
import email.message
import email.policy
import email.utils
import smtplib
import threading

from zope.interface import implementer

from ..util.printable import get_logger
from ..compose import wire
from ..interfaces import IMailer
from .result import PERMANENT, SENT, TEMPORARY, DeliveryResult, RecipientResult
from .smtp_session import (Relays, SessionFailure, SessionOpener, _is_loopback,  # noqa: F401
                           _text, format_address)

__all__ = ["SMTPTransport", "SMTPDeliveryError"]

log = get_logger("pyramid_txmail.smtp")


class _Stale(Exception):
    """A reused connection turned out to be dead before anything was accepted."""


class SMTPDeliveryError(Exception):
    """``send()`` could not deliver to every recipient; ``result`` says why."""

    def __init__(self, result):
        super().__init__(result)
        self.result = result

    def __str__(self):
        failed = [r for r in self.result.results if r.status != SENT]
        return "not accepted by every recipient: " + "; ".join(
            f"{r.recipient}: {r.status} {r.code or '-'} {r.text}" for r in failed)


def _reply_status(code):
    if 200 <= code < 300:
        return SENT
    if 500 <= code < 600:
        return PERMANENT
    return TEMPORARY


def _angle(address):
    """``<address>``, the address exactly as given.

    Only a ``Name <a@b>`` form (it ends with ``>``, which no address does)
    goes through smtplib's parse: re-parsing an address could change it
    (a quoted local part may hold ``<``, ``,``, ``"`` or spaces).
    """
    if address.endswith(">"):
        return smtplib.quoteaddr(address)
    return f"<{address}>"


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
        self._smtp = None
        self._peer = None
        self._sent_here = 0
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
        return format_address(*(self._peer or (self.host, self.port)))

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
                results = self._attempt(fromaddr, toaddrs, data)
            except SessionFailure as failure:
                if failure.drop:
                    self._drop()
                results = [RecipientResult(r, failure.status, failure.code, failure.text)
                           for r in toaddrs]
        result = DeliveryResult(message_id, tuple(results))
        if result.ok:
            # DEBUG: the caller (processor, direct delivery) logs the INFO line
            log.debug("sent %s from <%s> to %s via %s", message_id, fromaddr,
                      ", ".join(toaddrs), self.address)
        else:
            log.warning("%s from <%s> not accepted by every recipient via %s: %s",
                        message_id, fromaddr, self.address, result.summary())
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
        """QUIT and close the connection, if one is open."""
        with self._lock:
            smtp, self._smtp = self._smtp, None
            if smtp is not None:
                try:
                    smtp.quit()
                except OSError:
                    pass
                finally:
                    smtp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- the session ------------------------------------------------------------

    def _drop(self):
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _open(self):
        """A new session with the first relay that takes it."""
        failures = []
        for host in self.relays.candidates():
            try:
                smtp = self.opener.open(*host)
            except SessionFailure as failure:
                self.connections_opened += failure.connected
                self.relays.failed(host)
                failures.append(failure)
                continue
            self.connections_opened += 1
            self.relays.succeeded(host)
            if failures:
                log.warning("relay %s used instead: %s", format_address(*host),
                            "; ".join(f.text for f in failures))
            self._smtp, self._peer, self._sent_here = smtp, host, 0
            return smtp
        if len(failures) == 1:
            raise failures[0]
        raise SessionFailure("no relay took the session: " + "; ".join(f.text for f in failures),
                             failures[-1].code)

    # -- one message ---------------------------------------------------------------

    def _attempt(self, fromaddr, toaddrs, data):
        reused = self._smtp is not None
        smtp = self._smtp or self._open()
        try:
            results = self._transaction(smtp, reused, fromaddr, toaddrs, data)
        except _Stale as stale:
            log.info("connection to %s is gone (%s); reconnecting", self.address, stale)
            self._drop()
            results = self._transaction(self._open(), False, fromaddr, toaddrs, data)
        if self._smtp is not None:
            self._sent_here += 1
            if self.max_messages and self._sent_here >= self.max_messages:
                log.debug("%d messages sent over the connection to %s; closing it",
                          self._sent_here, self.address)
                self.close()
        return results

    def _payload(self, smtp, fromaddr, toaddrs, data):
        """``(chunks, MAIL FROM options)`` for this server, or SessionFailure."""
        addr = self.address
        eightbit = smtp.has_extn("8bitmime")
        if isinstance(data, wire.Stream) and data.eightbit and not eightbit:
            data = b"".join(data)  # a 7-bit server: re-encoded below, in memory
        if isinstance(data, wire.Stream):
            chunks, head, size, has_8bit = data, data, data.size, data.eightbit
        else:
            try:
                payload = wire.to_wire(data, eightbit=eightbit)
            except Exception as exc:  # a message the email package cannot re-encode
                log.exception("cannot encode the message for %s", addr)
                raise SessionFailure(f"the message cannot be encoded for SMTP: {exc!r}",
                                     status=PERMANENT, drop=False) from None
            chunks, head, size, has_8bit = (payload,), payload, len(payload), \
                wire.has_8bit(payload)
        if self.dkim is not None:  # over exactly these bytes, after any re-encoding
            chunks, size = self._signed(chunks, size)
        options = []
        if wire.needs_smtputf8(fromaddr, toaddrs, head):
            if not smtp.has_extn("smtputf8"):
                raise SessionFailure(
                    "SMTPUTF8 needed (non-ASCII address or header) but not offered by "
                    f"{addr}", status=PERMANENT, drop=False)
            options.append("SMTPUTF8")
        if eightbit and has_8bit:
            options.append("BODY=8BITMIME")
        if smtp.has_extn("size") and size is not None:
            options.append(f"SIZE={size}")
        return chunks, options

    def _signed(self, chunks, size):
        from .dkim import DKIMSigningError, sign_chunks

        try:
            return sign_chunks(self.dkim, chunks, size, wire.message_id_of(
                chunks if isinstance(chunks, wire.Stream) else chunks[0]))
        except DKIMSigningError as exc:
            raise SessionFailure(str(exc), status=TEMPORARY if exc.temporary else PERMANENT,
                                 drop=False) from None

    def _transaction(self, smtp, reused, fromaddr, toaddrs, data):
        """One SMTP mail transaction; the results, one per recipient."""
        addr = self.address
        pipelined = smtp.has_extn("pipelining")
        if reused and not pipelined:
            self._rset_or_stale(smtp)
        chunks, options = self._payload(smtp, fromaddr, toaddrs, data)
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        commands = [f"MAIL FROM:{_angle(fromaddr)}" + "".join(" " + o for o in options)]
        commands += [f"RCPT TO:{_angle(r)}" for r in toaddrs]
        results = [None] * len(toaddrs)
        stage = "MAIL FROM"
        smtp.final_dot_sent = False
        try:
            if pipelined:
                group = (["RSET"] if reused else []) + commands + ["DATA"]
                smtp.send("".join(c + "\r\n" for c in group).encode(encoding))
                if reused:
                    self._rset_or_stale(smtp, sent=True)
                replies = iter(smtp.getreply, None)
            else:
                replies = (smtp.docmd(c) if i < len(commands) else smtp.docmd("DATA")
                           for i, c in enumerate(commands + ["DATA"]))
                replies = self._encoded(smtp, encoding, replies)
            code, reply = next(replies)
            if not 200 <= code < 300:
                if code == 421:
                    self._drop()
                elif pipelined:
                    self._drain(smtp, replies, len(toaddrs) + 1)
                else:
                    self._end(smtp, code)
                text = f"{_text(reply)} (in reply to MAIL FROM at {addr})"
                return [RecipientResult(r, _reply_status(code), code, text) for r in toaddrs]
            stage = "RCPT TO"
            accepted = []
            for i, rcpt in enumerate(toaddrs):
                code, reply = next(replies)
                text = f"{_text(reply)} (in reply to RCPT TO at {addr})"
                if 200 <= code < 300:
                    accepted.append(i)
                    continue
                status = TEMPORARY if code == 552 else _reply_status(code)
                results[i] = RecipientResult(rcpt, status, code, text)
                if code == 421:  # the server is closing the session
                    self._drop()
                    return self._fill(results, toaddrs, TEMPORARY, code, text)
            if not accepted and not pipelined:
                self._end(smtp, None)
                return results
            stage = "DATA"
            code, reply = next(replies)
            if code == 354 and not accepted:  # RFC 2920: end the empty message
                smtp.send(b".\r\n")
                smtp.getreply()
                return results
            if code != 354 and 200 <= code < 400:
                # RFC 5321 4.3.2: DATA is answered 354, then the data goes.
                # Any other positive reply means the replies are out of step
                # (or the server is broken): nothing was delivered, and the
                # session cannot be trusted with the next message either.
                self._drop()
                return self._fill(results, toaddrs, TEMPORARY, code,
                                  f"{_text(reply)} (unexpected reply to DATA at {addr}, "
                                  "expected 354; the message was not sent)")
            if code == 354:
                stage = "the message data"
                for block in wire.data_section(chunks):
                    smtp.send(block)
                smtp.final_dot_sent = True
                stage = "end of data"
                code, reply = self._final_reply(smtp)
            if code == 421:
                self._drop()
            elif not 200 <= code < 300 and stage == "DATA" and not pipelined:
                self._end(smtp, code)
            if not accepted:
                return results
            status = _reply_status(code)
            text = _text(reply) if status == SENT else \
                f"{_text(reply)} (in reply to {stage} at {addr})"
            for i in accepted:
                results[i] = RecipientResult(toaddrs[i], status, code, text)
            return results
        except OSError as exc:  # connection lost or timed out (smtplib closed it)
            self._drop()
            return self._fill(results, toaddrs, TEMPORARY, None,
                              self._lost(exc, stage, smtp.final_dot_sent))

    @staticmethod
    def _encoded(smtp, encoding, replies):
        """Send the commands in ``encoding`` (SMTPUTF8 allows UTF-8 addresses)."""
        before = smtp.command_encoding
        smtp.command_encoding = encoding
        try:
            yield from replies
        finally:
            smtp.command_encoding = before

    def _final_reply(self, smtp):
        """The reply to the final dot, waited for ``data_timeout``.

        RFC 5321 4.5.3.2.6: "DATA Termination: 10 minutes" -- the server
        may be delivering or scanning the message, and a client that gives
        up here has most likely delivered it already: a retry would send
        it twice (RFC 1047).
        """
        smtp.reply_timeout = self.data_timeout  # for the whole reply, not per read
        try:
            return smtp.getreply()
        finally:
            smtp.reply_timeout = None

    def _rset_or_stale(self, smtp, sent=False):
        """RSET on a reused connection; a dead one raises :class:`_Stale`."""
        try:
            code, reply = smtp.getreply() if sent else smtp.rset()
        except OSError as exc:
            raise _Stale(f"RSET: {exc or 'no reply'}") from None
        if code != 250:
            raise _Stale(f"RSET: {code} {_text(reply)}")

    def _drain(self, smtp, replies, count):
        """Read the replies still owed for a pipelined group, then RSET's turn.

        A server that hangs up instead (some do right after refusing the
        sender) owes nothing more: the connection is dropped, and the reply
        already had stands -- a refusal must not turn into "connection lost".
        """
        try:
            for _ in range(count):
                code, _ = next(replies)
                if code == 354:
                    smtp.send(b".\r\n")
                    smtp.getreply()
                    return
        except OSError:
            self._drop()

    def _end(self, smtp, code):
        """After a refused transaction: RSET, or give up the connection."""
        if code == 421:
            self._drop()
            return
        try:
            code, _ = smtp.rset()
        except OSError:
            code = None
        if code != 250:
            self._drop()

    @staticmethod
    def _fill(results, toaddrs, status, code, text):
        return [r or RecipientResult(toaddrs[i], status, code, text)
                for i, r in enumerate(results)]

    def _lost(self, exc, stage, final_dot_sent):
        addr = self.address
        timeout = self.timeout
        timed_out = isinstance(exc, TimeoutError) or "timed out" in str(exc)
        if final_dot_sent:
            what = (f"no reply from {addr} within {self.data_timeout:g}s" if timed_out
                    else f"connection to {addr} lost ({exc})")
            return (f"{what} after the end of the message data; the server may have "
                    "accepted it, so a retry may deliver it twice")
        if timed_out:
            return f"no reply from {addr} within {timeout:g}s to {stage}"
        return f"connection to {addr} lost at {stage} ({exc})"


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
