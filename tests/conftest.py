"""Shared fixtures: TLS certificates made per test session, real SMTP servers."""
from __future__ import annotations

import ssl

import pytest
import trustme

from .pg_support import pg_cluster, pg_url, sqlite_url  # noqa: F401  (fixtures)
from .reliability import load_hypothesis_profile
from .smtpserver import SMTPServer

load_hypothesis_profile()  # before any test module makes its hypothesis settings


@pytest.fixture(scope="session")
def tls_ca():
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(tls_ca, tmp_path_factory):
    """Paths of a CA bundle and a server certificate for 127.0.0.1/localhost."""
    directory = tmp_path_factory.mktemp("tls")
    cert = tls_ca.issue_cert("127.0.0.1", "localhost")
    files = {"cafile": directory / "ca.pem", "server": directory / "server.pem"}
    tls_ca.cert_pem.write_to_path(str(files["cafile"]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    return {k: str(v) for k, v in files.items()}


@pytest.fixture(scope="session")
def server_tls_context(tls_files):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_files["server"])
    return ctx


@pytest.fixture
def smtp_server():
    """A plain SMTP server on 127.0.0.1 that accepts everything."""
    with SMTPServer() as server:
        yield server


@pytest.fixture
def make_smtp_server():
    """Factory: ``make_smtp_server(script, tls_context=..., auth=...)``; all stopped at teardown."""
    servers = []

    def make(script=None, **kwargs):
        server = SMTPServer(script, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
