"""The retry schedule of ``deferred/``, kept in the file names.

A deferred message's file is named ``DUE~NAME``: ``DUE`` is its next attempt
as a UTC time stamp, ``20261201T214152.250Z`` (so ``ls deferred/`` reads as
a schedule, earliest first), and ``NAME`` the message's own name, which its
state file ``meta/NAME.json`` and every other state keep.  Why in the name:

* a pass learns which messages are due from one directory listing, without
  opening a state file -- reading every state file cost 92% of a core with
  5,000 deferred messages and 16 new ones a second (issue 11, finding 8);
* deferring (``cur/NAME`` → ``deferred/DUE~NAME``) and claiming
  (``deferred/DUE~NAME`` → ``cur/NAME``) stay one atomic ``rename`` each, so
  a crash between two steps cannot lose a message or leave the index
  disagreeing with the file (there is no second record to disagree), and
  several processors on one spool race on the rename as they always did;
* the state file stays the record: ``next_attempt`` is written and fsynced
  there before the rename, and ``DUE`` is that time rounded up to the
  millisecond (a retry is never more than a millisecond early).

A file in ``deferred/`` without the prefix (left by an older version, or
put there by hand) is "unindexed": its time is read from its state file,
and the processor renames it to its indexed name once (:meth:`index`).  So
is a file whose prefix has the shape of a stamp but names no time
(``20261399T999999.999Z~NAME``, made by hand): its message is ``NAME``, and
the state file decides when it is due -- a name can never make a message
wait for ever, nor crash the timer that reads it.  A state file's time that
is unusable (NaN, infinite, beyond year 9999, not a number) counts as
unknown, so the message is due (see :func:`pyramid_txmail.queue.maildir.queue_state.epoch`).
"""
from __future__ import annotations

import bisect
import calendar
import math
import os
import re
import time
from typing import NamedTuple

from ...util.printable import get_logger
from .groupcommit import flush_dir
from ...util.dirlisting import Listing
from .queue_state import LATEST, epoch

log = get_logger("pyramid_txmail.processor")

SEPARATOR = "~"
#: The shape of an indexed name: what a message name never starts with.
_SHAPE = re.compile(r"(\d{8}T\d{6}\.\d{3}Z)~(.+)\Z", re.S)
#: A stamp that names a time (ASCII digits, years 1970-9999, every field in its
#: range); only February 29-31 and the 31st of short months need a second look.
_VALID = re.compile(r"(?:19[7-9][0-9]|[2-9][0-9]{3})(?:0[1-9]|1[0-2])"
                    r"(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3])[0-5][0-9][0-5][0-9]"
                    r"\.[0-9]{3}Z~.", re.S | re.A)
_FORMAT = "%Y%m%dT%H%M%S"


def stamp(when):
    """``when`` (epoch seconds) as a sortable UTC stamp, to the millisecond, rounded up.

    A due time and "now" are rounded alike, so a message whose
    ``next_attempt`` is exactly ``now`` is due (and none is taken more
    than a millisecond early).
    """
    when = epoch(when)  # NaN, infinite, before 1970: now-or-earlier, so due
    millis = math.ceil(min(LATEST, when) * 1000) if when is not None else 0
    seconds, millis = divmod(millis, 1000)
    return time.strftime(_FORMAT, time.gmtime(seconds)) + f".{millis:03d}Z"


def parse_stamp(text):
    """The epoch seconds of a :func:`stamp` (ValueError if it names no time)."""
    return calendar.timegm(time.strptime(text[:15], _FORMAT)) + int(text[16:19]) / 1000


def is_indexed(filename):
    """True when ``filename`` is ``DUE~NAME`` with a ``DUE`` that names a time."""
    return bool(_VALID.match(filename)) and _day_exists(filename)


def _day_exists(filename):
    """False for February 30th and the like (no strptime: a listing checks thousands)."""
    return filename[6:8] <= "28" or int(filename[6:8]) <= calendar.monthrange(
        int(filename[:4]), int(filename[4:6]))[1]


def split(filename):
    """``(stamp, name)`` of a file in ``deferred/``; stamp ``None`` when unindexed.

    A prefix of the stamp's shape that names no time is still cut off: the
    message is ``NAME`` (its state file ``meta/NAME.json``), merely unindexed.
    """
    match = _SHAPE.match(filename)
    if match is None:
        return None, filename
    return (match.group(1) if is_indexed(filename) else None), match.group(2)


def message_name(filename):
    """The message's own name (meta/NAME.json) of a file name in any state."""
    return split(filename)[1]


def indexed_name(due, name):
    return f"{stamp(due)}{SEPARATOR}{name}"


class Scheduled(NamedTuple):
    """One file in ``deferred/``: its due stamp (None: unindexed), name, file name."""

    stamp: str | None
    name: str
    filename: str

    def due_at(self):
        return None if self.stamp is None else parse_stamp(self.stamp)


class DeferredIndex:
    """The ``deferred/`` half of :class:`~pyramid_txmail.queue.maildir.spool.Spool` (a mixin).

    Uses the spool's ``_dir`` and ``read_meta``; kept apart because it is one
    job: the schedule in the names.  A pass or the daemon's timer costs one
    directory listing and string comparisons, done in C; a state file is
    read only for an unindexed file.
    """

    def listing(self, state, parse=tuple):
        """A state directory's :class:`~pyramid_txmail.util.dirlisting.Listing`, one per
        spool object, so it is listed again only when it changed."""
        listings = self.__dict__.setdefault("_listings", {})
        if (state, parse) not in listings:
            listings[state, parse] = Listing(self._dir(state), parse)
        return listings[state, parse]

    def _listing(self):
        """``(indexed, unindexed)`` file names in ``deferred/``, indexed ones sorted."""
        return self.listing("deferred", _split_listing).get()

    def deferred_files(self):
        """``(indexed, unindexed)`` file names in ``deferred/`` now, as :meth:`due_files`
        reads them: the very same object again while the directory has not changed
        (:mod:`pyramid_txmail.util.dirlisting`), which a caller may test with ``is``."""
        return self._listing()

    def scheduled(self):
        """Every file in ``deferred/`` as :class:`Scheduled`: unindexed first, then by due."""
        indexed, unindexed = self._listing()
        found = [Scheduled(*split(n), n) for n in unindexed + indexed]
        found.sort(key=lambda s: (s.stamp or "", s.filename))
        return found

    def due_files(self, now, horizon=None, errors=None, listing=None):
        """``(due, later)``: file names in ``deferred/`` due at ``now`` (earliest
        first) and the others.

        With a ``horizon`` (seconds), a file due further ahead than
        ``now + horizon`` is due now: no retry is ever scheduled that far
        ahead (:meth:`~pyramid_txmail.processor.processor.Processor.retry_horizon`), so
        its time was set by a clock that was ahead, and waiting for it would
        hold the message back by as much as the clock was wrong.
        An unindexed file's state file is read: it is due when it says so
        (or says nothing usable), else renamed to its indexed name
        (:meth:`index`).  Whatever goes wrong with one such file (an
        unreadable state file, a failed rename) stays with it: it is
        logged with its name, appended to ``errors`` (a list, for the
        pass's count), and the file is left as it is for a later pass.
        ``listing``: a :meth:`deferred_files` the caller has just taken (else
        it is taken here).
        """
        indexed, unindexed = listing if listing is not None else self._listing()
        split_at = bisect.bisect_left(indexed, stamp(now) + "\x7f")
        far = _far_at(indexed, now, horizon)
        due, later, indexed_now = list(indexed[:split_at]), indexed[split_at:far], []
        if far < len(indexed):
            due += indexed[max(far, split_at):]
            log.warning("%d deferred message(s) due more than %ds ahead (a clock that was "
                        "ahead scheduled them): due now", len(indexed) - far, horizon)
        first = []
        for filename in sorted(unindexed):
            try:
                next_attempt = self._meta_next_attempt(message_name(filename))
                if next_attempt is None or next_attempt <= now or _beyond(
                        next_attempt, now, horizon):
                    first.append(filename)
                elif self.index(filename, next_attempt):
                    log.info("indexed deferred/%s by its next attempt", filename)
                    indexed_now.append(indexed_name(next_attempt, message_name(filename)))
            except Exception:
                log.exception("deferred/%s: cannot find or index its next attempt; "
                              "left as it is for a later pass", filename)
                if errors is not None:
                    errors.append(filename)
        return first + due, (tuple(sorted(later + tuple(indexed_now))) if indexed_now
                             else later)

    def earliest_retry(self, now, horizon=None):
        """The earliest next attempt in ``deferred/`` (``now`` for an unknown
        one, or one beyond ``horizon``: :meth:`due_files`), None when it is
        empty.  Reads no state file but unindexed ones'."""
        indexed, unindexed = self._listing()
        times = [parse_stamp(indexed[0])] if indexed else []
        if _far_at(indexed, now, horizon) < len(indexed):
            times.append(now)
        for filename in unindexed:
            try:
                next_attempt = self._meta_next_attempt(message_name(filename))
            except Exception:  # the pass reports it; the daemon's rescan retries it
                continue
            times.append(now if next_attempt is None or _beyond(next_attempt, now, horizon)
                         else next_attempt)
        return min(times) if times else None

    def retry_summary(self, now):
        """``(due, earliest)``: how many deferred files are due at ``now``, and the
        earliest next attempt exactly (from its state file).  Renames nothing."""
        indexed, unindexed = self._listing()
        due = bisect.bisect_left(indexed, stamp(now) + "\x7f")
        times = []
        for filename in unindexed:
            try:
                next_attempt = self._meta_next_attempt(message_name(filename))
            except Exception:  # unreadable: counted as due, a pass will say why
                next_attempt = None
            due += next_attempt is None or next_attempt <= now
            if next_attempt is not None:
                times.append(next_attempt)
        if indexed:
            first = indexed[0]
            try:
                exact = self._meta_next_attempt(message_name(first))
            except Exception:
                exact = None
            times.append(parse_stamp(first) if exact is None else exact)
        return due, (min(times) if times else None)

    def _meta_next_attempt(self, name):
        """The state file's ``next_attempt``; None when it has none that is a time.

        None too for a name the spool cannot index (``DUE~NAME`` would be too
        long: :mod:`~pyramid_txmail.queue.maildir.namelimits`), whatever its state
        file says: it is due now, and claiming it dead-letters it.
        """
        if self.name_problem(name):
            return None
        meta = self.read_meta(name)
        next_attempt = meta.get("next_attempt") if isinstance(meta, dict) else None
        found = epoch(next_attempt)
        if found is None and next_attempt is not None:
            log.warning("%s: its state file meta/%s.json has next_attempt = %r, which "
                        "is not a time; the message counts as due", name, name,
                        next_attempt)
        return found

    def locate(self, state, name):
        """``(path, message name)`` of ``name`` (a file or message name) in ``state``."""
        if state == "deferred":
            name = self.deferred_file(name)
        return os.path.join(self._dir(state), name), message_name(name)

    def defer(self, entry, due):
        """Move a claimed entry to ``deferred/DUE~NAME`` and fsync the directory.

        The caller has written ``next_attempt`` (= ``due``) to the state file
        first: the name is an index of it, never the only record.
        """
        target = self.deferred_name(entry, due)
        if getattr(entry, "claim", None) is not None:
            entry.claim.settle()  # no heartbeat on a file that left cur/
        os.rename(entry.path, os.path.join(self._dir("deferred"), target))
        flush_dir(self._dir("deferred"))
        return type(entry)(self, "deferred", target)

    def deferred_name(self, entry, due):
        """The name :meth:`defer` gives ``entry`` in ``deferred/``."""
        return indexed_name(due, message_name(entry.name))

    def index(self, filename, due):
        """Give an unindexed ``deferred/`` file its indexed name; False if it is gone.

        One rename: a processor that claimed it meanwhile wins, and a crash
        leaves either name, both of which are read.
        """
        target = indexed_name(due, message_name(filename))
        try:
            os.rename(os.path.join(self._dir("deferred"), filename),
                      os.path.join(self._dir("deferred"), target))
        except FileNotFoundError:
            return False
        return True

    def deferred_file(self, name):
        """The file name in ``deferred/`` of message ``name`` (itself if not found)."""
        if os.path.lexists(os.path.join(self._dir("deferred"), name)):
            return name
        for item in self.scheduled():
            if item.name == name:
                return item.filename
        return name


def _split_listing(names):
    """``(indexed, unindexed)``: DUE~NAME files sorted (by due), the others (no dotfiles).

    Only a DUE that names a time is indexed (:func:`is_indexed`): every
    indexed name can be parsed, and sorts where its time is.
    """
    indexed = sorted(filter(_day_exists, filter(_VALID.match, names)))
    if len(indexed) == len(names):
        return tuple(indexed), ()
    known = set(indexed)
    return tuple(indexed), tuple(n for n in names if n not in known and n[:1] != ".")


def _far_at(indexed, now, horizon):
    """Where the indexed names due beyond ``now + horizon`` begin (the end: none)."""
    if horizon is None:
        return len(indexed)
    return bisect.bisect_left(indexed, stamp(now + horizon) + "\x7f")


def _beyond(next_attempt, now, horizon):
    return horizon is not None and next_attempt > now + horizon

