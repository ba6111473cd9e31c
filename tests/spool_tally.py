"""Count, for real, where each message of a reliability scenario ended up.

A scenario knows the Message-IDs it committed.  :func:`tally` looks for each
one at the SMTP servers (what they received, per recipient) and in the spool
(which state directory holds a file with that Message-ID, and whether a dead
letter has its reason), and returns the counts that
:func:`tests.reliability.record` reports.  Nothing is taken from the code
under test's own bookkeeping: the files and the servers are the truth.
"""
from __future__ import annotations

import collections
import dataclasses
import email.parser
import email.policy
import os

from pyramid_txmail.queue.maildir.spool import Entry, PoisonMessage

#: States in which a message is still waiting to be sent (not lost).
WAITING = ("new", "cur", "deferred")

_parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def message_id_of(data):
    """The Message-ID of raw message bytes (``None`` when it has none)."""
    value = _parser.parsebytes(data).get("Message-ID")
    return " ".join(str(value).split()) if value else None


@dataclasses.dataclass
class Tally:
    messages: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    held: int = 0
    #: Message-ID -> "delivered", a spool state ("deferred", "failed", ...) or "lost"
    where: dict = dataclasses.field(default_factory=dict)
    #: Message-ID -> the reasons found in its state file (history texts, dead-letter reason)
    reasons: dict = dataclasses.field(default_factory=dict)

    def counts(self):
        return {"messages": self.messages, "delivered": self.delivered,
                "duplicated": self.duplicated, "lost": self.lost, "held": self.held}

    def add(self, other):
        for key, value in other.counts().items():
            setattr(self, key, getattr(self, key) + value)
        self.where.update(other.where)
        self.reasons.update(other.reasons)


def received(servers):
    """``Counter((Message-ID, recipient))`` of every copy the servers accepted."""
    copies = collections.Counter()
    for server in servers:
        for message in server.messages:
            for recipient in message.rcpt_tos:
                copies[message_id_of(message.data), recipient] += 1
    return copies


def reasons_of(meta):
    """Every reason text in a state file: per-attempt results and the dead-letter reason."""
    texts = [meta.get("reason") or ""]
    for attempt in meta.get("history", ()):
        texts += [r.get("text") or "" for r in attempt.get("results", ())]
    return [t for t in texts if t]


def spool_index(spool):
    """``{Message-ID: (state, state file)}`` for every message file in the spool."""
    found = {}
    for state in WAITING + ("failed",):
        for name in spool.names(state):
            try:
                _, _, data = spool.read(Entry(spool, state, name))
            except (PoisonMessage, FileNotFoundError):
                continue
            head = data if isinstance(data, bytes) else data.head
            found[message_id_of(head)] = (state, spool.read_meta(name))
    return found


def tally(spool, servers, message_ids):
    """Where each of ``message_ids`` is: delivered, waiting, dead-lettered or lost."""
    copies = received(servers)
    index = spool_index(spool) if spool is not None and os.path.isdir(spool.path) else {}
    result = Tally(messages=len(message_ids))
    for message_id in message_ids:
        got = {rcpt: n for (mid, rcpt), n in copies.items() if mid == message_id}
        state, meta = index.get(message_id, (None, {}))
        if meta:
            result.reasons[message_id] = reasons_of(meta)
        if got:
            result.delivered += 1
            result.duplicated += sum(n - 1 for n in got.values())
            result.where[message_id] = "delivered"
        elif state in WAITING or (state == "failed" and meta.get("reason")):
            result.held += 1
            result.where[message_id] = state
        else:
            result.lost += 1
            result.where[message_id] = "lost"
    return result
