"""pytest fixtures for applications that send mail with pyramid_txmail.

Registered as a ``pytest11`` entry point, so the fixtures exist as soon as
pyramid_txmail is installed:

``mail_settings``
    ``{"mail.delivery": "memory"}`` -- merge it into the settings your app
    fixture builds the app with.

``mail_outbox``
    A :class:`pyramid_txmail.testing.Outbox` collecting every message that
    an app configured with ``mail.delivery = memory`` commits during the
    test -- any such app in the process (built by your own fixtures, even a
    session-scoped one) and any thread (a live server too).  It starts
    empty for each test.  Mail of an aborted transaction never shows up.

Example::

    def test_signup_sends_welcome(testapp, mail_outbox):
        testapp.post("/signup", {"email": "bob@example.com"})
        mail_outbox.assert_sent(to="bob@example.com", subject="Welcome", count=1)
"""
from __future__ import annotations

import pytest

from . import testing


@pytest.fixture
def mail_settings():
    """Settings that make an app keep its committed mail in memory."""
    return dict(testing.MEMORY_SETTINGS)


@pytest.fixture
def mail_outbox():
    """The messages committed by memory deliveries during this test."""
    with testing.capture() as outbox:
        yield outbox
