"""Savepoints and the mailer's data manager, for every kind of delivery.

A savepoint taken *before* the first send does not hold a savepoint of ours:
when our data manager joins later, transaction gives that savepoint an
``AbortSavepoint``, and its rollback aborts the data manager and removes it
from the transaction.  Every send after that must go to a fresh data manager
that is joined (it used to go to the removed one: the mail vanished while the
log said "queued" and MailQueued/MailSent fired).  Each scenario below is a
sequence of sends, savepoints and rollbacks; what reaches the delivery and
what the events report must both be exactly the mail that was kept.
"""
from __future__ import annotations

import email
import email.message
import os

import pytest
import transaction
from pyramid.config import Configurator

from pyramid_txmail import IMailDelivery, IMailOutbox, get_mailer
from pyramid_txmail.events import MailQueued, MailSent
from pyramid_txmail.queue.maildir.spool import split_envelope
from pyramid_txmail.dev.testing import DummyMailer

from .smtpserver import SMTPServer

#: name -> (steps, subjects expected to be delivered).  Steps: "send N",
#: "sp NAME" (take a savepoint), "rb NAME" (roll it back).
SCENARIOS = {
    "savepoint-before-first-send": (
        ["sp a", "send 1", "rb a", "send 2"], ["m2"]),
    "savepoint-before-first-send-nothing-after": (
        ["sp a", "send 1", "rb a"], []),
    "rollback-twice-to-the-same-savepoint": (
        ["sp a", "send 1", "rb a", "send 2", "rb a", "send 3"], ["m3"]),
    "savepoint-after-first-send": (
        ["send 0", "sp a", "send 1", "rb a", "send 2"], ["m0", "m2"]),
    "nested-both-before-first-send": (
        ["sp a", "sp b", "send 1", "rb b", "send 2", "rb a", "send 3"], ["m3"]),
    "nested-inner-after-first-send": (
        ["sp a", "send 1", "sp b", "send 2", "rb b", "send 3"], ["m1", "m3"]),
    "nested-outer-rolled-back-after-inner-kept": (
        ["sp a", "send 1", "sp b", "send 2", "rb a", "send 3", "sp c", "send 4"],
        ["m3", "m4"]),
    "savepoint-never-rolled-back": (
        ["sp a", "send 1", "sp b", "send 2"], ["m1", "m2"]),
}


def message(n):
    msg = email.message.EmailMessage()
    msg["To"] = f"r{n}@example.com"
    msg["Subject"] = f"m{n}"
    msg.set_content(f"message {n}")
    return msg


def run(mailer, tm, steps, commit=True):
    savepoints = {}
    tm.begin()
    for step in steps:
        what, arg = step.split()
        if what == "send":
            mailer.send(message(arg))
        elif what == "sp":
            savepoints[arg] = tm.savepoint()
        else:
            savepoints[arg].rollback()
    if commit:
        tm.commit()
    else:
        tm.abort()


class Kind:
    """One delivery: a mailer on an explicit manager, what it delivered, its events."""

    def __init__(self, settings, tmp_path, event_type):
        self.events = []
        config = Configurator(settings={"mail.default_sender": "app@example.com", **settings})
        config.include("pyramid_txmail")
        config.add_subscriber(lambda e: self.events.append(e.message_id), event_type)
        config.commit()
        self.registry = config.registry
        self.tm = transaction.TransactionManager(explicit=True)
        self.mailer = get_mailer(self.registry, self.tm)


@pytest.fixture(params=["queue", "direct", "memory", "file", "dummy"])
def kind(request, tmp_path):
    name = request.param
    if name == "queue":
        spool = tmp_path / "spool"
        k = Kind({"mail.queue_path": str(spool), "mail.delivery": "queue"}, tmp_path,
                 MailQueued)

        def delivered():
            return [_subject(split_envelope((spool / "new" / n).read_bytes())[2])
                    for n in os.listdir(spool / "new")]
        k.delivered = delivered
        k.leftovers = lambda: os.listdir(spool / "tmp") + os.listdir(spool / "prepared")
        yield k
    elif name == "direct":
        with SMTPServer() as server:
            k = Kind({"mail.delivery": "direct", "mail.host": server.host,
                      "mail.port": str(server.port), "mail.timeout": "5"}, tmp_path, MailSent)
            k.delivered = lambda: [_subject(m.data) for m in server.messages]
            k.leftovers = list
            yield k
    elif name == "memory":
        k = Kind({"mail.delivery": "memory"}, tmp_path, MailSent)
        outbox = k.registry.getUtility(IMailOutbox)
        k.delivered = lambda: [m.subject for m in outbox]
        k.leftovers = list
        yield k
    elif name == "file":
        where = tmp_path / "files"
        k = Kind({"mail.delivery": "file", "mail.file_path": str(where)}, tmp_path, MailSent)
        k.delivered = lambda: [_subject((where / n).read_bytes()) for n in os.listdir(where)
                               if not n.startswith(".")] if where.exists() else []
        k.leftovers = lambda: [n for n in os.listdir(where) if n.startswith(".")] \
            if where.exists() else []
        yield k
    else:  # DummyMailer (pyramid_txmail.testing), on the thread-local manager
        k = Kind.__new__(Kind)
        k.mailer = DummyMailer()
        k.tm = transaction.manager
        k.events = None
        k.delivered = lambda: [m.subject for m in k.mailer.outbox]
        k.leftovers = list
        yield k
        transaction.manager.abort()


def _subject(data):
    return email.message_from_bytes(bytes(data))["Subject"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_only_the_kept_mail_is_delivered_and_reported(kind, scenario):
    steps, expected = SCENARIOS[scenario]
    run(kind.mailer, kind.tm, steps)
    assert sorted(kind.delivered()) == expected
    assert kind.leftovers() == []
    if kind.events is not None:
        # The events name exactly the delivered messages -- no MailQueued/MailSent
        # for mail that was dropped.
        assert len(kind.events) == len(expected)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_an_abort_after_any_scenario_delivers_and_reports_nothing(kind, scenario):
    steps, _ = SCENARIOS[scenario]
    run(kind.mailer, kind.tm, steps, commit=False)
    assert kind.delivered() == []
    assert kind.leftovers() == []
    if kind.events is not None:
        assert kind.events == []


def test_the_next_transaction_is_unaffected(kind):
    run(kind.mailer, kind.tm, ["sp a", "send 1", "rb a", "send 2"])
    run(kind.mailer, kind.tm, ["send 3"])
    assert sorted(kind.delivered()) == ["m2", "m3"]


def test_a_savepoint_rollback_log_names_what_was_dropped_only(kind, caplog):
    caplog.set_level("INFO")
    run(kind.mailer, kind.tm, ["sp a", "send 1", "rb a", "send 2"])
    dropped = [r for r in caplog.records if "dropped by a savepoint rollback" in r.getMessage()]
    assert len(dropped) == 1 and "1 message(s)" in dropped[0].getMessage()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_toolbar_send_log_says_committed_only_for_what_was_written(tmp_path, scenario):
    """The debug toolbar's per-request record (mailer.sendlog) follows the same rule."""
    from pyramid.testing import DummyRequest

    from pyramid_txmail.mailer.sendlog import COMMITTED, ROLLED_BACK, start_recording

    spool = tmp_path / "spool"
    k = Kind({"mail.queue_path": str(spool), "mail.delivery": "queue"}, tmp_path, MailQueued)
    request = DummyRequest()
    request.registry = k.registry
    records = start_recording(request)
    mailer = k.registry.getUtility(IMailDelivery).bind(k.tm, request)
    steps, expected = SCENARIOS[scenario]
    run(mailer, k.tm, steps)
    assert sorted(r.subject for r in records if r.state == COMMITTED) == expected
    assert all(r.state == ROLLED_BACK for r in records if r.subject not in expected)
    delivered = [_subject(split_envelope((spool / "new" / n).read_bytes())[2])
                 for n in os.listdir(spool / "new")]
    assert sorted(delivered) == expected


def test_a_data_manager_that_has_left_refuses_mail_naming_it():
    """The guard behind the fix: never a silent add to a manager that will not vote."""
    from pyramid_txmail.compose.message import prepare
    from pyramid_txmail.mailer.datamanager import MailDataManager, ManagerLeft

    manager = MailDataManager(None, None, lambda messages: None)
    manager.abort(None)
    prepared = prepare(message(1), "app@example.com", None, None)
    with pytest.raises(ManagerLeft, match=prepared.message_id.strip("<>")):
        manager.add(prepared)
