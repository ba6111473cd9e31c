"""Server certificates that a client must refuse, made per test session.

- ``trusted``: issued by a trustme CA for 127.0.0.1 (refused unless that CA
  is ``mail.tls_cafile``: it is not in the system store);
- ``self-signed``: made with ``cryptography``, its own issuer (accepted only
  when the certificate itself is configured as ``mail.tls_cafile``);
- ``wrong host``: issued by the CA for ``mail.example.org`` while the client
  connects to 127.0.0.1 (refused even with the CA configured);
- ``expired``: issued by the CA for 127.0.0.1, valid until yesterday
  (refused even with the CA configured).

:func:`make_certs` writes the PEM files and returns, per kind, the server's
key-and-chain file and the file to configure as ``mail.tls_cafile``.
"""
from __future__ import annotations

import datetime
import ipaddress
import ssl

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"
KINDS = ("trusted", "self-signed", "wrong host", "expired")
#: Kinds that a configured CA makes acceptable.
ACCEPTED_WITH_CA = ("trusted", "self-signed")


def _self_signed(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    chain, cafile = directory / "self-signed.pem", directory / "self-signed-cert.pem"
    chain.write_bytes(key_pem + cert_pem)
    cafile.write_bytes(cert_pem)
    return {"server": str(chain), "cafile": str(cafile)}


def make_certs(directory):
    """``{kind: {"server": key+chain PEM path, "cafile": path}}`` for every kind."""
    ca = trustme.CA()
    cafile = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    now = datetime.datetime.now(datetime.timezone.utc)
    issued = {
        "trusted": ca.issue_cert(HOST),
        "wrong host": ca.issue_cert("mail.example.org"),
        "expired": ca.issue_cert(HOST, not_before=now - datetime.timedelta(days=30),
                                 not_after=now - datetime.timedelta(days=1)),
    }
    files = {"self-signed": _self_signed(directory)}
    for kind, cert in issued.items():
        path = directory / (kind.replace(" ", "-") + ".pem")
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        files[kind] = {"server": str(path), "cafile": str(cafile)}
    return files


def server_context(files):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files["server"])
    return context
