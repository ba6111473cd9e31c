"""The child's side of ``txmail-qp`` with several processes (:mod:`.supervisor`).

A forked child is today's single-process ``txmail-qp`` with a link to its parent:
its settings are its share (:func:`for_this_process`), its passes are reported up
a pipe (:func:`reporting`: "ready" at the first pass, then each pass's numbers),
its configuration error is said by the parent once (:func:`tell_parent`), and it
dies with its parent (:func:`set_pdeathsig`, and a look at ``getppid()`` before
every pass).  In the parent, or with one process, every hook here does nothing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys

from ..util.printable import get_logger
from .pass_stats import PassStats

log = get_logger("pyramid_txmail.supervisor")

#: In a child: its link to the parent (None in the parent, or with one process).
CHILD = None

#: In a child: the parent's database pools and connections it inherited, kept
#: referenced for the child's life so that no finalizer of theirs ever runs here.
_INHERITED = []


class ChildLink:
    """A child's end of its report pipe: one short line per report (atomic, < PIPE_BUF)."""

    def __init__(self, index, count, fd, parent, waiting_before=None):
        self.index, self.count, self.fd, self.parent = index, count, fd, parent
        #: A one-pass run's ``deferred/`` listing, the parent's before the first fork
        self.waiting_before = waiting_before
        self.ready_sent = False
        self.counting = False  # delivery counters into the parent's metrics directory

    def send(self, kind, text=""):
        line = f"{kind} {text}".strip().replace("\n", " ")[:3000] + "\n"
        try:
            os.write(self.fd, line.encode("utf-8", "replace"))
        except OSError:  # the parent is gone: PDEATHSIG (or the check below) stops us
            pass

    def parent_alive(self):
        return os.getppid() == self.parent


def processes_setting(raw):
    """``mail.processes`` of raw ini settings, or None when it is bad (the full parse
    says why): one key, so that a single process reads its settings once."""
    from ..settings import MAX_PROCESSES, SETTINGS, settings_prefix, usable_cores

    value = raw.get(settings_prefix(raw) + "processes")
    if value is None:
        return min(usable_cores(), MAX_PROCESSES)
    parse = next(s.parse for s in SETTINGS if s.name == "processes")
    try:
        return parse(value)
    except (ValueError, TypeError):
        return None


def says_for_all():
    """True where a line every child would log is logged: the parent, one process, or
    the first child (the others keep quiet)."""
    return CHILD is None or CHILD.index == 0


def is_child():
    return CHILD is not None


def tell_parent(kind, text):
    """In a child, hand ``text`` to the parent (which says it once); False in the parent."""
    if CHILD is None:
        return False
    CHILD.send(kind, text)
    return True


def for_this_process(settings):
    """A child's settings: one process, its share of ``mail.rate_limit``; no metrics
    port or textfile of its own (the parent serves them; see :mod:`.procmetrics`)."""
    if CHILD is None:
        return settings
    rate = settings.rate_limit / CHILD.count if settings.rate_limit else settings.rate_limit
    return dataclasses.replace(settings, processes=1, rate_limit=rate, metrics_port=None,
                               metrics_file=None)


def prefer_own_share(queue, daemon):
    """In a child, tell ``queue`` which share of the messages this process takes first.

    Every child would otherwise list the whole queue and race its siblings for the
    same messages, losing half its claims (issue 14).  A queue whose claims do not
    race (the SQL outbox) has no ``prefer_share`` and is left as it is.  A one-pass
    run also hands over what waited in ``deferred/`` when it began (the parent's
    listing): what a sibling deferred since is not ``skipped`` here.
    """
    prefer = getattr(queue, "prefer_share", None)
    if CHILD is None or prefer is None:
        return
    prefer(CHILD.index, CHILD.count,
           waiting_before=None if daemon else CHILD.waiting_before)


def reporting(run_pass, stop=None):
    """In a child, ``run_pass`` that tells the parent it is up (first pass) and what each
    pass did; it also ends the daemon if the parent is gone (``stop`` is set)."""
    if CHILD is None:
        return run_pass

    def run(stop_event=None):
        if not CHILD.ready_sent:
            CHILD.ready_sent = True
            CHILD.send("ready")
        if not CHILD.parent_alive():
            log.warning("txmail-qp process %d/%d: its parent is gone; stopping",
                        CHILD.index + 1, CHILD.count)
            if stop_event is not None:
                stop_event.set()
            return PassStats()
        stats = run_pass(stop_event)
        relays = getattr(getattr(run_pass, "__self__", None), "relays", None)
        report = {"stats": stats.__dict__}
        if relays is not None:  # for the parent's /healthz and txmail_relays_resting
            report.update(hosts=relays.hosts, failing=relays.failing(),
                          resting=len(relays.resting()),
                          # consecutive failed set-ups per relay: the parent adds them up
                          # (the messages, and so the failures, are shared out)
                          failures=[[h, n] for h, n in dict(relays._failures).items()])
        CHILD.send("pass", json.dumps(report))
        return stats

    return run


def become(index, count, fd, parent, counting=False, waiting_before=None):
    """This process is child ``index`` of ``count``, reporting on ``fd`` to ``parent``."""
    global CHILD
    CHILD = ChildLink(index, count, fd, parent, waiting_before)
    CHILD.counting = counting
    return CHILD


def set_pdeathsig():
    """Linux: SIGTERM this process when the parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the getppid() check still works
        pass


def release_inherited_engine(engine, connections=()):
    """In a freshly forked child: let go of the parent's database ``engine`` without
    touching the parent's connections (``connections``: the DBAPI connections its
    pool opened, those still open included).

    A child restarted by the supervisor is forked from a parent that may hold its
    own view of the queue (:mod:`.procmetrics`: /metrics, /healthz), with a
    PostgreSQL connection in its pool.  Used by the child, the two processes would
    interleave their protocol messages on one session; closed by the child (a
    ``dispose()``, a finalizer's ``PQfinish``), the parent's session would end.  So
    the pool is replaced without closing anything (SQLAlchemy's
    ``dispose(close=False)``), the old one and its connections are kept referenced
    so that they are never finalized here, and only the child's copy of each
    connection's descriptor is closed (``os.close``: the server sees nothing, the
    parent's socket stays open).  A connection already closed raises on
    ``fileno()`` and is skipped: its number may be another descriptor by now.
    """
    _INHERITED.append((engine.pool, list(connections)))
    engine.dispose(close=False)
    for connection in connections:
        try:
            fd = connection.fileno()
        except Exception:  # noqa: BLE001 -- closed, lost, or no socket (SQLite)
            continue
        try:
            os.close(fd)
        except OSError:
            pass
