"""What a message may not carry: the errors ``send`` raises in the view, and the
check of one address against email-validator.

Below :mod:`~pyramid_txmail.compose.message`, the builder and the pyramid_mailer
coercion, which all validate addresses and header values the same way; here so
that none of them has to import another (message.py used to be imported back by
the modules it imported).
"""
from __future__ import annotations

import functools

from email_validator import EmailNotValidError, validate_email

#: Where ``str.splitlines`` -- and so the ``email`` package's folder -- breaks a
#: line: any of them written raw in a header value starts a new header line.
LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


class MessageError(ValueError):
    """The message cannot be sent as it is (subclasses say why)."""


class NoRecipients(MessageError):
    """Neither To, Cc nor Bcc (nor an explicit envelope) names a recipient."""


class NoSender(MessageError):
    """No From header and no ``mail.default_sender``."""


class InvalidAddress(MessageError):
    """An address does not parse or is not a valid mailbox."""

    def __init__(self, header, address, reason, within=None):
        self.header, self.address, self.reason = header, address, reason
        where = f" in {within!r}" if within and within.strip() != address else ""
        super().__init__(f"{header}: invalid address {address!r}{where}: {reason}")


class HeaderInjection(MessageError):
    """A header name or value carries a line break (it would add headers), another
    control character, or the name is not a header name."""

    def __init__(self, header, why="header value contains a CR or LF line break"):
        self.header = header
        super().__init__(f"{header}: {why} (header injection refused)")

    @classmethod
    def bad_name(cls, name):
        return cls(repr(name), "not a valid header name (printable ASCII without "
                               "space or ':')")

    @classmethod
    def control(cls, header, text):
        """The error for a value ``text`` holding a control character or line break."""
        if "\r" in text or "\n" in text:
            return cls(header)
        found = next((c for c in text if ord(c) < 32 and c != "\t" or c == "\x7f"
                      or c in LINE_BREAKS), "")
        what = "control character" if ord(found or " ") < 32 or found == "\x7f" \
            else "line separator"
        return cls(header, f"header value contains the {what} {found!r}")


@functools.lru_cache(maxsize=4096)
def _validated(address):
    """``(envelope form, None)`` or ``(None, why)``: email-validator's verdict, remembered.

    The verdict depends only on the string (no DNS lookups), and an app
    sends from the same few senders to recipients it has seen before.
    Quoted local parts (``"a,b"@example.com``) are valid (RFC 5321): the
    envelope is stored and sent so that nothing in one can split it.
    """
    try:
        valid = validate_email(address, check_deliverability=False, allow_smtputf8=True,
                               allow_quoted_local=True)
    except EmailNotValidError as exc:
        return None, str(exc)
    return valid.ascii_email or valid.normalized, None


def check_address(header, address, within=None):
    """Validate one ``addr-spec``; returns the form used in the envelope."""
    envelope, why = _validated(address)
    if why is not None:
        raise InvalidAddress(header, address, why, within)
    return envelope
