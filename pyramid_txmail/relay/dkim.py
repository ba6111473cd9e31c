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
import dataclasses
import email.utils
import hashlib
import os
import re
import stat
import time

from ..util.printable import get_logger
from ..compose import wire

try:  # dkimpy: pure Python, and its one dependency (dnspython) email-validator has too
    import dkim as _dkimpy
    from dkim.canonicalization import CanonicalizationPolicy
    from dkim.crypto import HASH_ALGORITHMS, parse_pem_private_key
except ImportError:  # pragma: no cover - install_requires has it
    _dkimpy = None

__all__ = ["DEFAULT_HEADERS", "CANONICALIZATIONS", "BodyHash", "DKIMSigner", "DomainKey",
           "DKIMConfigError", "DKIMSigningError", "load_key", "parse_header_names",
           "parse_domains", "signer_from_settings"]

log = get_logger("pyramid_txmail.dkim")

#: Signed when present (RFC 6376 5.4.1's list, trimmed to what transactional mail
#: carries, plus the one-click unsubscribe fields Gmail and Yahoo ask bulk senders for).
DEFAULT_HEADERS = ("From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID",
                   "In-Reply-To", "References", "MIME-Version", "Content-Type",
                   "Content-Transfer-Encoding", "List-Id", "List-Unsubscribe",
                   "List-Unsubscribe-Post")
#: Never signed (RFC 6376 5.4, dkimpy's SHOULD_NOT): relays add or drop them on the way.
UNSIGNABLE = ("return-path", "received", "comments", "keywords", "bcc", "resent-bcc",
              "dkim-signature")
CANONICALIZATIONS = ("relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple")
#: RFC 8301 3.2: verifiers must refuse RSA keys under 1024 bits (dkimpy does).
MIN_KEY_BITS = 1024
_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 ftext
_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)*"
                     r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$")
_SELECTOR = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?)*$")
_WSP_RUN = re.compile(rb"[ \t]+")
_CRLF = b"\r\n"


class DKIMConfigError(ValueError):
    """A DKIM setting is wrong: ``key`` (without the prefix), ``value`` and why."""

    def __init__(self, key, value, why):
        super().__init__(f"{key} = {value!r}: {why}")
        self.key, self.value, self.why = key, value, why


class DKIMSigningError(Exception):
    """A message could not be signed; ``temporary`` when a retry may succeed
    (the queue file could not be read), else permanent (dkimpy refused it)."""

    def __init__(self, text, temporary=False):
        super().__init__(text)
        self.temporary = temporary


# -- configuration -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DomainKey:
    """One signing domain: its selector and the parsed RSA key (never shown)."""

    domain: str
    selector: str
    path: str
    bits: int
    key: dict = dataclasses.field(repr=False, compare=False)


def _require_dkimpy():
    if _dkimpy is None:
        raise DKIMConfigError("dkim_private_key", None, "DKIM signing needs the dkimpy "
                              "package, which is not installed (pip install dkimpy)")


def load_key(path):
    """The parsed RSA private key in the PEM file ``path``, and its size in bits.

    Refused (ValueError saying why) unless the file is a regular file owned by
    this process's user with mode 0600 or 0400: a signing key others can read
    lets them sign mail as the domain.  Read through one descriptor, so the
    file checked is the file read.
    """
    _require_dkimpy()
    if not os.path.isabs(path):
        raise ValueError("a relative path would mean a different file for each process's "
                         "working directory; give an absolute path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ValueError(f"cannot read the key file: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # a directory, a FIFO (O_NONBLOCK: no hang)
            raise ValueError("the key file is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode not in (0o600, 0o400):
            raise ValueError(f"the key file has mode {mode:04o}; a private key must be "
                             "readable by its owner only (chmod 600 or 400)")
        if info.st_uid != os.geteuid():
            raise ValueError(f"the key file is owned by uid {info.st_uid}, not by this "
                             f"process's user (uid {os.geteuid()}); chown it to the user "
                             "that sends the mail")
        try:
            pem = os.read(fd, 1 << 20)  # a PEM key is a few KiB
        except OSError as exc:
            raise ValueError(f"cannot read the key file: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        key = parse_pem_private_key(pem.replace(b"\r\n", b"\n"))
    except Exception:  # dkimpy's UnparsableKeyError, binascii.Error, ASN.1 errors...
        raise ValueError("the file is not a PEM RSA private key (PKCS#1 'BEGIN RSA "
                         "PRIVATE KEY' or PKCS#8 'BEGIN PRIVATE KEY')") from None
    bits = key["modulus"].bit_length()
    if bits < MIN_KEY_BITS:
        raise ValueError(f"the key has {bits} bits; receivers refuse RSA keys under "
                         f"{MIN_KEY_BITS} bits (RFC 8301), use 2048")
    return key, bits


def _ascii_domain(domain):
    """A domain as d= and the From lookup compare it: lower case, IDNA A-labels."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def parse_header_names(value):
    """``"From, To, Subject"`` (commas or whitespace) → a tuple of names; From is
    always among them (RFC 6376 5.4), and names relays change are refused."""
    if isinstance(value, (list, tuple)):
        names = [str(v).strip() for v in value]
    else:
        names = re.split(r"[\s,]+", str(value).strip())
    names = [n.rstrip(":") for n in names if n]
    for name in names:
        if not _HEADER_NAME.match(name):
            raise ValueError(f"{name!r} is not a header field name")
        if name.lower() in UNSIGNABLE:
            raise ValueError(f"{name} must not be signed: relays add or remove it on the "
                             "way, which would break the signature")
    if "from" not in (n.lower() for n in names):
        names.insert(0, "From")
    return tuple(dict.fromkeys(names))


def parse_domains(value):
    """``mail.dkim_domains``: one ``domain selector /path/to/key.pem`` a line (or
    separated by commas) → ``((domain, selector, path), ...)``; keys not read yet."""
    entries = []
    for line in re.split(r"[\n,]+", str(value)):
        words = line.split()
        if not words:
            continue
        if len(words) != 3:
            raise ValueError(f"{line.strip()!r}: expected 'domain selector /path/to/key.pem'")
        entries.append(tuple(words))
    return tuple(entries) or None


def _check_domain(domain):
    if not _DOMAIN.match(_ascii_domain(domain)):
        raise ValueError(f"{domain!r} is not a domain name")


def _check_selector(selector):
    if not _SELECTOR.match(selector):
        raise ValueError(f"{selector!r} is not a selector (letters, digits, - and _, "
                         "dot-separated)")


def signer_from_settings(values):
    """The :class:`DKIMSigner` for the parsed ``mail.*`` values (a dict), or ``None``
    when no DKIM key is configured.  Every key file is read and parsed now, so a
    bad one stops the start-up (:class:`DKIMConfigError` naming key and file)."""
    single = [n for n in ("dkim_private_key", "dkim_selector", "dkim_domain") if values.get(n)]
    domains = values.get("dkim_domains") or ()
    if not single and not domains:
        for name in ("dkim_headers", "dkim_canonicalization"):
            if values.get(name):
                raise DKIMConfigError(name, values[name], "no DKIM key is configured "
                                      "(mail.dkim_private_key or mail.dkim_domains)")
        return None
    _require_dkimpy()
    entries = []
    if single:
        missing = [n for n in ("dkim_private_key", "dkim_selector", "dkim_domain")
                   if n not in single]
        if missing:
            raise DKIMConfigError(single[0], values[single[0]], "DKIM signing also needs "
                                  + " and ".join("mail." + n for n in missing))
        for name, check in (("dkim_domain", _check_domain), ("dkim_selector", _check_selector)):
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
            _check_domain(domain)
            _check_selector(selector)
            key, bits = load_key(path)
        except ValueError as exc:
            raise DKIMConfigError(key_name, shown, f"{exc} (key file {path})") from None
        ascii_domain = _ascii_domain(domain)
        if ascii_domain in keys:
            raise DKIMConfigError(key_name, shown, f"a second key for {ascii_domain}")
        keys[ascii_domain] = DomainKey(ascii_domain, selector, path, bits, key)
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
            block = _WSP_RUN.sub(b" ", block).replace(b" \r\n", _CRLF)
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
            name = line.split(b":", 1)[0].rstrip(b" \t").lower()
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
        labels = _ascii_domain(domain).split(".")
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
