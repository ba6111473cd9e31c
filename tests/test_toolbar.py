"""The pyramid_debugtoolbar panel: the mails a request sent and whether they were committed."""
from __future__ import annotations

import re

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.response import Response

from pyramid_txmail.mailer.sendlog import ENVIRON_KEY

from .app import make_message, send_then_fail

LOCAL = {"REMOTE_ADDR": "127.0.0.1"}


def _page(request, text):
    return Response(f"<html><body><p>{text}</p></body></html>", content_type="text/html")


def send_one(request):
    for _ in range(int(request.params.get("count", 1))):
        request.mailer.send(make_message(request.params))
    return _page(request, "sent")


def send_then_error_page(request):
    request.mailer.send(make_message(request.params))
    request.tm.abort()
    request.tm.begin()
    return _page(request, "aborted")


def send_around_savepoint(request):
    request.mailer.send(make_message({"subject": "kept"}))
    point = request.tm.savepoint()
    request.mailer.send(make_message({"subject": "rolled back"}))
    point.rollback()
    return _page(request, "savepoint")


def error_view(exc, request):
    return Response(f"<html><body>error: {exc}</body></html>", status=500,
                    content_type="text/html")


def make_app(tmp_path, includes=(), **extra):
    settings = {
        "mail.queue_path": str(tmp_path / "spool"),
        "mail.default_sender": "Sender <sender@example.com>",
        "pyramid.includes": "pyramid_debugtoolbar",
        "debugtoolbar.includes": "pyramid_txmail.toolbar",
        "debugtoolbar.hosts": "127.0.0.1",
        "debugtoolbar.intercept_exc": "false",
        **extra,
    }
    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    for include in includes:
        config.include(include)
    for name, view in [("send", send_one), ("raise", send_then_fail),
                       ("abort", send_then_error_page), ("savepoint", send_around_savepoint)]:
        config.add_route(name, "/" + name)
        config.add_view(view, route_name=name)
    config.add_exception_view(error_view, context=RuntimeError)
    return webtest.TestApp(config.make_wsgi_app(), extra_environ=LOCAL)


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


def mail_panel(app, response):
    """The HTML of the Mail panel for the request that produced ``response``."""
    match = re.search(r'href="([^"]*/_debug_toolbar/[0-9a-f]+)"', response.text)
    assert match, "the toolbar did not inject its button: " + response.text[-500:]
    toolbar = app.get(match.group(1))
    start = toolbar.text.index('id="pDebugPanel-pyramid_txmail-content"')
    return toolbar.text[start:start + 4000]


def spooled(tmp_path):
    new = tmp_path / "spool" / "new"
    return sorted(new.iterdir()) if new.exists() else []


def test_committed_mail_is_listed_with_its_state(app, tmp_path):
    response = app.get("/send", params={"to": "bob@example.com", "subject": "Hello Bob"})
    panel = mail_panel(app, response)
    assert "Hello Bob" in panel
    assert "bob@example.com" in panel and "sender@example.com" in panel
    assert re.search(r"&lt;[^<>]+@example\.com&gt;", panel), "the Message-ID is shown"
    assert "<strong>committed</strong>" in panel
    assert len(spooled(tmp_path)) == 1


def test_mail_of_a_failed_request_is_shown_aborted(app, tmp_path):
    response = app.get("/raise", params={"subject": "Never sent"}, status=500)
    panel = mail_panel(app, response)
    assert "Never sent" in panel
    assert "<strong>aborted</strong>" in panel and "committed" not in panel.split("<small>")[0]
    assert spooled(tmp_path) == []


def test_explicit_abort_is_shown_aborted(app, tmp_path):
    panel = mail_panel(app, app.get("/abort", params={"subject": "Dropped"}))
    assert "Dropped" in panel and "<strong>aborted</strong>" in panel
    assert spooled(tmp_path) == []


def test_savepoint_rollback_is_told_apart(app, tmp_path):
    panel = mail_panel(app, app.get("/savepoint"))
    rows = panel.split("<tr>")
    kept = next(r for r in rows if ">kept<" in r)
    dropped = next(r for r in rows if ">rolled back<" in r)
    assert "<strong>committed</strong>" in kept
    assert "<strong>rolled back</strong>" in dropped
    assert len(spooled(tmp_path)) == 1


def test_hostile_subject_is_escaped(app):
    panel = mail_panel(app, app.get("/send", params={"subject": "<script>alert(1)</script>"}))
    assert "<script>alert(1)</script>" not in panel
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in panel


def test_a_request_without_mail_says_so(app):
    panel = mail_panel(app, app.get("/send", params={"count": "0"}))
    assert "This request sent no mail." in panel


def test_nothing_is_recorded_for_requests_the_toolbar_does_not_watch(app, tmp_path):
    response = app.get("/send", extra_environ={"REMOTE_ADDR": "192.0.2.7"})
    assert ENVIRON_KEY not in response.request.environ
    assert "_debug_toolbar" not in response.text
    assert len(spooled(tmp_path)) == 1


def test_including_the_panel_in_the_app_itself_is_a_clear_error():
    config = Configurator(settings={})
    with pytest.raises(ConfigurationError, match="debugtoolbar.includes"):
        config.include("pyramid_txmail.toolbar")


def test_a_commit_that_fails_is_shown_aborted(tmp_path):
    import shutil

    # The toolbar shows a request that raised out of pyramid_tm only when it
    # intercepts the exception (its own page cannot render such a request otherwise).
    app = make_app(tmp_path, **{"debugtoolbar.intercept_exc": "display"})
    shutil.rmtree(tmp_path / "spool" / "tmp")  # the vote cannot write the message
    response = app.get("/send", params={"subject": "Lost at vote"}, status=500)
    assert "cannot write the mail spool" in response.text
    panel = mail_panel(app, response)
    assert "Lost at vote" in panel and "<strong>aborted</strong>" in panel


def test_the_panel_links_to_the_preview_page(tmp_path):
    app = make_app(tmp_path, **{"mail.delivery": "queue", "pyramid.reload_templates": "true"},
                   includes=["pyramid_txmail.preview"])
    panel = mail_panel(app, app.get("/send", params={"subject": "Look"}))
    assert 'href="http://localhost/_mail/"' in panel
    without = make_app(tmp_path / "other")
    assert "/_mail/" not in mail_panel(without, without.get("/send"))
