"""Bytes on the wire: CRLF line endings, lines of at most 998 octets, 7/8-bit.

SMTP (RFC 5321 section 4.5.3.1.6) limits a line to 998 octets plus CRLF and
knows only CRLF as a line ending; a server without 8BITMIME takes only 7-bit
data.  :func:`to_wire` turns any stored message into such bytes while keeping
its meaning: most messages only need their line endings normalised, which is
done without parsing.  Only a message that still breaks a rule is parsed, and
then only the parts that break it are re-encoded (text as quoted-printable,
anything else as base64).

A bare CR or LF is taken as a line break everywhere, as the ``email``
package's parser does.  Dot-stuffing is left to ``smtplib``.
"""
from __future__ import annotations

import base64
import binascii
import re

__all__ = ["MAX_LINE", "MAX_REFOLD", "Stream", "data_section", "to_wire", "refold_field",
           "needs_smtputf8", "has_8bit", "message_id_of", "crlf_chunks"]

#: The longest line SMTP allows, in octets, not counting the CRLF.
MAX_LINE = 998

#: The largest header field re-encoded when a line of it is over MAX_LINE
#: octets: the email package's encoded-word folding takes time that grows
#: faster than the field (a 16 MiB line took 40 s), and RFC 5322 allows 998
#: octets a line -- no real message has a quarter-megabyte field on such lines.
MAX_REFOLD = 256 * 1024
_FOLD_AT = 78  # where an over-long header line is folded, when it can be
_CRLF = b"\r\n"
_WSP = b" \t"


class Stream:
    """A message too large to hold in memory, produced in chunks.

    ``factory()`` returns a new iterator of ``bytes`` each time it is called,
    yielding the whole message from its first header line (so the message
    can be written to the spool, or sent again after a reconnect).  Whoever
    makes a Stream promises what :func:`to_wire` would otherwise ensure:
    lines of at most :data:`MAX_LINE` octets, LF or CRLF endings, and a
    7-bit body unless ``eightbit`` is true.  ``size`` is the length in
    octets, when known.

    ``head`` is the header block when it is in memory (a message built by
    the mailer); a queue file's header block stays on disk, however large,
    and only what sending needs of it is given: ``message_id`` and
    ``head_8bit`` (raw non-ASCII in the header block: SMTPUTF8).  Given
    ``head``, both are found in it.
    """

    def __init__(self, factory, *, head=b"", size=None, eightbit=False,
                 message_id=None, head_8bit=None):
        self.factory = factory
        self.head = head
        self.size = size
        self.eightbit = eightbit
        self.message_id = message_id if message_id is not None else message_id_of(head)
        self.head_8bit = head_8bit if head_8bit is not None else not head.isascii()

    def __iter__(self):
        return iter(self.factory())

    def __repr__(self):
        return f"<Stream of {self.size if self.size is not None else '?'} octets>"


def _as_bytes(data):
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"expected the message as bytes, not {type(data).__name__}")


def _crlf(data):
    """Every CRLF, bare CR and bare LF becomes CRLF (as email's parser reads them)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", _CRLF)


def _fits(data):
    """True when no line of the CRLF-only ``data`` is longer than MAX_LINE."""
    return len(data) <= MAX_LINE or max(map(len, data.split(_CRLF))) <= MAX_LINE


def has_8bit(data) -> bool:
    """True when ``data`` holds a byte with the high bit set."""
    return not _as_bytes(data).isascii()


def _split_head(data):
    """``(header block, rest)`` of CRLF-only ``data``; the block ends with its CRLF."""
    if data.startswith(_CRLF):
        return b"", data
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data, b""
    return data[:end + 2], data[end + 2:]


def needs_smtputf8(fromaddr, toaddrs, data=None) -> bool:
    """True when an envelope address is non-ASCII or the header block of ``data``
    (bytes or a :class:`Stream`) holds raw non-ASCII bytes (RFC 6531/6532)."""
    addresses = [fromaddr or "", *toaddrs]
    if not all(address.isascii() for address in addresses):
        return True
    if data is None:
        return False
    if isinstance(data, Stream):
        return data.head_8bit
    data = _as_bytes(data)
    if data.isascii():
        return False
    return not _split_head(_crlf(data))[0].isascii()


def _fold_line(line):
    """Fold one over-long physical header line at its whitespace.

    A fold only inserts CRLF before existing whitespace, so unfolding (RFC 5322
    2.2.3) gives back exactly the original line.  Pieces are kept near 78
    octets; a run without whitespace longer than that stays whole.  Linear in
    the line: the pieces are found by index, never by slicing off the rest.
    """
    colon = line.find(b":")
    start = colon + 2 if colon >= 0 else 1  # never fold right after "Name:"
    last = len(line.rstrip(_WSP))  # a fold must leave something but whitespace after it
    pieces, pos, end = [], 0, len(line)
    while end - pos > _FOLD_AT:
        cut = None
        for i in range(min(pos + _FOLD_AT, end - 1), pos + start - 1, -1):
            if line[i] in _WSP and line[i - 1] not in _WSP:
                cut = i
                break
        if cut is None:
            for i in range(pos + max(_FOLD_AT, start), end):
                if line[i] in _WSP and line[i - 1] not in _WSP:
                    cut = i
                    break
        if cut is None or cut >= last:
            break  # nothing to fold at, or only trailing whitespace would move
        pieces.append(line[pos:cut])
        pos, start = cut, 1
    pieces.append(line[pos:])
    return _CRLF.join(pieces)


def _fold_head(head):
    lines = head.split(_CRLF)
    return _CRLF.join(_fold_line(line) if len(line) > MAX_LINE else line for line in lines)


def _wire_ok(data, eightbit):
    return _fits(data) and (eightbit or data.isascii())


def to_wire(data: bytes, eightbit: bool = True) -> bytes:
    """The message ``data`` as SMTP wants it: CRLF only, no line over 998 octets,
    and 7-bit clean unless ``eightbit`` (the server offers 8BITMIME).

    The result parses to the same message: same headers once unfolded, same
    decoded text (line breaks as CRLF) and same attachment bytes.
    """
    data = _crlf(_as_bytes(data))
    if _wire_ok(data, eightbit):
        return data
    head, body = _split_head(data)
    if not _fits(head):
        _check_refold_sizes(head)
        data = _fold_head(head) + body
        if _wire_ok(data, eightbit):
            return data
    return _reencode(data, eightbit)


def _check_refold_sizes(head):
    """Refuse (ValueError naming it) a field over MAX_REFOLD octets with a line over
    MAX_LINE, before the email package spends minutes on it."""
    start = longest = 0
    for match in re.finditer(rb"[^\r]*\r\n|[^\r]+$", head):  # CRLF-only lines
        line = match.group()
        if line[:1] not in _WSP:  # a new field
            _refusable(head, start, match.start(), longest)
            start, longest = match.start(), 0
        longest = max(longest, len(line.rstrip(b"\r\n")))
    _refusable(head, start, len(head), longest)


def _refusable(head, start, end, longest):
    if longest > MAX_LINE and end - start > MAX_REFOLD:
        raise ValueError(refold_refusal(head[start:start + 80].partition(b":")[0],
                                        end - start, longest))


def refold_refusal(name, size, longest):
    """Why a header field is not re-encoded (see :data:`MAX_REFOLD`)."""
    name = name.strip()[:80].decode("ascii", "replace")
    return (f"header field {name!r} is {size} octets with a line of {longest} (SMTP "
            f"allows 998 a line); fields over {MAX_REFOLD} octets are not re-encoded: "
            "a header that large is no real message")


def _policy(eightbit):
    # Headers that folding at whitespace could not shorten are refolded by
    # the email package (RFC 2047 encoded words) -- only those over 998.  Imported
    # here: the common message never needs it, and txmail-qp's start-up (a cron
    # pass over an empty spool) paid ~10 ms for it.
    import email.policy

    return email.policy.default.clone(
        linesep="\r\n", max_line_length=MAX_LINE, refold_source="long",
        cte_type="8bit" if eightbit else "7bit")


def refold_field(field):
    """One header field as stored (its lines, any line endings) with no line over
    :data:`MAX_LINE`: CRLF-ended, folded at whitespace where that is enough, else
    refolded by the email package (RFC 2047 encoded words), as :func:`to_wire`
    does it within a whole message.  Time and memory grow with the field only,
    so a queue file's header block can be sent from disk a field at a time.
    Raises ValueError for lines that are no header field.
    """
    data = _crlf(_as_bytes(field))
    if not data.endswith(_CRLF):
        data += _CRLF
    folded = _CRLF.join(_fold_line(line) if len(line) > MAX_LINE else line
                        for line in data[:-2].split(_CRLF)) + _CRLF
    if _fits(folded):
        return folded
    from email.parser import BytesParser

    policy = _policy(True)
    message = BytesParser(policy=policy).parsebytes(folded + _CRLF)
    if len(message) != 1 or message.get_payload():
        raise ValueError("not a header field (no name and colon before its value)")
    out = message.as_bytes(policy=policy)
    return out[:-2] if out.endswith(_CRLF + _CRLF) else out


def _reencode(data, eightbit):
    from email.parser import BytesParser

    policy = _policy(eightbit)
    message = BytesParser(policy=policy).parsebytes(data)
    changed = False
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() in ("multipart", "message"):
            continue
        if _part_needs_reencoding(part, eightbit):
            _reencode_part(part)
            changed = True
    if changed and "MIME-Version" not in message:
        message["MIME-Version"] = "1.0"  # a Content-Transfer-Encoding needs MIME
    return message.as_bytes(policy=policy)


def _part_needs_reencoding(part, eightbit):
    # The raw payload as parsed: 8-bit bytes are kept as lone surrogates, one
    # per byte, so its length in characters is its length in octets.
    # (get_payload() would decode it with the part's charset.)
    payload = part._payload
    if not isinstance(payload, str):
        return False
    if not eightbit and not payload.isascii():
        return True
    # (str.splitlines would also split at FF, VT, FS..., which SMTP does not)
    lines = payload.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return max(map(len, lines)) > MAX_LINE


def _reencode_part(part):
    raw = part.get_payload(decode=True) or b""
    if part.get_content_maintype() == "text":
        # Text line breaks are CRLF on the wire and in the canonical form;
        # quoted-printable keeps them as hard breaks.
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        encoded, cte = binascii.b2a_qp(raw, quotetabs=False, istext=True), "quoted-printable"
    else:
        encoded, cte = base64.encodebytes(raw), "base64"
    if "Content-Transfer-Encoding" in part:
        part.replace_header("Content-Transfer-Encoding", cte)
    else:
        part["Content-Transfer-Encoding"] = cte
    part.set_payload(encoded.decode("ascii"))


_HEADERS_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID_FIELD = re.compile(rb"^message-id[ \t]*:(.*(?:\r?\n[ \t].*)*)",
                               re.IGNORECASE | re.MULTILINE)
#: What follows "Message-ID" at the start of a header line (:func:`message_id_in`;
#: :data:`_MESSAGE_ID_FIELD`, the reference it must agree with, searches for both).
_MESSAGE_ID_REST = re.compile(rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)")


def message_id_of(data):
    """The Message-ID header of raw message bytes (or a :class:`Stream`), or ``None``.

    Only the header block is scanned: logging a message id must not cost a
    full MIME parse of a large body.
    """
    if isinstance(data, Stream):
        return data.message_id
    if isinstance(data, (bytes, bytearray)):
        return message_id_in(header_block(data))
    match = _HEADERS_END.search(data)  # a memoryview: the regular expressions take it
    found = _MESSAGE_ID_FIELD.search(data, 0, match.start() if match else len(data))
    return message_id_value(found.group(1)) if found else None


def header_block(data):
    """The header block of ``data``: up to its first empty line (what
    :data:`_HEADERS_END` matches), or all of it.

    Found with ``bytes.find``, three times faster than that regular expression
    (which has no literal to skip ahead to): this runs at every enqueue and for
    every message a processor sends.
    """
    end = len(data)
    for gap in (b"\n\r\n", b"\n\n"):  # CRLF first: usually the only one to look for
        found = data.find(gap, 0, end + len(gap))  # only a match that could start before end
        if found >= 0:
            end = min(end, found - 1 if found and data[found - 1] == 13 else found)  # CR
    return data[:end]


def message_id_in(head):
    """The Message-ID of a header block, as :data:`_MESSAGE_ID_FIELD` finds it: the
    first line that starts with "Message-ID" (any case) followed by a colon.

    A lower-cased copy is searched for the name (what the case-insensitive,
    multi-line regular expression did at every position), and only the
    candidates are matched.
    """
    lines = b"\n" + head.lower()  # each header line now starts after a LF
    start = lines.find(b"\nmessage-id")  # where the name starts in head
    while start >= 0:
        found = _MESSAGE_ID_REST.match(head, start + len(b"message-id"))
        if found:  # unfolded as wire.message_id_value does (its re.sub, without the regex)
            return b" ".join(found.group(1).split()).decode("ascii", errors="replace") or None
        start = lines.find(b"\nmessage-id", start + 1)
    return None


def message_id_value(raw):
    """The Message-ID (str, or ``None`` if empty) of a field's raw value, unfolded."""
    value = re.sub(rb"\s+", b" ", raw).strip()
    return value.decode("ascii", errors="replace") or None


_LINE_START_DOT = re.compile(rb"(?m)^\.")


def data_section(chunks, blocksize=1 << 16):
    """The SMTP DATA section for a message given as chunks of bytes.

    Yields blocks of about ``blocksize`` octets: every line ending made CRLF
    (as :func:`to_wire` does), every line that starts with "." doubled
    (RFC 5321 4.5.2), and the terminating ``CRLF . CRLF``.  A line split
    across chunks, or a CR and LF split across them, is handled, so the
    message never has to be in memory whole.
    """
    carry = b""
    out = []
    size = 0
    for chunk in chunks:
        buf = carry + bytes(chunk)
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r", 0, len(buf) - 1))
        if cut < 0:
            carry = buf
            continue
        carry = buf[cut + 1:]
        block = _LINE_START_DOT.sub(b"..", _crlf(buf[:cut + 1]))
        out.append(block)
        size += len(block)
        if size >= blocksize:
            yield b"".join(out)
            out, size = [], 0
    if carry:
        out.append(_LINE_START_DOT.sub(b"..", _crlf(carry)))
        if not carry.endswith((b"\r", b"\n")):
            out.append(_CRLF)
    out.append(b".\r\n")
    yield b"".join(out)


def crlf_chunks(chunks):
    """Re-yield byte chunks with every line ending as CRLF (a CR at the end
    of one chunk may pair with an LF at the start of the next)."""
    pending_cr = False
    for chunk in chunks:
        if not chunk:
            continue
        if pending_cr:
            chunk = b"\r" + chunk
        pending_cr = chunk.endswith(b"\r")
        if pending_cr:
            chunk = chunk[:-1]
        yield chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if pending_cr:
        yield b"\r\n"
