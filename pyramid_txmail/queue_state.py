"""The state file of a queued message (``meta/NAME.json``), written in one place.

Both the processor and direct delivery's fallback record attempts and dead
letters; these two functions keep the format theirs in common (the module
docstring of :mod:`pyramid_txmail.processor` describes the keys).
"""
from __future__ import annotations

from .result import SENT


def record_attempt(meta, message_id, results, now, next_attempt, queued_at):
    """Add one attempt (``results``: RecipientResult per recipient tried) to ``meta``."""
    meta["message_id"] = message_id
    meta["attempts"] = meta.get("attempts", 0) + 1
    meta.setdefault("queued_at", queued_at)
    meta.setdefault("first_attempt", now)
    meta["last_attempt"] = now
    meta["next_attempt"] = next_attempt
    meta["delivered"] = meta.get("delivered", []) + [
        r.recipient for r in results if r.status == SENT]
    meta.setdefault("failed_recipients", [])
    meta.setdefault("history", []).append(
        {"time": now, "results": [r.as_dict() for r in results]})
    return meta


def dead_letter(meta, message_id, dead, reason, now, dead_letter_of):
    """The state file of a dead letter: why, when, after how many attempts.

    It keeps no ``delivered``/``failed_recipients``: moved back to ``new/``,
    a dead letter is sent to its whole envelope, which holds exactly the
    recipients that failed.
    """
    return {"reason": reason, "failed_at": now, "attempts": meta.get("attempts", 0),
            "queued_at": meta.get("queued_at"),
            "first_attempt": meta.get("first_attempt"),
            "last_attempt": meta.get("last_attempt"),
            "recipients": [r.as_dict() for r in dead],
            "history": meta.get("history", []), "message_id": message_id,
            "dead_letter_of": dead_letter_of}
