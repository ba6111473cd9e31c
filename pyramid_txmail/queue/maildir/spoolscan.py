"""Where a queue file's message lies, found in one pass of bounded memory.

A queue file is sent without holding its message in memory -- its header
block included: a hand-made file, or one from repoze.sendmail's or
pyramid_mailer's queue, may have a header block of many megabytes (thousands
of short lines, one folded field, one enormous line).  :func:`scan` reads the
file once, each line in pieces of at most :data:`PIECE` octets, and keeps
only what sending needs:

- the envelope: our record (the first line), or the legacy ``X-Actually-*``
  lines, read as :mod:`pyramid_txmail.queue.maildir.spoolfile` reads them;
- the Message-ID, and whether the header block is 7-bit (SMTPUTF8);
- the message as ranges of the file: the header block less the envelope
  lines, then the body.  :meth:`Layout.chunks` sends them from the file.

A header field with a line over SMTP's 998 octets is refolded on its own as
it is sent (:func:`wire.refold_field`): at whitespace, else as RFC 2047
encoded words by the email package, whose time grows faster than the field
(a 16 MiB line took 40 s and 286 MB; 50 MiB, minutes).  Such a field is
refolded only up to :data:`wire.MAX_REFOLD` octets; a larger one makes the file a
:class:`PoisonMessage`, dead-lettered with the field's name and size.  RFC
5322 allows 998 octets a line; no real message has a quarter-megabyte field
on lines that long (a header block of many short lines streams whatever its size).
"""
from __future__ import annotations

import dataclasses
import re

from ...compose import wire
from .spoolfile import (ENVELOPE_FIELDS, RECORD, PoisonMessage, read_record, check_envelope,
                        legacy_envelope)

#: The most of one line read at a time (a longer line comes in pieces).
PIECE = 1 << 16

#: Read size for the body (and for sending any range of the file).
BLOCK = 1 << 16

#: The most of a Message-ID field kept (for logs and state files).
MAX_MESSAGE_ID = 4096

_BLANK = (b"\n", b"\r\n", b"\r")
_LINE_ENDS = (b"\n", b"\r")
_BARE_CR = re.compile(rb"\r(?!\n)")


def _pieces(f):
    """``(piece, starts_line)`` of the file's physical lines (ending at CR LF,
    CR or LF, as the email parser takes them), no piece over PIECE (+1) octets."""
    starts = True
    for raw in iter(lambda: f.readline(PIECE), b""):
        if raw.endswith(b"\r") and len(raw) == PIECE:  # keep a CR LF together
            following = f.read(1)
            if following == b"\n":
                raw += following
            elif following:
                f.seek(-1, 1)
        if raw.count(b"\r") == raw.endswith((b"\r\n", b"\r")):  # no bare CR inside
            parts = (raw,)
        else:
            cuts = [m.end() for m in _BARE_CR.finditer(raw)]
            parts = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)]) if a < b]
        for part in parts:
            yield part, starts
            starts = part.endswith((b"\n", b"\r"))


class _Field:
    """One header field while it is read: where it starts, its longest line,
    and its pieces when its value is wanted (the envelope lines, the Message-ID)."""

    __slots__ = ("name", "key", "start", "longest", "line", "value", "held", "nonascii")

    def __init__(self, name, start, value):
        self.name = name  # as written (for messages)
        self.key = name.lower()
        self.start = start
        self.longest = self.line = self.held = 0  # line: octets of the line being read
        self.value = value
        self.nonascii = False


@dataclasses.dataclass
class Layout:
    """Where the message of a queue file lies; what sending it needs."""

    fromaddr: str
    toaddrs: tuple
    #: ``(start, end, refold)`` ranges of the header block, envelope lines left out
    segments: list
    rest: int  # offset of the empty line that ends the header block (the body follows)
    size: int  # octets of the message as sent (header fields refolded)
    message_id: str | None
    head_8bit: bool
    eightbit: bool
    #: a body line is over 998 octets: the message must be re-encoded whole
    long_body_line: bool

    def chunks(self, f):
        """The message from the open file ``f``: header block, then the body."""
        for start, end, refold in self.segments:
            f.seek(start)
            if refold:
                yield wire.refold_field(f.read(end - start))
            else:
                yield from _range(f, end - start)
        f.seek(self.rest)
        yield from iter(lambda: f.read(BLOCK), b"")


    def head(self, f, limit):
        """The header block as sent (envelope lines left out), at most ``limit``
        octets of it: cut after its last whole line within that (for display)."""
        data = b""
        for start, end, refold in self.segments:
            if len(data) >= limit:
                break
            f.seek(start)
            data += wire.refold_field(f.read(end - start)) if refold else \
                f.read(min(end - start, limit - len(data)))
        if len(data) >= limit:
            data = data[:limit]
            data = data[:max(data.rfind(b"\n"), data.rfind(b"\r")) + 1]
        return data


def _range(f, length):
    while length > 0:
        block = f.read(min(BLOCK, length))
        if not block:
            return
        length -= len(block)
        yield block


class _HeaderScan:
    """The header block, field by field; only ranges and a few values are kept."""

    def __init__(self, f, start):
        self.f = f
        self.segments = []
        self.kept_from = start  # where the run of kept octets began
        self.size = 0
        self.head_8bit = False
        self.message_id = None
        self.envelope = {name: [] for name in ENVELOPE_FIELDS}

    def field_start(self, piece, pos):
        name = piece.partition(b":")[0].strip()
        key = name.lower()
        wanted = key in ENVELOPE_FIELDS or (key == b"message-id" and self.message_id is None)
        return _Field(name, pos, [] if wanted else None)

    @staticmethod
    def piece(field, piece):
        length = len(piece)
        if piece[-1:] in _LINE_ENDS:
            line = field.line + length - (2 if piece[-2:] == b"\r\n" else 1)
            if line > field.longest:
                field.longest = line
            field.line = 0
        else:
            field.line += length
        if not field.nonascii and not piece.isascii():
            field.nonascii = True
        if field.value is not None and (field.key != b"message-id"
                                        or field.held < MAX_MESSAGE_ID):
            field.value.append(piece)
            field.held += length

    def field_end(self, field, end):
        field.longest = max(field.longest, field.line)
        if field.value is None and field.longest <= wire.MAX_LINE:  # the usual field
            self.size += end - field.start
            self.head_8bit = self.head_8bit or field.nonascii
            return
        if field.key in ENVELOPE_FIELDS:
            self.envelope[field.key].append(b"".join(field.value))
            self._cut(field.start, end)
            return
        if field.value is not None:  # the (first) Message-ID
            self.message_id = wire.message_id_value(b"".join(field.value).partition(b":")[2])
        if field.longest <= wire.MAX_LINE:
            self.size += end - field.start
            self.head_8bit = self.head_8bit or field.nonascii
            return
        self._refold(field, end)

    def _refold(self, field, end):
        name = field.name[:80].decode("ascii", "replace")
        length = end - field.start
        if length > wire.MAX_REFOLD:
            raise PoisonMessage(wire.refold_refusal(field.name, length, field.longest))
        here = self.f.tell()
        self.f.seek(field.start)
        try:
            folded = wire.refold_field(self.f.read(length))
        except Exception as exc:  # what the email package cannot refold
            raise PoisonMessage(f"header field {name!r} has a line of {field.longest} "
                                f"octets (SMTP allows 998) that cannot be refolded: "
                                f"{exc}") from None
        finally:
            self.f.seek(here)
        self._cut(field.start, end, refold=True)
        self.size += len(folded)
        self.head_8bit = self.head_8bit or not folded.isascii()

    def _cut(self, start, end, refold=False):
        """Leave ``start:end`` out of the kept run (refolded, or not sent at all)."""
        if start > self.kept_from:
            self.segments.append((self.kept_from, start, False))
        if refold:
            self.segments.append((start, end, True))
        self.kept_from = end

    def finish(self, rest):
        if rest > self.kept_from:
            self.segments.append((self.kept_from, rest, False))


def scan(f, body=True):
    """The :class:`Layout` of the queue file open (binary, seekable) as ``f``.

    Raises :class:`PoisonMessage` as :func:`spoolfile.read_envelope` does,
    and for a header field too large to refold (see the module docstring).
    ``body=False`` leaves the body unread: its size is then the file's, and
    ``eightbit`` and ``long_body_line`` are unknown (False) -- for a caller
    that reads the message whole and re-encodes it with :func:`wire.to_wire`.
    """
    pieces = _pieces(f)
    pos = 0
    ours = False
    first = next(pieces, None)
    if first is not None and first[0].startswith(RECORD):
        line = [first[0]]  # the record is the envelope: read whole, however long
        while not line[-1].endswith((b"\n", b"\r")):
            more = next(pieces, None)
            if more is None:
                break
            line.append(more[0])
        record = b"".join(line)
        pos = len(record)
        fromaddr, toaddrs = read_record(record)
        ours, first = True, None
    head = _HeaderScan(f, pos)
    field = None
    rest = None
    for piece, starts in _chain(first, pieces):
        if starts and piece in _BLANK:
            rest = pos
            break
        if starts and not (piece[:1] in (b" ", b"\t") and field is not None):
            if field is not None:
                head.field_end(field, pos)
            field = head.field_start(piece, pos)
        head.piece(field, piece)
        pos += len(piece)
    if rest is None:
        rest = pos
    if field is not None:
        head.field_end(field, rest)
    head.finish(rest)
    if not ours:
        fromaddr, toaddrs = legacy_envelope(head.envelope)
    check_envelope(fromaddr, toaddrs)
    if body:
        f.seek(rest)
        eightbit, long_body_line, body_size = _scan_body(f)
    else:
        eightbit = long_body_line = False
        body_size = f.seek(0, 2) - rest
    return Layout(fromaddr, toaddrs, head.segments, rest, head.size + body_size,
                  head.message_id, head.head_8bit, head.head_8bit or eightbit, long_body_line)


def _chain(first, rest):
    if first is not None:
        yield first
    yield from rest


def _scan_body(f):
    """``(8-bit, a line over 998 octets, size)`` of the rest of the file, read in blocks."""
    eightbit = longest = False
    line = size = 0
    for block in iter(lambda: f.read(BLOCK), b""):
        size += len(block)
        eightbit = eightbit or not block.isascii()
        if not longest:
            block_longest, line = _long_line(block, line)
            longest = max(block_longest, line) > wire.MAX_LINE
    return eightbit, longest, size


def _long_line(data, carry):
    """``(longest complete line, length of the unfinished last line)`` of a block."""
    lines = data.replace(b"\r", b"\n").split(b"\n")
    if len(lines) == 1:
        return carry + len(data), carry + len(data)
    longest = max(carry + len(lines[0]), max(map(len, lines[1:-1]), default=0))
    return longest, len(lines[-1])
