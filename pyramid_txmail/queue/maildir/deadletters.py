"""Dead letters: how the processor moves what it gives up on into ``failed/``.

A mixin of :class:`pyramid_txmail.processor.processor.Processor` (it uses the
processor's ``spool``, ``clock``, ``_event`` and ``_dispatch``), kept apart
because it is one job: whatever is given up -- some recipients, a whole
message, a poison file, a message whose state is unknown -- lands in
``failed/`` with a state file saying why, and is never silently dropped.
"""
from __future__ import annotations

from ... import events as mail_events
from ...util.printable import get_logger
from .queue_state import dead_letter
from ...relay.result import PERMANENT, RecipientResult
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


class DeadLetters:
    def _is_whole(self, job, dead):
        """True when the dead recipients are the message's entire envelope."""
        return set(r.recipient for r in dead) == set(job.toaddrs)

    def _bury(self, job, dead, reason, now, stats):
        """Dead-letter ``dead``: move the file when it is all of them, else copy.

        The copy's envelope is exactly the failed recipients, so retrying a
        dead letter can never reach a recipient that already accepted.  The
        original's state then records them as failed -- after the copy is on
        disk, so a crash in between means a second try, not a lost recipient.
        """
        meta = self._failure_meta(job, dead, reason, now)
        if self._is_whole(job, dead):
            where = bury(self.spool, job.entry, meta)
        else:
            where = self.spool.dead_letter_copy(
                job.fromaddr, [r.recipient for r in dead], job.data, meta)
            job.meta["failed_recipients"] = (job.meta["failed_recipients"]
                                             + [r.recipient for r in dead])
            self.spool.write_meta(job.entry.name, job.meta)
        stats.failed += 1
        log.error("dead letter %s from %s to %s: %s (failed/%s)", job.message_id,
                  job.fromaddr, ", ".join(r.recipient for r in dead), reason, where.name)

    def _failure_meta(self, job, dead, reason, now):
        return dead_letter(job.meta, job.message_id, dead, reason, now, job.entry.name)

    def _bury_poison(self, entry, meta, why, stats):
        """A file that cannot be sent as it is goes to failed/ untouched, with the reason."""
        now = self.clock()
        reason = f"poison: {why}"
        where = bury(self.spool, entry, dead_letter(meta, None, [], reason, now, entry.name))
        stats.failed += 1
        log.error("dead letter failed/%s: %s", where.name, reason)
        self._dispatch([mail_events.MailFailed(None, "", (), reason=reason)])

    def _bury_unknown_state(self, job, stats):
        """A corrupt state file hides who already got the message: stop, do not guess.

        Sending again could reach recipients twice, so the message is
        dead-lettered whole for a person to look at.
        """
        now = self.clock()
        why = job.meta.get("meta_problem") or "corrupt"
        reason = (f"the state file meta/{job.entry.name}.json is {why}, so the "
                  "recipients already delivered are unknown; not sent again")
        dead = [RecipientResult(r, PERMANENT, None, "delivery state unknown")
                for r in job.toaddrs]
        job.meta = {}
        where = bury(self.spool, job.entry, self._failure_meta(job, dead, reason, now))
        stats.failed += 1
        log.error("dead letter %s to %s: %s (failed/%s)", job.message_id,
                  ", ".join(job.toaddrs), reason, where.name)
        self._dispatch([self._event(mail_events.MailFailed, job, dead, reason)])
