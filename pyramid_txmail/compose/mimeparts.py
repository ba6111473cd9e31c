"""MIME parts whose bodies are streamed from disk, and their serializer.

The ``email`` package keeps every part's body in memory (a 20 MiB attachment
costs pyramid_mailer about 237 MiB resident).  Here a message is a tree of
parts whose *headers* are made by the ``email`` package -- so names,
filenames and parameters are encoded exactly as it does (RFC 2047, RFC 2231)
-- while an attachment's *body* is a :class:`Source` read and base64-encoded
block by block each time the message is written: to the spool at vote, and
again to the SMTP socket.  Only text and HTML bodies are held in memory.

The serialized form is what :class:`pyramid_txmail.compose.wire.Stream` promises:
LF line endings, 7-bit, lines far below SMTP's 998 octets (bodies at 76-78
columns, headers folded by the ``email`` package).
"""
from __future__ import annotations

import base64
import email.charset
import email.policy
import email.utils
import errno
import io
import os
import secrets
import stat
import tempfile
import weakref
from email.message import EmailMessage

from .wire import Stream

__all__ = ["AttachmentError", "Source", "Built", "Part", "binary_part", "multipart",
           "encoded_words", "header_part"]

#: Octets read and encoded per step: 1,152 base64 lines of 57 octets (76 characters).
BLOCK = 57 * 1152
#: A non-seekable file object is copied once; up to this size the copy stays in memory.
SPOOL_IN_MEMORY = 1 << 20
#: Policy for the headers and text bodies of the parts: LF, 78 columns, 7-bit only.
PART_POLICY = email.policy.default.clone(linesep="\n", cte_type="7bit", max_line_length=78)


class AttachmentError(OSError):
    """An attachment cannot be read (the message names its file).

    An ``OSError``: it happens while the spool is written at vote, where it
    aborts the transaction like a full disk does.
    """


def base64_size(length):
    """Octets of ``base64.encodebytes`` output (76-character lines, LF) for ``length`` octets."""
    return 4 * ((length + 2) // 3) + (length + 56) // 57


class Source:
    """The re-readable octets of an attachment: a path, a binary file object or bytes.

    A path is opened again each time the message is written and must stay in
    place until the mail has been queued (or sent, with direct delivery).  An
    open OS file is read from the position it had when attached (``tell()``)
    through a duplicate of its descriptor, so the caller may close it at once
    (``with open(...) as f: mail.attach(f)``).  Another seekable object
    (``BytesIO``...) is read from that position too and must stay open until
    the commit; a non-seekable one (a pipe, an upload stream) is copied once
    into a :class:`tempfile.SpooledTemporaryFile`.
    """

    def __init__(self, obj):
        self.path = self.file = self.data = self.fd = None
        self.start = 0
        if isinstance(obj, (bytes, bytearray, memoryview)):
            self.data = bytes(obj)
            self.label = "<bytes>"
        elif isinstance(obj, (str, os.PathLike)):
            self.path = os.fspath(obj)
            self.label = repr(self.path)
            self._wrap_errors(self._check_path)
        elif hasattr(obj, "read"):
            name = getattr(obj, "name", None)
            self.name = name if isinstance(name, str) else None
            self.label = repr(self.name or obj)
            self._adopt_file(obj)
        else:
            raise TypeError(f"an attachment is a path, a binary file object or bytes, "
                            f"not {type(obj).__name__}")

    def _wrap_errors(self, function, *args):
        try:
            return function(*args)
        except AttachmentError:
            raise
        except OSError as exc:
            raise AttachmentError(exc.errno, f"attachment {self.label} cannot be read: "
                                  f"{exc.strerror or exc}", self.path) from None

    def _check_path(self):
        if stat.S_ISDIR(os.stat(self.path).st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        os.close(os.open(self.path, os.O_RDONLY))

    def _adopt_file(self, obj):
        if isinstance(obj, io.TextIOBase) or isinstance(obj.read(0), str):
            raise TypeError(f"attachment {self.label}: open the file in binary mode ('rb')")
        seekable = getattr(obj, "seekable", None)
        if callable(seekable) and seekable():
            fd = _regular_fileno(obj)
            if fd is not None:
                self.fd, self.start = os.dup(fd), obj.tell()
                weakref.finalize(self, os.close, self.fd)
            else:
                self.file, self.start = obj, obj.tell()
            return
        copy = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        while True:
            block = obj.read(BLOCK)
            if not block:
                break
            copy.write(block)
        self.file = copy

    @property
    def in_memory(self):
        return self.data is not None

    @property
    def default_filename(self):
        name = self.path if self.path is not None else getattr(self, "name", None)
        return os.path.basename(name) if name else None

    def length(self):
        """The number of octets, measured now (when the message is built)."""
        if self.data is not None:
            return len(self.data)
        if self.path is not None:
            return self._wrap_errors(lambda: os.stat(self.path).st_size)
        if self.fd is not None:
            return self._wrap_errors(lambda: max(os.fstat(self.fd).st_size - self.start, 0))
        self._check_open()
        end = self.file.seek(0, io.SEEK_END)
        self.file.seek(self.start)
        return end - self.start

    def _check_open(self):
        if getattr(self.file, "closed", False):
            raise AttachmentError(errno.EBADF, f"attachment {self.label}: the file object was "
                                  "closed before the message was written (keep it open "
                                  "until the transaction commits, or attach its path)")

    def blocks(self, length):
        """Yield exactly ``length`` octets, in pieces of at most :data:`BLOCK` octets."""
        if self.data is not None:
            view = memoryview(self.data)
            for offset in range(0, length, BLOCK):
                yield view[offset:offset + BLOCK]
            return
        if self.path is not None:
            fd = self._wrap_errors(os.open, self.path, os.O_RDONLY)
            try:
                yield from self._checked(self._pread(fd, 0), length)
            finally:
                os.close(fd)
        elif self.fd is not None:
            yield from self._checked(self._pread(self.fd, self.start), length)
        else:
            self._check_open()
            self.file.seek(self.start)
            yield from self._checked(self.file.read, length)

    def _pread(self, fd, offset):
        def read(size):
            nonlocal offset
            block = os.pread(fd, size, offset)
            offset += len(block)
            return block
        return read

    def _checked(self, read, length):
        """``length`` octets from ``read(size)``, in full blocks (short reads are retried)."""
        left = length
        while left:
            want = min(BLOCK, left)
            block = self._wrap_errors(read, want)
            while block and len(block) < want:
                more = self._wrap_errors(read, want - len(block))
                if not more:
                    break
                block += more
            if not block:
                raise AttachmentError(errno.EIO, f"attachment {self.label} is shorter than "
                                      f"when the message was sent ({length - left} of "
                                      f"{length} octets): it changed after send()")
            left -= len(block)
            yield block


def _regular_fileno(obj):
    """The descriptor of ``obj`` when it is an open regular file, else None."""
    try:
        fd = obj.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


class Encoded:
    """A base64 body produced from a :class:`Source` on each iteration."""

    def __init__(self, source):
        self.source = source
        self.length = source.length()
        self.size = base64_size(self.length)

    def __iter__(self):
        for block in self.source.blocks(self.length):
            yield base64.encodebytes(block)


class Part:
    """One MIME entity: its header part (an EmailMessage, no body) and body segments.

    A segment is ``bytes`` or an :class:`Encoded` body.  ``content_type_line``,
    when given, is written instead of the Content-Type header (see
    :func:`binary_part`).
    """

    def __init__(self, headers, body, content_type_line=None):
        self.headers = headers
        self.body = body
        self.content_type_line = content_type_line

    def head_bytes(self):
        lines = [self.content_type_line] if self.content_type_line else []
        lines += [PART_POLICY.fold_binary(name, value) for name, value in self.headers.items()
                  if not (self.content_type_line and name.lower() == "content-type")]
        return b"".join(lines)

    def segments(self):
        """Headers, blank line and body: the entity inside a multipart."""
        return [self.head_bytes() + b"\n", *self.body]


def header_part():
    """An empty part holding a part's headers (written with PART_POLICY)."""
    return EmailMessage(policy=PART_POLICY)


def binary_part(source, content_type, disposition, filename=None, cid=None):
    """A base64 part whose body is read from ``source`` when written.

    The filename is in Content-Disposition as the ``email`` package writes it
    (RFC 2231 ``filename*=utf-8''...`` when not ASCII), and also as
    Content-Type's ``name`` in RFC 2047 encoded words, as Gmail and Thunderbird
    send it: older Outlook versions read only that one.
    """
    maintype, _, subtype = content_type.partition("/")
    headers = header_part()
    rfc2231 = bool(filename) and _misread_when_quoted(filename)  # written below
    headers.set_content(b"", maintype, subtype, cte="base64", disposition=disposition,
                        filename=None if rfc2231 else filename, cid=f"<{cid}>" if cid else None)
    del headers["MIME-Version"]
    line = None
    if filename:
        line = f"Content-Type: {content_type};\n name={_quoted_name(filename)}\n"
        if rfc2231:
            del headers["Content-Disposition"]
            line += f"Content-Disposition: {disposition};{_rfc2231('filename', filename)}\n"
        line = line.encode()
    return Part(headers, [Encoded(source)], line)


def _misread_when_quoted(filename):
    """True when readers change ``filename`` written as a quoted-string, so it
    must go in RFC 2231 form (percent-encoded, never unquoted again).

    Text that looks like an encoded word ("=?...?=") is decoded as one; and the
    ``email`` package's ``get_filename`` unquotes a quoted-string's value a
    second time (``email.utils.unquote``), so ``"a"`` and ``<a>`` read as ``a``
    and ``""`` as nothing (found by the property run of issue 11).
    """
    return "=?" in filename or len(filename) > 1 and filename[0] + filename[-1] in ('""', "<>")


def _rfc2231(param, value):
    """``value`` as RFC 2231 ``param*N*=`` continuations, one per folded line."""
    encoded = email.utils.encode_rfc2231(value, "utf-8")
    pieces = []
    while encoded:
        cut = min(60, len(encoded))
        while "%" in encoded[max(cut - 2, 0):cut]:  # never split a %XX triplet
            cut -= 1
        pieces.append(encoded[:cut])
        encoded = encoded[cut:]
    return ";".join(f"\n {param}*{i}*={piece}" for i, piece in enumerate(pieces))


def _quoted_name(filename):
    """``filename`` as a quoted-string: plain when short ASCII, else encoded words
    (each at most 75 characters, one per folded line)."""
    if filename.isascii() and len(filename) <= 200 and "=?" not in filename:
        return '"' + email.utils.quote(filename) + '"'
    return '"' + encoded_words(filename) + '"'


_UTF8 = email.charset.Charset("utf-8")


def encoded_words(text, first=75):
    """``text`` as RFC 2047 encoded words of at most 75 characters, one per line
    (the first at most ``first``, to fit beside its header's name).

    Not ``email.header.Header``: it splits its text at ``str.splitlines``
    boundaries and drops U+0085, U+2028, U+2029 and FS/GS/RS on the way.
    Whitespace between encoded words is not part of the text, so the words
    decode to exactly ``text``.
    """
    words = []
    start = 0
    while start < len(text):
        end = start + 1
        word = _UTF8.header_encode(text[start:end])
        limit = 75 if words else max(first, len(word))
        while end < len(text):
            longer = _UTF8.header_encode(text[start:end + 1])
            if len(longer) > limit:
                break
            word, end = longer, end + 1
        words.append(word)
        start = end
    return "\n ".join(words)


def multipart(subtype, parts, **params):
    """A ``multipart/<subtype>`` part holding ``parts``."""
    boundary = "=_" + secrets.token_hex(16)  # '=_' never occurs in base64 or quoted-printable
    headers = header_part()
    headers["Content-Type"] = f"multipart/{subtype}"
    for key, value in params.items():
        headers.set_param(key, value)
    headers.set_param("boundary", boundary)
    body = []
    for index, part in enumerate(parts):
        body.append((b"--" if index == 0 else b"\n--") + boundary.encode() + b"\n")
        body.extend(part.segments())
    body.append(b"\n--" + boundary.encode() + b"--\n")
    return Part(headers, body)


class Built:
    """A message's top-level part, ready to be put under its header block."""

    def __init__(self, top):
        self.top = top
        self.streamed = any(isinstance(s, Encoded) and not s.source.in_memory
                            for s in top.body)
        self.body_size = sum(s.size if isinstance(s, Encoded) else len(s) for s in top.body)

    def content_headers(self):
        """The top part's ``Content-*`` headers (for the message's header block)."""
        return self.top.headers.items()

    def chunks(self):
        for segment in self.top.body:
            if isinstance(segment, Encoded):
                yield from segment
            else:
                yield segment

    def data(self, head):
        """The whole message under the header block ``head`` (LF-ended bytes,
        ending with the blank line): bytes, or a :class:`~pyramid_txmail.compose.wire.Stream`
        when an attachment is read from a file."""
        if not self.streamed:
            return head + b"".join(self.chunks())

        def factory():
            yield head
            yield from self.chunks()

        return Stream(factory, head=head, size=len(head) + self.body_size)
