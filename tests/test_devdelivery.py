"""mail.delivery = memory | file | console | null: the transaction decides, as in production."""
from __future__ import annotations

import email
import email.policy
import logging
import os
import stat
from email.message import EmailMessage

import pytest
import transaction
import webtest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from demo_app import inbox_entries
from pyramid_txmail import IMailSent, get_mailer
from pyramid_txmail.compose.wire import crlf_chunks
from pyramid_txmail.mailer.devdelivery import FileOutbox, MemoryOutbox, eml_name
from pyramid_txmail.interfaces import IMailOutbox
from pyramid_txmail.compose.message import Prepared
from pyramid_txmail.relay.result import SENT
from pyramid_txmail.compose.wire import Stream

from .app import main


def make_app(events=None, **settings):
    subscribers = []
    if events is not None:
        subscribers = [(IMailSent, lambda event: events.append(event))]
    return webtest.TestApp(main(settings, subscribers=subscribers))


def eml_files(directory):
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


# -- every development delivery -------------------------------------------------------------

@pytest.fixture(params=["memory", "file", "console", "null"])
def mode_settings(request, tmp_path):
    settings = {"mail.delivery": request.param}
    if request.param == "file":
        settings["mail.file_path"] = str(tmp_path / "mail")
    return settings


def test_mail_sent_after_commit_only(mode_settings):
    events = []
    app = make_app(events, **mode_settings)
    for path in ("/abort", "/doom", "/veto"):
        app.get(path)
    with pytest.raises(RuntimeError):
        app.get("/fail")
    assert events == []
    msgid = app.get("/send", {"to": "bob@example.com", "bcc": "carol@example.com"}).text
    [event] = events
    assert event.message_id == msgid
    assert event.toaddrs == ("bob@example.com", "carol@example.com")
    assert [r.status for r in event.results] == [SENT, SENT]
    assert mode_settings["mail.delivery"] in event.results[0].text


def test_a_later_data_manager_failing_its_vote_leaves_nothing(mode_settings, tmp_path, capsys):
    from .app import make_message
    from .test_transactional import FailingVote

    events = []
    config = Configurator(settings=dict(mode_settings, **{"mail.default_sender": "a@example.com"}))
    config.include("pyramid_txmail")
    config.add_subscriber(events.append, IMailSent)
    config.commit()
    manager = transaction.TransactionManager(explicit=True)
    txn = manager.begin()
    get_mailer(config.registry, manager).send(make_message({}))
    txn.join(FailingVote())
    with pytest.raises(RuntimeError, match="database refused"):
        manager.commit()
    manager.abort()
    assert events == [] and capsys.readouterr().out == ""
    outbox = config.registry.queryUtility(IMailOutbox)
    assert outbox is None or outbox.messages == []
    if "mail.file_path" in mode_settings:
        assert os.listdir(mode_settings["mail.file_path"]) == []  # no temporary file left


def test_a_queue_path_is_left_alone(mode_settings, tmp_path):
    make_app(**mode_settings, **{"mail.queue_path": str(tmp_path / "spool")}).get("/send")
    assert not (tmp_path / "spool").exists()


def test_only_memory_delivery_registers_an_outbox(mode_settings):
    registry = make_app(**mode_settings).app.registry
    outbox = registry.queryUtility(IMailOutbox)
    assert isinstance(outbox, MemoryOutbox) == (mode_settings["mail.delivery"] == "memory")
    assert (outbox is None) == (mode_settings["mail.delivery"] != "memory")


# -- memory --------------------------------------------------------------------------------

def test_memory_keeps_committed_mail_oldest_first():
    app = make_app(**{"mail.delivery": "memory"})
    outbox = app.app.registry.getUtility(IMailOutbox)
    app.get("/send", {"subject": "first"})
    app.get("/abort", {"subject": "aborted"})
    app.get("/savepoint")
    assert [m.subject for m in outbox.messages] == ["first", "before savepoint",
                                                    "after rollback"]


def test_memory_reads_a_streamed_message_at_vote():
    """A Stream is read inside the commit (as the queue writes it): after it, data is bytes."""
    chunks = [b"From: a@example.com\nTo: b@example.com\nSubject: s\n\n", b"x" * 10, b"\n"]
    reads = []

    def factory():
        reads.append(1)
        return iter(chunks)

    outbox = MemoryOutbox()
    prepared = Prepared("a@example.com", ("b@example.com",), "<s@x>",
                        Stream(factory, head=chunks[0]))
    voted = outbox.vote([prepared])
    assert reads == [1] and outbox.messages == []
    outbox.finish(voted)
    assert outbox.last.data == b"".join(chunks)


# -- file ----------------------------------------------------------------------------------

@pytest.fixture
def file_app(tmp_path):
    return make_app(**{"mail.delivery": "file", "mail.file_path": str(tmp_path / "mail")})


def test_file_writes_one_eml_per_committed_message(file_app, tmp_path):
    directory = tmp_path / "mail"
    msgid = file_app.get("/send", {"to": "Bob <bob@example.com>", "bcc": "carol@example.com"}).text
    [name] = eml_files(directory)
    assert name.endswith(".eml")
    data = (directory / name).read_bytes()
    assert data.startswith(b"X-Envelope-From: sender@example.com\r\n"
                           b"X-Envelope-To: bob@example.com, carol@example.com\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only, as on the wire
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Message-ID"] == msgid and msg["To"] == "Bob <bob@example.com>"
    assert msg["Bcc"] is None and msg.get_content() == "Hello there.\r\n"


def test_file_nothing_without_commit_and_no_leftovers(file_app, tmp_path):
    for path in ("/abort", "/doom", "/veto"):
        file_app.get(path)
    with pytest.raises(RuntimeError):
        file_app.get("/fail")
    assert os.listdir(tmp_path / "mail") == []  # no hidden temporary file either
    file_app.get("/savepoint")
    subjects = [email.message_from_bytes((tmp_path / "mail" / n).read_bytes())["Subject"]
                for n in eml_files(tmp_path / "mail")]
    assert subjects == ["before savepoint", "after rollback"]  # names sort by time


def test_file_modes_even_with_umask_000(tmp_path):
    old = os.umask(0)
    try:
        make_app(**{"mail.delivery": "file",
                    "mail.file_path": str(tmp_path / "mail")}).get("/send")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "mail").st_mode) == 0o700
    [name] = eml_files(tmp_path / "mail")
    assert stat.S_IMODE(os.stat(tmp_path / "mail" / name).st_mode) == 0o600


def test_file_names_are_unique_and_sort_by_time():
    names = [eml_name(1764060000.5) for _ in range(50)] + [eml_name(1764060001.0)]
    assert len(set(names)) == len(names)
    assert names[0].startswith("20251125T084000.500000Z-")
    assert sorted(names)[-1] == names[-1]


def test_the_demo_inbox_reads_what_file_delivery_writes(file_app, tmp_path):
    file_app.get("/send", {"to": "bob@example.com", "subject": "for the inbox"})
    [(name, msg, _)] = inbox_entries(str(tmp_path / "mail"))
    assert msg["Subject"] == "for the inbox" and msg["X-Envelope-To"] == "bob@example.com"


def test_file_path_is_required_and_checked(tmp_path):
    with pytest.raises(ConfigurationError, match="mail.file_path: required with "
                                                 "mail.delivery = file"):
        make_app(**{"mail.delivery": "file"})
    (tmp_path / "plain-file").write_text("")
    bad = str(tmp_path / "plain-file" / "mail")
    with pytest.raises(ConfigurationError) as info:
        make_app(**{"mail.delivery": "file", "mail.file_path": bad})
    assert f"mail.file_path = {bad!r}: cannot use the directory: Not a directory" \
        in str(info.value)


def test_file_write_failure_aborts_the_transaction(file_app, tmp_path):
    directory = tmp_path / "mail"
    os.rmdir(directory)
    directory.write_text("the directory was replaced by a file")
    with pytest.raises(OSError) as info:
        file_app.get("/send")
    assert "cannot write to mail.file_path" in str(info.value)
    assert "the transaction is aborted" in str(info.value)


def test_file_writes_a_stream_with_crlf(tmp_path):
    chunks = [b"From: a@example.com\nTo: b@example.com\r", b"\nSubject: s\n\n", b"line\r",
              b"\r\nend\n"]
    outbox = FileOutbox(str(tmp_path / "mail"))
    prepared = Prepared("a@example.com", ("b@example.com",), "<s@x>",
                        Stream(lambda: iter(chunks), head=chunks[0]))
    outbox.finish(outbox.vote([prepared]))
    [name] = eml_files(tmp_path / "mail")
    assert (tmp_path / "mail" / name).read_bytes() == (
        b"X-Envelope-From: a@example.com\r\nX-Envelope-To: b@example.com\r\n"
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: s\r\n\r\nline\r\n\r\nend\r\n")


def test_crlf_chunks_across_boundaries():
    assert b"".join(crlf_chunks([b"a\r", b"\nb\n", b"", b"c\r"])) == b"a\r\nb\r\nc\r\n"
    assert b"".join(crlf_chunks([b"a\r", b"b"])) == b"a\r\nb"


# -- console and null ----------------------------------------------------------------------

def rich_message(subject="Report"):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.com", subject
    msg.set_content("First line.\nSecond line.\n")
    msg.add_attachment(b"1,2\n", maintype="text", subtype="csv", filename="data.csv")
    return msg


@pytest.fixture
def console_registry():
    config = Configurator(settings={"mail.delivery": "console"})
    config.include("pyramid_txmail")
    config.commit()
    return config.registry


def test_console_prints_envelope_headers_and_text_after_commit(console_registry, capsys):
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(console_registry, manager)
    with manager:
        msgid = mailer.send("bounce@example.com", ["b@example.com", "c@example.com"],
                            rich_message())
        assert capsys.readouterr().out == ""  # nothing before the commit
    out = capsys.readouterr().out
    assert out.startswith(f"======== mail {msgid} (mail.delivery = console) ========\n"
                          "X-Envelope-From: bounce@example.com\n"
                          "X-Envelope-To: b@example.com, c@example.com\n")
    assert "\nSubject: Report\n" in out and "\nFrom: a@example.com\n" in out
    assert "\n\nFirst line.\nSecond line.\n" in out
    assert "[attachment 'data.csv', text/csv, 4 octets]" in out
    assert out.endswith(f"======== end of mail {msgid} ========\n")


def test_console_prints_nothing_when_aborted(console_registry, capsys):
    manager = transaction.TransactionManager(explicit=True)
    manager.begin()
    get_mailer(console_registry, manager).send(rich_message())
    manager.abort()
    assert capsys.readouterr().out == ""


def test_console_output_cannot_drive_the_terminal(console_registry, capsys):
    with transaction.manager:
        get_mailer(console_registry).send(rich_message("Hi \x1b[2J\x1b]0;pwned\x07 there"))
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "Subject: Hi \N{REPLACEMENT CHARACTER}[2J" in out


def test_null_drops_and_logs(caplog, capsys):
    caplog.set_level(logging.INFO, logger="pyramid_txmail")
    events = []
    app = make_app(events, **{"mail.delivery": "null"})
    assert "mail.delivery = null: committed mail is dropped" in caplog.text
    msgid = app.get("/send").text
    assert f"dropped {msgid} to alice@example.com (mail.delivery = null)" in caplog.text
    assert events[0].results[0].text == "dropped (mail.delivery = null)"
    assert capsys.readouterr().out == ""


def test_unknown_delivery_names_every_choice():
    with pytest.raises(ConfigurationError, match="mail.delivery = 'mmeory': expected one of: "
                                                 "queue, direct, sendmail, memory, file, console, null"):
        make_app(**{"mail.delivery": "mmeory"})
