"""request.mailer with queue delivery: mail is spooled only if the transaction commits."""
from __future__ import annotations

import email
import os
import resource
import signal
import stat

import pytest
import transaction
import webtest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_txmail import IMailQueued, get_mailer
from pyramid_txmail.queue.maildir.spool import Spool, split_envelope

from .app import main


@pytest.fixture
def spool_dir(tmp_path):
    return tmp_path / "spool"


@pytest.fixture
def events():
    return []


@pytest.fixture
def app(spool_dir, events):
    def record(event):
        events.append((event, event.transaction_manager.get().status))

    return webtest.TestApp(main({"mail.queue_path": str(spool_dir)},
                                subscribers=[(IMailQueued, record)]))


def queued(spool_dir):
    """The messages in new/ as (fromaddr, toaddrs, parsed message)."""
    found = []
    for name in sorted(os.listdir(spool_dir / "new")):
        fromaddr, toaddrs, data = split_envelope((spool_dir / "new" / name).read_bytes())
        found.append((fromaddr, toaddrs, email.message_from_bytes(data)))
    return found


def leftovers(spool_dir):
    return os.listdir(spool_dir / "tmp") + os.listdir(spool_dir / "prepared")


def test_commit_queues_the_message_and_returns_its_message_id(app, spool_dir):
    response = app.get("/send", {"to": "Bob <bob@example.com>", "bcc": "carol@example.com"})
    [(fromaddr, toaddrs, msg)] = queued(spool_dir)
    assert response.text == msg["Message-ID"]
    assert msg["Message-ID"].endswith("@example.com>")
    assert fromaddr == "sender@example.com"
    assert toaddrs == ("bob@example.com", "carol@example.com")
    assert msg["From"] == "Sender <sender@example.com>"
    assert msg["Bcc"] is None and b"carol" not in msg.as_bytes()
    assert msg["Date"]
    assert leftovers(spool_dir) == []


def test_several_sends_in_one_transaction(app, spool_dir):
    ids = app.get("/send", {"count": "3"}).text.split("\n")
    assert len(set(ids)) == 3
    assert sorted(m["Message-ID"] for _, _, m in queued(spool_dir)) == sorted(ids)


@pytest.mark.parametrize("path", ["/abort", "/doom", "/veto"])
def test_abort_doom_and_veto_drop_the_message(app, spool_dir, path):
    app.get(path)
    assert queued(spool_dir) == []
    assert leftovers(spool_dir) == []


def test_exception_in_the_view_drops_the_message(app, spool_dir):
    with pytest.raises(RuntimeError):
        app.get("/fail")
    assert queued(spool_dir) == []
    assert leftovers(spool_dir) == []


def test_savepoint_rollback_drops_only_later_mail(app, spool_dir):
    app.get("/savepoint")
    subjects = sorted(m["Subject"] for _, _, m in queued(spool_dir))
    assert subjects == ["after rollback", "before savepoint"]


def test_invalid_input_fails_in_the_view_naming_the_culprit(app, spool_dir):
    response = app.get("/bad", {"to": "not an address"}, status=400)
    assert "InvalidAddress" in response.text and "not an address" in response.text
    assert "To" in response.text
    assert queued(spool_dir) == []


def test_queued_event_runs_after_commit_in_a_new_transaction(app, events):
    msgid = app.get("/send").text
    [(event, status)] = events
    assert event.message_id == msgid
    assert event.toaddrs == ("alice@example.com",)
    assert event.request is not None and event.request.path == "/send"
    assert str(status) in ("Active", "Status.ACTIVE")


def test_no_event_when_aborted(app, events):
    app.get("/abort")
    assert events == []


def test_failing_subscriber_is_logged_and_mail_stays_queued(spool_dir, caplog):
    def boom(event):
        raise ValueError("subscriber bug")

    app = webtest.TestApp(main({"mail.queue_path": str(spool_dir)},
                               subscribers=[(IMailQueued, boom)]))
    app.get("/send")
    assert len(queued(spool_dir)) == 1
    assert "subscriber failed" in caplog.text and "subscriber bug" in caplog.text


def test_spool_files_are_0600_and_dirs_0700_even_with_umask_000(spool_dir):
    old = os.umask(0)
    try:
        app = webtest.TestApp(main({"mail.queue_path": str(spool_dir)}))
        app.get("/send")
    finally:
        os.umask(old)
    for state in ("", "tmp", "new", "cur", "deferred", "failed", "meta"):
        assert stat.S_IMODE(os.stat(spool_dir / state).st_mode) == 0o700, state
    [name] = os.listdir(spool_dir / "new")
    assert stat.S_IMODE(os.stat(spool_dir / "new" / name).st_mode) == 0o600


def test_full_disk_aborts_the_transaction_with_a_clear_error(spool_dir):
    """A write that fails in tpc_vote aborts everything and leaves no tmp file."""
    app = webtest.TestApp(main({"mail.queue_path": str(spool_dir)}))
    app.get("/send")  # one message already queued must survive
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, hard))
    try:
        with pytest.raises(OSError, match="cannot write the mail spool .*aborted"):
            app.get("/send", {"body": "x" * 5000})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert len(queued(spool_dir)) == 1
    assert leftovers(spool_dir) == []


def test_unusable_queue_path_is_a_startup_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = Configurator(settings={"mail.queue_path": str(blocker / "spool")})
    with pytest.raises(ConfigurationError, match="mail.queue_path"):
        config.include("pyramid_txmail")


def test_get_mailer_outside_a_request(spool_dir):
    config = Configurator(settings={"mail.queue_path": str(spool_dir),
                                    "mail.default_sender": "app@example.com"})
    config.include("pyramid_txmail")
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(config.registry, manager)
    from .app import make_message

    with manager:
        msgid = mailer.send(make_message({}))
    with manager:
        mailer.send(make_message({}))
        manager.abort()
        manager.begin()
    [(fromaddr, _, msg)] = queued(spool_dir)
    assert msg["Message-ID"] == msgid and fromaddr == "app@example.com"


def test_send_without_transaction_is_a_clear_error(spool_dir):
    from pyramid_txmail import NoTransaction

    config = Configurator(settings={"mail.queue_path": str(spool_dir),
                                    "mail.default_sender": "app@example.com"})
    config.include("pyramid_txmail")
    mailer = get_mailer(config.registry, transaction.TransactionManager(explicit=True))
    from .app import make_message

    with pytest.raises(NoTransaction, match="active transaction"):
        mailer.send(make_message({}))


def test_spool_layout_is_readable_by_repoze_maildir(spool_dir):
    from repoze.sendmail.maildir import Maildir

    webtest.TestApp(main({"mail.queue_path": str(spool_dir)})).get("/send")
    assert len(list(Maildir(str(spool_dir)))) == 1
    assert Spool(str(spool_dir)).count("new") == 1


def test_send_in_a_request_pyramid_tm_does_not_manage_is_an_error_not_a_lost_mail(spool_dir):
    from pyramid_txmail import NoTransaction

    settings = {"mail.queue_path": str(spool_dir),
                "tm.activate_hook": "tests.test_transactional.never"}
    app = webtest.TestApp(main(settings))
    with pytest.raises(NoTransaction, match="tm.activate_hook"):
        app.get("/send")
    assert queued(spool_dir) == [] and leftovers(spool_dir) == []


def never(request):
    return False


def test_send_inside_request_tm_without_pyramid_tm_works(spool_dir):
    """The pattern of Pyramid's scripts: ``with env['request'].tm: ...``."""
    from pyramid.scripting import prepare

    from .app import make_message

    config = Configurator(settings={"mail.queue_path": str(spool_dir),
                                    "mail.default_sender": "app@example.com"})
    config.include("pyramid_txmail")
    config.commit()
    env = prepare(registry=config.registry)
    try:
        with env["request"].tm:
            msgid = env["request"].mailer.send(make_message({}))
    finally:
        env["closer"]()
    [(_, _, msg)] = queued(spool_dir)
    assert msg["Message-ID"] == msgid


class FailingVote:
    """A data manager that votes after ours and fails, like a database refusing commit."""

    transaction_manager = None

    def sortKey(self):
        return "~sqlalchemy:0"

    def tpc_begin(self, txn):
        pass

    def commit(self, txn):
        pass

    def tpc_vote(self, txn):
        raise RuntimeError("database refused the commit")

    def tpc_abort(self, txn):
        pass

    def abort(self, txn):
        pass


def test_a_later_data_manager_failing_its_vote_leaves_nothing_queued(spool_dir):
    from .app import make_message

    config = Configurator(settings={"mail.queue_path": str(spool_dir),
                                    "mail.default_sender": "app@example.com"})
    config.include("pyramid_txmail")
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(config.registry, manager)
    txn = manager.begin()
    mailer.send(make_message({}))
    txn.join(FailingVote())
    with pytest.raises(RuntimeError, match="database refused"):
        manager.commit()
    manager.abort()
    assert queued(spool_dir) == [] and leftovers(spool_dir) == []


def test_get_mailer_of_a_request_is_request_mailer_as_in_pyramid_mailer(spool_dir):
    from pyramid.scripting import prepare

    config = Configurator(settings={"mail.queue_path": str(spool_dir)})
    config.include("pyramid_txmail")
    config.commit()
    env = prepare(registry=config.registry)
    try:
        assert get_mailer(env["request"]) is env["request"].mailer
        assert get_mailer(env["request"]).transaction_manager is env["request"].tm
    finally:
        env["closer"]()
