"""Turn what a view hands to ``send`` into a validated envelope and bytes.

Everything here runs inside ``send``, in the view, so a bad message fails
there with an error that names the header or address -- not at commit time
and never in the queue processor.
"""
from __future__ import annotations

import copy
import dataclasses
import email.header
import email.headerregistry
import email.policy
import email.utils
import itertools
import re
from email.message import Message

from . import mimeparts, wire
from .addresses import (LINE_BREAKS, HeaderInjection, InvalidAddress,  # noqa: F401 (public here)
                        MessageError, NoRecipients, NoSender, _validated, check_address)
from .envelope import decode_raw_octets, drop_envelope_headers, encoded_word_in_address
from .pyramid_mailer_message import coerce as coerce_pyramid_mailer_message

RECIPIENT_HEADERS = ("To", "Cc", "Bcc")
_ADDRESS_HEADERS = {"from", "sender", "reply-to", "to", "cc"}
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # used with fullmatch: "$" would pass "X\n"
_FOLD = re.compile(r"\r?\n[ \t]")
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
    is checked by :func:`_check_folding`.
    """
    for part in message.walk():
        for name, value in part._headers:
            if not _HEADER_NAME.fullmatch(name):
                raise HeaderInjection.bad_name(name)
            raw = not hasattr(value, "fold")
            unfolded = _FOLD.sub(" ", str(value))
            if any(c in (LINE_BREAKS if raw else "\r\n") for c in unfolded):
                raise HeaderInjection.control(name, unfolded)


def _check_folding(message, policy):
    """Every header, as ``policy`` writes it, is one header line and its
    continuations: a value can never add a header."""
    for part in message.walk():
        for name, value in part._headers:
            try:
                lines = policy.fold(name, value).split(policy.linesep)
            except ValueError as exc:  # e.g. an encoded word that decodes to CR LF
                raise HeaderInjection(name, f"header value cannot be written ({exc})") \
                    from None
            if any(line[:1] not in (" ", "\t") for line in lines[1:] if line):
                raise HeaderInjection.control(name, str(value))


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


def long_word(text):
    """True when ``text`` has a run without whitespace that no fold can shorten
    to a header line (encoded words can)."""
    return any(len(word) > 76 for word in text.split())


def _decoded_words(text):
    """``text`` with its RFC 2047 encoded words decoded (as it is when it has none,
    or one in an unknown charset)."""
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (LookupError, UnicodeError, ValueError):
        return text


def _mailbox(display, addr, utf8):
    """One mailbox of a rewritten address header, in lines of at most 78 columns."""
    if not display:
        return addr
    plain = email.utils.formataddr((display, addr)) if display.isascii() and addr.isascii() \
        else f'"{email.utils.quote(display)}" <{addr}>'
    if len(plain) <= 76 and "=?" not in display and (utf8 or display.isascii()) \
            and not any(c in LINE_BREAKS or ord(c) < 32 for c in display):
        return plain
    words = mimeparts.encoded_words(display)
    last = words.rpartition("\n")[2]  # the address on its own line if need be
    return f"{words}{' ' if len(last) + len(addr) + 4 <= 78 else chr(10) + ' '}<{addr}>"


def _rewrite_addresses(message, utf8):
    """Address headers the ``email`` package would write wrongly, written here.

    * Without SMTPUTF8 the headers must be ASCII, and the ``email`` package
      would encode ``jorg@bücher.example`` as an encoded word inside the
      address (or a legacy header whole as one), which RFC 2047 forbids and
      no reader decodes: such a domain goes as its A-label (``xn--...``).
    * A display name with a run too long to fold would stay one line over
      SMTP's 998 octets: it goes as encoded words (which split anywhere).
    * A line the ``email`` package would fold: its folder can drop the quotes
      of a long quoted name (':word word...' loses its ':').
    * A non-ASCII display name: with SMTPUTF8 the ``email`` package writes it
      unquoted, so "Jö, x" <a@example.com> would read as two mailboxes;
      without, its folder can encode the comma *between* two mailboxes as
      ``=?utf-8?q?=2C?=``.  Such names are quoted (SMTPUTF8) or encoded here.

    Rewritten values are stored folded (no line over 78), as raw text the
    policy writes as it is.
    """
    for i, (name, value) in enumerate(message._headers):
        text = str(value)
        long_line = len(name) + 2 + len(text) > 78  # the email package would fold it
        if name.lower() not in _ADDRESS_HEADERS or (
                text.isascii() and not long_word(text) and "=?" not in text
                and not long_line):
            continue
        pairs = email.utils.getaddresses([text])
        if not hasattr(value, "fold"):  # a legacy raw value: its names may be encoded words
            pairs = [(_decoded_words(display), addr) for display, addr in pairs]
        idn = not utf8 and not all(addr.rpartition("@")[2].isascii() for _, addr in pairs)
        if not idn and not long_line and not any(long_word(n) or not n.isascii()
                                                 for n, _ in pairs) \
                and not (utf8 and not hasattr(value, "fold") and not text.isascii()):
            continue
        items = [_mailbox(display, (_validated(addr)[0] or addr) if idn else addr, utf8)
                 for display, addr in pairs]
        # From a fresh line: "Reply-To: " and a 75-character encoded word would
        # pass 78, and the policy would then refold (and change) the name.
        message._headers[i] = (name, "\n " + ",\n ".join(items))


def _encode_long_raw(message, every=False):
    """An unstructured value with a line over 78 columns and non-ASCII text, as
    our encoded words: a legacy raw value (UTF-8 over 998 octets without a space
    could not be folded otherwise), or a parsed one (the email package's folder
    adds a space where encoded and plain words meet).  ``every``: each one with
    non-ASCII text, however short -- when the message is not SMTPUTF8 the
    email package would encode it, and its folder drops the whitespace between
    two encoded words ("a\xa0  b" arrived as "a\xa0b")."""
    for i, (name, value) in enumerate(message._headers):
        text = str(value)
        if name.lower() in _ADDRESS_HEADERS or text.isascii() or \
                (not every and max(map(len, text.splitlines() or [""])) + len(name) + 2
                 <= 78) or \
                not issubclass(email.policy.default.header_factory[name],
                               email.headerregistry.UnstructuredHeader):
            continue
        # the first word beside the name ("Subject: =?..."), not on a line of its
        # own: a value starting with a fold reads back with a leading space
        words = mimeparts.encoded_words(_decoded_words(_FOLD.sub(" ", text)),
                                        first=78 - len(name) - 2)
        fits = len(name) + 2 + len(words.split("\n", 1)[0]) <= 78
        message._headers[i] = (name, words if fits else "\n " + words)


def _serialize(message, utf8):
    policy = message.policy
    if isinstance(policy, email.policy.EmailPolicy):
        # raw values (ours, set_raw, parsed) are written as they are: its refolding
        # can encode the comma between two mailboxes; wire.to_wire keeps 998
        _encode_long_raw(message, every=not utf8)
        policy = policy.clone(linesep="\n", utf8=utf8, refold_source="none")
    elif utf8:  # compat32 cannot write UTF-8 headers: it would encode a mailbox whole
        # (never refolded: the email package's folder writes a decoded display name
        # unquoted; long raw values are encoded words already, see _encode_long_raw)
        _encode_long_raw(message)
        policy = email.policy.default.clone(linesep="\n", utf8=True, refold_source="none")
    else:
        policy = policy.clone(linesep="\n")
    try:
        _check_folding(message, policy)
        data = message.as_bytes(policy=policy)
    except (UnicodeError, LookupError) as exc:
        raise MessageError(f"the message cannot be serialized ({exc}); build it as an "
                           "email.message.EmailMessage to use non-ASCII text") from None
    try:
        return wire.to_wire(data).replace(b"\r\n", b"\n")
    except ValueError as exc:  # a header field too large to re-encode (wire.MAX_REFOLD)
        raise MessageError(str(exc)) from None


def prepare(message, default_sender=None, fromaddr=None, toaddrs=None):
    """Validate ``message`` and build its envelope and bytes.

    ``fromaddr`` / ``toaddrs`` override the envelope taken from the headers
    (repoze.sendmail's ``send(fromaddr, toaddrs, message)``).
    """
    built = None
    # A builder.Mail, duck-typed (the builder imports this module, never the other
    # way round): its header block is validated here, its body follows.
    split = getattr(message, "split_for_prepare", None)
    if callable(split) and not isinstance(message, Message):
        message, built = split()
    message, env_from, env_to, source = _coerce(message, default_sender)
    drop_envelope_headers(message)
    decode_raw_octets(message)
    fromaddr = fromaddr or env_from
    toaddrs = list(toaddrs) if toaddrs is not None else env_to
    check_headers(message)

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
    _rewrite_addresses(message, utf8)
    data = _serialize(message, utf8)
    if built is not None:  # bytes, or a wire.Stream when attachments are read from files
        data = built.data(data)
    return Prepared(fromaddr, toaddrs, str(message["Message-ID"]).strip(), data, source)
