"""The bytes of one queue file: the envelope lines, and reading a big file in blocks.

A queue file is the message with the envelope prepended as repoze.sendmail's
``X-Actually-From:`` / ``X-Actually-To:`` header lines; :func:`envelope_lines`
writes them and :func:`split_envelope` takes them out again.  A file larger
than the processor's streaming threshold is scanned once by
:func:`stream_file` and then sent in :data:`BLOCK`-sized reads.
"""
from __future__ import annotations

import re
from email.header import Header, decode_header

from . import wire

#: Read size for streaming a queue file to the relay.
BLOCK = 1 << 16


def _encode_envelope_value(value):
    if value.isascii():
        return value
    return Header(value, "utf-8").encode()


def _decode_envelope_value(raw):
    parts = []
    for chunk, charset in decode_header(raw):
        if isinstance(chunk, bytes):
            chunk = chunk.decode(charset or "ascii", errors="replace")
        parts.append(chunk)
    return "".join(parts).strip()


def envelope_lines(fromaddr, toaddrs):
    """The header lines that carry the envelope in a spool file."""
    return (f"X-Actually-From: {_encode_envelope_value(fromaddr)}\n"
            f"X-Actually-To: {_encode_envelope_value(','.join(toaddrs))}\n"
            ).encode("ascii")


class PoisonMessage(ValueError):
    """A queue file that cannot be sent as it is: no envelope, unreadable."""


def split_envelope(data):
    """Split a spool file's bytes into ``(fromaddr, toaddrs, message_bytes)``.

    The ``X-Actually-*`` lines may stand anywhere in the header block
    (repoze.sendmail appends them, we prepend them); they are removed and
    every other byte of the message is kept as it was.
    """
    match = re.search(rb"\r?\n\r?\n", data)
    head_end = match.start() if match else len(data)
    lines = data[:head_end].splitlines(keepends=True)
    kept, fromaddr, toaddrs = [], None, None
    i = 0
    while i < len(lines):
        field = [lines[i]]
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            field.append(lines[i])
            i += 1
        name, _, value = b"".join(field).partition(b":")
        lname = name.strip().lower()
        if lname in (b"x-actually-from", b"x-actually-to"):
            text = _decode_envelope_value(re.sub(rb"\r?\n[ \t]", b" ", value)
                                          .decode("utf-8", errors="replace").strip())
            if lname == b"x-actually-from":
                fromaddr = text
            else:
                toaddrs = tuple(a.strip() for a in text.split(",") if a.strip())
        else:
            kept.extend(field)
    if fromaddr is None or not toaddrs:
        raise PoisonMessage("no envelope: the file has no X-Actually-From/X-Actually-To "
                            "header lines (or no recipient in them)")
    return fromaddr, toaddrs, b"".join(kept).rstrip(b"\r\n") + data[head_end:]


def stream_file(f):
    """Scan an open queue file once: ``(header block, body offset, 8-bit?, body size)``.

    ``None`` when it cannot be sent as it is (a line over SMTP's 998
    octets, or no end of the header block in the first block): the caller
    then reads it whole, so that :func:`wire.to_wire` can re-encode it.
    """
    first = f.read(BLOCK)
    match = re.search(rb"\r?\n\r?\n", first)
    if match is None:
        f.seek(0)
        return None
    head, offset = first[:match.start()], match.start()
    eightbit = not head.isascii()
    line = 0  # length of the line running into the next block
    f.seek(offset)
    for block in iter(lambda: f.read(BLOCK), b""):
        eightbit = eightbit or not block.isascii()
        lines = block.replace(b"\r", b"\n").split(b"\n")
        if len(lines) == 1:
            line += len(block)
        else:
            line = max(line + len(lines[0]), max(map(len, lines[1:-1]), default=0))
            if line > wire.MAX_LINE:
                break
            line = len(lines[-1])
        if line > wire.MAX_LINE:
            break
    else:
        return head, offset, eightbit, f.tell() - offset
    f.seek(0)
    return None
