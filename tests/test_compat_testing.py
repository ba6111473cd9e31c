"""Issue 12 point 5: pyramid_mailer's test and debug includes have counterparts.

- ``config.include('pyramid_txmail.testing')`` (was: "has no attribute 'includeme'")
  switches to memory delivery; ``get_mailer(request)`` then has ``.outbox`` and
  ``.queue``, filled when the transaction commits (an aborted one adds nothing);
- ``DummyMailer()`` registered under ``IMailer`` is what ``get_mailer`` returns, as
  with pyramid_mailer; outbox items read like pyramid_mailer ``Message`` objects;
- ``config.include('pyramid_txmail.debug')`` writes ``.eml`` files.
"""
from __future__ import annotations

import email
import email.policy

import pytest
import transaction
import webtest
from pyramid import testing as pyramid_testing
from pyramid.config import Configurator
from pyramid.response import Response
from pyramid_mailer.message import Attachment, Message

from pyramid_txmail import get_mailer
from pyramid_txmail.mailer.datamanager import MailDataManager
from pyramid_txmail.compose.message import prepare


def pm_message(**kw):
    fields = {"subject": "Welcome", "sender": "Site <site@example.com>",
              "recipients": ["Bob <bob@example.com>"], "body": "Hello Bob",
              "html": "<p>Hello Bob</p>", "cc": ["carol@example.com"],
              "bcc": ["archive@example.com"], "extra_headers": {"X-Campaign": "welcome"},
              "attachments": [Attachment("a.txt", "text/plain", b"attached")]}
    fields.update(kw)
    return Message(**fields)


@pytest.fixture
def config():
    config = pyramid_testing.setUp(settings={"mail.default_sender": "site@example.com"})
    yield config
    pyramid_testing.tearDown()
    transaction.abort()


# -- config.include('pyramid_txmail.testing') ------------------------------------------

def test_the_testing_include_keeps_committed_mail_on_the_mailer(config):
    config.include("pyramid_txmail.testing")
    request = pyramid_testing.DummyRequest()  # no request extensions, as in real suites
    mailer = get_mailer(request)
    assert len(mailer.outbox) == 0 and mailer.outbox == [] and mailer.queue == []
    with transaction.manager:
        get_mailer(request).send(pm_message())
    [sent] = get_mailer(request).outbox
    assert sent.subject == "Welcome" and sent.recipients == ["Bob <bob@example.com>"]
    assert sent.body == "Hello Bob" and sent.html == "<p>Hello Bob</p>"
    assert sent.sender == "Site <site@example.com>"
    assert sent.cc == ["carol@example.com"] and sent.bcc == ["archive@example.com"]
    assert sent.extra_headers == {"X-Campaign": "welcome"}
    assert sent.send_to == {"Bob <bob@example.com>", "carol@example.com",
                            "archive@example.com"}
    assert [(a.filename, a.data) for a in sent.attachments] == [("a.txt", b"attached")]
    assert sent.to_message()["Subject"] == "Welcome"
    # and what the relay would have got
    assert sent.toaddrs == ("bob@example.com", "carol@example.com", "archive@example.com")
    assert b"archive@example.com" not in sent.data


def test_an_aborted_transaction_adds_nothing(config):
    config.include("pyramid_txmail.testing")
    request = pyramid_testing.DummyRequest()
    with pytest.raises(RuntimeError):
        with transaction.manager:
            get_mailer(request).send(pm_message())
            raise RuntimeError("the view failed")
    assert get_mailer(request).outbox == []


def test_the_outbox_is_filled_at_the_commit_not_at_send(config):
    config.include("pyramid_txmail.testing")
    mailer = get_mailer(pyramid_testing.DummyRequest())
    with transaction.manager:
        mailer.send(pm_message())
        assert mailer.outbox == []
    assert len(mailer.outbox) == 1


def test_the_outbox_can_be_emptied_as_dummymailer_tests_do(config):
    config.include("pyramid_txmail.testing")
    mailer = get_mailer(pyramid_testing.DummyRequest())
    for _ in range(3):
        with transaction.manager:
            mailer.send(pm_message())
    del mailer.outbox[:1]
    assert len(mailer.outbox) == 2
    mailer.outbox = []
    assert mailer.outbox == []
    with pytest.raises(TypeError, match="can only be emptied"):
        mailer.outbox = ["x"]


def test_send_to_queue_lands_in_queue_through_the_memory_queue_outbox(config):
    """``mailer.queue``: what the queue outbox of memory delivery committed (the
    outbox ``send_to_queue`` writes through with ``pyramid_txmail.testing``)."""
    config.include("pyramid_txmail.testing")
    mailer = get_mailer(pyramid_testing.DummyRequest())
    queue_outbox = mailer.delivery.outbox.queue_outbox
    for commit in (True, False):
        txn = transaction.manager.begin()
        manager = MailDataManager(queue_outbox, transaction.manager, lambda messages: None)
        txn.join(manager)
        manager.add(prepare(pm_message(subject=f"queued {commit}")))
        transaction.commit() if commit else transaction.abort()
    assert [m.subject for m in mailer.queue] == ["queued True"]
    assert mailer.outbox == []


def test_the_testing_include_in_a_real_app_honours_pyramid_tm(config):
    def view(request):
        get_mailer(request).send(pm_message(subject=request.params["s"]))
        if request.params.get("fail"):
            request.tm.abort()
            request.tm.begin()
        return Response("ok")

    app_config = Configurator(settings={"mail.default_sender": "site@example.com"})
    app_config.include("pyramid_txmail.testing")
    app_config.add_route("send", "/send")
    app_config.add_view(view, route_name="send")
    app = webtest.TestApp(app_config.make_wsgi_app())
    app.get("/send", {"s": "kept"})
    app.get("/send", {"s": "dropped", "fail": "1"})
    outbox = app_config.registry.getUtility(
        __import__("pyramid_txmail.interfaces").interfaces.IMailOutbox)
    assert [m.subject for m in outbox] == ["kept"]


def test_outbox_items_of_other_messages_read_like_pyramid_mailer_messages(config):
    from email.message import EmailMessage

    config.include("pyramid_txmail.testing")
    msg = EmailMessage()
    msg["From"] = "Site <site@example.com>"
    msg["To"] = "Bob <bob@example.com>, dora@example.com"
    msg["Cc"] = "carol@example.com"
    msg["Bcc"] = "archive@example.com"
    msg["Subject"] = "Plain"
    msg.set_content("text body")
    mailer = get_mailer(pyramid_testing.DummyRequest())
    with transaction.manager:
        mailer.send(msg)
    [sent] = mailer.outbox
    assert sent.source is None
    assert sent.recipients == ["Bob <bob@example.com>", "dora@example.com"]
    assert sent.cc == ["carol@example.com"] and sent.bcc == ["archive@example.com"]
    assert sent.sender == "Site <site@example.com>" and sent.body == "text body\n"
    assert sent.extra_headers == {} and sent.html is None


def test_outbox_needs_memory_delivery(tmp_path):
    config = Configurator(settings={"mail.queue_path": str(tmp_path / "spool")})
    config.include("pyramid_txmail")
    with pytest.raises(AttributeError, match="memory delivery only.*'queue'"):
        get_mailer(config.registry).outbox


# -- DummyMailer registered under IMailer ------------------------------------------------

@pytest.mark.parametrize("interface", ["pyramid_mailer.interfaces",
                                       "pyramid_txmail.interfaces"])
def test_a_registered_dummy_mailer_is_what_get_mailer_returns(config, interface):
    import importlib

    from pyramid_txmail.testing import DummyMailer

    IMailer = importlib.import_module(interface).IMailer
    config.include("pyramid_txmail")
    mailer = DummyMailer()
    config.registry.registerUtility(mailer, IMailer)
    request = pyramid_testing.DummyRequest()
    assert get_mailer(request).outbox is mailer.outbox
    with transaction.manager:
        get_mailer(request).send(pm_message())
    assert [m.subject for m in mailer.outbox] == ["Welcome"]
    with pytest.raises(RuntimeError):
        with transaction.manager:
            get_mailer(request).send(pm_message(subject="aborted"))
            raise RuntimeError
    assert len(mailer.outbox) == 1


def test_pyramid_mailers_get_mailer_finds_ours(config):
    """A plugin that still calls ``pyramid_mailer.get_mailer(request)`` gets our
    transactional mailer, bound to ``request.tm``."""
    from pyramid_mailer import get_mailer as pm_get_mailer

    config.include("pyramid_txmail.testing")
    request = pyramid_testing.DummyRequest()
    request.tm = transaction.TransactionManager(explicit=True)
    with request.tm:
        pm_get_mailer(request).send(pm_message(subject="via pyramid_mailer"))
    assert [m.subject for m in get_mailer(request).outbox] == ["via pyramid_mailer"]


def test_bind_takes_pyramid_mailers_options(config):
    config.include("pyramid_txmail.testing")
    mailer = get_mailer(config.registry)
    with pytest.raises(ValueError, match="invalid options: host"):
        mailer.bind(host="x")
    other = mailer.bind(default_sender="Other <other@example.com>")
    with transaction.manager:
        other.send(pm_message(sender=None))
    assert mailer.outbox[0].fromaddr == "other@example.com"


# -- config.include('pyramid_txmail.debug') --------------------------------------------

def read_eml(path):
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def test_the_debug_include_writes_eml_files_under_mail_in_the_working_dir(
        config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config.include("pyramid_txmail.debug")
    request = pyramid_testing.DummyRequest()
    with transaction.manager:
        get_mailer(request).send(pm_message())
    with pytest.raises(RuntimeError):
        with transaction.manager:
            get_mailer(request).send(pm_message(subject="aborted"))
            raise RuntimeError
    [path] = (tmp_path / "mail").glob("*.eml")
    got = read_eml(path)
    assert got["Subject"] == "Welcome" and got["X-Envelope-To"] == \
        "bob@example.com, carol@example.com, archive@example.com"
    assert got["Bcc"] is None and str(got["To"]) == "Bob <bob@example.com>"


@pytest.mark.parametrize("key", ["mail.top_level_directory", "mail.file_path"])
def test_the_debug_include_takes_pyramid_mailers_directory_setting(tmp_path, key):
    config = Configurator(settings={key: str(tmp_path / "out"),
                                    "mail.default_sender": "s@example.com"})
    config.include("pyramid_txmail.debug")
    with transaction.manager:
        get_mailer(config.registry).send(pm_message())
    assert len(list((tmp_path / "out").glob("*.eml"))) == 1


def test_debug_mailer_counterpart(tmp_path):
    from pyramid_txmail.debug import DebugMailer

    mailer = DebugMailer(str(tmp_path / "dbg"))
    with transaction.manager:
        mailer.send(pm_message())
    [path] = (tmp_path / "dbg").glob("*.eml")
    assert read_eml(path)["X-Campaign"] == "welcome"


def test_without_pyramid_mailer_nothing_is_registered_under_its_interface(monkeypatch):
    """pyramid_mailer is optional: without it, get_mailer still finds our mailer and a
    DummyMailer registered under pyramid_txmail.interfaces.IMailer."""
    from pyramid_mailer.interfaces import IMailer as PMIMailer

    from pyramid_txmail.mailer import mailer_compat
    from pyramid_txmail.interfaces import IMailer
    from pyramid_txmail.testing import DummyMailer

    monkeypatch.setattr(mailer_compat, "PyramidMailerIMailer", None)
    config = Configurator(settings={"mail.default_sender": "site@example.com"})
    config.include("pyramid_txmail.testing")
    assert config.registry.queryUtility(PMIMailer) is None
    request = pyramid_testing.DummyRequest()
    request.registry = config.registry
    with transaction.manager:
        get_mailer(request).send(pm_message())
    assert len(get_mailer(request).outbox) == 1
    mine = DummyMailer()
    config.registry.registerUtility(mine, IMailer)
    assert get_mailer(request) is mine


def test_send_to_queue_and_send_immediately_with_the_testing_include(config):
    """DummyMailer's lists: send_to_queue → ``.queue`` at the commit; send and
    send_immediately → ``.outbox`` (send_immediately at once: it ignores the
    transaction, as it does in production)."""
    config.include("pyramid_txmail.testing")
    mailer = get_mailer(pyramid_testing.DummyRequest())
    with pytest.raises(RuntimeError):
        with transaction.manager:
            mailer.send_to_queue(pm_message(subject="aborted"))
            raise RuntimeError
    with transaction.manager:
        mailer.send_to_queue(pm_message(subject="queued"))
        mailer.send(pm_message(subject="sent"))
        assert mailer.queue == [] and mailer.outbox == []
    mailer.send_immediately(pm_message(subject="now"))
    assert [m.subject for m in mailer.queue] == ["queued"]
    assert [m.subject for m in mailer.outbox] == ["sent", "now"]
    assert mailer.queue[0].recipients == ["Bob <bob@example.com>"]


def test_a_dummy_mailer_takes_a_message_without_sender(config, tmp_path):
    """Found with pluserable's suite: its views send Messages without a sender (the app's
    mail.default_sender supplies one in production) to a DummyMailer the test registered,
    which knows no settings.  pyramid_mailer's DummyMailer accepts them (its DebugMailer
    writes them From 'nobody'); ours raised pyramid_mailer's InvalidMessage "No sender
    address has been set".  Like DebugMailer, a placeholder sender fills in."""
    from pyramid_txmail.debug import DebugMailer
    from pyramid_txmail.testing import DummyMailer

    dummy, debug = DummyMailer(), DebugMailer(str(tmp_path / "eml"))
    for mailer in (dummy, debug):
        with transaction.manager:
            mailer.send(pm_message(sender=None))
    assert dummy.outbox[0].fromaddr == "nobody@example.com"
    assert dummy.outbox[0].sender == "nobody@example.com"
    [eml] = (tmp_path / "eml").glob("*.eml")
    assert read_eml(eml)["From"] == "nobody@example.com"
    mine = DummyMailer(default_sender="Site <site@example.com>")
    with transaction.manager:
        mine.send(pm_message(sender=None))
    assert mine.outbox[0].fromaddr == "site@example.com"


def test_a_dummy_mailer_records_a_send_with_no_transaction_at_once(config, caplog):
    """Found with pluserable's suite: unit tests call a view with no transaction at all
    (pyramid_tm runs around it in production) and a DummyMailer registered; ours
    raised NoTransaction there.  pyramid_mailer's DummyMailer records every send: a
    DummyMailer with no transaction to join records at once too, with a WARNING that a
    real mailer would raise.  In a transaction it still waits for the commit."""
    import logging

    from pyramid_mailer.interfaces import IMailer

    from pyramid_txmail.testing import DummyMailer

    caplog.set_level(logging.WARNING)
    mailer = DummyMailer()
    config.registry.registerUtility(mailer, IMailer)
    transaction.abort()
    get_mailer(pyramid_testing.DummyRequest()).send(pm_message(subject="no transaction"))
    mailer.send_to_queue(pm_message(subject="queued, no transaction"))
    assert [m.subject for m in mailer.outbox] == ["no transaction"]
    assert [m.subject for m in mailer.queue] == ["queued, no transaction"]
    assert "no transaction to join" in caplog.text and "NoTransaction" in caplog.text
    with pytest.raises(RuntimeError):
        with transaction.manager:
            mailer.send(pm_message(subject="aborted"))
            raise RuntimeError
    assert len(mailer.outbox) == 1


def test_the_testing_include_still_refuses_a_send_with_no_transaction(config):
    """The include is pyramid_txmail's own test mode: it behaves as production does."""
    from pyramid_txmail import NoTransaction

    config.include("pyramid_txmail.testing")
    transaction.abort()
    with pytest.raises(NoTransaction):
        get_mailer(pyramid_testing.DummyRequest()).send(pm_message())
