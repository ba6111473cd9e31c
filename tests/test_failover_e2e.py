"""Failover per message end to end: the real ``txmail-qp`` and ``txmail-queue``
(subprocesses) over a real spool, the processor's events, and direct delivery.

Two fault servers stand for ``mail.host`` and ``mail.fallback_hosts``; what
matters is counted at the sinks: one copy per recipient, at the relay that
accepted it, and nothing offered again in a later pass.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import transaction
from pyramid.config import Configurator

from pyramid_txmail import IMailDeferred, IMailSent
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.queue.maildir.spool import Spool
from pyramid_txmail.settings import parse_settings

from .faultserver import fault_server
from .test_direct import direct_app
from .test_failover import address, stored
from .test_qp import run_qp, write_ini

QUEUE = os.path.join(os.path.dirname(sys.executable), "txmail-queue")
FROM = "sender@example.org"


def enqueue(spool, toaddrs, msgid):
    data = (f"From: {FROM}\nTo: {toaddrs[0]}\nSubject: failover\nMessage-ID: {msgid}\n\n"
            f"body of {msgid}\n").encode()
    name = spool.write_tmp(FROM, toaddrs, data)
    spool.commit_tmp([name])
    return name


def copies(server):
    """``{(recipient, Message-ID): copies}`` stored by ``server``."""
    return {key: n for key, n in server.handler.copies().items()}


def test_txmail_qp_one_copy_per_recipient_at_the_relay_that_took_it(tmp_path,
                                                                     make_smtp_server):
    primary = fault_server(make_smtp_server, {"rcpt": {
        "b@example.org": "451 4.2.0 b busy here",
        "d@example.org": "451 4.2.0 d busy here", "e@example.org": "450 4.2.1 e later"}})
    fallback = fault_server(make_smtp_server, {"rcpt": {"d@example.org": "452 4.3.1 d full"}})
    ini = write_ini(tmp_path, primary, extra=(
        f"mail.fallback_hosts = {address(fallback)}\nmail.workers = 1\n"))
    spool = Spool(str(tmp_path / "spool"))
    enqueue(spool, ["a@example.org", "b@example.org"], "<m1@example.org>")
    m2 = enqueue(spool, ["d@example.org", "e@example.org"], "<m2@example.org>")

    proc = run_qp(ini, "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert copies(primary) == {("a@example.org", "<m1@example.org>"): 1}
    assert copies(fallback) == {("b@example.org", "<m1@example.org>"): 1,
                                ("e@example.org", "<m2@example.org>"): 1}
    assert spool.names("deferred") == [m2]
    [attempt] = spool.read_meta(m2)["history"]
    results = {r["recipient"]: r for r in attempt["results"]}
    assert results["e@example.org"]["status"] == "sent"
    assert results["e@example.org"]["relay"] == address(fallback)
    d = results["d@example.org"]
    assert (d["status"], d["code"], d["relay"]) == ("temporary", 452, address(fallback))
    assert address(primary) in d["text"] and "d busy here" in d["text"]
    assert address(fallback) in d["text"] and "d full" in d["text"]

    shown = subprocess.run([QUEUE, ini, "show", "<m2@example.org>"], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert ("e@example.org: sent 250 Message accepted for delivery "
            f"[via {address(fallback)}]") in shown.stdout
    assert "d@example.org: temporary 452 4.3.1 d full (in reply to RCPT TO at " \
        f"{address(fallback)}); 451 4.2.0 d busy here (in reply to RCPT TO at " \
        f"{address(primary)}) [via {address(fallback)}]" in shown.stdout
    as_json = subprocess.run([QUEUE, ini, "show", "<m2@example.org>", "--json"],
                             capture_output=True, text=True, timeout=60)
    history = json.loads(as_json.stdout)["meta"]["history"]
    assert {r["relay"] for r in history[0]["results"]} == {address(fallback)}

    # later: both relays healthy; only d is still owed, and only d is offered
    primary.handler.heal()
    fallback.handler.heal()
    retry = subprocess.run([QUEUE, ini, "retry", m2], capture_output=True, text=True,
                           timeout=60)
    assert retry.returncode == 0, retry.stderr
    proc = run_qp(ini, "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert copies(primary) == {("a@example.org", "<m1@example.org>"): 1,
                               ("d@example.org", "<m2@example.org>"): 1}
    assert copies(fallback) == {("b@example.org", "<m1@example.org>"): 1,
                                ("e@example.org", "<m2@example.org>"): 1}
    assert primary.handler.rcpt_count("e@example.org") == 1  # the refused first offer
    assert fallback.handler.rcpt_count("e@example.org") == 1
    assert spool.names("deferred") == spool.names("new") == spool.names("failed") == []


def test_events_carry_the_relay_of_each_recipient(tmp_path, make_smtp_server):
    primary = fault_server(make_smtp_server, {"rcpt": {"b@example.org": "451 4.2.0 busy",
                                                       "c@example.org": "450 4.2.1 c later"}})
    fallback = fault_server(make_smtp_server, {"rcpt": {"c@example.org": "451 4.2.0 full"}})
    spool = Spool(str(tmp_path / "spool"))
    settings = parse_settings({
        "mail.queue_path": str(spool.path), "mail.host": primary.host,
        "mail.port": str(primary.port), "mail.fallback_hosts": address(fallback),
        "mail.timeout": "5"})
    seen = []
    config = Configurator()
    for iface in (IMailSent, IMailDeferred):
        config.add_subscriber(lambda event: seen.append(event), iface)
    config.commit()
    enqueue(spool, ["a@example.org", "b@example.org"], "<sent@example.org>")
    enqueue(spool, ["c@example.org"], "<deferred@example.org>")
    tm = transaction.TransactionManager(explicit=True)
    Processor(spool, None, settings, registry=config.registry, transaction_manager=tm,
              workers=1).run_once()
    by_id = {event.message_id: event for event in seen}
    sent = {r.recipient: r.relay for r in by_id["<sent@example.org>"].results}
    assert sent == {"a@example.org": address(primary), "b@example.org": address(fallback)}
    [deferred] = by_id["<deferred@example.org>"].results
    assert deferred.relay == address(fallback) and deferred.code == 451
    assert "c later" in deferred.text and address(primary) in deferred.text


def test_direct_delivery_fails_over_too(make_smtp_server):
    primary = fault_server(make_smtp_server, {"mail": "451 4.3.0 primary paused"})
    fallback = fault_server(make_smtp_server)
    events = []
    app = direct_app(primary, events, **{"mail.fallback_hosts": address(fallback)})
    response = app.get("/send", {"to": "bob@example.com"})
    assert response.status_int == 200
    assert stored(primary) == {} and stored(fallback) == {"bob@example.com": 1}
    [(event, _)] = events
    assert IMailSent.providedBy(event)
    assert [r.relay for r in event.results] == [address(fallback)]


def test_workers_keep_their_sessions_across_failovers_in_a_pass(tmp_path, make_smtp_server):
    """Each worker opens the fallback once, on its first failover, and reuses
    it for the next ones; its session to the primary is kept too."""
    primary = fault_server(make_smtp_server, {"rcpt": {"b@example.org": "451 4.2.0 busy"}})
    fallback = fault_server(make_smtp_server)
    spool = Spool(str(tmp_path / "spool"))
    settings = parse_settings({
        "mail.queue_path": str(spool.path), "mail.host": primary.host,
        "mail.port": str(primary.port), "mail.fallback_hosts": address(fallback),
        "mail.timeout": "5", "mail.workers": "2"})
    ids = [f"<w{n}@example.org>" for n in range(12)]
    for msgid in ids:
        enqueue(spool, ["a@example.org", "b@example.org"], msgid)
    stats = Processor(spool, None, settings).run_once()
    assert stats.sent == len(ids)
    assert copies(primary) == {("a@example.org", msgid): 1 for msgid in ids}
    assert copies(fallback) == {("b@example.org", msgid): 1 for msgid in ids}
    assert 1 <= primary.handler.connections <= 2
    assert 1 <= fallback.handler.connections <= 2
    assert fallback.handler.rcpt_count("a@example.org") == 0
