"""Where the preview page finds messages, and how it takes one apart.

Two kinds of source:

- the memory outbox (``mail.delivery = memory`` registers it as the
  :class:`~pyramid_txmail.interfaces.IMailOutbox` utility): a message is
  named by its position in ``outbox.messages``;
- directories of ``.eml`` files (``mail.file_path`` of file delivery, the
  demo's inbox, anything in ``mail.preview_dirs``): a message is named by its
  file name.  Each file is the message with the envelope prepended as
  ``X-Envelope-From:`` / ``X-Envelope-To:`` header lines (or a queue file's
  envelope), read as written: see :func:`file_envelope`.

A name that comes from a URL is only ever looked up among the names the
source lists itself (``os.listdir`` or the outbox's indexes), never joined
onto a path as it is: ``..``, slashes and symlinks lead nowhere.
"""
from __future__ import annotations

import dataclasses
import email.parser
import io
import email.policy
import email.utils
import os
import re
import stat

from ..compose.reading import filename, header_items  # noqa: F401 (used as src.*)
from ..interfaces import IMailOutbox
from ..util.regular_files import READ_FLAGS
from ..queue.maildir.spoolfile import (PoisonMessage, field_name, header_fields, read_envelope,
                        split_addresses, unfolded_value)

MEMORY = "memory"
ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,250}\.eml$")
SOURCE_KEY = re.compile(r"^(memory|d[0-9]{1,3})$")
_INDEX = re.compile(r"^[0-9]{1,9}$")
HEAD_LIMIT = 64 * 1024  # the list page reads at most this much of each file
LIST_LIMIT = 500  # and lists at most this many messages per source, newest first

_parser = email.parser.BytesParser(policy=email.policy.default)


@dataclasses.dataclass
class Source:
    key: str  # "memory" or "d0", "d1", ... (used in URLs)
    label: str  # what the page shows: "memory outbox" or the directory
    directory: str | None = None


def sources(settings, registry):
    """The sources for parsed ``settings``, in order: memory, file_path, preview_dirs."""
    found = []
    if registry.queryUtility(IMailOutbox) is not None:
        found.append(Source(MEMORY, "memory outbox"))
    seen = set()
    dirs = [getattr(settings, "file_path", None), *settings.preview_dirs]
    for directory in dirs:
        if not directory:
            continue
        real = os.path.realpath(directory)
        if real in seen:
            continue
        seen.add(real)
        found.append(Source(f"d{len(seen) - 1}", os.path.normpath(directory), directory))
    return found


@dataclasses.dataclass
class Entry:
    """One message of a source; ``raw`` is its bytes (perhaps only the head, when listing)."""

    source: Source
    name: str
    raw: bytes
    size: int
    mtime: float | None = None
    fromaddr: str | None = None
    toaddrs: tuple = ()

    @property
    def message(self):
        return parse(self.raw)

    def timestamp(self, message):
        try:
            return email.utils.parsedate_to_datetime(str(message["Date"])).timestamp()
        except (TypeError, ValueError, KeyError, IndexError, OverflowError):
            return self.mtime or 0.0


def parse(raw):
    return _parser.parsebytes(raw)


def _as_bytes(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return b"".join(data)  # a wire.Stream


def _outbox_messages(registry):
    outbox = registry.queryUtility(IMailOutbox)
    return list(outbox.messages) if outbox is not None else []


def _memory_entry(source, index, item):
    raw = _as_bytes(item.data)
    return Entry(source, str(index), raw, len(raw), None,
                 item.fromaddr, tuple(item.toaddrs))


def _listed_names(directory):
    """``.eml`` regular files (no dotfiles, no symlinks) of ``directory``; [] if missing."""
    try:
        with os.scandir(directory) as it:
            return [e.name for e in it if ENTRY_NAME.match(e.name)
                    and e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _read(directory, name, limit=None):
    """(bytes, size, mtime) of a listed file, or None if it went away or is not a file."""
    try:  # O_NOFOLLOW | O_NONBLOCK: a symlink is not followed, a FIFO not waited on
        fd = os.open(os.path.join(directory, name), READ_FLAGS)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        data = fh.read(limit) if limit else fh.read()
    return data, info.st_size, info.st_mtime


def _file_entry(source, name, limit=None):
    found = _read(source.directory, name, limit)
    if found is None:
        return None
    data, size, mtime = found
    fromaddr, toaddrs = file_envelope(data)
    return Entry(source, name, data, size, mtime, fromaddr, toaddrs)


def file_envelope(data):
    """``(fromaddr or None, toaddrs)`` of an .eml file, as it was written.

    Its ``X-Envelope-*`` lines are prepended, so the first of each is the
    envelope (a forwarded message may carry its own further down); their
    values are raw UTF-8, never RFC 2047-decoded (an address may look like
    an encoded word), and recipients are split at commas outside quotes.
    A file with none is read as a queue file is.
    """
    found = {}
    for field in header_fields(io.BytesIO(data)):
        name = field_name(field)
        if name in (b"x-envelope-from", b"x-envelope-to") and name not in found:
            found[name] = unfolded_value(field).decode("utf-8", errors="replace")
    if found:
        return found.get(b"x-envelope-from"), split_addresses(found.get(b"x-envelope-to", ""))
    try:
        return read_envelope(io.BytesIO(data))[:2]
    except PoisonMessage:
        return None, ()


def list_entries(source, registry):
    """Entries of ``source`` with (at least) their headers, newest first."""
    if source.key == MEMORY:
        items = _outbox_messages(registry)
        newest = list(enumerate(items))[::-1][:LIST_LIMIT]
        return [_memory_entry(source, i, item) for i, item in newest]
    names = sorted(_listed_names(source.directory), reverse=True)[:LIST_LIMIT]
    entries = (_file_entry(source, name, HEAD_LIMIT) for name in names)
    return [e for e in entries if e is not None]


def find_entry(all_sources, key, name, registry):
    """The whole message ``name`` of source ``key``, or None (never a path outside it)."""
    source = next((s for s in all_sources if s.key == key), None)
    if source is None:
        return None
    if source.key == MEMORY:
        items = _outbox_messages(registry)
        if not _INDEX.match(name) or int(name) >= len(items):
            return None
        return _memory_entry(source, int(name), items[int(name)])
    if not ENTRY_NAME.match(name) or name not in _listed_names(source.directory):
        return None
    return _file_entry(source, name)


# -- taking a message apart -------------------------------------------------

def leaf_parts(message):
    """Every non-multipart part, in order; a part's position is its number in URLs."""
    return [part for part in message.walk() if not part.is_multipart()]


def body_parts(message):
    """``(text part or None, html part or None)`` as a mail client would pick them."""
    def pick(kind):
        try:
            return message.get_body(preferencelist=(kind,))
        except (KeyError, LookupError, ValueError):
            return None
    return pick("plain"), pick("html")


def content_text(part):
    """A text part as ``str``, whatever its declared charset."""
    try:
        return part.get_content()
    except (KeyError, LookupError, ValueError, AssertionError):
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", errors="replace")


def part_bytes(part):
    payload = part.get_payload(decode=True)
    if payload is None:  # e.g. a message/rfc822 part's content
        payload = part.as_bytes() if part.is_multipart() else b""
    return payload


def content_id(part):
    value = part.get("Content-ID")
    return str(value).strip().strip("<>").strip() if value is not None else None
