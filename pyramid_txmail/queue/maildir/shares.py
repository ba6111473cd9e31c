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
exclusion: once a child has handed out its own share (oldest first) it lists
``new/`` again and takes what the others have left.  So a sibling with a
stuck relay, one being restarted, or a spool shared by processes that count
``N`` differently never leaves mail waiting; and the listing taken again then
holds only what is left.  ``deferred/`` is shared out the same way: own due
files first, then the others' that are still there.

A thief must not walk the names as another thief does: when one child hung,
its two siblings both took its share newest first and met at nearly every
file (``taken``: 195 of 600 messages, N = 3).  So a thief takes the others'
shares starting with the next one after its own (``i + 1``, ``i + 2``, ...);
and a share's ``N - 1`` possible thieves have each a part of it of their
own (the next CRC-32 digit, ``crc // N``, modulo ``N - 1``), which each
takes first, newest first: it meets the owner (oldest first) once in the
middle, and another thief not at all.  The rest of the share, the other
thieves' parts, it takes in an order of its own (CRC-32 of ``"i:name"``),
which no owner or thief follows (:meth:`Share.steal_order`).  With two
processes a share has one thief, whose part is all of it: newest first.

A message keeps its share in every state: a deferred file is hashed by its
message name, not by its ``DUE~NAME`` file name.  One process (N = 1),
repoze.sendmail's ``qp`` and the SQL outbox (which claims with ``SKIP
LOCKED`` and needs none of this) take everything in the plain order.

What counts as waiting (``skipped``): a deferred file not yet due that was
in ``deferred/`` when the pass began -- not one this pass or a sibling
deferred meanwhile -- and, with several processes, only this process's share
of them, so that the processes' total counts each message once.  In a
one-pass run of several processes, "when the pass began" is when the *run*
began: the parent lists ``deferred/`` before it forks and each child compares
with that listing (:func:`waiting`) -- names, never mtimes, which a clock
stepped back or a file server's clock ahead would make lie.
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

    ``waiting_before``: ``deferred/``'s listing (:meth:`~.schedule.DeferredIndex.deferred_files`)
    taken by the parent before it forked the children of a one-pass run, or None
    (a daemon's pass, or one process): see :func:`waiting`.
    """

    index: int
    count: int
    waiting_before: tuple | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"share {self.index} of {self.count}: the index must be "
                             f"from 0 to {self.count - 1}")

    def holds(self, name):
        """Whether message ``name`` is in this share (a file name in any state but
        ``deferred/``, whose files are hashed by their message name)."""
        return zlib.crc32(os.fsencode(name)) % self.count == self.index

    def steal_order(self, names, name_of=None):
        """``names`` of the others' shares (oldest or earliest due first) in this
        thief's order: the next share after its own first; within a share, its own
        part of it newest first, then the other thieves' parts in an order of this
        process's own (the module's docstring).  ``name_of(name)``: the message name
        a share is reckoned by (a deferred file's is not its file name)."""
        count, index = self.count, self.index

        def key(item):
            position, name = item
            message = name_of(name) if name_of is not None else name
            crc = zlib.crc32(os.fsencode(message))
            share = crc % count
            rank = (index - share - 1) % count  # 0 .. N-2 among the share's thieves
            part = (crc // count % (count - 1) - rank) % (count - 1)
            within = -position if part == 0 else zlib.crc32(
                f"{index}:{message}".encode("utf-8", "surrogateescape"))
            return (share - index) % count, part, within

        return [name for _, name in sorted(enumerate(names), key=key)]


def shares_out(share):
    """Whether ``share`` changes anything: None or one process takes everything."""
    return share is not None and share.count > 1


def new_names(spool, share, misses=None):
    """The names of ``new/`` to try: this share's oldest first, then -- from a
    listing taken again once those are handed out -- the others' in this thief's
    order (:meth:`Share.steal_order`).

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
    yield from _listed(spool, share.holds, None, misses)
    yield from _listed(spool, lambda name: not share.holds(name), share.steal_order, misses)


def _listed(spool, wanted, order, misses):
    """The ``wanted`` names of ``new/`` oldest first (or as ``order`` of them puts
    them), listed again after a lost claim (:func:`new_names`)."""
    for relists_left in range(RELISTS, -1, -1):
        missed = misses() if misses is not None else None
        names = spool.iter_names("new")
        if order is not None:
            names = iter(order([n for n in names if wanted(n)]))
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
            if hasattr(names, "close"):
                names.close()


def due_files(spool, due, share, misses=None):
    """The due ``deferred/`` files of ``due`` (earliest first) to try: this share's,
    then the others' that are still in ``deferred/`` by then, in this thief's order
    (:meth:`Share.steal_order`).
    After a lost claim (``misses()``, as in :func:`new_names`), the files no longer
    in ``deferred/`` are left out."""
    if not shares_out(share):
        yield from due
        return
    ours = [share.holds(message_name(filename)) for filename in due]
    yield from _still_there(spool, [f for f, mine in zip(due, ours) if mine], misses)
    others = [f for f, mine in zip(due, ours) if not mine]
    if others:
        others = share.steal_order(others, message_name)
        yield from _still_there(spool, others, misses, _present(spool))


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


def waiting(spool, later, before, now, share=None, memo=None):
    """How many of ``later`` (files of ``deferred/`` not due, from the listing
    ``now``) were waiting when the pass began: ``before`` and ``now`` are
    :meth:`~.schedule.DeferredIndex.deferred_files` then and now.  A file
    deferred since -- by this pass, or by a sibling -- is not waiting but this
    pass's news (counted as ``deferred`` by whoever deferred it): deferring
    gives a file a new ``DUE~NAME``, so it is not in ``before``.

    With several processes, each counts its share only, so that their total
    counts each message once; and a one-pass run of them compares with the
    listing the parent took before it forked them (``share.waiting_before``):
    a sibling may have deferred mail of this run before this process's pass
    began.  No mtime is read: a clock stepped back, or a file server's clock
    ahead, would have them say that nothing waited.  A daemon's pass costs
    nothing while ``deferred/`` is unchanged: one process counts ``later``, and
    several keep their count in ``memo`` (a dict, the caller's), taken again only
    when the listing (compared with ``is``) or the slice of it not due changed
    (``later`` is a sorted run of the listing: its length and ends say which).
    """
    several = shares_out(share)
    if several and share.waiting_before is not None:
        before = share.waiting_before
    elif now is before and not several:
        return len(later)  # the same listing: nothing came or went since
    elif now is before and memo is not None:
        window = (len(later), later[0], later[-1]) if later else (0,)
        if memo.get("listing") is not now or memo.get("later") != window:
            memo.update(listing=now, later=window, count=_in_share(share, later))
        return memo["count"]
    if now is not before:
        indexed, unindexed = before
        renamed = {message_name(f) for f in unindexed}  # may have been indexed meanwhile
        later = [f for f in later if _in_sorted(indexed, f) or message_name(f) in renamed]
    if not several:
        return len(later)
    return _in_share(share, later)


def _in_share(share, deferred_files):
    """How many of ``deferred_files`` (``DUE~NAME`` or plain names) are ``share``'s."""
    return sum(1 for f in deferred_files if share.holds(message_name(f)))


def waiting_at_run_start(path):
    """The spool ``path``'s ``deferred/`` listing, taken by ``txmail-qp``'s parent
    before it forks the children of a one-pass run (:attr:`Share.waiting_before`);
    None for a spool the children will say is unusable.  One listing: the children
    inherit it (copy-on-write pages) instead of each trusting the files' mtimes."""
    from .spool import Spool

    try:
        return Spool(path, create=False).deferred_files()
    except OSError:  # SpoolError too: each child says what is wrong with the spool
        return None


def _in_sorted(names, name):
    i = bisect.bisect_left(names, name)
    return i < len(names) and names[i] == name
