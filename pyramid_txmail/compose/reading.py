"""Reading a composed message back: its headers and its parts' file names as they were sent.

The preview page, the test outbox (:class:`~pyramid_txmail.mailer.sent.SentMail`)
and ``txmail-queue show`` all read messages back the same way; the helpers live
here, below all three, so that none of them imports another's layer.
"""
from __future__ import annotations

import email.utils


def header_items(message):
    """``(name, value)`` of every header; a header that does not decode is shown raw."""
    items = []
    for name, raw in message.raw_items():
        try:
            text = str(message.policy.header_fetch_parse(name, raw))
        except Exception:  # a malformed header is shown as it was sent
            text = str(raw)
        items.append((name, text))
    return items


def filename(part):
    """The part's file name as it was sent: Content-Disposition's ``filename``
    (RFC 2231 decoded), else Content-Type's ``name``; ``None`` without either.

    Not ``part.get_filename()``: the ``email`` package unquotes the value a
    second time there, so a file named ``"a"`` or ``<a>`` reads as ``a`` and
    one named ``""`` as nothing (and it strips white space).
    """
    for param, header in (("filename", "content-disposition"), ("name", "content-type")):
        value = part.get_param(param, None, header)
        if value is not None:
            return email.utils.collapse_rfc2231_value(value) if isinstance(value, tuple) \
                else value
    return None
