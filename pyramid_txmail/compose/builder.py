"""Compose a message: text and HTML alternatives, inline images, attachments.

::

    mail = Mail(subject="Your invoice", to="Jörg <jorg@example.com>",
                text="Hello", html='<p>Hello <img src="cid:{logo}"></p>')
    logo = mail.inline("static/logo.png")
    mail.html = mail.html.format(logo=logo)
    mail.attach("/srv/invoices/2024-001.pdf")
    request.mailer.send(mail)

Attachments given as paths or file objects are never read into memory: they
are base64-encoded block by block each time the message is written (see
:mod:`pyramid_txmail.compose.mimeparts`).  The structure is the one mail clients
expect::

    multipart/mixed                       (only with attachments)
      multipart/alternative               (only with both text and HTML)
        text/plain
        multipart/related                 (only with inline images)
          text/html
          image/png  Content-ID: <cid>
      application/pdf  (attachment)

``request.mailer.send(mail)`` validates the header block exactly like an
``EmailMessage``'s (From default, Message-ID, Date, Bcc removed, addresses
checked, header injection refused).
"""
from __future__ import annotations

import email.policy
import email.utils
import mimetypes
import re
from email.headerregistry import Address, UnstructuredHeader
from email.message import EmailMessage

from .addresses import LINE_BREAKS, HeaderInjection, InvalidAddress, check_address
from .message import long_word
from .mimeparts import Built, Source, binary_part, encoded_words, multipart
from .textpart import text_part

__all__ = ["Mail"]

_HEADER_NAME = re.compile(r"[!-9;-~]+")  # used with fullmatch: "$" would pass "X\n"
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"  # RFC 6838 type and subtype names
_CONTENT_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}$")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_CID = re.compile(rf"^{_ATOM}(\.{_ATOM})*@{_ATOM}(\.{_ATOM})*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Headers the builder writes itself; ``headers=`` may not set them.
_BUILT_HEADERS = {"content-type", "content-transfer-encoding", "content-disposition",
                  "content-id", "mime-version"}
#: Made once: ``message["MIME-Version"] = "1.0"`` parses it through the header
#: registry each time (a header object is immutable, so every Mail can share it).
_MIME_VERSION = email.policy.default.header_factory("MIME-Version", "1.0")


def _encoded_words(text, header_name=None):
    """``text`` as RFC 2047 encoded words, one per folded line.

    The ``email`` package's own folder loses or adds a space where encoded and
    plain words meet (e.g. "Ąí ¹¬z" comes back as "Ąí¹¬z"); encoding the whole
    value keeps every space inside the words, so it decodes exactly.
    """
    return encoded_words(text)


def _needs_encoding(text):
    """Non-ASCII, or text a reader would take for an encoded word ("=?...?=").

    Written as it is, ``=?utf-8?q?caf=C3=A9?=`` would arrive as "café";
    encoded, it arrives as typed.  A run too long to fold is encoded too, as
    words of at most 75 characters, so no header line passes SMTP's 998.
    """
    return not text.isascii() or "=?" in text or long_word(text)


def _needs_encoding_raw(text):
    """What must be encoded even in a UTF-8 header: see :func:`_needs_encoding`,
    and U+0085, U+2028, U+2029, where the ``email`` package would break the line."""
    return "=?" in text or long_word(text) or any(c in LINE_BREAKS for c in text)


def _pairs(header, value):
    """``(display name, address)`` pairs of a recipient argument."""
    if isinstance(value, (str, Address, tuple)):
        value = [value]
    pairs = []
    for item in value:
        if isinstance(item, Address):
            found = [(item.display_name, item.addr_spec)]
        elif isinstance(item, tuple):
            found = [item]
        else:
            if _CONTROL.search(str(item).replace("\t", " ")):
                raise HeaderInjection.control(header, str(item))
            found = email.utils.getaddresses([str(item)])
            if not found or any(not addr for _, addr in found):
                raise InvalidAddress(header, str(item), "not a list of addresses")
        for name, addr in found:
            if _CONTROL.search(f"{name or ''}{addr}".replace("\t", " ")):
                raise HeaderInjection.control(header, f"{name or ''}{addr}")
            check_address(header, addr)
            pairs.append((name or "", addr))
    return pairs


def _address_header(header, value):
    """``(text, raw)``: the header value, and whether it is already encoded (set raw)."""
    pairs = _pairs(header, value)
    if not pairs:
        return None, False
    if not all(addr.isascii() for _, addr in pairs):  # SMTPUTF8 mailbox: UTF-8 headers
        return ",\n ".join(f"{_encoded_words(name)} <{addr}>" if _needs_encoding_raw(name)
                           else f'"{email.utils.quote(name)}" <{addr}>' if name else addr
                           for name, addr in pairs), True
    items = [f"{_encoded_words(name)} <{addr}>" if _needs_encoding(name)
             else email.utils.formataddr((name, addr)) for name, addr in pairs]
    return ",\n ".join(items), True


def _unstructured(name):
    return issubclass(email.policy.default.header_factory[name], UnstructuredHeader)


def _check_header(name, value):
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise HeaderInjection.bad_name(name)
    if name.lower() in _BUILT_HEADERS:
        raise ValueError(f"headers[{name!r}]: the builder writes {name} itself")
    if _CONTROL.search(str(value).replace("\t", " ")):
        raise HeaderInjection.control(name, str(value))


class _Attachment:
    def __init__(self, source, content_type, filename, disposition, cid=None):
        self.source = source
        self.content_type = content_type
        self.filename = filename
        self.disposition = disposition
        self.cid = cid

    def part(self):
        return binary_part(self.source, self.content_type, self.disposition,
                           self.filename, self.cid)


class Mail:
    """A message to send with ``request.mailer.send(mail)``.

    ``to``, ``cc``, ``bcc`` and ``reply_to`` take an address string
    (``"Jörg <jorg@example.com>"``), an :class:`email.headerregistry.Address`,
    a ``(display name, address)`` pair, or a list of these.  ``sender`` is the
    From header (``mail.default_sender`` when omitted).  ``headers`` adds
    other headers (``List-Unsubscribe``, ``In-Reply-To``...).  ``text`` and
    ``html`` are the two alternatives of the body; either may be omitted.
    """

    def __init__(self, subject=None, to=None, cc=None, bcc=None, sender=None,
                 reply_to=None, text=None, html=None, headers=None):
        self._headers = []  # (name, value, raw): raw values are already encoded
        for name, value in (("From", sender), ("To", to), ("Cc", cc), ("Bcc", bcc),
                            ("Reply-To", reply_to)):
            if value is not None:
                encoded, raw = _address_header(name, value)
                if encoded is not None:
                    self._headers.append((name, encoded, raw))
        extra = list(headers.items() if hasattr(headers, "items") else headers or ())
        if subject is not None:
            extra.insert(0, ("Subject", subject))
        for name, value in extra:
            _check_header(name, value)
            value = str(value)
            if _needs_encoding(value) and _unstructured(name):
                self._headers.append((name, _encoded_words(value, name), True))
            else:
                self._headers.append((name, value, False))
        self.subject = subject
        self.text = text
        self.html = html
        self.attachments = []
        self.inlines = []

    def __repr__(self):
        return (f"<Mail {self.subject!r} with {len(self.attachments)} attachment(s), "
                f"{len(self.inlines)} inline>")

    def attach(self, source, filename=None, content_type=None):
        """Attach a file (path), a binary file object or bytes.

        ``filename`` defaults to the file's name; ``content_type`` is guessed
        from the filename (``application/octet-stream`` when unknown).
        """
        self.attachments.append(self._attachment(source, filename, content_type,
                                                 "attachment"))

    def inline(self, source, cid=None, filename=None, content_type=None):
        """Add an image (or other part) that the HTML shows as ``<img src="cid:...">``.

        Returns the content id to use after ``cid:`` (made unique when not given).
        """
        if cid is None:
            cid = email.utils.make_msgid(domain="txmail.invalid")[1:-1]
        elif not isinstance(cid, str) or not _CID.match(cid) or len(cid) > 250:
            raise ValueError(f"inline cid {cid!r}: use the form 'name@domain' "
                             "(letters, digits and !#$%&'*+-/=?^_`{|}~. only)")
        if any(part.cid == cid for part in self.inlines):
            raise ValueError(f"inline cid {cid!r} is used twice")
        self.inlines.append(self._attachment(source, filename, content_type, "inline", cid))
        return cid

    def _attachment(self, source, filename, content_type, disposition, cid=None):
        source = Source(source)
        filename = filename if filename is not None else source.default_filename
        if filename is not None:
            if not isinstance(filename, str) or not filename or _CONTROL.search(filename):
                raise ValueError(f"attachment filename {filename!r}: it must be a non-empty "
                                 "string without control characters")
        if filename and source.default_filename is None:
            source.label = repr(filename)  # errors name the file the reader will see
        if content_type is None:
            content_type = (mimetypes.guess_type(filename)[0] if filename else None) \
                or "application/octet-stream"
        elif not _CONTENT_TYPE.match(content_type):
            raise ValueError(f"attachment content_type {content_type!r}: expected "
                             "'type/subtype', e.g. 'application/pdf'")
        return _Attachment(source, content_type.lower(), filename, disposition, cid)

    # -- serialization ---------------------------------------------------------------

    def build(self):
        """The MIME tree as a :class:`~pyramid_txmail.compose.mimeparts.Built`
        (sizes measured now)."""
        if self.inlines and self.html is None:
            raise ValueError("inline parts are shown by the HTML body (cid:...): "
                             "set html= as well")
        body = []
        if self.text is not None or (self.html is None and not self.attachments):
            body.append(text_part(self.text or "", "plain"))
        if self.html is not None:
            html = text_part(self.html, "html")
            if self.inlines:
                html = multipart("related", [html, *(i.part() for i in self.inlines)],
                                 type="text/html")
            body.append(html)
        top = body[0] if len(body) == 1 else (multipart("alternative", body) if body else None)
        if self.attachments:
            top = multipart("mixed", [*([top] if top else []),
                                      *(a.part() for a in self.attachments)])
        return Built(top)

    def split_for_prepare(self):
        """``(header-only EmailMessage, Built body)``: what ``prepare()`` asks of a
        Mail, found by name so that compose/message.py need not import this module."""
        built = self.build()
        return self.header_message(built), built

    def header_fields(self, built):
        """``(name, value, raw)`` of every header of the block, in order: raw values
        are already encoded (written as they are), others are assigned.  What
        :meth:`header_message` holds, for ``prepare``'s fast path to write."""
        return [*self._headers, ("MIME-Version", _MIME_VERSION, False),
                *((name, value, False) for name, value in built.content_headers())]

    def header_message(self, built):
        """An ``EmailMessage`` holding only the header block (for ``prepare``)."""
        # Raw (already encoded) values are written as they are, never refolded.
        message = EmailMessage(policy=email.policy.default.clone(refold_source="none"))
        for name, value, raw in self.header_fields(built):
            if raw:
                message.set_raw(name, value)
            else:
                message[name] = value
        message.set_payload("")
        return message

    def as_bytes(self):
        """The whole message as bytes, with LF line endings (reads every attachment:
        for previews and tests; ``send`` streams instead)."""
        built = self.build()
        head = self.header_message(built).as_bytes(
            policy=email.policy.default.clone(linesep="\n"))
        return head + b"".join(built.chunks())
