"""A MIME part of text for the builder: ``text/plain`` or ``text/html`` in UTF-8.

Kept apart from :mod:`~pyramid_txmail.compose.mimeparts` because it is made
without most of the ``email`` package (issue 14, the enqueue fast path):
``set_content`` parsed four headers through the header registry for every
part, which was most of the cost of building a Mail.  The text is encoded by
the function ``set_content`` itself uses, so the body and its transfer
encoding are the ``email`` package's; only the headers are made once.
"""
from __future__ import annotations

import email.contentmanager
import functools
import re

from .mimeparts import PART_POLICY, Part, header_part

__all__ = ["text_part", "text_part_stdlib"]


def text_part(text, subtype):
    """A ``text/<subtype>; charset=utf-8`` part (7bit, quoted-printable or base64).

    The ``email`` package's ``set_content`` chooses the encoding and encodes
    the text with ``contentmanager._encode_text``; the part's headers then
    depend only on the subtype and that choice.  So the text is encoded by
    the same function here, and the headers are made once per (subtype,
    encoding): ``set_content`` parsed four headers through the header registry
    for every part, most of the cost of building a Mail.
    """
    if _encode_text is None:  # a Python without it: the email package does it all
        return text_part_stdlib(text, subtype)
    cte, payload = _encode_text(text, "utf-8", None, PART_POLICY)
    headers = header_part()
    headers._headers = list(_text_headers(subtype, cte))
    if "\r" in payload:  # else every line already ends as the generator ends it
        payload = _NEWLINES.sub("\n", payload)
    return Part(headers, [payload.encode("ascii")])


_encode_text = getattr(email.contentmanager, "_encode_text", None)
_NEWLINES = re.compile(r"\r\n|\r|\n")  # how the generator ends each line of a body


@functools.lru_cache(maxsize=None)
def _text_headers(subtype, cte):
    """The headers ``set_content`` gives a text part of ``subtype`` in ``cte``: the same
    for every text, made once by it (header objects are immutable)."""
    return tuple(text_part_stdlib("x", subtype, cte).headers._headers)


def text_part_stdlib(text, subtype, cte=None):
    """:func:`text_part` as the ``email`` package makes it (its heuristics choose
    the transfer encoding unless ``cte`` is given)."""
    part = header_part()
    part.set_content(text, subtype=subtype, charset="utf-8", cte=cte)
    del part["MIME-Version"]
    body = part.as_bytes(policy=PART_POLICY).partition(b"\n\n")[2]
    headers = header_part()
    for name, value in part.items():
        headers[name] = value
    return Part(headers, [body])
