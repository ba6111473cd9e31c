"""How ``txmail-queue`` prints queue facts for a person (``--json`` is the other way).

Everything taken from a message or the queue (file names, addresses, headers,
server replies, the body) passes through :func:`clean`: control characters and bidirectional
overrides are shown as escapes, so a hostile Subject cannot move the cursor,
recolour or rewrite the operator's terminal.  Times are UTC ISO 8601, ages
like ``2h 5m``.
"""
from __future__ import annotations

import time

from ..processor.pass_stats import format_duration
from ..queue.queue_state import epoch as usable_time
from ..queue.states import ALL_STATES, LABELS
from ..util.printable import printable

def clean(text, one_line=True):
    """Text from a message or the spool, safe to print; ``None`` is ``-``
    (:func:`pyramid_txmail.util.printable.printable`, the one helper for all output)."""
    return printable(text, one_line)


def when(epoch):
    """A state file's time as UTC; a value that is no time is shown as it is."""
    if epoch is None:
        return "-"
    if usable_time(epoch) is None:  # NaN, 1e20, "soon": say so, never raise
        return f"{epoch!r} (not a time)"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def age(seconds):
    return "-" if seconds is None else format_duration(max(seconds, 0))


def short(text, width):
    text = clean(text)
    return text if len(text) <= width else text[:width - 3] + "..."


def _addresses(values):
    return ", ".join(map(str, values)) if isinstance(values, (list, tuple)) else str(values)


def status_lines(info):
    """``status``: one line per state, then the oldest message overall.

    The first line names what was looked at: the spool's directory, or the SQL
    outbox's URL (its password hidden by the backend) -- never "spool:" for a
    table.  (The JSON keeps ``spool`` for old readers, with ``queue`` beside it.)
    """
    sql = info.get("backend") == "sql"
    lines = [f"queue: {clean(info['queue'])} (SQL outbox)" if sql
             else f"spool: {clean(info['spool'])}"]
    for state in (s for s in ALL_STATES if s in info["states"]):  # the backend's own
        if sql and state in ("tmp", "prepared"):  # spool directories a table has not
            continue
        row = info["states"][state]
        line = (f"  {row['label']:<12} {row['count']:>6}" if sql else
                f"  {row['label']:<12} {state + '/':<10} {row['count']:>6}")
        if row["count"]:
            line += f"   oldest {age(row['oldest_age'])}"
        if state == "deferred" and info["next_retry"] is not None:
            wait = info["next_retry_in"]
            line += (f"   next retry {when(info['next_retry'])} "
                     + ("(due now)" if wait <= 0 else f"(in {age(wait)})"))
        lines.append(line)
    if sql and "delivered" in info:
        lines.append(f"  {'delivered':<12} {info['delivered']:>6}   (kept mail.keep_delivered)")
    lines.append(f"oldest message: {age(info['oldest_age'])}"
                 + ("" if sql else " (tmp/ and prepared/ not counted)"))
    return lines


def list_lines(found, states, now):
    """``list``: a header line and one line per message."""
    if not found:
        return [f"no messages in {', '.join(s + '/' for s in states)}"]
    width = max(len(clean(m.name)) for m in found)
    lines = [f"{'ID':<{width}}  {'STATE':<11} {'AGE':>7} {'TRIES':>5}  "
             "FROM -> TO | SUBJECT | LAST ERROR"]
    for m in found:
        to = clean(m.toaddrs[0]) if m.toaddrs else "-"
        if len(m.toaddrs) > 1:
            to += f" (+{len(m.toaddrs) - 1})"
        lines.append(f"{clean(m.name):<{width}}  {LABELS[m.state]:<11} "
                     f"{age(now - m.queued_at):>7} {m.attempts:>5}  "
                     f"{clean(m.fromaddr)} -> {to} | {short(m.subject, 50)} | "
                     f"{short(m.last_error, 100)}")
    return lines


def _facts(msg, now):
    """The ``key: value`` rows at the top of ``show``."""
    meta = msg.meta
    rows = [("id", msg.name), ("state", f"{LABELS[msg.state]} ({msg.state}/)"),
            ("file", getattr(msg, "path", None)),
            ("queued", f"{when(msg.queued_at)} ({age(now - msg.queued_at)} ago)"),
            ("message-id", msg.message_id), ("envelope from", msg.fromaddr),
            ("envelope to", ", ".join(msg.toaddrs) or None), ("attempts", str(msg.attempts))]
    for key, label in (("first_attempt", "first attempt"), ("last_attempt", "last attempt")):
        if meta.get(key):
            rows.append((label, when(meta[key])))
    if msg.state == "deferred" and meta.get("next_attempt"):
        rows.append(("next attempt", when(meta["next_attempt"])))
    earlier = meta.get("earlier")
    if isinstance(earlier, dict) and earlier.get("attempts"):
        counts = ", ".join(f"{k} {v}" for k, v in sorted((earlier.get("codes") or {}).items()))
        rows.append(("earlier", f"{earlier['attempts']} attempts from "
                     f"{when(earlier.get('first_time'))} to {when(earlier.get('last_time'))} "
                     f"(codes: {counts}); the last ones are listed below"))
    if meta.get("delivered"):
        rows.append(("delivered to", _addresses(meta["delivered"])))
    if meta.get("failed_recipients"):
        rows.append(("dead-lettered", _addresses(meta["failed_recipients"])))
    if meta.get("failed_at"):
        rows.append(("failed at", when(meta["failed_at"])))
    if meta.get("dead_letter_of") and meta["dead_letter_of"] != msg.name:
        rows.append(("dead letter of", meta["dead_letter_of"]))
    if meta.get("retried_after"):
        rows.append(("retried after", meta["retried_after"]))
    rows.append(("reason" if meta.get("reason") else "last error", msg.last_error))
    return [f"{key + ':':<15} {clean(value)}" for key, value in rows]


def _attempt_lines(history):
    """Each attempt's time, then each recipient's status, reply code and text,
    and the relay that answered (failover per message: they may differ)."""
    lines = []
    for number, attempt in enumerate(history if isinstance(history, list) else [], 1):
        results = attempt.get("results") if isinstance(attempt, dict) else None
        if results is not None and isinstance(attempt.get("attempt"), int):
            number = attempt["attempt"]  # the earlier ones are only counted
        for i, r in enumerate(r for r in results or () if isinstance(r, dict)):
            lead = f"  {number:>2}. {when(attempt.get('time'))}" if i == 0 else " " * 26
            via = f" [via {clean(r['relay'])}]" if r.get("relay") else ""
            lines.append(f"{lead}  {clean(r.get('recipient'))}: {clean(r.get('status'))} "
                         f"{clean(r.get('code'))} {clean(r.get('text'))}{via}")
    return lines


def show_lines(msg, now, body=None, with_body=False):
    """``show``: facts, headers, attempts, and the body when asked for."""
    lines = _facts(msg, now)
    lines += ["", "headers:"] + [f"  {clean(name)}: {clean(value)}"
                                 for name, value in msg.headers]
    attempts = _attempt_lines(msg.meta.get("history"))
    if attempts:
        lines += ["", "attempts:"] + attempts
    if with_body:
        text = "(the file is gone)" if body is None else body.decode("utf-8", "replace")
        lines += ["", "body:", clean(text.replace("\r\n", "\n"), one_line=False)]
    return lines
