"""Dead letters in a spool: a message given up on moves into ``failed/`` with its state.

Which messages are given up, and why, is the processor's policy
(:mod:`pyramid_txmail.processor.outcomes`); this is how a spool records it
(:meth:`pyramid_txmail.queue.maildir.backend.MaildirQueue.bury`, and
:mod:`pyramid_txmail.queue.maildir.recovery` for what a crashed commit left): a state file
saying why, then the rename, so that nothing is ever silently dropped.
"""
from __future__ import annotations

from ...util.printable import get_logger
from .spool import StateFileBlocked, unique_name

log = get_logger("pyramid_txmail.processor")


def bury(spool, entry, meta):
    """Write a dead letter's state file, then move it into ``failed/``; returns its entry.

    When its state file cannot be written under its name (``meta/NAME.json``
    is a directory: :class:`~pyramid_txmail.queue.maildir.spool.StateFileBlocked`), it is
    dead-lettered under a new name, with that in its reason: a message whose
    state cannot be recorded must reach a final state, never go back to the
    queue to fail the same way each ``claim_timeout`` (issue 11, round 2,
    finding 2).  ``dead_letter_of`` keeps the old name.
    """
    try:
        spool.write_meta(entry.name, meta)
        return spool.move(entry, "failed")
    except StateFileBlocked as exc:
        fresh = unique_name()
        meta = dict(meta, reason=(f"{meta.get('reason')}; its state file "
                                  f"meta/{entry.name}.json could not be written ({exc.strerror})"
                                  f", so it was dead-lettered as {fresh}"))
        meta.setdefault("dead_letter_of", entry.name)
        spool.write_meta(fresh, meta)
        where = spool.move(entry, "failed", new_name=fresh)
        log.error("%s: its state file meta/%s.json could not be written (%s); "
                  "dead-lettered as failed/%s", entry.name, entry.name, exc.strerror, fresh)
        return where
