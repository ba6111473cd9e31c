"""What a pass of the processor did, in numbers and in words for people."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class PassStats:
    """What one pass did, counted in queue files (what ``ls`` would show).

    ``sent``: messages delivered to every remaining recipient and removed;
    ``deferred``: messages moved to ``deferred/`` for a retry; ``failed``:
    dead letters written to ``failed/`` (refused, expired or poison);
    ``skipped``: deferred messages not yet due, or claimed by another
    process first; ``recovered``: stale claims put back into ``new/``, and
    what crashed senders left in ``tmp/`` and ``prepared/``, cleaned up or
    resolved (:mod:`pyramid_txmail.recovery`);
    ``errors``: messages whose handling raised unexpectedly (logged; the
    file stays claimed in ``cur/`` until ``claim_timeout`` puts it back).
    """

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    recovered: int = 0
    errors: int = 0

    def add(self, other):
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def summary(self):
        return (f"sent={self.sent} deferred={self.deferred} failed={self.failed} "
                f"skipped={self.skipped} recovered={self.recovered} errors={self.errors}")


def format_duration(seconds):
    """``"5d 2h"``, ``"3h 20m"``, ``"45m"``, ``"30s"``: for people reading reasons."""
    seconds = int(seconds)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if seconds >= size:
            rest = (seconds % size) // subsize
            return f"{seconds // size}{unit}" + (f" {rest}{sub}" if rest else "")
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"
