"""The stdlib path of ``prepare()``: the ``email`` package writes the message, after
the address and unstructured headers it would write wrongly are rewritten here.

Every message that :mod:`~pyramid_txmail.compose.headblock` cannot write itself
(non-ASCII text, long or folded address lines, SMTPUTF8, odd policies or header
objects) is written here; it is also the reference that the fast path's
property test (tests/test_fastpath_property.py) compares against, byte for byte.
"""
from __future__ import annotations

import email.header
import email.headerregistry
import email.policy
import email.utils
import re

from . import mimeparts, wire
from .addresses import LINE_BREAKS, HeaderInjection, MessageError, _validated

#: The headers whose mailboxes may be rewritten (Bcc is removed before writing).
ADDRESS_HEADERS = {"from", "sender", "reply-to", "to", "cc"}
#: A folded line break inside a header value (unfolds to one space).
FOLD = re.compile(r"\r?\n[ \t]")


def check_folding(message, policy):
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


def rewrite_addresses(message, utf8):
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
        if name.lower() not in ADDRESS_HEADERS or (
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
        if name.lower() in ADDRESS_HEADERS or text.isascii() or \
                (not every and max(map(len, text.splitlines() or [""])) + len(name) + 2
                 <= 78) or \
                not issubclass(email.policy.default.header_factory[name],
                               email.headerregistry.UnstructuredHeader):
            continue
        # the first word beside the name ("Subject: =?..."), not on a line of its
        # own: a value starting with a fold reads back with a leading space
        words = mimeparts.encoded_words(_decoded_words(FOLD.sub(" ", text)),
                                        first=78 - len(name) - 2)
        fits = len(name) + 2 + len(words.split("\n", 1)[0]) <= 78
        message._headers[i] = (name, words if fits else "\n " + words)


def serialize(message, utf8):
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
        check_folding(message, policy)
        data = message.as_bytes(policy=policy)
    except (UnicodeError, LookupError) as exc:
        raise MessageError(f"the message cannot be serialized ({exc}); build it as an "
                           "email.message.EmailMessage to use non-ASCII text") from None
    try:
        return wire.to_wire(data).replace(b"\r\n", b"\n")
    except ValueError as exc:  # a header field too large to re-encode (wire.MAX_REFOLD)
        raise MessageError(str(exc)) from None
