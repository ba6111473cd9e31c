"""Direct delivery: sent after the commit; a failure never breaks the committed request."""
from __future__ import annotations

import email
import os

import pytest
import transaction
import webtest
from pyramid.config import Configurator
from zope.interface.verify import verifyObject

from pyramid_txmail import IMailDelivery, IMailFailed, IMailQueued, IMailSent
from pyramid_txmail.queue.maildir.spool import split_envelope

from .app import main


def direct_app(server, events=None, **extra):
    settings = {"mail.delivery": "direct", "mail.host": server.host,
                "mail.port": str(server.port), "mail.timeout": "5"}
    settings.update(extra)
    subscribers = []
    if events is not None:
        def record(event):
            events.append((event, event.transaction_manager.get().status))
        subscribers = [(IMailSent, record), (IMailFailed, record), (IMailQueued, record)]
    return webtest.TestApp(main(settings, subscribers=subscribers))


def test_sent_after_commit(smtp_server):
    events = []
    msgid = direct_app(smtp_server, events).get("/send", {"to": "bob@example.com"}).text
    [received] = smtp_server.messages
    assert received.mail_from == "sender@example.com" and received.rcpt_tos == ["bob@example.com"]
    assert email.message_from_bytes(received.data)["Message-ID"] == msgid
    assert b"\r\n" in received.data and b"\n" not in received.data.replace(b"\r\n", b"")
    [(event, status)] = events
    assert IMailSent.providedBy(event) and event.message_id == msgid
    assert str(status) in ("Active", "Status.ACTIVE")


@pytest.mark.parametrize("path", ["/abort", "/doom", "/veto", "/savepoint"])
def test_nothing_sent_without_commit(smtp_server, path):
    direct_app(smtp_server).get(path)
    subjects = [email.message_from_bytes(m.data)["Subject"] for m in smtp_server.messages]
    if path == "/savepoint":
        assert sorted(subjects) == ["after rollback", "before savepoint"]
    else:
        assert subjects == []


def test_nothing_sent_when_the_view_raises(smtp_server):
    with pytest.raises(RuntimeError):
        direct_app(smtp_server).get("/fail")
    assert smtp_server.messages == []


def test_one_connection_for_several_messages(smtp_server):
    direct_app(smtp_server).get("/send", {"count": "3"})
    assert len(smtp_server.messages) == 3
    assert smtp_server.handler.connections == 1


def test_refusal_never_breaks_the_committed_request(make_smtp_server, caplog):
    server = make_smtp_server({"rcpt": "550 5.1.1 no such user"})
    events = []
    response = direct_app(server, events).get("/send", {"to": "gone@example.com"})
    assert response.status_int == 200
    [(event, _)] = events
    assert IMailFailed.providedBy(event)
    assert event.results[0].code == 550 and "no such user" in event.reason
    assert "gone@example.com" in caplog.text and "no fallback" in caplog.text


def test_relay_down_never_breaks_the_committed_request(caplog):
    from .smtpserver import free_port

    class Nowhere:
        host, port = "127.0.0.1", free_port()

    events = []
    response = direct_app(Nowhere, events).get("/send")
    assert response.status_int == 200
    assert [IMailFailed.providedBy(e) for e, _ in events] == [True]


def test_fallback_queues_temporary_failures(make_smtp_server, tmp_path):
    server = make_smtp_server({"rcpt": {"later@example.com": "451 4.3.0 busy"}})
    spool = tmp_path / "spool"
    events = []
    direct_app(server, events, **{"mail.queue_path": str(spool)}).get(  # fallback: default
        "/send", {"to": "now@example.com, later@example.com"})
    assert [m.rcpt_tos for m in server.messages] == [["now@example.com"]]
    [name] = os.listdir(spool / "new")
    fromaddr, toaddrs, _ = split_envelope((spool / "new" / name).read_bytes())
    assert toaddrs == ("later@example.com",)
    kinds = sorted(type(e).__name__ for e, _ in events)
    assert kinds == ["MailQueued", "MailSent"]


def test_fallback_dead_letters_permanent_failures(make_smtp_server, tmp_path):
    import json

    server = make_smtp_server({"rcpt": {"gone@example.com": "550 5.1.1 gone"}})
    spool = tmp_path / "spool"
    direct_app(server, **{"mail.direct_fallback": "queue",
                          "mail.queue_path": str(spool)}).get("/send", {"to": "gone@example.com"})
    [name] = os.listdir(spool / "failed")
    meta = json.loads((spool / "meta" / (name + ".json")).read_text())
    assert "550" in meta["reason"] and "gone@example.com" in meta["reason"]
    assert os.listdir(spool / "new") == [] and os.listdir(spool / "tmp") == []


def test_delivery_utility_is_repoze_imaildelivery(smtp_server):
    config = Configurator(settings={"mail.delivery": "direct", "mail.host": smtp_server.host,
                                    "mail.port": str(smtp_server.port)})
    config.include("pyramid_txmail")
    delivery = config.registry.getUtility(IMailDelivery)
    verifyObject(IMailDelivery, delivery)
    from .app import make_message

    transaction.begin()
    msgid = delivery.send("bounce@example.com", ["x@example.com"], make_message({}))
    transaction.commit()
    [received] = smtp_server.messages
    assert (received.mail_from, received.rcpt_tos) == ("bounce@example.com", ["x@example.com"])
    assert email.message_from_bytes(received.data)["Message-ID"] == msgid


def test_fallback_none_reports_but_keeps_nothing(make_smtp_server, tmp_path, caplog):
    server = make_smtp_server({"rcpt": "451 4.3.0 busy"})
    spool = tmp_path / "spool"
    events = []
    direct_app(server, events, **{"mail.direct_fallback": "none",
                                  "mail.queue_path": str(spool)}).get("/send")
    assert [IMailFailed.providedBy(e) for e, _ in events] == [True]
    assert all(os.listdir(spool / state) == [] for state in ("new", "failed", "tmp"))
    assert "no fallback" in caplog.text


def test_a_fallback_write_failure_does_not_cost_the_next_message_its_turn(
        make_smtp_server, tmp_path, caplog):
    import resource
    import signal

    from pyramid_txmail import get_mailer

    from .app import make_message

    server = make_smtp_server({"rcpt": "451 4.3.0 busy"})
    spool = tmp_path / "spool"
    config = Configurator(settings={
        "mail.delivery": "direct", "mail.host": server.host, "mail.port": str(server.port),
        "mail.queue_path": str(spool), "mail.default_sender": "app@example.com"})
    config.include("pyramid_txmail")
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(config.registry, manager)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, hard))
    try:
        with manager:
            big = mailer.send(make_message({"body": "x" * 8000}))
            small = mailer.send(make_message({"body": "small"}))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    [name] = os.listdir(spool / "new")
    assert email.message_from_bytes((spool / "new" / name).read_bytes())["Message-ID"] == small
    assert big in caplog.text and "could not be kept" in caplog.text
