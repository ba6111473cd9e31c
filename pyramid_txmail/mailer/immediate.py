"""``send_immediately`` and ``send_immediately_sendmail``: send now, outside the transaction.

pyramid_mailer's meaning: the message goes out during the call, whatever
the transaction does afterwards, and a failure raises -- unless
``fail_silently``, when the call returns ``False`` and the failure is logged
(ERROR) and reported as :class:`~pyramid_txmail.events.MailFailed`.  Nothing
is queued for a retry: the caller was told, and a retry of its own after a
queued copy would send twice.  A message that is invalid (no recipient, a
bad address, a header injection) always raises, as with ``send``: that is a
bug to fix, not a delivery failure to swallow.

The message is validated, encoded and redirected exactly as ``send`` does
it, and the events (MailSent, MailFailed) are notified at once, each in a
new transaction of a fresh manager, so a subscriber can neither join nor
break the request's transaction.  With a development delivery (memory,
file, console, null) the message goes to that outbox at once: nothing is
sent over the network.
"""
from __future__ import annotations

import smtplib

from ..util.printable import get_logger
from ..events import MailFailed, MailSent
from ..relay.result import TEMPORARY, DeliveryResult, RecipientResult, log_fields

log = get_logger("pyramid_txmail")

_HOW = {"smtp": "send_immediately", "sendmail": "send_immediately_sendmail"}


class DeliveryFailed(smtplib.SMTPException):
    """``send_immediately*``: not every recipient took the message.

    A subclass of :class:`smtplib.SMTPException` (and so of ``OSError`` /
    ``socket.error``), which is what code written for pyramid_mailer
    catches.  ``result`` is the :class:`~pyramid_txmail.relay.result.DeliveryResult`:
    who accepted, who refused, with the SMTP reply or the sendmail exit status.
    """

    def __init__(self, result, how):
        super().__init__(how)
        self.result = result
        self.how = how

    def __str__(self):
        failed = [r for r in self.result.results if r.status != "sent"]
        sent = [r.recipient for r in self.result.sent]
        accepted = f"; accepted by {', '.join(sent)}" if sent else ""
        return (f"{self.how}: {self.result.message_id} was not accepted by every recipient "
                "and was not queued (" + "; ".join(
                    f"{r.recipient}: {r.status} {r.code or '-'} {r.text}" for r in failed)
                + f"){accepted}")


def _deliver(transport_factory, prepared):
    """The transport's result; a transport that raises counts as a temporary failure."""
    try:
        with transport_factory() as transport:
            return transport.deliver(prepared.fromaddr, prepared.toaddrs, prepared.data,
                                     message_id=prepared.message_id)
    except Exception as exc:
        log.exception("delivery of %s raised", prepared.message_id)
        return DeliveryResult(prepared.message_id, tuple(
            RecipientResult(r, TEMPORARY, None, f"internal error: {exc!r}")
            for r in prepared.toaddrs))


def _events(prepared, result):
    events = []
    if result.sent:
        events.append(MailSent(prepared.message_id, prepared.fromaddr,
                               [r.recipient for r in result.sent], result.sent))
    failed = result.temporary + result.permanent
    if failed:
        reason = DeliveryResult(prepared.message_id, tuple(failed)).summary()
        events.append(MailFailed(prepared.message_id, prepared.fromaddr,
                                 [r.recipient for r in failed], failed, reason=reason))
    return events


def _through_outbox(outbox, prepared):
    """A development delivery, now: what its commit would do, without a transaction."""
    outbox.finish(outbox.vote([prepared]))
    return outbox.committed([prepared])


def send_now(mailer, prepared, kind, fail_silently=False):
    """Deliver ``prepared`` now through ``kind`` (``"smtp"`` or ``"sendmail"``).

    Returns the Message-ID when every recipient accepted it; otherwise raises
    :class:`DeliveryFailed`, or with ``fail_silently`` logs and returns ``False``.
    """
    delivery = mailer.delivery
    how = _HOW[kind]
    if delivery.transports is None:  # memory, file, console, null
        mailer.dispatch(_through_outbox(delivery.outboxes["send"], prepared))
        return prepared.message_id
    result = _deliver(delivery.transports[kind], prepared)
    mailer.dispatch(_events(prepared, result))
    if result.ok:
        log.info("sent %s to %s (%s)", prepared.message_id, ", ".join(prepared.toaddrs), how,
                 extra=log_fields(prepared.message_id, 1, result.sent))
        return prepared.message_id
    error = DeliveryFailed(result, how)
    if result.sent:
        log.info("sent %s to %s (%s)", prepared.message_id,
                 ", ".join(r.recipient for r in result.sent), how,
                 extra=log_fields(prepared.message_id, 1, result.sent))
    if fail_silently:
        log.error("%s (fail_silently: the caller goes on)", error,
                  extra=log_fields(prepared.message_id, 1, result.results))
        return False
    raise error
