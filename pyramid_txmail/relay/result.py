"""Per-recipient delivery results, shared by transports, the processor and events."""
from __future__ import annotations

import dataclasses

SENT = "sent"
TEMPORARY = "temporary"
PERMANENT = "permanent"


@dataclasses.dataclass(frozen=True)
class RecipientResult:
    """What happened to one envelope recipient in one attempt.

    ``code`` is the SMTP reply code (``None`` when no reply was had, e.g. a
    dropped connection) and ``text`` the server's text or our reason.
    ``relay`` is the relay (``host:port``) whose answer this is -- with
    failover per message, recipients of one message may end at different
    relays -- or ``None`` when no relay was involved (no session could be
    set up, the sendmail binary, a development delivery).  Pass it (and a
    subclass's own fields, such as ``SendmailResult.exit_status``) by keyword.
    """

    recipient: str
    status: str  # SENT, TEMPORARY or PERMANENT
    code: int | None = None
    text: str = ""
    relay: str | None = None

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one attempt to deliver one message to its recipients."""

    message_id: str | None
    results: tuple = ()

    def _with(self, status):
        return [r for r in self.results if r.status == status]

    @property
    def sent(self):
        return self._with(SENT)

    @property
    def temporary(self):
        return self._with(TEMPORARY)

    @property
    def permanent(self):
        return self._with(PERMANENT)

    @property
    def ok(self):
        """True when every recipient accepted the message."""
        return all(r.status == SENT for r in self.results)

    def summary(self):
        """One line for logs: ``a@x: 250 ok; b@y: 550 no such user``."""
        return "; ".join(f"{r.recipient}: {r.code or '-'} {r.text}".strip()
                         for r in self.results)


def _one_or_all(values):
    values = list(dict.fromkeys(v for v in values if v is not None))
    return None if not values else values[0] if len(values) == 1 else values


def log_fields(message_id, attempt, results):
    """The ``extra=`` of every delivery outcome log line (sent, deferred, dead letter;
    by the processor and by direct delivery alike), so that a JSON log line
    (``mail.log_format = json``) always carries the same fields: Message-ID, the
    attempt's number (1 for the first: it is no less an attempt for having left
    nothing recorded), and the recipient, reply code and relay -- one value, or the
    list when they differ."""
    return {"message_id": message_id, "attempt": attempt,
            "recipient": _one_or_all(r.recipient for r in results),
            "code": _one_or_all(r.code for r in results),
            "relay": _one_or_all(getattr(r, "relay", None) for r in results)}
