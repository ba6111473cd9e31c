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
:mod:`pyramid_txmail.mimeparts`).  The structure is the one mail clients
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

import email.errors
import email.policy
import email.utils
import mimetypes
import re
from email.headerregistry import Address
from email.message import EmailMessage

from .message import HeaderInjection, InvalidAddress
from .mimeparts import Built, Source, binary_part, multipart, text_part

__all__ = ["Mail"]

_HEADER_NAME = re.compile(r"^[!-9;-~]+$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_CID = re.compile(rf"^{_ATOM}(\.{_ATOM})*@{_ATOM}(\.{_ATOM})*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Headers the builder writes itself; ``headers=`` may not set them.
_BUILT_HEADERS = {"content-type", "content-transfer-encoding", "content-disposition",
                  "content-id", "mime-version"}


def _address_list(header, value):
    """``value`` (a string, an Address, a ``(name, addr)`` pair, or a list of
    these) as one header string; display names are encoded when written."""
    if value is None:
        return None
    if isinstance(value, (str, Address, tuple)):
        value = [value]
    items = []
    for item in value:
        if isinstance(item, tuple):
            name, addr = item
            try:
                item = Address(display_name=name or "", addr_spec=addr)
            except (ValueError, email.errors.HeaderParseError) as exc:
                raise InvalidAddress(header, addr, str(exc)) from None
        text = str(item)
        if _CONTROL.search(text.replace("\t", " ")):
            raise HeaderInjection(header)
        items.append(text)
    return ", ".join(items) or None


def _check_header(name, value):
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise HeaderInjection(repr(name))
    if name.lower() in _BUILT_HEADERS:
        raise ValueError(f"headers[{name!r}]: the builder writes {name} itself")
    if "\r" in str(value) or "\n" in str(value):
        raise HeaderInjection(name)


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
        self._headers = []
        for name, value in (("From", sender), ("To", to), ("Cc", cc), ("Bcc", bcc),
                            ("Reply-To", reply_to)):
            value = _address_list(name, value)
            if value is not None:
                self._headers.append((name, value))
        if subject is not None:
            if _CONTROL.search(str(subject).replace("\t", " ")):
                raise HeaderInjection("Subject")
            self._headers.append(("Subject", str(subject)))
        for name, value in (headers.items() if hasattr(headers, "items") else headers or ()):
            _check_header(name, value)
            self._headers.append((name, value))
        self.text = text
        self.html = html
        self.attachments = []
        self.inlines = []

    def __repr__(self):
        subject = dict(self._headers).get("Subject")
        return (f"<Mail {subject!r} with {len(self.attachments)} attachment(s), "
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
        if content_type is None:
            content_type = (mimetypes.guess_type(filename)[0] if filename else None) \
                or "application/octet-stream"
        elif not _CONTENT_TYPE.match(content_type):
            raise ValueError(f"attachment content_type {content_type!r}: expected "
                             "'type/subtype', e.g. 'application/pdf'")
        return _Attachment(source, content_type.lower(), filename, disposition, cid)

    # -- serialization ---------------------------------------------------------------

    def build(self):
        """The MIME tree as a :class:`~pyramid_txmail.mimeparts.Built` (sizes measured now)."""
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

    def header_message(self, built):
        """An ``EmailMessage`` holding only the header block (for ``prepare``)."""
        message = EmailMessage(policy=email.policy.default)
        for name, value in self._headers:
            message[name] = value
        message["MIME-Version"] = "1.0"
        for name, value in built.content_headers():
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
