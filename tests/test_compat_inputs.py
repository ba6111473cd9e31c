"""Issue 12 point 4: what pyramid_mailer users hand over is accepted.

- pyramid_mailer ``Message`` objects with display names ("Kinto <k@example.com>") in
  sender, recipients, cc, bcc and extra_headers are delivered to the bare addresses,
  as pyramid_mailer does, and the headers keep the names;
- header injection through any of those fields is still refused, naming the field;
- pyramid_mailer's ``prefix`` (``mailer_factory_from_settings(settings, prefix)``,
  ``Mailer.from_settings``, the ``pyramid_mailer.prefix`` setting) works;
- an unknown ``mail.`` key is a WARNING naming it and the closest known key, not an
  error (applications own keys such as ``mail.debug_mailer``); a bad value stays one.
"""
from __future__ import annotations

import email
import email.policy
import logging

import pytest
import transaction
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid_mailer.message import Message

from pyramid_txmail import HeaderInjection, InvalidAddress, get_mailer
from pyramid_txmail.settings import parse_settings


def direct_registry(server, **extra):
    settings = {"mail.delivery": "direct", "mail.host": server.host,
                "mail.port": str(server.port), "mail.timeout": "5", **extra}
    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    return config.registry


def send_now(registry, message):
    manager = transaction.TransactionManager(explicit=True)
    with manager:
        return get_mailer(registry, manager).send(message)


def headers_of(received):
    return email.message_from_bytes(received.data, policy=email.policy.default)


def test_display_names_in_every_field_go_to_the_bare_addresses(smtp_server):
    """Was: InvalidAddress "envelope sender: invalid address 'Kinto <k@example.com>'"."""
    message = Message(subject="Hi", body="text",
                      sender="Kinto <k@example.com>",
                      recipients=["A <a@example.com>", '"Doe, Jane" <jane@example.com>'],
                      cc=["C <c@example.com>"], bcc=["Hidden <b@example.com>"],
                      extra_headers={"Reply-To": "Support <support@example.com>"})
    send_now(direct_registry(smtp_server), message)
    [received] = smtp_server.messages
    assert received.mail_from == "k@example.com"
    assert sorted(received.rcpt_tos) == ["a@example.com", "b@example.com", "c@example.com",
                                         "jane@example.com"]
    got = headers_of(received)
    assert str(got["From"]) == "Kinto <k@example.com>"
    assert [(a.display_name, a.addr_spec) for a in got["To"].addresses] == \
        [("A", "a@example.com"), ("Doe, Jane", "jane@example.com")]
    assert str(got["Cc"]) == "C <c@example.com>"
    assert str(got["Reply-To"]) == "Support <support@example.com>"
    assert got["Bcc"] is None and b"Hidden" not in received.data


def test_a_display_name_in_the_default_sender_too(smtp_server):
    registry = direct_registry(smtp_server, **{"mail.default_sender": "Site <site@example.com>"})
    send_now(registry, Message(subject="Hi", body="t", recipients=["A <a@example.com>"]))
    [received] = smtp_server.messages
    assert (received.mail_from, received.rcpt_tos) == ("site@example.com", ["a@example.com"])
    assert str(headers_of(received)["From"]) == "Site <site@example.com>"


@pytest.mark.parametrize("field, value, named", [
    ("recipients", ["a@example.com, b@example.com"], "To"),
    ("recipients", ["Doe, Jane <jane@example.com>"], "To"),
    ("cc", ["not an address"], "Cc"),
    ("bcc", ["B <b@example.com> <c@example.com>"], "Bcc"),
    ("sender", "Kinto <k@example.com>, x@example.com", "From"),
])
def test_one_address_per_item_else_refused_naming_the_field(field, value, named, smtp_server):
    kwargs = {"subject": "s", "body": "t", "sender": "s@example.com",
              "recipients": ["a@example.com"], field: value}
    with pytest.raises(InvalidAddress) as info:
        send_now(direct_registry(smtp_server), Message(**kwargs))
    assert str(info.value).startswith(named + ":"), info.value
    assert smtp_server.messages == []


@pytest.mark.parametrize("field, value, named", [
    ("sender", "K <k@example.com>\nBcc: x@evil.example", "From"),
    ("recipients", ["A <a@example.com>\r\nBcc: x@evil.example"], "To"),
    ("cc", ["C <c@example.com>\nX: y"], "Cc"),
    ("bcc", ["B <b@example.com>\u2028X: y"], "Bcc"),
    ("extra_headers", {"Reply-To": "R <r@example.com>\nBcc: x@evil.example"}, "Reply-To"),
])
def test_injection_through_a_named_address_stays_refused(field, value, named, smtp_server):
    kwargs = {"subject": "s", "body": "t", "sender": "s@example.com",
              "recipients": ["a@example.com"], field: value}
    with pytest.raises(HeaderInjection) as info:
        send_now(direct_registry(smtp_server), Message(**kwargs))
    assert str(info.value).startswith(named), info.value
    assert smtp_server.messages == []


# -- unknown keys: a warning; bad values: an error -------------------------------------

def test_an_unknown_key_is_a_warning_naming_the_closest_known_key(caplog):
    """Was: ConfigurationError "mail.debug_mailer = 'true': unknown setting" at include,
    while kinto-emailer owns that key and pyramid_mailer ignores it."""
    caplog.set_level(logging.WARNING)
    config = Configurator(settings={"mail.debug_mailer": "true", "mail.prot": "25"})
    config.include("pyramid_txmail")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    [debug_mailer] = [m for m in messages if "mail.debug_mailer" in m]
    assert "not a pyramid_txmail setting" in debug_mailer
    assert "did you mean mail.debug?" in debug_mailer
    [prot] = [m for m in messages if "mail.prot" in m]
    assert "did you mean mail.port?" in prot


def test_an_unknown_key_far_from_any_known_one_is_named_without_a_guess(caplog):
    caplog.set_level(logging.WARNING)
    parse_settings({"mail.xyzzy_frobnicate": "1"})
    [message] = [r.getMessage() for r in caplog.records if "mail.xyzzy_frobnicate" in
                 r.getMessage()]
    assert "did you mean" not in message


def test_an_unknown_key_value_is_never_echoed(caplog):
    caplog.set_level(logging.WARNING)
    parse_settings({"mail.pasword": "hunter2"})
    text = caplog.text
    assert "mail.pasword" in text and "mail.password" in text and "hunter2" not in text


def test_a_bad_value_of_a_known_key_stays_an_error():
    config = Configurator(settings={"mail.debug_mailer": "true", "mail.port": "smtp"})
    with pytest.raises(ConfigurationError, match="mail.port = 'smtp': expected a whole number"):
        config.include("pyramid_txmail")


# -- pyramid_mailer's prefix -----------------------------------------------------------

def test_mailer_factory_from_settings_with_a_prefix(smtp_server):
    """pyramid_mailer's ``mailer_factory_from_settings(settings, prefix)`` and
    ``Mailer.from_settings(settings, prefix)`` read ``PREFIX*`` keys."""
    from pyramid_txmail import Mailer, mailer_factory_from_settings

    settings = {"mymail.host": smtp_server.host, "mymail.port": str(smtp_server.port),
                "mymail.default_sender": "Site <site@example.com>", "mymail.delivery": "direct",
                "mail.host": "wrong.invalid"}
    for factory in (mailer_factory_from_settings, Mailer.from_settings):
        mailer = factory(settings, "mymail.")
        with transaction.manager:
            mailer.send(Message(subject="prefixed", body="t", recipients=["a@example.com"]))
    assert [m.mail_from for m in smtp_server.messages] == ["site@example.com"] * 2


def test_from_settings_defaults_to_mail_prefix(tmp_path):
    from pyramid_txmail import Mailer

    mailer = Mailer.from_settings({"mail.queue_path": str(tmp_path / "spool")})
    assert mailer.delivery.settings.queue_path == str(tmp_path / "spool")
    assert mailer.delivery.settings.delivery == "queue"


def test_the_pyramid_mailer_prefix_setting_is_honoured(smtp_server, caplog):
    """pyramid_mailer's includeme reads ``pyramid_mailer.prefix``: so do we (and the
    other keys are then not ours: no warning about them)."""
    caplog.set_level(logging.WARNING)
    config = Configurator(settings={
        "pyramid_mailer.prefix": "smtp.", "smtp.host": smtp_server.host,
        "smtp.port": str(smtp_server.port), "smtp.delivery": "direct",
        "mail.something_else": "x"})
    config.include("pyramid_txmail")
    send_now(config.registry, Message(subject="s", body="t", sender="s@example.com",
                                      recipients=["a@example.com"]))
    assert len(smtp_server.messages) == 1
    assert "mail.something_else" not in caplog.text


def test_a_prefix_names_its_keys_in_errors():
    with pytest.raises(ConfigurationError, match="smtp.port = 'x'"):
        parse_settings({"pyramid_mailer.prefix": "smtp.", "smtp.port": "x"})


def test_the_console_scripts_read_the_same_prefixed_keys(tmp_path, smtp_server):
    """``pyramid_mailer.prefix`` moves the keys for ``txmail-qp`` and ``txmail-queue``
    too: they must find the spool the app writes, not a ``mail.queue_path`` of their own."""
    import subprocess
    import sys
    from pathlib import Path

    spool = tmp_path / "spool"
    ini = tmp_path / "app.ini"
    ini.write_text(f"[app:main]\nuse = call:tests.app:main\npyramid_mailer.prefix = smtp.\n"
                   f"smtp.queue_path = {spool}\nsmtp.host = {smtp_server.host}\n"
                   f"smtp.port = {smtp_server.port}\n")
    config = Configurator(settings={"pyramid_mailer.prefix": "smtp.",
                                    "smtp.queue_path": str(spool)})
    config.include("pyramid_txmail")
    send_now(config.registry, Message(subject="prefixed", body="t", sender="s@example.com",
                                      recipients=["a@example.com"]))
    scripts = Path(sys.executable).parent
    status = subprocess.run([str(scripts / "txmail-queue"), str(ini), "status", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert __import__("json").loads(status.stdout)["queued"] == 1
    drained = subprocess.run([str(scripts / "txmail-qp"), str(ini), "--no-app"],
                             capture_output=True, text=True, timeout=120)
    assert drained.returncode == 0, drained.stderr
    assert [m.rcpt_tos for m in smtp_server.messages] == [["a@example.com"]]


@pytest.mark.parametrize("item, envelope", [
    ('"a,b"@example.com', '"a,b"@example.com'),
    ('Name <"a,b"@example.com>', '"a,b"@example.com'),
    ('=?utf-8?q?a?=@example.com', '=?utf-8?q?a?=@example.com'),
    ('"a b"@example.com', '"a b"@example.com'),
])
def test_a_named_or_bare_item_keeps_its_address_byte_for_byte(item, envelope):
    """Parsing a display name must never unquote or decode the address (issue 11's
    envelope integrity): a bare address is taken as given; from 'Name <addr>' the
    addr as written.  Checked in the raw SMTP transcript (aiosmtpd's own parser
    decodes an encoded-word look-alike in RCPT TO)."""
    from .recording_server import recording_server

    message = Message(subject="s", body="t", sender="s@example.com", recipients=[item])
    with recording_server() as server:
        send_now(direct_registry(server), message)
        [transcript] = [bytes(t) for t in server.handler.transcripts]
    rcpts = [line for line in transcript.split(b"\r\n") if line.startswith(b"RCPT TO:")]
    assert rcpts == [b"RCPT TO:<" + envelope.encode() + b">"], transcript
