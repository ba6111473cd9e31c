"""A real Postfix in the path: request.mailer → spool → ``txmail-qp`` → Postfix → a sink.

This is how a deployment that outgrows one machine hands its mail on: ``mail.host``
points at the site's MTAs, which relay it onwards.  Each test starts a private Postfix
(tests/postfix.py: Debian's package unpacked by the Makefile, its own configuration,
queue and log in a temporary directory, smtpd on a free loopback port,
``mynetworks = 127.0.0.0/8``, ``relayhost`` = the sink) and an aiosmtpd sink that records
what Postfix delivers.  The mail is queued by a WebTest app and drained by the real
``txmail-qp`` console script (tests/postfix_mail.py).  Postfix refusing mail is in
tests/test_postfix_refusals.py.

Counted per scenario (tests/reliability.py): a message is *delivered* when every one of
its recipients got it from Postfix, *held* when it waits in txmail's spool (deferred/,
or failed/ with the reason) or in one of Postfix's queues, *lost* otherwise.
"""
from __future__ import annotations

import email
import email.policy
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from pyramid_txmail.queue.maildir.spool import Spool

from . import smtpserver
from .postfix import postfix_relay, wait_until  # noqa: F401 (the fixture)
from .postfix_mail import (BIG, QP, arrivals, by_message, held_in_spool, make_app, parsed,
                           pairs, wait_for_all,
                           queue_messages, run_qp, without_relay_trace, write_ini)
from .reliability import record, runs
from .smtpserver import SMTPServer

pytestmark = pytest.mark.reliability


def test_messages_relayed_through_postfix_arrive_once_and_parse_back_the_same(
        tmp_path, postfix_relay):
    total = runs(12, 200)
    sink = SMTPServer()
    try:
        relay = postfix_relay(sink.port)
        spool_path = str(tmp_path / "spool")
        queued = queue_messages(spool_path, total)
        bigs = sum(len(data) > BIG for _, _, data in queued.values())
        assert bigs >= 1
        started = time.monotonic()
        run_qp(write_ini(tmp_path, spool_path, relay.port))
        drained = time.monotonic() - started
        got = wait_for_all(sink, relay, queued)
        arrived = time.monotonic() - started  # reported, never asserted
        copies = by_message(sink.messages)
    finally:
        sink.stop()

    delivered = sum(all(got[(mid, r)] >= 1 for r in toaddrs)
                    for mid, (_, toaddrs, _) in queued.items())
    duplicated = sum(max(0, n - 1) for n in got.values())
    spool_state = held_in_spool(spool_path)
    held = spool_state["deferred"] + spool_state["failed"] + relay.queued()
    lost = total - delivered - held
    record("postfix", "relay through a real Postfix to a sink", runs=1, messages=total,
           delivered=delivered, duplicated=duplicated, lost=lost, held=held,
           detail=f"{total} messages (2-4 recipients, non-ASCII, SMTPUTF8 mailboxes, "
                  f"attachments, {bigs} of {BIG // 1024} KiB) via txmail-qp → Postfix "
                  f"{relay.version()} → aiosmtpd: txmail-qp done in {drained:.1f} s, "
                  f"all at the sink after {arrived:.1f} s")
    assert lost == 0
    assert set(got) == pairs(queued), "every recipient, nobody else"
    assert duplicated == 0 and delivered == total and held == 0
    assert spool_state == {"new": 0, "cur": 0, "deferred": 0, "failed": 0}

    for mid, (fromaddr, toaddrs, data) in queued.items():
        for mail_from, rcpts, delivered_bytes in copies[mid]:
            assert mail_from == fromaddr == "shop@example.com"
            assert set(rcpts) <= set(toaddrs)
            # Postfix adds its Received: field on top and changes nothing else ...
            assert without_relay_trace(delivered_bytes) == data.replace(b"\r\n", b"\n"), mid
            # ... so a reader sees the same headers, text and attachments.
            assert parsed(delivered_bytes) == parsed(data)
            headers = dict(parsed(delivered_bytes)[0])
            assert "Bcc" not in headers and "X-Actually-To" not in headers


def test_postfix_down_defers_and_the_daemon_delivers_once_it_is_back(tmp_path, postfix_relay):
    """``txmail-qp --daemon`` against a stopped Postfix: every message is deferred; once
    Postfix is started again the retries deliver each exactly once."""
    total = runs(6, 60)
    sink = SMTPServer()
    daemon = None
    try:
        relay = postfix_relay(sink.port, start=False)
        spool_path = str(tmp_path / "spool")
        queued = queue_messages(spool_path, total)
        ini = write_ini(tmp_path, spool_path, relay.port,
                        "mail.retry_initial = 0.3s\nmail.retry_max = 0.5s\n")
        # Its log goes to a file: a pipe nobody reads would fill up and block the daemon.
        log_path = tmp_path / "qp.log"
        with open(log_path, "wb") as log_file:
            daemon = subprocess.Popen([QP, ini, "--no-app", "--daemon"], stderr=log_file)
        spool = Spool(spool_path)
        assert wait_until(lambda: spool.count("deferred") == total, 30), \
            held_in_spool(spool_path)
        assert sink.messages == []
        relay.start()
        wait_for_all(sink, relay, queued, also=lambda: spool.count("deferred") == 0)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        log = log_path.read_text()
        assert daemon.returncode == 0, log
        daemon = None
        got = arrivals(sink.messages)
    finally:
        if daemon is not None:
            daemon.kill()
            daemon.wait()
        sink.stop()

    state = held_in_spool(spool_path)
    delivered = sum(all(got[(mid, r)] >= 1 for r in toaddrs)
                    for mid, (_, toaddrs, _) in queued.items())
    duplicated = sum(n - 1 for n in got.values())
    held = state["new"] + state["deferred"] + state["failed"] + relay.queued()
    record("postfix", "Postfix stopped, then started (txmail-qp --daemon)", runs=1,
           messages=total, delivered=delivered, duplicated=duplicated,
           lost=total - delivered - held, held=held,
           detail="deferred while the relay's port is closed, delivered by the retries")
    assert total - delivered - held == 0, log[-5000:]
    assert set(got) == pairs(queued) and duplicated == 0 and delivered == total, log[-5000:]
    assert state == {"new": 0, "cur": 0, "deferred": 0, "failed": 0}
    assert "deferred" in log and "connection refused" in log


def test_postfix_keeps_what_it_accepted_while_the_next_hop_is_down(tmp_path, postfix_relay,
                                                                    monkeypatch):
    """Once Postfix said 250 the message is Postfix's: txmail's spool is empty, Postfix
    queues it while its next hop is down and delivers it, once, when it is back."""
    total = runs(4, 40)
    sink = SMTPServer()
    sink_port = sink.port
    sink.stop()  # the next hop is down
    relay = postfix_relay(sink_port)
    spool_path = str(tmp_path / "spool")
    queued = queue_messages(spool_path, total)
    run_qp(write_ini(tmp_path, spool_path, relay.port))
    assert held_in_spool(spool_path) == {"new": 0, "cur": 0, "deferred": 0, "failed": 0}
    assert wait_until(lambda: "Connection refused" in relay.log(), 30)
    held_by_postfix = relay.queued()
    assert held_by_postfix == total
    monkeypatch.setattr(smtpserver, "free_port", lambda: sink_port)
    sink = SMTPServer()  # the next hop is back, on the same port
    try:
        relay.flush()
        got = wait_for_all(sink, relay, queued, settle=0.5)
    finally:
        sink.stop()
    delivered = sum(all(got[(mid, r)] >= 1 for r in toaddrs)
                    for mid, (_, toaddrs, _) in queued.items())
    duplicated = sum(n - 1 for n in got.values())
    held = relay.queued()
    record("postfix", "next hop down: Postfix queues, then delivers", runs=1, messages=total,
           delivered=delivered, duplicated=duplicated, lost=total - delivered - held,
           held=held, detail=f"all {held_by_postfix} held in Postfix's queue meanwhile")
    assert total - delivered - held == 0
    assert set(got) == pairs(queued) and duplicated == 0 and delivered == total


def test_starttls_to_postfix_is_verified_and_an_unverifiable_relay_gets_nothing(
        tmp_path, postfix_relay, tls_files):
    """``mail.tls = true`` against Postfix offering STARTTLS: with the CA configured the
    mail goes over TLS (Postfix's Received: line says so); without it the certificate is
    refused, nothing is sent in plaintext and the mail waits for a retry."""
    total = runs(3, 30)
    sink = SMTPServer()
    try:
        relay = postfix_relay(sink.port, {
            "smtpd_tls_security_level": "may",
            "smtpd_tls_chain_files": tls_files["server"],
            "smtpd_tls_received_header": "yes",
        })
        trusted, untrusted = str(tmp_path / "trusted"), str(tmp_path / "untrusted")
        for spool_path in (trusted, untrusted):
            app = make_app(spool_path)
            for n in range(total):
                app.get("/to", {"to": "tls@example.org", "subject": f"over TLS {n}"})
        (tmp_path / "t").mkdir()
        (tmp_path / "u").mkdir()
        run_qp(write_ini(tmp_path / "t", trusted, relay.port,
                         f"mail.tls = true\nmail.tls_cafile = {tls_files['cafile']}\n"))
        refused = run_qp(write_ini(tmp_path / "u", untrusted, relay.port, "mail.tls = true\n"))
        assert wait_until(lambda: len(sink.messages) >= total and relay.queued() == 0, 30)
        time.sleep(0.3)
        received = list(sink.messages)
    finally:
        sink.stop()
    untrusted_state = held_in_spool(untrusted)
    delivered = len({m for m in by_message(received)})
    held = untrusted_state["deferred"]
    record("postfix", "STARTTLS to Postfix: verified, or nothing sent", runs=1,
           messages=2 * total, delivered=delivered, duplicated=len(received) - delivered,
           lost=2 * total - delivered - held, held=held,
           detail=f"{total} sent over verified TLS; {held} deferred when the relay's "
                  "certificate could not be verified (system CA store)")
    assert held_in_spool(trusted) == {"new": 0, "cur": 0, "deferred": 0, "failed": 0}
    assert untrusted_state == {"new": 0, "cur": 0, "deferred": total, "failed": 0}
    assert len(received) == total == delivered
    for got in received:
        trace = email.message_from_bytes(got.data, policy=email.policy.default)["Received"]
        assert "using TLS" in trace, trace
    assert "could not be verified" in refused.stderr and "nothing sent" in refused.stderr
    # Postfix's own count per session: STARTTLS failed on some, and no session sent a
    # MAIL FROM without a successful STARTTLS first.
    sessions = [line for line in relay.log().splitlines() if "disconnect from" in line]
    assert any("starttls=0/1" in line for line in sessions)
    with_mail = [line for line in sessions if " mail=" in line]
    assert len(with_mail) >= 1 and all(" starttls=1 " in line for line in with_mail)


HARDENED = {  # Postfix's defences against SMTP smuggling and pipelining abuse, all on
    "smtpd_forbid_bare_newline": "reject",  # "yes" only normalizes
    "smtpd_forbid_bare_newline_exclusions": "",  # also for mynetworks (the default spares it)
    "smtpd_forbid_unauth_pipelining": "yes",
    "smtpd_data_restrictions": "reject_unauth_pipelining",
}


def test_a_postfix_hardened_against_smuggling_takes_everything_txmail_sends(
        tmp_path, postfix_relay):
    """Postfix with ``smtpd_forbid_bare_newline = reject`` (also for trusted networks) and
    ``smtpd_forbid_unauth_pipelining``: txmail-qp's bytes (CRLF only, the big message
    streamed) and its pipelined RSET/MAIL/RCPT/DATA pass, nothing is refused."""
    total = runs(8, 100)
    sink = SMTPServer()
    try:
        relay = postfix_relay(sink.port, HARDENED)
        # The defence is on: a client that sends a bare LF is refused.
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as raw:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                raw.sendmail("raw@example.com", ["x@example.org"],
                             b"Subject: bare\n\nline one\nline two\n")
        assert refused.value.smtp_code == 550
        # ... and so is one that talks before the greeting (pipelining not allowed).
        with socket.create_connection(("127.0.0.1", relay.port), timeout=20) as eager:
            eager.sendall(b"EHLO raw\r\nMAIL FROM:<raw@example.com>\r\n")
            replies = b"".join(iter(lambda: eager.recv(4096), b""))
        assert b"554" in replies, replies
        spool_path = str(tmp_path / "spool")
        queued = queue_messages(spool_path, total)
        run_qp(write_ini(tmp_path, spool_path, relay.port))
        got = wait_for_all(sink, relay, queued, settle=0.3)
    finally:
        sink.stop()
    state = held_in_spool(spool_path)
    delivered = sum(all(got[(mid, r)] >= 1 for r in toaddrs)
                    for mid, (_, toaddrs, _) in queued.items())
    duplicated = sum(n - 1 for n in got.values())
    held = state["deferred"] + state["failed"]
    log = relay.log()
    record("postfix", "Postfix hardened against smuggling (bare LF, pipelining)", runs=1,
           messages=total, delivered=delivered, duplicated=duplicated,
           lost=total - delivered - held, held=held,
           detail="smtpd_forbid_bare_newline = reject (no exclusions), "
                  "smtpd_forbid_unauth_pipelining, reject_unauth_pipelining")
    assert total - delivered - held == 0
    assert state == {"new": 0, "cur": 0, "deferred": 0, "failed": 0}
    assert set(got) == pairs(queued) and duplicated == 0
    complaints = [line for line in log.splitlines()
                  if "bare <LF>" in line or "pipelining" in line.lower()]
    # Only the two raw clients above; nothing txmail-qp sent.
    assert len(complaints) == 2 and all("raw@example.com" in c for c in complaints), \
        complaints
