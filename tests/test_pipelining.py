"""SMTP PIPELINING (RFC 2920) and streamed messages, against real servers on 127.0.0.1.

With PIPELINING, RSET, MAIL, RCPT and DATA go out in one write; every
recipient must still get its own reply code, a refused transaction must
leave the connection usable, and a reused connection the server dropped
must be reopened without sending anything twice.
"""
from __future__ import annotations

import email
import email.policy
import os

import pytest

from pyramid_txmail.relay.result import PERMANENT, SENT, TEMPORARY
from pyramid_txmail.relay.smtp import SMTPTransport
from pyramid_txmail.queue.maildir.spool import Entry, Spool
from pyramid_txmail.compose.wire import Stream

from .smtpserver_extra import extra_server
from .test_smtp import MSG, CRLF_MSG, statuses

PIPELINING = {"ehlo-with": ["PIPELINING"]}


@pytest.fixture
def pserver(make_smtp_server):
    def make(**script):
        return extra_server(make_smtp_server, {**PIPELINING, **script})
    return make


@pytest.fixture
def transport_to():
    made = []

    def make(server, **kwargs):
        transport = SMTPTransport(server.host, server.port, timeout=5,
                                  local_hostname="client.example", **kwargs)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


def test_pipelined_messages_arrive_once_each_over_one_connection(pserver, transport_to):
    server = pserver()
    transport = transport_to(server)
    for i in range(3):
        data = MSG.replace(b"<1@", f"<{i}@".encode())
        assert transport.deliver("a@example.com", ["b@example.com"], data).ok
    assert transport._smtp.has_extn("pipelining")
    assert transport.connections_opened == 1
    assert [m.data.count(f"<{i}@".encode()) for i, m in enumerate(server.messages)] == [1, 1, 1]
    assert server.handler.commands == ["EHLO", "MAIL", "RCPT", "DATA",
                                       "RSET", "MAIL", "RCPT", "DATA",
                                       "RSET", "MAIL", "RCPT", "DATA"]
    assert server.messages[1].data == CRLF_MSG  # the dot-stuffed line came back whole


def test_pipelined_partial_refusal_gives_each_recipient_its_own_code(pserver, transport_to):
    server = pserver(rcpt={"busy@example.com": "451 4.2.1 busy",
                           "gone@example.com": "550 5.1.1 no such user",
                           "many@example.com": "552 5.5.3 too many recipients"})
    transport = transport_to(server)
    rcpts = ["ok@example.com", "busy@example.com", "gone@example.com", "many@example.com"]
    result = transport.deliver("a@example.com", rcpts, MSG)
    assert statuses(result) == [("ok@example.com", SENT, 250),
                                ("busy@example.com", TEMPORARY, 451),
                                ("gone@example.com", PERMANENT, 550),
                                ("many@example.com", TEMPORARY, 552)]
    assert [m.rcpt_tos for m in server.messages] == [["ok@example.com"]]
    assert transport.deliver("a@example.com", ["ok@example.com"], MSG).ok
    assert transport.connections_opened == 1


@pytest.mark.parametrize("reply,status", [("451 4.3.0 later", TEMPORARY),
                                          ("550 5.7.1 go away", PERMANENT)])
def test_pipelined_mail_from_refusal_applies_to_all_and_keeps_the_connection(
        pserver, transport_to, reply, status):
    server = pserver(mail=[reply, "250 OK"])
    transport = transport_to(server)
    result = transport.deliver("a@example.com", ["b@example.com", "c@example.com"], MSG)
    assert [s[1:] for s in statuses(result)] == [(status, int(reply[:3]))] * 2
    assert "MAIL FROM" in result.results[0].text
    assert not server.messages
    assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    assert transport.connections_opened == 1 and len(server.messages) == 1


def test_pipelined_every_recipient_refused_sends_no_message(pserver, transport_to):
    server = pserver(rcpt="550 5.1.1 nobody")
    transport = transport_to(server)
    result = transport.deliver("a@example.com", ["x@example.com", "y@example.com"], MSG)
    assert [s[1:] for s in statuses(result)] == [(PERMANENT, 550)] * 2
    assert not server.messages
    server.handler.script["rcpt"] = "250 OK"
    assert transport.deliver("a@example.com", ["x@example.com"], MSG).ok
    assert len(server.messages) == 1


def test_pipelined_data_command_refused(pserver, transport_to):
    server = pserver(**{"data-command": "451 4.3.0 not now"})
    result = transport_to(server).deliver("a@example.com", ["b@example.com"], MSG)
    assert statuses(result) == [("b@example.com", TEMPORARY, 451)]
    assert not server.messages


def test_pipelined_reconnects_once_after_an_idle_drop(pserver, transport_to):
    server = pserver()
    transport = transport_to(server)
    assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    server.handler.close_connections()
    assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    assert transport.connections_opened == 2
    assert len(server.messages) == 2


def test_max_messages_reopens_the_connection(pserver, transport_to):
    server = pserver()
    transport = transport_to(server, max_messages=2)
    for _ in range(5):
        assert transport.deliver("a@example.com", ["b@example.com"], MSG).ok
    assert transport.connections_opened == 3
    assert server.handler.commands.count("QUIT") == 2
    assert len(server.messages) == 5


# -- streamed messages --------------------------------------------------------------

BIG_LINE = b"0123456789abcdef" * 4 + b"\n"


def big_message(lines):
    head = b"From: a@example.com\nTo: b@example.com\nSubject: big\nMessage-ID: <big@x>\n\n"
    return head, head + b".starts with a dot\n" + BIG_LINE * lines


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_stream_is_sent_block_by_block_and_arrives_intact(make_smtp_server, transport_to,
                                                            pipelining):
    server = extra_server(make_smtp_server, PIPELINING if pipelining else {})
    head, data = big_message(40000)  # ~2.6 MB
    calls = []

    def chunks():
        calls.append(1)
        for i in range(0, len(data), 7777):  # odd sizes: lines split across chunks
            yield data[i:i + 7777]

    stream = Stream(chunks, head=head, size=len(data))
    result = transport_to(server).deliver("a@example.com", ["b@example.com"], stream)
    assert result.ok and result.message_id == "<big@x>"
    assert server.messages[0].data == data.replace(b"\n", b"\r\n")
    assert ("SIZE=%d" % len(data)) in server.messages[0].mail_options
    assert calls == [1]


def test_spool_streams_a_large_file_and_the_processor_sends_it(tmp_path, make_smtp_server):
    from pyramid_txmail.processor.processor import STREAM_OVER, Processor
    from pyramid_txmail.settings import parse_settings

    server = extra_server(make_smtp_server)
    spool = Spool(str(tmp_path / "spool"))
    head, data = big_message(STREAM_OVER // len(BIG_LINE) + 100)
    name = spool.write_tmp("a@example.com", ["b@example.com"], data)
    spool.commit_tmp([name])
    fromaddr, toaddrs, read = spool.read(Entry(spool, "new", name), stream_over=STREAM_OVER)
    assert isinstance(read, Stream) and b"".join(read) == data
    assert read.size == len(data) and not read.eightbit
    settings = parse_settings({"mail.host": server.host, "mail.port": str(server.port),
                               "mail.queue_path": spool.path, "mail.workers": "1"})
    stats = Processor(spool, None, settings).run_once()
    assert stats.sent == 1 and spool.count("new") == spool.count("cur") == 0
    assert server.messages[0].data == data.replace(b"\n", b"\r\n")


def test_a_large_file_with_an_overlong_line_is_read_whole_and_re_encoded(tmp_path,
                                                                        make_smtp_server):
    from pyramid_txmail.processor.processor import STREAM_OVER, Processor
    from pyramid_txmail.settings import parse_settings

    server = extra_server(make_smtp_server)
    spool = Spool(str(tmp_path / "spool"))
    head, data = big_message(STREAM_OVER // len(BIG_LINE))
    data += b"x" * 5000 + b"\n"
    name = spool.write_tmp("a@example.com", ["b@example.com"], data)
    spool.commit_tmp([name])
    _, _, read = spool.read(Entry(spool, "new", name), stream_over=STREAM_OVER)
    assert isinstance(read, bytes)
    settings = parse_settings({"mail.host": server.host, "mail.port": str(server.port),
                               "mail.queue_path": spool.path, "mail.workers": "1"})
    assert Processor(spool, None, settings).run_once().sent == 1
    got = server.messages[0].data
    assert max(map(len, got.split(b"\r\n"))) <= 998
    body = email.message_from_bytes(got, policy=email.policy.default).get_content()
    assert body.replace("\r\n", "\n").endswith("x" * 5000 + "\n")
    assert os.listdir(os.path.join(spool.path, "new")) == []
