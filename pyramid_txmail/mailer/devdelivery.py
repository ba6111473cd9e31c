"""Deliveries for development and tests: ``mail.delivery = memory | file | console | null``.

Each is an *outbox* behind the same :class:`~pyramid_txmail.mailer.datamanager.MailDataManager`
as the queue, so it honours the transaction exactly as production does:
a message is kept, written or printed only once its transaction commits,
and dropped on abort, exception, doom, veto or savepoint rollback.  After
the commit each raises :class:`~pyramid_txmail.events.MailSent` (every
recipient a ``sent`` result, the text saying where the mail went), so
subscribers behave as in production.  Nothing is ever sent over the network.

- ``memory``: kept in a :class:`MemoryOutbox`, the app's ``IMailOutbox``
  utility (and handed to any active :func:`pyramid_txmail.testing.capture`).
- ``file``: one ``.eml`` file per message in ``mail.file_path`` -- the
  message with ``X-Envelope-From:`` / ``X-Envelope-To:`` lines prepended, as
  the demo's development SMTP inbox writes them.  Written at vote (a
  hidden temporary file, fsync'd) and renamed into place at finish, like
  the spool: a reader never sees an uncommitted or half-written file.
- ``console``: envelope, headers and text printed to stdout after the commit.
- ``null``: dropped after the commit (still ``MailSent``, text "dropped":
  code that waits for that event keeps working when mail is switched off).
"""
from __future__ import annotations

import itertools
import os
import re
import secrets
import sys
import threading
import time

from pyramid.exceptions import ConfigurationError
from zope.interface import implementer

from ..util.printable import get_logger
from ..compose import wire
from .datamanager import write_all
from ..events import MailQueued, MailSent
from ..interfaces import IMailOutbox
from ..util.private_dirs import fsync_dir, make_private_dirs
from ..relay.result import SENT, RecipientResult
from .sent import Outbox, SentMail, _memory_outbox_created, _record

log = get_logger("pyramid_txmail.devdelivery")

FILE_MODE = 0o600
DIR_MODE = 0o700


def _sent_events(messages, where):
    """``MailSent`` per message, each recipient ``sent`` with ``where`` as the text."""
    return [MailSent(p.message_id, p.fromaddr, p.toaddrs,
                     [RecipientResult(r, SENT, None, where) for r in p.toaddrs])
            for p in messages]


class AfterCommitOutbox:
    """An outbox with nothing to do inside the commit (direct, console, null)."""

    def vote(self, messages):
        return None

    def finish(self, voted):
        pass

    def discard(self, voted):
        pass


@implementer(IMailOutbox)
class MemoryOutbox(Outbox):
    """``mail.delivery = memory``: committed messages as :class:`SentMail`, oldest first.

    The messages are built at vote (a streamed message is read then, as the
    queue would write it) and become visible at finish, i.e. at the commit.
    """

    def __init__(self):
        super().__init__()
        _memory_outbox_created()
        #: what ``send_to_queue`` committed (pyramid_mailer's ``DummyMailer.queue``),
        #: written through :attr:`queue_outbox`
        self.queue = Outbox()
        self.queue_outbox = MemoryQueueOutbox(self.queue)

    def vote(self, messages):
        return [SentMail.from_prepared(p) for p in messages]

    def finish(self, sent):
        for mail in sent:
            self.append(mail)
            _record(mail)

    def discard(self, sent):
        pass

    def committed(self, messages):
        for p in messages:
            log.debug("kept %s to %s in memory", p.message_id, ", ".join(p.toaddrs))
        return _sent_events(messages, "kept in memory (mail.delivery = memory)")


class MemoryQueueOutbox:
    """``send_to_queue`` with memory delivery: the committed messages go to a list of
    their own (``mailer.queue``), as pyramid_mailer's ``DummyMailer`` keeps them."""

    def __init__(self, queue):
        self.queue = queue

    def vote(self, messages):
        return [SentMail.from_prepared(p) for p in messages]

    def finish(self, sent):
        for mail in sent:
            self.queue.append(mail)

    def discard(self, sent):
        pass

    def committed(self, messages):
        return [MailQueued(p.message_id, p.fromaddr, p.toaddrs) for p in messages]


_counter = itertools.count()
_counter_lock = threading.Lock()


def eml_name(now=None):
    """A file name that sorts by time and is unique: ``20261125T084239.123456Z-PID-N-RAND.eml``."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    with _counter_lock:
        count = next(_counter)
    return (f"{stamp}.{int(now % 1 * 1e6):06d}Z-{os.getpid()}-{count:06d}"
            f"-{secrets.token_hex(3)}.eml")


def _envelope_value(value):
    return re.sub(r"[\r\n]", " ", value).encode("utf-8")


def envelope_header(fromaddr, toaddrs):
    """The ``X-Envelope-From`` / ``X-Envelope-To`` lines of an .eml file (CRLF)."""
    return (b"X-Envelope-From: " + _envelope_value(fromaddr) + b"\r\n"
            + b"X-Envelope-To: " + _envelope_value(", ".join(toaddrs)) + b"\r\n")


class FileOutbox:
    """``mail.delivery = file``: one ``.eml`` file per committed message in ``path``."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        if not os.path.isdir(self.path):
            make_private_dirs(self.path)  # parents too, 0700 whatever the umask
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise PermissionError(13, "the directory is not writable")

    def vote(self, messages):
        return write_all(messages, self._write_tmp, self.discard,
                         f"to mail.file_path {self.path}")

    def _write_tmp(self, prepared):
        name = eml_name()
        tmp = os.path.join(self.path, f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(envelope_header(prepared.fromaddr, prepared.toaddrs))
                if isinstance(prepared.data, wire.Stream):
                    for chunk in wire.crlf_chunks(prepared.data):
                        fh.write(chunk)
                else:
                    fh.write(wire.to_wire(prepared.data))
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp, os.path.join(self.path, name)

    def finish(self, written):
        for tmp, final in written:
            os.replace(tmp, final)
        if written:
            fsync_dir(self.path)

    def discard(self, written):
        for tmp, _ in written:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def committed(self, messages):
        for p in messages:
            log.info("wrote %s to %s into %s", p.message_id, ", ".join(p.toaddrs), self.path)
        return _sent_events(messages, f"written to {self.path} (mail.delivery = file)")


_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(text):
    """``text`` without control characters: mail must not drive the terminal."""
    return _UNPRINTABLE.sub("\N{REPLACEMENT CHARACTER}", text)


def console_text(sent):
    """What console delivery prints for one :class:`SentMail`."""
    lines = [f"======== mail {sent.message_id} (mail.delivery = console) ========",
             f"X-Envelope-From: {sent.fromaddr}",
             f"X-Envelope-To: {', '.join(sent.toaddrs)}"]
    message = sent.message
    for name, value in message.items():
        lines.append(f"{name}: {' '.join(str(value).split())}")
    lines.append("")
    if sent.text is not None:
        lines.append(sent.text.rstrip("\n"))
    elif sent.html is not None:
        lines.append(f"(no text part; an HTML part of {len(sent.html)} characters)")
    else:
        lines.append("(no text part)")
    for attachment in sent.attachments:
        lines.append(f"[attachment {attachment.filename!r}, {attachment.content_type}, "
                     f"{len(attachment.data)} octets]")
    lines.append(f"======== end of mail {sent.message_id} ========")
    return "\n".join(_printable(line) for line in lines) + "\n"


class ConsoleOutbox(AfterCommitOutbox):
    """``mail.delivery = console``: print each committed message to ``stream``
    (default: ``sys.stdout`` at the time of printing)."""

    def __init__(self, stream=None):
        self.stream = stream

    def committed(self, messages):
        stream = self.stream or sys.stdout
        for p in messages:
            stream.write(console_text(SentMail.from_prepared(p)))
        stream.flush()
        return _sent_events(messages, "printed (mail.delivery = console)")


class NullOutbox(AfterCommitOutbox):
    """``mail.delivery = null``: accept every committed message and drop it."""

    def committed(self, messages):
        for p in messages:
            log.info("dropped %s to %s (mail.delivery = null)", p.message_id,
                     ", ".join(p.toaddrs))
        return _sent_events(messages, "dropped (mail.delivery = null)")


def make_dev_outbox(settings):
    """The outbox for a development ``settings.delivery``; says at startup what it does."""
    mode = settings.delivery
    if mode == "memory":
        log.info("mail.delivery = memory: committed mail is kept in memory, nothing is sent")
        return MemoryOutbox()
    if mode == "file":
        try:
            outbox = FileOutbox(settings.file_path)
        except OSError as exc:
            raise ConfigurationError(f"mail.file_path = {settings.file_path!r}: cannot use "
                                     f"the directory: {exc.strerror}") from None
        log.info("mail.delivery = file: committed mail is written to %s, nothing is sent",
                 outbox.path)
        return outbox
    if mode == "console":
        log.info("mail.delivery = console: committed mail is printed, nothing is sent")
        return ConsoleOutbox()
    if mode == "null":
        log.warning("mail.delivery = null: committed mail is dropped, nothing is sent")
        return NullOutbox()
    raise ValueError(f"not a development delivery: {mode!r}")
