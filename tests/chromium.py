"""Debian's chromium, headless, driven by selenium through Debian's chromedriver.

``make test`` installs both with apt.  Missing, they fail the test loudly:
a browser test is never skipped.
"""
from __future__ import annotations

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service


def system_binary(*names):
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}")
                                       else None)
        if found:
            return found
    return None


def start_chromium(artifacts, window="1100,900", page_timeout=30):
    """A headless chromium; its driver's log goes to ``artifacts``."""
    chromium = system_binary("chromium", "chromium-browser")
    chromedriver = system_binary("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("Debian's chromium and chromedriver are needed for the browser tests: "
                    "`make test` installs them (apt-get install chromium chromium-driver).")
    os.makedirs(artifacts, exist_ok=True)
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={window}", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # chromium refuses to run as root otherwise
    # An explicit driver path: selenium uses it and never downloads anything.
    service = Service(executable_path=chromedriver,
                      log_output=os.path.join(artifacts, "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(page_timeout)
    return driver
