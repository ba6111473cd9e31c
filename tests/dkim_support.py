"""DKIM keys and a verifier whose DNS is a dict, for the DKIM tests.

Keys are made with ``cryptography`` (trustme's dependency, so in the testing
extra already) and written 0600 like an operator would; the verifier is
dkimpy's own, its DNS look-up answered from :class:`KeyRecords` (``dnsfunc=``)
instead of the network.
"""
from __future__ import annotations

import base64
import logging
import os
import re

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

_KEYS = {}


def private_pem(bits=2048, seed=0):
    """A PEM RSA private key (PKCS#8) and the DER of its public key; made once per
    (bits, seed) in a test run, since key generation is the slow part."""
    if (bits, seed) not in _KEYS:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        _KEYS[(bits, seed)] = (pem, der)
    return _KEYS[(bits, seed)]


def write_key(directory, name="dkim.pem", bits=2048, seed=0, mode=0o600):
    """Write a private key file; returns (path, public DER)."""
    pem, der = private_pem(bits, seed)
    path = os.path.join(str(directory), name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, mode)
    return path, der


class KeyRecords(dict):
    """``{(selector, domain): public DER}`` answering dkimpy's TXT look-ups."""

    def publish(self, selector, domain, der):
        self[(selector, domain)] = der
        return self

    def __call__(self, name, timeout=5):
        text = name.decode("ascii") if isinstance(name, bytes) else name
        self.asked = getattr(self, "asked", []) + [text]
        selector, _, domain = text.rstrip(".").partition("._domainkey.")
        der = self.get((selector, domain))
        if der is None:
            return None
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def verify(message, records, index=0):
    """dkimpy's verdict on the ``index``-th DKIM-Signature of ``message``, and why."""
    logger = logging.getLogger("dkim_test_verify")
    d = dkim.DKIM(message, logger=logger)
    try:
        ok = d.verify(idx=index, dnsfunc=records)
    except dkim.DKIMException as exc:
        return False, str(exc)
    return ok, d.signature_fields


def signature_tags(message):
    """The tags of the first DKIM-Signature field of ``message`` (str keys and values)."""
    if not message.startswith(b"DKIM-Signature:"):
        message = message[message.find(b"\nDKIM-Signature:") + 1:]
    if not message.startswith(b"DKIM-Signature:"):
        return None
    field = re.match(rb"DKIM-Signature:(.*?)\r?\n(?![ \t])", message, re.DOTALL).group(1)
    tags = dkim.util.parse_tag_value(field)
    return {k.decode(): b"".join(v.split()).decode() for k, v in tags.items()}
