"""The sendmail-binary transport: ``mail.delivery = sendmail`` and ``send_*sendmail``.

The message is piped to ``mail.sendmail_app`` (pyramid_mailer's default
``/usr/sbin/sendmail``), which hands it to the local MTA's queue.  Why the
command line is built the way it is:

- **The envelope is what the application passed.**  The recipients are
  appended after ``--``; ``-t`` (read the recipients from To/Cc/Bcc) is
  removed from the template: with Postfix it *adds* the header recipients to
  the command line's, which would undo ``mail.redirect_to`` and an explicit
  ``send(fromaddr, toaddrs, message)`` envelope.  ``--`` ends the options, so
  a valid address such as ``-oQ/tmp/x@example.com`` can never be read as
  one (the PHPMailer class of bug).
- **No shell**: an argument list, never ``shell=True``; the only values
  formatted into it are ``{sendmail_app}`` and ``{sender}``.  Nothing secret
  is ever on the command line (sendmail takes no password).
- **The exit status decides** (sysexits.h), as Postfix's own ``pipe(8)`` does
  (its ``sys_exits_softerror``): ``EX_TEMPFAIL`` (75) and ``EX_OSERR`` (71)
  are temporary -- retried from the queue; every other non-zero status,
  sysexits or not, is permanent.  A binary that could not be started, was
  killed by a signal or did not finish within ``mail.data_timeout`` (then its
  whole process group is killed: it runs in a session of its own) gave no
  verdict: temporary (the operator can fix it; a permanent failure would
  dead-letter the mail).  Every recipient gets the same
  :class:`SendmailResult`, whose ``exit_status`` and text (with the binary's
  stderr) end up in the log, the events and the queue's state files.

The message goes to stdin with LF line endings (the local convention of the
sendmail interface) and ``-i`` keeps a line holding only ``.`` in the body.
"""
from __future__ import annotations

import dataclasses
import os
import re
import selectors
import signal
import string
import subprocess
import tempfile
import time

from zope.interface import implementer

from ..util.printable import get_logger
from ..compose import wire
from ..interfaces import IMailer
from .result import PERMANENT, SENT, TEMPORARY, DeliveryResult, RecipientResult

log = get_logger("pyramid_txmail.sendmail")

DEFAULT_APP = "/usr/sbin/sendmail"
#: pyramid_mailer's (repoze.sendmail's) default template; ``-t`` is dropped when used.
DEFAULT_TEMPLATE = ("{sendmail_app}", "-t", "-i", "-f", "{sender}")
PLACEHOLDERS = ("sendmail_app", "sender")

EX_OSERR = 71
EX_TEMPFAIL = 75
#: sysexits.h, with Postfix's reading of each (sys_exits.c): only 71 and 75 are soft.
SYSEXITS = {
    64: "EX_USAGE: command line usage error",
    65: "EX_DATAERR: data format error",
    66: "EX_NOINPUT: cannot open input",
    67: "EX_NOUSER: user unknown",
    68: "EX_NOHOST: host name unknown",
    69: "EX_UNAVAILABLE: service unavailable",
    70: "EX_SOFTWARE: internal software error",
    71: "EX_OSERR: system resource problem",
    72: "EX_OSFILE: critical OS file missing",
    73: "EX_CANTCREAT: can't create user output file",
    74: "EX_IOERR: input/output error",
    75: "EX_TEMPFAIL: temporary failure",
    76: "EX_PROTOCOL: remote error in protocol",
    77: "EX_NOPERM: permission denied",
    78: "EX_CONFIG: local configuration error",
}
TEMPORARY_STATUSES = (EX_OSERR, EX_TEMPFAIL)

#: A cluster of option letters that take no argument, ``-t`` among them (``-ti``).
_T_CLUSTER = re.compile(r"^-[imnUvGt]*t[imnUvGt]*$")


@dataclasses.dataclass(frozen=True)
class SendmailResult(RecipientResult):
    """A :class:`RecipientResult` from the sendmail binary.

    ``exit_status`` is the binary's exit status (0 when it took the message;
    negative: killed by that signal; ``None`` when it gave none: it could not
    be started or did not finish in time); ``code`` is always ``None``
    (there was no SMTP reply).
    """

    exit_status: int | None = None


def exit_status_status(exit_status):
    """``(status, text)`` for an exit status, as Postfix reads sysexits."""
    if exit_status == 0:
        return SENT, "accepted by sendmail (exit status 0)"
    if exit_status < 0:
        return TEMPORARY, f"sendmail was killed by signal {-exit_status}"
    meaning = SYSEXITS.get(exit_status, "not a sysexits.h status")
    status = TEMPORARY if exit_status in TEMPORARY_STATUSES else PERMANENT
    return status, f"sendmail exit status {exit_status} ({meaning})"


def check_template(template):
    """Validate a ``mail.sendmail_template``; return it without ``-t``.

    Raises ``ValueError`` for an empty template or a placeholder other than
    ``{sendmail_app}`` / ``{sender}`` (repoze.sendmail's ``{recipients}``
    is not needed: the recipients always follow ``--``).
    """
    template = [str(arg) for arg in template]
    if not template:
        raise ValueError("expected the command, e.g. {sendmail_app} -i -f {sender}")
    for arg in template:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(arg) if f is not None]
        except ValueError as exc:
            raise ValueError(f"{arg!r}: {exc}") from None
        unknown = [f for f in fields if f not in PLACEHOLDERS]
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}} in {arg!r}; only "
                             "{sendmail_app} and {sender} (the recipients are always "
                             "passed after --)")
        if arg == "--":
            raise ValueError("'--' is added before the recipients; leave it out")
    kept = []
    for arg in template:
        if _T_CLUSTER.match(arg):
            arg = arg.replace("t", "")
            if arg == "-":
                continue
        kept.append(arg)
    return kept


def without_t_warning(template):
    """A startup warning when ``template`` asks for ``-t`` (``None`` otherwise)."""
    if any(_T_CLUSTER.match(str(arg)) for arg in template):
        return ("mail.sendmail_template: -t is ignored; the envelope recipients the "
                "application passed are given to sendmail after --, never read from "
                "the To/Cc/Bcc headers")
    return None


def command(app, template, sender, recipients):
    """The argument list: the template, ``--``, then every recipient."""
    args = [arg.format(sendmail_app=app, sender=sender) for arg in check_template(template)]
    return args + ["--", *recipients]


def _lf_chunks(data):
    """The message as LF-terminated lines, in chunks (bytes or a wire.Stream)."""
    if isinstance(data, wire.Stream):

        for chunk in wire.crlf_chunks(data):
            yield chunk.replace(b"\r\n", b"\n")
    else:
        yield wire.to_wire(bytes(data)).replace(b"\r\n", b"\n")


@implementer(IMailer)
class SendmailTransport:
    """Deliver by piping each message to the sendmail binary (one process each).

    Same interface as :class:`~pyramid_txmail.relay.smtp.SMTPTransport`:
    ``deliver(fromaddr, toaddrs, data, message_id=None) -> DeliveryResult``,
    which never raises for a delivery problem.
    """

    def __init__(self, app=DEFAULT_APP, template=DEFAULT_TEMPLATE, timeout=600.0, dkim=None):
        self.app = app
        self.template = check_template(template)
        self.timeout = timeout
        #: A :class:`~pyramid_txmail.relay.dkim.DKIMSigner`, or None: sign nothing.
        self.dkim = dkim

    @classmethod
    def from_settings(cls, settings):
        return cls(settings.sendmail_app, settings.sendmail_template, settings.data_timeout,
                   dkim=settings.dkim)

    def __repr__(self):
        return f"<SendmailTransport {self.app}>"

    def deliver(self, fromaddr, toaddrs, data, message_id=None) -> DeliveryResult:
        from .smtp import _check_args

        fromaddr, toaddrs, data = _check_args(fromaddr, toaddrs, data)
        if message_id is None:
            message_id = wire.message_id_of(data)
        args = command(self.app, self.template, fromaddr, toaddrs)
        data, refused = self._signed(data, message_id)
        exit_status, output = (None, None) if refused else self._run(args, data)
        if refused:
            status, text = refused
        elif exit_status is None:
            status, text = TEMPORARY, output
        else:
            status, text = exit_status_status(exit_status)
            if output:
                text += ": " + output
        result = DeliveryResult(message_id, tuple(
            SendmailResult(r, status, None, text, exit_status=exit_status) for r in toaddrs))
        if result.ok:
            log.debug("sent %s from <%s> to %s via %s", message_id, fromaddr,
                      ", ".join(toaddrs), self.app)
        else:
            log.warning("%s from <%s> to %s not taken by %s: %s", message_id, fromaddr,
                        ", ".join(toaddrs), self.app, text)
        return result

    def _signed(self, data, message_id):
        """``(data, None)``, DKIM-signed over its CRLF form (what the MTA sends on)
        when a signer is set; ``(data, (status, why))`` when it cannot be signed."""
        if self.dkim is None:
            return data, None
        from .dkim import DKIMSigningError

        try:
            return self.dkim.signed(data, message_id), None
        except DKIMSigningError as exc:
            return data, (TEMPORARY if exc.temporary else PERMANENT, str(exc))

    def _run(self, args, data):
        """``(exit status or None, what the binary said or why it gave no status)``.

        Everything is bounded by ``self.timeout`` from the start: the binary
        runs in a session (and process group) of its own, so that at the
        deadline the whole group is killed -- a wrapper script's child that
        kept stdin open would otherwise keep the pipe, and the message,
        forever -- and stdin is written without blocking (:func:`_feed`), so
        no write can wait past the deadline either.
        """
        deadline = time.monotonic() + self.timeout
        with tempfile.TemporaryFile() as output:  # a file, so a chatty binary never blocks
            try:
                proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=output,
                                        stderr=subprocess.STDOUT, close_fds=True,
                                        start_new_session=True)
            except OSError as exc:
                return None, f"cannot run {args[0]}: {exc.strerror or exc}"
            finished = False
            try:
                finished = _feed(proc.stdin, _lf_chunks(data), deadline)
                if finished:
                    proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                finished = False
            finally:
                if not finished:
                    _kill_group(proc)
                try:
                    proc.stdin.close()
                except OSError:
                    pass
                if proc.poll() is None:
                    _kill_group(proc)
                    proc.wait()
            exit_status = proc.returncode
            output.seek(0)
            said = " ".join(output.read(2000).decode("utf-8", "replace").split())
        if not finished:
            return None, (f"{args[0]} did not finish within {self.timeout:g} s and was "
                          f"killed with its process group{': ' + said if said else ''}")
        return exit_status, said

    def send(self, fromaddr, toaddrs, message):
        """repoze.sendmail's IMailer: send now, raise unless sendmail took it."""
        from .smtp import _deliver_or_raise, _serialize

        message_id = None
        if not isinstance(message, (bytes, wire.Stream)):
            message, message_id = _serialize(message)
        return _deliver_or_raise(self, fromaddr, toaddrs, message, message_id)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _feed(pipe, chunks, deadline):
    """Write ``chunks`` to ``pipe`` and close it; False if the deadline came first.

    Non-blocking writes, each after a wait for room that ends at the
    deadline: a reader that stops reading (or a child that holds the pipe
    without ever reading it) cannot hold the caller.  A reader that exits
    early (broken pipe) ends the writing: its exit status says why.
    """
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_WRITE)
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    return False
                try:
                    written = os.write(fd, view[:1 << 16])
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    return True
                view = view[written:]
    try:
        pipe.close()
    except BrokenPipeError:
        pass
    return True


def _kill_group(proc):
    """SIGKILL the binary's whole process group (it leads it: start_new_session).

    SIGKILL, not SIGTERM: the deadline has passed, and txmail-qp's blocked
    signal mask, which children inherit, would hold a SIGTERM back.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def check_app(app):
    """``None`` when ``app`` is an executable file, else why not (for startup checks)."""
    if not os.path.isfile(app):
        return "no such file"
    if not os.access(app, os.X_OK):
        return "not executable"
    return None
