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
  there before the rename, and ``DUE`` is that time rounded *up* to the
  millisecond, so a message is never tried before its time.

A file in ``deferred/`` without the prefix (left by an older version, or
put there by hand) is "unindexed": its time is read from its state file,
and the processor renames it to its indexed name once (:meth:`index`).
"""
from __future__ import annotations

import calendar
import math
import os
import re
import time
from typing import NamedTuple

SEPARATOR = "~"
_STAMP = re.compile(r"(\d{8}T\d{6}\.\d{3}Z)~(.+)\Z", re.S)
_FORMAT = "%Y%m%dT%H%M%S"


def stamp(when, up=True):
    """``when`` (epoch seconds) as a sortable UTC stamp, to the millisecond.

    Rounded up for a due time (never early), down for "now".
    """
    millis = math.ceil(when * 1000) if up else math.floor(when * 1000)
    seconds, millis = divmod(max(millis, 0), 1000)
    return time.strftime(_FORMAT, time.gmtime(seconds)) + f".{millis:03d}Z"


def parse_stamp(text):
    """The epoch seconds of a :func:`stamp`."""
    return calendar.timegm(time.strptime(text[:15], _FORMAT)) + int(text[16:19]) / 1000


def split(filename):
    """``(stamp, name)`` of a file in ``deferred/``; stamp ``None`` when unindexed."""
    match = _STAMP.match(filename)
    return (match.group(1), match.group(2)) if match else (None, filename)


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
    """The ``deferred/`` half of :class:`~pyramid_txmail.spool.Spool` (a mixin).

    Uses the spool's ``path``, ``_dir``, ``read_meta`` and ``Entry``-making
    ``move``; kept apart because it is one job: the schedule in the names.
    """

    def scheduled(self):
        """Every file in ``deferred/``: unindexed ones first, then by due time.

        One directory listing; no file is opened.
        """
        try:
            with os.scandir(self._dir("deferred")) as entries:
                found = [Scheduled(*split(e.name), e.name) for e in entries
                         if not e.name.startswith(".") and not e.name.endswith(".json")]
        except FileNotFoundError:
            return []
        found.sort(key=lambda s: (s.stamp or "", s.filename))
        return found

    def defer(self, entry, due):
        """Move a claimed entry to ``deferred/DUE~NAME`` and fsync the directory.

        The caller has written ``next_attempt`` (= ``due``) to the state file
        first: the name is an index of it, never the only record.
        """
        target = indexed_name(due, message_name(entry.name))
        os.rename(entry.path, os.path.join(self._dir("deferred"), target))
        _fsync_dir(self._dir("deferred"))
        return type(entry)(self, "deferred", target)

    def index(self, filename, due):
        """Give an unindexed ``deferred/`` file its indexed name; False if it is gone.

        One rename: a processor that claimed it meanwhile wins, and a crash
        leaves either name, both of which are read.
        """
        target = indexed_name(due, filename)
        try:
            os.rename(os.path.join(self._dir("deferred"), filename),
                      os.path.join(self._dir("deferred"), target))
        except FileNotFoundError:
            return False
        return True

    def next_attempt_of(self, item, exact=False):
        """When a :class:`Scheduled` file is due; None when nothing says.

        From its name (to the millisecond, rounded up), or, when ``exact``
        or unindexed, from its state file.
        """
        if item.stamp is not None and not exact:
            return item.due_at()
        next_attempt = self.read_meta(item.name).get("next_attempt")
        if isinstance(next_attempt, (int, float)):
            return next_attempt
        return None if item.stamp is None else item.due_at()

    def deferred_file(self, name):
        """The file name in ``deferred/`` of message ``name`` (itself if not found)."""
        if os.path.lexists(os.path.join(self._dir("deferred"), name)):
            return name
        for item in self.scheduled():
            if item.name == name:
                return item.filename
        return name


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
