"""The queue processor against real aiosmtpd servers; time comes from a fake clock."""
from __future__ import annotations

import json
import logging
import os
import time
from email.message import EmailMessage

import pytest
import transaction
from pyramid.config import Configurator

from pyramid_txmail.interfaces import IMailDeferred, IMailFailed, IMailSent
from pyramid_txmail.processor.processor import Processor, format_duration
from pyramid_txmail.compose.wire import message_id_of
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir.spool import Spool, split_envelope

FROM = "sender@example.org"


class Clock:
    """Starts at the real time (claims stamp real mtimes) and moves only when told."""

    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def message(msgid="<m1@example.org>", subject="Hello", body="Hi there.\n"):
    return (f"From: {FROM}\nTo: a@example.org\nSubject: {subject}\n"
            f"Message-ID: {msgid}\n\n{body}").encode()


def queue(spool, toaddrs, data=None, fromaddr=FROM):
    name = spool.write_tmp(fromaddr, list(toaddrs), data or message())
    spool.commit_tmp([name])
    return name


def files(spool, state):
    return spool.names(state)


def failed_meta(spool):
    return [spool.read_meta(n) for n in spool.names("failed")]


def read_failed(spool, name):
    with open(os.path.join(spool.path, "failed", name), "rb") as f:
        return split_envelope(f.read())


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path / "spool"))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make_processor(spool, clock):
    """``make_processor(server, **settings)``: a Processor over a real SMTPTransport."""
    from pyramid_txmail.relay.smtp import SMTPTransport

    transports = []

    def make(server, registry=None, transaction_manager=None, rand=lambda: 0.5, **extra):
        raw = {"mail.host": server.host, "mail.port": str(server.port),
               "mail.queue_path": spool.path, "mail.timeout": "10"}
        raw.update({"mail." + k: str(v) for k, v in extra.items()})
        settings = parse_settings(raw)
        transport = SMTPTransport.from_settings(settings)
        transports.append(transport)
        return Processor(spool, transport, settings, registry=registry,
                         transaction_manager=transaction_manager, clock=clock, rand=rand)

    yield make
    for transport in transports:
        transport.close()


def test_queued_message_is_delivered_and_removed(spool, smtp_server, make_processor):
    queue(spool, ["a@example.org", "b@example.net"])
    stats = make_processor(smtp_server).run_once()
    assert (stats.sent, stats.deferred, stats.failed) == (1, 0, 0)
    [got] = smtp_server.messages
    assert got.mail_from == FROM
    assert got.rcpt_tos == ["a@example.org", "b@example.net"]
    assert b"X-Actually" not in got.data
    assert b"Subject: Hello" in got.data
    for state in ("new", "cur", "deferred", "failed"):
        assert files(spool, state) == []
    assert os.listdir(os.path.join(spool.path, "meta")) == []


def test_temporary_failure_defers_and_retries_only_when_due(spool, clock, make_smtp_server,
                                                            make_processor):
    server = make_smtp_server({"data": ["451 4.3.0 try later", "250 ok"]})
    processor = make_processor(server)
    name = queue(spool, ["a@example.org"])
    stats = processor.run_once()
    assert (stats.sent, stats.deferred) == (0, 1)
    assert files(spool, "deferred") == [name]
    meta = spool.read_meta(name)
    assert meta["attempts"] == 1
    assert meta["first_attempt"] == meta["last_attempt"] == clock.now
    assert meta["next_attempt"] == clock.now + 300  # rand 0.5: no jitter
    assert meta["delivered"] == []
    [attempt] = meta["history"]
    assert attempt["results"][0]["code"] == 451
    assert "try later" in attempt["results"][0]["text"]

    clock.advance(299)
    stats = processor.run_once()
    assert (stats.sent, stats.skipped) == (0, 1)
    assert server.messages == []
    assert files(spool, "deferred") == [name]

    clock.advance(2)
    stats = processor.run_once()
    assert stats.sent == 1
    assert len(server.messages) == 1
    assert files(spool, "deferred") == []
    assert spool.read_meta(name) == {}


def test_backoff_doubles_up_to_retry_max_with_jitter(spool, clock, make_smtp_server,
                                                    make_processor):
    server = make_smtp_server({"data": "451 4.3.0 try later"})
    jitter = iter([0.5, 0.0, 1.0, 0.5, 0.5])
    processor = make_processor(server, rand=lambda: next(jitter),
                               retry_initial=100, retry_max=250)
    name = queue(spool, ["a@example.org"])
    delays = []
    for _ in range(5):
        processor.run_once()
        meta = spool.read_meta(name)
        delays.append(round(meta["next_attempt"] - meta["last_attempt"], 6))
        clock.advance(400)
    assert delays == [100, 200 * 0.8, 250 * 1.2, 250, 250]
    assert spool.read_meta(name)["attempts"] == 5


def test_permanent_failure_is_dead_lettered_with_reason(spool, make_smtp_server,
                                                       make_processor):
    server = make_smtp_server({"rcpt": "550 5.1.1 no such user"})
    name = queue(spool, ["a@example.org"])
    stats = make_processor(server).run_once()
    assert (stats.sent, stats.deferred, stats.failed) == (0, 0, 1)
    assert server.messages == []
    assert files(spool, "failed") == [name]
    assert files(spool, "new") == files(spool, "cur") == []
    meta = spool.read_meta(name)
    assert "550" in meta["reason"] and "no such user" in meta["reason"]
    [recipient] = meta["recipients"]
    assert recipient["recipient"] == "a@example.org"
    assert recipient["code"] == 550 and "no such user" in recipient["text"]
    assert meta["attempts"] == 1 and meta["failed_at"]
    assert read_failed(spool, name)[:2] == (FROM, ("a@example.org",))


def test_partial_refusal_sends_once_and_dead_letters_only_the_refused(
        spool, clock, make_smtp_server, make_processor):
    server = make_smtp_server({"rcpt": {"b@example.org": "550 5.1.1 no such user"}})
    processor = make_processor(server)
    name = queue(spool, ["a@example.org", "b@example.org"])
    stats = processor.run_once()
    assert stats.failed == 1 and stats.deferred == 0
    [got] = server.messages
    assert got.rcpt_tos == ["a@example.org"]
    assert files(spool, "new") == files(spool, "cur") == files(spool, "deferred") == []
    [dead] = files(spool, "failed")
    assert dead != name
    fromaddr, toaddrs, data = read_failed(spool, dead)
    assert (fromaddr, toaddrs) == (FROM, ("b@example.org",))
    assert b"Subject: Hello" in data
    meta = spool.read_meta(dead)
    assert meta["dead_letter_of"] == name
    assert [r["recipient"] for r in meta["recipients"]] == ["b@example.org"]
    assert "550" in meta["reason"]

    clock.advance(86400)
    processor.run_once()
    assert len(server.messages) == 1  # nothing is sent again

    # An operator retries the dead letter: it goes to the refused recipient only.
    os.rename(os.path.join(spool.path, "failed", dead), os.path.join(spool.path, "new", dead))
    server.handler.script = {}
    stats = processor.run_once()
    assert stats.sent == 1
    assert [m.rcpt_tos for m in server.messages] == [["a@example.org"], ["b@example.org"]]


def test_partial_temporary_failure_retries_only_that_recipient(spool, clock, make_smtp_server,
                                                              make_processor):
    server = make_smtp_server({"rcpt": {"b@example.org": ["452 4.5.3 too many recipients",
                                                          "250 ok"]}})
    processor = make_processor(server)
    name = queue(spool, ["a@example.org", "b@example.org"])
    stats = processor.run_once()
    assert stats.deferred == 1
    assert spool.read_meta(name)["delivered"] == ["a@example.org"]
    clock.advance(400)
    stats = processor.run_once()
    assert stats.sent == 1
    assert [m.rcpt_tos for m in server.messages] == [["a@example.org"], ["b@example.org"]]
    clock.advance(10000)
    processor.run_once()
    assert len(server.messages) == 2
    assert files(spool, "deferred") == files(spool, "failed") == []


def test_message_expires_after_max_queue_time(spool, clock, make_smtp_server, make_processor):
    server = make_smtp_server({"rcpt": "451 4.4.1 relay down"})
    processor = make_processor(server, max_queue_time=1000)
    name = queue(spool, ["a@example.org"])
    assert processor.run_once().deferred == 1
    clock.advance(2000)
    # past the limit once: one more try (a clock that was ahead once never expires it)
    assert processor.run_once().deferred == 1
    clock.advance(2000)
    stats = processor.run_once()
    assert (stats.deferred, stats.failed) == (0, 1)
    assert files(spool, "failed") == [name]
    reason = spool.read_meta(name)["reason"]
    assert reason.startswith("expired after 3 attempts over 1h 6m"), reason
    assert "451" in reason and "relay down" in reason
    assert spool.read_meta(name)["attempts"] == 3


def _put(spool, name, data):
    path = os.path.join(spool.path, "new", name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_poison_files_are_dead_lettered_and_the_pass_goes_on(spool, smtp_server,
                                                            make_processor):
    _put(spool, "1000000001.M000001P1Q1.host", b"Subject: no envelope\n\nbody\n")
    _put(spool, "1000000002.M000001P1Q2.host", bytes(range(256)) * 8)
    os.mkdir(os.path.join(spool.path, "new", "1000000003.M000001P1Q3.host"))
    _put(spool, "1000000004.M000001P1Q4.host",
         b"X-Actually-From: =?bogus?q?a?=\nX-Actually-To: b@example.org\n\nhi\n")
    _put(spool, "1000000005.M000001P1Q5.host",
         b"X-Actually-From: a@example.org\nX-Actually-To: =?utf-8?q?b=0Ab@x.org?=\n\nhi\n")
    good = queue(spool, ["a@example.org"])
    stats = make_processor(smtp_server).run_once()
    assert (stats.sent, stats.failed, stats.errors) == (1, 5, 0)
    assert len(smtp_server.messages) == 1
    assert files(spool, "failed") == ["1000000001.M000001P1Q1.host",
                                      "1000000002.M000001P1Q2.host",
                                      "1000000003.M000001P1Q3.host",
                                      "1000000004.M000001P1Q4.host",
                                      "1000000005.M000001P1Q5.host"]
    reasons = [m["reason"] for m in failed_meta(spool)]
    assert all(r.startswith("poison: ") for r in reasons)
    assert "no envelope" in reasons[0] and "no envelope" in reasons[1]
    assert "not a regular file but a directory" in reasons[2]  # never opened
    assert "bogus" in reasons[3]
    assert "line break" in reasons[4]
    assert good not in files(spool, "failed")


def test_stale_claim_is_recovered_and_a_fresh_one_left_alone(spool, clock, smtp_server,
                                                            make_processor):
    stale = queue(spool, ["stale@example.org"])
    fresh = queue(spool, ["fresh@example.org"])
    for name in (stale, fresh):
        os.rename(os.path.join(spool.path, "new", name), os.path.join(spool.path, "cur", name))
    old = clock.now - 7200
    os.utime(os.path.join(spool.path, "cur", stale), (old, old))
    stats = make_processor(smtp_server, claim_timeout=3600).run_once()
    assert (stats.recovered, stats.sent) == (1, 1)
    assert [m.rcpt_tos for m in smtp_server.messages] == [["stale@example.org"]]
    assert files(spool, "cur") == [fresh]


def test_corrupt_state_file_is_not_guessed(spool, smtp_server, make_processor):
    name = queue(spool, ["a@example.org", "b@example.org"])
    with open(os.path.join(spool.path, "meta", name + ".json"), "w") as f:
        f.write("{not json")
    stats = make_processor(smtp_server).run_once()
    assert stats.failed == 1
    assert smtp_server.messages == []
    assert files(spool, "failed") == [name]
    assert "corrupt" in spool.read_meta(name)["reason"]


def test_duplicate_envelope_recipients_get_one_copy(spool, smtp_server, make_processor):
    queue(spool, ["a@example.org", "b@example.org", "a@example.org"])
    assert make_processor(smtp_server).run_once().sent == 1
    assert [m.rcpt_tos for m in smtp_server.messages] == [["a@example.org", "b@example.org"]]


def test_an_unexpected_error_on_one_message_does_not_stop_the_pass(
        spool, smtp_server, make_processor, monkeypatch, caplog):
    broken = queue(spool, ["broken@example.org"])
    queue(spool, ["fine@example.org"])
    retire = spool.retire

    def failing_retire(entry, has_meta=True):
        if entry.name == broken:
            raise OSError(5, "Input/output error")
        return retire(entry, has_meta)

    monkeypatch.setattr(spool, "retire", failing_retire)
    stats = make_processor(smtp_server).run_once()
    assert (stats.sent, stats.errors) == (1, 1)
    assert files(spool, "cur") == [broken]  # put back after claim_timeout
    assert "Input/output error" in caplog.text
    assert [m.rcpt_tos for m in smtp_server.messages][-1] == ["fine@example.org"]


class RaisingTransport:
    def __init__(self, exc):
        self.exc = exc

    def deliver(self, fromaddr, toaddrs, data, message_id=None):
        raise self.exc


def test_a_raising_transport_defers_instead_of_losing(spool, clock):
    settings = parse_settings({"mail.queue_path": spool.path})
    name = queue(spool, ["a@example.org"])
    transport = RaisingTransport(RuntimeError("bug in a transport"))
    stats = Processor(spool, transport, settings, clock=clock).run_once()
    assert stats.deferred == 1
    assert files(spool, "deferred") == [name]
    assert "bug in a transport" in spool.read_meta(name)["history"][0]["results"][0]["text"]


def test_arguments_the_transport_refuses_are_a_permanent_failure(spool, clock):
    settings = parse_settings({"mail.queue_path": spool.path})
    name = queue(spool, ["a@example.org"])
    transport = RaisingTransport(ValueError("cannot send this"))
    stats = Processor(spool, transport, settings, clock=clock).run_once()
    assert stats.failed == 1
    assert files(spool, "failed") == [name]
    assert "cannot send this" in spool.read_meta(name)["reason"]


# -- repoze.sendmail compatibility, both directions ------------------------------------


def test_repoze_queued_message_is_delivered_by_the_processor(spool, smtp_server,
                                                           make_processor):
    from repoze.sendmail.delivery import QueuedMailDelivery

    tm = transaction.TransactionManager()
    delivery = QueuedMailDelivery(spool.path, transaction_manager=tm)
    msg = EmailMessage()
    msg["From"] = FROM
    msg["To"] = "a@example.org"
    msg["Subject"] = "from repoze"
    msg["Message-ID"] = "<repoze@example.org>"
    msg.set_content("queued by repoze.sendmail\n")
    tm.begin()
    delivery.send(FROM, ["a@example.org", "b@example.net"], msg)
    tm.commit()
    assert len(files(spool, "new")) == 1

    stats = make_processor(smtp_server).run_once()
    assert stats.sent == 1
    [got] = smtp_server.messages
    assert got.mail_from == FROM
    assert got.rcpt_tos == ["a@example.org", "b@example.net"]
    assert b"X-Actually" not in got.data
    assert b"Subject: from repoze" in got.data
    assert b"queued by repoze.sendmail" in got.data


def test_our_queued_message_is_delivered_by_repoze_queue_processor(spool, smtp_server):
    from repoze.sendmail.mailer import SMTPMailer
    from repoze.sendmail.queue import QueueProcessor

    queue(spool, ["a@example.org", "b@example.net"], message(subject="to repoze"))
    mailer = SMTPMailer(hostname=smtp_server.host, port=smtp_server.port, no_tls=True)
    QueueProcessor(mailer, spool.path).send_messages()
    [got] = smtp_server.messages
    assert got.mail_from == FROM
    assert got.rcpt_tos == ["a@example.org", "b@example.net"]
    assert b"X-Actually" not in got.data
    assert b"Subject: to repoze" in got.data
    assert files(spool, "new") == []


# -- events -------------------------------------------------------------------------------


def test_events_reach_subscribers_in_their_own_transaction_after_the_files_moved(
        spool, make_smtp_server, make_processor):
    server = make_smtp_server({"rcpt": {"c@example.org": "451 4.2.0 mailbox busy",
                                        "d@example.org": "550 5.1.1 no such user"}})
    tm = transaction.TransactionManager(explicit=True)
    seen = []

    def record(event):
        txn = tm.get()  # raises NoTransaction outside an active transaction
        seen.append((type(event).__name__, event.message_id, event.toaddrs,
                     [r.code for r in event.results], event.reason,
                     txn.status, event.transaction_manager is tm,
                     [st for st in ("new", "cur", "deferred", "failed")
                      if names[event.message_id] in files(spool, st)]))

    config = Configurator()
    for iface in (IMailSent, IMailDeferred, IMailFailed):
        config.add_subscriber(record, iface)
    config.commit()
    names = {msgid: queue(spool, [to], message(msgid)) for to, msgid in (
        ("a@example.org", "<sent@x>"), ("c@example.org", "<deferred@x>"),
        ("d@example.org", "<failed@x>"))}

    make_processor(server, registry=config.registry, transaction_manager=tm).run_once()

    assert [s[:4] for s in seen] == [
        ("MailSent", "<sent@x>", ("a@example.org",), [250]),
        ("MailDeferred", "<deferred@x>", ("c@example.org",), [451]),
        ("MailFailed", "<failed@x>", ("d@example.org",), [550]),
    ]
    assert "mailbox busy" in seen[1][4] and "no such user" in seen[2][4]
    assert all(s[5] == "Active" and s[6] for s in seen)
    # each event saw its message's new state already on disk
    assert [s[7] for s in seen] == [[], ["deferred"], ["failed"]]


def test_a_raising_subscriber_is_logged_and_changes_nothing(spool, smtp_server,
                                                           make_processor, caplog):
    def explode(event):
        raise RuntimeError("subscriber bug")

    config = Configurator()
    config.add_subscriber(explode, IMailSent)
    config.commit()
    name = queue(spool, ["a@example.org"])
    tm = transaction.TransactionManager(explicit=True)
    with caplog.at_level(logging.INFO):
        stats = make_processor(smtp_server, registry=config.registry,
                               transaction_manager=tm).run_once()
    assert stats.sent == 1
    assert len(smtp_server.messages) == 1
    assert name not in files(spool, "new") + files(spool, "cur") + files(spool, "failed")
    assert "subscriber bug" in caplog.text
    assert any(r.levelno == logging.INFO and "<m1@example.org>" in r.getMessage()
               for r in caplog.records if r.name == "pyramid_txmail.processor")


def test_log_levels_per_outcome(spool, clock, make_smtp_server, make_processor, caplog):
    server = make_smtp_server({"rcpt": {"c@example.org": "451 4.2.0 busy",
                                        "d@example.org": "550 5.1.1 unknown"}})
    queue(spool, ["a@example.org"], message("<a@x>"))
    queue(spool, ["c@example.org"], message("<c@x>"))
    queue(spool, ["d@example.org"], message("<d@x>"))
    with caplog.at_level(logging.INFO, logger="pyramid_txmail.processor"):
        make_processor(server).run_once()
    levels = {msgid: r.levelname for r in caplog.records
              if r.name == "pyramid_txmail.processor"
              for msgid in ("<a@x>", "<c@x>", "<d@x>") if msgid in r.getMessage()}
    assert levels == {"<a@x>": "INFO", "<c@x>": "WARNING", "<d@x>": "ERROR"}
    text = caplog.text
    assert "c@example.org" in text and "busy" in text and "unknown" in text


def test_message_id_is_read_from_the_header_block_only():
    assert message_id_of(b"Subject: x\nMessage-Id:\n <a@b>\n\nMessage-ID: <body@x>\n") == "<a@b>"
    assert message_id_of(b"Subject: x\r\n\r\nMessage-ID: <body@x>\r\n") is None


def test_format_duration():
    assert [format_duration(s) for s in (5, 125, 3600, 7380, 86400 * 5 + 7200)] == [
        "5s", "2m", "1h", "2h 3m", "5d 2h"]


def test_state_files_are_json(spool, make_smtp_server, make_processor):
    server = make_smtp_server({"data": "451 later"})
    name = queue(spool, ["a@example.org"])
    make_processor(server).run_once()
    with open(os.path.join(spool.path, "meta", name + ".json")) as f:
        assert json.load(f)["message_id"] == "<m1@example.org>"
