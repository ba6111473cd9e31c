"""pyramid_txmail: transactional email for Pyramid.

``config.include('pyramid_txmail')`` and then, in a view::

    request.mailer.send(message)   # returns the Message-ID

The mail goes out only if the request's transaction commits.

The public names below are imported at their first use (PEP 562): ``txmail-qp``
imports this package on its way to :mod:`pyramid_txmail.scripts.qp`, and a cron
pass over an empty spool must not pay for the mailer, the composer and Pyramid's
request machinery it never uses (issue 14: the start-up was most of a small pass).
"""
from __future__ import annotations

import importlib

#: The release (PEP 440).  The one place it is written: pyproject.toml reads it from here
#: (setuptools' ``attr:``, parsed without importing), so ``importlib.metadata.version``
#: agrees.  A literal, not a metadata lookup: a cron pass imports this package and must
#: not pay for ``importlib.metadata`` (tests/test_qp_startup.py).
__version__ = "0.1.0.dev0"

__all__ = [
    "Delivery", "Mailer", "NoTransaction", "TransactionEnded", "NoQueue", "DeliveryFailed",
    "MailSettings", "get_mailer", "includeme",
    "MailQueued", "MailSent", "MailDeferred", "MailFailed",
    "IMailQueued", "IMailSent", "IMailDeferred", "IMailFailed", "IMailDelivery",
    "MessageError", "NoRecipients", "NoSender", "InvalidAddress", "HeaderInjection",
    "Mail", "render_mail", "mailer_factory_from_settings",
    "QueueSessionError", "NoSession", "SessionNotJoined",
]


#: Each public name and the module it lives in, imported when first asked for.
_LAZY = {
    **dict.fromkeys(("Delivery", "Mailer", "NoQueue", "NoTransaction", "TransactionEnded",
                     "make_delivery", "make_outboxes", "transport_factory"),
                    ".mailer.delivery"),
    "DeliveryFailed": ".mailer.immediate",
    **dict.fromkeys(("mailer_factory_from_settings", "register_mailer", "registered_mailer",
                     "take_pyramid_mailer_include", "warn_implied_queue"),
                    ".mailer.mailer_compat"),
    **dict.fromkeys(("NoSession", "QueueSessionError", "SessionNotJoined"),
                    ".mailer.sqloutbox"),
    "Mail": ".compose.builder",
    **dict.fromkeys(("HeaderInjection", "InvalidAddress", "MessageError", "NoRecipients",
                     "NoSender"), ".compose.message"),
    "render_mail": ".compose.templates",
    **dict.fromkeys(("MailDeferred", "MailFailed", "MailQueued", "MailSent"), ".events"),
    **dict.fromkeys(("IMailDeferred", "IMailDelivery", "IMailFailed", "IMailOutbox",
                     "IMailQueued", "IMailSent", "IMailSettings"), ".interfaces"),
    "SpoolError": ".queue.maildir.spool",
    **dict.fromkeys(("MailSettings", "parse_settings", "settings_prefix"), ".settings"),
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # asked once
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def get_mailer(registry, transaction_manager=None, *, session=None):
    """The mailer for scripts and workers, bound to ``transaction_manager``
    (default: the thread-local ``transaction.manager``).

    With the SQL outbox (``mail.queue_url``), ``session`` is the SQLAlchemy
    session, joined to ``transaction_manager`` by zope.sqlalchemy, that each
    send writes its row through (in a request, ``mail.queue_session`` finds it).

    Given a request instead of a registry (pyramid_mailer's
    ``get_mailer(request)``), it returns ``request.mailer`` -- or, as
    pyramid_mailer's does, a mailer a test registered under ``IMailer``
    (``registry.registerUtility(DummyMailer(), IMailer)``), bound to ``request.tm``.
    """
    from pyramid.interfaces import IRequest

    from .interfaces import IMailDelivery
    from .util.config_error import configuration_error

    if IRequest.providedBy(registry) and transaction_manager is None:
        return _mailer_for_request(registry)
    delivery = registry.queryUtility(IMailDelivery)
    if delivery is None:
        raise configuration_error("pyramid_txmail is not configured in this registry: "
                                  "call config.include('pyramid_txmail')")
    return delivery.bind(transaction_manager, session=session)


def _mailer_for_request(request):
    from .mailer.mailer_compat import registered_mailer

    tm = getattr(request, "tm", None)
    registered = registered_mailer(request.registry)
    if registered is not None:
        return registered.bind(transaction_manager=tm) if tm is not None else registered
    if "mailer" in dir(request):  # request.mailer, added by our includeme
        return request.mailer
    # A pyramid.testing.DummyRequest made without the request extensions.
    return get_mailer(request.registry).bind(transaction_manager=tm) if tm is not None \
        else get_mailer(request.registry)


def _request_mailer(request):
    from .interfaces import IMailDelivery

    delivery = request.registry.getUtility(IMailDelivery)
    return delivery.bind(request.tm, request)


def includeme(config):
    """Include pyramid_tm, parse ``mail.*`` once, register the delivery and ``request.mailer``."""
    from .compose.redirect import announce as announce_redirect
    from .interfaces import IMailDelivery, IMailOutbox, IMailSettings
    from .mailer.delivery import make_delivery
    from .mailer.mailer_compat import (register_mailer, take_pyramid_mailer_include,
                                       warn_implied_queue)
    from .settings import parse_settings, settings_prefix

    config.include("pyramid_tm")
    take_pyramid_mailer_include(config)  # a plugin's include of pyramid_mailer defers to us
    raw = config.get_settings()
    settings = parse_settings(raw)
    warn_implied_queue(raw, settings_prefix(raw), settings)
    delivery = make_delivery(settings, config.registry)
    config.registry.registerUtility(settings, IMailSettings)
    config.registry.registerUtility(delivery, IMailDelivery)
    register_mailer(config.registry, delivery.bind())  # pyramid_mailer's IMailer
    if IMailOutbox.providedBy(delivery.outbox):  # mail.delivery = memory
        config.registry.registerUtility(delivery.outbox, IMailOutbox)
    announce_redirect(settings.redirect_to)
    config.add_request_method(_request_mailer, "mailer", reify=True)
    if settings.processor == "thread":  # the queue delivered by a thread of each web process
        from .processor.inapp import includeme_processor

        includeme_processor(config, settings)
    elif settings.qp_events == "none" and (settings.queue_path or settings.queue_url):
        from .processor.subscribers import warn_unheard_events

        warn_unheard_events(config, settings_prefix(raw))
