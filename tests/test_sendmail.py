"""The sendmail transport, through Postfix's own ``sendmail`` and ``postdrop``.

A private Postfix (tests/postfix.py) relays to an aiosmtpd sink; its ``sendmail`` from the
unpacked Debian package is ``mail.sendmail_app``, pointed at that instance's configuration
with ``-C`` in ``mail.sendmail_template``.  Postfix's sendmail runs postdrop with only
``export_environment``, so that list gets LD_LIBRARY_PATH (the unpacked libraries).
The mail is followed to the sink: the envelope must be exactly what the application passed
(Bcc included, mail.redirect_to honoured: recipients never read from the headers).
Postfix's sendmail exits 75 (EX_TEMPFAIL) for its fatal errors (e.g. a missing main.cf);
a permanent status comes from a two-line script standing in for a failing MTA.
"""
from __future__ import annotations

import email
import os
from email.message import EmailMessage

import pytest
import transaction
import webtest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid_mailer.message import Message

from pyramid_txmail import DeliveryFailed, IMailFailed, IMailQueued, IMailSent, get_mailer
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.relay.result import PERMANENT, TEMPORARY
from pyramid_txmail.relay.sendmail import SendmailResult, command
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir.spool import Spool

from .app import main
from .postfix import LIBS, POSTFIX, postfix_relay, wait_until  # noqa: F401 (the fixture)
from .smtpserver import SMTPServer, free_port

SENDMAIL = str(POSTFIX.parent / "sendmail")


@pytest.fixture
def postfix(postfix_relay, monkeypatch):
    """(sink, relay): a private Postfix whose sendmail/postdrop feed it, relaying to a sink."""
    monkeypatch.setenv("LD_LIBRARY_PATH", str(LIBS))
    sink = SMTPServer()
    try:
        relay = postfix_relay(sink.port, {
            "export_environment": "TZ MAIL_CONFIG LANG LD_LIBRARY_PATH"})
        yield sink, relay
    finally:
        sink.stop()


def sendmail_settings(relay, config_dir=None, **extra):
    settings = {
        "mail.sendmail_app": SENDMAIL,
        "mail.sendmail_template": f"{{sendmail_app}} -C {config_dir or relay.config} "
                                  "-i -f {sender}",
        "mail.default_sender": "app@example.com",
        # SMTP goes nowhere: only the sendmail binary can deliver in these tests.
        "mail.host": "127.0.0.1", "mail.port": str(free_port()), "mail.timeout": "5",
    }
    settings.update(extra)
    return settings


def make_mailer(settings, events=None):
    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    if events is not None:
        for iface in (IMailSent, IMailFailed, IMailQueued):
            config.add_subscriber(events.append, iface)
    config.commit()
    return get_mailer(config.registry, transaction.TransactionManager(explicit=True))


def arrived(sink, relay, count=1):
    if not wait_until(lambda: len(sink.messages) >= count, 60):
        pytest.fail(f"{count} message(s) expected at the sink, got {len(sink.messages)}:\n"
                    f"{relay.log()}")
    return sink.messages


def test_send_sendmail_reaches_the_sink_through_postfix_with_the_apps_envelope(postfix):
    sink, relay = postfix
    events = []
    mailer = make_mailer(sendmail_settings(relay), events)
    msg = Message(subject="Through sendmail", sender="shop@example.com",
                  recipients=["bob@example.org"], cc=["carol@example.net"],
                  bcc=["audit@example.com"], body="Hello\n")
    with mailer.transaction_manager:
        msgid = mailer.send_sendmail(msg)
        assert events == []  # nothing before the commit
    [received] = arrived(sink, relay)
    assert received.mail_from == "shop@example.com"
    assert sorted(received.rcpt_tos) == ["audit@example.com", "bob@example.org",
                                         "carol@example.net"]
    parsed = email.message_from_bytes(received.data)
    assert parsed["Message-ID"] == msgid and parsed["Bcc"] is None
    [sent] = events
    assert IMailSent.providedBy(sent)
    assert [(type(r), r.exit_status) for r in sent.results] == [(SendmailResult, 0)] * 3


def test_delivery_sendmail_ignores_t_and_keeps_the_redirect(postfix, caplog):
    sink, relay = postfix
    settings = sendmail_settings(relay, **{
        "mail.delivery": "sendmail", "mail.redirect_to": "staging@example.com",
        # pyramid_mailer's template, with -t: it must not add the header recipients.
        "mail.sendmail_template": f"{{sendmail_app}} -C {relay.config} -t -i -f {{sender}}"})
    app = webtest.TestApp(main(settings))
    app.get("/send", {"to": "customer@example.org", "bcc": "secret@example.org"})
    assert "-t is ignored" in caplog.text
    [received] = arrived(sink, relay)
    assert received.rcpt_tos == ["staging@example.com"]
    relay.flush()
    assert not wait_until(lambda: len(sink.messages) > 1, 3), "a header recipient got it"


def test_send_immediately_sendmail_sends_now_and_a_lone_dot_is_not_the_end(postfix):
    sink, relay = postfix
    mailer = make_mailer(sendmail_settings(relay))
    msg = EmailMessage()
    msg["To"], msg["Subject"] = "bob@example.org", "Now"
    msg.set_content("Hello\n.\nThe line above holds only a dot.\n", cte="7bit")
    msgid = mailer.send_immediately_sendmail(msg)
    [received] = arrived(sink, relay)
    parsed = email.message_from_bytes(received.data)
    assert parsed["Message-ID"] == msgid
    assert parsed.get_payload().replace("\r\n", "\n") == \
        "Hello\n.\nThe line above holds only a dot.\n"


def test_ex_tempfail_is_temporary_and_raised_with_the_exit_status(postfix, tmp_path):
    sink, relay = postfix
    events = []
    mailer = make_mailer(sendmail_settings(relay, config_dir=tmp_path / "missing"), events)
    msg = Message(subject="Now", recipients=["bob@example.org"], body="now\n")
    with pytest.raises(DeliveryFailed, match="exit status 75 .EX_TEMPFAIL") as caught:
        mailer.send_immediately_sendmail(msg)
    [result] = caught.value.result.results
    assert (result.status, result.exit_status) == (TEMPORARY, 75)
    assert "main.cf" in result.text  # what Postfix's sendmail said
    assert mailer.send_immediately_sendmail(msg, fail_silently=True) is False
    assert [IMailFailed.providedBy(e) for e in events] == [True, True]
    assert "75" in events[0].reason


def test_tempfail_falls_back_to_the_queue_and_txmail_qp_delivers_through_sendmail(
        postfix, tmp_path):
    sink, relay = postfix
    spool_path = str(tmp_path / "spool")
    events = []
    broken = sendmail_settings(relay, config_dir=tmp_path / "missing", **{
        "mail.delivery": "sendmail", "mail.queue_path": spool_path})
    mailer = make_mailer(broken, events)
    with mailer.transaction_manager:
        msgid = mailer.send(Message(subject="Later", recipients=["bob@example.org"],
                                    body="later\n"))
    [queued] = events
    assert IMailQueued.providedBy(queued) and "EX_TEMPFAIL" in queued.reason
    spool = Spool(spool_path)
    assert spool.count("new") == 1

    fixed = parse_settings(sendmail_settings(relay, **{"mail.delivery": "sendmail",
                                                       "mail.queue_path": spool_path}))
    stats = Processor(spool, None, fixed).run_once()
    assert stats.sent == 1
    [received] = arrived(sink, relay)
    assert email.message_from_bytes(received.data)["Message-ID"] == msgid


@pytest.fixture
def failing_sendmail(tmp_path):
    """A stand-in MTA that reads the message and exits 67 (EX_NOUSER)."""
    path = tmp_path / "sendmail-nouser"
    path.write_text("#!/bin/sh\ncat >/dev/null\necho 'no such user here' >&2\nexit 67\n")
    path.chmod(0o755)
    return str(path)


def test_a_permanent_exit_status_is_permanent_and_dead_letters(failing_sendmail, tmp_path):
    spool_path = str(tmp_path / "spool")
    mailer = make_mailer({"mail.delivery": "sendmail", "mail.sendmail_app": failing_sendmail,
                          "mail.queue_path": spool_path,
                          "mail.default_sender": "app@example.com"})
    msg = Message(subject="Never", recipients=["bob@example.org"], body="x\n")
    with pytest.raises(DeliveryFailed, match="67 .EX_NOUSER.*no such user here") as caught:
        mailer.send_immediately_sendmail(msg)
    assert [(r.status, r.exit_status) for r in caught.value.result.results] == [(PERMANENT, 67)]
    with mailer.transaction_manager:
        mailer.send(msg)
    spool = Spool(spool_path)
    assert (spool.count("new"), spool.count("failed")) == (0, 1)


def test_a_missing_binary_is_a_startup_error_for_sendmail_delivery(tmp_path):
    missing = str(tmp_path / "no-sendmail")
    with pytest.raises(ConfigurationError, match="mail.sendmail_app = .*no such file"):
        parse_settings({"mail.delivery": "sendmail", "mail.sendmail_app": missing})
    # Other deliveries only need it for send_*sendmail: reported then, as temporary.
    mailer = make_mailer({"mail.sendmail_app": missing, "mail.default_sender": "a@example.com"})
    with pytest.raises(DeliveryFailed, match="cannot run"):
        mailer.send_immediately_sendmail(Message(subject="x", recipients=["b@example.org"],
                                                 body="x\n"))


def test_the_template_accepts_only_known_placeholders():
    with pytest.raises(ConfigurationError, match="mail.sendmail_template.*{recipients}"):
        parse_settings({"mail.sendmail_template": "{sendmail_app} -i {recipients}"})


def test_recipients_follow_a_double_dash_and_nothing_goes_through_a_shell():
    args = command("/usr/sbin/sendmail", ["{sendmail_app}", "-t", "-i", "-f", "{sender}"],
                   "a b@example.com", ["-oQ/tmp/x@example.org", "$(reboot)@example.org"])
    assert args == ["/usr/sbin/sendmail", "-i", "-f", "a b@example.com", "--",
                    "-oQ/tmp/x@example.org", "$(reboot)@example.org"]
    assert os.path.basename(args[0]) == "sendmail"
