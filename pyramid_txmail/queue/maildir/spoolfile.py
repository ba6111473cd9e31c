"""The bytes of one queue file: its envelope record, and reading it in blocks.

A queue file we write is::

    From txmail-envelope-1 FROM TO [TO ...]      the envelope record (ours)
    X-Actually-From: FROM                        for repoze.sendmail's qp only
    X-Actually-To: TO,TO                         (left out when it cannot say it)
    the message, its headers first

The record is the envelope, for us: the first line of the file, where no
message header can stand, each address percent-encoded (UTF-8) so that no
space, comma, quote or ``=?`` in an address can split, join or decode it.
The ``From `` start makes it an mbox "From_" line to the ``email`` parser
that repoze.sendmail's queue processor reads the file with, so that qp drops
it instead of sending it (it would show every Bcc recipient).  The
``X-Actually-*`` lines are repoze.sendmail's format, written so that its qp
reads exactly our envelope: its reader RFC 2047-decodes both and splits the
recipients at commas, so a value it would change is written as encoded words
(which decode to it), and a recipient with a comma (in a quoted local part)
cannot be said at all -- the line is then left out and qp refuses the file
(no recipient) instead of sending to the pieces.  ``prepare`` removes any
``X-Actually-*`` line from the message itself, so both readers see only ours.

A file without the record was written by repoze.sendmail (or an older
pyramid_txmail): :func:`read_envelope` reads its two lines the legacy way,
but unambiguously -- exactly one of each, or the file is refused; a value
is RFC 2047-decoded only when it is nothing but encoded words (what
``Header`` writes; no valid address is), and recipients are split at commas
outside quotes.

Lines end at CR LF, CR or LF, as the ``email`` parser (and so the relay, see
:func:`wire.to_wire`) takes them.  Sending reads a file through
:mod:`pyramid_txmail.queue.maildir.spoolscan`, which finds the same envelope and header
block in one pass of bounded memory; :func:`read_envelope` holds the header
block (for ``txmail-queue show`` and the preview).
"""
from __future__ import annotations

import io
import re
import urllib.parse
from email.header import Header, decode_header

# A queue file that cannot be sent as it is (no envelope, unreadable) is the
# queue interface's PoisonMessage: the processor catches one class, whatever
# the backend.
from ..interface import PoisonMessage  # noqa: F401 (public here too)

#: The start of the first line of a file we wrote; the version follows.
RECORD = b"From txmail-envelope-"
_RECORD_V1 = RECORD + b"1 "
_TOKEN = re.compile(rb"(?:[A-Za-z0-9._~@+-]|%[0-9A-F]{2})+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~@+-]+")  # urllib.parse.quote's safe set, with "@+"
ENVELOPE_FIELDS = (b"x-actually-from", b"x-actually-to")
_ENCODED_WORDS = re.compile(r"(?:=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=\s*)+")


# -- writing ------------------------------------------------------------------

def _check(address, what):
    if not isinstance(address, str) or not address:
        raise ValueError(f"{what} must be a non-empty str, not {address!r}")
    if _CONTROL.search(address):
        raise ValueError(f"{what} {address!r} contains a control character or line break")


def _quote(address):
    if _UNQUOTED.fullmatch(address):  # what quote() gives back as it is (most addresses)
        return address
    try:
        return urllib.parse.quote(address, safe="@+", errors="strict")
    except UnicodeError:
        raise ValueError(f"envelope address {address!r} is not valid Unicode") from None


def _repoze_value(text):
    """``text`` as repoze.sendmail's reader gets it back after ``decode_header``."""
    if text.isascii() and text.isprintable() and "=?" not in text:
        return text
    return Header(text, "utf-8").encode(linesep="\n")


def envelope_lines(fromaddr, toaddrs):
    """The envelope record and repoze.sendmail's lines that start a queue file."""
    toaddrs = list(toaddrs)
    everyone = (fromaddr, *toaddrs)
    if toaddrs and all(type(a) is str and _UNQUOTED.fullmatch(a) for a in everyone):
        # the common case, as the lines below write it: nothing to check, quote,
        # encode for repoze.sendmail or leave out (no control, "=?" or comma)
        return (f"From txmail-envelope-1 {' '.join(everyone)}\nX-Actually-From: "
                f"{fromaddr}\nX-Actually-To: {','.join(toaddrs)}\n").encode("ascii")
    _check(fromaddr, "the envelope sender")
    if not toaddrs:
        raise ValueError("the envelope has no recipient")
    for address in toaddrs:
        _check(address, "envelope recipient")
    record = " ".join(_quote(a) for a in (fromaddr, *toaddrs))
    lines = [f"From txmail-envelope-1 {record}",
             f"X-Actually-From: {_repoze_value(fromaddr)}"]
    if not any("," in a for a in toaddrs):  # else repoze.sendmail would split one
        lines.append(f"X-Actually-To: {_repoze_value(','.join(toaddrs))}")
    return ("\n".join(lines) + "\n").encode("ascii")


# -- reading ------------------------------------------------------------------

def _lines(f):
    """Physical lines of a binary file, each with its ending (CR LF, CR or LF)."""
    for raw in iter(f.readline, b""):
        if raw.count(b"\r") == raw.endswith((b"\r\n", b"\r")):  # no CR but its end
            yield raw
            continue
        start = 0
        for match in re.finditer(rb"\r(?!\n)", raw):  # a bare CR ends a line too
            yield raw[start:match.end()]
            start = match.end()
        if start < len(raw):
            yield raw[start:]


def _header_fields(lines):
    """``(fields, blank)`` of a header block: each field is its lines; ``blank``
    is the empty line that ends the block (``b""`` at the end of the file)."""
    fields = []
    for line in lines:
        if line in (b"\n", b"\r\n", b"\r"):
            return fields, line
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields, b""


def header_fields(f):
    """The header fields (each a list of its lines) of the message in binary file ``f``."""
    return _header_fields(_lines(f))[0]


def field_name(field):
    """A header field's name, lower case (bytes)."""
    return field[0].partition(b":")[0].strip().lower()


def unfolded_value(field):
    """A header field's raw value, unfolded and stripped (bytes, never decoded)."""
    value = b"".join(field).partition(b":")[2]
    return re.sub(rb"\r\n|\r|\n", b"", value).strip()


def read_record(line):
    if not line.startswith(_RECORD_V1):
        raise PoisonMessage(f"unknown envelope record {line[:40]!r}: written by a newer "
                            "pyramid_txmail?")
    tokens = line[len(_RECORD_V1):].rstrip(b"\r\n").split(b" ")
    if len(tokens) < 2 or not all(_TOKEN.fullmatch(t) for t in tokens):
        raise PoisonMessage("malformed envelope record (the first line of the file)")
    try:
        addresses = [urllib.parse.unquote_to_bytes(t).decode("utf-8") for t in tokens]
    except UnicodeError:
        raise PoisonMessage("malformed envelope record: an address is not UTF-8") from None
    return addresses[0], tuple(addresses[1:])


def _legacy_text(raw, name):
    """A legacy ``X-Actually-*`` value: decoded only when it is all encoded words."""
    try:
        text = raw.decode("utf-8")
    except UnicodeError:
        raise PoisonMessage(f"undecodable envelope header {name}: not UTF-8") from None
    if not _ENCODED_WORDS.fullmatch(text):
        return text
    try:
        return "".join(chunk.decode(charset or "ascii") if isinstance(chunk, bytes)
                       else chunk for chunk, charset in decode_header(text))
    except (LookupError, UnicodeError) as exc:
        raise PoisonMessage(f"undecodable envelope header {name}: {exc}") from None


def split_addresses(text):
    """Recipients joined by commas, split at the commas outside quoted strings."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return tuple(p.strip() for p in parts if p.strip())


def legacy_envelope(found):
    """``(fromaddr, toaddrs)`` of a legacy file, from ``found``: each of the two
    ``X-Actually-*`` names (lower case) to the list of its fields' raw bytes."""
    if not found[b"x-actually-from"] or not found[b"x-actually-to"]:
        raise PoisonMessage("no envelope: the file has no X-Actually-From/X-Actually-To "
                            "header lines")
    repeated = [f"{len(m)} {n.decode().title()} lines" for n, m in found.items() if len(m) > 1]
    if repeated:
        raise PoisonMessage(
            f"ambiguous envelope: {' and '.join(repeated)} (the message carried its "
            "own); which ones its writer meant is unknown, so it is sent to none")
    fromaddr = _legacy_text(unfolded_value(found[b"x-actually-from"][:1]), "X-Actually-From")
    toaddrs = split_addresses(_legacy_text(unfolded_value(found[b"x-actually-to"][:1]),
                                           "X-Actually-To"))
    return fromaddr.strip(), toaddrs


def read_envelope(f):
    """Read a queue file's envelope and header block from the open binary file ``f``.

    Returns ``(fromaddr, toaddrs, head, rest)``: ``head`` is the message's
    header block without any ``X-Actually-*`` line (each kept line with its
    line ending), ``rest`` is the offset of the empty line that ends it (the
    message is ``head`` + the file from ``rest``).  Raises
    :class:`PoisonMessage` when the envelope is missing, malformed or
    ambiguous, or an address holds a control character.
    """
    consumed = [0]  # octets read up to the end of the header block

    def counted(lines):
        for line in lines:
            consumed[0] += len(line)
            yield line

    lines = counted(_lines(f))
    first = next(lines, b"")
    ours = first.startswith(RECORD)
    if ours:
        fromaddr, toaddrs = read_record(first)
    else:
        lines = _chain(first, lines)
    fields, blank = _header_fields(lines)
    if not ours:
        fromaddr, toaddrs = legacy_envelope(
            {name: [b"".join(f) for f in fields if field_name(f) == name]
             for name in ENVELOPE_FIELDS})
    kept = b"".join(b"".join(f) for f in fields if field_name(f) not in ENVELOPE_FIELDS)
    check_envelope(fromaddr, toaddrs)
    return fromaddr, toaddrs, kept, consumed[0] - len(blank)


def check_envelope(fromaddr, toaddrs):
    """Refuse (PoisonMessage) an envelope read back with no recipient, an empty
    recipient, or a control character or line break in an address."""
    if not toaddrs:
        raise PoisonMessage("no envelope: no recipient in it")
    # (an empty sender is the null reverse-path <>, which repoze.sendmail can queue)
    for address in (fromaddr, *toaddrs):
        if _CONTROL.search(address) or not address and address in toaddrs:
            raise PoisonMessage(f"bad envelope address {address!r} (empty, or a control "
                                "character or line break in it)")


def _chain(first, rest):
    if first:
        yield first
    yield from rest


def split_envelope(data):
    """Split a queue file's bytes into ``(fromaddr, toaddrs, message_bytes)``."""
    f = io.BytesIO(data)
    fromaddr, toaddrs, head, rest = read_envelope(f)
    return fromaddr, toaddrs, head + data[rest:]
