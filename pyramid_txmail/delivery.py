"""Deliveries (queue, direct) and the transaction-bound mailer.

:class:`Delivery` is the registered utility (repoze.sendmail's
``IMailDelivery``); :class:`Mailer` is what ``request.mailer`` and
:func:`pyramid_txmail.get_mailer` return: the delivery bound to one
transaction manager.  An *outbox* is the part that differs between queue and
direct delivery: what happens at vote, at finish and after the commit.
"""
from __future__ import annotations

import logging
import time

import transaction
from zope.interface import implementer

from .datamanager import MailDataManager, write_all
from .devdelivery import AfterCommitOutbox, make_dev_outbox
from .direct import DirectSenders, notifier
from .events import MailFailed, MailQueued, MailSent, dispatch
from .interfaces import IMailDelivery
from .message import prepare
from .queue_state import dead_letter, record_attempt
from .redirect import redirect
from .result import TEMPORARY, DeliveryResult, RecipientResult
from .sendlog import record_send
from .settings import DEV_DELIVERY_MODES, MailSettings
from .spool import Spool

log = logging.getLogger("pyramid_txmail")

DIRECT_TIMEOUT = MailSettings.direct_timeout


class QueueOutbox:
    """Durable queue delivery: the spool is written at vote, published at finish."""

    def __init__(self, spool):
        self.spool = spool

    def vote(self, messages):
        return write_all(messages, lambda p: self.spool.prepare(p.fromaddr, p.toaddrs, p.data),
                         self.discard, f"the mail spool {self.spool.path}")

    def finish(self, names):
        self.spool.commit_prepared(names)

    def discard(self, names):
        for name in names:
            self.spool.discard_prepared(name)

    def committed(self, messages):
        for prepared in messages:
            log.info("queued %s from %s to %s", prepared.message_id, prepared.fromaddr,
                     ", ".join(prepared.toaddrs))
        return [MailQueued(p.message_id, p.fromaddr, p.toaddrs) for p in messages]


class DirectOutbox(AfterCommitOutbox):
    """Direct delivery: nothing happens in the commit; SMTP runs after it.

    A failure never raises into the committed request.  With a fallback
    spool, recipients that failed temporarily are queued for the processor
    and permanently refused ones are dead-lettered; without one they are
    reported (log + :class:`MailFailed`) -- there is nowhere to keep them.
    The committing thread waits at most ``timeout`` (``mail.direct_timeout``)
    for the relay; see :mod:`pyramid_txmail.direct` for what happens after.
    """

    def __init__(self, transport_factory, fallback=None, clock=time.time, *,
                 timeout=DIRECT_TIMEOUT, registry=None):
        self.transport_factory = transport_factory
        self.fallback = fallback
        self.clock = clock
        self.senders = DirectSenders(transport_factory, self._attempt, self._unsent,
                                     notifier(registry), timeout, fallback is not None)

    def committed(self, messages):
        if not messages:
            return []
        return self.senders.send(messages)

    def _attempt(self, transport, prepared):
        try:
            return self._deliver(transport, prepared)
        except Exception as exc:  # e.g. the fallback spool cannot be written
            # One message's trouble must not cost the others their turn.
            log.exception("direct delivery of %s to %s failed and it could not "
                          "be kept", prepared.message_id, ", ".join(prepared.toaddrs))
            return [MailFailed(prepared.message_id, prepared.fromaddr,
                               prepared.toaddrs, reason=repr(exc))]

    def _unsent(self, messages, why):
        """Messages never offered to the relay: to the fallback queue, or reported."""
        events = []
        for prepared in messages:
            failures = [RecipientResult(r, TEMPORARY, None, why) for r in prepared.toaddrs]
            try:
                events.extend(self._fall_back(prepared, failures, "new"))
            except Exception as exc:
                log.exception("%s: %s, and it could not be queued", prepared.message_id, why)
                events.append(MailFailed(prepared.message_id, prepared.fromaddr,
                                         prepared.toaddrs, failures, reason=repr(exc)))
        return events

    def _deliver(self, transport, prepared):
        try:
            result = transport.deliver(prepared.fromaddr, prepared.toaddrs, prepared.data,
                                       message_id=prepared.message_id)
        except Exception as exc:  # a bug must not lose the message either
            log.exception("direct delivery of %s raised", prepared.message_id)
            result = DeliveryResult(prepared.message_id, tuple(
                RecipientResult(r, TEMPORARY, None, f"internal error: {exc!r}")
                for r in prepared.toaddrs))
        events = []
        if result.sent:
            log.info("sent %s to %s", prepared.message_id,
                     ", ".join(r.recipient for r in result.sent))
            events.append(MailSent(prepared.message_id, prepared.fromaddr,
                                   [r.recipient for r in result.sent], result.sent))
        if result.temporary:
            events.extend(self._fall_back(prepared, result.temporary, "new"))
        if result.permanent:
            events.extend(self._fall_back(prepared, result.permanent, "failed"))
        return events

    def _fall_back(self, prepared, failures, state):
        recipients = [r.recipient for r in failures]
        reason = "; ".join(f"{r.recipient}: {r.code or '-'} {r.text}" for r in failures)
        if self.fallback is None:
            log.error("direct delivery of %s to %s failed and no fallback is configured "
                      "(mail.direct_fallback = queue keeps it): %s", prepared.message_id,
                      ", ".join(recipients), reason)
            return [MailFailed(prepared.message_id, prepared.fromaddr, recipients,
                               failures, reason=reason)]
        now = self.clock()
        if state == "new":
            name = self.fallback.write_tmp(prepared.fromaddr, recipients, prepared.data)
            self.fallback.write_meta(name, record_attempt(
                {}, prepared.message_id, failures, now, now, now))
            self.fallback.commit_tmp([name])
            log.warning("direct delivery of %s to %s failed temporarily (%s); queued in %s",
                        prepared.message_id, ", ".join(recipients), reason, self.fallback.path)
            return [MailQueued(prepared.message_id, prepared.fromaddr, recipients, failures,
                               reason=reason)]
        tried = record_attempt({}, prepared.message_id, failures, now, None, now)
        self.fallback.dead_letter_copy(prepared.fromaddr, recipients, prepared.data, dead_letter(
            tried, prepared.message_id, failures, "permanent failure: " + reason, now, None))
        log.error("direct delivery of %s to %s failed permanently (%s); dead-lettered in %s",
                  prepared.message_id, ", ".join(recipients), reason, self.fallback.path)
        return [MailFailed(prepared.message_id, prepared.fromaddr, recipients, failures,
                           reason=reason)]


@implementer(IMailDelivery)
class Delivery:
    """The configured delivery (a registry utility providing ``IMailDelivery``).

    ``send(fromaddr, toaddrs, message)`` keeps repoze.sendmail's signature and
    joins the thread-local transaction, like repoze.sendmail's deliveries.
    """

    def __init__(self, settings, outbox, registry=None):
        self.settings = settings
        self.outbox = outbox
        self.registry = registry
        self.transaction_manager = transaction.manager

    def send(self, fromaddr, toaddrs, message):
        return Mailer(self, self.transaction_manager).send(fromaddr, toaddrs, message)

    def bind(self, transaction_manager=None, request=None):
        return Mailer(self, transaction_manager or self.transaction_manager, request)


class NoTransaction(RuntimeError):
    """``send`` was called with no active transaction to join."""


def _has_transaction(manager):
    """Whether ``manager`` has begun a transaction (without beginning one).

    transaction's managers keep it in ``_txn``; a thread-local manager wraps
    one as ``manager``.  Unknown managers are trusted.
    """
    inner = getattr(manager, "manager", manager)
    return getattr(inner, "_txn", True) is not None


@implementer(IMailDelivery)
class Mailer:
    """A delivery bound to a transaction manager (and maybe a request).

    ``send(message)`` validates the message now, returns its Message-ID and
    sends it when the transaction commits.  ``send(fromaddr, toaddrs,
    message)`` does the same with an explicit envelope (repoze.sendmail's
    ``IMailDelivery`` signature).
    """

    def __init__(self, delivery, transaction_manager, request=None):
        self.delivery = delivery
        self.transaction_manager = transaction_manager
        self.request = request

    def send(self, *args):
        if len(args) == 1:
            (message,), fromaddr, toaddrs = args, None, None
        elif len(args) == 3:
            fromaddr, toaddrs, message = args
            if isinstance(toaddrs, str):
                toaddrs = [toaddrs]
        else:
            raise TypeError("send(message) or send(fromaddr, toaddrs, message)")
        prepared = prepare(message, self.delivery.settings.default_sender,
                           fromaddr, toaddrs)
        if self.delivery.settings.redirect_to:  # staging: see pyramid_txmail.redirect
            prepared = redirect(prepared, self.delivery.settings.redirect_to)
        manager = self._data_manager()
        manager.add(prepared)
        # The debug toolbar panel's record of this request's mail (no-op otherwise).
        record_send(self.request, self.transaction_manager.get(), manager, prepared)
        return prepared.message_id

    def _data_manager(self):
        if self.request is not None and not self.request.environ.get("tm.active") \
                and not _has_transaction(self.transaction_manager):
            # A non-explicit manager would quietly begin a transaction that
            # nobody commits: the mail would be lost without a word.
            raise NoTransaction("pyramid_tm is not managing this request (see "
                                "tm.activate_hook) and no transaction was begun: wrap "
                                "the send in `with request.tm:`")
        try:
            txn = self.transaction_manager.get()
        except transaction.interfaces.NoTransaction:
            raise NoTransaction("mailer.send() needs an active transaction: begin one "
                                "(with transaction_manager: ...) or enable pyramid_tm "
                                "for this request") from None
        try:
            return txn.data(self.delivery)
        except KeyError:
            pass
        manager = MailDataManager(self.delivery.outbox, self.transaction_manager,
                                  self._committed)
        txn.join(manager)
        txn.addAfterCommitHook(manager.after_commit)
        txn.set_data(self.delivery, manager)
        return manager

    def _committed(self, messages):
        events = self.delivery.outbox.committed(messages)
        registry = self.delivery.registry
        if not events or registry is None:
            return
        if self.request is not None:
            # pyramid_tm has ended the transaction by the time finished
            # callbacks run: subscribers get a fresh one on request.tm.
            for event in events:
                event.request = self.request
            self.request.add_finished_callback(
                lambda request: dispatch(registry, events, self.transaction_manager))
        else:
            dispatch(registry, events, transaction.TransactionManager(explicit=True))


def make_outbox(settings, transport_factory, registry=None):
    """The outbox for ``settings.delivery`` (spool created/checked here); ``registry``
    receives the events of direct deliveries settled after the request's wait."""
    if settings.delivery in DEV_DELIVERY_MODES:  # memory, file, console, null
        return make_dev_outbox(settings)
    spool = Spool(settings.queue_path) if settings.queue_path else None
    if settings.delivery == "queue":
        return QueueOutbox(spool)
    fallback = spool if settings.direct_fallback == "queue" else None
    return DirectOutbox(transport_factory, fallback, timeout=settings.direct_timeout,
                        registry=registry)
