"""pyramid_txmail.testing: the memory outbox honours the transaction; assertion helpers
explain themselves; the pytest plugin's fixtures work for an installed package."""
from __future__ import annotations

import re
import threading
from email.message import EmailMessage

import pytest
import transaction
import webtest
from pyramid import testing as pyramid_testing
from zope.interface.verify import verifyObject

import pyramid_txmail.mailer.sent
import pyramid_txmail.testing
from pyramid_txmail import IMailSent, get_mailer
from pyramid_txmail.interfaces import IMailOutbox
from pyramid_txmail.compose.message import Prepared
from pyramid_txmail.relay.result import SENT
from pyramid_txmail.testing import Outbox, SentMail, capture, dummy_request
from pyramid_txmail.compose.wire import Stream

from .app import main

pytest_plugins = ["pytester"]


@pytest.fixture
def events():
    return []


@pytest.fixture
def app(events):
    def record(event):
        events.append((event, len(event.request.registry.getUtility(IMailOutbox))))

    return webtest.TestApp(main({"mail.delivery": "memory"}, subscribers=[(IMailSent, record)]))


def app_outbox(app):
    return app.app.registry.getUtility(IMailOutbox)


# -- the transaction decides ------------------------------------------------------------

def test_commit_makes_the_message_visible(app):
    with capture() as outbox:
        msgid = app.get("/send", {"to": "Bob <bob@example.com>", "bcc": "carol@example.com"}).text
    [mail] = outbox.messages
    assert app_outbox(app).messages == [mail]
    assert mail.message_id == msgid
    assert (mail.fromaddr, mail.toaddrs) == ("sender@example.com",
                                             ("bob@example.com", "carol@example.com"))
    assert mail["To"] == "Bob <bob@example.com>" and mail["Bcc"] is None
    assert mail.subject == "Hello" and mail.text == "Hello there.\n"
    assert b"carol" not in mail.data and mail.data.startswith(b"To: Bob")


@pytest.mark.parametrize("path", ["/abort", "/doom", "/veto"])
def test_abort_doom_and_veto_leave_nothing(app, path):
    with capture() as outbox:
        app.get(path)
    assert outbox.messages == [] and app_outbox(app).messages == []


def test_exception_in_the_view_leaves_nothing(app):
    with capture() as outbox:
        with pytest.raises(RuntimeError):
            app.get("/fail")
    outbox.assert_none_sent()
    assert len(app_outbox(app)) == 0


def test_savepoint_rollback_drops_only_later_mail(app):
    with capture() as outbox:
        app.get("/savepoint")
    assert [m.subject for m in outbox] == ["before savepoint", "after rollback"]


def test_mail_sent_event_after_commit_with_sent_results(app, events):
    msgid = app.get("/send", {"to": "bob@example.com"}).text
    [(event, visible)] = events
    assert IMailSent.providedBy(event) and event.message_id == msgid
    assert visible == 1  # the subscriber already sees the committed message
    assert [(r.recipient, r.status) for r in event.results] == [("bob@example.com", SENT)]
    assert "memory" in event.results[0].text


def test_no_event_when_aborted(app, events):
    app.get("/abort")
    assert events == []


def test_the_outbox_is_the_registered_imailoutbox(app):
    outbox = app_outbox(app)
    assert verifyObject(IMailOutbox, outbox)
    app.get("/send")
    outbox.clear()
    assert outbox.messages == []


# -- unit tests: testing.setUp(config) ----------------------------------------------------

def welcome_view(request):
    msg = EmailMessage()
    msg["To"] = request.params["email"]
    msg["Subject"] = "Welcome"
    msg.set_content("Thanks for signing up.")
    return request.mailer.send(msg)


@pytest.fixture
def config():
    config = pyramid_testing.setUp()
    yield config
    pyramid_testing.tearDown()


def test_setup_for_unit_tests_commit_and_abort(config):
    outbox = pyramid_txmail.testing.setUp(config, {"mail.default_sender": "site@example.com"})
    with transaction.manager:
        msgid = welcome_view(dummy_request(params={"email": "bob@example.com"}))
    [mail] = outbox.assert_sent(to="bob@example.com", subject="Welcome", count=1)
    assert mail.message_id == msgid and mail.fromaddr == "site@example.com"

    with pytest.raises(ZeroDivisionError):
        with transaction.manager:
            welcome_view(dummy_request(params={"email": "eve@example.com"}))
            1 / 0
    outbox.assert_not_sent(to="eve@example.com")
    assert len(outbox) == 1


def test_setup_forces_memory_delivery(config, tmp_path):
    config.registry.settings["mail.queue_path"] = str(tmp_path / "spool")
    outbox = pyramid_txmail.testing.setUp(config, {"mail.delivery": "queue"})
    assert isinstance(outbox, Outbox)
    assert not (tmp_path / "spool").exists()  # nothing went near a spool


def test_get_mailer_with_an_explicit_transaction_manager(config):
    outbox = pyramid_txmail.testing.setUp(config)
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(config.registry, manager)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.com", "x"
    with manager:
        mailer.send(msg)
        outbox.assert_none_sent()  # not before the commit
    outbox.assert_sent(subject="x", count=1)


def test_capture_sees_commits_of_other_threads(app):
    with capture() as outbox:
        thread = threading.Thread(target=app.get, args=("/send", {"subject": "threaded"}))
        thread.start()
        thread.join(30)
    outbox.assert_sent(subject="threaded", count=1)


def test_captures_nest_and_end(app):
    with capture() as outer:
        app.get("/send", {"subject": "one"})
        with capture() as inner:
            app.get("/send", {"subject": "two"})
    app.get("/send", {"subject": "three"})
    assert [m.subject for m in outer] == ["one", "two"]
    assert [m.subject for m in inner] == ["two"]


# -- SentMail ----------------------------------------------------------------------------

def rich_message():
    msg = EmailMessage()
    msg["From"], msg["To"] = "Shop <shop@example.com>", "bob@example.com"
    msg["Subject"] = "Ihre Rechnung – März"
    msg.set_content("Grüße,\nsee the attachment.\n")
    msg.add_alternative("<p>Gr&uuml;&szlig;e</p>", subtype="html")
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf",
                       filename="invoice.pdf")
    return msg


def test_sentmail_parses_text_html_and_attachments(config):
    outbox = pyramid_txmail.testing.setUp(config)
    with transaction.manager:
        get_mailer(config.registry).send(rich_message())
    mail = outbox.last
    assert mail.subject == "Ihre Rechnung – März"
    assert mail.text == "Grüße,\nsee the attachment.\n"
    assert mail.html == "<p>Gr&uuml;&szlig;e</p>\n"
    [attachment] = mail.attachments
    assert (attachment.filename, attachment.content_type, attachment.data) == \
        ("invoice.pdf", "application/pdf", b"%PDF-1.4 fake")
    assert "invoice.pdf" in repr(attachment)
    assert repr(mail) == (f"<SentMail {mail.message_id} from shop@example.com to "
                          "bob@example.com: 'Ihre Rechnung – März'>")
    assert mail.message.get_content_type() == "multipart/mixed"


def test_sentmail_without_text_or_html_part():
    data = b"From: a@example.com\nTo: b@example.com\nSubject: x\nContent-Type: image/png\n\nAAAA\n"
    mail = SentMail("<x@y>", "a@example.com", ["b@example.com"], data)
    assert mail.text is None and mail.html is None


def test_a_streamed_message_is_joined():
    chunks = [b"From: a@example.com\nTo: b@example.com\nSubject: big\n\n", b"part one\n",
              b"part two\n"]
    stream = Stream(lambda: iter(chunks), head=chunks[0])
    mail = SentMail.from_prepared(Prepared("a@example.com", ("b@example.com",), "<s@x>", stream))
    assert mail.data == b"".join(chunks)
    assert mail.text == "part one\npart two\n"


# -- assertion helpers -------------------------------------------------------------------

def sample_outbox():
    def mail(to, subject, body, msgid):
        data = (f"From: s@example.com\nTo: {to}\nSubject: {subject}\n"
                f"Content-Type: text/plain; charset=utf-8\n\n{body}\n").encode()
        return SentMail(msgid, "s@example.com", [to], data)

    return Outbox([mail("bob@example.com", "Welcome", "Hello Bob, your code is 1234.", "<1@x>"),
                   mail("alice@example.com", "Invoice 7", "Please pay.", "<2@x>")])


def test_filters_and_criteria():
    outbox = sample_outbox()
    assert [m.message_id for m in outbox.to("BOB@example.com")] == ["<1@x>"]
    assert len(outbox.filter(subject=re.compile(r"^Invoice \d+$"))) == 1
    assert len(outbox.filter(subject_contains="voice")) == 1
    assert len(outbox.filter(text_contains="code is 1234")) == 1
    assert outbox.filter(to="bob@example.com", subject="Invoice 7") == []
    assert len(outbox.filter(fromaddr="S@example.com")) == 2
    assert len(outbox.filter(to=["bob@example.com", "alice@example.com"])) == 0
    assert outbox.filter(html_contains="x") == []
    assert len(outbox.assert_sent(count=2)) == 2


def test_to_matches_an_idn_domain_in_either_form(config):
    outbox = pyramid_txmail.testing.setUp(config)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "Bob@Bücher.example", "idn"
    with transaction.manager:
        get_mailer(config.registry).send(msg)
    assert outbox.last.toaddrs == ("Bob@xn--bcher-kva.example",)
    outbox.assert_sent(to="bob@bücher.example", count=1)
    outbox.assert_sent(to="bob@xn--bcher-kva.example", count=1)
    outbox.assert_sent(to="not an address", count=0)


def test_assert_sent_failure_lists_what_was_sent():
    with pytest.raises(AssertionError) as info:
        sample_outbox().assert_sent(to="carol@example.com", subject="Welcome")
    text = str(info.value)
    assert "expected at least 1 message(s) with to='carol@example.com', subject='Welcome', " \
           "found 0" in text
    assert "2 message(s) were sent:" in text
    assert "1. to bob@example.com: 'Welcome'" in text
    assert "2. to alice@example.com: 'Invoice 7'" in text


def test_assert_sent_count_must_match_exactly():
    with pytest.raises(AssertionError, match="expected 2 message.* found 1"):
        sample_outbox().assert_sent(to="bob@example.com", count=2)
    assert sample_outbox().assert_sent(to="dave@example.com", count=0) == []


def test_assert_none_sent_and_not_sent():
    with pytest.raises(AssertionError, match=r"(?s)expected no message to be sent.*Invoice 7"):
        sample_outbox().assert_none_sent()
    with pytest.raises(AssertionError, match=r"(?s)expected no message with text_contains="
                                             r"'Please'.*found 1.*alice@example.com"):
        sample_outbox().assert_not_sent(text_contains="Please")
    sample_outbox().assert_not_sent(subject="Goodbye")
    Outbox().assert_none_sent()


def test_empty_outbox_says_so(monkeypatch):
    with pytest.raises(AssertionError, match="found 0\nno message was sent$"):
        Outbox().assert_sent(subject="x")
    monkeypatch.setattr(pyramid_txmail.mailer.sent, "_memory_outboxes", 0)
    with pytest.raises(AssertionError, match="configured with mail.delivery = memory"):
        Outbox().assert_sent(subject="x")


# -- the pytest plugin, as an installed package provides it ---------------------------------

PLUGIN_TESTS = '''
from email.message import EmailMessage

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.response import Response


def signup(request):
    msg = EmailMessage()
    msg["From"] = "site@example.com"
    msg["To"] = request.params["email"]
    msg["Subject"] = "Welcome aboard"
    msg.set_content("Thanks for signing up.")
    request.mailer.send(msg)
    if request.params.get("fail"):
        raise RuntimeError("boom after sending")
    return Response("ok")


@pytest.fixture(scope="session")
def testapp():
    # built once, before any mail_outbox exists: the fixture still sees its mail
    config = Configurator(settings={"mail.delivery": "memory"})
    config.include("pyramid_txmail")
    config.add_route("signup", "/signup")
    config.add_view(signup, route_name="signup")
    return webtest.TestApp(config.make_wsgi_app())


def test_welcome(testapp, mail_outbox, mail_settings):
    assert mail_settings == {"mail.delivery": "memory"}
    testapp.get("/signup", {"email": "bob@example.com"})
    [mail] = mail_outbox.assert_sent(to="bob@example.com", subject="Welcome aboard", count=1)
    assert mail.text == "Thanks for signing up.\\n"


def test_each_test_starts_empty(testapp, mail_outbox):
    mail_outbox.assert_none_sent()


def test_failed_request_sends_nothing(testapp, mail_outbox):
    with pytest.raises(RuntimeError):
        testapp.get("/signup", {"email": "eve@example.com", "fail": "1"})
    mail_outbox.assert_none_sent()


def test_wrong_expectation(testapp, mail_outbox):
    testapp.get("/signup", {"email": "alice@example.com"})
    mail_outbox.assert_sent(to="carol@example.com")
'''


def test_the_installed_plugin_serves_this_suite_too(app, mail_outbox, mail_settings):
    assert mail_settings == {"mail.delivery": "memory"}
    mail_outbox.assert_none_sent()
    app.get("/send", {"subject": "via the fixture"})
    mail_outbox.assert_sent(subject="via the fixture", count=1)


def test_pytest_plugin_fixtures_with_a_webtest_app(pytester):
    pytester.makepyfile(test_signup=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*AssertionError: expected at least 1 message(s) with to='carol@example.com', found 0",
        "*1 message(s) were sent:",
        "*1. to alice@example.com: 'Welcome aboard'",
    ])
