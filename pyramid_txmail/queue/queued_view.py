"""What ``txmail-queue`` shows of one queued message, whichever backend holds it.

A mixin of the spool's :class:`~pyramid_txmail.queue.maildir.spool_admin.QueuedMessage`
and the outbox's :class:`~pyramid_txmail.queue.sql.admin.SqlMessage`: both carry
``name``, ``state``, ``queued_at``, ``fromaddr``, ``toaddrs``, ``headers`` (decoded
``(name, value)`` pairs), ``meta`` (the state dict) and ``problem``; each backend says
only how its state is labelled (:meth:`label`) and where its next retry is kept
(:meth:`due`), so ``list --json`` has one shape.
"""
from __future__ import annotations


class QueuedView:
    def header(self, name):
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def subject(self):
        return self.header("Subject")

    @property
    def message_id(self):
        return self.meta.get("message_id") or self.header("Message-ID")

    @property
    def attempts(self):
        attempts = self.meta.get("attempts")
        return attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0

    @property
    def last_error(self):
        """The dead-letter reason, else what went wrong in the last attempt."""
        if self.meta.get("reason"):
            return self.meta["reason"]
        history = self.meta.get("history") or []
        if history and isinstance(history[-1], dict):
            failed = [r for r in history[-1].get("results", ())
                      if isinstance(r, dict) and r.get("status") != "sent"]
            if failed:
                return "; ".join(f"{r.get('recipient')}: {r.get('code') or '-'} "
                                 f"{r.get('text') or ''}".strip() for r in failed)
        return self.problem

    def label(self):
        """The state's name for people and ``--json`` (``queued``, ``in_progress``...)."""
        raise NotImplementedError

    def due(self):
        """Epoch seconds of the next retry as stored, or None."""
        raise NotImplementedError

    def as_dict(self, now):
        return {"id": self.name, "state": self.state, "label": self.label(),
                "queued_at": self.queued_at, "age": round(now - self.queued_at, 3),
                "from": self.fromaddr, "to": list(self.toaddrs),
                "subject": self.subject, "message_id": self.message_id,
                "attempts": self.attempts, "last_error": self.last_error,
                "next_attempt": self.due() if self.state == "deferred" else None}
