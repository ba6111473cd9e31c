"""pyramid_txmail.relay.smtp against real SMTP servers on 127.0.0.1 (aiosmtpd), no mocks."""
from __future__ import annotations

import base64
import email
import email.message
import email.policy
import logging
import socket

import pytest
from zope.interface.verify import verifyObject

from pyramid_txmail.interfaces import IMailer
from pyramid_txmail.relay.result import PERMANENT, SENT, TEMPORARY
from pyramid_txmail.settings import MailSettings
from pyramid_txmail.relay.smtp import SMTPDeliveryError, SMTPTransport, _is_loopback

from .smtpserver import free_port
from .smtpserver_extra import extra_server

MSG = (b"From: a@example.com\nTo: b@example.com\nSubject: hi\n"
       b"Message-ID: <1@example.com>\n\nhello\n.a line starting with a dot\n")
CRLF_MSG = MSG.replace(b"\n", b"\r\n")
USER, PASSWORD = "mailuser", "s3cret-Pa55"
EIGHTBIT = (b"From: a@example.com\nSubject: x\nMIME-Version: 1.0\n"
            b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            + "gr\u00fc\u00dfe\n".encode())


@pytest.fixture
def transports():
    """Factory for transports to a server (or host/port); all closed at teardown."""
    made = []

    def make(server=None, *, host="127.0.0.1", port=None, **kwargs):
        kwargs.setdefault("timeout", 5)
        kwargs.setdefault("local_hostname", "client.example")
        if server is not None:
            host, port = server.host, server.port
        transport = SMTPTransport(host, port, **kwargs)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


@pytest.fixture
def server(make_smtp_server):
    return extra_server(make_smtp_server)


def statuses(result):
    return [(r.recipient, r.status, r.code) for r in result.results]


# -- the plain path ---------------------------------------------------------------

def test_plain_send_arrives_with_crlf_and_exact_envelope(server, transports):
    transport = transports(server)
    result = transport.deliver("a@example.com", ["b@example.com", "c@example.com"], MSG)
    assert result.ok
    assert result.message_id == "<1@example.com>"
    assert statuses(result) == [("b@example.com", SENT, 250), ("c@example.com", SENT, 250)]
    (received,) = server.messages
    assert received.mail_from == "a@example.com"
    assert received.rcpt_tos == ["b@example.com", "c@example.com"]
    assert received.data == CRLF_MSG  # dot-stuffed on the wire, unstuffed by the server
    assert not received.tls and received.login is None
    assert f"SIZE={len(CRLF_MSG)}" in received.mail_options
    assert "BODY=8BITMIME" not in received.mail_options


def test_8bit_message_is_sent_as_8bitmime(server, transports):
    data = EIGHTBIT
    result = transports(server).deliver("a@example.com", ["b@example.com"], data)
    assert result.ok
    (received,) = server.messages
    assert "BODY=8BITMIME" in received.mail_options
    assert received.data == data.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("script", [{"ehlo-without": ["8BITMIME", "SIZE"]},
                                    {"ehlo": "502 5.5.1 EHLO not implemented"}])
def test_8bit_message_to_a_server_without_8bitmime_goes_7bit(make_smtp_server, transports,
                                                             script):
    server = extra_server(make_smtp_server, script)
    assert transports(server).deliver("a@example.com", ["b@example.com"], EIGHTBIT).ok
    (received,) = server.messages
    assert received.data.isascii()
    assert received.mail_options == []  # neither BODY=8BITMIME nor SIZE=
    parsed = email.message_from_bytes(received.data, policy=email.policy.default)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_content().replace("\r\n", "\n") == "gr\u00fc\u00dfe\n"


def test_long_lines_bare_lf_and_cr_arrive_as_crlf_within_998(server, transports):
    text = "x" * 3000 + "\nsecond\rthird\r\nfourth " + "\u00e9" * 700 + "\n"
    data = (b"From: a@example.com\nSubject: " + b"word " * 300 + b"\nMIME-Version: 1.0\n"
            b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            + text.encode())
    assert transports(server).deliver("a@example.com", ["b@example.com"], data).ok
    (received,) = server.messages
    wire = received.data
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")
    assert max(map(len, wire.split(b"\r\n"))) <= 998
    before = email.message_from_bytes(data, policy=email.policy.default)
    after = email.message_from_bytes(wire, policy=email.policy.default)
    assert str(after["Subject"]) == str(before["Subject"])
    assert after.get_content().replace("\r\n", "\n") == \
        before.get_content().replace("\r\n", "\n").replace("\r", "\n")


def test_connection_is_reused_with_rset_between_messages(server, transports):
    transport = transports(server)
    for i in range(3):
        data = MSG.replace(b"<1@", f"<{i}@".encode())
        assert transport.deliver("a@example.com", ["b@example.com"], data).ok
    assert transport.connections_opened == 1
    assert server.handler.connections == 1
    assert [m.data.count(f"<{i}@".encode()) for i, m in enumerate(server.messages)] == [1, 1, 1]
    assert server.handler.commands == ["EHLO", "MAIL", "RCPT", "DATA",
                                       "RSET", "MAIL", "RCPT", "DATA",
                                       "RSET", "MAIL", "RCPT", "DATA"]


def test_reconnects_once_when_the_server_dropped_an_idle_connection(server, transports):
    transport = transports(server)
    assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    server.handler.close_connections()
    second = MSG.replace(b"hello", b"second")
    result = transport.deliver("a@example.com", ["b@example.com"], second)
    assert result.ok
    assert transport.connections_opened == 2
    assert server.handler.connections == 2
    assert [m.data for m in server.messages] == [CRLF_MSG, second.replace(b"\n", b"\r\n")]


def test_close_quits_and_context_manager_closes(server, transports):
    with transports(server) as transport:
        assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    assert server.handler.commands[-1] == "QUIT"
    # a closed transport opens a new connection when used again
    assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    assert transport.connections_opened == 2


# -- replies ----------------------------------------------------------------------

@pytest.mark.parametrize("reply,status", [
    ("451 4.3.0 try later", TEMPORARY),
    ("452 4.3.1 insufficient storage", TEMPORARY),
    ("550 5.7.1 sender rejected", PERMANENT),
    ("552 5.3.4 message too big", PERMANENT),
    ("554 5.7.1 no thanks", PERMANENT),
])
def test_mail_from_reply_applies_to_every_recipient(make_smtp_server, transports,
                                                    reply, status):
    server = extra_server(make_smtp_server, {"mail": [reply, "250 OK"]})
    transport = transports(server)
    result = transport.deliver("a@example.com", ["b@example.com", "c@example.com"], MSG)
    code = int(reply[:3])
    assert statuses(result) == [("b@example.com", status, code),
                                ("c@example.com", status, code)]
    assert reply[4:] in result.results[0].text and "MAIL FROM" in result.results[0].text
    assert "RCPT" not in server.handler.commands and not server.messages
    # the connection stays usable for the next message
    assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    assert transport.connections_opened == 1


def test_rcpt_replies_per_recipient_partial_refusal(make_smtp_server, transports):
    rcpt = {"ok@example.com": "250 OK", "busy@example.com": "451 4.2.1 busy",
            "many@example.com": "452 4.5.3 too many recipients",
            "gone@example.com": "550 5.1.1 no such user",
            "limit@example.com": "552 5.5.3 too many recipients",
            "bad@example.com": "554 5.7.1 rejected"}
    server = extra_server(make_smtp_server, {"rcpt": rcpt})
    result = transports(server).deliver("a@example.com", list(rcpt), MSG)
    assert statuses(result) == [
        ("ok@example.com", SENT, 250),
        ("busy@example.com", TEMPORARY, 451),
        ("many@example.com", TEMPORARY, 452),
        ("gone@example.com", PERMANENT, 550),
        ("limit@example.com", TEMPORARY, 552),  # RFC 5321 4.5.3.1.10: 552 to RCPT = 452
        ("bad@example.com", PERMANENT, 554),
    ]
    assert "no such user" in result.results[3].text
    (received,) = server.messages
    assert received.rcpt_tos == ["ok@example.com"]


def test_no_recipient_accepted_means_rset_and_no_data(make_smtp_server, transports):
    server = extra_server(make_smtp_server, {"rcpt": "550 5.1.1 no such user"})
    transport = transports(server)
    result = transport.deliver("a@example.com", ["b@example.com", "c@example.com"], MSG)
    assert [r.status for r in result.results] == [PERMANENT, PERMANENT]
    assert server.handler.commands == ["EHLO", "MAIL", "RCPT", "RCPT", "RSET"]
    assert not server.messages


@pytest.mark.parametrize("reply,status", [
    ("250 2.0.0 queued as ABC123", SENT),
    ("451 4.3.0 local error", TEMPORARY),
    ("452 4.3.1 out of space", TEMPORARY),
    ("552 5.3.4 too big", PERMANENT),
    ("554 5.6.0 content rejected", PERMANENT),
])
def test_final_dot_reply_applies_to_accepted_recipients(make_smtp_server, transports,
                                                        reply, status):
    server = extra_server(make_smtp_server, {
        "data": reply, "rcpt": {"gone@example.com": "550 5.1.1 no such user"}})
    result = transports(server).deliver(
        "a@example.com", ["b@example.com", "gone@example.com", "c@example.com"], MSG)
    code = int(reply[:3])
    assert statuses(result) == [("b@example.com", status, code),
                                ("gone@example.com", PERMANENT, 550),
                                ("c@example.com", status, code)]
    assert reply[4:] in result.results[0].text
    assert len(server.messages) == (1 if status == SENT else 0)


@pytest.mark.parametrize("reply,status", [
    ("451 4.3.0 not now", TEMPORARY),
    ("554 5.5.1 no valid recipients", PERMANENT),
])
def test_reply_to_the_data_command(make_smtp_server, transports, reply, status):
    server = extra_server(make_smtp_server, {"data-command": reply})
    transport = transports(server)
    result = transport.deliver("a@example.com", ["b@example.com"], MSG)
    assert statuses(result) == [("b@example.com", status, int(reply[:3]))]
    assert "DATA" in result.results[0].text
    assert not server.messages
    assert transport.deliver("a@example.com", ["c@example.com"], MSG).results[0].status == status


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data-command"])
def test_dropped_before_the_message_data(make_smtp_server, transports, stage):
    server = extra_server(make_smtp_server, {"drop": stage})
    result = transports(server).deliver("a@example.com", ["b@example.com"], MSG)
    (r,) = result.results
    assert (r.status, r.code) == (TEMPORARY, None)
    assert f"127.0.0.1:{server.port}" in r.text and "twice" not in r.text
    assert not server.messages


@pytest.mark.parametrize("stage,stored", [("data-before", 0), ("data-after", 1)])
def test_dropped_after_the_final_dot_may_duplicate(make_smtp_server, transports,
                                                   stage, stored):
    server = extra_server(make_smtp_server, {"drop": stage})
    transport = transports(server)
    result = transport.deliver("a@example.com", ["b@example.com"], MSG)
    (r,) = result.results
    assert (r.status, r.code) == (TEMPORARY, None)
    assert "may have accepted it" in r.text and "twice" in r.text
    assert len(server.messages) == stored
    # the next message gets a fresh connection; the first is not sent again
    server.handler.script.pop("drop")
    assert transport.deliver("a@example.com", ["c@example.com"], MSG).ok
    assert transport.connections_opened == 2
    assert [m.rcpt_tos for m in server.messages][stored:] == [["c@example.com"]]


def test_421_to_rcpt_ends_the_session(make_smtp_server, transports):
    server = extra_server(make_smtp_server, {"rcpt": {
        "b@example.com": "250 OK", "c@example.com": "421 4.3.2 shutting down"}})
    transport = transports(server)
    result = transport.deliver(
        "a@example.com", ["b@example.com", "c@example.com", "d@example.com"], MSG)
    assert [(r.status, r.code) for r in result.results] == [(TEMPORARY, 421)] * 3
    assert "DATA" not in server.handler.commands and not server.messages


# -- network failures ----------------------------------------------------------------

def test_connection_refused_is_temporary(transports):
    port = free_port()
    transport = transports(port=port)
    result = transport.deliver("a@example.com", ["b@example.com", "c@example.com"], MSG)
    assert [(r.status, r.code) for r in result.results] == [(TEMPORARY, None)] * 2
    assert f"127.0.0.1:{port}" in result.results[0].text
    assert "refused" in result.results[0].text
    assert transport.connections_opened == 0


@pytest.mark.parametrize("stage,duplicate", [("ehlo", False), ("mail", False), ("data", True)])
def test_server_slower_than_the_timeout_is_temporary(make_smtp_server, transports,
                                                      stage, duplicate):
    server = extra_server(make_smtp_server, {"delay": {stage: 2.0}})
    # data_timeout: the final reply is waited for longer (RFC 5321 4.5.3.2.6)
    result = transports(server, timeout=0.5, data_timeout=0.5).deliver(
        "a@example.com", ["b@example.com"], MSG)
    (r,) = result.results
    assert (r.status, r.code) == (TEMPORARY, None)
    assert "within 0.5s" in r.text
    assert ("twice" in r.text) is duplicate


# -- TLS -----------------------------------------------------------------------------------

def test_starttls_required_and_offered(make_smtp_server, transports, server_tls_context,
                                      tls_files):
    server = extra_server(make_smtp_server, tls_context=server_tls_context)
    transport = transports(server, tls=True, cafile=tls_files["cafile"])
    assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    assert transport.deliver("a@example.com", ["c@example.com"], MSG).ok
    assert [m.tls for m in server.messages] == [True, True]
    assert transport.connections_opened == 1
    assert server.handler.connections == 2  # EHLO before and after STARTTLS


def test_starttls_required_but_not_offered_sends_nothing(server, transports):
    result = transports(server, tls=True).deliver("a@example.com", ["b@example.com"], MSG)
    (r,) = result.results
    assert (r.status, r.code) == (TEMPORARY, None)
    assert r.text == (f"STARTTLS required (mail.tls = true) but 127.0.0.1:{server.port} "
                      "does not offer it; not sent in plaintext")
    assert server.handler.commands == ["EHLO"] and not server.messages


def test_plain_transport_does_not_upgrade_opportunistically(make_smtp_server, transports,
                                                            server_tls_context):
    server = extra_server(make_smtp_server, tls_context=server_tls_context)
    assert transports(server).deliver("a@example.com", ["b@example.com"], MSG).ok
    assert [m.tls for m in server.messages] == [False]


def test_untrusted_certificate_is_temporary_and_sends_nothing(make_smtp_server, transports,
                                                             server_tls_context):
    server = extra_server(make_smtp_server, tls_context=server_tls_context)
    result = transports(server, tls=True).deliver("a@example.com", ["b@example.com"], MSG)
    (r,) = result.results
    assert (r.status, r.code) == (TEMPORARY, None)
    assert "certificate" in r.text and "could not be verified" in r.text
    assert server.handler.commands == ["EHLO"] and not server.messages


def test_implicit_tls(make_smtp_server, transports, server_tls_context, tls_files):
    server = extra_server(make_smtp_server, tls_context=server_tls_context, implicit_tls=True)
    transport = transports(server, ssl=True, cafile=tls_files["cafile"])
    assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    assert [m.tls for m in server.messages] == [True]
    untrusted = transports(server, ssl=True).deliver("a@example.com", ["b@example.com"], MSG)
    assert untrusted.results[0].status == TEMPORARY
    assert "could not be verified" in untrusted.results[0].text
    assert len(server.messages) == 1


# -- AUTH ------------------------------------------------------------------------------------

def test_auth_success_on_loopback(make_smtp_server, transports):
    server = extra_server(make_smtp_server, auth=(USER, PASSWORD))
    transport = transports(server, username=USER, password=PASSWORD)
    assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    assert [m.login for m in server.messages] == [USER]


def test_auth_over_starttls(make_smtp_server, transports, server_tls_context, tls_files):
    server = extra_server(make_smtp_server, tls_context=server_tls_context,
                          auth=(USER, PASSWORD))
    transport = transports(server, tls=True, cafile=tls_files["cafile"],
                           username=USER, password=PASSWORD)
    assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    assert [(m.login, m.tls) for m in server.messages] == [(USER, True)]


def test_auth_failure_is_temporary_and_never_shows_the_password(make_smtp_server, transports,
                                                                caplog, capsys):
    server = extra_server(make_smtp_server, auth=(USER, "other"))
    transport = transports(server, username=USER, password=PASSWORD, debug=1)
    with caplog.at_level(logging.DEBUG, logger="pyramid_txmail.smtp"):
        result = transport.deliver("a@example.com", ["b@example.com"], MSG)
    (r,) = result.results
    assert (r.status, r.code) == (TEMPORARY, 535)
    assert repr(USER) in r.text and "authentication" in r.text
    assert not server.messages and "MAIL" not in server.handler.commands
    debug_output = capsys.readouterr().err
    assert "AUTH data not shown" in debug_output  # smtplib's debug output was redacted
    secrets = [PASSWORD, base64.b64encode(PASSWORD.encode()).decode(),
               base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()]
    for secret in secrets:
        assert secret not in r.text
        assert secret not in caplog.text
        assert secret not in debug_output
        assert secret not in repr(transport)
    assert any(rec.levelno == logging.WARNING and USER in rec.getMessage()
               for rec in caplog.records)


def test_is_loopback():
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as sock:
        assert _is_loopback(sock)

    class Remote:
        def getpeername(self):
            return ("192.0.2.10", 25)

    assert not _is_loopback(Remote())
    assert not _is_loopback(None)


# -- SMTPUTF8 -----------------------------------------------------------------------------

def test_smtputf8_address_with_a_server_that_offers_it(make_smtp_server, transports):
    server = extra_server(make_smtp_server, enable_smtputf8=True)
    result = transports(server).deliver("a@example.com", ["j\u00fcrgen@example.com"], MSG)
    assert result.ok
    (received,) = server.messages
    assert received.rcpt_tos == ["j\u00fcrgen@example.com"]
    assert "SMTPUTF8" in received.mail_options


def test_smtputf8_needed_but_not_offered_is_permanent(make_smtp_server, transports):
    server = extra_server(make_smtp_server, enable_smtputf8=False)
    transport = transports(server)
    result = transport.deliver("a@example.com", ["j\u00fcrgen@example.com"], MSG)
    (r,) = result.results
    assert (r.status, r.code) == (PERMANENT, None)
    assert r.text == ("SMTPUTF8 needed (non-ASCII address or header) but not offered by "
                      f"127.0.0.1:{server.port}")
    assert "MAIL" not in server.handler.commands and not server.messages
    assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok  # connection kept
    assert transport.connections_opened == 1


# -- IMailer, logging, arguments ------------------------------------------------------------

def test_verify_imailer(transports):
    assert verifyObject(IMailer, transports(port=25))


def test_send_raises_with_the_result_on_refusal(make_smtp_server, transports):
    server = extra_server(make_smtp_server,
                          {"rcpt": {"gone@example.com": "550 5.1.1 no such user"}})
    message = email.message.EmailMessage()
    message["From"] = "a@example.com"
    message["To"] = "b@example.com, gone@example.com"
    message["Subject"] = "hi"
    message.set_content("hello\n")
    with pytest.raises(SMTPDeliveryError) as info:
        transports(server).send("a@example.com", ["b@example.com", "gone@example.com"], message)
    result = info.value.result
    assert [r.recipient for r in result.sent] == ["b@example.com"]
    assert [(r.recipient, r.code) for r in result.permanent] == [("gone@example.com", 550)]
    assert "gone@example.com" in str(info.value) and "550" in str(info.value)
    assert "no such user" in str(info.value) and "b@example.com" not in str(info.value)


def test_send_message_object_drops_bcc_and_adds_message_id(server, transports):
    message = email.message.Message()  # compat32, as repoze.sendmail callers build them
    message["From"] = "a@example.com"
    message["To"] = "b@example.com"
    message["Bcc"] = "secret@example.com"
    message["Subject"] = "hi"
    message.set_payload("hello\n")
    result = transports(server).send("a@example.com", ["b@example.com", "secret@example.com"],
                                     message)
    assert result.ok and result.message_id.startswith("<")
    (received,) = server.messages
    assert received.rcpt_tos == ["b@example.com", "secret@example.com"]
    parsed = email.message_from_bytes(received.data)
    assert parsed["Bcc"] is None and parsed["Message-ID"] == result.message_id
    assert message["Bcc"] == "secret@example.com" and message["Message-ID"] is None
    assert received.data.endswith(b"\r\n\r\nhello\r\n")


def test_send_bytes(server, transports):
    assert transports(server).send("a@example.com", ["b@example.com"], MSG).ok
    assert server.messages[0].data == CRLF_MSG


def test_logs_one_debug_line_per_sent_message(server, transports, caplog):
    """DEBUG: the processor and direct delivery log the INFO line themselves."""
    with caplog.at_level(logging.DEBUG, logger="pyramid_txmail.smtp"):
        transports(server).deliver("a@example.com", ["b@example.com"], MSG)
    (record,) = [r for r in caplog.records if r.levelno == logging.DEBUG
                 and "<1@example.com>" in r.getMessage()]
    assert "b@example.com" in record.getMessage()
    assert f"127.0.0.1:{server.port}" in record.getMessage()


def test_from_settings():
    settings = MailSettings(host="relay.example", port=587, username="u", password="hunter2",
                            tls=True, tls_cafile="/ca.pem", timeout=7.0, debug=1)
    transport = SMTPTransport.from_settings(settings)
    assert (transport.host, transport.port, transport.username, transport.tls,
            transport.ssl, transport.cafile, transport.timeout, transport.debug) == \
        ("relay.example", 587, "u", True, False, "/ca.pem", 7.0, 1)
    assert "hunter2" not in repr(transport)


@pytest.mark.parametrize("args,error", [
    (("a@example.com", ["b@example.com"], MSG.decode()), TypeError),
    (("a@example.com", "b@example.com", MSG), TypeError),
    (("a@example.com", [], MSG), ValueError),
    (("a@example.com", ["b@example.com\r\nRCPT TO:<x@y>"], MSG), ValueError),
    ((None, ["b@example.com"], MSG), TypeError),
])
def test_bad_arguments_raise_before_any_connection(transports, args, error):
    transport = transports(port=free_port())
    with pytest.raises(error):
        transport.deliver(*args)
    assert transport.connections_opened == 0


def test_tls_and_ssl_together_is_an_error():
    with pytest.raises(ValueError):
        SMTPTransport("localhost", 25, tls=True, ssl=True)
