"""The demo in a real browser: Debian's chromium, driven by selenium through chromedriver.

The whole demo runs as ``make demo`` runs it (``python -m demo_app.run``: the
development SMTP server, pserve, the queue processor).  Chromium fills in the
sign-up form, finds the welcome mail in the inbox page and opens it (its HTML
part with the inline logo too); then a duplicate sign-up shows the "already
registered" page and no second mail ever arrives.

Screenshots of every step go to ``test-artifacts/browser/`` (also one named
``failure`` when the test fails).  ``make test`` installs chromium and
chromium-driver with apt when they are missing; without them this test fails
-- it is never skipped.
"""
from __future__ import annotations

import os
import sqlite3

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from .chromium import start_chromium
from .demo_process import ROOT, start_demo

ARTIFACTS = os.path.join(ROOT, "test-artifacts", "browser")
WAIT = 30  # seconds for a page or a mail to show up


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    demo = start_demo(tmp_path_factory.mktemp("browser") / "var")
    yield demo
    code, output = demo.interrupt()
    assert code == 0, output


@pytest.fixture
def browser():
    os.makedirs(ARTIFACTS, exist_ok=True)
    for name in os.listdir(ARTIFACTS):
        if name.endswith(".png"):
            os.remove(os.path.join(ARTIFACTS, name))
    driver = start_chromium(ARTIFACTS, "1100,900", WAIT)
    yield driver
    driver.quit()


class Steps:
    """Screenshots numbered in the order they were taken."""

    def __init__(self, driver):
        self.driver = driver
        self.count = 0

    def shot(self, name):
        self.count += 1
        path = os.path.join(ARTIFACTS, f"{self.count:02d}-{name}.png")
        self.driver.save_screenshot(path)
        return path


def wait_for(driver, condition, what):
    return WebDriverWait(driver, WAIT).until(condition, f"waited {WAIT} s for {what}")


def sign_up(driver, base, name, addr):
    driver.get(base)
    wait_for(driver, EC.presence_of_element_located((By.ID, "signup")), "the sign-up form")
    for field, value in (("name", name), ("email", addr)):
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    driver.find_element(By.ID, "submit").click()
    wait_for(driver, lambda d: "Sign up ·" not in d.title, "the page after the form")


def wait_for_mail(driver, base, subject):
    """Reload the inbox until a message with ``subject`` is listed; return its link."""
    def listed(d):
        d.get(base + "inbox")
        links = d.find_elements(By.LINK_TEXT, subject)
        return links[0] if links else False
    return WebDriverWait(driver, WAIT, poll_frequency=0.5).until(
        listed, f"waited {WAIT} s for {subject!r} in the inbox")


def queue_is_empty(var):
    """No message of the demo's SQL outbox (in its SQLite file) is waiting or failed."""
    with sqlite3.connect(var / "demo.sqlite") as db:
        return db.execute("SELECT count(*) FROM txmail_outbox "
                          "WHERE state != 'delivered'").fetchone()[0] == 0


def test_sign_up_in_chromium_and_read_the_welcome_mail(demo, browser):
    steps = Steps(browser)
    base = demo.base
    try:
        browser.get(base)
        assert browser.title.startswith("Sign up")
        steps.shot("form")

        sign_up(browser, base, "Grace Hopper", "grace@example.org")
        assert browser.title.startswith("Thanks for signing up"), browser.title
        message_id = browser.find_element(By.ID, "message-id").text
        assert message_id.startswith("<") and message_id.endswith(">")
        steps.shot("thanks")

        link = wait_for_mail(browser, base, "Welcome, Grace Hopper!")
        steps.shot("inbox")
        link.click()
        wait_for(browser, EC.presence_of_element_located((By.ID, "text-body")),
                 "the message page")
        assert "Hello Grace Hopper," in browser.find_element(By.ID, "text-body").text
        assert message_id in browser.find_element(By.ID, "headers").text
        assert "image/png" in browser.find_element(By.ID, "parts").text
        steps.shot("message")

        # The HTML part, in its sandboxed frame, shows the inline logo (cid:).
        browser.switch_to.frame(browser.find_element(By.ID, "html-body"))
        heading = wait_for(browser, EC.presence_of_element_located((By.TAG_NAME, "h1")),
                           "the HTML part")
        assert heading.text == "Welcome, Grace Hopper!"
        logo = browser.find_element(By.TAG_NAME, "img")
        wait_for(browser, lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", logo) == 64,
            "the inline logo to load")
        browser.switch_to.default_content()

        # The same address again: refused at the database flush, after the send.
        sign_up(browser, base, "Grace Again", "GRACE@example.org")
        assert browser.title.startswith("Already registered"), browser.title
        assert "no mail was sent" in browser.find_element(By.TAG_NAME, "main").text
        steps.shot("already-registered")

        # A later committed sign-up arrives; by then the duplicate's mail would have too.
        sign_up(browser, base, "Alan Turing", "alan@example.org")
        assert browser.title.startswith("Thanks for signing up"), browser.title
        wait_for_mail(browser, base, "Welcome, Alan Turing!")
        steps.shot("inbox-after-duplicate")
        subjects = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#messages a")]
        assert subjects.count("Welcome, Grace Hopper!") == 1
        assert "Welcome, Grace Again!" not in subjects
        assert sorted(subjects) == sorted(["Welcome, Alan Turing!", "Welcome, Grace Hopper!",
                                           "Welcome, Newcomer!"])
        assert queue_is_empty(demo.var), "a message is still waiting in the outbox"
        browser.get(base)
        assert "3 people have signed up" in browser.find_element(By.CLASS_NAME, "members").text
    except BaseException:
        steps.shot("failure")
        raise
