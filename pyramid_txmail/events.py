"""Mail events and their dispatch, each in a new transaction of its own.

Subscribers are ordinary Pyramid subscribers::

    @subscriber(IMailSent)
    def sent(event):
        ...

They run after the sending transaction has committed, inside a fresh
transaction of ``event.transaction_manager`` that is committed when they
return (aborted when they raise).  A subscriber's exception is logged and
never reaches the mail path: the mail is already committed, queued or sent.
"""
from __future__ import annotations


from zope.interface import implementer, providedBy

from .util.printable import get_logger
from .interfaces import IMailDeferred, IMailFailed, IMailQueued, IMailSent

log = get_logger(__name__)


class MailEvent:
    """Base class; see :class:`pyramid_txmail.interfaces.IMailEvent`."""

    def __init__(self, message_id, fromaddr, toaddrs, results=(), request=None,
                 transaction_manager=None, reason=None):
        self.message_id = message_id
        self.fromaddr = fromaddr
        self.toaddrs = tuple(toaddrs)
        self.results = tuple(results)
        self.request = request
        self.transaction_manager = transaction_manager
        self.reason = reason

    def __repr__(self):
        return f"<{type(self).__name__} {self.message_id} to {', '.join(self.toaddrs)}>"


@implementer(IMailQueued)
class MailQueued(MailEvent):
    """The message is in the durable spool."""


@implementer(IMailSent)
class MailSent(MailEvent):
    """The relay accepted the message for the recipients in ``results``."""


@implementer(IMailDeferred)
class MailDeferred(MailEvent):
    """A temporary failure; the message waits for a retry."""


@implementer(IMailFailed)
class MailFailed(MailEvent):
    """A permanent failure for the recipients in ``results``; dead-lettered or dropped."""


def subscribed(registry, events):
    """The ``events`` someone subscribes to (Pyramid's ``add_subscriber``, also to a
    base interface such as ``IMailEvent`` or ``Interface``).

    Each event is notified in a transaction of its own; with nobody listening,
    that transaction (a begin, a commit and their synchronizers, per message and
    request) would be all the work done, so those events are left out.
    """
    adapters = getattr(registry, "adapters", None)
    if adapters is None:  # not a component registry: notify them all
        return list(events)
    return [event for event in events
            if adapters.subscriptions((providedBy(event),), None)]


def dispatch(registry, events, transaction_manager):
    """Notify each event through ``registry`` in a new transaction of its own.

    ``transaction_manager`` must have no active transaction (call this after
    the sending transaction has ended).  Never raises.
    """
    if registry is None:
        return
    for event in subscribed(registry, events):
        event.transaction_manager = transaction_manager
        try:
            transaction_manager.begin()
        except Exception:
            log.exception("cannot begin a transaction for %r; event not delivered", event)
            continue
        try:
            registry.notify(event)
            transaction_manager.commit()
        except Exception:
            log.exception("mail event subscriber failed for %r (the mail itself is "
                          "unaffected)", event)
            try:
                transaction_manager.abort()
            except Exception:
                log.exception("abort after a failed subscriber failed too")
