"""SMTP transport: connect, TLS, AUTH, send CRLF bytes, classify every reply.

:class:`SMTPTransport` talks to one relay over one connection that it opens
on first use and keeps for the next messages (RSET in between; an idle
connection the server dropped is reopened once, before anything of the new
message was sent).  It uses smtplib's one-command calls (ehlo, starttls,
login, mail, rcpt, data) rather than ``sendmail()`` so that every recipient
gets its own reply code.

:meth:`SMTPTransport.deliver` never raises for a network, TLS, AUTH or SMTP
problem: it returns a :class:`~pyramid_txmail.result.DeliveryResult` with
one result per recipient, classified as RFC 5321 and Postfix do:

* 2yz after the final dot: sent.
* 4yz, a dropped connection, a timeout, and any failure to set up the
  session (connect, greeting, EHLO, STARTTLS, certificate, AUTH): temporary.
* 5yz to MAIL, RCPT or DATA: permanent for the recipients it applies to --
  except 552 to RCPT, which RFC 5321 4.5.3.1.10 says to treat as 452 (too
  many recipients), as Postfix does.
* SMTPUTF8 needed but not offered: permanent (retrying will not help).

``mail.tls = true`` means STARTTLS is required: a server that does not offer
it gets nothing, not a plaintext copy.
"""
from __future__ import annotations

import copy
import email.message
import email.policy
import email.utils
import functools
import ipaddress
import logging
import smtplib
import socket
import ssl as _ssl
import threading

from zope.interface import implementer

from . import wire
from .interfaces import IMailer
from .result import PERMANENT, SENT, TEMPORARY, DeliveryResult, RecipientResult

__all__ = ["SMTPTransport", "SMTPDeliveryError"]

log = logging.getLogger("pyramid_txmail.smtp")


class SMTPDeliveryError(Exception):
    """``send()`` could not deliver to every recipient; ``result`` says why."""

    def __init__(self, result):
        super().__init__(result)
        self.result = result

    def __str__(self):
        failed = [r for r in self.result.results if r.status != SENT]
        return "not accepted by every recipient: " + "; ".join(
            f"{r.recipient}: {r.status} {r.code or '-'} {r.text}" for r in failed)


class _SessionFailure(Exception):
    """Nothing can be sent now; the same outcome for every recipient."""

    def __init__(self, text, code=None, status=TEMPORARY, drop=True):
        super().__init__(text)
        self.text, self.code, self.status, self.drop = text, code, status, drop


class _RedactingMixin:
    """smtplib with AUTH lines hidden from its debug output, and a record of
    whether the message and its final dot were handed to the socket."""

    secret = False
    final_dot_sent = False

    def _print_debug(self, *args):
        if self.secret and args and args[0] == "send:":
            args = ("send:", "<AUTH data not shown>")
        super()._print_debug(*args)

    def send(self, s):
        super().send(s)
        if isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):  # only data() sends bytes
            self.final_dot_sent = True


class _SMTP(_RedactingMixin, smtplib.SMTP):
    pass


class _SMTP_SSL(_RedactingMixin, smtplib.SMTP_SSL):
    pass


@functools.lru_cache(maxsize=1)
def _default_local_hostname():
    """What smtplib would send in EHLO, looked up once (getfqdn can be slow)."""
    fqdn = socket.getfqdn()
    if "." in fqdn:
        return fqdn
    try:
        return "[%s]" % socket.gethostbyname(socket.gethostname())
    except OSError:
        return "[127.0.0.1]"


def _is_loopback(sock):
    try:
        host = sock.getpeername()[0]
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except (OSError, ValueError, AttributeError, IndexError):
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _text(reply):
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(str(reply).split())


def _reply_status(code):
    if 200 <= code < 300:
        return SENT
    if 500 <= code < 600:
        return PERMANENT
    return TEMPORARY


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
    if not isinstance(data, bytes):
        raise TypeError(f"data must be the message as bytes, not {type(data).__name__}")
    return fromaddr, toaddrs, data


@implementer(IMailer)
class SMTPTransport:
    """One SMTP relay, one reusable connection.  Not for concurrent use from
    several threads at once (calls are serialised by a lock); give each worker
    its own transport."""

    def __init__(self, host="localhost", port=25, *, username=None, password=None,
                 tls=False, ssl=False, keyfile=None, certfile=None, cafile=None,
                 timeout=30.0, debug=0, local_hostname=None):
        if tls and ssl:
            raise ValueError("tls (STARTTLS) and ssl (implicit TLS) cannot both be set")
        self.host = host
        self.port = int(port)
        self.username = username
        self._password = password
        self.tls = bool(tls)
        self.ssl = bool(ssl)
        self.keyfile = keyfile
        self.certfile = certfile
        self.cafile = cafile
        self.timeout = float(timeout)
        self.debug = int(debug)
        self.local_hostname = local_hostname
        #: How many connections this transport has opened (tests assert reuse).
        self.connections_opened = 0
        self._smtp = None
        self._context = None
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings):
        """A transport for a :class:`pyramid_txmail.settings.MailSettings`."""
        return cls(settings.host, settings.port, username=settings.username,
                   password=settings.password, tls=settings.tls, ssl=settings.ssl,
                   keyfile=settings.keyfile, certfile=settings.certfile,
                   cafile=settings.tls_cafile, timeout=settings.timeout,
                   debug=settings.debug)

    @property
    def address(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self):
        mode = "ssl" if self.ssl else "starttls" if self.tls else "plain"
        user = f" user={self.username!r}" if self.username else ""
        return f"<SMTPTransport {self.address} {mode}{user}>"

    # -- public API -----------------------------------------------------------

    def deliver(self, fromaddr, toaddrs, data: bytes, message_id=None) -> DeliveryResult:
        """Send ``data`` to each of ``toaddrs``; one result per recipient.

        Raises only for bad arguments, never for a delivery problem.
        """
        fromaddr, toaddrs, data = _check_args(fromaddr, toaddrs, data)
        if message_id is None:
            message_id = wire.message_id_of(data)
        with self._lock:
            try:
                results = self._attempt(fromaddr, toaddrs, data)
            except _SessionFailure as failure:
                if failure.drop:
                    self._drop()
                results = [RecipientResult(r, failure.status, failure.code, failure.text)
                           for r in toaddrs]
        result = DeliveryResult(message_id, tuple(results))
        if result.ok:
            log.info("sent %s from <%s> to %s via %s", message_id, fromaddr,
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
        result = self.deliver(fromaddr, toaddrs, message, message_id)
        if not result.ok:
            raise SMTPDeliveryError(result)
        return result

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

    def _session(self):
        """The open connection (checked with RSET) or a new one."""
        if self._smtp is not None:
            try:
                code, _ = self._smtp.rset()
            except OSError:
                code = None
            if code == 250:
                return self._smtp
            log.info("connection to %s is gone (RSET: %s); reconnecting", self.address,
                     code or "no reply")
            self._drop()
        return self._connect()

    def _tls_context(self):
        if self._context is None:
            try:
                context = _ssl.create_default_context(cafile=self.cafile)
                if self.certfile:
                    context.load_cert_chain(self.certfile, self.keyfile)
            except (OSError, ValueError) as exc:
                raise _SessionFailure(f"cannot set up TLS for {self.address}: {exc}") from None
            self._context = context
        return self._context

    def _connect(self):
        addr = self.address
        kwargs = {"local_hostname": self.local_hostname or _default_local_hostname(),
                  "timeout": self.timeout}
        if self.ssl:
            cls, kwargs["context"] = _SMTP_SSL, self._tls_context()
        else:
            cls = _SMTP
        try:
            # Given the host, smtplib connects and reads the greeting here (and
            # remembers the host name that TLS verifies the certificate for).
            smtp = cls(self.host, self.port, **kwargs)
        except smtplib.SMTPConnectError as exc:
            self.connections_opened += 1
            raise _SessionFailure(f"{addr} refused the session: {exc.smtp_code} "
                                  f"{_text(exc.smtp_error)}", exc.smtp_code) from None
        except OSError as exc:  # includes smtplib and ssl errors
            raise _SessionFailure(self._setup_error(exc, "connect")) from None
        self.connections_opened += 1
        smtp.set_debuglevel(self.debug)
        step = ["EHLO"]
        try:
            self._setup(smtp, step)
        except _SessionFailure:
            smtp.close()
            raise
        except OSError as exc:
            smtp.close()
            raise _SessionFailure(self._setup_error(exc, step[0])) from None
        except BaseException:
            smtp.close()
            raise
        log.debug("connected to %s", addr)
        self._smtp = smtp
        return smtp

    def _setup(self, smtp, step):
        """EHLO, STARTTLS and EHLO again, AUTH: ``step`` names the one running."""
        addr = self.address
        self._ehlo(smtp)
        if self.tls:
            if not smtp.has_extn("starttls"):
                raise _SessionFailure(f"STARTTLS required (mail.tls = true) but {addr} does "
                                      "not offer it; not sent in plaintext")
            step[0] = "STARTTLS"
            code, reply = smtp.starttls(context=self._tls_context())
            if code != 220:
                raise _SessionFailure(f"STARTTLS refused by {addr}: {code} {_text(reply)}; "
                                      "not sent in plaintext", code)
            step[0] = "EHLO after STARTTLS"
            self._ehlo(smtp)
        if self.username:
            step[0] = "AUTH"
            self._login(smtp)

    def _ehlo(self, smtp):
        code, reply = smtp.ehlo()
        if not 200 <= code < 300:
            code, reply = smtp.helo()
            if not 200 <= code < 300:
                raise _SessionFailure(f"{self.address} refused EHLO and HELO: {code} "
                                      f"{_text(reply)}", code)

    def _login(self, smtp):
        user = self.username
        if not smtp.has_extn("auth"):
            raise _SessionFailure(f"mail.username = {user!r} is set but {self.address} "
                                  "does not offer AUTH")
        if not (self.tls or self.ssl) and not _is_loopback(smtp.sock):
            raise _SessionFailure(f"refusing to send the password of {user!r} to "
                                  f"{self.address} over an unencrypted connection; set "
                                  "mail.tls = true or mail.ssl = true")
        smtp.secret = True
        try:
            smtp.login(user, self._password or "")
        except smtplib.SMTPAuthenticationError as exc:
            text = _text(exc.smtp_error)
            if self._password:
                text = text.replace(self._password, "***")
            raise _SessionFailure(f"authentication as {user!r} failed at {self.address}: "
                                  f"{exc.smtp_code} {text}", exc.smtp_code) from None
        except smtplib.SMTPServerDisconnected:
            raise
        except smtplib.SMTPException as exc:
            raise _SessionFailure(f"cannot authenticate as {user!r} at {self.address}: "
                                  f"{exc}") from None
        finally:
            smtp.secret = False

    def _setup_error(self, exc, step):
        addr = self.address
        if isinstance(exc, _ssl.SSLCertVerificationError):
            return (f"TLS certificate of {addr} could not be verified: "
                    f"{exc.verify_message or exc}; nothing sent")
        if isinstance(exc, _ssl.SSLError):
            return f"TLS with {addr} failed: {exc.reason or exc}; nothing sent"
        if isinstance(exc, TimeoutError) and step == "connect":
            return f"cannot connect to {addr}: no answer within {self.timeout:g}s"
        if isinstance(exc, TimeoutError) or "timed out" in str(exc):
            return f"no reply from {addr} within {self.timeout:g}s (at {step})"
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return f"connection to {addr} lost at {step}: {exc}"
        if isinstance(exc, ConnectionRefusedError):
            return f"cannot connect to {addr}: connection refused"
        return f"cannot connect to {addr}: {exc.strerror or exc}" if step == "connect" \
            else f"connection to {addr} failed at {step}: {exc}"

    # -- one message ---------------------------------------------------------------

    def _attempt(self, fromaddr, toaddrs, data):
        smtp = self._session()
        addr = self.address
        eightbit = smtp.has_extn("8bitmime")
        try:
            payload = wire.to_wire(data, eightbit=eightbit)
        except Exception as exc:  # a message the email package cannot re-encode
            log.exception("cannot encode the message for %s", addr)
            raise _SessionFailure(f"the message cannot be encoded for SMTP: {exc!r}",
                                  status=PERMANENT, drop=False) from None
        options = []
        if wire.needs_smtputf8(fromaddr, toaddrs, payload):
            if not smtp.has_extn("smtputf8"):
                raise _SessionFailure(
                    "SMTPUTF8 needed (non-ASCII address or header) but not offered by "
                    f"{addr}", status=PERMANENT, drop=False)
            options.append("SMTPUTF8")
        if eightbit and wire.has_8bit(payload):
            options.append("BODY=8BITMIME")
        if smtp.has_extn("size"):
            options.append(f"SIZE={len(payload)}")

        results = [None] * len(toaddrs)
        accepted = []
        stage = "MAIL FROM"
        try:
            code, reply = smtp.mail(fromaddr, options)
            if not 200 <= code < 300:
                self._end(smtp, code)
                text = f"{_text(reply)} (in reply to MAIL FROM at {addr})"
                return [RecipientResult(r, _reply_status(code), code, text) for r in toaddrs]
            stage = "RCPT TO"
            for i, rcpt in enumerate(toaddrs):
                code, reply = smtp.rcpt(rcpt)
                text = f"{_text(reply)} (in reply to RCPT TO at {addr})"
                if 200 <= code < 300:
                    accepted.append(i)
                    continue
                status = TEMPORARY if code == 552 else _reply_status(code)
                results[i] = RecipientResult(rcpt, status, code, text)
                if code == 421:  # the server is closing the session
                    self._drop()
                    return self._fill(results, toaddrs, TEMPORARY, code, text)
            if not accepted:
                self._end(smtp, None)
                return results
            stage = "DATA"
            smtp.final_dot_sent = False
            try:
                code, reply = smtp.data(payload)
            except smtplib.SMTPDataError as exc:  # no 354 to DATA
                code, reply = exc.smtp_code, exc.smtp_error
                self._end(smtp, code)
            else:
                stage = "end of data"
                if code == 421:
                    self._drop()
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
        timed_out = isinstance(exc, TimeoutError) or "timed out" in str(exc)
        if final_dot_sent:
            what = (f"no reply from {addr} within {self.timeout:g}s" if timed_out
                    else f"connection to {addr} lost ({exc})")
            return (f"{what} after the end of the message data; the server may have "
                    "accepted it, so a retry may deliver it twice")
        if timed_out:
            return f"no reply from {addr} within {self.timeout:g}s to {stage}"
        return f"connection to {addr} lost at {stage} ({exc})"


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
