"""Turn what a view hands to ``send`` into a validated envelope and bytes.

Everything here runs inside ``send``, in the view, so a bad message fails
there with an error that names the header or address -- not at commit time
and never in the queue processor.
"""
from __future__ import annotations

import copy
import dataclasses
import email.policy
import email.utils
import itertools
import re
from email.message import Message

from . import fastbody, headblock, mailfields, wire
from .addresses import (LINE_BREAKS, HeaderInjection, InvalidAddress,  # noqa: F401 (public here)
                        MessageError, NoRecipients, NoSender, _validated, check_address)
from .envelope import decode_raw_octets, drop_envelope_headers, encoded_word_in_address
from .pyramid_mailer_message import coerce as coerce_pyramid_mailer_message

from .serialize import FOLD as _FOLD
from .serialize import long_word  # noqa: F401 (the builder imports it from here)
from .serialize import rewrite_addresses, serialize

RECIPIENT_HEADERS = ("To", "Cc", "Bcc")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # used with fullmatch: "$" would pass "X\n"
_RAW_BREAK = re.compile(f"[{re.escape(LINE_BREAKS)}]")
_CR_LF = re.compile(r"[\r\n]")
@dataclasses.dataclass(frozen=True)
class Prepared:
    """A message ready for the spool or the relay."""

    fromaddr: str
    toaddrs: tuple
    message_id: str
    data: bytes  # the message, LF line endings, no line over 998 octets (or a wire.Stream)
    #: a pyramid_mailer ``Message`` as it was sent (a copy), for the test outboxes
    #: whose items pyramid_mailer users read like one (``.recipients``, ``.body``)
    source: object = dataclasses.field(default=None, compare=False, repr=False)
    #: taken when the message is handed to the mailer, so that the test outboxes
    #: list messages in send order whenever each reached them (a ``send`` is
    #: recorded at the commit, a ``send_immediately`` at once)
    sequence: int = dataclasses.field(default_factory=lambda: next(_SEQUENCE),
                                      compare=False, repr=False)

    def __post_init__(self):
        # A Message-ID has no place to fold, so a long one is one long line: over
        # 998 octets it breaks the wire's line limit (a relay may refuse or cut it)
        # and the SQL outbox's message_id column, which PostgreSQL would refuse at
        # the commit -- after the view.  Refused here, in the view, on every path.
        octets = len(self.message_id.encode("utf-8", "surrogateescape"))
        if octets > MAX_MESSAGE_ID:
            raise MessageError(f"Message-ID: {octets} octets long; at "
                               f"most {MAX_MESSAGE_ID} octets fit on one header line "
                               "(RFC 5322's 998, less 'Message-ID: ')")


#: The longest Message-ID value that fits one 998-octet header line.
MAX_MESSAGE_ID = 998 - len("Message-ID: ")


_SEQUENCE = itertools.count()


def validate_address_header(header, value):
    """Parse and validate an address header value; returns envelope addresses."""
    if encoded_word_in_address(value):
        raise InvalidAddress(header, str(value), "an RFC 2047 encoded word inside the "
                             "address itself (only a display name may be encoded); the "
                             "email package would decode it into another address")
    text = str(value)
    if "\r" in _FOLD.sub(" ", text) or "\n" in _FOLD.sub(" ", text):
        raise HeaderInjection(header)
    pairs = email.utils.getaddresses([text])
    if not pairs or any(not addr for _, addr in pairs):
        raise InvalidAddress(header, text, "not a list of addresses")
    return [check_address(header, addr, text) for _, addr in pairs]


def check_headers(message):
    """Refuse header names or values that would start a new header line.

    A value kept as the caller's raw text (a legacy ``Message``, ``set_raw``)
    is written as it is, and the ``email`` package breaks it wherever
    ``str.splitlines`` would (U+0085, U+2028... too): none of those may be in
    it.  A parsed header's text is checked for CR and LF; how it is folded
    is checked by :func:`~pyramid_txmail.compose.serialize.check_folding`.
    """
    for part in message.walk():
        for name, value in part._headers:
            if not _HEADER_NAME.fullmatch(name):
                raise HeaderInjection.bad_name(name)
            raw = not hasattr(value, "fold")
            unfolded = _FOLD.sub(" ", str(value))
            if (_RAW_BREAK if raw else _CR_LF).search(unfolded):
                raise HeaderInjection.control(name, unfolded)


def _coerce(message, default_sender=None):
    """``(email Message copy, envelope sender or None, envelope recipients or None,
    the pyramid_mailer Message it came from or None)``."""
    if isinstance(message, Message):
        # prepare() changes top-level headers only (From, Bcc, Message-ID,
        # Date): a copy with its own header list leaves the caller's message
        # untouched, at a fraction of a deepcopy of every part (~70% of it).
        clone = copy.copy(message)
        clone._headers = list(message._headers)
        return clone, None, None, None
    if callable(getattr(message, "to_message", None)) and hasattr(message, "send_to"):
        return coerce_pyramid_mailer_message(message, default_sender)  # a pyramid_mailer Message
    raise TypeError(f"send() takes an email.message.EmailMessage (or Message, or a "
                    f"pyramid_mailer Message), not {type(message).__name__}")


def _addresses(message, names):
    """The addresses of the ``names`` headers, from each header's text as stored.

    A value parsed from bytes is stored raw: its addresses are taken from
    that text, as written and as it will be sent.  ``message.get_all`` would
    parse it with the email package, which RFC 2047-decodes an encoded word
    inside an address (``=?x?q?a?=.e@example.com`` reads as a.e@example.com,
    with no trace in its parse) -- the envelope would not be what the
    message says.  A value assigned as a header object was parsed when it
    was assigned; it is what the message holds (see
    :func:`~pyramid_txmail.compose.envelope.encoded_word_in_address`).  It is also
    linear: the email package's address-list parser slices the rest of the
    string at every token, quadratic in the header (one To and 10,000 Cc took
    6 s in ``get_all``).
    """
    found = []
    for name in names:
        for key, value in message._headers:
            if key.lower() == name.lower():
                found.extend(validate_address_header(name, value))
    return found


def _fast_message(message, default_sender, fromaddr, toaddrs, source):
    """The :mod:`~pyramid_txmail.compose.headblock` path for an email message (its
    top-level headers checked), or ``None`` for the stdlib path."""
    policy = headblock.writing_policy(message.policy)
    if policy is None:
        return None
    if message.is_multipart() and not fastbody.parts_fold_cleanly(message, policy):
        return None
    # The generator gives every multipart part without one a boundary (set_boundary),
    # stored under the part's policy: on a legacy message, a raw string that the
    # stdlib path's SMTPUTF8 policy writes as it is, unfolded, where the same
    # header made by that policy is folded.  So the attempt leaves no part changed.
    saved = fastbody.own_headers(message)
    try:
        body = fastbody.body_bytes(message, policy)
    except Exception:  # noqa: BLE001 -- any payload the generator refuses (bytes,
        body = None  # an unknown charset...): the stdlib path, after its header checks, says why
    head = body is not None and headblock.fast_head(message._headers, message.policy,
                                                    default_sender, fromaddr, toaddrs)
    fastbody.restore_headers(saved)
    if not head:
        return None
    try:
        data = fastbody.lf_wire(head.data + body)
    except ValueError:  # a field too large to re-encode: the stdlib path says so
        return None
    return Prepared(head.fromaddr, head.toaddrs, head.message_id, data, source)


def _fast_mail(mail, built, default_sender, fromaddr, toaddrs):
    """The :mod:`~pyramid_txmail.compose.headblock` path for a builder ``Mail`` whose
    MIME tree is ``built``, or ``None`` for the stdlib path."""
    pairs = mailfields.mail_pairs(mail.header_fields(built))
    if pairs is None:
        return None
    head = headblock.fast_head(pairs, email.policy.default, default_sender, fromaddr,
                               toaddrs if toaddrs is None else list(toaddrs))
    if head is None:
        return None
    try:
        data = fastbody.lf_wire(head.data)
    except ValueError:
        return None
    return Prepared(head.fromaddr, head.toaddrs, head.message_id, built.data(data))


def prepare(message, default_sender=None, fromaddr=None, toaddrs=None, *, fast=True):
    """Validate ``message`` and build its envelope and bytes.

    ``fromaddr`` / ``toaddrs`` override the envelope taken from the headers
    (repoze.sendmail's ``send(fromaddr, toaddrs, message)``).  ``fast``: try
    :mod:`~pyramid_txmail.compose.headblock` first, which writes a common
    message's header block itself and hands anything else back to the
    ``email`` package (false: always the ``email`` package; the property test
    compares the two).
    """
    built = None
    # A builder.Mail, duck-typed (the builder imports this module, never the other
    # way round): its header block is validated here, its body follows.
    split = getattr(message, "split_for_prepare", None)
    if callable(split) and not isinstance(message, Message):
        if fast:
            built = message.build()
            done = _fast_mail(message, built, default_sender, fromaddr, toaddrs)
            if done is not None:
                return done
            message = message.header_message(built)
        else:
            message, built = split()
    message, env_from, env_to, source = _coerce(message, default_sender)
    drop_envelope_headers(message)
    decode_raw_octets(message)
    fromaddr = fromaddr or env_from
    toaddrs = list(toaddrs) if toaddrs is not None else env_to
    check_headers(message)
    if fast and built is None:
        done = _fast_message(message, default_sender, fromaddr, toaddrs, source)
        if done is not None:
            return done

    if message["From"] is None:
        if not (default_sender or fromaddr):
            raise NoSender("the message has no From header and mail.default_sender "
                           "is not set")
        message["From"] = default_sender or fromaddr
    header_senders = _addresses(message, ("Sender",)) or _addresses(message, ("From",))
    reply_to = _addresses(message, ("Reply-To",))
    header_recipients = _addresses(message, RECIPIENT_HEADERS)

    fromaddr = check_address("envelope sender", fromaddr) if fromaddr else header_senders[0]
    if toaddrs is None:
        toaddrs = header_recipients
    else:
        toaddrs = [check_address("envelope recipient", a) for a in toaddrs]
    toaddrs = tuple(dict.fromkeys(toaddrs))
    if not toaddrs:
        raise NoRecipients("the message has no recipient: set To, Cc or Bcc")

    del message["Bcc"]
    if message["Message-ID"] is None:
        domain = fromaddr.rpartition("@")[2]
        message["Message-ID"] = email.utils.make_msgid(domain=domain)
    if message["Date"] is None:
        message["Date"] = email.utils.formatdate(localtime=True)

    # UTF-8 headers only when a mailbox itself is non-ASCII (RFC 6532); display
    # names and subjects are RFC 2047 encoded words otherwise.
    utf8 = wire.needs_smtputf8(fromaddr, [*toaddrs, *header_senders, *reply_to,
                                          *header_recipients])
    rewrite_addresses(message, utf8)
    data = serialize(message, utf8)
    if built is not None:  # bytes, or a wire.Stream when attachments are read from files
        data = built.data(data)
    return Prepared(fromaddr, toaddrs, str(message["Message-ID"]).strip(), data, source)
