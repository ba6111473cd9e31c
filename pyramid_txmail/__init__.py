"""pyramid_txmail: transactional email for Pyramid.

``config.include('pyramid_txmail')`` and then, in a view::

    request.mailer.send(message)   # returns the Message-ID

The mail goes out only if the request's transaction commits.
"""
from __future__ import annotations

from pyramid.exceptions import ConfigurationError
from pyramid.interfaces import IRequest

from .compose.builder import Mail
from .compose.message import (HeaderInjection, InvalidAddress, MessageError, NoRecipients,
                              NoSender)
from .compose.redirect import announce as announce_redirect
from .compose.templates import render_mail
from .events import MailDeferred, MailFailed, MailQueued, MailSent
from .interfaces import (IMailDeferred, IMailDelivery, IMailFailed, IMailOutbox,
                         IMailQueued, IMailSent, IMailSettings)
from .mailer.delivery import (Delivery, Mailer, NoQueue, NoTransaction,  # noqa: F401
                              TransactionEnded, make_delivery, make_outboxes,
                              transport_factory)
from .mailer.immediate import DeliveryFailed
from .mailer.mailer_compat import (mailer_factory_from_settings, register_mailer,
                                   registered_mailer, take_pyramid_mailer_include,
                                   warn_implied_queue)
from .queue.maildir.spool import SpoolError  # noqa: F401 (public here)
from .settings import MailSettings, parse_settings, settings_prefix
from .mailer.sqloutbox import NoSession, QueueSessionError, SessionNotJoined

__all__ = [
    "Delivery", "Mailer", "NoTransaction", "TransactionEnded", "NoQueue", "DeliveryFailed",
    "MailSettings", "get_mailer", "includeme",
    "MailQueued", "MailSent", "MailDeferred", "MailFailed",
    "IMailQueued", "IMailSent", "IMailDeferred", "IMailFailed", "IMailDelivery",
    "MessageError", "NoRecipients", "NoSender", "InvalidAddress", "HeaderInjection",
    "Mail", "render_mail", "mailer_factory_from_settings",
    "QueueSessionError", "NoSession", "SessionNotJoined",
]


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
    if IRequest.providedBy(registry) and transaction_manager is None:
        return _mailer_for_request(registry)
    delivery = registry.queryUtility(IMailDelivery)
    if delivery is None:
        raise ConfigurationError("pyramid_txmail is not configured in this registry: "
                                 "call config.include('pyramid_txmail')")
    return delivery.bind(transaction_manager, session=session)


def _mailer_for_request(request):
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
    delivery = request.registry.getUtility(IMailDelivery)
    return delivery.bind(request.tm, request)


def includeme(config):
    """Include pyramid_tm, parse ``mail.*`` once, register the delivery and ``request.mailer``."""
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
