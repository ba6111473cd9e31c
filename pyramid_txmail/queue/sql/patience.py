"""Waiting out a database that is away, for every statement a claimed message needs.

Once a processor holds a claim, each statement it runs on the message's
behalf (is the claim still mine, read the message, record the relay's
answer, retire, defer or bury it, write its dead-letter copy, renew the
lease) meets a database restart or failover the same way: the statement is
tried again, with a growing pause, for as long as the claim's lease may
still be this processor's (``mail.claim_timeout``, at least
:data:`PATIENCE` seconds), and the outage is logged once when it starts and
once when it ends -- not a traceback, not a line per try.

Why wait rather than fail: a failure at that point throws away what the
relay answered, and the message is sent again when its lease runs out.
Why a bound: a worker must not hang for ever on a database that is gone;
after that :class:`~pyramid_txmail.queue.interface.QueueAway`
is raised, which the processor logs in one line.  It is never mistaken for
a lost claim: the claim is simply not known either way, and stays as it is.
"""
from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from .engine import unreachable
from .errors import QueueAway

log = logging.getLogger("pyramid_txmail.queue.sql")

#: How long a statement for a claimed message waits for a database that is away.
PATIENCE = 60.0
#: The pauses between tries grow from FIRST_STEP, doubling, up to this (seconds).
STEP_MAX = 5.0
FIRST_STEP = 0.1


def patiently(run, about, where, patience=None, stop=None):
    """``run()``'s result, ``run`` tried again while the database cannot be reached.

    ``about`` starts the log lines (``outbox row 7``), ``where`` is the URL
    without its password.  Any error other than an unreachable database
    (a bug, a constraint) is raised at once; an outage longer than
    ``patience`` raises :class:`QueueAway`, and so does ``stop`` (a
    ``threading.Event``: the process was asked to stop) being set meanwhile --
    a SIGTERM is not held up by a database that is away.
    """
    patience = PATIENCE if patience is None else patience
    deadline, delay, away = time.monotonic() + patience, FIRST_STEP, None
    while True:
        try:
            result = run()
        except sa.exc.DBAPIError as exc:
            why = unreachable(exc)
            if why is None:
                raise
            if away is None:
                log.warning("%s: the database at %s is not available (%s); trying again "
                            "for up to %gs", about, where, why, patience)
            away = why
            left = deadline - time.monotonic()
            if left <= 0:
                raise QueueAway(f"{about}: the database at {where} did not answer for "
                                f"{patience:g}s ({why})") from None
            if stop is not None and stop.wait(min(delay, left)):
                raise QueueAway(f"{about}: the database at {where} is not available "
                                f"({why}) and this process is stopping") from None
            if stop is None:
                time.sleep(min(delay, left))
            delay = min(delay * 2, STEP_MAX)
            continue
        if away is not None:
            log.info("%s: the database at %s answers again", about, where)
        return result


#: A loop that keeps meeting the same outage says so again at most this often (seconds).
REPEAT_EVERY = 60.0


class Outage:
    """The log lines of one loop that tries again and again while the database is
    away (the daemon's LISTEN connection, its polling): the first failure, then
    the same failure at most every :data:`REPEAT_EVERY` seconds (a different one
    at once: the state changed), and the end of it -- not a line a second."""

    def __init__(self):
        self.why = None
        self._said = 0.0

    @property
    def away(self):
        return self.why is not None

    def failed(self, why, say):
        """``say()`` (a log call) unless ``why`` was said less than a minute ago."""
        now = time.monotonic()
        if why != self.why or now - self._said >= REPEAT_EVERY:
            say()
            self._said = now
        self.why = why

    def back(self, say):
        """``say()`` once, if there was an outage."""
        if self.why is not None:
            self.why = None
            say()
