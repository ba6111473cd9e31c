"""What may become a message's envelope, and what must not.

The envelope (MAIL FROM, RCPT TO) is what the application passed to
``send``, or what its address headers say when it passed none -- as they
are written.  Three things in a message could change it on the way, and
:func:`~pyramid_txmail.compose.message.prepare` calls each of these first:

- the message's own ``X-Actually-From:`` / ``X-Actually-To:`` lines (a
  forwarded inbound message): the queue file's envelope format, removed;
- an RFC 2047 encoded word inside an address, which the ``email`` package
  decodes when a header is assigned: refused;
- raw 8-bit octets of a message parsed from bytes, kept as surrogates that
  make the ``email`` package refold the header its own way: read as UTF-8.
"""
from __future__ import annotations

import email.policy

from ..util.printable import get_logger

log = get_logger("pyramid_txmail.envelope")

#: The queue file's envelope lines (repoze.sendmail's format): never part of a message.
ENVELOPE_HEADERS = ("X-Actually-From", "X-Actually-To")


def drop_envelope_headers(message):
    """Remove the message's own ``X-Actually-From:`` / ``X-Actually-To:`` lines.

    They are the queue file's envelope in repoze.sendmail's format, so a
    message (e.g. a forwarded inbound one) must not carry them into the
    spool, where a reader might take them for the envelope, nor to the relay.
    Removed rather than refused: the message is still worth sending, and
    its envelope is what ``send`` was given.
    """
    for name in ENVELOPE_HEADERS:
        if message[name] is not None:
            log.warning("removed the message's own %s header: the envelope is what "
                        "send() was given", name)
            del message[name]


def encoded_word_in_address(value):
    """True when the ``email`` package decoded an RFC 2047 encoded word inside an
    address (not its display name): ``=?utf-8?q?ceo?=@example.com`` reads as
    ceo@example.com there, so the envelope would not be what was written.

    Only for a header object (assigned in code): its parse tree is all that is
    left of the text.  The email package does not always leave the encoded
    word in it (an obs-local-part is re-parsed from decoded text), so a value
    parsed from bytes is never read through it: see ``message._addresses``."""
    def walk(token, in_address):
        kind = getattr(token, "token_type", None)
        if in_address and kind == "encoded-word":
            return True
        in_address = in_address or kind == "addr-spec"
        return isinstance(token, list) and any(walk(t, in_address) for t in token)

    tree = getattr(value, "_parse_tree", None)
    return tree is not None and walk(tree, False)


def decode_raw_octets(message):
    """Raw header values of a message parsed from bytes keep their 8-bit octets
    as surrogates, which nothing can encode and which make the email package
    refold the header its own way: they are read as UTF-8 here (U+FFFD where
    they are not), as the email package reads such a header.  (A legacy
    ``compat32`` message writes them back as the octets they were.)"""
    if not isinstance(message.policy, email.policy.EmailPolicy):
        return
    for i, (name, value) in enumerate(message._headers):
        if isinstance(value, str) and not hasattr(value, "fold"):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                message._headers[i] = (name, value.encode("utf-8", "surrogateescape")
                                       .decode("utf-8", "replace"))
