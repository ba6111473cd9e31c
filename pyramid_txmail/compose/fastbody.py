"""The enqueue fast path's body: what follows the header block that
:mod:`~pyramid_txmail.compose.headblock` writes, as the ``email`` package's
generator would write it, without paying for the generator where a message
is one text part.

Why a module of its own: the header block and the body are checked by
different rules (the body's bytes are the generator's; only the top part's
headers are written here), and each side stays small enough to read.
"""
from __future__ import annotations

import io
import re
from email.generator import BytesGenerator

from . import wire

__all__ = ["body_bytes", "lf_wire", "own_headers", "parts_fold_cleanly", "restore_headers"]


class _BodyGenerator(BytesGenerator):
    """The stdlib generator, writing every part's headers but the top one's."""

    top = None

    def _write_headers(self, msg):
        if msg is not self.top:
            super()._write_headers(msg)


_NEWLINES = re.compile(r"\r\n|\r|\n")  # the generator's NLCRE


def lf_wire(data):
    """``wire.to_wire(data)`` with LF line endings, as ``prepare`` stores it: ``data``
    itself when it has no CR and no line over 998 octets (what the paths here
    write), which saves converting it to CRLF and back."""
    if b"\r" not in data and (len(data) <= wire.MAX_LINE or max(
            map(len, data.split(b"\n"))) <= wire.MAX_LINE):
        return data
    return wire.to_wire(data).replace(b"\r\n", b"\n")


def body_bytes(message, policy):
    """``message`` as ``message.as_bytes(policy=policy)`` writes it, without its own
    header block and the blank line after it; ``None`` when the generator would
    rewrite the top part's headers (8-bit text it re-encodes for 7-bit).

    A single part that is neither ``multipart/*`` nor ``message/*`` is text to
    the generator (``_handle_text``): its payload with every line ending made
    the policy's, written here as the generator writes it.  Anything else is
    written by the generator itself, every part's headers but the top one's.
    """
    payload = message._payload
    if isinstance(payload, str) and policy.cte_type == "7bit" and not _encodes(payload):
        return None
    if payload is None:
        return b""
    if isinstance(payload, str) and message.get_content_maintype() not in ("multipart",
                                                                           "message"):
        if "\r" in payload:  # else every line already ends as the generator ends it
            payload = _NEWLINES.sub("\n", payload)
        return payload.encode("ascii", "surrogateescape")
    out = io.BytesIO()
    generator = _BodyGenerator(out, mangle_from_=False, policy=policy)
    generator.top = message
    generator.flatten(message, unixfrom=False)
    return out.getvalue()


def own_headers(message):
    """Give ``message`` and each of its parts a copy of its header list, for the
    generator to change (it adds boundaries); returns the originals for
    :func:`restore_headers`."""
    parts = message.walk() if message.is_multipart() else (message,)
    saved = [(part, part._headers) for part in parts]
    for part, headers in saved:
        part._headers = list(headers)
    return saved


def restore_headers(saved):
    """Put back the header lists :func:`own_headers` saved."""
    for part, headers in saved:
        part._headers = headers


def _encodes(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: octets of a message parsed from bytes
        return False
    return True


def parts_fold_cleanly(message, policy):
    """``check_folding`` for the parts below the top one (whose headers the
    generator wrote): False where the stdlib path would refuse a header."""
    for part in message.walk():
        if part is message:
            continue
        for name, value in part._headers:
            try:
                lines = policy.fold(name, value).split("\n")
            except ValueError:
                return False
            if any(line[:1] not in (" ", "\t") for line in lines[1:] if line):
                return False
    return True
