"""Dead letters: how the processor moves what it gives up on into ``failed/``.

A mixin of :class:`pyramid_txmail.processor.Processor` (it uses the
processor's ``spool``, ``clock``, ``_event`` and ``_dispatch``), kept apart
because it is one job: whatever is given up -- some recipients, a whole
message, a poison file, a message whose state is unknown -- lands in
``failed/`` with a state file saying why, and is never silently dropped.
"""
from __future__ import annotations

import logging

from . import events as mail_events
from .queue_state import dead_letter
from .result import PERMANENT, RecipientResult

log = logging.getLogger("pyramid_txmail.processor")


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
            self.spool.write_meta(job.entry.name, meta)
            where = self.spool.move(job.entry, "failed")
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
        self.spool.write_meta(entry.name, dead_letter(meta, None, [], reason, now, entry.name))
        self.spool.move(entry, "failed")
        stats.failed += 1
        log.error("dead letter failed/%s: %s", entry.name, reason)
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
        self.spool.write_meta(job.entry.name, self._failure_meta(job, dead, reason, now))
        self.spool.move(job.entry, "failed")
        stats.failed += 1
        log.error("dead letter %s to %s: %s", job.message_id, ", ".join(job.toaddrs), reason)
        self._dispatch([self._event(mail_events.MailFailed, job, dead, reason)])
