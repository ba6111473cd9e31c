"""The preview page's sandbox in a real browser (Debian's chromium through selenium).

A hostile HTML mail tries everything a mail should not do in a preview: run
scripts, post a form, refresh the frame to elsewhere, load a tracking pixel, a
stylesheet, an @import, a background image, a frame.  Every such URL points at
a small HTTP server that counts hits.  Chromium shows the message page; the
inline ``cid:`` image must load (the app served that part) and the tracker
must never be hit.  ``make test`` installs chromium and chromedriver; without
them this test fails, it is never skipped.  Screenshots go to
``test-artifacts/preview/``.
"""
from __future__ import annotations

import http.server
import os
import struct
import threading
import time
import zlib
from email.message import EmailMessage

import pytest
from pyramid.config import Configurator
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from webtest.http import StopableWSGIServer

from .chromium import start_chromium
from .test_preview import write_eml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(ROOT, "test-artifacts", "preview")
WAIT = 20


def png(width, height, rgb):
    """A solid-colour PNG, so the test needs no image library."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


class Tracker:
    """An HTTP server on 127.0.0.1 that records every request it gets."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(b"<h1>TRACKED</h1>")

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def hostile_message(tracker):
    t = tracker.url
    msg = EmailMessage()
    msg["From"] = "Mallory <mallory@example.com>"
    msg["To"] = "alice@example.com"
    msg["Subject"] = "Hostile HTML"
    msg.set_content("text part")
    msg.add_alternative(f"""<html><head>
<meta http-equiv="refresh" content="0; url={t}/refresh">
<link rel="stylesheet" href="{t}/link.css">
<style>@import url("{t}/import.css"); body {{ background: url("{t}/bg.png") }}</style>
</head><body>
<h1 id="title">HTML PART</h1>
<img id="logo" src="cid:logo@example.com" width="80" height="40">
<img src="{t}/pixel.png">
<iframe src="{t}/frame"></iframe>
<form id="f" method="post" action="{t}/form"><input name="q" value="1"></form>
<script>document.getElementById("title").textContent = "SCRIPT RAN";
  fetch("{t}/fetch"); document.getElementById("f").submit();</script>
<img src="x" onerror="document.getElementById('title').textContent='HANDLER RAN'">
</body></html>""", subtype="html")
    msg.get_payload()[1].add_related(png(80, 40, (200, 0, 0)), "image", "png",
                                     cid="<logo@example.com>")
    return msg


@pytest.fixture
def browser():
    driver = start_chromium(ARTIFACTS, "1100,1200", WAIT)
    yield driver
    driver.quit()


@pytest.fixture
def tracker():
    tracker = Tracker()
    yield tracker
    tracker.stop()


def test_hostile_html_mail_is_inert_in_chromium(tmp_path, tracker, browser):
    inbox = tmp_path / "inbox"
    write_eml(inbox, "hostile.eml", hostile_message(tracker))
    config = Configurator(settings={"mail.preview_dirs": str(inbox),
                                    "pyramid.reload_templates": "true"})
    config.include("pyramid_txmail")
    config.include("pyramid_txmail.preview")
    served = []
    app = config.make_wsgi_app()

    def logged(environ, start_response):
        served.append(environ["PATH_INFO"])
        return app(environ, start_response)

    server = StopableWSGIServer.create(logged, host="127.0.0.1")
    try:
        browser.get(server.application_url + "_mail/d0/hostile.eml")
        frame = browser.find_element(By.TAG_NAME, "iframe")
        assert frame.get_attribute("sandbox") == ""
        browser.switch_to.frame(frame)
        logo = WebDriverWait(browser, WAIT).until(
            lambda d: d.find_element(By.ID, "logo"), "the HTML part")
        WebDriverWait(browser, WAIT).until(
            lambda d: "/_mail/d0/hostile.eml/part/2" in served, "the cid: image request")
        time.sleep(1)  # give a refresh, a submit or a late load the time to happen
        title = browser.find_element(By.ID, "title").text
        size = logo.size
        browser.switch_to.default_content()
        browser.save_screenshot(os.path.join(ARTIFACTS, "hostile-html.png"))
    finally:
        server.shutdown()
    assert title == "HTML PART"  # neither the script nor the onerror handler ran
    assert size == {"width": 80, "height": 40}
    assert tracker.hits == [], f"the sandbox let these through: {tracker.hits}"
