"""Test your application's mail: an outbox that honours the transaction.

With ``mail.delivery = memory`` a message reaches the outbox only when its
transaction commits -- through the same data manager as the queue -- so a
test cannot pass for mail that would never be sent (pyramid_mailer's
``DummyMailer`` records at ``send`` time, whatever the transaction does).

Unit test::

    config = pyramid.testing.setUp()
    outbox = pyramid_txmail.testing.setUp(config)      # includes pyramid_txmail, memory delivery
    request = pyramid_txmail.testing.dummy_request(params={...})   # has request.mailer
    with transaction.manager:
        my_view(request)
    outbox.assert_sent(to="bob@example.com", subject="Welcome")

Functional test (any app built with ``mail.delivery = memory``, in any
thread of this process)::

    with pyramid_txmail.testing.capture() as outbox:
        testapp.post("/signup", {"email": "bob@example.com"})
    outbox.assert_sent(to="bob@example.com", text_contains="Thanks")

The pytest plugin's ``mail_outbox`` fixture is that ``capture()``.  The
assertion helpers fail with a message listing what *was* sent.
"""
from __future__ import annotations

from ..mailer.sent import Attachment, Outbox, SentMail, capture  # noqa: F401 (public here)

__all__ = ["SentMail", "Attachment", "Outbox", "capture", "setUp", "dummy_request",
           "MEMORY_SETTINGS", "DummyMailer", "includeme"]

#: Settings that make an app keep its committed mail in memory.
MEMORY_SETTINGS = {"mail.delivery": "memory"}


def setUp(config, settings=None):
    """Include pyramid_txmail into ``config`` with memory delivery; return its outbox.

    ``settings`` is a dict of further ``mail.*`` settings
    (``{"mail.default_sender": ...}``); ``mail.delivery`` is set to ``memory``
    whatever the config said.  The outbox is the app's ``IMailOutbox``
    utility, an :class:`Outbox`.
    """
    from ..interfaces import IMailOutbox

    config.add_settings(dict(settings or {}, **MEMORY_SETTINGS))
    config.include("pyramid_txmail")
    return config.registry.getUtility(IMailOutbox)


def DummyMailer(default_sender=None):  # noqa: N802 (pyramid_mailer's class name)
    """pyramid_mailer's ``DummyMailer()``: a mailer of its own with ``.outbox`` and
    ``.queue``, for ``registry.registerUtility(DummyMailer(), IMailer)`` (which
    :func:`pyramid_txmail.get_mailer` then returns, as pyramid_mailer's does).

    In a transaction a message reaches ``.outbox`` only when it commits (an
    abort drops it); with no transaction to join it is recorded at once, as
    pyramid_mailer's is, with a WARNING (see :mod:`pyramid_txmail.mailer.dummy`).  A
    message without a sender gets ``default_sender``, else ``nobody@example.com``:
    the test's mailer cannot know the app's ``mail.default_sender``.
    """
    from ..mailer.dummy import dummy_mailer

    return dummy_mailer(default_sender)


def includeme(config):
    """``config.include('pyramid_txmail.testing')``: pyramid_txmail with memory
    delivery (pyramid_mailer.testing's counterpart).

    ``get_mailer(request)`` / ``request.mailer`` then have ``.outbox`` (what
    committed) and ``.queue`` (what ``send_to_queue`` committed), as
    pyramid_mailer's ``DummyMailer`` has; the outbox is also the app's
    ``IMailOutbox`` utility.  Other ``mail.*`` settings still apply
    (``mail.default_sender``, ``mail.redirect_to``).
    """
    from ..settings import settings_prefix

    prefix = settings_prefix(config.get_settings())
    config.add_settings({prefix + "delivery": "memory"})
    config.include("pyramid_txmail")


def dummy_request(*args, **kwargs):
    """A ``pyramid.testing.DummyRequest`` with the registry's request methods
    (``request.mailer``, ``request.tm``) applied; arguments as DummyRequest's."""
    from pyramid import testing as pyramid_testing
    from pyramid.request import apply_request_extensions

    request = pyramid_testing.DummyRequest(*args, **kwargs)
    apply_request_extensions(request)
    return request
