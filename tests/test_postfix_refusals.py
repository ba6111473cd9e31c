"""Postfix refusing what txmail-qp hands it: each refusal ends in its own state.

A recipient restriction (550 → dead letter with Postfix's text, 450 → retried), its
limits (``smtpd_recipient_limit``, ``message_size_limit``, ``header_checks``), its
hang-up on a client that made too many errors and a Postfix without SMTPUTF8 -- and
through all of it, a recipient Postfix accepted is never sent the message again.  Same
set-up as tests/test_postfix.py.
"""
from __future__ import annotations

import time

import pytest

from pyramid_txmail.queue.maildir.spool import Spool

from .postfix import postfix_relay, wait_until  # noqa: F401 (the fixture)
from .postfix_mail import arrivals, by_message, held_in_spool, make_app, run_qp, write_ini
from .reliability import record, runs
from .smtpserver import SMTPServer

pytestmark = pytest.mark.reliability


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
            assert "550" in meta["reason"]
            assert "refused by the relay's policy" in meta["reason"]
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
            for meta in map(spool.read_meta, spool.names("failed"))
            for r in meta["recipients"]}
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
    assert held_in_spool(spool_path) == {"new": 0, "cur": 0, "deferred": 0,
                                         "failed": 2 * rounds}


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


def test_a_postfix_without_smtputf8_gets_no_utf8_mailbox_and_the_rest_goes_through(
        tmp_path, postfix_relay):
    """``smtputf8_enable = no``: Postfix does not offer SMTPUTF8, so a message to a UTF-8
    mailbox cannot be sent as it is -- dead-lettered with the reason, never sent with
    raw UTF-8 to a server that did not agree to it -- while ASCII mail flows on."""
    rounds = runs(2, 20)
    sink = SMTPServer()
    try:
        relay = postfix_relay(sink.port, {"smtputf8_enable": "no"})
        spool_path = str(tmp_path / "spool")
        app = make_app(spool_path)
        utf8 = [app.get("/to", {"to": f"jörg{n}@example.org"}).text for n in range(rounds)]
        ascii_ = [app.get("/to", {"to": f"joerg{n}@example.org"}).text for n in range(rounds)]
        run_qp(write_ini(tmp_path, spool_path, relay.port))
        assert wait_until(lambda: relay.queued() == 0 and len(sink.messages) >= rounds, 30)
        time.sleep(0.3)
        got = arrivals(sink.messages)
    finally:
        sink.stop()
    spool = Spool(spool_path)
    dead = {meta["message_id"]: meta for meta in map(spool.read_meta, spool.names("failed"))}
    delivered = sum(got[(mid, f"joerg{n}@example.org")] >= 1 for n, mid in enumerate(ascii_))
    held = sum(mid in dead for mid in utf8)
    record("postfix", "Postfix without SMTPUTF8", runs=1, messages=2 * rounds,
           delivered=delivered, duplicated=sum(n - 1 for n in got.values()),
           lost=2 * rounds - delivered - held, held=held,
           detail="UTF-8 mailboxes dead-lettered with the reason, ASCII ones delivered")
    assert 2 * rounds - delivered - held == 0
    assert set(got) == {(mid, f"joerg{n}@example.org") for n, mid in enumerate(ascii_)}
    assert set(dead) == set(utf8)
    for meta in dead.values():
        assert "SMTPUTF8" in meta["reason"], meta["reason"]
    assert held_in_spool(spool_path) == {"new": 0, "cur": 0, "deferred": 0,
                                         "failed": rounds}
