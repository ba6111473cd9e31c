"""A per-request record of the mails sent and what their transaction did with them.

Nothing is recorded unless something asked for it first: the debug toolbar
panel (:mod:`pyramid_txmail.toolbar`) calls :func:`start_recording` when a
request begins, and from then on ``request.mailer.send`` appends one
:class:`SendRecord` per message through :func:`record_send`.  Production
requests without the toolbar pay one dictionary lookup per send.

The state of a record follows the transaction the mail joined:

``pending``      the transaction has not ended yet
``committed``    it committed: the mail was handed to the delivery
``rolled back``  it committed, but a savepoint rollback had dropped this mail
``aborted``      it was aborted (an exception, ``doom``, a commit veto, ``abort()``)
                 or its commit failed: the mail was dropped
"""
from __future__ import annotations

import email.parser
import email.policy

from ..util.printable import get_logger

log = get_logger("pyramid_txmail.sendlog")

#: The ``request.environ`` key of the list of records.
ENVIRON_KEY = "pyramid_txmail.sends"

PENDING, COMMITTED, ROLLED_BACK, ABORTED = "pending", "committed", "rolled back", "aborted"

_header_parser = email.parser.BytesHeaderParser(policy=email.policy.default)


def start_recording(request):
    """Record the sends of ``request`` from now on; returns the (live) list of records."""
    return request.environ.setdefault(ENVIRON_KEY, [])


def _header_block(data):
    head = getattr(data, "head", None)  # a wire.Stream carries its header block
    if head is None:
        head = bytes(data)
    end = head.find(b"\n\n")
    return head if end < 0 else head[:end + 1]


def _subject_of(data):
    try:
        return str(_header_parser.parsebytes(_header_block(data)).get("Subject", ""))
    except Exception:  # a header the parser chokes on must not break the send
        log.debug("cannot read the Subject of a sent message", exc_info=True)
        return ""


class SendRecord:
    """One ``send``: the message's identity and what became of it."""

    def __init__(self, message_id, fromaddr, toaddrs, subject):
        self.message_id = message_id
        self.fromaddr = fromaddr
        self.toaddrs = tuple(toaddrs)
        self.subject = subject
        self.state = PENDING

    def __repr__(self):
        return f"<SendRecord {self.message_id} {self.state}>"

    def _after_commit(self, status, manager, prepared):
        if not status:
            self.state = ABORTED
        elif self.state == PENDING:
            # What the commit really wrote, not what the data manager held: a
            # savepoint rollback drops the message from it, or removes the whole
            # data manager from the transaction (a savepoint older than it).
            kept = any(p is prepared for p in manager.published)
            self.state = COMMITTED if kept else ROLLED_BACK

    def _after_abort(self):
        if self.state == PENDING:
            self.state = ABORTED


def record_send(request, transaction, manager, prepared):
    """Called by ``Mailer.send``: record ``prepared`` if ``request`` is recording."""
    sends = request.environ.get(ENVIRON_KEY) if request is not None else None
    if sends is None:
        return
    record = SendRecord(prepared.message_id, prepared.fromaddr, prepared.toaddrs,
                        _subject_of(prepared.data))
    transaction.addAfterCommitHook(record._after_commit, (manager, prepared))
    transaction.addAfterAbortHook(record._after_abort)
    sends.append(record)
