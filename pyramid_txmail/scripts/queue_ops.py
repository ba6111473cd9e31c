"""``txmail-queue`` for a person at a terminal: list filters and pages, bulk retry and
purge with progress, ``watch``.

Kept apart from :mod:`pyramid_txmail.scripts.queue` (the commands' plumbing)
because it is about *how many*: a backlog of 100,000 dead letters must be
retried or purged without holding 100,000 messages in memory (each one is
read, acted on and dropped: :func:`iter_messages`), and listed a page at a
time.  What a person sees differs from what a pipe gets: a progress bar and a
table on a TTY, one summary line and plain text otherwise (``NO_COLOR`` is
honoured); ``--json`` never changes.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

from ..queue.interface import Refused, Vanished
from . import queue_text
from .queue_text import clean

#: ``list`` on a TTY shows this many rows unless --limit says otherwise.
PAGE_SIZE = 50


def is_tty(stream):
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def colour(stream):
    """ANSI colour only on a TTY, and never with NO_COLOR set (https://no-color.org)."""
    return is_tty(stream) and not os.environ.get("NO_COLOR")


# -- reading many messages ---------------------------------------------------------

def iter_messages(queue, states):
    """The messages of ``states`` one at a time when the backend can (a spool reads
    its directories as a stream), else its list (an SQL outbox reads the rows without
    their bodies)."""
    each = getattr(queue, "iter_messages", None)
    return each(states) if each is not None else iter(queue.messages(states))


def count(queue, state, now):
    """How many messages ``state`` holds, for a progress bar's total: a spool's
    directory is counted as a stream (``status`` would list every name and its time,
    which grows with a 100,000-message backlog); other backends' ``status``."""
    spool = getattr(queue, "spool", None)
    if spool is not None and hasattr(spool, "iter_names") and state != "deferred":
        return sum(1 for _ in spool.iter_names(state))
    return queue.status(now)["states"].get(state, {}).get("count", 0)


def _domain_folded(address):
    local, at, domain = str(address or "").strip().strip("<>").rpartition("@")
    return (local, domain.lower()) if at else (domain, "")


def _bare(message_id):
    return str(message_id or "").strip().strip("<>").strip()


def message_filter(args, now):
    """A predicate over messages for ``list``'s filters, all of them ANDed:
    ``--to`` (a recipient, its domain compared case-insensitively),
    ``--message-id`` (with or without <>), ``--older-than``/``--newer-than``
    (since it was queued) and ``--reason`` (a substring of the last error,
    case-insensitive)."""
    tests = []
    if getattr(args, "to", None):
        wanted = _domain_folded(args.to)
        tests.append(lambda m: any(_domain_folded(a) == wanted for a in m.toaddrs))
    if getattr(args, "message_id", None):
        wanted_id = _bare(args.message_id)
        tests.append(lambda m: _bare(m.message_id) == wanted_id)
    if getattr(args, "older_than", None) is not None:
        tests.append(lambda m: now - m.queued_at >= args.older_than)
    if getattr(args, "newer_than", None) is not None:
        tests.append(lambda m: now - m.queued_at < args.newer_than)
    if getattr(args, "reason", None):
        needle = args.reason.lower()
        tests.append(lambda m: needle in str(m.last_error or "").lower())
    return lambda m: all(test(m) for test in tests)


def _candidates(queue, states, args, now):
    """The messages to filter: an SQL outbox narrows them in its query by age and
    Message-ID first (``filtered_messages``); the predicate still checks every one."""
    narrow = getattr(queue, "filtered_messages", None)
    if narrow is None:
        return iter_messages(queue, states)
    older, newer = getattr(args, "older_than", None), getattr(args, "newer_than", None)
    return iter(narrow(states, queued_before=None if older is None else now - older,
                       queued_after=None if newer is None else now - newer,
                       message_id=getattr(args, "message_id", None)))


def page_bounds(args, tty):
    """``(offset, limit)`` of ``list``: --page N counts pages of --limit (or
    :data:`PAGE_SIZE`); without either, a TTY gets one page and a pipe everything."""
    limit = args.limit
    if args.page is not None:
        size = limit or PAGE_SIZE
        return (args.page - 1) * size, size
    if limit is None and tty and not args.json:
        limit = PAGE_SIZE
    return args.offset or 0, limit


def select(queue, states, args, now, tty):
    """``(page, total matched, offset)``: the filters applied while reading, and only
    the page's messages kept (the others are counted)."""
    keep = message_filter(args, now)
    offset, limit = page_bounds(args, tty)
    page, total = [], 0
    for msg in _candidates(queue, states, args, now):
        if not keep(msg):
            continue
        if total >= offset and (limit is None or len(page) < limit):
            page.append(msg)
        total += 1
    return page, total, offset


def more_line(shown, total, offset):
    """The line under a partial page: what was shown and how to see the rest."""
    if offset == 0 and shown >= total:
        return None
    if not shown:
        return f"no messages past --offset {offset} ({total} matched)"
    line = f"showing {offset + 1}-{offset + shown} of {total}"
    if offset + shown < total:
        line += f"; the next page: --offset {offset + shown} (or --page, --limit)"
    return line


# -- acting on many ----------------------------------------------------------------

class Progress:
    """A bar on stderr when it is a TTY; nothing otherwise (the caller prints a summary)."""

    def __init__(self, verb, total, stream=None):
        self.verb, self.total, self.done = verb, max(total, 0), 0
        self.stream = stream or sys.stderr
        self.on = is_tty(self.stream)
        self._last = 0.0

    def step(self, n=1):
        self.done += n
        if self.on and (time.monotonic() - self._last > 0.1 or self.done >= self.total):
            self._last = time.monotonic()
            total = max(self.total, self.done)
            width = 30
            filled = width * self.done // total if total else width
            self.stream.write(f"\r{self.verb} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{total}")
            self.stream.flush()

    def close(self):
        if self.on:
            self.stream.write("\n")
            self.stream.flush()


class Interrupted(Exception):
    """Ctrl-C in the middle of an operation over many messages: how far it got.

    Each message is moved or removed by one atomic rename or unlink (or one
    statement), so the ones counted are done and the others untouched: the
    operator learns both, and that running it again does the rest."""

    def __init__(self, verb_past, done, total, vanished=0, refused=0):
        self.verb_past, self.done, self.total = verb_past, done, total
        self.vanished, self.refused = vanished, refused
        extra = (f"; {vanished} vanished" if vanished else "") + (
            f"; {refused} refused" if refused else "")
        super().__init__(f"{verb_past} {done} of {total}{extra} before the interruption; "
                         "each one is whole and the rest untouched (run it again for them)")


PAST = {"retry": "retried", "purge": "removed", "release": "released"}


@contextlib.contextmanager
def _one_step():
    """SIGINT held back while one message is acted on and counted (main thread only:
    the mask is per thread); it is delivered, as KeyboardInterrupt, right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


def counted(targets, verb_past):
    """``targets`` one at a time, for a loop over the ids given: the loop's body runs
    with SIGINT held back (:func:`_one_step`), so Ctrl-C lands between two messages
    and says how many of them were handled (:class:`Interrupted`)."""
    handled = 0
    try:
        for msg in targets:
            with _one_step():
                yield msg
                handled += 1
    except KeyboardInterrupt:
        raise Interrupted(verb_past, handled, len(targets)) from None


def bulk(queue, msgs, act, verb, total, log, prog):
    """Apply ``act`` to each message of the iterator ``msgs``: ``(done, vanished,
    refused)``.  A message another process took meanwhile is counted as vanished, one
    the action does not apply to is reported on stderr; nothing is kept but counts."""
    progress = Progress(verb, total)
    done = vanished = refused = 0
    try:
        for msg in msgs:
            refusal = gone = None
            with _one_step():  # Ctrl-C waits for the count: "N of M" is exact
                try:
                    outcome = act(msg)
                except Vanished:
                    vanished += 1
                    gone = True
                except Refused as exc:
                    refused += 1
                    refusal = exc
                else:
                    done += 1
            if refusal is not None:
                print(f"{prog}: cannot {verb} {msg.state}/{clean(msg.name)}: "
                      f"{clean(refusal)}", file=sys.stderr)
            elif not gone:
                log.info("%s %s/%s (%s): %s", verb, msg.state, msg.name, msg.message_id,
                         outcome)
            progress.step()
    except KeyboardInterrupt:  # between two messages, or inside one atomic step
        raise Interrupted(PAST.get(verb, verb), done, max(total, progress.done),
                          vanished, refused) from None
    finally:
        progress.close()
    return done, vanished, refused


def summary(verb_past, done, seen, vanished, refused=0):
    """``retried 100000 of 100000; 0 vanished`` (and how many were refused, if any)."""
    line = f"{verb_past} {done} of {seen}; {vanished} vanished"
    return line + (f"; {refused} refused" if refused else "")


# -- status, watch ---------------------------------------------------------------------

def status_table(info, bold=False):
    """``status`` on a TTY: a table with a header row, failed and stuck mail in bold."""
    b, r = ("\x1b[1m", "\x1b[0m") if bold else ("", "")
    lines = [f"{b}queue{r} {clean(info['spool'])}",
             f"{b}{'STATE':<12} {'DIR':<10} {'COUNT':>7}  {'OLDEST':>9}  NEXT RETRY{r}"]
    for state, row in info["states"].items():
        count = row["count"]
        oldest = queue_text.age(row["oldest_age"]) if count else ""
        extra = ""
        if state == "deferred" and info.get("next_retry") is not None:
            wait = info["next_retry_in"]
            extra = (f"{queue_text.when(info['next_retry'])} "
                     + ("(due now)" if wait <= 0 else f"(in {queue_text.age(wait)})"))
        hot = bold and count and state in ("failed", "cur")
        lines.append(f"{b if hot else ''}{row['label']:<12} {state + '/':<10} {count:>7}"
                     f"{r if hot else ''}  {oldest:>9}  {extra}".rstrip())
    lines.append(f"oldest message: {queue_text.age(info['oldest_age'])} "
                 "(tmp/ and prepared/ not counted)")
    return lines


def watch(queue, interval, render, count=None, stream=None):
    """Print the status every ``interval`` seconds until Ctrl-C (or ``count`` times):
    on a TTY the screen is redrawn, in a pipe each status follows the last."""
    stream = stream or sys.stdout
    tty = is_tty(stream)
    shown = 0
    try:
        while count is None or shown < count:
            now = time.time()
            lines = render(queue.status(now))
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
            head = f"txmail-queue watch, every {interval:g}s (Ctrl-C to stop) -- {stamp}"
            text = "\n".join([head] + lines)
            stream.write(("\x1b[H\x1b[2J" + text + "\n") if tty else
                         (text + "\n\n" if count != 1 else text + "\n"))
            stream.flush()
            shown += 1
            if count is None or shown < count:
                time.sleep(interval)
    except KeyboardInterrupt:
        stream.write("\n")
        stream.flush()
    return 0
