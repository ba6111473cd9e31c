"""render_mail: real jinja2 templates through pyramid_jinja2, route URLs from the request."""
from __future__ import annotations

import pytest
import webtest
from pyramid import testing
from pyramid.config import Configurator
from pyramid.response import Response

from pyramid_txmail.builder import Mail
from pyramid_txmail.compose.templates import MissingTemplate, render_mail
from pyramid_txmail.testing import capture


def signup(request):
    mail = render_mail(request, "tests:templates/welcome",
                       {"name": request.params["name"], "token": "t0k3n"},
                       to=request.params["email"])
    mail.attach(b"%PDF-1.4 terms", filename="terms.pdf")
    return Response(request.mailer.send(mail))


@pytest.fixture
def app():
    config = Configurator(settings={"mail.delivery": "memory",
                                    "mail.default_sender": "Site <noreply@example.org>"})
    config.include("pyramid_jinja2")
    config.include("pyramid_txmail")
    config.add_route("confirm", "/confirm/{token}")
    config.add_route("signup", "/signup")
    config.add_view(signup, route_name="signup")
    return webtest.TestApp(config.make_wsgi_app())


def test_text_html_and_subject_rendered_with_route_urls(app):
    with capture() as outbox:
        response = app.post("/signup", {"name": "Zoë & Co", "email": "zoe@example.com"})
    [sent] = outbox.assert_sent(to="zoe@example.com", count=1)
    assert sent.message_id == response.text
    assert sent.subject == "Welcome, Zoë & Co!"
    # the text template turns autoescape off; the HTML one escapes
    assert "Hello Zoë & Co," in sent.text
    assert "confirm your address: http://localhost/confirm/t0k3n" in sent.text
    assert "<p>Hello Zoë &amp; Co,</p>" in sent.html
    assert 'href="http://localhost/confirm/t0k3n"' in sent.html
    assert [(a.filename, a.data) for a in sent.attachments] == [("terms.pdf",
                                                                 b"%PDF-1.4 terms")]


@pytest.fixture
def request_():
    config = testing.setUp(settings={})
    config.include("pyramid_jinja2")
    config.add_route("confirm", "/confirm/{token}")
    yield testing.DummyRequest()
    testing.tearDown()


def test_relative_name_is_taken_from_the_calling_package(request_):
    mail = render_mail(request_, "templates/welcome", {"name": "Bo", "token": "x"},
                       to="bo@example.com", subject="Given subject")
    assert isinstance(mail, Mail)
    assert mail.subject == "Given subject"  # an explicit subject wins over the template
    assert "http://example.com/confirm/x" in mail.text
    assert "http://example.com/confirm/x" in mail.html


def test_either_body_template_may_be_missing(request_):
    html_only = render_mail(request_, "tests:templates/html_only", {"name": "A"},
                            to="a@example.com")
    assert (html_only.text, html_only.html) == (None, "<p>Only HTML for A</p>")
    text_only = render_mail(request_, "tests:templates/text_only", {"name": "B"},
                            to="b@example.com")
    assert (text_only.text, text_only.html) == ("Only text for B", None)
    assert text_only.subject is None


def test_no_body_template_is_an_error_naming_it(request_):
    with pytest.raises(MissingTemplate, match=r"'tests:templates/nothing'.*"
                       r"tests:templates/nothing\.txt\.jinja2.*nothing\.html\.jinja2"):
        render_mail(request_, "tests:templates/nothing", {}, to="a@example.com")


def test_other_suffixes_select_other_renderers(request_, tmp_path):
    (tmp_path / "note.txt.jinja2").write_text("plain {{ n }}")
    mail = render_mail(request_, str(tmp_path / "note"), {"n": 1}, to="a@example.com",
                       html_suffix=None)
    assert (mail.text, mail.html) == ("plain 1", None)
    with pytest.raises(MissingTemplate, match="note.txt.mako"):
        render_mail(request_, str(tmp_path / "note"), {}, to="a@example.com",
                    text_suffix=".txt.mako", html_suffix=".html.mako")


def test_no_subject_template_and_no_subject_is_a_warning_naming_the_template(request_, caplog):
    """A mail with no Subject is valid but rarely meant: say which template was missing."""
    with caplog.at_level("WARNING", logger="pyramid_txmail.templates"):
        mail = render_mail(request_, "tests:templates/text_only", {"name": "B"},
                           to="b@example.com")
    assert mail.subject is None
    assert [r.getMessage() for r in caplog.records] == [
        "mail template 'tests:templates/text_only': no subject= and no "
        "tests:templates/text_only.subject.jinja2, so the mail has no Subject"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="pyramid_txmail.templates"):
        render_mail(request_, "tests:templates/text_only", {"name": "B"},
                    to="b@example.com", subject="Given")
    assert caplog.records == []


@pytest.mark.parametrize("name", ["sys:welcome", "os.path:welcome"])
def test_a_module_without_files_has_no_templates(request_, name):
    """A built-in or frozen module (no files to look in) is a MissingTemplate naming
    the template, not pkg_resources' NotImplementedError."""
    with pytest.raises(MissingTemplate, match=name):
        render_mail(request_, name, {}, to="a@example.com")
