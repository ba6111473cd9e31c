"""What an operator does to a spool: look into it, requeue, clear out old mail.

The library half of ``txmail-queue`` (the console script only parses
arguments and prints).  It is safe next to running ``txmail-qp`` processes:
reading never takes a message, and every change is one ``rename`` or
``unlink`` of one file -- the same atomic step the processor claims with, so
exactly one of the two wins.  A file that vanished in between (claimed,
delivered, or purged by someone else) is reported as :class:`Vanished`, never
half-handled.  State files (``meta/NAME.json``) are only read and removed,
never rewritten here: a processor may be writing the one of a message it
claimed, and a stale copy written over it could send a recipient twice.

Only the header block of a message is read for listing (a large attachment
costs nothing); :func:`read_body` reads the rest on request.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time

from . import claims
from ...compose.reading import header_items
from ...util.regular_files import NotRegularFile, open_regular_file
from ..queue_state import epoch
from ..queued_view import QueuedView
from .schedule import message_name
from .spool import Entry, PoisonMessage, enqueued_at, fsync_dir
from .spoolscan import scan
from ..interface import Ambiguous, NotFound, Refused, Vanished  # noqa: F401 (public here)
from ..states import (  # noqa: F401 (public here too)
    ALIASES, ALL_STATES, LABELS, PURGEABLE, QUEUE_STATES, purge_reason, state_of)

#: How much of a file is read to find the end of its header block.
HEAD_LIMIT = 256 * 1024

_HEADERS_END = re.compile(rb"\r?\n\r?\n")


def _read_head(path):
    """The header block of a file (up to :data:`HEAD_LIMIT` bytes); None if it is gone.

    :class:`NotRegularFile` for a FIFO, symlink...: never waited on or followed.
    """
    try:
        with open_regular_file(path) as f:
            data = b""
            while len(data) < HEAD_LIMIT:
                chunk = f.read(16384)
                if not chunk:
                    break
                data += chunk
                match = _HEADERS_END.search(data)
                if match:
                    return data[:match.start()] + b"\n\n"
            return data
    except FileNotFoundError:
        return None


def _parse_headers(head):
    """``[(name, value)]`` decoded for reading (RFC 2047 words, folding undone).

    The email package is imported here, for txmail-queue's listings: the processor
    imports this module with its queue, and its start-up must not pay for it."""
    import email.policy
    from email.parser import BytesHeaderParser

    parsed = BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    return [(name, " ".join(value.split())) for name, value in header_items(parsed)]


@dataclasses.dataclass
class QueuedMessage(QueuedView):
    """One message file as an operator sees it: envelope, headers, state file."""

    spool: object
    state: str
    name: str
    queued_at: float
    fromaddr: str | None
    toaddrs: tuple
    headers: list
    meta: dict
    problem: str | None = None  # why a processor would dead-letter it as poison
    filename: str | None = None  # in deferred/: DUE~NAME (see schedule.py)

    @property
    def path(self):
        return os.path.join(self.spool.path, self.state, self.filename or self.name)

    @property
    def last_error(self):
        """As every backend's, but a corrupt state file is said before the last attempt."""
        if not self.meta.get("reason") and self.meta.get("corrupt_meta"):
            why = self.meta.get("meta_problem") or "not valid JSON"
            return f"the state file meta/{self.name}.json is {why}"
        return QueuedView.last_error.fget(self)

    @property
    def settled_at(self):
        """When it entered its state, for ``purge``: failed_at of a dead letter, else queued."""
        failed_at = epoch(self.meta.get("failed_at"))
        if self.state == "failed" and failed_at is not None:
            return float(failed_at)
        return self.queued_at

    def label(self):
        return LABELS[self.state]

    def due(self):
        return epoch(self.meta.get("next_attempt"))


def queued_at(spool, state, name, filename=None):
    """The enqueue time carried in the Maildir name; the file's mtime for other names."""
    key = enqueued_at(name)
    if key is not None:
        return key
    try:
        return os.lstat(os.path.join(spool.path, state, filename or name)).st_mtime
    except FileNotFoundError:
        return time.time()


def files(spool, state):
    """``[(name, filename)]`` of a state: they differ in ``deferred/`` (``DUE~NAME``)."""
    if state == "deferred":
        return [(s.name, s.filename) for s in spool.scheduled()]
    return [(name, name) for name in spool.names(state)]


def _read_envelope(path):
    """``(fromaddr, toaddrs, header block, problem)`` as the processor reads them;
    ``None`` when the file is gone.  The envelope is read whole, however long
    (thousands of recipients); of the header block (which may be many
    megabytes in a hand-made file), the first :data:`HEAD_LIMIT` octets."""
    try:
        with open_regular_file(path) as f:
            try:
                layout = scan(f)
                return (layout.fromaddr, layout.toaddrs, layout.head(f, HEAD_LIMIT) + b"\n",
                        None)
            except PoisonMessage as exc:
                problem = f"poison: {exc}"
    except FileNotFoundError:
        return None
    except NotRegularFile as exc:  # a FIFO, symlink...: never waited on or followed
        return None, (), b"", f"poison: {exc.strerror}"
    head = _read_head(path)
    return None if head is None else (None, (), head, problem)


def inspect(spool, state, name, filename=None):
    """The :class:`QueuedMessage` of ``state/name``; ``None`` when the file is gone.

    ``filename`` is the name on disk when it differs (``deferred/DUE~NAME``);
    without it a deferred message is looked up by its name.
    """
    if filename is None:
        filename = spool.deferred_file(name) if state == "deferred" else name
    found = _read_envelope(os.path.join(spool.path, state, filename))
    if found is None:
        return None
    fromaddr, toaddrs, head, problem = found
    try:
        headers = _parse_headers(head)
    except Exception as exc:
        headers, problem = [], problem or f"unparsable header block: {exc}"
    meta = spool.read_meta(name) if state not in ("tmp", "prepared") else {}
    return QueuedMessage(spool, state, name, queued_at(spool, state, name, filename), fromaddr,
                         tuple(toaddrs), headers, meta if isinstance(meta, dict) else {},
                         problem, filename)


def messages(spool, states=QUEUE_STATES):
    """Every message in ``states``, oldest first within a state.

    A message moving while the states are read (new → cur → gone) is shown
    once, in the last state it was seen in.
    """
    found = {}
    for state in states:
        for name, filename in files(spool, state):
            msg = inspect(spool, state, name, filename)
            if msg is not None:
                found.pop(name, None)
                found[name] = msg
    return sorted(found.values(), key=lambda m: (states.index(m.state), m.queued_at, m.name))


def iter_messages(spool, states=QUEUE_STATES):
    """The messages of ``states`` one at a time, for a backlog too large to hold
    (``txmail-queue retry --all-failed`` over 100,000 dead letters): directories are
    read as a stream (:meth:`~pyramid_txmail.queue.maildir.spool.Spool.iter_names`,
    oldest first within each batch).  Unlike :func:`messages`, a message moving
    between two states while they are read may come twice."""
    for state in states:
        pairs = (files(spool, state) if state == "deferred"
                 else ((n, n) for n in spool.iter_names(state)))
        for name, filename in pairs:
            msg = inspect(spool, state, name, filename)
            if msg is not None:
                yield msg


def status(spool, now=None):
    """Counts and oldest age per state, the earliest retry among deferred mail.

    The top level has one integer count per state under its label
    (``queued``, ``in_progress``, ``deferred``, ``failed``, ``tmp``);
    ``oldest_age`` is over every state but ``tmp/`` (uncommitted writes).
    """
    now = time.time() if now is None else now
    result = {"spool": spool.path, "queue": spool.path, "backend": "spool", "time": now,
              "states": {}}
    oldest = None
    for state in ALL_STATES:
        names = files(spool, state)
        times = [queued_at(spool, state, n, f) for n, f in names]
        first = min(times) if times else None
        result[LABELS[state]] = len(names)
        result["states"][state] = {"label": LABELS[state], "count": len(names),
                                   "oldest_age": None if first is None
                                   else round(now - first, 3)}
        if first is not None and state not in ("tmp", "prepared"):
            oldest = first if oldest is None else min(oldest, first)
    result["oldest_age"] = None if oldest is None else round(now - oldest, 3)
    # from the names in deferred/: only the earliest one's state file is read
    due, earliest = spool.retry_summary(now)
    result["next_retry"] = earliest
    result["next_retry_in"] = None if earliest is None else round(earliest - now, 3)
    result["deferred_due"] = due
    return result


def _bare_message_id(text):
    return text.strip().strip("<>").strip()


def find(spool, ident):
    """The one message ``ident`` names: its file name, a unique prefix, or its Message-ID.

    ``STATE/NAME`` is accepted too.  Raises :class:`NotFound` or
    :class:`Ambiguous` (with the candidates).
    """
    ident = ident.strip()
    head, sep, tail = ident.partition("/")
    name = message_name(tail if sep and head in ALL_STATES else ident)  # ls deferred/ too
    if not name:
        raise NotFound("an empty id matches nothing")
    # names first: only a Message-ID search has to open the files
    located = {n: (state, f) for state in ALL_STATES for n, f in files(spool, state)}
    candidates = ([n for n in located if n == name]
                  or [n for n in located if n.startswith(name) and "/" not in name])
    matches = [m for m in (inspect(spool, located[n][0], n, located[n][1])
                           for n in candidates) if m]
    kind = "file name prefix"
    if not matches:
        wanted = _bare_message_id(ident)
        matches = [m for m in messages(spool, ALL_STATES)
                   if any(_bare_message_id(v) == wanted for v in
                          (m.meta.get("message_id") or "", m.header("Message-ID") or "") if v)]
        kind = "Message-ID"
    if not matches:
        raise NotFound(f"no message in {spool.path} has the id, file name prefix or "
                       f"Message-ID {ident!r}")
    if len(matches) > 1:
        raise Ambiguous(f"{len(matches)} messages match the {kind} {ident!r}; "
                        "give a longer file name prefix", matches)
    return matches[0]


def retry(spool, msg):
    """Put a dead letter or a deferred message back into ``new/``, due now.

    Returns a sentence saying what was done.  A dead letter is then sent
    afresh to its envelope (the processor resets the state of a message whose
    state file has ``failed_at``); a deferred message keeps its attempts and
    its queue time, so ``mail.max_queue_time`` still counts from when it was queued.
    """
    if msg.state == "cur":
        raise Refused("it is being sent right now (claimed by a processor in cur/); "
                      "it will be removed, deferred or dead-lettered when that attempt "
                      "ends -- retry it then.  If its processor died, `release` puts "
                      "it back into new/ (release --stale: every stale claim)")
    if msg.state in ("tmp", "prepared"):
        raise Refused(f"it is still being committed ({msg.state}/), it is not queued yet; "
                      "txmail-qp resolves what a crash left there after mail.commit_grace")
    if msg.state == "new":
        return "already queued in new/; nothing to do"
    try:
        spool.move(Entry(spool, msg.state, msg.filename or msg.name), "new")
    except FileNotFoundError:
        raise Vanished(f"{msg.state}/{msg.name} is gone: a processor or another "
                       "txmail-queue took it meanwhile") from None
    return f"moved from {msg.state}/ to new/; the next txmail-qp pass sends it"


def purge_candidates(spool, state, older_than=None, now=None):
    """Messages of ``state`` settled at least ``older_than`` seconds ago (all if None).

    A dead letter's age counts from ``failed_at`` (when it failed, not when
    it was first queued, which may be days earlier); other messages' from
    the enqueue time.
    """
    if state in ("new", "cur"):
        raise Refused(purge_reason(state, older_than, True))
    now = time.time() if now is None else now
    return [m for m in messages(spool, (state,))
            if older_than is None or now - m.settled_at >= older_than]


def purge(spool, msg):
    """Remove one message and its state file for good."""
    if msg.state in ("new", "cur"):
        raise Refused(purge_reason(msg.state, None, True))
    try:
        os.unlink(msg.path)  # a symlink itself goes, never its target
    except FileNotFoundError:
        raise Vanished(f"{msg.state}/{msg.name} is gone: a processor or another "
                       "txmail-queue took it meanwhile") from None
    except IsADirectoryError:
        try:
            os.rmdir(msg.path)
        except OSError as exc:
            raise Refused(f"it is a directory, not a message file, and cannot be removed "
                          f"as one ({exc.strerror}); look at it and remove it by hand") \
                from None
    spool.drop_meta(msg.name)


def release(spool, msg, claim_timeout, force=False, now=None):
    """Put a claim (``cur/``) back into ``new/``; returns a sentence saying what was done.

    Refused while its processor may still be sending it -- the claim's lock
    is held by a live process, or its heartbeat is younger than
    ``claim_timeout`` -- unless ``force``: a forced release while the
    message is in flight can send it twice.
    """
    if msg.state != "cur":
        raise Refused(f"it is not claimed (it is in {msg.state}/); release applies to "
                      "messages in cur/ (in_progress)")
    now = time.time() if now is None else now
    try:
        held = claims.release(msg.path, os.path.join(spool.path, "new", msg.name),
                              claim_timeout, now, force)
    except claims.ClaimBusy as exc:
        raise Refused(f"{exc}; --force releases it anyway, and may send it twice") from None
    except FileNotFoundError:
        raise Vanished(f"cur/{msg.name} is gone: its processor finished with it, or "
                       "another txmail-queue released it meanwhile") from None
    fsync_dir(os.path.join(spool.path, "new"))
    forced = " although a live process held it (--force)" if held else ""
    return f"released from cur/ to new/{forced}; the next txmail-qp pass sends it"


def release_stale(spool, claim_timeout, now=None):
    """Release every stale claim whose lock is free; returns their names."""
    return spool.recover_stale(claim_timeout, now)


def read_body(msg):
    """The message body (after the header block) as stored, or None if it is gone."""
    try:
        with open_regular_file(msg.path) as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except NotRegularFile as exc:
        return f"({msg.state}/{msg.name} is {exc.strerror}; nothing read)".encode()
    match = _HEADERS_END.search(data)
    return data[match.end():] if match else b""
