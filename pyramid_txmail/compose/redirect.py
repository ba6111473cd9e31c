"""Staging redirect: ``mail.redirect_to`` sends every message to fixed addresses.

A staging site runs the real code path (queue, ``txmail-qp``, the real
relay) but must never mail real customers.  With ``mail.redirect_to = qa@example.com``
every prepared message's *envelope* goes to those addresses instead; the
headers (To, Cc) are left as they are, so the message looks exactly like the
one a customer would get, and the original envelope recipients (Bcc
included) are kept in an ``X-Txmail-Original-To`` header for the tester.

The header is not called ``X-Original-To``: Postfix and Dovecot add a header
of that name on final delivery (the address the mail arrived for, here the
QA mailbox), and two different ``X-Original-To`` lines would mislead.

The redirect is applied in ``Mailer.send`` right after the message is
prepared, so it holds for every delivery mode: what is spooled, sent
directly or kept in the memory outbox already has the new envelope.
"""
from __future__ import annotations

import dataclasses
import itertools
import re

from ..util.printable import get_logger
from . import wire

log = get_logger("pyramid_txmail.redirect")

#: The header that keeps a redirected message's original envelope recipients.
ORIGINAL_TO_HEADER = "X-Txmail-Original-To"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FOLD_AT = 78


def parse_redirect_to(value):
    """``"QA <qa@example.com>, dev@example.com"`` → ``("qa@example.com", "dev@example.com")``.

    Addresses may also stand one per line (an ini list).  Raises
    ``ValueError`` naming the address that is not valid.
    """
    from .message import InvalidAddress, MessageError, validate_address_header

    if isinstance(value, (list, tuple)):
        value = ",".join(value)
    lines = [line.strip().strip(",").strip() for line in re.split(r"[\r\n]+", str(value))]
    text = ", ".join(line for line in lines if line)
    if not text:
        return ()
    try:
        addresses = validate_address_header("mail.redirect_to", text)
    except InvalidAddress as exc:
        hint = "; separate addresses with commas or put one per line" \
            if exc.reason == "not a list of addresses" else ""
        raise ValueError(f"invalid address {exc.address!r}: {exc.reason}{hint}") from None
    except MessageError as exc:
        raise ValueError(str(exc)) from None
    return tuple(dict.fromkeys(addresses))


def announce(addresses):
    """The startup line that says the redirect is on (a WARNING: it must be seen)."""
    if addresses:
        log.warning("mail.redirect_to is active: every message goes to %s instead of its "
                    "recipients (they are kept in the %s header)", ", ".join(addresses),
                    ORIGINAL_TO_HEADER)


def original_to_header(recipients, linesep=b"\n"):
    """The ``X-Txmail-Original-To`` header line (folded, with its line ending).

    The recipients went through address validation already; any control
    character is still removed, so the value can never start a new header.
    """
    names = [_CONTROL.sub("", r) for r in recipients]
    lines, line = [], ORIGINAL_TO_HEADER + ":"
    for i, name in enumerate(names):
        piece = " " + name + ("," if i < len(names) - 1 else "")
        if len(line) + len(piece) > _FOLD_AT and line.endswith(","):
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return linesep.join(part.encode("utf-8") for part in lines) + linesep


def _linesep(head):
    return b"\r\n" if b"\r\n" in head[:4096] else b"\n"


def redirect(prepared, addresses):
    """``prepared`` with its envelope sent to ``addresses`` and the original
    recipients in a header line prepended to the message."""
    if isinstance(prepared.data, wire.Stream):
        stream = prepared.data
        header = original_to_header(prepared.toaddrs, _linesep(stream.head))
        data = wire.Stream(lambda: itertools.chain([header], stream.factory()),
                           head=header + stream.head,
                           size=None if stream.size is None else stream.size + len(header),
                           eightbit=stream.eightbit or not header.isascii(),
                           message_id=stream.message_id,
                           head_8bit=stream.head_8bit or not header.isascii())
    else:
        header = original_to_header(prepared.toaddrs, _linesep(prepared.data))
        data = header + prepared.data
    log.debug("mail.redirect_to: %s goes to %s instead of %s", prepared.message_id,
              ", ".join(addresses), ", ".join(prepared.toaddrs))
    return dataclasses.replace(prepared, toaddrs=tuple(addresses), data=data)
