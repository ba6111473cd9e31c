"""pyramid_mailer's mailer API on request.mailer / get_mailer, with pyramid_mailer's meaning.

send_to_queue queues at commit whatever mail.delivery is; send_immediately sends now,
outside the transaction, and raises on failure unless fail_silently.  Each goes through
the same validation, encoding, redirect and events as send.  Real SMTP servers on
127.0.0.1 and pyramid_mailer's own Message objects.
"""
from __future__ import annotations

import email
import logging
import os
import smtplib
import socket

import pytest
import transaction
from pyramid.config import Configurator
from pyramid_mailer.message import Message

from pyramid_txmail import (DeliveryFailed, IMailFailed, IMailQueued, IMailSent,
                            InvalidAddress, NoQueue, get_mailer)
from pyramid_txmail.queue.maildir.spool import split_envelope

from .smtpserver import free_port


def make_mailer(server=None, events=None, **extra):
    settings = {"mail.delivery": "direct", "mail.timeout": "5",
                "mail.default_sender": "app@example.com"}
    if server is not None:
        settings.update({"mail.host": server.host, "mail.port": str(server.port)})
    settings.update(extra)
    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    if events is not None:
        def record(event):
            # The subscriber runs in a transaction of its own.
            assert event.transaction_manager.get().status == "Active"
            events.append(event)

        for iface in (IMailSent, IMailFailed, IMailQueued):
            config.add_subscriber(record, iface)
    config.commit()
    return config.registry, get_mailer(config.registry, transaction.TransactionManager(
        explicit=True))


def message(**kw):
    kw.setdefault("subject", "Hello")
    kw.setdefault("recipients", ["bob@example.com"])
    kw.setdefault("body", "Hello there.\n")
    return Message(**kw)


def queued(path):
    """The messages in new/ as (fromaddr, toaddrs, parsed message)."""
    found = []
    for name in sorted(os.listdir(path / "new")):
        fromaddr, toaddrs, data = split_envelope((path / "new" / name).read_bytes())
        found.append((fromaddr, toaddrs, email.message_from_bytes(data)))
    return found


# -- send_immediately -------------------------------------------------------------------

def test_send_immediately_sends_now_outside_any_transaction(smtp_server):
    events = []
    _, mailer = make_mailer(smtp_server, events)
    msgid = mailer.send_immediately(message(bcc=["audit@example.org"]))
    [received] = smtp_server.messages
    assert received.mail_from == "app@example.com"
    assert received.rcpt_tos == ["bob@example.com", "audit@example.org"]
    parsed = email.message_from_bytes(received.data)
    assert parsed["Message-ID"] == msgid and parsed["Bcc"] is None
    [sent] = events
    assert IMailSent.providedBy(sent) and sent.message_id == msgid


def test_send_immediately_is_not_undone_by_an_abort(smtp_server):
    _, mailer = make_mailer(smtp_server)
    mailer.transaction_manager.begin()
    mailer.send_immediately(message())
    mailer.transaction_manager.abort()
    assert len(smtp_server.messages) == 1


def test_send_immediately_to_a_refusing_relay_raises(make_smtp_server):
    server = make_smtp_server({"rcpt": "550 5.1.1 no such user"})
    events = []
    _, mailer = make_mailer(server, events)
    with pytest.raises(DeliveryFailed, match="550 5.1.1 no such user") as caught:
        mailer.send_immediately(message())
    # What code written for pyramid_mailer catches.
    assert isinstance(caught.value, smtplib.SMTPException)
    assert isinstance(caught.value, socket.error)
    assert "send_immediately" in str(caught.value) and "bob@example.com" in str(caught.value)
    assert [r.code for r in caught.value.result.permanent] == [550]
    [failed] = events
    assert IMailFailed.providedBy(failed) and "550" in failed.reason


def test_send_immediately_fail_silently_returns_false_and_logs(make_smtp_server, caplog):
    server = make_smtp_server({"rcpt": "550 5.1.1 no such user"})
    events = []
    _, mailer = make_mailer(server, events)
    with caplog.at_level(logging.ERROR, logger="pyramid_txmail"):
        assert mailer.send_immediately(message(), fail_silently=True) is False
    [record] = [r for r in caplog.records if "fail_silently" in r.getMessage()]
    assert record.levelno == logging.ERROR and "bob@example.com" in record.getMessage()
    assert [IMailFailed.providedBy(e) for e in events] == [True]


def test_send_immediately_with_the_relay_down_raises():
    registry, mailer = make_mailer(None, **{"mail.host": "127.0.0.1",
                                          "mail.port": str(free_port())})
    with pytest.raises(DeliveryFailed, match="temporary"):
        mailer.send_immediately(message())
    assert mailer.send_immediately(message(), fail_silently=True) is False


def test_send_immediately_partial_refusal_raises_and_names_who_got_it(make_smtp_server):
    server = make_smtp_server({"rcpt": {"bad@example.com": "550 5.1.1 unknown"}})
    _, mailer = make_mailer(server)
    with pytest.raises(DeliveryFailed) as caught:
        mailer.send_immediately(message(recipients=["bob@example.com", "bad@example.com"]))
    assert "accepted by bob@example.com" in str(caught.value)
    assert [m.rcpt_tos for m in server.messages] == [["bob@example.com"]]


def test_an_invalid_message_raises_even_with_fail_silently(smtp_server):
    _, mailer = make_mailer(smtp_server)
    with pytest.raises(InvalidAddress):
        mailer.send_immediately(message(recipients=["not an address"]), fail_silently=True)
    assert smtp_server.messages == []


def test_send_immediately_follows_the_redirect(smtp_server):
    _, mailer = make_mailer(smtp_server, **{"mail.redirect_to": "staging@example.com"})
    mailer.send_immediately(message(recipients=["customer@example.org"]))
    [received] = smtp_server.messages
    assert received.rcpt_tos == ["staging@example.com"]


def test_send_immediately_with_memory_delivery_keeps_it_at_once():
    from pyramid_txmail.interfaces import IMailOutbox

    registry, mailer = make_mailer(None, **{"mail.delivery": "memory"})
    msgid = mailer.send_immediately(message())
    [kept] = registry.getUtility(IMailOutbox).messages
    assert kept.message_id == msgid and kept.toaddrs == ("bob@example.com",)


# -- send_to_queue --------------------------------------------------------------------

def test_send_to_queue_queues_at_commit_even_with_direct_delivery(smtp_server, tmp_path):
    events = []
    _, mailer = make_mailer(smtp_server, events, **{"mail.queue_path": str(tmp_path / "q")})
    with mailer.transaction_manager:
        msgid = mailer.send_to_queue(message())
        assert queued(tmp_path / "q") == []  # not before the commit
    [(fromaddr, toaddrs, msg)] = queued(tmp_path / "q")
    assert (fromaddr, toaddrs, msg["Message-ID"]) == ("app@example.com", ("bob@example.com",),
                                                     msgid)
    assert smtp_server.messages == []  # queued, not sent
    assert [IMailQueued.providedBy(e) for e in events] == [True]


def test_send_to_queue_is_dropped_on_abort(smtp_server, tmp_path):
    _, mailer = make_mailer(smtp_server, **{"mail.queue_path": str(tmp_path / "q")})
    mailer.transaction_manager.begin()
    mailer.send_to_queue(message())
    mailer.send(message(subject="direct"))
    mailer.transaction_manager.abort()
    assert queued(tmp_path / "q") == [] and smtp_server.messages == []


def test_send_and_send_to_queue_in_one_transaction(smtp_server, tmp_path):
    _, mailer = make_mailer(smtp_server, **{"mail.queue_path": str(tmp_path / "q"),
                                            "mail.direct_fallback": "none"})
    with mailer.transaction_manager:
        mailer.send(message(subject="direct"))
        mailer.send_to_queue(message(subject="queued"))
    assert [email.message_from_bytes(m.data)["Subject"] for m in smtp_server.messages] == \
        ["direct"]
    assert [m["Subject"] for _, _, m in queued(tmp_path / "q")] == ["queued"]


def test_send_to_queue_without_a_queue_is_a_clear_error(smtp_server):
    _, mailer = make_mailer(smtp_server)
    with mailer.transaction_manager:
        with pytest.raises(NoQueue, match="mail.queue_path") as caught:
            mailer.send_to_queue(message())
    assert isinstance(caught.value, RuntimeError)  # as pyramid_mailer's


def test_every_method_of_pyramid_mailers_mailer_exists():
    from pyramid_mailer.mailer import Mailer as PyramidMailer

    from pyramid_txmail import Mailer

    for name in ("send", "send_immediately", "send_to_queue", "send_sendmail",
                 "send_immediately_sendmail"):
        assert callable(getattr(Mailer, name)), name
        assert hasattr(PyramidMailer, name)


def test_a_delivery_built_from_one_memory_outbox_serves_every_method():
    # As a DummyMailer counterpart builds it: Delivery(settings, outbox), no make_delivery.
    from pyramid_txmail import Delivery
    from pyramid_txmail.mailer.devdelivery import MemoryOutbox
    from pyramid_txmail.settings import MailSettings

    outbox = MemoryOutbox()
    mailer = Delivery(MailSettings(delivery="memory", default_sender="app@example.com"),
                      outbox).bind(transaction.TransactionManager(explicit=True))
    with mailer.transaction_manager:
        mailer.send(message(subject="send"))
        mailer.send_to_queue(message(subject="queue"))
        mailer.send_sendmail(message(subject="sendmail"))
    mailer.send_immediately(message(subject="now"))
    mailer.send_immediately_sendmail(message(subject="now by sendmail"))
    kept = [m.subject for m in outbox.messages] + [m.subject for m in
                                                   getattr(outbox, "queue", [])]
    assert sorted(kept) == ["now", "now by sendmail", "queue", "send", "sendmail"]
