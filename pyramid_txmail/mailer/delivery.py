"""Deliveries (queue, direct, sendmail) and the transaction-bound mailer.

:class:`Delivery` is the registered utility (repoze.sendmail's
``IMailDelivery``); :class:`Mailer` is what ``request.mailer`` and
:func:`pyramid_txmail.get_mailer` return: the delivery bound to one
transaction manager.  An *outbox* is the part that differs between queue and
direct delivery: what happens at vote, at finish and after the commit.
"""
from __future__ import annotations

import time

import transaction
from pyramid.exceptions import ConfigurationError
from zope.interface import implementer

from ..util.printable import get_logger
from .datamanager import MailDataManager, joined_manager, write_all
from .devdelivery import AfterCommitOutbox, make_dev_outbox
from .direct import DirectSenders, notifier
from ..events import MailFailed, MailQueued, MailSent, dispatch, subscribed
from ..interfaces import IMailDelivery
from .joining import NoTransaction, TransactionEnded, joinable_transaction  # noqa: F401
from .mailer_compat import PyramidMailerAPI
from ..compose.message import prepare
from ..queue.maildir.queue_state import dead_letter, record_attempt
from ..compose.redirect import redirect
from ..relay.result import TEMPORARY, DeliveryResult, RecipientResult, log_fields
from .sendlog import record_send
from ..relay.sendmail import SendmailTransport
from ..settings import DEV_DELIVERY_MODES, MailSettings
from ..queue.maildir.spool import Spool, SpoolError
from .sqloutbox import SqlOutbox

log = get_logger("pyramid_txmail")

DIRECT_TIMEOUT = MailSettings.direct_timeout


class QueueOutbox:
    """Durable queue delivery: the spool is written at vote, published at finish."""

    def __init__(self, spool):
        self.spool = spool

    def vote(self, messages):
        where = f"the mail spool {self.spool.path}"
        names = []  # filled by the spool as each file reaches prepared/ (see Spool.prepare)

        def discard(_written):
            self.discard(names)

        write_all(messages, lambda p: self.spool.prepare(p.fromaddr, p.toaddrs, p.data, names),
                  discard, where)
        if names:  # durable before the database commits (Spool.settle_prepared)
            write_all([None], lambda _: self.spool.settle_prepared(), discard, where)
        return list(names)

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
    for the relay; see :mod:`pyramid_txmail.mailer.direct` for what happens after.
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
                     ", ".join(r.recipient for r in result.sent),
                     extra=log_fields(prepared.message_id, 1, result.sent))
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
                      ", ".join(recipients), reason,
                      extra=log_fields(prepared.message_id, 1, failures))
            return [MailFailed(prepared.message_id, prepared.fromaddr, recipients,
                               failures, reason=reason)]
        now = self.clock()
        if state == "new":
            name = self.fallback.write_tmp(prepared.fromaddr, recipients, prepared.data)
            self.fallback.write_meta(name, record_attempt(
                {}, prepared.message_id, failures, now, now, now))
            self.fallback.commit_tmp([name])
            log.warning("direct delivery of %s to %s failed temporarily (%s); queued in %s",
                        prepared.message_id, ", ".join(recipients), reason, self.fallback.path,
                        extra=log_fields(prepared.message_id, 1, failures))
            return [MailQueued(prepared.message_id, prepared.fromaddr, recipients, failures,
                               reason=reason)]
        tried = record_attempt({}, prepared.message_id, failures, now, None, now)
        self.fallback.dead_letter_copy(prepared.fromaddr, recipients, prepared.data, dead_letter(
            tried, prepared.message_id, failures, "permanent failure: " + reason, now, None))
        log.error("direct delivery of %s to %s failed permanently (%s); dead-lettered in %s",
                  prepared.message_id, ", ".join(recipients), reason, self.fallback.path,
                  extra=log_fields(prepared.message_id, 1, failures))
        return [MailFailed(prepared.message_id, prepared.fromaddr, recipients, failures,
                           reason=reason)]


@implementer(IMailDelivery)
class Delivery:
    """The configured delivery (a registry utility providing ``IMailDelivery``).

    ``send(fromaddr, toaddrs, message)`` keeps repoze.sendmail's signature and
    joins the thread-local transaction, like repoze.sendmail's deliveries
    (but never begins one: see :mod:`pyramid_txmail.mailer.joining`).

    ``outboxes`` maps what the mailer's methods use: ``"send"`` (``send``:
    ``mail.delivery``), ``"queue"`` (``send_to_queue``; ``None`` without a
    spool) and ``"sendmail"`` (``send_sendmail``).  ``transports`` maps
    ``"smtp"`` / ``"sendmail"`` to the transport factories of
    ``send_immediately`` / ``send_immediately_sendmail``; ``None`` for the
    development deliveries, where every method ends in ``outbox``.
    """

    def __init__(self, settings, outbox, registry=None, outboxes=None, transports=None):
        self.settings = settings
        self.outbox = outbox
        self.registry = registry
        self.transaction_manager = transaction.manager
        if outboxes is None:
            outboxes = default_outboxes(settings, outbox)
        self.outboxes = outboxes
        self.transports = transports

    def send(self, fromaddr, toaddrs, message):
        return Mailer(self, self.transaction_manager).send(fromaddr, toaddrs, message)

    def bind(self, transaction_manager=None, request=None, session=None):
        return Mailer(self, transaction_manager or self.transaction_manager, request,
                      session=session)


class NoQueue(ConfigurationError, RuntimeError):
    """``send_to_queue`` without ``mail.queue_path`` (a RuntimeError, as pyramid_mailer's)."""


@implementer(IMailDelivery)
class Mailer(PyramidMailerAPI):
    """A delivery bound to a transaction manager (and maybe a request).

    pyramid_mailer's mailer API, with its meaning:

    - ``send(message)`` validates the message now, returns its Message-ID and
      hands it to ``mail.delivery`` when the transaction commits;
      ``send(fromaddr, toaddrs, message)`` does the same with an explicit
      envelope (repoze.sendmail's ``IMailDelivery`` signature).
    - ``send_to_queue(message)``: into the spool at commit, whatever
      ``mail.delivery`` is.
    - ``send_sendmail(message)``: through the sendmail binary after the commit.
    - ``send_immediately(message, fail_silently=False)`` and
      ``send_immediately_sendmail(...)``: now, outside the transaction
      (:mod:`pyramid_txmail.mailer.immediate`).

    Each validates, encodes and redirects the same way and raises the same
    events.  The transactional ones never begin a transaction: with none to
    join they raise :class:`NoTransaction`.
    """

    def __init__(self, delivery=None, transaction_manager=None, request=None, *,
                 session=None, **options):
        if not isinstance(delivery, Delivery):
            # pyramid_mailer's Mailer(host=..., port=..., ...): built as
            # Mailer.from_settings builds it (see mailer_compat.keyword_delivery).
            from .mailer_compat import keyword_delivery

            if delivery is not None:
                options["delivery"] = delivery
            delivery = keyword_delivery(options)
        elif options:
            raise TypeError(f"Mailer(delivery, transaction_manager, request) takes no "
                            f"other arguments ({', '.join(sorted(options))}); build one "
                            "from settings with Mailer.from_settings(settings, prefix)")
        if transaction_manager is None:
            transaction_manager = delivery.transaction_manager
        self.delivery = delivery
        self.transaction_manager = transaction_manager
        self.request = request
        #: The SQL outbox's session outside a request (see pyramid_txmail.sqloutbox).
        self.session = session

    def send(self, *args):
        if len(args) == 1:
            (message,), fromaddr, toaddrs = args, None, None
        elif len(args) == 3:
            fromaddr, toaddrs, message = args
            if isinstance(toaddrs, str):
                toaddrs = [toaddrs]
        else:
            raise TypeError("send(message) or send(fromaddr, toaddrs, message)")
        return self._add("send", self._prepare(message, fromaddr, toaddrs))

    def send_to_queue(self, message):
        """Queue ``message`` when the transaction commits (``txmail-qp`` sends it): in the
        spool, or with ``mail.queue_url`` as a row in the same database transaction."""
        if self.delivery.outboxes["queue"] is None:
            raise NoQueue(
                "send_to_queue() needs a queue and neither mail.queue_path nor "
                "mail.queue_url is set, so nothing was queued: set mail.queue_path (a spool) "
                "or mail.queue_url (the SQL outbox; txmail-qp delivers either), or use "
                f"send(), which follows mail.delivery = {self.delivery.settings.delivery}")
        return self._add("queue", self._prepare(message))

    def send_sendmail(self, message):
        """Pipe ``message`` to ``mail.sendmail_app`` when the transaction commits."""
        return self._add("sendmail", self._prepare(message))

    def send_immediately(self, message, fail_silently=False):
        """Send now over SMTP, outside the transaction; see :func:`immediate.send_now`."""
        from .immediate import send_now

        return send_now(self, self._prepare(message), "smtp", fail_silently)

    def send_immediately_sendmail(self, message, fail_silently=False):
        """Pipe to ``mail.sendmail_app`` now, outside the transaction."""
        from .immediate import send_now

        return send_now(self, self._prepare(message), "sendmail", fail_silently)

    def _prepare(self, message, fromaddr=None, toaddrs=None):
        prepared = prepare(message, self.delivery.settings.default_sender, fromaddr, toaddrs)
        if self.delivery.settings.redirect_to:  # staging: see pyramid_txmail.compose.redirect
            prepared = redirect(prepared, self.delivery.settings.redirect_to)
        return prepared

    def _add(self, kind, prepared):
        outbox = self.delivery.outboxes[kind]
        if outbox is None:
            raise ConfigurationError(f"this Delivery has no {kind!r} outbox (build it "
                                     "with pyramid_txmail.make_delivery)")
        txn = joinable_transaction(self.transaction_manager, self.request)
        manager = self._data_manager(txn, outbox)
        write_now = getattr(outbox, "write_now", None)
        if write_now is not None:  # the SQL outbox: the row goes into the app's transaction now
            write_now(self, txn, prepared, manager)
        manager.add(prepared)
        # The debug toolbar panel's record of this request's mail (no-op otherwise).
        record_send(self.request, txn, manager, prepared)
        return prepared.message_id

    def _data_manager(self, txn, outbox):
        """The transaction's data manager for ``outbox`` (one per outbox and transaction).

        A fresh one when the last has left the transaction (a rollback to a
        savepoint taken before it joined): see :func:`datamanager.joined_manager`.
        """
        manager, new = joined_manager(txn, outbox, lambda: MailDataManager(
            outbox, self.transaction_manager,
            lambda messages: self._committed(outbox, messages)))
        if new:
            txn.join(manager)
            txn.addAfterCommitHook(manager.after_commit)
        return manager

    def _committed(self, outbox, messages):
        self.dispatch(outbox.committed(messages), after_request=True)

    def dispatch(self, events, after_request=False):
        """Notify ``events``, each in a new transaction of its own.

        In a request whose transaction has just committed, they wait for
        pyramid_tm to end it (finished callback) and run on ``request.tm``;
        otherwise on a fresh explicit manager, so that a subscriber can
        neither join nor break a transaction that is still going on.
        """
        registry = self.delivery.registry
        if registry is None:
            return
        events = subscribed(registry, events)
        if not events:  # nobody listens: no finished callback, no transaction
            return
        for event in events:
            event.request = self.request
        if self.request is not None and after_request:
            # pyramid_tm has ended the transaction by the time finished
            # callbacks run: subscribers get a fresh one on request.tm.
            self.request.add_finished_callback(
                lambda request: dispatch(registry, events, self.transaction_manager))
        else:
            dispatch(registry, events, transaction.TransactionManager(explicit=True))


def default_outboxes(settings, outbox):
    """The outboxes of a :class:`Delivery` built from one outbox only.

    A development delivery serves every method (memory delivery may keep
    ``send_to_queue``'s messages apart, as its ``queue_outbox``); otherwise
    ``send_to_queue`` needs a queue outbox and ``send_sendmail`` has none.
    """
    if settings.delivery in DEV_DELIVERY_MODES:
        return {"send": outbox, "queue": getattr(outbox, "queue_outbox", outbox),
                "sendmail": outbox}
    queues = (QueueOutbox, SqlOutbox)
    return {"send": outbox, "queue": outbox if isinstance(outbox, queues) else None,
            "sendmail": None}


def make_outboxes(settings, transport_factory, registry=None):
    """``(outboxes, transports)`` for :class:`Delivery` (spool created/checked here).

    ``transport_factory`` opens an SMTP transport.  The development
    deliveries (memory, file, console, null) serve every method: nothing is
    ever sent from them.  The sendmail outbox falls back to the spool like
    direct delivery does, and like it waits at most ``mail.direct_timeout``;
    ``registry`` receives the events of what is settled after that wait.
    """
    if settings.delivery in DEV_DELIVERY_MODES:
        dev = make_dev_outbox(settings)
        return default_outboxes(settings, dev), None

    def sendmail_factory():
        return SendmailTransport.from_settings(settings)

    spool = Spool(settings.queue_path) if settings.queue_path else None
    fallback = spool if settings.direct_fallback == "queue" else None
    if getattr(settings, "queue_url", None):  # the queue is a table in the app's database
        queue = SqlOutbox(settings)
    else:
        queue = QueueOutbox(spool) if spool is not None else None
    bound = {"timeout": settings.direct_timeout, "registry": registry}
    sendmail = DirectOutbox(sendmail_factory, fallback, **bound)
    send = {"queue": queue, "sendmail": sendmail}.get(settings.delivery) or \
        DirectOutbox(transport_factory, fallback, **bound)
    return ({"send": send, "queue": queue, "sendmail": sendmail},
            {"smtp": transport_factory, "sendmail": sendmail_factory})


def make_outbox(settings, transport_factory, registry=None):
    """The outbox of ``send`` for ``settings.delivery``."""
    return make_outboxes(settings, transport_factory, registry)[0]["send"]


def transport_factory(settings):
    """A callable opening an SMTP transport for ``settings`` (used by direct delivery)."""
    def open_transport():
        from ..relay.smtp import SMTPTransport

        return SMTPTransport.from_settings(settings)

    return open_transport


def make_delivery(settings, registry=None):
    """Build the :class:`Delivery` for parsed :class:`MailSettings`."""
    try:
        outboxes, transports = make_outboxes(settings, transport_factory(settings), registry)
    except SpoolError as exc:
        raise ConfigurationError(f"mail.queue_path = {settings.queue_path!r}: {exc}") from None
    return Delivery(settings, outboxes["send"], registry, outboxes, transports)
