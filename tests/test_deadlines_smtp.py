"""Every SMTP wait has a deadline for the whole reply, not only per read (probe 11b, finding 2).

``mail.timeout`` applied to each read, so a relay sending a continuation
line (``220-``, ``250-``) every few seconds never timed out: txmail-qp hung
through SIGTERM, direct sender threads were held for good.  Now a reply
must be complete within ``mail.timeout`` (the final dot's within
``mail.data_timeout``), and each write of the message data within
``mail.timeout`` too.  The relays here (:mod:`tests.trickleserver`) never
finish; the tests assert that the call *returns* with a temporary result,
with a generous join -- never how fast.
"""
from __future__ import annotations

import threading

import pytest

from pyramid_txmail.relay.result import TEMPORARY
from pyramid_txmail.relay.smtp import SMTPTransport

from .trickleserver import TrickleServer

MESSAGE = (b"From: a@example.com\r\nTo: b@example.com\r\nMessage-ID: <t@example.com>\r\n"
           b"Subject: trickle\r\n\r\n" + b"x" * 70 + b"\r\n")
BIG = MESSAGE + (b"y" * 998 + b"\r\n") * 20000  # 20 MB: more than the socket buffers


@pytest.fixture
def trickle():
    servers = []

    def make(stage):
        servers.append(TrickleServer(stage))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def deliver(server, data=MESSAGE, timeout=1, data_timeout=2):
    transport = SMTPTransport(server.host, server.port, timeout=timeout,
                              data_timeout=data_timeout)
    done = {}

    def run():
        done["result"] = transport.deliver("a@example.com", ["b@example.com"], data)
        transport.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)  # generous: the point is that it ends at all
    assert not thread.is_alive(), "deliver() still waiting on a reply that never ends"
    return done["result"]


@pytest.mark.parametrize("stage", ["banner", "ehlo", "mail"])
def test_a_reply_that_never_ends_is_a_timeout(trickle, stage):
    server = trickle(stage)
    [result] = deliver(server).results
    assert server.trickling.is_set()
    assert result.status == TEMPORARY
    assert "within 1s" in result.text, result.text


def test_a_reply_to_the_final_dot_that_never_ends_ends_at_data_timeout(trickle):
    server = trickle("dot")
    [result] = deliver(server).results
    assert result.status == TEMPORARY
    assert "within 2s" in result.text and "twice" in result.text, result.text


def test_a_relay_that_stops_reading_the_data_is_a_timeout(trickle):
    server = trickle("stop-reading")
    [result] = deliver(server, BIG).results
    assert server.trickling.is_set()
    assert result.status == TEMPORARY and "the message data" in result.text, result.text
