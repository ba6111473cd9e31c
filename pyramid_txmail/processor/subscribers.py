"""The app's subscribers to the processor's events, when ``txmail-qp`` will not run them.

With ``mail.qp_events = none`` txmail-qp does not load the application (a start in
a fraction of the time: no framework, no app imports), so MailSent, MailDeferred
and MailFailed reach no subscriber.  txmail-qp cannot know what the app
subscribes to without loading it; the app can: once its configuration is
committed, it says which of its subscribers will not hear from txmail-qp.  Events
are then never lost silently -- the warning is in the app's log and its tests.
"""
from __future__ import annotations

from pyramid.interfaces import PHASE3_CONFIG
from zope.interface import Interface, implementedBy

from ..events import MailDeferred, MailFailed, MailSent
from ..util.printable import get_logger

log = get_logger("pyramid_txmail.processor")

#: The events txmail-qp notifies (MailQueued is the app's own, after its commit).
PROCESSOR_EVENTS = (MailSent, MailDeferred, MailFailed)

#: Subscribers to every event: they hear the app's own events (MailQueued, and
#: anything else), so their being registered says nothing about txmail-qp's.
EVERY_EVENT = (Interface, implementedBy(object))


def warn_unheard_events(config, prefix="mail."):
    """After every subscriber of this configuration is registered (an action ordered
    after the default phase), warn about each one txmail-qp will not run."""
    config.action(None, _warn, args=(config.registry, prefix), order=PHASE3_CONFIG + 1)


def _warn(registry, prefix):
    for iface, handler in unheard_subscribers(registry):
        log.warning("%sqp_events = none: txmail-qp does not load the application, so %s, "
                    "subscribed to %s, never runs for the mail txmail-qp delivers; set "
                    "%sqp_events = app (the default) to have txmail-qp load the application",
                    prefix, _name(handler), _spec_name(iface), prefix)


def unheard_subscribers(registry):
    """``[(what it subscribes to, handler)]`` for every subscriber that an event
    txmail-qp notifies would reach.

    The rule is the dispatcher's (``events.subscribed``: does the event's provided
    spec extend what the subscriber requires?), so a subscriber to a base -- the
    ``IMailEvent`` interface, the ``MailEvent`` class -- counts as much as one to
    ``IMailSent``.  Subscribers to every event (``Interface``, ``object``) are not
    counted, and neither are multi-event subscribers (txmail-qp notifies one event
    at a time, so they never run for it).
    """
    found = []
    for registration in registry.registeredHandlers():
        if len(registration.required or ()) != 1:
            continue
        required = registration.required[0]
        if required in EVERY_EVENT:
            continue
        if any(implementedBy(event).isOrExtends(required) for event in PROCESSOR_EVENTS):
            found.append((required, registration.handler))
    return found


def _name(handler):
    module = getattr(handler, "__module__", None)
    name = getattr(handler, "__qualname__", None) or repr(handler)
    return f"{module}.{name}" if module else name


def _spec_name(spec):
    """``IMailEvent`` for an interface, ``MailEvent`` for a class's spec (whose
    ``__name__`` is the dotted path)."""
    return getattr(spec, "__name__", repr(spec)).rpartition(".")[2]
