"""Issue 12, round 2 (probe12): what an app switched from pyramid_mailer ran into.

Each test failed on the code before the fix (the docstring says how):

1. ``mail.queue_path`` without ``mail.delivery``: send() queues -- said at startup;
2. a plugin that includes pyramid_mailer itself no longer breaks startup;
3. the test outbox keeps send order across send / send_immediately;
4. pyramid_mailer's keyword construction ``Mailer(host=..., port=...)``;
5. mail dropped with its transaction is logged (WARNING when begin() aborted it);
6. a pyramid_mailer ``Message``'s envelope sender is sender or default_sender;
8. NoTransaction's advice from another thread and for registry['mailer'].
"""
from __future__ import annotations

import logging
import threading

import pytest
import transaction
import webtest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid_mailer.message import Message

from pyramid_txmail import Mailer, NoTransaction, get_mailer


def direct_settings(server, **extra):
    return {"mail.delivery": "direct", "mail.host": server.host,
            "mail.port": str(server.port), "mail.timeout": "5",
            "mail.default_sender": "site@example.com", **extra}


def message(subject, to="bob@example.com", **kw):
    return Message(subject=subject, recipients=[to], body="body of " + subject, **kw)


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- 1. mail.queue_path alone makes send() queue: a startup WARNING ---------------

def test_implied_queue_delivery_warns_at_startup(tmp_path, caplog):
    """Was: no warning at all; the only trace was an INFO "queued" per message."""
    spool = str(tmp_path / "spool")
    caplog.set_level(logging.INFO)
    config = Configurator(settings={"mail.queue_path": spool,
                                    "mail.default_sender": "site@example.com"})
    config.include("pyramid_txmail")
    [warning] = [w for w in warnings_of(caplog) if "queue_path" in w]
    assert "mail.delivery" in warning and spool in warning and "txmail-qp" in warning
    assert "mail.delivery = direct" in warning


@pytest.mark.parametrize("delivery", ["queue", "direct"])
def test_no_warning_once_mail_delivery_is_chosen(tmp_path, caplog, delivery):
    caplog.set_level(logging.INFO)
    config = Configurator(settings={"mail.queue_path": str(tmp_path / "spool"),
                                    "mail.delivery": delivery})
    config.include("pyramid_txmail")
    assert not [w for w in warnings_of(caplog) if "queue_path" in w]


def test_mailer_from_settings_warns_too(tmp_path, caplog):
    """The docs' registry['mailer'] = Mailer.from_settings(settings) pattern."""
    caplog.set_level(logging.INFO)
    Mailer.from_settings({"pm.queue_path": str(tmp_path / "spool")}, "pm.")
    [warning] = [w for w in warnings_of(caplog) if "queue_path" in w]
    assert "pm.delivery" in warning and "txmail-qp" in warning


# -- 2. a plugin that includes pyramid_mailer ---------------------------------------

def test_plugin_including_pyramid_mailer_defers_to_us(smtp_server, caplog):
    """Was: ConfigurationConflictError on ('request extensions', 'mailer') at startup.
    The skip is said at DEBUG: it is said in every process with pyramid_mailer
    installed (each txmail-qp child too), whether or not a plugin includes it."""
    caplog.set_level(logging.DEBUG, logger="pyramid_txmail")
    config = Configurator(settings=direct_settings(smtp_server))
    config.include("pyramid_txmail")
    config.include("tests.plugins.mailing_plugin")
    app = webtest.TestApp(config.make_wsgi_app())
    app.get("/plugin/notify")
    [received] = smtp_server.messages
    assert received.mail_from == "site@example.com"
    assert received.rcpt_tos == ["ops@example.com"]
    assert any("config.include('pyramid_mailer')" in r.getMessage() and
               r.levelno == logging.DEBUG for r in caplog.records)


def test_plugin_included_before_us_is_a_clear_error(smtp_server):
    """The other order cannot be undone (pyramid_mailer's includeme has run): the
    error says to include pyramid_txmail first, instead of Pyramid's conflict."""
    config = Configurator(settings=direct_settings(smtp_server))
    config.include("tests.plugins.mailing_plugin")
    with pytest.raises(ConfigurationError, match="include pyramid_txmail first"):
        config.include("pyramid_txmail")


# -- 3. outbox order -----------------------------------------------------------------

def test_outbox_keeps_send_order_across_send_and_send_immediately():
    """Was: [B, A] -- send recorded at the commit, send_immediately at once."""
    def view(request):
        request.mailer.send(message("A"))
        request.mailer.send_immediately(message("B"))
        request.mailer.send(message("C"))
        return request.response

    def failing(request):
        request.mailer.send(message("aborted"))
        request.mailer.send_immediately(message("D"))
        raise ValueError("the view fails: its transaction aborts")

    config = Configurator(settings={"mail.default_sender": "site@example.com"})
    config.include("pyramid_txmail.testing")
    config.add_route("v", "/v")
    config.add_view(view, route_name="v")
    config.add_route("f", "/f")
    config.add_view(failing, route_name="f")
    app = webtest.TestApp(config.make_wsgi_app())
    app.get("/v")
    with pytest.raises(ValueError):
        app.get("/f")
    mailer = get_mailer(config.registry)
    assert [m.subject for m in mailer.outbox] == ["A", "B", "C", "D"]


# -- 4. pyramid_mailer's Mailer(host=..., port=...) -----------------------------------

def test_keyword_construction_as_pyramid_mailer(smtp_server):
    """Was: TypeError: Mailer.__init__() got an unexpected keyword argument 'host'."""
    mailer = Mailer(host=smtp_server.host, port=smtp_server.port,
                    default_sender="kw@example.com")
    mailer.send_immediately(message("now"))
    with transaction.manager:
        mailer.send(message("at commit"))
    assert [(r.mail_from, r.rcpt_tos) for r in smtp_server.messages] == \
        [("kw@example.com", ["bob@example.com"])] * 2


def test_keyword_construction_names_from_settings_for_what_it_cannot_take():
    with pytest.raises(TypeError, match=r"smtp_mailer.*Mailer\.from_settings"):
        Mailer(smtp_mailer=object())


# -- 5. mail dropped with its transaction is logged -----------------------------------

def test_begin_while_mail_is_pending_warns_with_the_message_ids(smtp_server, caplog):
    """Was: the first transaction's mail vanished with no log line at any level."""
    registry = Configurator(settings=direct_settings(smtp_server)).registry
    config = Configurator(registry=registry, settings=registry.settings)
    config.include("pyramid_txmail")
    mailer = get_mailer(config.registry)
    try:
        transaction.begin()
        dropped = mailer.send(message("forgotten"))
        transaction.begin()           # a loop that forgot to commit
        kept = mailer.send(message("committed"))
        transaction.commit()
    finally:
        transaction.abort()
    [warning] = warnings_of(caplog)
    assert dropped in warning and "transaction.begin()" in warning
    assert [r.rcpt_tos for r in smtp_server.messages] == [["bob@example.com"]]
    assert kept not in warning


def test_explicit_abort_and_savepoint_rollback_log_info(smtp_server, caplog):
    caplog.set_level(logging.INFO, logger="pyramid_txmail")
    config = Configurator(settings=direct_settings(smtp_server))
    config.include("pyramid_txmail")
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(config.registry, manager)
    with manager:
        savepoint = manager.savepoint()
        rolled_back = mailer.send(message("rolled back"))
        savepoint.rollback()
    manager.begin()
    aborted = mailer.send(message("aborted"))
    manager.abort()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(rolled_back in i and "savepoint" in i for i in infos)
    assert any(aborted in i and "aborted" in i for i in infos)
    assert not warnings_of(caplog) and smtp_server.messages == []


# -- 6. the envelope sender of a pyramid_mailer Message ------------------------------

def test_envelope_sender_is_default_sender_not_an_extra_sender_header(smtp_server):
    """Was: MAIL FROM:<agent@example.com>, the Sender of extra_headers."""
    config = Configurator(settings=direct_settings(smtp_server))
    config.include("pyramid_txmail")
    manager = transaction.TransactionManager(explicit=True)
    with manager:
        get_mailer(config.registry, manager).send(
            message("hi", extra_headers={"Sender": "agent@example.com"}))
    [received] = smtp_server.messages
    assert received.mail_from == "site@example.com"   # pyramid_mailer's default_sender
    assert b"Sender: agent@example.com" in received.data


# -- 8. NoTransaction's advice ---------------------------------------------------------

def test_send_from_another_thread_of_a_request_says_transactions_are_thread_bound():
    """Was: "this request has none ... pyramid_tm is not managing it"."""
    errors = []

    def view(request):
        def send():
            try:
                request.mailer.send(message("from a thread"))
            except NoTransaction as exc:
                errors.append(str(exc))
        thread = threading.Thread(target=send)
        thread.start()
        thread.join()
        return request.response

    config = Configurator(settings={"mail.default_sender": "site@example.com"})
    config.include("pyramid_txmail.testing")
    config.add_route("v", "/v")
    config.add_view(view, route_name="v")
    webtest.TestApp(config.make_wsgi_app()).get("/v")
    [error] = errors
    assert "bound to the thread" in error and "this request has none" not in error


def test_registry_mailer_under_an_explicit_manager_suggests_request_mailer(smtp_server):
    """Was: "wrap it in `with transaction.manager:`" -- inside a request."""
    errors = []

    def view(request):
        try:
            request.registry["mailer"].send(message("report"))
        except NoTransaction as exc:
            errors.append(str(exc))
        return request.response

    settings = direct_settings(smtp_server, **{"tm.manager_hook": "pyramid_tm.explicit_manager"})
    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    config.registry["mailer"] = Mailer.from_settings(settings)
    config.add_route("v", "/v")
    config.add_view(view, route_name="v")
    webtest.TestApp(config.make_wsgi_app()).get("/v")
    [error] = errors
    assert "request.mailer" in error and "with transaction.manager:" not in error
