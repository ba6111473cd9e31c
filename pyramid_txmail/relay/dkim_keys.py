"""DKIM keys and the dkim_* settings: read, checked and parsed once, at start-up.

Why at start-up: a key that cannot be used must stop ``config.include`` and
``txmail-qp`` with an error naming the key and the file, not surface at the
first send -- or, worse, let mail go out unsigned.  Why so strict about the
file: a signing key others can read lets them sign mail as the domain, so it
must be a regular file owned by the process's user with mode 0600 or 0400
(as OpenSSH insists for its private keys).
"""
from __future__ import annotations

import dataclasses
import os
import re
import stat

__all__ = ["DEFAULT_HEADERS", "UNSIGNABLE", "CANONICALIZATIONS", "MIN_KEY_BITS",
           "DKIMConfigError", "DomainKey", "load_key", "ascii_domain", "parse_header_names",
           "parse_domains", "check_domain", "check_selector"]

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


class DKIMConfigError(ValueError):
    """A DKIM setting is wrong: ``key`` (without the prefix), ``value`` and why."""

    def __init__(self, key, value, why):
        super().__init__(f"{key} = {value!r}: {why}")
        self.key, self.value, self.why = key, value, why


@dataclasses.dataclass(frozen=True)
class DomainKey:
    """One signing domain: its selector and the parsed RSA key (never shown)."""

    domain: str
    selector: str
    path: str
    bits: int
    key: dict = dataclasses.field(repr=False, compare=False)


def load_key(path):
    """The parsed RSA private key in the PEM file ``path``, and its size in bits.

    Refused (ValueError saying why) unless the file is a regular file owned by
    this process's user with mode 0600 or 0400: a signing key others can read
    lets them sign mail as the domain.  Read through one descriptor, so the
    file checked is the file read.
    """
    try:
        from dkim.crypto import parse_pem_private_key
    except ImportError:  # pragma: no cover - install_requires has it
        raise ValueError("DKIM signing needs the dkimpy package, which is not installed "
                         "(pip install dkimpy)") from None
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


def ascii_domain(domain):
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


def check_domain(domain):
    if not _DOMAIN.match(ascii_domain(domain)):
        raise ValueError(f"{domain!r} is not a domain name")


def check_selector(selector):
    if not _SELECTOR.match(selector):
        raise ValueError(f"{selector!r} is not a selector (letters, digits, - and _, "
                         "dot-separated)")
