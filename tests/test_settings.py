"""mail.* settings: pyramid_mailer's keys keep working; bad input is a clear startup error."""
from __future__ import annotations

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_txmail.settings import SETTINGS, parse_settings

PYRAMID_MAILER_KEYS = {
    "mail.host": "smtp.example.com", "mail.port": "2525", "mail.username": "u",
    "mail.password": "secret", "mail.tls": "true", "mail.ssl": "false",
    "mail.keyfile": None, "mail.certfile": None, "mail.queue_path": None,
    "mail.default_sender": "Site <site@example.com>", "mail.debug": "1",
    "mail.sendmail_app": "/usr/lib/sendmail", "mail.sendmail_template": "{sendmail_app} -t",
}


def test_pyramid_mailer_keys_keep_their_meaning(tmp_path):
    values = {k: v for k, v in PYRAMID_MAILER_KEYS.items() if v is not None}
    values["mail.queue_path"] = str(tmp_path)
    s = parse_settings(values)
    assert (s.host, s.port, s.username, s.password) == ("smtp.example.com", 2525, "u", "secret")
    assert s.tls is True and s.ssl is False and s.debug == 1
    assert s.default_sender == "Site <site@example.com>"
    # -t (recipients from the headers) is dropped, with a warning: the envelope is the app's.
    assert s.sendmail_template == ["{sendmail_app}"]
    assert s.delivery == "queue"  # queue is the default when queue_path is set
    assert s.direct_fallback == "queue"  # and so is the fallback of direct delivery


def test_defaults():
    s = parse_settings({"other.key": "ignored"})
    assert (s.host, s.port, s.delivery, s.tls, s.timeout) == ("localhost", 25, "direct", False, 30.0)
    assert s.direct_fallback == "none"
    assert parse_settings({"mail.ssl": "yes"}).port == 465
    assert parse_settings({"mail.timeout": "2m"}).timeout == 120.0
    assert parse_settings({"mail.retry_initial": "5m", "mail.max_queue_time": "5d"}).max_queue_time == 432000


@pytest.mark.parametrize("key, value, expected", [
    ("mail.tls", "maybe", "mail.tls = 'maybe': expected a boolean"),
    ("mail.port", "smtp", "mail.port = 'smtp': expected a whole number"),
    ("mail.port", "70000", "mail.port = '70000': expected a number <= 65535"),
    ("mail.delivery", "pigeon", "mail.delivery = 'pigeon': expected one of: queue, direct"),
    ("mail.timeout", "soon", "mail.timeout = 'soon': expected a positive duration"),
    ("mail.default_sender", "not an address", "mail.default_sender"),
    ("mail.tls_cafile", "/nonexistent/ca.pem", "mail.tls_cafile = '/nonexistent/ca.pem': cannot read"),
    ("mail.debug", "7", "mail.debug = '7': expected a number <= 2"),
])
def test_bad_values_name_key_value_and_choices(key, value, expected):
    with pytest.raises(ConfigurationError) as info:
        parse_settings({key: value})
    assert expected in str(info.value)


def test_combinations_are_checked():
    with pytest.raises(ConfigurationError, match="mail.tls .*mail.ssl"):
        parse_settings({"mail.tls": "true", "mail.ssl": "true"})
    with pytest.raises(ConfigurationError, match="mail.queue_path: required with mail.delivery = queue"):
        parse_settings({"mail.delivery": "queue"})
    with pytest.raises(ConfigurationError, match="mail.direct_fallback = queue"):
        parse_settings({"mail.direct_fallback": "queue"})
    with pytest.raises(ConfigurationError, match="mail.keyfile = .*needs mail.certfile"):
        parse_settings({"mail.keyfile": __file__})
    with pytest.raises(ConfigurationError, match="mail.retry_max"):
        parse_settings({"mail.retry_initial": "1h", "mail.retry_max": "5m"})


def test_password_is_never_echoed():
    with pytest.raises(ConfigurationError) as info:
        parse_settings({"mail.password": "hunter2", "mail.port": "x"})
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(parse_settings({"mail.password": "hunter2"}))


def test_every_setting_has_its_reference_text():
    """docs/settings.rst is generated from the table (tests/test_docs_build.py checks the
    page): each key needs a meaning there, and a short line for txmail-qp --help."""
    assert [s.name for s in SETTINGS if not (s.reference.strip() and s.doc.strip())] == []


def test_the_reference_shows_each_default_as_text_that_parses_back_to_it():
    """A default the reference shows (``30s``, ``false``) is the real one: parsed as if
    written in the ini, it is the table's default.  A computed default (None in the
    table) is prose and says so with ``default_text``."""
    from pyramid_txmail.settings import shown_default

    for setting in SETTINGS:
        shown = shown_default(setting)
        if setting.default is None or setting.default == ():
            assert shown == (setting.default_text or "--"), setting.name
        else:
            assert not setting.default_text, setting.name
            assert setting.parse(shown) == setting.default, (setting.name, shown)


def test_include_fails_at_startup_on_a_bad_value():
    config = Configurator(settings={"mail.port": "25x"})
    with pytest.raises(ConfigurationError, match="mail.port"):
        config.include("pyramid_txmail")
    # (an unknown key is a warning: tests/test_compat_inputs.py)
