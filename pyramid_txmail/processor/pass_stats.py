"""What a pass of the processor did, in numbers and in words for people."""
from __future__ import annotations

import dataclasses

from ..util.durations import format_duration  # noqa: F401 (public here too)


@dataclasses.dataclass
class PassStats:
    """What one pass did, counted in queue files (what ``ls`` would show).

    ``sent``: messages delivered to every remaining recipient and removed;
    ``deferred``: messages moved to ``deferred/`` for a retry; ``failed``:
    dead letters written to ``failed/`` (refused, expired or poison);
    ``skipped``: deferred messages not yet due; ``taken``: messages another
    processor claimed first (another ``txmail-qp``, or, with ``mail.processes``,
    a sibling process of this one: then it is the normal share-out, not a
    problem) or took from this one while it held them; ``recovered``: stale claims put back into ``new/``, and
    what crashed senders left in ``tmp/`` and ``prepared/``, cleaned up or
    resolved (:mod:`pyramid_txmail.queue.maildir.recovery`);
    ``errors``: messages whose handling raised unexpectedly (logged; the
    file stays claimed in ``cur/`` until ``claim_timeout`` puts it back).
    """

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    recovered: int = 0
    errors: int = 0
    taken: int = 0

    def add(self, other):
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def summary(self):
        return (f"sent={self.sent} deferred={self.deferred} failed={self.failed} "
                f"skipped={self.skipped} recovered={self.recovered} errors={self.errors} "
                f"taken={self.taken}")
