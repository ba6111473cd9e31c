"""The record of committed mail a memory delivery keeps: :class:`SentMail`,
:class:`Outbox` (filters and assertions) and :func:`capture`.

It lives with the mailer because the memory outbox
(:class:`~pyramid_txmail.mailer.devdelivery.MemoryOutbox`) fills it at each
commit; :mod:`pyramid_txmail.testing` is its public face for tests.
"""
from __future__ import annotations

import contextlib
import email.policy
import re
import threading
import time
from email.parser import BytesParser

from ..compose.pyramid_mailer_message import MessageFields
from ..compose.reading import filename

__all__ = ["SentMail", "Attachment", "Outbox", "capture"]

_lock = threading.Lock()
_captures = []         # Outbox objects of the active capture() blocks
_memory_outboxes = 0   # how many memory deliveries were configured in this process


class Attachment:
    """One attachment of a :class:`SentMail`: file name, content type and decoded bytes."""

    def __init__(self, filename, content_type, data):
        self.filename = filename
        self.content_type = content_type
        self.data = data

    def __repr__(self):
        return f"<Attachment {self.filename!r} {self.content_type} {len(self.data)} octets>"


def _as_bytes(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return b"".join(data)  # a wire.Stream: an iterable of bytes chunks


class SentMail(MessageFields):
    """A committed message as the delivery got it.

    ``fromaddr`` and ``toaddrs`` are the envelope (Bcc recipients included,
    after ``mail.redirect_to``); ``data`` are the bytes that would have gone
    to the relay; the other attributes are parsed from them on first use.
    It also reads like a pyramid_mailer ``Message`` (``sender``, ``recipients``,
    ``cc``, ``bcc``, ``body``, ``extra_headers``, ``send_to``, ``to_message()``);
    ``source`` is the pyramid_mailer ``Message`` it was sent as, if it was.
    """

    #: the send order (``Prepared.sequence``); ``None`` sorts last
    sequence = None

    def __init__(self, message_id, fromaddr, toaddrs, data, sent_at=None, source=None,
                 sequence=None):
        self.sequence = sequence
        self.message_id = message_id
        self.fromaddr = fromaddr
        self.toaddrs = tuple(toaddrs)
        self.data = _as_bytes(data)
        self.sent_at = time.time() if sent_at is None else sent_at
        self.source = source
        self._message = None

    @classmethod
    def from_prepared(cls, prepared):
        return cls(prepared.message_id, prepared.fromaddr, prepared.toaddrs, prepared.data,
                   source=prepared.source, sequence=getattr(prepared, "sequence", None))

    @property
    def message(self):
        """The parsed ``email.message.EmailMessage`` (policy ``default``)."""
        if self._message is None:
            self._message = BytesParser(policy=email.policy.default).parsebytes(self.data)
        return self._message

    @property
    def subject(self):
        if self.source is not None:
            return self.source.subject
        return str(self.message.get("Subject", ""))

    def _body(self, subtype):
        part = self.message.get_body(preferencelist=(subtype,))
        return part.get_content() if part is not None else None

    @property
    def text(self):
        """The plain-text body, or ``None`` when the message has none."""
        return self._body("plain")

    @property
    def html(self):
        """The HTML body, or ``None`` when the message has none (a pyramid_mailer
        ``Message``'s own ``html``)."""
        return self._field("html", lambda: self._body("html"))

    @property
    def attachments(self):
        if self.source is not None:  # pyramid_mailer's Attachment objects
            return list(self.source.attachments)
        return [Attachment(filename(part), part.get_content_type(),
                           part.get_payload(decode=True) or b"")
                for part in self.message.iter_attachments()]

    def __getitem__(self, header):
        """A header of the message: ``mail["Reply-To"]`` (``None`` when absent)."""
        return self.message[header]

    def describe(self):
        """One line for failure messages: recipients and subject."""
        return f"to {', '.join(self.toaddrs)}: {self.subject!r}"

    def __repr__(self):
        return f"<SentMail {self.message_id} from {self.fromaddr} {self.describe()}>"


def _wanted(value):
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _address_key(address):
    """An address as it stands in an envelope (IDN domains as punycode), lowercased."""
    from ..compose.message import MessageError, check_address

    try:
        address = check_address("to", address)
    except MessageError:
        pass  # compared as given: it simply matches nothing
    return address.lower()


def _matches_text(pattern, value):
    if value is None:
        return False
    if isinstance(pattern, re.Pattern):
        return pattern.search(value) is not None
    return pattern == value


class Outbox:
    """A list of :class:`SentMail`, oldest first, with filters and assertions.

    Criteria (all optional, all must hold): ``to`` (an address or a list; each
    must be an envelope recipient, case-insensitive, an IDN domain in either
    form), ``fromaddr``, ``subject`` (exact text, or a compiled regular
    expression searched for), ``subject_contains``, ``text_contains``,
    ``html_contains``.
    """

    def __init__(self, messages=()):
        self._messages = list(messages)
        self._messages_lock = threading.Lock()

    # -- the IMailOutbox part --------------------------------------------
    @property
    def messages(self):
        with self._messages_lock:
            return list(self._messages)

    def clear(self):
        with self._messages_lock:
            self._messages.clear()

    def append(self, sent):
        """Add ``sent`` in send order: after every message handed to the mailer
        before it.  A ``send`` reaches the outbox at its commit, a
        ``send_immediately`` at once -- pyramid_mailer's ``DummyMailer`` lists
        ``send(A); send_immediately(B)`` as ``[A, B]``, and so do we (an aborted
        ``send`` never arrives at all)."""
        with self._messages_lock:
            index = len(self._messages)
            if sent.sequence is not None:
                while index and _later(self._messages[index - 1], sent.sequence):
                    index -= 1
            self._messages.insert(index, sent)

    def __len__(self):
        return len(self.messages)

    def __iter__(self):
        return iter(self.messages)

    def __getitem__(self, index):
        return self.messages[index]

    def __delitem__(self, index):
        """``del mailer.outbox[:]``, as tests of pyramid_mailer's DummyMailer empty it."""
        with self._messages_lock:
            del self._messages[index]

    def __eq__(self, other):
        """Equal to a list of the same messages (``mailer.outbox == []``); another
        outbox only to itself."""
        if isinstance(other, (list, tuple)):
            return self.messages == list(other)
        return self is other

    __hash__ = object.__hash__

    @property
    def last(self):
        """The newest message (``IndexError`` when there is none)."""
        return self.messages[-1]

    def __repr__(self):
        return f"<{type(self).__name__} of {len(self)} message(s)>"

    # -- filters ------------------------------------------------------------
    def filter(self, to=None, fromaddr=None, subject=None, subject_contains=None,
               text_contains=None, html_contains=None):
        """The messages that meet every given criterion, oldest first."""
        wanted_to = {_address_key(a) for a in _wanted(to)}

        def meets(mail):
            if wanted_to and not wanted_to <= {a.lower() for a in mail.toaddrs}:
                return False
            if fromaddr is not None and mail.fromaddr.lower() != fromaddr.lower():
                return False
            if subject is not None and not _matches_text(subject, mail.subject):
                return False
            if subject_contains is not None and subject_contains not in mail.subject:
                return False
            if text_contains is not None and text_contains not in (mail.text or ""):
                return False
            return html_contains is None or html_contains in (mail.html or "")

        return [mail for mail in self.messages if meets(mail)]

    def to(self, address):
        """The messages whose envelope includes ``address``."""
        return self.filter(to=address)

    # -- assertions ---------------------------------------------------------
    def assert_sent(self, count=None, **criteria):
        """Assert that messages meeting ``criteria`` were sent (exactly ``count``
        of them when given, else at least one); returns them."""
        __tracebackhide__ = True  # pytest shows the caller's line, not ours
        found = self.filter(**criteria)
        if (count is None and found) or (count is not None and len(found) == count):
            return found
        wanted = "at least 1" if count is None else str(count)
        raise AssertionError(f"expected {wanted} message(s) {_describe(criteria)}, "
                             f"found {len(found)}\n{self.report()}")

    def assert_not_sent(self, **criteria):
        """Assert that no message meeting ``criteria`` was sent."""
        __tracebackhide__ = True
        found = self.filter(**criteria)
        if found:
            raise AssertionError(f"expected no message {_describe(criteria)}, found "
                                 f"{len(found)}\n{self.report()}")

    def assert_none_sent(self):
        """Assert that no message at all was sent."""
        __tracebackhide__ = True
        if self.messages:
            raise AssertionError(f"expected no message to be sent\n{self.report()}")

    def report(self):
        """What was sent, one line each (used by the failure messages)."""
        messages = self.messages
        if not messages:
            hint = ""
            if _memory_outboxes == 0:
                hint = (" (no application in this process was configured with "
                        "mail.delivery = memory, so nothing could be recorded)")
            return "no message was sent" + hint
        lines = [f"{len(messages)} message(s) were sent:"]
        lines += [f"  {i}. {mail.describe()}" for i, mail in enumerate(messages, 1)]
        return "\n".join(lines)


def _later(mail, sequence):
    """Whether ``mail`` was handed to the mailer after the message numbered ``sequence``."""
    mine = getattr(mail, "sequence", None)
    return mine is not None and mine > sequence


def _describe(criteria):
    parts = [f"{key}={value!r}" for key, value in criteria.items() if value is not None]
    return "with " + ", ".join(parts) if parts else "(any)"


def _record(sent):
    """Hand a committed message of some memory delivery to the active captures."""
    with _lock:
        targets = list(_captures)
    for outbox in targets:
        outbox.append(sent)


def _memory_outbox_created():
    global _memory_outboxes
    with _lock:
        _memory_outboxes += 1


@contextlib.contextmanager
def capture():
    """Collect every message that any memory delivery in this process commits
    while the block runs (from any app and any thread), in a new :class:`Outbox`."""
    outbox = Outbox()
    with _lock:
        _captures.append(outbox)
    try:
        yield outbox
    finally:
        with _lock:
            _captures.remove(outbox)
