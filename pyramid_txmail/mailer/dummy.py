"""The mailers a test makes itself: pyramid_mailer's ``DummyMailer()`` counterpart.

A ``DummyMailer`` is a :class:`~pyramid_txmail.Mailer` over a private memory
delivery.  In a transaction it behaves as production does: its messages reach
``.outbox`` (``.queue`` for ``send_to_queue``) when the transaction commits, and
an abort drops them.  With *no* transaction to join it records the message at
once, as pyramid_mailer's ``DummyMailer`` records every send, and logs a WARNING
-- a real mailer raises :class:`~pyramid_txmail.NoTransaction` there.  Unit tests
written for pyramid_mailer call views with no transaction at all (pyramid_tm runs
around them in production), and their mail must not turn into errors; the
include ``pyramid_txmail.testing`` is the strict mode, and raises as production does.
"""
from __future__ import annotations


import transaction

from ..util.printable import get_logger
from .delivery import Delivery, Mailer
from .devdelivery import MemoryOutbox
from .joining import NoTransaction
from ..settings import MailSettings, _address

log = get_logger("pyramid_txmail.dummy")

#: The sender of a message without one: a mailer a test made itself knows none of
#: the app's settings, so not its ``mail.default_sender`` (pyramid_mailer's
#: ``DebugMailer`` writes ``nobody`` there, its ``DummyMailer`` checks nothing).
PLACEHOLDER_SENDER = "nobody@example.com"


class RecordingMailer(Mailer):
    """A mailer that records a send with no transaction to join (see the module)."""

    def _add(self, kind, prepared):
        try:
            return super()._add(kind, prepared)
        except NoTransaction as exc:
            outbox = self.delivery.outboxes[kind]
            outbox.finish(outbox.vote([prepared]))
            log.warning("DummyMailer: %s had no transaction to join; recorded at once as "
                        "pyramid_mailer's DummyMailer does (a real mailer raises "
                        "NoTransaction here: %s)", prepared.message_id, exc)
            self.dispatch(outbox.committed([prepared]))
            return prepared.message_id


def dummy_mailer(default_sender=None):
    """A :class:`RecordingMailer` with a private memory delivery, bound to
    ``transaction.manager``; a message without a sender gets ``default_sender``,
    else :data:`PLACEHOLDER_SENDER`."""
    settings = MailSettings(delivery="memory",
                            default_sender=_address(default_sender or PLACEHOLDER_SENDER))
    return RecordingMailer(Delivery(settings, MemoryOutbox()), transaction.manager)
