"""Reliability suite, TLS: bad certificates and a server that stops offering STARTTLS.

Real aiosmtpd servers on 127.0.0.1 with real certificates (tests/badcerts.py):
self-signed, issued for another host name, expired, and a good one from a CA
that is not in the system store.  Each is refused -- nothing reaches the
server, the message waits in the spool with a reason naming the host and the
certificate problem -- unless the CA is configured (``mail.tls_cafile``), in
which case the good and the self-signed one are accepted and the message is
delivered.  Both STARTTLS (``mail.tls``) and implicit TLS (``mail.ssl``),
through the queue (the processor) and direct delivery (its fallback spool).
What the servers received and what the spool holds are counted
(tests/spool_tally.py) and reported to docs/RELIABILITY.md (group "tls").
"""
from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from email.message import EmailMessage

import pytest
import transaction
from pyramid.config import Configurator

from pyramid_txmail import get_mailer
from pyramid_txmail.queue.maildir import spool_admin as admin
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir.spool import Spool

from .badcerts import ACCEPTED_WITH_CA, KINDS, make_certs, server_context
from .reliability import record, runs
from .smtpserver_extra import extra_server
from .spool_tally import Tally, tally

pytestmark = pytest.mark.reliability

QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
SENDER = "sender@example.org"
RECIPIENT = "rcpt@example.org"
MODES = {"STARTTLS": "mail.tls", "implicit TLS": "mail.ssl"}
_serial = itertools.count()

#: What the refusal says, per kind: (without the CA configured, with it).
PROBLEM = {
    "trusted": ("unable to get local issuer certificate", None),
    "self-signed": ("self-signed certificate", None),
    "wrong host": ("unable to get local issuer certificate",
                   "IP address mismatch, certificate is not valid for '127.0.0.1'"),
    "expired": ("unable to get local issuer certificate", "certificate has expired"),
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("badcerts"))


def mail_settings(server, spool_path, mode, cafile=None, delivery="queue", **extra):
    settings = {"mail.host": server.host, "mail.port": str(server.port),
                MODES[mode]: "true", "mail.queue_path": str(spool_path),
                "mail.delivery": delivery, "mail.timeout": "5",
                "mail.default_sender": SENDER}
    if cafile:
        settings["mail.tls_cafile"] = cafile
    settings.update(extra)
    return settings


def commit_messages(settings, count, tag):
    """Send ``count`` messages, each in its own committed transaction, as an app does."""
    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    manager = transaction.TransactionManager(explicit=True)
    ids = []
    for _ in range(count):
        msg = EmailMessage()
        msg["To"] = RECIPIENT
        msg["Subject"] = f"{tag} message"
        number = next(_serial)
        msg["Message-ID"] = f"<tls-{number}@example.org>"
        msg.set_content(f"Message {number} of the TLS suite.\n")
        with manager:
            ids.append(get_mailer(config.registry, manager).send(msg))
    return ids


def drain(settings):
    """One processor pass over the spool, as txmail-qp makes it."""
    parsed = parse_settings(settings)
    return Processor(Spool(parsed.queue_path), None, parsed).run_once()


def deliver_through(path, server, spool_path, mode, cafile, count, tag):
    """Commit ``count`` messages for ``server`` by queue (then drain) or direct delivery."""
    settings = mail_settings(server, spool_path, mode, cafile,
                             delivery="queue" if path == "queue" else "direct")
    ids = commit_messages(settings, count, tag)
    if path == "queue":
        drain(settings)
    return ids


# -- certificates -----------------------------------------------------------------------

@pytest.mark.parametrize("with_ca", [False, True], ids=["no CA", "CA configured"])
@pytest.mark.parametrize("kind", KINDS)
def test_certificate_is_refused_unless_its_ca_is_configured(kind, with_ca, certs, tmp_path,
                                                            make_smtp_server, caplog):
    count = runs(1, 10)
    accepted = with_ca and kind in ACCEPTED_WITH_CA
    problem = PROBLEM[kind][with_ca] or PROBLEM[kind][0]
    cafile = certs[kind]["cafile"] if with_ca else None
    total = Tally()
    cases = 0
    for mode, path in itertools.product(MODES, ("queue", "direct")):
        cases += 1
        server = extra_server(make_smtp_server, tls_context=server_context(certs[kind]),
                              implicit_tls=mode == "implicit TLS")
        spool_path = tmp_path / f"spool-{mode}-{path}".replace(" ", "-")
        with caplog.at_level(logging.WARNING, logger="pyramid_txmail"):
            ids = deliver_through(path, server, spool_path, mode, cafile, count, kind)
        found = tally(Spool(str(spool_path)), [server], ids)
        total.add(found)
        assert found.lost == 0 and found.duplicated == 0, found.where
        if accepted:
            assert found.delivered == count, (mode, path, found.where)
            assert all(m.tls for m in server.messages)
            continue
        # refused: nothing reached the server, every message waits with the reason
        assert server.messages == [], (mode, path)
        waiting_in = "deferred" if path == "queue" else "new"
        assert set(found.where.values()) == {waiting_in}, (mode, path, found.where)
        reason = (f"TLS certificate of 127.0.0.1:{server.port} could not be verified: "
                  f"{problem}")
        for message_id in ids:
            assert any(reason in text for text in found.reasons[message_id]), \
                (mode, path, found.reasons[message_id])
        assert reason in caplog.text
        if path == "queue":  # a retry pass refuses it again: never delivered
            drain(mail_settings(server, spool_path, mode, cafile,
                                **{"mail.retry_initial": "1s"}))
            assert server.messages == []
    verdict = "delivered" if accepted else "refused, deferred with the reason"
    record("tls", f"{kind} certificate, {'CA configured' if with_ca else 'no CA'}: {verdict}",
           runs=cases, bad_inputs=0 if accepted else total.messages,
           detail="STARTTLS and implicit TLS, queue and direct delivery",
           **total.counts())


def test_txmail_qp_refuses_an_untrusted_certificate_then_delivers_with_the_ca(
        certs, tmp_path, make_smtp_server):
    """The console script: exit 0, the message deferred with the reason, never sent."""
    server = extra_server(make_smtp_server, tls_context=server_context(certs["self-signed"]))
    spool_path = tmp_path / "spool"
    ids = commit_messages(mail_settings(server, spool_path, "STARTTLS"), 1, "qp")
    ini = tmp_path / "app.ini"
    lines = ["[app:main]", "use = egg:pyramid_txmail"] + [
        f"{k} = {v}" for k, v in mail_settings(server, spool_path, "STARTTLS").items()]
    ini.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([QP, str(ini), "--no-app"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (f"TLS certificate of 127.0.0.1:{server.port} could not be verified: "
            "self-signed certificate; nothing sent") in proc.stderr
    found = tally(Spool(str(spool_path)), [server], ids)
    assert found.where == {ids[0]: "deferred"} and server.messages == []
    # the operator configures the certificate: the retry is delivered, over TLS
    ini.write_text(ini.read_text() + f"mail.tls_cafile = {certs['self-signed']['cafile']}\n"
                   "mail.retry_initial = 1s\n")
    spool = Spool(str(spool_path))
    [name] = spool.names("deferred")
    admin.retry(spool, admin.find(spool, name))  # due now (txmail-queue retry)
    proc = subprocess.run([QP, str(ini), "--no-app"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    found = tally(spool, [server], ids)
    assert found.where == {ids[0]: "delivered"}
    assert [m.tls for m in server.messages] == [True]
    record("tls", "txmail-qp: self-signed certificate refused, delivered once configured",
           runs=1, detail="console script, STARTTLS", **found.counts())


# -- a server that stops offering STARTTLS ------------------------------------------------

def fickle_starttls_server(make_smtp_server, context):
    """Offers STARTTLS on its first connection only, like a path with a stripping middlebox.

    The test server's ``Received.tls`` records, per message, whether it came over TLS.
    """
    server = extra_server(make_smtp_server, tls_context=context)
    handler = server.handler
    first = []
    parent = type(handler).handle_EHLO

    async def handle_EHLO(server_, session, envelope, hostname, responses):
        if not first:
            first.append(server_)  # the aiosmtpd protocol object of the first connection
        handler.script["ehlo-without"] = [] if server_ is first[0] else ["STARTTLS"]
        return await parent(handler, server_, session, envelope, hostname, responses)

    handler.handle_EHLO = handle_EHLO
    return server


@pytest.mark.parametrize("path", ["queue", "direct"])
def test_a_server_that_stops_offering_starttls_never_gets_plaintext(path, certs, tmp_path,
                                                                    make_smtp_server):
    count = runs(4, 40)
    server = fickle_starttls_server(make_smtp_server, server_context(certs["trusted"]))
    spool_path = tmp_path / "spool"
    cafile = certs["trusted"]["cafile"]
    # one message per connection: the first gets STARTTLS, every later one does not
    settings = mail_settings(server, spool_path, "STARTTLS", cafile,
                             delivery="queue" if path == "queue" else "direct",
                             **{"mail.connection_max_messages": "1", "mail.workers": "1"})
    ids = commit_messages(settings, count, "fickle")
    if path == "queue":
        drain(settings)
    found = tally(Spool(str(spool_path)), [server], ids)
    assert found.lost == 0 and found.duplicated == 0
    assert [m.tls for m in server.messages] == [True], "a message went out in plaintext"
    assert found.delivered == 1 and found.where[ids[0]] == "delivered"
    reason = (f"STARTTLS required (mail.tls = true) but 127.0.0.1:{server.port} does not "
              "offer it; not sent in plaintext")
    for message_id in ids[1:]:
        assert found.where[message_id] == ("deferred" if path == "queue" else "new")
        assert reason in found.reasons[message_id], found.reasons[message_id]
    if path == "queue":  # retried: still refused, still nothing in plaintext
        drain(dict(settings, **{"mail.retry_initial": "1s"}))
        spool = Spool(str(spool_path))
        for name in spool.names("deferred"):  # due now (txmail-queue retry)
            admin.retry(spool, admin.find(spool, name))
        drain(settings)
        assert [m.tls for m in server.messages] == [True]
        found = tally(Spool(str(spool_path)), [server], ids)
        assert found.lost == 0 and found.held == count - 1
    record("tls", f"server stops offering STARTTLS, mail.tls = true ({path} delivery)",
           runs=1, detail="first connection offers STARTTLS, later ones do not; "
           "plaintext copies received: 0", **found.counts())


def test_reconnecting_to_a_server_that_stopped_offering_starttls_sends_nothing(
        certs, make_smtp_server):
    """The reused connection dies while idle; the reconnect finds no STARTTLS."""
    from pyramid_txmail.relay.smtp import SMTPTransport

    count = runs(3, 30)
    server = fickle_starttls_server(make_smtp_server, server_context(certs["trusted"]))
    transport = SMTPTransport(server.host, server.port, tls=True, timeout=5,
                              cafile=certs["trusted"]["cafile"])
    results = []
    try:
        for number in range(count):
            data = (f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: reuse\r\n"
                    f"Message-ID: <reuse-{number}@example.org>\r\n\r\nbody\r\n").encode()
            results.append(transport.deliver(SENDER, [RECIPIENT], data))
            server.handler.close_connections()  # as an idle timeout would
    finally:
        transport.close()
    assert results[0].ok
    assert [m.tls for m in server.messages] == [True], "a message went out in plaintext"
    reason = (f"STARTTLS required (mail.tls = true) but 127.0.0.1:{server.port} does not "
              "offer it; not sent in plaintext")
    for result in results[1:]:
        (r,) = result.results
        assert r.status == "temporary" and r.text == reason, r
    record("tls", "server stops offering STARTTLS, reconnect of a reused connection",
           runs=1, messages=count, delivered=1, held=count - 1,
           detail="the transport reconnects after the server closed the idle connection; "
           "plaintext copies received: 0")
