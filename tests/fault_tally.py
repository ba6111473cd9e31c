"""Counting for the fault scenarios, per recipient: what arrived, what the spool holds.

(tests/spool_tally.py counts whole messages for the other reliability
scenarios; a fault case needs each recipient's fate, since one message can
be sent to one recipient, deferred for another and dead-lettered for a third.)

Every message goes to its own three recipients (``a{i}@example.org``,
``b{i}@example.net``, ``c{i}@example.com``), so each RCPT and each copy the
server stored can be attributed to one message and one recipient.  A
*pair* is ``(recipient, Message-ID)``; counts are in pairs.

A pair is

* delivered: the server stored at least one copy for it (extra copies are
  ``duplicated``);
* dead: in a ``failed/`` file's envelope, its state file giving the code
  and text for that recipient and a reason;
* waiting: in ``new/``, ``cur/`` or ``deferred/``, not recorded there as
  delivered or dead-lettered;
* lost: none of these.
"""
from __future__ import annotations

import os
import re

from pyramid_txmail.queue.maildir import spool_admin

DOMAINS = {"a": "example.org", "b": "example.net", "c": "example.com"}


def recipients(i):
    """The three recipients of message ``i``."""
    return [f"{role}{i}@{domain}" for role, domain in DOMAINS.items()]


def bare(message_id):
    return (message_id or "").strip().strip("<>").strip()


def copies_by_pair(handler):
    """``{(recipient, bare Message-ID): copies}`` of what the server stored so far."""
    counts = {}
    for (addr, message_id), count in handler.copies().items():
        pair = (addr, bare(message_id))
        counts[pair] = counts.get(pair, 0) + count
    return counts


def message_bytes(message_id, rcpts, subject, size=0):
    """A plain-text message; ``size`` octets of 76-character lines as its body."""
    head = (f"From: Sender <sender@example.org>\r\nTo: {', '.join(rcpts)}\r\n"
            f"Subject: {subject}\r\nMessage-ID: {message_id}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            "Hello,\r\n.\r\n..a line that starts with dots\r\n").encode("ascii")
    line = b"0123456789" * 7 + b"abcd\r\n"
    return head + line * (size // len(line)) + b"bye\r\n"


def queue_messages(spool, batch, tag, size=0):
    """Commit one message per recipient list in ``batch``.

    Returns their Message-IDs, and ``{Message-ID: the message's bytes}``.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-")
    ids, sent = [], {}
    for i, rcpts in enumerate(batch):
        message_id = f"<{slug}-{i}@faults.example.org>"
        data = message_bytes(message_id, rcpts, tag, size)
        name = spool.write_tmp("sender@example.org", rcpts, data)
        spool.commit_tmp([name])
        ids.append(message_id)
        sent[message_id] = data
    return ids, sent


class Tally:
    """The fate of every (recipient, message) pair of ``batch`` (see the module doc)."""

    def __init__(self, spool, handler, batch, ids):
        self.spool = spool
        self.batch = batch
        self.ids = [bare(i) for i in ids]
        self.pairs = [(addr, self.ids[i]) for i, rcpts in enumerate(batch) for addr in rcpts]
        self.copies = {pair: 0 for pair in self.pairs}
        for pair, count in copies_by_pair(handler).items():
            assert pair in self.copies, f"the server got a message nobody sent: {pair}"
            self.copies[pair] = count
        self.dead, self.reasons, self.waiting = {}, {}, []
        for msg in spool_admin.messages(spool):
            message_id = bare(msg.message_id)
            if msg.state == "failed":
                given = {r.get("recipient"): r for r in msg.meta.get("recipients", ())}
                for addr in msg.toaddrs:
                    if addr in given and msg.meta.get("reason"):
                        self.dead[addr, message_id] = given[addr]
                        self.reasons[addr, message_id] = msg.meta["reason"]
            else:
                settled = set(msg.meta.get("delivered", ())) | set(
                    msg.meta.get("failed_recipients", ()))
                self.waiting += [(a, message_id) for a in msg.toaddrs if a not in settled]

    def pair(self, i, addr):
        return addr, self.ids[i]

    @property
    def total(self):
        return len(self.pairs)

    @property
    def delivered(self):
        return [p for p in self.pairs if self.copies[p]]

    @property
    def delivered_count(self):
        return len(self.delivered)

    @property
    def duplicated(self):
        return sum(max(0, n - 1) for n in self.copies.values())

    @property
    def dead_count(self):
        return len([p for p in self.pairs if p in self.dead])

    @property
    def held(self):
        return len({p for p in self.pairs if not self.copies[p]}
                   & (set(self.dead) | set(self.waiting)))

    @property
    def lost(self):
        kept = set(self.dead) | set(self.waiting)
        return [p for p in self.pairs if not self.copies[p] and p not in kept]

    def spool_text(self):
        """Every file of the spool, as text (to look for what must not be there)."""
        parts = []
        for root, _, files in os.walk(self.spool.path):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    parts.append(f.read().decode("utf-8", "replace"))
        return "\n".join(parts)
