"""The mail preview page: lists and shows messages, escapes everything, sandboxes HTML mail,
serves only what its sources list, and refuses to be enabled outside development."""
from __future__ import annotations

import logging
import os
import re
import smtplib
from email.message import EmailMessage

import pytest
import transaction
import webtest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_txmail import get_mailer

from .smtpserver import free_port

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18"
       b"\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")
HOSTILE = "<script>alert(1)</script>"


def rich_message(subject="Welcome aboard", sender="Site <site@example.com>",
                 attachment_name="report.pdf"):
    """Text + HTML with an inline cid: image + an attachment."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "Alice <alice@example.com>"
    msg["Subject"] = subject
    msg.set_content("Hello Alice,\nthis is the text part.\n")
    msg.add_alternative(
        '<html><head><meta http-equiv="refresh" content="0; url=https://tracker.example/">'
        '</head><body><p>Hello <b>Alice</b></p><img src="cid:logo@example.com" alt="logo">'
        '<img src="cid:missing@example.com"><script>parent.document.title="pwned"</script>'
        '<form action="https://evil.example/"><input name="q"></form></body></html>',
        subtype="html")
    msg.get_payload()[1].add_related(PNG, "image", "png", cid="<logo@example.com>",
                                     filename="logo.png")
    msg.add_attachment(b"%PDF-1.4 pretend", maintype="application", subtype="pdf",
                       filename=attachment_name)
    return msg


def write_eml(directory, name, message, fromaddr="site@example.com",
              toaddrs=("alice@example.com",)):
    """A file in the format of file delivery and of the demo's inbox."""
    directory.mkdir(parents=True, exist_ok=True)
    data = message if isinstance(message, bytes) else message.as_bytes()
    path = directory / name
    path.write_bytes(b"X-Envelope-From: " + fromaddr.encode() + b"\r\nX-Envelope-To: "
                     + ", ".join(toaddrs).encode() + b"\r\n" + data)
    return path


def make_app(settings, memory=()):
    """The preview over ``settings``; the ``memory`` messages are sent and committed
    through the real mailer with ``mail.delivery = memory``."""
    settings = dict(settings)
    if memory:
        settings.setdefault("mail.delivery", "memory")
    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    config.include("pyramid_txmail.preview")
    app = webtest.TestApp(config.make_wsgi_app())
    manager = transaction.TransactionManager(explicit=True)
    for message in memory:
        with manager:
            get_mailer(config.registry, manager).send(message)
    return app


@pytest.fixture
def inbox(tmp_path):
    directory = tmp_path / "inbox"
    write_eml(directory, "20261125T080000.000001Z-1-0.eml", rich_message())
    return directory


@pytest.fixture
def app(inbox):
    return make_app({"mail.preview_dirs": str(inbox)}, memory=[rich_message("From memory")])


def message_url(app, subject):
    page = app.get("/_mail/")
    match = re.search(r'<a href="([^"]+)">' + re.escape(subject) + "</a>", page.text)
    assert match, f"{subject!r} is not listed: {page.text}"
    return match.group(1).replace("&amp;", "&").replace("http://localhost", "")


# -- listing and showing ------------------------------------------------------

def test_list_shows_directory_and_memory_messages(app, inbox):
    page = app.get("/_mail/")
    assert page.headers["Content-Type"].startswith("text/html")
    assert "Welcome aboard" in page.text and "From memory" in page.text
    assert "Site &lt;site@example.com&gt;" in page.text
    assert "Alice &lt;alice@example.com&gt;" in page.text
    assert str(inbox) in page.text and "memory outbox" in page.text
    assert re.search(r"\d+\.\d KiB", page.text)  # the size column
    # One date format whether it comes from the Date header (memory) or the file (no Date).
    assert len(re.findall(r"<tr><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>", page.text)) == 2
    assert app.get("/_mail").status_int == 302  # the bare prefix redirects


def test_message_page_shows_headers_text_html_parts_and_source(app):
    page = app.get(message_url(app, "Welcome aboard"))
    text = page.text
    assert "<th>Subject</th><td>Welcome aboard</td>" in text
    assert "<th>Envelope from</th><td>site@example.com</td>" in text
    assert "<pre>Hello Alice,\nthis is the text part.\n</pre>" in text
    frame = re.search(r'<iframe sandbox="" [^>]*src="([^"]+)"', text)
    assert frame and frame.group(1).endswith("/html")
    assert ">logo.png</a>" in text and ">report.pdf</a>" in text
    assert "<td>logo@example.com</td>" in text  # the Content-ID column
    assert "&lt;b&gt;Alice&lt;/b&gt;" in text  # the raw source, escaped
    assert "<script>" not in text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_memory_message_is_shown_with_its_envelope(app):
    page = app.get(message_url(app, "From memory"))
    assert "/_mail/memory/0" in page.request.url
    assert "<th>Envelope to</th><td>alice@example.com</td>" in page.text
    assert "this is the text part" in page.text


def test_raw_download_is_the_stored_file(app, inbox):
    url = message_url(app, "Welcome aboard")
    raw = app.get(url + "/raw")
    stored = next(inbox.iterdir()).read_bytes()
    assert raw.body == stored
    assert raw.headers["Content-Type"].startswith("message/rfc822")
    assert raw.headers["Content-Disposition"].startswith("attachment;")
    memory = app.get("/_mail/memory/0/raw")
    assert b"Subject: From memory" in memory.body
    assert 'filename="message-0.eml"' in memory.headers["Content-Disposition"]


# -- HTML mail: sandboxed, cid: rewritten -------------------------------------

def test_html_part_is_served_sandboxed(app):
    url = message_url(app, "Welcome aboard")
    part = app.get(url + "/html")
    csp = [d.strip() for d in part.headers["Content-Security-Policy"].split(";")]
    assert csp[0] == "sandbox"  # no allow-scripts, no allow-forms, no allow-same-origin
    assert "default-src 'none'" in csp
    assert "style-src 'unsafe-inline'" in csp
    assert "form-action 'none'" in csp
    img = next(d for d in csp if d.startswith("img-src"))
    assert img.split()[1:] == ["data:", "http://localhost" + url + "/part/"]
    assert not any(d.startswith("script-src") for d in csp)
    assert part.headers["X-Content-Type-Options"] == "nosniff"
    # A refresh would navigate the frame to the tracker: defused.
    assert not re.search(r"[\s<]http-equiv=", part.text, re.IGNORECASE)


def test_cid_references_point_to_the_message_parts(app):
    url = message_url(app, "Welcome aboard")
    part = app.get(url + "/html")
    src = re.search(r'<img src="([^"]+)" alt="logo">', part.text).group(1)
    assert src.startswith("http://localhost" + url + "/part/")
    image = app.get(src)
    assert image.body == PNG
    assert image.headers["Content-Type"] == "image/png"
    assert 'src="about:invalid"' in part.text  # a cid: the message does not have
    assert "cid:" not in part.text


# -- attachments ----------------------------------------------------------------

def test_attachment_download(app):
    page = app.get(message_url(app, "Welcome aboard"))
    link = re.search(r'<a href="([^"]+)">report.pdf</a>', page.text).group(1)
    download = app.get(link)
    assert download.body == b"%PDF-1.4 pretend"
    assert download.headers["Content-Type"] == "application/pdf"
    assert download.headers["Content-Disposition"] == (
        "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf")
    assert download.headers["X-Content-Type-Options"] == "nosniff"


def test_an_html_attachment_is_a_download_with_a_safe_name(tmp_path):
    msg = rich_message(subject="Html attachment")
    msg.add_attachment("<script>alert(1)</script>", subtype="html",
                       filename='../../"evil".html')
    write_eml(tmp_path / "in", "a.eml", msg)
    app = make_app({"mail.preview_dirs": str(tmp_path / "in"), "pyramid.reload_all": "1"})
    parts = app.get("/_mail/d0/a.eml").text
    link = re.findall(r'<a href="([^"]+/part/\d+)">[^<]*evil[^<]*</a>', parts)
    assert link
    download = app.get(link[0])
    disposition = download.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="evil_.html"')
    assert "/" not in disposition.split("filename*=")[1].replace("UTF-8''", "")
    assert download.headers["Content-Security-Policy"].startswith("sandbox")


# -- escaping ---------------------------------------------------------------------

def test_hostile_headers_and_file_names_are_escaped(tmp_path):
    hostile = rich_message(subject=HOSTILE, sender='"<img src=x onerror=alert(2)>" '
                           "<evil@example.com>", attachment_name="<b>x</b>.pdf")
    write_eml(tmp_path / "in", "hostile.eml", hostile, fromaddr="<svg onload=alert(3)>")
    # A raw file whose headers never went through our message builder.
    write_eml(tmp_path / "in", "raw.eml", (
        b"From: <script>x</script> <a@example.com>\r\nTo: b@example.com\r\n"
        b"Subject: <iframe src=//evil.example>\r\nX-Evil: </td><script>y</script>\r\n"
        b"\r\n<script>z</script>\r\n"))
    app = make_app({"mail.preview_dirs": str(tmp_path / "in")},
                   memory=[rich_message("From memory"), rich_message(HOSTILE + " memory")])
    pages = [app.get("/_mail/")]
    pages += [app.get(u.replace("&amp;", "&")) for u in
              re.findall(r'<a href="(http://localhost/_mail/[^"]+)">', pages[0].text)]
    assert len(pages) == 5
    for page in pages:
        for raw in ("<script", "<img src=x", "<svg", "<iframe src=//", "<b>x</b>"):
            assert raw not in page.text, (raw, page.request.url)
    listing = pages[0].text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing
    assert "&lt;iframe src=//evil.example&gt;" in listing
    shown = "".join(p.text for p in pages[1:])
    assert "&lt;b&gt;x&lt;/b&gt;.pdf" in shown
    assert "&lt;svg onload=alert(3)&gt;" in shown
    assert "&lt;/td&gt;&lt;script&gt;y&lt;/script&gt;" in shown


# -- only what the sources list ----------------------------------------------------

def test_traversal_and_unlisted_names_are_not_found(app, inbox, tmp_path):
    (tmp_path / "secret.eml").write_bytes(b"Subject: TOPSECRET\r\n\r\nTOPSECRET\r\n")
    os.symlink(tmp_path / "secret.eml", inbox / "link.eml")
    (inbox / ".hidden.eml").write_bytes(b"Subject: HIDDEN\r\n\r\nHIDDEN\r\n")
    name = next(p.name for p in inbox.iterdir() if p.name.startswith("2026"))
    for url in ["/_mail/d0/..%2fsecret.eml", "/_mail/d0/%2e%2e%2fsecret.eml",
                "/_mail/d0/link.eml", "/_mail/d0/.hidden.eml", "/_mail/d0/..",
                "/_mail/d0/secret.eml", "/_mail/d1/" + name, "/_mail/..%2f/" + name,
                "/_mail/memory/1", "/_mail/memory/-1", "/_mail/memory/x",
                "/_mail/memory/99999999999999", f"/_mail/d0/{name}/part/99",
                f"/_mail/d0/{name}/part/-1", f"/_mail/d0/{name}/part/..%2f..",
                "/_mail/d0/..%2fsecret.eml/raw", "/_mail/d0/link.eml/html"]:
        response = app.get(url, status="*")
        assert response.status_int == 404, url
        assert b"TOPSECRET" not in response.body and b"HIDDEN" not in response.body
    listing = app.get("/_mail/").text
    assert "TOPSECRET" not in listing and "HIDDEN" not in listing
    assert app.get("/_mail/d0/" + name).status_int == 200


def test_a_missing_directory_is_listed_as_empty(tmp_path):
    app = make_app({"mail.preview_dirs": str(tmp_path / "not-yet"),
                    "pyramid.reload_templates": "true"})
    page = app.get("/_mail/")
    assert "no messages (yet)" in page.text and "No mail yet." in page.text


def test_no_source_says_how_to_configure_one():
    page = make_app({"pyramid.reload_templates": "true"}).get("/_mail/")
    assert "mail.preview_dirs" in page.text


def test_prefix_is_configurable(inbox):
    app = make_app({"mail.preview_dirs": str(inbox), "mail.preview_prefix": "/dev/mail/",
                    "pyramid.reload_templates": "true"})
    assert "Welcome aboard" in app.get("/dev/mail/").text
    assert app.get("/_mail/", status=404)


def test_bad_prefix_names_the_key():
    with pytest.raises(ConfigurationError, match=r"mail.preview_prefix = '_mail x'"):
        make_app({"mail.preview_prefix": "_mail x", "pyramid.reload_templates": "true"})


# -- development only ---------------------------------------------------------------

def test_refused_outside_development(tmp_path):
    settings = {"mail.queue_path": str(tmp_path / "spool")}
    with pytest.raises(ConfigurationError) as info:
        make_app(settings)
    text = str(info.value)
    assert text.startswith("mail.preview_allow = 'false': ")
    assert "mail.preview_allow = true" in text and "mail.delivery = 'queue'" in text
    with pytest.raises(ConfigurationError, match="mail.preview_allow = 'no'"):
        make_app({**settings, "mail.preview_allow": "no", "pyramid.reload_templates": "false"})


def test_explicit_allow_enables_it_with_a_warning(tmp_path, caplog):
    settings = {"mail.queue_path": str(tmp_path / "spool"), "mail.preview_allow": "true"}
    with caplog.at_level(logging.WARNING, logger="pyramid_txmail.preview"):
        app = make_app(settings)
    assert "outside development" in caplog.text and "mail.preview_allow = true" in caplog.text
    assert app.get("/_mail/").status_int == 200


@pytest.mark.parametrize("settings", [{"pyramid.reload_templates": "true"},
                                      {"pyramid.reload_all": "yes"}])
def test_development_flags_enable_it(settings):
    assert make_app(settings).get("/_mail/").status_int == 200


def test_development_deliveries_count_as_development():
    from pyramid_txmail.preview import development_reason
    from pyramid_txmail.settings import MailSettings

    for delivery in ("memory", "file", "console", "null"):
        assert development_reason({}, MailSettings(delivery=delivery)) == \
            f"mail.delivery = {delivery}"
    assert development_reason({}, MailSettings(delivery="queue")) is None
    assert development_reason({}, MailSettings(delivery="direct")) is None


# -- the demo's local inbox, end to end ------------------------------------------------

def test_mail_received_by_the_demo_inbox_is_shown(tmp_path):
    from demo_app.devsmtp import DevSMTPServer

    port = free_port()
    inbox = tmp_path / "inbox"
    with DevSMTPServer(inbox, port=port):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.send_message(rich_message(subject="Through SMTP"))
    app = make_app({"mail.preview_dirs": str(inbox), "pyramid.reload_templates": "true"})
    page = app.get(message_url(app, "Through SMTP"))
    assert "<th>Envelope from</th><td>site@example.com</td>" in page.text
    assert "this is the text part" in page.text and ">report.pdf</a>" in page.text


# -- any bytes in a file: the pages still answer, and stay escaped --------------------

PIECES = [b"From: ", b"To: ", b"Subject: ", b"Content-Type: ", b"multipart/mixed; boundary=b",
          b"text/html; charset=", b"Content-Disposition: attachment; filename=", b"--b",
          b"Content-Transfer-Encoding: base64", b"quoted-printable", b"=?utf-8?q?=3Cscript?=",
          b"<script>", b"\"", b"'", b"\r\n", b"\n", b"\r\n\r\n", b"cid:x", b"\xff\xfe", b"=",
          b"Content-ID: <x>", b"a@b.example", b"..", b"/"]


def test_arbitrary_files_never_break_or_unescape_the_pages(tmp_path):
    from hypothesis import HealthCheck, given, settings as hsettings
    from hypothesis import strategies as st

    directory = tmp_path / "fuzz"
    directory.mkdir()
    app = make_app({"mail.preview_dirs": str(directory), "pyramid.reload_templates": "true"})

    @hsettings(max_examples=60, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.sampled_from(PIECES) | st.binary(max_size=20), max_size=40))
    def check(pieces):
        for old in directory.iterdir():
            old.unlink()
        (directory / "m.eml").write_bytes(b"".join(pieces))
        listing = app.get("/_mail/")
        page = app.get("/_mail/d0/m.eml")
        for text in (listing.text, page.text):
            assert "<script" not in text.lower()
        app.get("/_mail/d0/m.eml/raw")
        app.get("/_mail/d0/m.eml/html", status=(200, 404))
        for link in re.findall(r'href="(http://localhost/_mail/d0/m\.eml/part/\d+)"', page.text):
            app.get(link)

    check()


# -- with the real development deliveries -----------------------------------------------

def sending_app(settings):
    """An app whose /send view sends rich_message(subject=?subject), with the preview."""
    from pyramid.response import Response

    def send(request):
        request.mailer.send(rich_message(subject=request.params.get("subject", "Sent")))
        if request.params.get("fail"):
            raise RuntimeError("failing after the send")
        return Response("sent")

    config = Configurator(settings={"mail.default_sender": "site@example.com", **settings})
    config.include("pyramid_txmail")
    config.include("pyramid_txmail.preview")  # no reload flag: the delivery makes it development
    config.add_route("send", "/send")
    config.add_view(send, route_name="send")
    return webtest.TestApp(config.make_wsgi_app())


def test_memory_delivery_is_previewed():
    app = sending_app({"mail.delivery": "memory"})
    app.get("/send", params={"subject": "Committed"})
    with pytest.raises(RuntimeError):
        app.get("/send", params={"subject": "Aborted", "fail": "1"})
    listing = app.get("/_mail/").text
    assert "memory outbox" in listing
    assert "Committed" in listing and "Aborted" not in listing
    page = app.get(message_url(app, "Committed"))
    assert "/_mail/memory/0" in page.request.url
    assert "<th>Envelope to</th><td>alice@example.com</td>" in page.text
    assert app.get(page.request.path + "/raw").body.startswith(b"From: Site <site@example.com>")


def test_file_delivery_is_previewed(tmp_path):
    app = sending_app({"mail.delivery": "file", "mail.file_path": str(tmp_path / "mail")})
    app.get("/send", params={"subject": "Filed"})
    [written] = [p for p in (tmp_path / "mail").iterdir() if not p.name.startswith(".")]
    page = app.get(message_url(app, "Filed"))
    assert page.request.path == "/_mail/d0/" + written.name
    assert str(tmp_path / "mail") in page.text
    assert app.get(page.request.path + "/raw").body == written.read_bytes()
    html = app.get(page.request.path + "/html")
    assert html.headers["Content-Security-Policy"].startswith("sandbox;")


def test_the_demo_app_previews_its_inbox(tmp_path):
    """development.ini includes the preview; the demo points it at its inbox."""
    import plaster

    import demo_app

    ini = os.path.join(os.path.dirname(os.path.dirname(__file__)), "demo_app",
                       "development.ini")
    settings = plaster.get_loader(ini, protocols=["wsgi"]).get_settings("app:main")
    assert "pyramid_txmail.preview" in settings["pyramid.includes"].split()
    inbox = tmp_path / "inbox"
    write_eml(inbox, "20261125T080000.000001Z-1-0.eml", rich_message(subject="In the inbox"))
    settings = {**settings, "sqlalchemy.url": f"sqlite:///{tmp_path / 'demo.sqlite'}",
                "mail.queue_url": f"sqlite:///{tmp_path / 'demo.sqlite'}",
                "demo.inbox_path": str(inbox)}
    app = webtest.TestApp(demo_app.main({}, **settings))
    page = app.get(message_url(app, "In the inbox"))
    assert str(inbox) in page.text and "this is the text part" in page.text
