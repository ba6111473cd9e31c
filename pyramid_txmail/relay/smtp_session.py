"""Opening an SMTP session: connect, greeting, EHLO, STARTTLS, AUTH -- and relays.

:class:`SessionOpener` turns a host and port into a ready ``smtplib.SMTP``
(or raises :class:`SessionFailure` with a sentence an operator can act on).
:class:`Relays` remembers which relays keep failing so that a relay that is
down is rested for ``mail.host_rest`` instead of being tried for every
message; several workers share one.
"""
from __future__ import annotations

import base64
import functools
import ipaddress
import smtplib
import socket
import ssl as _ssl
import threading
import time

from ..util.printable import get_logger
from .result import TEMPORARY

log = get_logger("pyramid_txmail.smtp")

#: Consecutive failures to open a session after which a relay is rested.
FAILURES_BEFORE_REST = 3


class SessionFailure(Exception):
    """Nothing can be sent now; the same outcome for every recipient."""

    def __init__(self, text, code=None, status=TEMPORARY, drop=True, connected=False):
        super().__init__(text)
        self.text, self.code, self.status, self.drop = text, code, status, drop
        #: True when a TCP connection was made before it failed.
        self.connected = connected


def secret_forms(username, password):
    """The password as it can appear on the wire: as is, and in the base64 of
    AUTH LOGIN and AUTH PLAIN (``\\0user\\0password``, with or without the
    authorisation id) -- what :meth:`SessionOpener.redact` hides, longest first."""
    if not password:
        return ()
    user = username or ""
    forms = {password, repr(password)[1:-1]}
    for raw in (password, f"\0{user}\0{password}", f"{user}\0{user}\0{password}"):
        forms.add(base64.b64encode(raw.encode("utf-8")).decode("ascii"))
    return tuple(sorted(forms, key=len, reverse=True))


class _RedactingMixin:
    """smtplib with AUTH lines hidden from its debug output (and the password
    in any form removed from every other line, e.g. a 535 reply that echoes
    it), and a record of whether the message and its final dot were handed
    to the socket."""

    secret = False
    final_dot_sent = False
    redact = staticmethod(lambda text: text)

    def _print_debug(self, *args):
        if self.secret and args and args[0] == "send:":
            args = ("send:", "<AUTH data not shown>")
        super()._print_debug(*(self.redact(str(arg)) for arg in args))


#: The most a single reply may bring (all its lines): a relay streaming
#: continuation lines fast would otherwise fill memory before any deadline.
MAX_REPLY_BYTES = 1 << 20
#: Writes go out in pieces of at most this, each within ``mail.timeout``: a
#: relay that stops reading times out, one that reads slower than this much
#: per ``mail.timeout`` (about 2 KiB/s at 30 s) is given up on, as Postfix's
#: ``smtp_min_data_rate`` does.
SEND_PIECE = 1 << 16


class _DeadlineReader:
    """smtplib's ``self.file``: lines from the socket, each reply within a deadline.

    smtplib reads replies with ``file.readline``, and a socket timeout
    bounds each read only: a relay sending a continuation line (``250-``)
    every few seconds kept a reply going forever.  Here every read waits
    at most what is left of the reply's deadline (set by
    :meth:`_DeadlineMixin.getreply`), so a reply ends within it, complete
    or not.  Reading ahead is kept for the next reply (pipelining).
    """

    def __init__(self, sock):
        self.sock = sock
        self.buffer = bytearray()
        self.deadline = None
        self.budget = 0

    def start(self, seconds):
        self.deadline = time.monotonic() + seconds
        self.budget = MAX_REPLY_BYTES

    def readline(self, limit=-1):
        limit = limit if limit and limit > 0 else MAX_REPLY_BYTES
        while True:
            end = self.buffer.find(b"\n", 0, limit)
            if end >= 0 or len(self.buffer) >= limit:
                size = end + 1 if end >= 0 else limit
                line = bytes(self.buffer[:size])
                del self.buffer[:size]
                return line
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self.sock.settimeout(remaining)
            data = self.sock.recv(1 << 16)
            if not data:
                line = bytes(self.buffer)
                self.buffer.clear()
                return line
            self.budget -= len(data)
            if self.budget < 0:
                raise OSError(f"reply longer than {MAX_REPLY_BYTES} bytes")
            self.buffer += data

    def close(self):
        self.buffer.clear()


class _DeadlineMixin:
    """Every reply within one deadline, every write in bounded pieces.

    ``reply_timeout`` is the deadline of the next replies (``mail.timeout``
    unless set; the final dot's is ``mail.data_timeout``).  After each reply
    the socket's timeout is ``mail.timeout`` again, which bounds what
    smtplib does directly: connect, the TLS handshake of STARTTLS (CPython
    bounds the whole handshake by it) and ``sendall``, whose timeout is
    for the whole call since Python 3.5.
    """

    reply_timeout = None

    def getreply(self):
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        if not isinstance(self.file, _DeadlineReader) or self.file.sock is not self.sock:
            self.file = _DeadlineReader(self.sock)  # new socket: STARTTLS, a reconnect
        self.file.start(self.reply_timeout or self.timeout)
        try:
            return super().getreply()
        finally:
            if self.sock is not None:  # smtplib closes it on an error
                self.sock.settimeout(self.timeout)

    def send(self, s):
        if isinstance(s, str):
            s = s.encode(self.command_encoding)
        if self.sock is None or len(s) <= SEND_PIECE:
            return super().send(s)
        view = memoryview(s)
        for start in range(0, len(view), SEND_PIECE):
            self.sock.settimeout(self.timeout)  # each piece within mail.timeout
            super().send(bytes(view[start:start + SEND_PIECE]))
            if self.sock is None:  # smtplib closed it
                raise smtplib.SMTPServerDisconnected("Server not connected")


class _SMTP(_RedactingMixin, _DeadlineMixin, smtplib.SMTP):
    pass


class _SMTP_SSL(_RedactingMixin, _DeadlineMixin, smtplib.SMTP_SSL):
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


def format_address(host, port):
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}"


class Relays:
    """The relays to try, in order, and which of them are resting.

    A relay whose session could not be opened ``FAILURES_BEFORE_REST``
    times in a row is skipped for ``rest`` seconds; when every relay is
    resting, they are all tried anyway (waiting would only delay mail).
    Thread-safe, so the workers of one processor share what they learn.
    """

    def __init__(self, hosts, rest=300.0, clock=time.monotonic):
        self.hosts = tuple(hosts)
        self.rest = rest
        self.clock = clock
        self._failures = {}
        self._resting_until = {}
        self._lock = threading.Lock()
        #: Called as ``observer(host, ok)`` after each session set-up (metrics: the
        #: relay layer never imports the processor that counts them).
        self.observer = None

    def candidates(self):
        now = self.clock()
        with self._lock:
            awake = [h for h in self.hosts if self._resting_until.get(h, 0) <= now]
        return awake or list(self.hosts)

    def succeeded(self, host):
        with self._lock:
            self._failures.pop(host, None)
            self._resting_until.pop(host, None)
        self._notify(host, True)

    def failed(self, host):
        self._notify(host, False)
        with self._lock:
            count = self._failures.get(host, 0) + 1
            self._failures[host] = count
            if count >= FAILURES_BEFORE_REST and len(self.hosts) > 1:
                self._resting_until[host] = self.clock() + self.rest
                log.warning("relay %s failed %d times in a row; resting it for %gs",
                            format_address(*host), count, self.rest)

    def resting(self):
        now = self.clock()
        with self._lock:
            return [h for h in self.hosts if self._resting_until.get(h, 0) > now]

    def failing(self):
        """The relays resting, or (a lone relay is never rested) whose last
        ``FAILURES_BEFORE_REST`` session set-ups all failed: for health checks."""
        now = self.clock()
        with self._lock:
            return [h for h in self.hosts if self._resting_until.get(h, 0) > now
                    or self._failures.get(h, 0) >= FAILURES_BEFORE_REST]

    def _notify(self, host, ok):
        if self.observer is not None:
            try:
                self.observer(host, ok)
            except Exception:  # counting must never cost a delivery
                log.exception("the relay observer failed")


class SessionOpener:
    """Everything needed to open an authenticated, encrypted session to one host."""

    def __init__(self, *, username=None, password=None, tls=False, ssl=False,
                 keyfile=None, certfile=None, cafile=None, timeout=30.0, debug=0,
                 local_hostname=None):
        if tls and ssl:
            raise ValueError("tls (STARTTLS) and ssl (implicit TLS) cannot both be set")
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
        self._context = None

    def redact(self, text):
        """``text`` with the password, plain or base64-encoded, replaced by ``***``."""
        for secret in secret_forms(self.username, self._password):
            text = text.replace(secret, "***")
        return text

    def _tls_context(self, addr):
        if self._context is None:
            try:
                context = _ssl.create_default_context(cafile=self.cafile)
                if self.certfile:
                    context.load_cert_chain(self.certfile, self.keyfile)
            except (OSError, ValueError) as exc:
                raise SessionFailure(f"cannot set up TLS for {addr}: {exc}") from None
            self._context = context
        return self._context

    def open(self, host, port):
        """A ready session to ``host:port``; :class:`SessionFailure` if none."""
        addr = format_address(host, port)
        kwargs = {"local_hostname": self.local_hostname or _default_local_hostname(),
                  "timeout": self.timeout}
        if self.ssl:
            cls, kwargs["context"] = _SMTP_SSL, self._tls_context(addr)
        else:
            cls = _SMTP
        try:
            # Given the host, smtplib connects and reads the greeting here (and
            # remembers the host name that TLS verifies the certificate for).
            smtp = cls(host, port, **kwargs)
        except smtplib.SMTPConnectError as exc:
            raise SessionFailure(f"{addr} refused the session: {exc.smtp_code} "
                                 f"{_text(exc.smtp_error)}", exc.smtp_code,
                                 connected=True) from None
        except OSError as exc:  # includes smtplib and ssl errors
            raise SessionFailure(self._setup_error(exc, "connect", addr)) from None
        smtp.redact = self.redact
        smtp.set_debuglevel(self.debug)
        step = ["EHLO"]
        try:
            self._setup(smtp, step, addr)
        except SessionFailure as failure:
            smtp.close()
            failure.connected = True
            raise
        except OSError as exc:
            smtp.close()
            raise SessionFailure(self._setup_error(exc, step[0], addr),
                                 connected=True) from None
        except BaseException:
            smtp.close()
            raise
        log.debug("connected to %s", addr)
        return smtp

    def _setup(self, smtp, step, addr):
        """EHLO, STARTTLS and EHLO again, AUTH: ``step`` names the one running."""
        self._ehlo(smtp, addr)
        if self.tls:
            if not smtp.has_extn("starttls"):
                raise SessionFailure(f"STARTTLS required (mail.tls = true) but {addr} does "
                                     "not offer it; not sent in plaintext")
            step[0] = "STARTTLS"
            code, reply = smtp.starttls(context=self._tls_context(addr))
            if code != 220:
                raise SessionFailure(f"STARTTLS refused by {addr}: {code} {_text(reply)}; "
                                     "not sent in plaintext", code)
            step[0] = "EHLO after STARTTLS"
            self._ehlo(smtp, addr)
        if self.username:
            step[0] = "AUTH"
            self._login(smtp, addr)

    def _ehlo(self, smtp, addr):
        code, reply = smtp.ehlo()
        if not 200 <= code < 300:
            code, reply = smtp.helo()
            if not 200 <= code < 300:
                raise SessionFailure(f"{addr} refused EHLO and HELO: {code} "
                                     f"{_text(reply)}", code)

    def _login(self, smtp, addr):
        user = self.username
        if not smtp.has_extn("auth"):
            raise SessionFailure(f"mail.username = {user!r} is set but {addr} "
                                 "does not offer AUTH")
        if not (self.tls or self.ssl) and not _is_loopback(smtp.sock):
            raise SessionFailure(f"refusing to send the password of {user!r} to "
                                 f"{addr} over an unencrypted connection; set "
                                 "mail.tls = true or mail.ssl = true")
        smtp.secret = True
        try:
            smtp.login(user, self._password or "")
        except smtplib.SMTPAuthenticationError as exc:
            text = self.redact(_text(exc.smtp_error))
            raise SessionFailure(f"authentication as {user!r} failed at {addr}: "
                                 f"{exc.smtp_code} {text}", exc.smtp_code) from None
        except smtplib.SMTPServerDisconnected:
            raise
        except smtplib.SMTPException as exc:
            raise SessionFailure(f"cannot authenticate as {user!r} at {addr}: "
                                 f"{self.redact(str(exc))}") from None
        finally:
            smtp.secret = False

    def _setup_error(self, exc, step, addr):
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
