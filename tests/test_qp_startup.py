"""``txmail-qp`` starts light when the application is not loaded (issue 14, item 2).

A cron pass pays its start-up every minute; what it imports is that cost.  These
tests pin what a pass without the application (``--no-app``, or
``mail.qp_events = none``) must not import -- the web framework's exception and
request machinery (which pull in WebOb and pkg_resources), the transaction
package, SQLAlchemy, prometheus_client, dkimpy, email-validator -- by running a
real pass in a fresh interpreter and listing its modules: no timing.  And that
the user who relies on events is never left without them silently.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from pyramid.config import Configurator

from pyramid_txmail.interfaces import IMailFailed, IMailSent

from .test_qp import APP_FACTORY, queue, run_qp, write_ini

#: Modules a pass without the application never needs (a spool, plain SMTP).
HEAVY = ("pyramid.exceptions", "pyramid.httpexceptions", "pyramid.threadlocal",
         "pyramid.registry", "pyramid.config", "pkg_resources", "webob", "transaction",
         "sqlalchemy", "prometheus_client", "dkim", "email_validator", "zope.sqlalchemy")

LIST_MODULES = """
import json, sys
from pyramid_txmail.scripts import qp
status = qp.main(sys.argv[1:])
print(json.dumps([status, sorted(sys.modules)]))
"""


def _pass_modules(*args):
    done = subprocess.run([sys.executable, "-c", LIST_MODULES, *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status, modules = json.loads(done.stdout.strip().splitlines()[-1])
    return status, modules


@pytest.mark.parametrize("how", ["--no-app", "mail.qp_events = none"])
def test_a_pass_without_the_app_imports_nothing_heavy(tmp_path, smtp_server, how):
    extra = how if how.startswith("mail.") else ""
    ini = write_ini(tmp_path, smtp_server, extra=extra)
    queue(tmp_path, ["a@example.org"])
    args = [ini, "-q"] + ([how] if how.startswith("--") else [])
    status, modules = _pass_modules(*args)
    assert status == 0
    assert len(smtp_server.messages) == 1  # the sending path is covered too
    loaded = sorted(m for m in modules if m.split(".")[0] in {h.split(".")[0] for h in HEAVY}
                    and any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert loaded == []


def test_a_pass_over_an_empty_spool_imports_no_smtp_nor_plaster(tmp_path, smtp_server):
    """What cron pays every minute when there is no mail: no SMTP/TLS code, no
    connection, no plaster loader lookup (importlib.metadata), no inotify (ctypes)."""
    ini = write_ini(tmp_path, smtp_server, extra="mail.qp_events = none")
    queue(tmp_path, ["a@example.org"])
    run_qp(ini, "-q")  # sends it: the spool is empty now, and exists
    status, modules = _pass_modules(ini, "-q")
    assert status == 0
    unwanted = ("smtplib", "ssl", "ctypes", "plaster", "plaster_pastedeploy", "paste.deploy",
                "importlib.metadata", "difflib", "pyramid_txmail.relay.smtp", "email.policy",
                "email.parser",
                "pyramid_txmail.mailer", "pyramid_txmail.compose.builder")
    assert sorted(set(modules) & set(unwanted)) == []


def test_qp_events_none_does_not_load_the_app(tmp_path, smtp_server):
    """The app's factory is not even importable here: with none it is never asked for."""
    ini = write_ini(tmp_path, smtp_server, extra="mail.qp_events = none")
    queue(tmp_path, ["a@example.org"])
    proc = run_qp(ini)
    assert proc.returncode == 0, proc.stderr
    assert len(smtp_server.messages) == 1


def test_qp_events_app_loads_the_app_and_no_app_overrides_it(tmp_path, make_smtp_server):
    server = make_smtp_server()
    (tmp_path / "txmail_testapp.py").write_text(APP_FACTORY)
    events = tmp_path / "events.txt"
    ini = write_ini(tmp_path, server, extra=f"events_file = {events}\nmail.qp_events = app")
    queue(tmp_path, ["a@example.org"], "<ev1@example.org>")
    assert run_qp(ini, pythonpath=str(tmp_path)).returncode == 0
    assert events.read_text().split() == ["MailSent", "<ev1@example.org>", "a@example.org"]
    queue(tmp_path, ["b@example.org"], "<ev2@example.org>")
    assert run_qp(ini, "--no-app", pythonpath=str(tmp_path)).returncode == 0
    assert len(server.messages) == 2
    assert "<ev2@example.org>" not in events.read_text()


def test_bad_qp_events_value_names_the_choices(tmp_path, smtp_server):
    ini = write_ini(tmp_path, smtp_server, extra="mail.qp_events = some")
    proc = run_qp(ini, "--no-app")
    assert proc.returncode == 78
    assert "mail.qp_events" in proc.stderr and "app" in proc.stderr and "none" in proc.stderr


def _app(tmp_path, qp_events, subscribe):
    config = Configurator(settings={"mail.queue_path": str(tmp_path / "spool"),
                                    "mail.qp_events": qp_events})
    config.include("pyramid_txmail")
    if subscribe is not None:
        config.add_subscriber(lambda event: None, subscribe)
    return config.make_wsgi_app()


@pytest.mark.parametrize("iface", [IMailSent, IMailFailed])
def test_subscribers_that_txmail_qp_will_not_run_are_a_warning(tmp_path, caplog, iface):
    """Events are not lost silently: the app that subscribes says so when it starts."""
    with caplog.at_level(logging.WARNING, logger="pyramid_txmail"):
        _app(tmp_path, "none", iface)
    [record] = [r for r in caplog.records if "qp_events" in r.getMessage()]
    text = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "mail.qp_events = none" in text and iface.__name__ in text
    assert "txmail-qp" in text


@pytest.mark.parametrize("qp_events, subscribe", [("none", None), ("app", IMailSent)])
def test_no_warning_when_nothing_is_lost(tmp_path, caplog, qp_events, subscribe):
    with caplog.at_level(logging.WARNING, logger="pyramid_txmail"):
        _app(tmp_path, qp_events, subscribe)
    assert [r for r in caplog.records if "qp_events" in r.getMessage()] == []


INI_CASES = """\
[DEFAULT]
shared = from-default
percent = 100%%

[app:main]
use = egg:pyramid_txmail
Mixed.Case = kept
mail.queue_path = %(here)s/spool
mail.password = pa%%ss
file = %(__file__)s
set shared = overridden
get fetched = percent
from_default = %(shared)s and %(percent)s

[app:other]
mail.host = relay.example.org
"""


@pytest.mark.parametrize("section", ["app:main", "app:other", "app:missing", "DEFAULT"])
def test_the_ini_is_read_as_plaster_pastedeploy_reads_it(tmp_path, section):
    import plaster

    from pyramid_txmail.scripts.ini import IniFile

    path = tmp_path / "app.ini"
    path.write_text(INI_CASES)
    ours = IniFile(str(path))
    assert ours.get_sections() == plaster.get_sections(str(path))
    assert ours.get_settings(section) == dict(plaster.get_settings(str(path), section))


@pytest.mark.parametrize("uri, plain", [("/srv/app/production.ini", True), ("app.ini", True),
                                        ("./dir:x/app.ini", True),
                                        ("pastedeploy+ini:app.ini", False),
                                        ("egg:myapp", False), ("app.yaml", False)])
def test_only_plain_ini_paths_skip_plaster(uri, plain):
    from pyramid_txmail.scripts.ini import is_plain_ini

    assert is_plain_ini(uri) is plain


def _subscription_targets():
    from pyramid_txmail import events
    from pyramid_txmail.interfaces import IMailEvent
    return [("IMailEvent", IMailEvent), ("MailEvent", events.MailEvent),
            ("MailSent", events.MailSent), ("MailFailed", events.MailFailed)]


@pytest.mark.parametrize("name", [n for n, _ in _subscription_targets()])
def test_subscribers_to_a_base_of_the_processors_events_are_a_warning_too(tmp_path, caplog, name):
    """The rule is the dispatcher's (events.subscribed): a subscriber that a MailSent,
    MailDeferred or MailFailed would reach is warned about, whatever it names -- a
    base interface (IMailEvent), a base class (MailEvent) or the class itself."""
    target = dict(_subscription_targets())[name]
    with caplog.at_level(logging.WARNING, logger="pyramid_txmail"):
        _app(tmp_path, "none", target)
    [record] = [r for r in caplog.records if "qp_events" in r.getMessage()]
    assert name in record.getMessage()


@pytest.mark.parametrize("target", ["Interface", "object", "IMailQueued", "MailQueued"])
def test_no_warning_for_subscribers_to_everything_or_to_the_apps_own_event(tmp_path, caplog, target):
    """Subscribers to every event (Interface, object) are not the processor's (they
    hear the app's own events); MailQueued is notified by the app, not txmail-qp."""
    from zope.interface import Interface
    from pyramid_txmail import events
    from pyramid_txmail.interfaces import IMailQueued
    subscribe = {"Interface": Interface, "object": object, "IMailQueued": IMailQueued,
                 "MailQueued": events.MailQueued}[target]
    with caplog.at_level(logging.WARNING, logger="pyramid_txmail"):
        _app(tmp_path, "none", subscribe)
    assert [r for r in caplog.records if "qp_events" in r.getMessage()] == []
