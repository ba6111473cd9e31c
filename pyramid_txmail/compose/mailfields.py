"""A builder ``Mail``'s header fields as :func:`~pyramid_txmail.compose.headblock.fast_head`
reads them: the ``(name, value)`` pairs its header message would hold.

Why a module of its own: ``prepare(Mail)`` should be the cheapest input of
all (the builder made every header itself), yet it paid the ``email``
package's header registry again here -- ``header_max_count`` makes a class
at every call -- and cost twice ``prepare(EmailMessage)`` (issue 14).  The
rules are the stdlib path's, kept apart from the header block's writer.
"""
from __future__ import annotations

import email.policy
import functools
import re
from email import headerregistry

from .addresses import LINE_BREAKS
from .headblock import _HEADER_NAME, _MAX, _ONE_LINE, _STOCK_FACTORY
from .serialize import FOLD

__all__ = ["mail_pairs"]

#: The policy of a builder Mail's header message (builder.Mail.header_message).
_MAIL_POLICY = email.policy.default.clone(refold_source="none")
_RAW_BREAK = re.compile(f"[{re.escape(LINE_BREAKS)}]")  # where a raw value breaks a line
_CR_LF = re.compile(r"[\r\n]")


def _checked(name, value):
    """``check_headers``' test of one header: no value may start a header line."""
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        return False
    breaks = _RAW_BREAK if type(value) is str else _CR_LF
    return breaks.search(FOLD.sub(" ", str(value))) is None


@functools.lru_cache(maxsize=256)
def _max_count(low):
    """``header_max_count`` of the header named ``low`` (lowercase) in a Mail's header
    message: fixed for a name, and the registry makes a class each time it is asked."""
    return _MAIL_POLICY.header_max_count(low)


def _assigned_as_is(name, value):
    """True when ``message[name] = value`` would hold and write ``value`` as it is
    (an unstructured header of one plain line), so it can go as a raw value."""
    cls = _STOCK_FACTORY.registry.get(name.lower(), _STOCK_FACTORY.default_class)
    return type(value) is str and issubclass(cls, headerregistry.UnstructuredHeader) \
        and "=?" not in value and _ONE_LINE.fullmatch(value) is not None \
        and len(name) + 2 + len(value) <= _MAX


def mail_pairs(fields):
    """The ``(name, value)`` pairs of a builder Mail's header fields (``(name,
    value, raw)``) as its header message holds them, for :func:`fast_head`;
    ``None`` when the stdlib path must see them (envelope headers to drop, a
    value it would refuse, a header repeated past its policy's ``max_count``).

    ``header_message`` assigns each field that is not raw (``message[name] =
    value``), and the email package refuses an assignment when the message
    already holds ``header_max_count(name)`` headers of that name (one To, one
    Subject, one Message-ID...; raw ones, added with ``set_raw``, count but are
    not checked).  The same count is kept here, so a second To -- an extra
    envelope recipient and two To lines -- is never written by this path.
    """
    pairs = []
    seen = {}
    for name, value, raw in fields:
        if not isinstance(name, str) or name.lower() in ("x-actually-from", "x-actually-to"):
            return None
        low = name.lower()
        if not raw:
            limit = _max_count(low)
            if limit and seen.get(low, 0) >= limit:
                return None
        seen[low] = seen.get(low, 0) + 1
        if not raw and not _assigned_as_is(name, value):
            try:
                name, value = email.policy.default.header_store_parse(name, value)
            except ValueError:
                return None
        if not _checked(name, value):
            return None
        pairs.append((name, value))
    return pairs
