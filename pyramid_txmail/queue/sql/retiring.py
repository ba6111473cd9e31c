"""Group-committed retires: the delivered rows of several workers in one statement.

A drain into a fast relay spends most of the database's work on retires: one
UPDATE and one commit per delivered message.  On PostgreSQL the workers of
one process therefore hand their retires to a :class:`RetireGroup`: the
first retire to arrive leads; it waits until every claim this process has
in hand has a retire waiting (no other worker could join), or
:data:`WINDOW` at the most, then settles them all in one statement::

    UPDATE txmail_outbox AS o SET state = 'delivered', ...
    FROM unnest(ids, tokens) AS v(id, token)
    WHERE o.id = v.id AND o.claim_token = v.token AND o.state = 'in_progress'
    RETURNING o.id, v.token, o.chunks

Each row is still conditioned on its own claim token, and each waiter learns
its own row's outcome: its (id, token) not returned means its claim was lost
(:class:`~pyramid_txmail.queue.sql.errors.ClaimLost`, as for a retire of
its own).  While one group's statement runs, the next retires gather, so a
busy process settles in groups without waiting for a window at all.

Why this loses nothing: a retire only ever follows the relay's 250 for every
recipient; until the group's statement commits, each of its rows stays
``in_progress`` under a lease.  A crash (of the processor or of PostgreSQL)
before that commit leaves the rows claimed, and when their leases run out
they are put back and sent once more -- the same at-least-once window as a
processor that dies between the relay's 250 and its own retire, a few
milliseconds longer.  Nothing is dropped, and no row is ever settled unless
its token still holds it.  Recipients delivered after a partial failure are
recorded synchronously (``record()``, never grouped) before any retire, so
they are never asked again.  When every row of the group was a first-attempt
delivery, the commit does not wait for the WAL flush (as a single retire's
did: see :meth:`SQLQueue.retire`); any other retire in the group makes it
synchronous.

A group gives each member exactly the outcome it would have had alone.
Results are matched by (id, token), never by id only: two retires of the
same row under different tokens (a stale claim after a forced release and a
re-claim) may meet in one group, and only the current token's is settled.
A database that is away is waited for by the leader exactly as a retire of
its own would be (:mod:`~pyramid_txmail.queue.sql.patience`): every waiter
of the group then gets the same QueueAway, never a false ClaimLost.  Any
other error of the group's statement (a trigger or a constraint refusing
one row) would otherwise fail the innocent members too, leaving them
claimed until their leases ran out and sending them again: each member then
retires alone (``one``, its own statement and transaction, in its own
thread), so only the culprit gets the error.
"""
from __future__ import annotations

import threading
import time

from .errors import ClaimLost, QueueAway

#: The longest a retire waits for others to join its group (seconds).  Only a
#: worker still sending makes it wait; once every claim in hand has a retire
#: waiting, the group goes at once.
WINDOW = 0.004

_COLUMNS = ("SET state = 'delivered', body = NULL, next_attempt = NULL, claim_token = NULL, "
            "claimed_by = NULL, lease_until = NULL, settled_at = {epoch} ")
_FROM = "unnest(%(ids)s::bigint[], %(tokens)s::varchar[]) AS v(id, token)"
_MINE = "o.id = v.id AND o.claim_token = v.token AND o.state = 'in_progress'"
_LAZY = ", set_config('synchronous_commit', 'off', true)"


def group_sql(delete, lazy, epoch):
    """The PostgreSQL statement settling a group (``epoch``: the database's clock as SQL).

    ``set_config(..., true)`` in the RETURNING is evaluated inside the
    statement's own (autocommitted) transaction, before its commit: only that
    commit skips the wait for the WAL flush."""
    if delete:
        head = f"DELETE FROM txmail_outbox AS o USING {_FROM} WHERE {_MINE}"
    else:
        head = (f"UPDATE txmail_outbox AS o {_COLUMNS.format(epoch=epoch)}FROM {_FROM} "
                f"WHERE {_MINE}")
    return f"{head} RETURNING o.id, v.token, o.chunks{_LAZY if lazy else ''}"


class _Waiter:
    __slots__ = ("claimed", "lazy", "wake", "lead", "alone", "chunks", "error")

    def __init__(self, claimed, lazy):
        self.claimed, self.lazy = claimed, lazy
        self.wake = threading.Event()
        self.lead = False  # woken to lead the next group, not settled yet
        self.alone = False  # the group's statement failed: retire by itself
        self.chunks = self.error = None


class RetireGroup:
    """Gathers the retires of one process's workers; ``settle`` runs one group.

    ``settle(pairs, lazy)`` gets ``[(id, token)]`` and whether every one of
    them may commit lazily, and returns ``{(id, token): chunks}`` for the rows
    it settled.  ``one(claimed, lazy)`` is the retire of one row by itself
    (returns its chunks, raises ClaimLost): used when the group's statement
    failed with an error that is not an outage.  ``in_hand()`` says how many claims the process's workers hold
    now (each of them may still join); ``most`` bounds a group.  One group's
    statement runs at a time: the retires arriving meanwhile form the next.
    """

    def __init__(self, settle, in_hand, most, window=WINDOW, one=None):
        self._settle = settle
        self._one = one
        self._in_hand = in_hand
        self.most = max(1, int(most))
        self.window = window
        self._cond = threading.Condition()
        self._pending = []
        self._leading = False

    def retire(self, claimed, lazy):
        """Settle ``claimed`` with the others' retires; returns its ``chunks``.

        Raises ClaimLost when its token no longer holds the row, or whatever
        the group's statement raised (QueueAway, a database error).
        """
        waiter = _Waiter(claimed, lazy)
        with self._cond:
            self._pending.append(waiter)
            if self._leading:
                self._cond.notify_all()  # the leader counts its group again
            else:
                self._leading = waiter.lead = True
        gather = True
        while True:
            if waiter.lead:
                waiter.lead = False
                self._lead(gather)
            waiter.wake.wait()
            waiter.wake.clear()
            if not waiter.lead:
                break
            gather = False  # it waited while the last group ran: no window
        if waiter.alone:
            return self._one(claimed, lazy)
        if waiter.error is not None:
            raise waiter.error
        if waiter.chunks is None:
            raise ClaimLost(f"outbox row {claimed.id}: this processor's claim was lost "
                            "(its lease ran out, or it was released)")
        return waiter.chunks

    def _lead(self, gather):
        """Wait for the group to fill (every claim in hand has a retire waiting) or the
        window to close, settle it, then wake the first retire that arrived
        meanwhile to lead the next group."""
        with self._cond:
            if gather:
                deadline = time.monotonic() + self.window
                while len(self._pending) < min(self.most, max(1, self._in_hand())):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            group, self._pending = self._pending[:self.most], self._pending[self.most:]
        settled = None
        try:
            settled = self._settle([(w.claimed.id, w.claimed.token) for w in group],
                                   all(w.lazy for w in group))
        except Exception as exc:
            # an outage (QueueAway after the patience path) is every member's; any
            # other error is one row's: each member tries alone, in its own thread
            alone = (len(group) > 1 and self._one is not None
                     and not isinstance(exc, QueueAway))
            for waiter in group:
                waiter.alone, waiter.error = alone, (None if alone else exc)
        except BaseException as exc:  # every waiter of the group learns it (re-raised there)
            for waiter in group:
                waiter.error = exc
        finally:
            with self._cond:
                successor = self._pending[0] if self._pending else None
                self._leading = successor is not None
                if successor is not None:
                    successor.lead = True
            for waiter in group:
                if settled is not None:
                    waiter.chunks = settled.get((waiter.claimed.id, waiter.claimed.token))
                waiter.wake.set()
            if successor is not None:
                successor.wake.set()
