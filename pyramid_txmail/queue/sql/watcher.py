"""Waking the daemon when mail is committed: LISTEN/NOTIFY on PostgreSQL, polling on SQLite.

:func:`~pyramid_txmail.queue.sql.store.enqueue` issues ``NOTIFY txmail_outbox``
in the application's transaction; PostgreSQL delivers it when (and only when)
that transaction commits.  :class:`ListenWatcher` holds one connection of its
own in autocommit, ``LISTEN``\\ s on it and sleeps in ``select`` on its socket
and the daemon's waker, so a commit wakes the daemon at once.

The server may restart under a running daemon: a broken connection is closed
and reopened every :data:`RECONNECT_EVERY` seconds until it works, and the
wait after a reconnect reports ``"mail"`` (a notification may have been sent
while nobody listened), so nothing committed meanwhile waits for a timeout.
The outage is logged when it starts, again at most once a minute (or when
the error changes), and when it ends
(:class:`~pyramid_txmail.queue.sql.patience.Outage`).

SQLite has no notifications: :class:`PollWatcher` looks every
``mail.poll_interval`` for a row newer than the last one it saw, or for more
queued rows than at its last look (a retry, a released claim).
"""
from __future__ import annotations

import select
import time

import sqlalchemy as sa

from ..wakeup import WatchUnavailable
from .leases import log
from .patience import REPEAT_EVERY, Outage
from .schema import outbox
from .engine import unreachable
from .store import CHANNEL, autocommit

#: Seconds between two attempts to reopen a broken LISTEN connection.
RECONNECT_EVERY = 1.0


class PollWatcher:
    """Looks at the outbox every ``interval`` seconds (two index lookups)."""

    kind = "poll"

    def __init__(self, queue, interval):
        self.queue = queue
        self.interval = interval
        self._newest = None
        self._queued = None
        self._outage = Outage()

    def describe(self):
        return f"polling {self.queue.where} every {self.interval:g}s"

    def _look(self):
        query = sa.select(
            sa.select(sa.func.max(outbox.c.id)).scalar_subquery(),
            sa.select(sa.func.count()).select_from(outbox)
            .where(outbox.c.state == "queued").scalar_subquery())
        with autocommit(self.queue.engine) as connection:
            newest, queued = connection.execute(query).first()
        return newest or 0, queued or 0

    def mark(self):
        try:
            self._newest, self._queued = self._look()
        except sa.exc.SQLAlchemyError as exc:
            why = unreachable(exc) or exc.__class__.__name__
            self._outage.failed(why, lambda: log.warning(
                "cannot look into %s (%s); looking again every %gs", self.queue.where,
                why, self.interval))
            self._newest, self._queued = None, None
            return
        self._outage.back(lambda: log.info("looking into %s again", self.queue.where))

    def wait(self, timeout, waker):
        """``"mail"``, ``"timeout"`` or ``"woken"``: why the wait ended."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                newest, queued = self._look()
            except sa.exc.SQLAlchemyError:
                newest = queued = None
            if newest is not None:
                if self._newest is None:  # the database was away: look now
                    self._newest, self._queued = newest, queued
                    return "mail"
                more = queued > self._queued
                self._queued = queued
                if newest > self._newest or more:
                    self._newest = newest
                    return "mail"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            if waker.wait(min(self.interval, remaining)):
                return "woken"

    def close(self):
        pass


class ListenWatcher:
    """``LISTEN txmail_outbox`` on a dedicated autocommit connection (PostgreSQL)."""

    kind = "listen"

    def __init__(self, queue):
        self.queue = queue
        self.connection = None
        self._outage = Outage()  # the connection was lost or could not be made
        self._connect()  # if the server is away, wait() tries again

    def describe(self):
        return f"listening for NOTIFY {CHANNEL} on {self.queue.where}"

    def _connect(self):
        """Open a connection of the engine's making, outside its pool, and LISTEN."""
        try:
            raw = self.queue.engine.raw_connection()
            connection = raw.driver_connection  # before detach(), which makes it None
            raw.detach()  # ours for good: never handed back to the pool
            connection.autocommit = True
            connection.execute(f"LISTEN {CHANNEL}")
        except Exception as exc:  # the server is away (psycopg or SQLAlchemy errors)
            why = _first_line(exc)
            self._outage.failed(why, lambda: log.warning(
                "cannot LISTEN on %s (%s); trying again every %gs (said again at most "
                "every %gs while it lasts)", self.queue.where, why, RECONNECT_EVERY,
                REPEAT_EVERY))
            return False
        self.connection = connection
        self._outage.back(lambda: log.info("listening for NOTIFY again on %s",
                                           self.queue.where))
        return True

    def _lost(self, exc):
        why = _first_line(exc)
        self._outage.failed(why, lambda: log.warning(
            "the LISTEN connection to %s broke (%s); reconnecting", self.queue.where, why))
        self._close()

    def _drain(self):
        """How many notifications came in (0 if none); raises when the connection broke."""
        from psycopg import pq

        pgconn = self.connection.pgconn
        pgconn.consume_input()
        if pgconn.status != pq.ConnStatus.OK:
            raise ConnectionError("the server closed the connection")
        count = 0
        while pgconn.notifies() is not None:
            count += 1
        return count

    def mark(self):
        if self.connection is None:
            return
        try:
            self._drain()  # the pass about to start sees what these announced
        except Exception as exc:
            self._lost(exc)

    def wait(self, timeout, waker):
        """``"mail"``, ``"timeout"`` or ``"woken"``: why the wait ended."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            if self.connection is None:
                if self._connect():
                    return "mail"  # notifications may have gone unheard meanwhile
                if waker.wait(min(RECONNECT_EVERY, remaining)):
                    return "woken"
                continue
            try:
                if self._drain():
                    return "mail"
                socket = self.connection.pgconn.socket
            except Exception as exc:
                self._lost(exc)
                continue
            readable, _, _ = select.select([socket, waker.read_fd], [], [], remaining)
            if waker.read_fd in readable:
                waker.drain()
                return "woken"

    def _close(self):
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # already broken
                pass

    def close(self):
        self._close()


def _first_line(exc):
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (f"{exc.__class__.__name__}: {text.splitlines()[0]}" if text
            else exc.__class__.__name__)


def make_watcher(queue, settings, how="auto"):
    """``auto``: LISTEN on PostgreSQL (reconnecting while the server is away), polling on SQLite;
    ``listen`` or ``poll`` as asked (``listen`` raises WatchUnavailable on SQLite)."""
    interval = settings.poll_interval
    if how == "poll":
        return PollWatcher(queue, interval)
    if how not in ("auto", "listen"):
        raise WatchUnavailable(f"watch mode {how!r} does not apply to a SQL queue; "
                               "choose auto, listen or poll")
    if queue.engine.dialect.name != "postgresql":
        if how == "listen":
            raise WatchUnavailable(f"LISTEN/NOTIFY needs PostgreSQL; {queue.where} is "
                                   f"{queue.engine.dialect.name}: use poll")
        return PollWatcher(queue, interval)
    return ListenWatcher(queue)
