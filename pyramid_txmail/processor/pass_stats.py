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
    ``skipped``: deferred messages not yet due that were waiting when the pass
    began (with ``mail.processes``, one pass of them all: when the run began) --
    not those deferred since, by this pass or a sibling; ``taken``: messages
    another processor claimed first (another ``txmail-qp``, or, with
    ``mail.processes``, a sibling process of this one: each takes its own share
    first, so few -- :mod:`pyramid_txmail.queue.maildir.shares`) or took from
    this one while it held them; ``recovered``: stale claims put back into ``new/``, and
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
