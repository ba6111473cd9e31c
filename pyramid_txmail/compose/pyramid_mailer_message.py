"""A pyramid_mailer ``Message`` handed to ``send``: its envelope, checked as
pyramid_mailer never did, and the ``email`` message it builds.

pyramid_mailer takes ``"Name <addr>"`` in ``sender``, ``recipients``, ``cc`` and
``bcc``: the headers keep the names, and its delivery (smtplib) sends to the bare
addresses.  So do we -- but an item must name exactly one mailbox, so that the
headers and the envelope cannot disagree about who gets the mail.
"""
from __future__ import annotations

import copy
import email.utils
import re

from .addresses import LINE_BREAKS, HeaderInjection, InvalidAddress, _validated, check_address
from .headblock import simple_addresses

_LINE_BREAK = re.compile(f"[{re.escape(LINE_BREAKS)}]")
#: pyramid_mailer's fields and the header each one becomes.
ADDRESS_FIELDS = (("To", "recipients"), ("Cc", "cc"), ("Bcc", "bcc"))


def check_fields(message):
    """What pyramid_mailer's ``is_bad_headers`` checks, naming the field (it
    raises TypeError when ``sender`` is None, and names nothing)."""
    fields = [("Subject", message.subject), ("From", message.sender)]
    fields += [(name, address) for name, attr in ADDRESS_FIELDS
               for address in getattr(message, attr) or ()]
    fields += list(dict(message.extra_headers or {}).items())
    for name, value in fields:
        if value and _LINE_BREAK.search(str(value)):
            raise HeaderInjection.control(name, str(value))


def one_mailbox(header, item):
    """The envelope address of one field item: ``"Kinto <k@example.com>"`` gives
    ``k@example.com``; a bare address is used as given (the envelope is what the app
    passed, byte for byte: no parser may unquote or decode it).  An item naming more
    or less than one mailbox
    (``"a@example.com, b@example.com"``, an unquoted comma in a name) is an
    :class:`InvalidAddress` naming the header."""
    text = str(item)
    if _validated(text)[1] is None:  # a bare address: taken as it is, never re-parsed
        return check_address(header, text)
    simple = simple_addresses(text)  # what getaddresses finds, without its parser
    pairs = [("", a) for a in simple] if simple is not None else email.utils.getaddresses([text])
    if len(pairs) != 1 or not pairs[0][1]:
        raise InvalidAddress(header, text, "expected one address per item, such as "
                             "'a@example.com' or 'Name <a@example.com>'")
    return check_address(header, pairs[0][1], text)


def snapshot(message):
    """A copy that later changes to the caller's lists do not reach (kept as
    ``Prepared.source`` for the test outboxes)."""
    message = copy.copy(message)
    for name in ("recipients", "cc", "bcc", "attachments"):
        setattr(message, name, list(getattr(message, name, None) or ()))
    message.extra_headers = dict(message.extra_headers or {})
    return message


def coerce(message, default_sender=None):
    """``(email message, envelope sender or None, envelope recipients, snapshot)``.

    Without a sender it takes ``default_sender``, as pyramid_mailer's ``Mailer``
    does (its ``to_message()`` refuses a message without one), for the From
    header and for the envelope alike.
    """
    check_fields(message)
    message = snapshot(message)
    # pyramid_mailer's Mailer._message_args: the envelope sender is
    # ``message.sender or self.default_sender`` -- never a Sender or From that
    # extra_headers carries (those stay headers only).
    sender = message.sender or default_sender or None
    message.sender = sender
    recipients = [one_mailbox(name, item) for name, attr in ADDRESS_FIELDS
                  for item in getattr(message, attr) if item]
    return (message.to_message(), sender and one_mailbox("From", sender), recipients,
            message)


def _header_items(message, name):
    """The mailboxes of header ``name`` as ``"Name <addr>"`` strings."""
    header = message.get(name)
    return [str(a) for a in header.addresses] if header is not None else []


class MessageFields:
    """A sent message read like a pyramid_mailer ``Message`` (mixed into
    :class:`pyramid_txmail.testing.SentMail`), for tests written against
    pyramid_mailer's ``DummyMailer``: ``mailer.outbox[0].recipients``, ``.body``...

    A message that was sent as a pyramid_mailer ``Message`` answers with that
    message's own fields (``self.source``, as they were at ``send``); any other
    answers with what its headers and parts say.  ``sender`` is the From the
    message went with (``mail.default_sender`` filled in, as pyramid_mailer's
    ``Mailer`` fills it in).
    """

    source = None

    def _field(self, attr, derive):
        if self.source is not None:
            return getattr(self.source, attr)
        return derive()

    @property
    def sender(self):
        return self._field("sender", lambda: str(self.message.get("From", "")))

    @property
    def recipients(self):
        return self._field("recipients", lambda: _header_items(self.message, "To"))

    @property
    def cc(self):
        return self._field("cc", lambda: _header_items(self.message, "Cc"))

    @property
    def bcc(self):
        def derive():  # the envelope recipients not in To or Cc
            shown = {email.utils.parseaddr(a)[1].lower()
                     for a in self.recipients + self.cc}
            return [a for a in self.toaddrs if a.lower() not in shown]
        return self._field("bcc", derive)

    @property
    def send_to(self):
        return set(self.recipients) | set(self.cc) | set(self.bcc)

    @property
    def body(self):
        return self._field("body", lambda: self.text)

    @property
    def extra_headers(self):
        return self._field("extra_headers", dict)

    def to_message(self):
        """pyramid_mailer's ``Message.to_message()``: an ``email`` message."""
        return self._field("to_message", lambda: lambda: self.message)()
