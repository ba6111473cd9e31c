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

from ..interfaces import IMailDeferred, IMailFailed, IMailSent
from ..util.printable import get_logger

log = get_logger("pyramid_txmail.processor")

#: The events txmail-qp notifies (MailQueued is the app's own, after its commit).
PROCESSOR_EVENTS = (IMailSent, IMailDeferred, IMailFailed)


def warn_unheard_events(config, prefix="mail."):
    """After every subscriber of this configuration is registered (an action ordered
    after the default phase), warn about each one txmail-qp will not run."""
    config.action(None, _warn, args=(config.registry, prefix), order=PHASE3_CONFIG + 1)


def _warn(registry, prefix):
    for iface, handler in unheard_subscribers(registry):
        log.warning("%sqp_events = none: txmail-qp does not load the application, so %s, "
                    "subscribed to %s, never runs for the mail txmail-qp delivers; set "
                    "%sqp_events = app (the default) to have txmail-qp load the application",
                    prefix, _name(handler), iface.__name__, prefix)


def unheard_subscribers(registry):
    """``[(event interface, handler)]`` registered for the processor's events (or
    their classes); subscribers to every event (``Interface``) are not counted."""
    found = []
    for registration in registry.registeredHandlers():
        required = registration.required[0] if registration.required else None
        if required is None:
            continue
        for iface in PROCESSOR_EVENTS:
            if required.isOrExtends(iface):
                found.append((iface, registration.handler))
                break
    return found


def _name(handler):
    module = getattr(handler, "__module__", None)
    name = getattr(handler, "__qualname__", None) or repr(handler)
    return f"{module}.{name}" if module else name
