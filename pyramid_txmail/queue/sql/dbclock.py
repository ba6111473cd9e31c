"""The database's clock, as the processors read it between queries.

Leases already run on the database's clock (``db_epoch()`` in SQL).  Every
other time a processor records or compares on the outbox -- ``next_attempt``,
the due checks of a claim, ``first_attempt``/``last_attempt``, the expiry of
``mail.max_queue_time`` -- must be on that same clock: a processor whose own
clock is ten minutes ahead would otherwise write retries into the others'
future, they would take them as "stray" (beyond the retry horizon: due at
once), and the relay would be hammered in a ping-pong between the two.

So :class:`DbClock` measures ``db_now - local`` with one cheap query
(``SELECT db_epoch()``, the local time taken half-way through the round
trip) and then counts on from it with the monotonic clock, measuring again
every :data:`RESYNC` seconds.  While the database cannot be reached the last
estimate is kept (or, before any, the local clock): a pass that cannot reach
the database changes nothing in it anyway.
"""
from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from .schema import db_epoch
from .store import autocommit

log = logging.getLogger("pyramid_txmail.queue.sql")

#: Seconds between two measurements of the database's clock.
RESYNC = 60.0


class DbClock:
    """``clock()`` -> the database's epoch seconds, estimated locally."""

    def __init__(self, engine, resync=RESYNC):
        self.engine = engine
        self.resync = resync
        self._base = None  # (monotonic, database epoch) of the last measurement

    def measure(self):
        """Ask the database for its time; returns the offset db - local (seconds)."""
        query = sa.select(db_epoch())
        with autocommit(self.engine) as connection:  # no BEGIN IMMEDIATE on SQLite
            before = time.monotonic()
            db_now = float(connection.execute(query).scalar())
            after = time.monotonic()
        mono = (before + after) / 2
        self._base = (mono, db_now)
        offset = db_now - (time.time() - (after - mono))
        if abs(offset) > 1.0:
            log.debug("this processor's clock is %.1fs %s the database's; the outbox's "
                      "times follow the database's", abs(offset),
                      "behind" if offset > 0 else "ahead of")
        return offset

    def __call__(self):
        if self._base is None or time.monotonic() - self._base[0] >= self.resync:
            try:
                self.measure()
            except sa.exc.SQLAlchemyError as exc:
                log.debug("cannot read the database's clock (%s); using the last "
                          "estimate", exc)
                if self._base is None:
                    return time.time()
        mono, db_now = self._base
        return db_now + (time.monotonic() - mono)
