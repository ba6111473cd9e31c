"""A queued message's state (attempts, delivered recipients, history), made in one place.

The processor, direct delivery's fallback and every queue backend record
attempts and dead letters in this one dict, whatever stores it -- a spool's
state file ``meta/NAME.json``, an outbox row's JSON column -- so it lives
beside the queue interface, not in one backend (the module docstring of
:mod:`pyramid_txmail.processor.processor` describes the keys).
"""
from __future__ import annotations

import math

from ..relay.result import SENT

#: Attempts kept in full (every recipient's status, code and text) in
#: ``history``; older ones are folded into the counts of ``earlier``.  A
#: message to 5,000 recipients, half of them deferred, grew its state file by
#: 0.43 MB per retry while every attempt was kept (issue 11, finding 10d);
#: now its size stops growing after this many attempts.
HISTORY_KEEP = 3


#: The latest time a state file may hold, 9999-12-31T23:59:59Z: what a
#: ``deferred/`` stamp can spell, and far beyond any real retry.
LATEST = 253402300799.0

#: The times in a queued message's state file (epoch seconds).
TIME_KEYS = ("queued_at", "first_attempt", "last_attempt", "next_attempt")
#: The recipient lists: what the processor must trust to never send twice.
RECIPIENT_KEYS = ("delivered", "failed_recipients")
#: More attempts than this is no count a processor made (one a minute for 19 years).
MAX_ATTEMPTS = 10 ** 7


def epoch(value):
    """``value`` as epoch seconds when a state file may hold it, else None.

    A state file is JSON that a person (or another program) may have
    edited: Python reads ``NaN``, ``Infinity`` and ``1e400`` in it as
    floats, and ``true`` as a number.  Only a finite number from 1970 to
    :data:`LATEST` is a time; anything else would make a due time that
    never comes, or an ``OverflowError`` in ``time.gmtime``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if 0 <= value <= LATEST else None  # NaN compares False


def checked(meta):
    """``(meta, problems)``: a state file made safe to compute with.

    A time or count that is not one (see :func:`epoch`) is dropped, so it
    counts as unknown (a retry due now, the age from the other times),
    and described in ``problems`` for the log.  A recipient list that is
    not a list of addresses, or a file that is not a JSON object, leaves
    who already got the message unknown: it is returned as
    ``corrupt_meta`` with a ``meta_problem``, and the processor
    dead-letters the message rather than guess.
    """
    if not isinstance(meta, dict):
        return {"corrupt_meta": True, "meta_problem": "not a JSON object"}, []
    meta, problems = dict(meta), []
    for key in TIME_KEYS:
        if key in meta and epoch(meta[key]) is None:
            problems.append(f"{key} = {_shown(meta.pop(key))}")
    attempts = meta.get("attempts")
    if "attempts" in meta and (isinstance(attempts, bool) or not isinstance(attempts, int)
                               or not 0 <= attempts <= MAX_ATTEMPTS):
        problems.append(f"attempts = {_shown(meta.pop('attempts'))}")
    for key, kind in (("history", list), ("earlier", dict)):
        if key in meta and not isinstance(meta[key], kind):
            problems.append(f"{key} = {_shown(meta.pop(key))}")
    for key in RECIPIENT_KEYS:
        value = meta.get(key, [])
        if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
            meta.update(corrupt_meta=True, meta_problem=f"unusable: {key} is not a list "
                        "of addresses")
    return meta, problems


def _shown(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def record_attempt(meta, message_id, results, now, next_attempt, queued_at):
    """Add one attempt (``results``: RecipientResult per recipient tried) to ``meta``.

    ``history`` keeps the last :data:`HISTORY_KEEP` attempts in full, each
    numbered (``attempt``); the ones before are counted in ``earlier``.
    """
    meta["message_id"] = message_id
    meta["attempts"] = meta.get("attempts", 0) + 1
    meta.setdefault("queued_at", queued_at)
    meta.setdefault("first_attempt", now)
    if not isinstance(meta["first_attempt"], (int, float)) or meta["first_attempt"] > now:
        # recorded by a clock that was ahead: the age counts from now (the
        # processor's _age), never from a time that has not come
        meta["first_attempt"] = now
    meta["last_attempt"] = now
    meta["next_attempt"] = next_attempt
    meta["delivered"] = meta.get("delivered", []) + [
        r.recipient for r in results if r.status == SENT]
    meta.setdefault("failed_recipients", [])
    history = meta.setdefault("history", [])
    history.append({"attempt": meta["attempts"], "time": now,
                    "results": [r.as_dict() for r in results]})
    while len(history) > HISTORY_KEEP:
        meta["earlier"] = fold(meta.get("earlier"), history.pop(0))
    return meta


def age(meta, when):
    """A message's age at ``when``: since it was queued (as in Postfix), or since
    its first attempt if that is earlier (an application clock that was ahead
    dated its enqueue in the future); never below 0.  ``first_attempt`` is
    never later than the attempt that recorded it (:func:`record_attempt`)."""
    starts = [t for t in (meta.get("queued_at"), meta.get("first_attempt"))
              if isinstance(t, (int, float))]
    return max(0.0, when - min(starts)) if starts else 0.0


def expired(meta, now, limit):
    """Older than ``limit`` at this attempt (``now``, recorded last in ``history``)
    *and* at the one before it.

    One reading of a clock that was ahead (10 days: issue 11, round 2,
    finding 3) must not give a message up after a single 4yz; a clock that
    stays wrong, or a real age, is seen twice.  This costs at most one more
    retry (``retry_max``) past ``limit``.
    """
    history = meta.get("history") or ()
    before = history[-2].get("time") if len(history) >= 2 else None
    return (age(meta, now) > limit and isinstance(before, (int, float))
            and age(meta, before) > limit)


def fold(earlier, attempt):
    """Count one attempt into ``earlier``: how many, when, and results by status and code.

    Its size depends on the distinct statuses and codes seen, never on the
    number of attempts or recipients.
    """
    earlier = dict(earlier or {})
    earlier["attempts"] = earlier.get("attempts", 0) + 1
    earlier.setdefault("first_time", attempt.get("time"))
    earlier["last_time"] = attempt.get("time")
    for key, field in (("statuses", "status"), ("codes", "code")):
        counts = dict(earlier.get(key) or {})
        for result in attempt.get("results", ()):
            value = str(result.get(field))
            counts[value] = counts.get(value, 0) + 1
        earlier[key] = counts
    return earlier


def dead_letter(meta, message_id, dead, reason, now, dead_letter_of):
    """The state file of a dead letter: why, when, after how many attempts.

    It keeps no ``delivered``/``failed_recipients``: moved back to ``new/``,
    a dead letter is sent to its whole envelope, which holds exactly the
    recipients that failed.
    """
    letter = {"reason": reason, "failed_at": now, "attempts": meta.get("attempts", 0),
              "queued_at": meta.get("queued_at"),
              "first_attempt": meta.get("first_attempt"),
              "last_attempt": meta.get("last_attempt"),
              "recipients": [r.as_dict() for r in dead],
              "history": meta.get("history", []), "message_id": message_id,
              "dead_letter_of": dead_letter_of}
    if meta.get("earlier"):
        letter["earlier"] = meta["earlier"]  # the attempts before ``history``, counted
    return letter
