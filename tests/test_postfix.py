"""A real Postfix in the path: request.mailer → spool → ``txmail-qp`` → Postfix → a sink.

This is how a deployment that outgrows one machine hands its mail on: ``mail.host``
points at the site's MTAs, which relay it onwards.  Each test starts a private Postfix
(tests/postfix.py: Debian's package unpacked by the Makefile, its own configuration,
queue and log in a temporary directory, smtpd on a free loopback port,
``mynetworks = 127.0.0.0/8``, ``relayhost`` = the sink) and an aiosmtpd sink that records
what Postfix delivers.  The mail is queued by a WebTest app and drained by the real
``txmail-qp`` console script.

Counted per scenario (tests/reliability.py): a message is *delivered* when every one of
its recipients got it from Postfix, *held* when it waits in txmail's spool (deferred/,
or failed/ with the reason) or in one of Postfix's queues, *lost* otherwise.
"""
from __future__ import annotations

import collections
import email
import email.policy
import os
import random
import re
import signal
import subprocess
import sys
import time
from email.message import EmailMessage

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.response import Response

from pyramid_txmail import Mail
from pyramid_txmail.spool import Spool, split_envelope

from .postfix import postfix_relay, wait_until  # noqa: F401 (the fixture)
from .reliability import record, runs
from . import smtpserver
from .smtpserver import SMTPServer

pytestmark = pytest.mark.reliability

QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
SENDER = "Shop <shop@example.com>"
BIG = 1536 * 1024  # every 50th message has an attachment this big (txmail-qp streams it)


def build(i):
    """Message ``i`` of a run: four kinds in turn; every 50th has a 1.5 MiB attachment."""
    rng = random.Random(i)
    kind = i % 4
    if i % 50 == 0:
        mail = Mail(subject=f"Big report {i}", to=[f"big{i}@example.org"],
                    cc=[f"archive{i}@example.net"], text="The report is attached.\n")
        mail.attach(rng.randbytes(BIG), filename=f"report-{i}.bin")
        return mail
    if kind == 0:
        return Mail(subject=f"Plain {i}", to=[f"alice{i}@example.org", f"bob{i}@example.net"],
                    cc=f"carol{i}@example.com", bcc=f"audit{i}@example.org",
                    text=f"Hello number {i}.\n" + "A line of text.\n" * rng.randint(1, 40))
    if kind == 1:
        return Mail(subject=f"Grüße aus Köln – Bestellung №{i} ✓",
                    to=[f"Jörg Müller <jorg{i}@example.org>", f"Zoë Ørsted <zoe{i}@example.net>"],
                    text=f"Grüß Gott, Jörg!\nIhre Bestellung №{i} kostet 12,50 €.\n"
                         "日本語のテキストも。\n",
                    html=f"<p>Grüß Gott, <b>Jörg</b> – №{i} ✓</p>")
    if kind == 2:
        mail = Mail(subject=f"Invoice {i}", to=[f"Åsa <asa{i}@example.org>"],
                    cc=[f"books{i}@example.com"], text="Your invoice is attached.\n")
        mail.attach(rng.randbytes(rng.randint(1, 40_000)), filename=f"Rechnung März {i}.pdf")
        mail.attach(f"id;amount\n{i};12.50\n".encode(), filename="lines.csv")
        return mail
    # An internationalised mailbox: SMTPUTF8 from txmail-qp to Postfix and on to the sink.
    return Mail(subject=f"Ünïcödé mailbox {i}", to=[f"jörg{i}@example.org", f"plain{i}@example.com"],
                text=f"To a UTF-8 mailbox, message {i}.\n")


def send_view(request):
    first, count = int(request.params["first"]), int(request.params["count"])
    ids = [request.mailer.send(build(i)) for i in range(first, first + count)]
    return Response("\n".join(ids))


def to_view(request):
    """One short message to the comma-separated ``to`` addresses."""
    msg = EmailMessage()
    msg["To"] = request.params["to"]
    msg["Subject"] = request.params.get("subject", "hello")
    msg.set_content("A short message.\n")
    return Response(request.mailer.send(msg))


def make_app(spool_path, **settings):
    config = Configurator(settings={"mail.queue_path": spool_path,
                                    "mail.default_sender": SENDER, **settings})
    config.include("pyramid_txmail")
    config.add_route("send", "/send")
    config.add_view(send_view, route_name="send")
    config.add_route("to", "/to")
    config.add_view(to_view, route_name="to")
    return webtest.TestApp(config.make_wsgi_app())


def queue_messages(spool_path, total, batch=5):
    """Send ``total`` messages through request.mailer, ``batch`` per request; returns
    {Message-ID: (envelope sender, recipients, stored bytes)} read back from new/."""
    app = make_app(spool_path)
    for first in range(0, total, batch):
        app.get("/send", {"first": first, "count": min(batch, total - first)})
    spool = Spool(spool_path)
    queued = {}
    for name in spool.names("new"):
        with open(os.path.join(spool.path, "new", name), "rb") as f:
            fromaddr, toaddrs, data = split_envelope(f.read())
        msg = email.message_from_bytes(data, policy=email.policy.default)
        queued[msg["Message-ID"]] = (fromaddr, toaddrs, data)
    assert len(queued) == total
    return queued


def write_ini(tmp_path, spool_path, port, extra=""):
    ini = tmp_path / "qp.ini"
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {spool_path}\n"
                   f"mail.host = 127.0.0.1\nmail.port = {port}\nmail.timeout = 20\n{extra}")
    return str(ini)


def run_qp(ini, *args):
    started = time.monotonic()
    done = subprocess.run([QP, ini, "--no-app", *args], capture_output=True, text=True,
                          timeout=120)
    done.seconds = time.monotonic() - started  # reported, never asserted
    assert done.returncode == 0, done.stderr
    return done


def by_message(received):
    """{Message-ID: [(recipients, bytes), ...]} of what the sink got."""
    found = collections.defaultdict(list)
    for got in received:
        msg = email.message_from_bytes(got.data, policy=email.policy.default)
        found[msg["Message-ID"]].append((got.mail_from, list(got.rcpt_tos), got.data))
    return found


def arrivals(received):
    """{(Message-ID, recipient): copies}."""
    count = collections.Counter()
    for mid, copies in by_message(received).items():
        for _, rcpts, _ in copies:
            count.update((mid, r) for r in rcpts)
    return count


RECEIVED = re.compile(rb"\AReceived: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n")


def without_relay_trace(data):
    """The delivered bytes minus the Received: field Postfix put on top, LF line ends."""
    stripped, n = RECEIVED.subn(b"", data, count=1)
    assert n == 1, data[:500]
    return stripped.replace(b"\r\n", b"\n")


def parsed(data):
    """What a reader sees: the headers (but Received) and every part's type, name, content."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    headers = [(k, str(v)) for k, v in msg.items() if k.lower() != "received"]
    parts = [(p.get_content_type(), p.get_filename(), _content(p)) for p in msg.walk()]
    return headers, parts


def _content(part):
    if part.get_content_maintype() == "multipart":
        return None
    content = part.get_content()  # text keeps the line ends it came with (CRLF off the wire)
    return content.replace("\r\n", "\n") if isinstance(content, str) else content


def held_in_spool(spool_path):
    spool = Spool(spool_path)
    return {state: spool.count(state) for state in ("new", "cur", "deferred", "failed")}


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
        expected = {(mid, r) for mid, (_, toaddrs, _) in queued.items() for r in toaddrs}
        wait_until(lambda: set(arrivals(sink.messages)) >= expected and relay.queued() == 0,
                   60)
        arrived = time.monotonic() - started  # reported, never asserted
        got = arrivals(sink.messages)
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
    assert set(got) == expected, "every recipient, nobody else"
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




POLICY = ("check_recipient_access inline:{ "
          "{ refused@example.org = 550 5.7.1 refused by the relay's policy }, "
          "{ later@example.org = 450 4.7.1 greylisted by the relay } }, "
          "permit_mynetworks, reject")
MIXED = ["ok@example.org", "refused@example.org", "later@example.org"]


def test_postfix_refusals_dead_letter_or_defer_and_accepted_recipients_never_get_it_twice(
        tmp_path, postfix_relay):
    """Postfix's smtpd refuses at RCPT time (a recipient restriction): 550 is dead-lettered
    with Postfix's reason, 450 waits for a retry, the recipient Postfix took is not sent
    the message again -- also not when the greylisted one is retried and finally taken."""
    rounds = runs(3, 30)
    sink = SMTPServer()
    try:
        relay = postfix_relay(sink.port, {"smtpd_recipient_restrictions": POLICY})
        spool_path = str(tmp_path / "spool")
        app = make_app(spool_path)
        mixed = [app.get("/to", {"to": ", ".join(MIXED), "subject": f"mixed {n}"}).text
                 for n in range(rounds)]
        refused = [app.get("/to", {"to": "refused@example.org"}).text for _ in range(rounds)]
        ini = write_ini(tmp_path, spool_path, relay.port,
                        "mail.retry_initial = 0.3s\nmail.retry_max = 0.3s\n")

        passes = [run_qp(ini)]  # 1st pass: ok taken, refused dead-lettered, later deferred
        assert wait_until(lambda: len(sink.messages) >= rounds and relay.queued() == 0, 30)
        spool = Spool(spool_path)
        assert spool.count("deferred") == rounds and spool.count("new") == 0
        dead = [spool.read_meta(name) for name in spool.names("failed")]
        assert len(dead) == 2 * rounds
        for meta in dead:
            [result] = meta["recipients"]
            assert result["recipient"] == "refused@example.org"
            assert result["code"] == 550 and "refused by the relay's policy" in result["text"]
            assert "550" in meta["reason"] and "refused by the relay's policy" in meta["reason"]
        assert sorted(m["message_id"] for m in dead) == sorted(mixed + refused)
        for name in spool.names("deferred"):
            meta = spool.read_meta(name)
            assert meta["delivered"] == ["ok@example.org"]
            [later] = meta["history"][-1]["results"][2:]
            assert later["code"] == 450 and "greylisted by the relay" in later["text"]

        time.sleep(0.4)  # the retry is due (0.3 s, ±20%)
        passes.append(run_qp(ini))  # 2nd pass: still greylisted; only later@ is tried again
        assert spool.count("deferred") == rounds
        assert all(spool.read_meta(n)["attempts"] == 2 for n in spool.names("deferred"))

        relay.reconfigure({"smtpd_recipient_restrictions": POLICY.replace(
            "{ later@example.org = 450 4.7.1 greylisted by the relay } ", "")})
        time.sleep(0.4)
        passes.append(run_qp(ini))  # 3rd pass: the greylisting is over
        assert wait_until(lambda: len(sink.messages) >= 2 * rounds and relay.queued() == 0, 30)
        time.sleep(0.5)  # anything sent twice would show now
        got = arrivals(sink.messages)
    finally:
        sink.stop()

    envelopes = {**{mid: MIXED for mid in mixed}, **{mid: ["refused@example.org"]
                                                     for mid in refused}}
    dead = {(meta["message_id"], r["recipient"])
            for meta in map(spool.read_meta, spool.names("failed")) for r in meta["recipients"]}
    # Each recipient of each message either got it or is dead-lettered with the reason.
    accounted = {mid: [got[(mid, r)] >= 1 or (mid, r) in dead for r in rcpts]
                 for mid, rcpts in envelopes.items()}
    delivered = sum(all(ok) and any(got[(mid, r)] for r in envelopes[mid])
                    for mid, ok in accounted.items())
    held = sum(all((mid, r) in dead for r in rcpts) for mid, rcpts in envelopes.items())
    lost = sum(not all(ok) for ok in accounted.values())
    duplicated = sum(n - 1 for n in got.values())
    record("postfix", "Postfix refuses recipients (550, 450 then taken)", runs=1,
           messages=2 * rounds, delivered=delivered, duplicated=duplicated, lost=lost,
           held=held, detail="recipient restriction in Postfix's smtpd: 550 dead-lettered "
                             "with its text, 450 retried; the recipient it took is never "
                             "sent a second copy; the three txmail-qp passes took "
                             f"{sum(p.seconds for p in passes):.1f} s")
    assert lost == 0
    assert set(got) == {(mid, r) for mid in mixed for r in MIXED if r != "refused@example.org"}
    assert duplicated == 0 and delivered == rounds and held == rounds
    assert dead == {(mid, "refused@example.org") for mid in envelopes}
    assert held_in_spool(spool_path) == {"new": 0, "cur": 0, "deferred": 0, "failed": 2 * rounds}


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
        assert wait_until(lambda: spool.count("deferred") == total, 30), held_in_spool(spool_path)
        assert sink.messages == []
        relay.start()
        expected = {(mid, r) for mid, (_, toaddrs, _) in queued.items() for r in toaddrs}
        wait_until(lambda: set(arrivals(sink.messages)) >= expected and relay.queued() == 0
                   and spool.count("deferred") == 0, 60)
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
    assert set(got) == expected and duplicated == 0 and delivered == total, log[-5000:]
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
        expected = {(mid, r) for mid, (_, toaddrs, _) in queued.items() for r in toaddrs}
        wait_until(lambda: set(arrivals(sink.messages)) >= expected and relay.queued() == 0,
                   60)
        time.sleep(0.5)
        got = arrivals(sink.messages)
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
    assert set(got) == expected and duplicated == 0 and delivered == total


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


def test_postfix_limits_recipients_size_and_content_each_with_its_own_outcome(
        tmp_path, postfix_relay):
    """Postfix's limits, as a deployment meets them: ``smtpd_recipient_limit`` (452: the
    rest of the recipients later, each once), ``message_size_limit`` (552: dead letter)
    and a ``header_checks`` rule (550 after the final dot: dead letter for all)."""
    rounds = runs(2, 20)
    checks = tmp_path / "header_checks"
    checks.write_text("/^Subject: .*forbidden/ REJECT forbidden subject by header_checks\n")
    sink = SMTPServer()
    try:
        relay = postfix_relay(sink.port, {"smtpd_recipient_limit": "2",
                                          "message_size_limit": str(1024 * 1024),
                                          "header_checks": f"regexp:{checks}"})
        spool_path = str(tmp_path / "spool")
        app = make_app(spool_path)
        many, big, forbidden = [], [], []
        for n in range(rounds):
            many.append(app.get("/to", {"to": ", ".join(f"r{k}.{n}@example.org"
                                                         for k in range(5)),
                                        "subject": f"five recipients {n}"}).text)
            big.append(app.get("/send", {"first": 50 * (n + 1), "count": 1}).text)
            forbidden.append(app.get("/to", {"to": f"a{n}@example.org, b{n}@example.org",
                                             "subject": f"a forbidden word {n}"}).text)
        ini = write_ini(tmp_path, spool_path, relay.port,
                        "mail.retry_initial = 0.3s\nmail.retry_max = 0.3s\n")
        spool = Spool(spool_path)
        for _ in range(5):  # 2 recipients per attempt: three attempts for five
            run_qp(ini)
            if spool.count("deferred") == 0:
                break
            time.sleep(0.4)
        assert wait_until(lambda: relay.queued() == 0 and len(arrivals(sink.messages))
                          >= 5 * rounds, 30)
        time.sleep(0.3)
        got = arrivals(sink.messages)
        transactions = by_message(sink.messages)
    finally:
        sink.stop()

    dead = {meta["message_id"]: meta for meta in map(spool.read_meta, spool.names("failed"))}
    for mid in many:  # Postfix took two recipients per attempt: 2 + 2 + 1
        assert sorted(len(rcpts) for _, rcpts, _ in transactions[mid]) == [1, 2, 2]
    delivered = sum(all(got[(mid, f"r{k}.{n}@example.org")] for k in range(5))
                    for n, mid in enumerate(many))
    held = sum(mid in dead for mid in big + forbidden)
    duplicated = sum(n - 1 for n in got.values())
    lost = 3 * rounds - delivered - held
    record("postfix", "Postfix limits: recipients (452), size (552), header_checks (550)",
           runs=1, messages=3 * rounds, delivered=delivered, duplicated=duplicated,
           lost=lost, held=held, detail="smtpd_recipient_limit = 2 for 5 recipients: "
           "delivered over three attempts, each recipient once; too big and rejected "
           "content dead-lettered with Postfix's reply")
    assert lost == 0 and duplicated == 0 and delivered == rounds
    assert set(got) == {(mid, f"r{k}.{n}@example.org") for n, mid in enumerate(many)
                        for k in range(5)}
    assert set(dead) == set(big + forbidden)
    for mid in big:
        [code] = {r["code"] for r in dead[mid]["recipients"]}
        assert code == 552 and "size" in dead[mid]["reason"].lower(), dead[mid]["reason"]
    for mid in forbidden:
        assert {r["code"] for r in dead[mid]["recipients"]} == {550}
        assert len(dead[mid]["recipients"]) == 2
        assert "forbidden subject by header_checks" in dead[mid]["reason"]
    assert held_in_spool(spool_path) == {"new": 0, "cur": 0, "deferred": 0,
                                         "failed": 2 * rounds}


def test_postfix_dropping_a_client_after_too_many_errors_defers_and_loses_nothing(
        tmp_path, postfix_relay):
    """``smtpd_hard_error_limit``: Postfix answers 421 and hangs up on a client that made
    too many errors without delivering -- on txmail-qp's reused connection, in the
    middle of the queue.  The connection is reopened for the next message (a message a
    hang-up interrupted would be deferred, never dead-lettered by it); in the end every
    refused message is dead-lettered with Postfix's 550 and every good one delivered
    once."""
    total = runs(12, 100)
    sink = SMTPServer()
    try:
        relay = postfix_relay(sink.port, {
            "smtpd_recipient_restrictions": POLICY,
            "smtpd_soft_error_limit": "2", "smtpd_hard_error_limit": "3",
            "smtpd_error_sleep_time": "0"})
        spool_path = str(tmp_path / "spool")
        app = make_app(spool_path)
        # A refused message (two errors: RCPT and the pipelined DATA), then one to a
        # refused and a good recipient (the third error), and again; one worker, so
        # they share one connection until Postfix hangs up.
        good, bad = [], []
        for n in range(total):
            if n % 2 == 1:
                good.append(app.get("/to", {"to": f"refused@example.org, good{n}@example.org"}
                                    ).text)
            else:
                bad.append(app.get("/to", {"to": "refused@example.org"}).text)
        ini = write_ini(tmp_path, spool_path, relay.port,
                        "mail.workers = 1\nmail.retry_initial = 0.3s\nmail.retry_max = 0.3s\n")
        spool = Spool(spool_path)
        passes = 0
        while passes < 20 and (passes == 0 or spool.count("deferred")):
            run_qp(ini)
            passes += 1
            time.sleep(0.4)
        assert wait_until(lambda: relay.queued() == 0 and len(sink.messages) >= len(good), 30)
        time.sleep(0.3)
        got = arrivals(sink.messages)
    finally:
        sink.stop()

    dead = {meta["message_id"]: meta for meta in map(spool.read_meta, spool.names("failed"))}
    hangups = sum(any(r["code"] == 421 for h in meta["history"] for r in h["results"])
                  for meta in dead.values())
    sessions = [line for line in relay.log().splitlines() if "too many errors" in line]
    delivered = sum(got[(mid, f"good{n}@example.org")] >= 1
                    for mid, n in zip(good, range(1, total, 2)))
    duplicated = sum(n - 1 for n in got.values())
    refused = {mid for mid, meta in dead.items()
               if [r["recipient"] for r in meta["recipients"]] == ["refused@example.org"]}
    lost = total - delivered - len(refused - set(good))
    record("postfix", "Postfix hangs up after too many errors (421)", runs=1,
           messages=total, delivered=delivered, duplicated=duplicated, lost=lost,
           held=len(refused - set(good)), detail=f"smtpd_hard_error_limit = 3, one worker: "
           f"Postfix hung up {len(sessions)} times; {hangups} messages had their good "
           f"recipient cut off by the 421 (deferred, delivered by the next pass), the "
           f"refused ones dead-lettered with 550; {passes} passes")
    assert lost == 0 and duplicated == 0 and delivered == len(good)
    assert set(dead) == set(bad + good) == refused  # refused@'s copy of each mixed one
    for meta in dead.values():
        assert [r["code"] for r in meta["recipients"]] == [550], meta
    assert sessions, "Postfix never hung up: the scenario did not happen"
    assert hangups >= 1, "no good recipient was cut off by a hang-up"
    assert set(got) == {(mid, f"good{n}@example.org")
                        for mid, n in zip(good, range(1, total, 2))}
    assert held_in_spool(spool_path) == {"new": 0, "cur": 0, "deferred": 0,
                                         "failed": total}
