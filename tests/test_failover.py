"""Failover per message (issue 15, item 5): two or three real fault servers.

A relay that answers 4yz to MAIL FROM, RCPT TO, DATA or the final dot (or
drops the connection before the final dot) has the recipients still
pending offered to the next relay of ``mail.fallback_hosts`` in the same
attempt, as Postfix does.  Each case counts, per relay and recipient, what
was given in RCPT and what was stored, so "never sent twice" is checked on
the servers, not on what the client believes.
"""
from __future__ import annotations

import pytest

from pyramid_txmail.relay.result import PERMANENT, SENT, TEMPORARY
from pyramid_txmail.relay.smtp import SMTPTransport
from pyramid_txmail.relay.smtp_session import FAILURES_BEFORE_REST

from .faultserver import fault_server
from .smtpserver import free_port

FROM = "sender@example.org"
A, B, C = "a@example.org", "b@example.org", "c@example.org"
PIPELINING = pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])


def message(n=1, size=0):
    body = f"body {n}\r\n" + ("x" * 76 + "\r\n") * (size // 78)
    return (f"From: {FROM}\r\nTo: {A}\r\nSubject: failover {n}\r\n"
            f"Message-ID: <failover-{n}@example.org>\r\n\r\n{body}").encode()


def relay(make_smtp_server, script=None, pipelining=False):
    script = dict(script or {})
    if pipelining:
        script["ehlo-with"] = ["PIPELINING"]
    return fault_server(make_smtp_server, script)


def address(server):
    return f"{server.host}:{server.port}"


def transport_for(primary, *fallbacks, timeout=5, **kwargs):
    return SMTPTransport(primary.host, primary.port, timeout=timeout,
                         fallback_hosts=[(f.host, f.port) for f in fallbacks], **kwargs)


def stored(server):
    """``{recipient: copies}`` the server stored."""
    counts = {}
    for received in server.messages:
        for rcpt in received.rcpt_tos:
            counts[rcpt] = counts.get(rcpt, 0) + 1
    return counts


def by_recipient(result):
    return {r.recipient: r for r in result.results}


@PIPELINING
@pytest.mark.parametrize("stage, script", [
    ("MAIL FROM", {"mail": "451 4.3.0 sender queue full"}),
    ("MAIL FROM", {"mail": "421 4.3.2 shutting down"}),
    ("DATA", {"data-command": "451 4.3.0 not now"}),
    ("end of data", {"data": "451 4.3.0 scanner unavailable"}),
    ("end of data", {"data": "421 4.3.2 shutting down"}),
], ids=["mail-451", "mail-421", "data-451", "dot-451", "dot-421"])
def test_whole_message_refused_4xx_goes_to_the_fallback(make_smtp_server, pipelining,
                                                        stage, script):
    primary = relay(make_smtp_server, script, pipelining)
    fallback = relay(make_smtp_server, pipelining=pipelining)
    with transport_for(primary, fallback) as transport:
        result = transport.deliver(FROM, [A, B], message())
    assert result.ok, result.summary()
    assert {r.relay for r in result.results} == {address(fallback)}
    assert stored(primary) == {} and stored(fallback) == {A: 1, B: 1}
    assert fallback.handler.rcpt_count(A) == fallback.handler.rcpt_count(B) == 1


@PIPELINING
def test_rcpt_4xx_for_one_recipient_only_that_one_fails_over(make_smtp_server, pipelining):
    primary = relay(make_smtp_server, {"rcpt": {B: "451 4.2.0 mailbox busy"}}, pipelining)
    fallback = relay(make_smtp_server, pipelining=pipelining)
    with transport_for(primary, fallback) as transport:
        result = transport.deliver(FROM, [A, B, C], message())
    results = by_recipient(result)
    assert result.ok
    assert (results[A].relay, results[B].relay, results[C].relay) == (
        address(primary), address(fallback), address(primary))
    assert stored(primary) == {A: 1, C: 1} and stored(fallback) == {B: 1}
    # what one relay accepted is never offered to another
    assert fallback.handler.rcpt_count(A) == fallback.handler.rcpt_count(C) == 0


@PIPELINING
def test_fallback_also_4xx_is_deferred_naming_both_relays(make_smtp_server, pipelining):
    primary = relay(make_smtp_server, {"rcpt": "451 4.3.0 primary busy"}, pipelining)
    fallback = relay(make_smtp_server, {"mail": "452 4.3.1 fallback full"}, pipelining)
    with transport_for(primary, fallback) as transport:
        result = transport.deliver(FROM, [A, B], message())
    for r in result.results:
        assert r.status == TEMPORARY and r.code == 452 and r.relay == address(fallback)
        # the reply the code is from first, then the other relay's, with its code
        assert r.text == (f"4.3.1 fallback full (in reply to MAIL FROM at {address(fallback)}); "
                          f"451 4.3.0 primary busy (in reply to RCPT TO at {address(primary)})")
    assert stored(primary) == stored(fallback) == {}


@PIPELINING
def test_5xx_is_final_and_4xx_fails_over(make_smtp_server, pipelining):
    primary = relay(make_smtp_server, {"rcpt": {A: "550 5.1.1 no such user",
                                                B: "451 4.3.0 try later"}}, pipelining)
    fallback = relay(make_smtp_server, pipelining=pipelining)
    with transport_for(primary, fallback) as transport:
        result = transport.deliver(FROM, [A, B, C], message())
    results = by_recipient(result)
    assert results[A].status == PERMANENT and results[A].code == 550
    assert results[A].relay == address(primary)
    assert results[B].status == SENT and results[B].relay == address(fallback)
    assert results[C].status == SENT and results[C].relay == address(primary)
    assert fallback.handler.rcpt_count(A) == 0
    assert stored(primary) == {C: 1} and stored(fallback) == {B: 1}


def test_fallback_5xx_after_primary_4xx_is_final(make_smtp_server):
    primary = relay(make_smtp_server, {"rcpt": "451 4.3.0 try later"})
    fallback = relay(make_smtp_server, {"rcpt": {B: "550 5.1.1 unknown here"}})
    with transport_for(primary, fallback) as transport:
        result = transport.deliver(FROM, [A, B], message())
    results = by_recipient(result)
    assert results[A].status == SENT and results[A].relay == address(fallback)
    assert results[B].status == PERMANENT and results[B].code == 550
    assert "try later" in results[B].text and "unknown here" in results[B].text


@PIPELINING
def test_three_relays_each_recipient_at_the_first_that_takes_it(make_smtp_server,
                                                                pipelining):
    first = relay(make_smtp_server, {"mail": "451 4.3.0 first refuses"}, pipelining)
    second = relay(make_smtp_server, {"rcpt": {B: "450 4.2.1 second busy for b"}},
                   pipelining)
    third = relay(make_smtp_server, pipelining=pipelining)
    with transport_for(first, second, third) as transport:
        result = transport.deliver(FROM, [A, B], message())
    results = by_recipient(result)
    assert result.ok
    assert results[A].relay == address(second) and results[B].relay == address(third)
    assert stored(first) == {} and stored(second) == {A: 1} and stored(third) == {B: 1}
    assert third.handler.rcpt_count(A) == 0


@pytest.mark.parametrize("drop, size", [("mail", 0), ("rcpt", 0), ("data-command", 0),
                                        ("data-mid", 4 << 20)])
def test_dropped_before_the_final_dot_fails_over(make_smtp_server, drop, size):
    """(A small message dropped mid-data is all in the socket with its final
    dot before the client can notice: that is the no-reply case below.)"""
    primary = relay(make_smtp_server, {"drop": drop})
    fallback = relay(make_smtp_server)
    with transport_for(primary, fallback) as transport:
        result = transport.deliver(FROM, [A, B], message(size=size))
    assert result.ok, result.summary()
    assert {r.relay for r in result.results} == {address(fallback)}
    assert stored(primary) == {} and stored(fallback) == {A: 1, B: 1}


@pytest.mark.parametrize("drop", ["data-after", "data-before"])
def test_no_reply_to_the_final_dot_is_not_failed_over(make_smtp_server, drop):
    """RFC 1047: the relay may have the message (data-after: it does), so the
    recipients stay deferred for a later attempt, and no other relay gets a
    copy in this one."""
    primary = relay(make_smtp_server, {"drop": drop})
    fallback = relay(make_smtp_server)
    with transport_for(primary, fallback) as transport:
        result = transport.deliver(FROM, [A, B], message())
    for r in result.results:
        assert r.status == TEMPORARY and r.code is None and r.relay == address(primary)
        assert "may have accepted it" in r.text
    assert fallback.handler.connections == 0 and stored(fallback) == {}


def test_dropped_after_the_dot_only_the_rcpt_refused_fails_over(make_smtp_server):
    primary = relay(make_smtp_server, {"rcpt": {B: "451 4.3.0 later"}, "drop": "data-after"})
    fallback = relay(make_smtp_server)
    with transport_for(primary, fallback) as transport:
        result = transport.deliver(FROM, [A, B], message())
    results = by_recipient(result)
    assert results[A].status == TEMPORARY and "may have accepted" in results[A].text
    assert results[B].status == SENT and results[B].relay == address(fallback)
    assert stored(primary) == {A: 1} and stored(fallback) == {B: 1}
    assert fallback.handler.rcpt_count(A) == 0


@PIPELINING
def test_sessions_kept_and_refusing_relay_not_rested(make_smtp_server, pipelining):
    """The primary session is kept across failovers; the fallback's is opened
    once, on demand, and reused; a relay that refuses messages is not rested."""
    primary = relay(make_smtp_server, {"mail": "451 4.3.0 not now"}, pipelining)
    fallback = relay(make_smtp_server, pipelining=pipelining)
    rounds = FAILURES_BEFORE_REST + 2
    with transport_for(primary, fallback) as transport:
        assert transport.deliver(FROM, [A], message(0)).ok  # opens both
        assert fallback.handler.connections == 1
        primary.handler.heal()
        assert transport.deliver(FROM, [A], message(1)).results[0].relay == address(primary)
        primary.handler.script["mail"] = "451 4.3.0 not now"
        for n in range(2, rounds + 2):
            assert transport.deliver(FROM, [A], message(n)).ok
        assert transport.relays.resting() == []
        assert transport.connections_opened == 2
    assert primary.handler.connections == fallback.handler.connections == 1
    assert stored(primary) == {A: 1} and stored(fallback) == {A: rounds + 1}


def test_unreachable_fallback_is_rested_and_the_4xx_kept(make_smtp_server):
    primary = relay(make_smtp_server, {"rcpt": "451 4.3.0 try later"})
    dead_port = free_port()
    with SMTPTransport(primary.host, primary.port, timeout=5,
                       fallback_hosts=[("127.0.0.1", dead_port)]) as transport:
        for n in range(FAILURES_BEFORE_REST):
            [r] = transport.deliver(FROM, [A], message(n)).results
            assert r.status == TEMPORARY and r.code == 451 and r.relay == address(primary)
            assert "try later" in r.text and f"127.0.0.1:{dead_port}" in r.text
        assert transport.relays.resting() == [("127.0.0.1", dead_port)]
        # resting: not tried again, the primary's refusal stands alone
        [r] = transport.deliver(FROM, [A], message(9)).results
        assert r.code == 451 and f"127.0.0.1:{dead_port}" not in r.text


def test_primary_down_the_session_goes_to_the_fallback_and_no_failover_back(
        make_smtp_server):
    """A session set up with the fallback (the primary cannot be reached)
    fails over only to relays after it in the list."""
    dead_port = free_port()
    fallback = relay(make_smtp_server, {"rcpt": "451 4.3.0 fallback busy"})
    with SMTPTransport("127.0.0.1", dead_port, timeout=5,
                       fallback_hosts=[(fallback.host, fallback.port)]) as transport:
        [r] = transport.deliver(FROM, [A], message()).results
    assert r.status == TEMPORARY and r.relay == address(fallback)
    assert "fallback busy" in r.text


def test_stale_fallback_session_is_reopened(make_smtp_server):
    primary = relay(make_smtp_server, {"mail": "451 4.3.0 not now"})
    fallback = relay(make_smtp_server)
    with transport_for(primary, fallback) as transport:
        assert transport.deliver(FROM, [A], message(1)).ok
        fallback.handler.close_connections()
        assert transport.deliver(FROM, [B], message(2)).ok
        assert transport.deliver(FROM, [C], message(3)).ok  # the new one was kept
        assert transport.connections_opened == 3
    assert fallback.handler.connections == 2
    assert stored(fallback) == {A: 1, B: 1, C: 1}


def test_primary_gone_and_the_kept_fallback_session_stale(make_smtp_server):
    """The primary's relay is gone: the session kept for failover with the
    next relay becomes the primary one -- and if the server closed it
    meanwhile, a new one is opened, the message is not lost to an error."""
    primary = relay(make_smtp_server, {"mail": "451 4.3.0 not now"})
    fallback = relay(make_smtp_server)
    with transport_for(primary, fallback) as transport:
        assert transport.deliver(FROM, [A], message(1)).ok
        primary.handler.script = {"ehlo": "421 4.3.2 going away"}  # no new session
        primary.handler.close_connections()
        fallback.handler.close_connections()
        [r] = transport.deliver(FROM, [B], message(2)).results
        assert r.status == SENT and r.relay == address(fallback)
    assert fallback.handler.connections == 2
    assert stored(fallback) == {A: 1, B: 1}


def test_a_streamed_message_is_sent_whole_again_to_the_fallback(make_smtp_server):
    """A Stream was read to its end for the primary's final dot (refused 451):
    the fallback gets it whole, from a new iterator."""
    from pyramid_txmail.compose import wire

    data = message(7, size=300_000)
    stream = wire.Stream(lambda: (data[i:i + 8192] for i in range(0, len(data), 8192)),
                         size=len(data), message_id="<failover-7@example.org>")
    primary = relay(make_smtp_server, {"data": "451 4.3.0 scanner unavailable"})
    fallback = relay(make_smtp_server)
    with transport_for(primary, fallback) as transport:
        result = transport.deliver(FROM, [A], stream)
    assert result.ok and result.results[0].relay == address(fallback)
    [received] = fallback.messages
    assert received.data == data


def test_no_reply_in_time_to_the_final_dot_is_not_failed_over(make_smtp_server):
    """The relay stores the message, then answers after mail.data_timeout:
    the same RFC 1047 window as a drop, so no copy goes to the fallback."""
    primary = relay(make_smtp_server, {"delay": {"data": 1.2}})
    fallback = relay(make_smtp_server)
    with transport_for(primary, fallback, timeout=0.4, data_timeout=0.4) as transport:
        [r] = transport.deliver(FROM, [A], message()).results
    assert r.status == TEMPORARY and r.relay == address(primary)
    assert "within 0.4s after the end of the message data" in r.text
    assert stored(primary) == {A: 1} and stored(fallback) == {}
    assert fallback.handler.connections == 0
