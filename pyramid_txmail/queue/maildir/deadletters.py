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

    When its state file cannot be written under its name -- ``meta/NAME.json``
    is a directory (:class:`~pyramid_txmail.queue.maildir.spool.StateFileBlocked`),
    or the name is too long for the names derived from it
    (:mod:`~pyramid_txmail.queue.maildir.namelimits`) -- it is dead-lettered under
    a new name of ours, with that in its reason: a message whose state cannot
    be recorded must reach a final state, never go back to the queue to fail
    the same way each ``claim_timeout`` (issue 11, round 2, finding 2).
    ``dead_letter_of`` keeps the old name, and the new one takes every derived
    name, so ``txmail-queue retry`` can send it.
    """
    too_long = spool.name_problem(entry.name)
    if too_long:
        where = _bury_renamed(spool, entry, meta, too_long)
        spool.drop_meta(entry.name)  # one written by hand, or before the limit: its
        return where  # content is in the new one (the caller's ``meta``)
    try:
        spool.write_meta(entry.name, meta)
        return spool.move(entry, "failed")
    except StateFileBlocked as exc:
        return _bury_renamed(spool, entry, meta, f"its state file meta/{entry.name}.json "
                             f"could not be written ({exc.strerror})")


def _bury_renamed(spool, entry, meta, why):
    """Dead-letter ``entry`` under a fresh name, saying ``why`` in its reason."""
    fresh = unique_name()
    reason = meta.get("reason")
    if why not in str(reason):  # a poison reason may say it already
        reason = f"{reason}; {why}"
    meta = dict(meta, reason=f"{reason}; so it was dead-lettered as failed/{fresh}")
    meta["dead_letter_of"] = meta.get("dead_letter_of") or entry.name
    spool.write_meta(fresh, meta)
    try:
        where = spool.move(entry, "failed", new_name=fresh)
    except BaseException:  # e.g. another processor buried it first: no orphan state
        spool.drop_meta(fresh)
        raise
    log.error("%s: %s; dead-lettered as failed/%s", entry.name, why, fresh)
    return where
