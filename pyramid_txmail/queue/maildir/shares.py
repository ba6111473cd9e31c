"""Several processes over one spool: which files each takes first, and what it counts.

With ``mail.processes`` > 1, ``txmail-qp`` runs N children over the same
spool.  A claim is an atomic rename, so any of them may take any file; but
when every child walked the whole listing of ``new/`` oldest first, each
tried every name and lost half its claims to a sibling (``taken``: 2,000 of
2,000 messages drained by two processes, issue 14) -- a listing, an lstat,
an open or a rename wasted per message.

So child ``i`` of ``N`` *prefers* a share of the names: those whose CRC-32
(:func:`zlib.crc32` of the name's bytes: the same in every process, unlike
Python's salted ``hash()``) is ``i`` modulo ``N``.  A preference, never an
exclusion: once a child has handed out its own share it lists ``new/`` again
and takes what the others have left, newest first (they work oldest first:
the two ends meet in the middle with few collisions).  So a sibling with a
stuck relay, one being restarted, or a spool shared by processes that count
``N`` differently never leaves mail waiting; and the listing taken again then
holds only what is left.  ``deferred/`` is shared out the same way: own due
files first, then the others' that are still there (latest due first).

A message keeps its share in every state: a deferred file is hashed by its
message name, not by its ``DUE~NAME`` file name.  One process (N = 1),
repoze.sendmail's ``qp`` and the SQL outbox (which claims with ``SKIP
LOCKED`` and needs none of this) take everything in the plain order.

What counts as waiting (``skipped``): a deferred file not yet due that was
in ``deferred/`` when the pass began -- not one this pass or a sibling
deferred meanwhile; in a one-pass run of several processes, what was waiting
when the run began, each process counting its own share, so that the run's
total counts each message once (:func:`waiting`).
"""
from __future__ import annotations

import bisect
import dataclasses
import os
import zlib

from .schedule import message_name

#: How often a pass lists ``new/`` again after losing a claim to a sibling (:func:`new_names`).
RELISTS = 8


@dataclasses.dataclass(frozen=True)
class Share:
    """Process ``index`` of ``count`` over one spool (``0 <= index < count``).

    ``since``: when the one-pass run of all the processes began (epoch
    seconds), or None (a daemon's pass, or one process): see :func:`waiting`.
    """

    index: int
    count: int
    since: float | None = None

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"share {self.index} of {self.count}: the index must be "
                             f"from 0 to {self.count - 1}")

    def holds(self, name):
        """Whether message ``name`` is in this share (a file name in any state but
        ``deferred/``, whose files are hashed by their message name)."""
        return zlib.crc32(os.fsencode(name)) % self.count == self.index


def shares_out(share):
    """Whether ``share`` changes anything: None or one process takes everything."""
    return share is not None and share.count > 1


def new_names(spool, share, misses=None):
    """The names of ``new/`` to try: this share's oldest first, then -- from a
    listing taken again once those are handed out -- the others' newest first.

    ``misses()`` (optional) counts the claims this process lost so far.  One lost
    while it walks a listing means it has met a sibling coming from the other end
    (a thief taking this share's newest, or the owner of the share it steals
    from), and the rest of that listing is mostly what the sibling took
    meanwhile: ``new/`` is listed again instead (at most :data:`RELISTS` times
    for each half), which holds only what is left.
    """
    if not shares_out(share):
        yield from spool.iter_names("new")
        return
    yield from _listed(spool, share.holds, False, misses)
    yield from _listed(spool, lambda name: not share.holds(name), True, misses)


def _listed(spool, wanted, newest_first, misses):
    """The ``wanted`` names of ``new/``, listed again after a lost claim (:func:`new_names`)."""
    for relists_left in range(RELISTS, -1, -1):
        missed = misses() if misses is not None else None
        names = spool.iter_names("new", newest_first=newest_first)
        try:
            for name in names:
                if not wanted(name):
                    continue
                if relists_left and missed is not None and misses() != missed:
                    break
                yield name
            else:
                return
        finally:
            names.close()


def due_files(spool, due, share, misses=None):
    """The due ``deferred/`` files of ``due`` (earliest first) to try: this share's,
    then the others' that are still in ``deferred/`` by then, latest due first.
    After a lost claim (``misses()``, as in :func:`new_names`), the files no longer
    in ``deferred/`` are left out."""
    if not shares_out(share):
        yield from due
        return
    ours = [share.holds(message_name(filename)) for filename in due]
    yield from _still_there(spool, [f for f, mine in zip(due, ours) if mine], misses)
    others = [f for f, mine in zip(due, ours) if not mine]
    if others:
        yield from _still_there(spool, others[::-1], misses, _present(spool))


def _still_there(spool, filenames, misses, present=None):
    """``filenames`` but those gone from ``deferred/`` by ``present`` (a set), which
    is listed again after each lost claim (at most :data:`RELISTS` times)."""
    relists_left = RELISTS
    missed = misses() if misses is not None else None
    for filename in filenames:
        if relists_left and missed is not None and misses() != missed:
            present, missed, relists_left = _present(spool), misses(), relists_left - 1
        if present is None or filename in present:
            yield filename


def _present(spool):
    """The file names in ``deferred/`` now, as a set."""
    indexed, unindexed = spool.deferred_files()
    return set(indexed).union(unindexed)


def waiting(spool, later, before, now, share=None):
    """How many of ``later`` (files of ``deferred/`` not due, from the listing
    ``now``) were waiting when the pass began: ``before`` and ``now`` are
    :meth:`~.schedule.DeferredIndex.deferred_files` then and now.  A file
    deferred since -- by this pass, or by a sibling -- is not waiting but this
    pass's news (counted as ``deferred`` by whoever deferred it).

    A one-pass run of several processes (``share.since``: when the run began)
    counts what was waiting when the *run* began, and each process its own
    share of it, so that the run's total counts each message once.  A sibling
    may have deferred mail of this run before this process's pass began (it
    may start later): a claim sets the file's mtime (:func:`~.claims.take`)
    and deferring keeps it, so a file claimed during the run has an mtime
    from then on.  That costs an ``lstat`` per waiting file of the share, once
    per run; a daemon's pass costs nothing while ``deferred/`` is unchanged.
    """
    since = share.since if shares_out(share) else None
    if now is before and since is None:
        return len(later)  # the same listing: nothing came or went since
    indexed, unindexed = before
    renamed = {message_name(f) for f in unindexed}  # may have been indexed meanwhile
    found = [f for f in later if _in_sorted(indexed, f) or message_name(f) in renamed]
    if since is None:
        return len(found)
    return sum(1 for f in found
               if share.holds(message_name(f)) and _mtime(spool, f) < since)


def _mtime(spool, filename):
    """The mtime of ``deferred/filename``; infinite once it is gone (claimed: not waiting)."""
    try:
        return os.lstat(os.path.join(spool.path, "deferred", filename)).st_mtime
    except FileNotFoundError:
        return float("inf")


def _in_sorted(names, name):
    i = bisect.bisect_left(names, name)
    return i < len(names) and names[i] == name
