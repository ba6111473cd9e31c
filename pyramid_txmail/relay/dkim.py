"""DKIM signing (RFC 6376) at send time, over exactly the bytes on the wire.

Why here, in the transport: the signature must cover the message the
receiver sees -- after ``mail.redirect_to`` rewrote it (done before it was
spooled), after :func:`~pyramid_txmail.compose.wire.to_wire` re-encoded long
lines for this server, in CRLF form, with dot-stuffing undone (the receiver
undoes it).  Anything signed earlier could be changed on the way out.  The
``DKIM-Signature`` field is prepended to what is sent; the queue file is
never changed, so a retry signs again (with a new ``t=``).

Why the body hash is ours: dkimpy hashes a body it holds whole, and a
streamed message (:class:`~pyramid_txmail.compose.wire.Stream`, a 50 MiB
attachment) must not be loaded whole.  :class:`BodyHash` canonicalizes
(simple or relaxed, RFC 6376 3.4.3/3.4.4) chunk by chunk, holding back only
a partial line and a count of trailing empty lines; dkimpy then signs the
header fields with that ``bh=`` (its ``gen_header``, the same code its
``sign()`` ends in).  Only the header fields that are signed are kept in
memory, so a spooled message with a huge header block stays cheap too.

Which key: the one of the From header's domain (or of its nearest parent
domain with a key), because DMARC (RFC 7489 3.1) checks the DKIM ``d=``
against the From domain, not against the envelope sender -- which may be a
bounce address of another domain.  A message whose From domain has no key
is sent unsigned (logged at DEBUG).
"""
from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import time

import dkim as _dkimpy  # pure Python; its one dependency (dnspython) email-validator has too
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import HASH_ALGORITHMS

from ..util.printable import get_logger
from ..compose import wire
from .dkim_keys import (DEFAULT_HEADERS, DKIMConfigError, DomainKey, ascii_domain,
                        check_domain, check_selector, load_key, parse_header_names)

__all__ = ["BodyHash", "DKIMSigner", "DKIMSigningError", "DKIMConfigError", "DomainKey",
           "signer_from_settings", "sign_chunks"]

log = get_logger("pyramid_txmail.dkim")

_WSP_RUN = re.compile(rb"\t[ \t]*| [ \t]+")  # a lone SP is already canonical: left alone
_CRLF = b"\r\n"


class DKIMSigningError(Exception):
    """A message could not be signed; ``temporary`` when a retry may succeed
    (the queue file could not be read), else permanent (dkimpy refused it)."""

    def __init__(self, text, temporary=False):
        super().__init__(text)
        self.temporary = temporary


def signer_from_settings(values):
    """The :class:`DKIMSigner` for the parsed ``mail.*`` values (a dict), or ``None``
    when no DKIM key is configured.  Every key file is read and parsed now
    (:mod:`~pyramid_txmail.relay.dkim_keys`), so a bad one stops the start-up
    (:class:`DKIMConfigError` naming key and file)."""
    single = [n for n in ("dkim_private_key", "dkim_selector", "dkim_domain") if values.get(n)]
    domains = values.get("dkim_domains") or ()
    if not single and not domains:
        for name in ("dkim_headers", "dkim_canonicalization"):
            if values.get(name):
                raise DKIMConfigError(name, values[name], "no DKIM key is configured "
                                      "(mail.dkim_private_key or mail.dkim_domains)")
        return None
    entries = []
    if single:
        missing = [n for n in ("dkim_private_key", "dkim_selector", "dkim_domain")
                   if n not in single]
        if missing:
            raise DKIMConfigError(single[0], values[single[0]], "DKIM signing also needs "
                                  + " and ".join("mail." + n for n in missing))
        for name, check in (("dkim_domain", check_domain), ("dkim_selector", check_selector)):
            try:
                check(values[name])
            except ValueError as exc:
                raise DKIMConfigError(name, values[name], str(exc)) from None
        entries.append(("dkim_private_key", values["dkim_domain"], values["dkim_selector"],
                        values["dkim_private_key"]))
    entries += [("dkim_domains", *entry) for entry in domains]
    keys = {}
    for key_name, domain, selector, path in entries:
        shown = path if key_name == "dkim_private_key" else f"{domain} {selector} {path}"
        try:
            check_domain(domain)
            check_selector(selector)
            key, bits = load_key(path)
        except ValueError as exc:
            raise DKIMConfigError(key_name, shown, f"{exc} (key file {path})") from None
        name = ascii_domain(domain)
        if name in keys:
            raise DKIMConfigError(key_name, shown, f"a second key for {name}")
        keys[name] = DomainKey(name, selector, path, bits, key)
    return DKIMSigner(keys, values.get("dkim_headers") or DEFAULT_HEADERS,
                      values.get("dkim_canonicalization") or "relaxed/relaxed")


# -- hashing ---------------------------------------------------------------------------


class BodyHash:
    """The DKIM body hash (sha256), fed CRLF-only chunks in any sizes.

    Holds back a partial line (lines are complete before they are
    canonicalized) and the number of empty lines seen last (they count only
    if something follows: trailing empty lines are ignored).  A last line
    without CRLF is taken as ended by one, as the SMTP DATA section ends it.
    """

    def __init__(self, relaxed=True):
        self.relaxed = relaxed
        self._hash = hashlib.sha256()
        self._carry = b""
        self._empty_lines = 0
        self._any = False

    def update(self, data):
        buf = self._carry + bytes(data) if self._carry else bytes(data)
        cut = buf.rfind(b"\n") + 1
        self._carry = buf[cut:]
        if cut:
            self._lines(buf[:cut] if cut < len(buf) else buf)

    def _lines(self, block):
        if self.relaxed:  # WSP runs become one SP, then none is left at a line's end
            if b"\t" in block or b"  " in block:  # (memchr-fast; base64 has neither)
                block = _WSP_RUN.sub(b" ", block)
            block = block.replace(b" \r\n", _CRLF)
        text = block.rstrip(_CRLF)
        if not text:
            self._empty_lines += len(block) // 2
            return
        while self._empty_lines:
            run = min(self._empty_lines, 1 << 15)
            self._hash.update(_CRLF * run)
            self._empty_lines -= run
        self._hash.update(text)
        self._hash.update(_CRLF)
        self._empty_lines = (len(block) - len(text)) // 2 - 1
        self._any = True

    def digest_b64(self):
        """``bh=``: base64 of the digest (call once, after the last chunk)."""
        if self._carry:
            self._lines(self._carry + _CRLF)
            self._carry = b""
        if not self._any and not self.relaxed:
            self._hash.update(_CRLF)  # simple: an empty body is one CRLF
        return base64.b64encode(self._hash.digest())


class _Scan:
    """One pass over a CRLF message: the signed header fields and the body hash."""

    def __init__(self, names, relaxed_body):
        self.names = names
        self.fields = []  # (lowercase name, raw field with its CRLFs)
        self.body = BodyHash(relaxed_body)
        self.in_head = True
        self._keep = False
        self._carry = b""

    def feed(self, chunk):
        if not self.in_head:
            self.body.update(chunk)
            return
        buf = self._carry + chunk
        start = 0
        while True:
            end = buf.find(_CRLF, start)
            if end < 0:
                break
            line, start = buf[start:end + 2], end + 2
            if line == _CRLF:
                self.in_head = False
                break
            if line[:1] in (b" ", b"\t"):
                if self._keep:
                    name, raw = self.fields[-1]
                    self.fields[-1] = (name, raw + line)
                continue
            # "Subject : x" (obsolete syntax) is not kept: dkimpy's parser, like many
            # verifiers', takes no space before the colon -- signed, it would fail.
            name = line.split(b":", 1)[0].lower()
            self._keep = name in self.names
            if self._keep:
                self.fields.append((name, line))
        if self.in_head:
            self._carry = buf[start:]
        else:
            self._carry = b""
            if start < len(buf):
                self.body.update(buf[start:])

    def value(self, name):
        """The first kept field ``name``'s value, unfolded, as text."""
        for found, raw in self.fields:
            if found == name:
                value = raw.split(b":", 1)[1] if b":" in raw else b""
                return re.sub(rb"\r\n(?=[ \t])", b"", value).decode("utf-8", "replace")
        return None


# -- signing ---------------------------------------------------------------------------


class DKIMSigner:
    """Signs messages with the key of their From domain (see the module docstring)."""

    def __init__(self, keys, headers=DEFAULT_HEADERS, canonicalization="relaxed/relaxed",
                 clock=time.time):
        self.keys = dict(keys)
        self.headers = parse_header_names(headers)
        self.canonicalization = canonicalization.encode("ascii")
        self.relaxed_body = canonicalization.endswith("/relaxed")
        self._names = frozenset(n.lower().encode("ascii") for n in self.headers)
        self.clock = clock

    def __repr__(self):
        names = ", ".join(f"{k.selector}._domainkey.{k.domain}" for k in self.keys.values())
        return f"<DKIMSigner {names} c={self.canonicalization.decode()}>"

    def key_for(self, domain):
        """The :class:`DomainKey` of ``domain`` or of its nearest parent, or None."""
        labels = ascii_domain(domain).split(".")
        for i in range(len(labels) - 1 if len(labels) > 1 else 1):
            key = self.keys.get(".".join(labels[i:]))
            if key is not None:
                return key
        return None

    def signature(self, chunks, message_id=None):
        """The ``DKIM-Signature`` field (CRLF-ended bytes) for the message in
        ``chunks`` (an iterable of bytes, any line endings, read once), or
        ``None`` when its From domain has no key.  Raises :class:`DKIMSigningError`.
        """
        scan = _Scan(self._names, self.relaxed_body)
        key = None
        try:
            for chunk in wire.crlf_chunks(chunks):
                scan.feed(chunk)
                if not scan.in_head and key is None:
                    key = self._choose(scan, message_id)
                    if key is None:
                        return None  # unsigned: the body need not be read
            if key is None:
                scan.feed(_CRLF)  # headers only: end the header block
                key = self._choose(scan, message_id)
                if key is None:
                    return None
        except OSError as exc:
            raise DKIMSigningError(f"cannot read the message to sign it: {exc}",
                                   temporary=True) from None
        return self._sign_head(scan, key)

    def _choose(self, scan, message_id):
        sender = scan.value(b"from")
        addresses = [a for _, a in email.utils.getaddresses([sender or ""]) if "@" in a]
        domain = addresses[0].rpartition("@")[2] if addresses else None
        key = self.key_for(domain) if domain else None
        if key is None:
            log.debug("%s is not DKIM-signed: no key for the From domain %s", message_id,
                      domain or "(no From address)")
        return key

    def _sign_head(self, scan, key):
        head = b"".join(raw for _, raw in scan.fields) + _CRLF
        # Each present field once per occurrence, and From once more: an added From
        # (RFC 6376 8.15) then breaks the signature.
        include = [name for name, _ in scan.fields] + [b"from"]
        domain = key.domain.encode("ascii")
        fields = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", self.canonicalization),
                  (b"d", domain), (b"i", b"@" + domain), (b"q", b"dns/txt"),
                  (b"s", key.selector.encode("ascii")),
                  (b"t", str(int(self.clock())).encode("ascii")),
                  (b"h", b" : ".join(include)), (b"bh", scan.body.digest_b64()),
                  (b"b", b"0" * 60)]  # dkimpy's placeholder: b= folds onto its own line
        try:
            signer = _dkimpy.DKIM(head, linesep=_CRLF)
            signer.hasher = HASH_ALGORITHMS[b"rsa-sha256"]
            value = signer.gen_header(fields, include,
                                      CanonicalizationPolicy.from_c_value(self.canonicalization),
                                      b"DKIM-Signature", key.key)
        except _dkimpy.DKIMException as exc:
            raise DKIMSigningError(f"dkimpy cannot sign the header fields: {exc}") from None
        return b"DKIM-Signature: " + value

    def signed(self, data, message_id=None):
        """``data`` (bytes or a :class:`~pyramid_txmail.compose.wire.Stream`) with the
        signature in front -- bytes made wire bytes first (:func:`wire.to_wire`);
        unchanged when there is no key for it."""
        if isinstance(data, wire.Stream):
            found = self.signature(data, message_id or data.message_id)
            if found is None:
                return data
            return wire.Stream(lambda: _prepended(found, data), head=found + data.head,
                               size=None if data.size is None else data.size + len(found),
                               eightbit=data.eightbit, message_id=data.message_id,
                               head_8bit=data.head_8bit)
        data = wire.to_wire(data)
        found = self.signature((data,), message_id)
        return data if found is None else found + data


def _prepended(first, chunks):
    yield first
    yield from chunks


def sign_chunks(signer, chunks, size, message_id=None):
    """``(chunks, size)`` with the signature in front (a re-iterable ``chunks``:
    a tuple of wire bytes or a Stream); unchanged without a key for it."""
    found = signer.signature(chunks, message_id)
    if found is None:
        return chunks, size
    if isinstance(chunks, tuple):
        chunks = (found, *chunks)
    else:
        chunks = _Prepended(found, chunks)
    return chunks, None if size is None else size + len(found)


class _Prepended:
    def __init__(self, first, chunks):
        self.first, self.chunks = first, chunks

    def __iter__(self):
        return _prepended(self.first, self.chunks)
