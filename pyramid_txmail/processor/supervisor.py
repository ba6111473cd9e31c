"""Several ``txmail-qp`` processes over one queue (``mail.processes``): the parent's side.

Why processes: a worker thread holds the GIL while it builds, reads and records a
message, so one process tops out near one core's worth of Python however many
``mail.workers`` it has; N processes use N cores.  They need no coordination with
each other: claims are atomic on both backends (a rename on the spool, a row lock
in the SQL outbox), so each child is today's single-process ``txmail-qp`` with
``mail.processes = 1``, told only which share of a spool to take first (child
``i`` of ``N``: :func:`.child.prefer_own_share`), so that the children do not all
race for the same files (issue 14).  The parent only starts, watches and stops them.

Fork, not spawn, and *before* any thread or connection exists: ``txmail-qp`` has
then read its ini and imported its modules, nothing more (no queue opened, no
application loaded, no signal thread), so a forked child inherits no lock held by
another thread and no socket it shares with a sibling, and it skips the
interpreter's start-up and imports, which a cron pass pays in full.  Each child
then opens its own queue, loads its own application (its event subscribers run
in the process that sent the mail) and its own SMTP connections.  A process that
already runs other threads (``txmail-qp``'s ``main()`` called from a program) is
refused with a configuration error instead of being forked.  A child restarted
later is forked from the parent, whose only threads are then its own (the
``/metrics`` server, the systemd watchdog); they hold no lock the child takes
(logging's locks are re-created in a forked child by the logging module).

The parent (single-threaded loop, signals through a wake-up pipe):

* forwards SIGTERM/SIGINT (stop) and SIGHUP (daemon: re-open logs, make a pass)
  to every child and re-opens its own log files on SIGHUP;
* restarts a child that died unexpectedly (daemon only), after a back-off that
  grows while children keep dying within :data:`QUICK_DEATH` seconds of their
  start; after :data:`GIVE_UP_AFTER` such deaths in a row it stops the others
  and exits 1.  A child that exits 78 (a configuration problem: every child would
  hit it) is not restarted: the parent stops the others and exits 78;
* after a stop, waits for the children to finish their messages in flight, at
  most :meth:`Supervisor.stop_deadline` (the longest one SMTP transaction may
  legitimately take: ``mail.data_timeout`` plus a few ``mail.timeout``); a child
  still running then is killed (its message in flight comes back after
  ``mail.claim_timeout``: at least once, never lost);
* exits with the worst child's status (0 < 1 < 78; a child killed by a signal
  counts as 1), and logs the one-pass total of the children's pass summaries.

A child dies with its parent: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` on Linux (the
child finishes its message in flight and stops, as on any SIGTERM), and every
child watches its report pipe's parent for death elsewhere (the pass loop's
``getppid()`` check).  No orphan keeps claiming mail.

What stays per process and what the parent does instead is decided by
:func:`for_this_process` (the child's settings) and :mod:`.procmetrics`.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import signal
import sys
import threading
import time

from ..util.printable import get_logger
from . import child as child_side
from .child import (for_this_process, is_child, prefer_own_share,  # noqa: F401 (qp's hooks)
                    processes_setting, reporting, says_for_all, tell_parent)
from .daemon import reopen_log_files
from .pass_stats import PassStats

log = get_logger("pyramid_txmail.supervisor")

EX_OK, EX_SOFTWARE, EX_CONFIG = 0, 1, 78
#: A child that dies within this many seconds of its start died "at once".
QUICK_DEATH = 10.0
#: Back-off before restarting a child, growing with each quick death in a row.
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
#: Quick deaths in a row after which the parent gives up.
GIVE_UP_AFTER = 5
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)

def _status_of(wait_status):
    """A child's exit status as txmail-qp's: killed by a signal counts as 1."""
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return EX_SOFTWARE


def _how(wait_status):
    if os.WIFSIGNALED(wait_status):
        return f"was killed by {signal.Signals(os.WTERMSIG(wait_status)).name}"
    return f"exited with status {os.WEXITSTATUS(wait_status)}"


class _Child:
    def __init__(self, index, pid, fd, started):
        self.index, self.pid, self.fd, self.started = index, pid, fd, started
        self.ready = False
        self.reported = False  # a one-pass child's counts arrived
        self.buffer = b""


class Supervisor:
    """Runs ``processes`` children, each ``child_main()`` (txmail-qp with one process).

    ``operations`` (optional, :class:`.procmetrics.ParentOperations`) is told when all
    children are up, of every pass a child reports, and of the stop: metrics, /healthz
    and systemd notification live there.
    """

    def __init__(self, processes, settings, *, daemon, operations=None, clock=time.monotonic):
        self.processes = processes
        self.settings = settings
        self.daemon = daemon
        self.operations = operations
        self.clock = clock
        self.children = {}  # index -> _Child
        self.statuses = []  # exit statuses of the children that ended
        self.totals = PassStats()
        self.stopping = None  # the signal that stopped us
        self.quick_deaths = 0
        self.restart_at = {}  # index -> monotonic time of the planned restart
        self.all_ready = False
        self.waiting_before = None  # a one-pass run's deferred/ listing, before the forks
        self.unreported = []  # one-pass children that ended without their pass's counts
        self._ready = set()
        self._pids = set()  # every child started (the start line names them)  # indexes of the children that reached their first pass
        self._selector = None
        self._wake_r = self._wake_w = None

    def stop_deadline(self):
        """How long the children may take to finish after a stop: one SMTP transaction."""
        return self.settings.data_timeout + 3 * self.settings.timeout

    # -- the parent's loop ---------------------------------------------------------

    def run(self, child_main, restore=True):
        """Start the children, supervise them, return the exit status.

        ``restore``: put the signal handlers back at the end.  The txmail-qp
        process itself passes False: its stop signals stay ignored until it exits,
        so that a late SIGTERM of a storm cannot turn the status it has just
        logged into 143 (as in the single-process path, ``Signals(restore=)``)."""
        if threading.active_count() > 1:
            from pyramid.exceptions import ConfigurationError

            raise ConfigurationError(
                f"mail.processes = {self.processes}: txmail-qp cannot fork its worker "
                "processes here, other threads are running in this process (txmail-qp "
                "called from another program?); set mail.processes = 1 (or --processes "
                "1), or run the txmail-qp command")
        _preload(self.settings)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        saved = {s: signal.signal(s, _noted) for s in _SIGNALS}
        saved_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            if not self.daemon and self.settings.queue_path and not self.settings.queue_url:
                from ..queue.maildir.shares import waiting_at_run_start

                self.waiting_before = waiting_at_run_start(self.settings.queue_path)
            for index in range(self.processes):
                self._start(index, child_main)
            return self._loop(child_main)
        finally:
            for child in self.children.values():  # only after an error of our own
                _kill(child.pid, signal.SIGKILL)
            signal.set_wakeup_fd(saved_fd)
            for signum, handler in saved.items():
                signal.signal(signum, handler if restore or signum == signal.SIGCHLD
                              else signal.SIG_IGN)
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _start(self, index, child_main):
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:  # the child: never returns
            code = EX_SOFTWARE
            try:
                os.close(read_fd)
                code = self._child(index, write_fd, parent, blocked, child_main)
            except BaseException:
                log.exception("txmail-qp process %d/%d failed", index + 1, self.processes)
            finally:
                _exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        child = _Child(index, pid, read_fd, self.clock())
        self.children[index] = child
        self._pids.add(pid)
        self._selector.register(read_fd, selectors.EVENT_READ, child)
        log.debug("started txmail-qp process %d/%d: pid %d", index + 1, self.processes, pid)
        return child

    def _child(self, index, write_fd, parent, blocked, child_main):
        """In the forked child: cut loose from the parent's signal plumbing, then run."""
        child_side.set_pdeathsig()
        signal.set_wakeup_fd(-1)
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_DFL)  # still blocked: Signals takes them
        # SIGCHLD back as it was (subprocesses of the transport); the stop signals stay
        # blocked until the child's Signals takes them with sigwait, so none is lost.
        signal.pthread_sigmask(signal.SIG_SETMASK, set(blocked) | set(_SIGNALS[:3]))
        for other in self.children.values():
            os.close(other.fd)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._selector = None
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):  # the parent's
            os.environ.pop(name, None)
        if self.operations is not None:
            self.operations.in_child()
        child_side.become(index, self.processes, write_fd, parent,
                          counting=bool(self.operations is not None and self.operations.counting),
                          waiting_before=self.waiting_before)
        if os.getppid() != parent:  # died before PDEATHSIG was set
            return EX_SOFTWARE
        return child_main()

    def _loop(self, child_main):
        while self.children or (self.daemon and self.restart_at and self.stopping is None):
            timeout = self._next_timeout()
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    self._signals()
                else:
                    self._read(key.data)
            self._reap()
            if self.stopping is None and self.restart_at:
                self._restarts(child_main)
            if self.stopping is not None and self.children and self.clock() > self._deadline:
                for child in self.children.values():
                    log.error("txmail-qp process %d (pid %d) did not stop within %gs; "
                              "killing it (its message in flight comes back after "
                              "mail.claim_timeout)", child.index + 1, child.pid,
                              self.stop_deadline())
                    _kill(child.pid, signal.SIGKILL)
                self._deadline = float("inf")
        return self._finish()

    def _next_timeout(self):
        waits = [1.0]
        if self.stopping is None and self.restart_at:
            waits.append(min(self.restart_at.values()) - self.clock())
        if self.stopping is not None and self.children:
            waits.append(self._deadline - self.clock())
        return max(0.0, min(waits))

    def _signals(self):
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            return
        for signum in sorted(set(data)):
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stop(signum)
            elif signum == signal.SIGHUP:
                try:
                    reopen_log_files()
                except OSError as exc:
                    log.error("SIGHUP: cannot re-open the log files: %s", exc)
                if self.daemon:  # a one-pass child leaves SIGHUP alone (blocked)
                    self._forward(signal.SIGHUP)

    def stop(self, signum=signal.SIGTERM):
        if self.stopping is None:
            self.stopping = signum
            self._deadline = self.clock() + self.stop_deadline()
            self.restart_at.clear()
            if self.operations is not None:
                self.operations.stopping()
        self._forward(signum)

    def _forward(self, signum):
        for child in self.children.values():
            _kill(child.pid, signum)

    def _read(self, child):
        try:
            data = os.read(child.fd, 65536)
        except BlockingIOError:
            return
        if not data:  # the child exited (or closed it): reaped below
            self._selector.unregister(child.fd)
            return
        child.buffer += data
        *lines, child.buffer = child.buffer.split(b"\n")
        for line in lines:
            kind, _, text = line.decode("utf-8", "replace").partition(" ")
            self._report(child, kind, text)

    def _report(self, child, kind, text):
        if kind == "ready":
            child.ready = True
            self._ready.add(child.index)  # kept when a one-pass child is done already
            if not self.all_ready and len(self._ready) == self.processes:
                self.all_ready = True  # said now: a configuration error stays one line
                log.info("txmail-qp: %d processes (pids %s), %d worker(s) each%s",
                         self.processes, " ".join(str(p) for p in sorted(self._pids)),
                         self.settings.workers, "" if self.daemon else ", one pass")
                if self.operations is not None:
                    self.operations.ready()
        elif kind == "pass":
            report = json.loads(text)
            stats = PassStats(**report.pop("stats"))
            if not self.daemon:
                self.totals.add(stats)
                child.reported = True
            if self.operations is not None:
                self.operations.pass_done(stats, child.index, report)
        elif kind == "config":
            if not getattr(self, "_said_config", False):  # each child says the same
                self._said_config = True
                print(f"txmail-qp: error: {text}", file=sys.stderr, flush=True)

    def _reap(self):
        for index, child in list(self.children.items()):
            try:
                pid, wait_status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                pid, wait_status = child.pid, 0
            if pid == 0:
                continue
            del self.children[index]
            try:
                self._selector.unregister(child.fd)
            except (KeyError, ValueError):
                pass
            while True:  # what it wrote last
                try:
                    data = os.read(child.fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                child.buffer += data
            for line in child.buffer.split(b"\n"):
                if line:
                    kind, _, text = line.decode("utf-8", "replace").partition(" ")
                    self._report(child, kind, text)
            os.close(child.fd)
            self._ended(child, wait_status)

    def _ended(self, child, wait_status):
        status = _status_of(wait_status)
        if not self.daemon and not child.reported:
            self.unreported.append(wait_status)
        if not self.daemon or self.stopping is not None:  # a daemon: how it stopped
            self.statuses.append(status)
        lived = self.clock() - child.started
        if self.stopping is None and status == EX_CONFIG:  # said once on stderr already
            log.debug("txmail-qp process %d (pid %d) exited with a configuration error; "
                      "stopping the others", child.index + 1, child.pid)
            self.config_error = True
            self.stop(signal.SIGTERM)
            return
        if self.stopping is not None or (not self.daemon and os.WIFEXITED(wait_status)):
            quiet = status == EX_OK or getattr(self, "config_error", False)
            level = logging.DEBUG if quiet else logging.WARNING
            log.log(level, "txmail-qp process %d (pid %d) %s", child.index + 1, child.pid,
                    _how(wait_status))
            return
        if not self.daemon:  # one pass: killed; the others finish the pass
            log.error("txmail-qp process %d (pid %d) %s during the pass; its message in "
                      "flight comes back after mail.claim_timeout", child.index + 1,
                      child.pid, _how(wait_status))
            return
        self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH else 1
        if self.quick_deaths > GIVE_UP_AFTER:
            log.error("txmail-qp process %d (pid %d) %s; the processes keep dying at once "
                      "(%d times in a row): giving up", child.index + 1, child.pid,
                      _how(wait_status), self.quick_deaths)
            self.gave_up = True
            self.stop(signal.SIGTERM)
            return
        wait = RESTART_BACKOFF[min(self.quick_deaths, len(RESTART_BACKOFF)) - 1]
        log.error("txmail-qp process %d (pid %d) %s; restarting it in %gs", child.index + 1,
                  child.pid, _how(wait_status), wait)
        self.restart_at[child.index] = self.clock() + wait

    def _restarts(self, child_main):
        now = self.clock()
        for index, when in list(self.restart_at.items()):
            if when <= now:
                del self.restart_at[index]
                child = self._start(index, child_main)
                log.info("txmail-qp process %d restarted: pid %d", index + 1, child.pid)

    def _finish(self):
        worst = max(self.statuses, default=EX_OK)
        if getattr(self, "config_error", False):
            worst = EX_CONFIG
        elif getattr(self, "gave_up", False):
            worst = EX_SOFTWARE
        if self.operations is not None:
            self.operations.close()
        if worst == EX_CONFIG:
            log.debug("txmail-qp: configuration error (exit status 78)")
        elif not self.daemon:
            log.info("txmail-qp pass by %d processes: %s%s (exit status %d)", self.processes,
                     self.totals.summary(), _missing(self.unreported), worst)
        elif self.stopping is not None:
            log.info("txmail-qp stopped on %s: %d processes ended (exit status %d)",
                     signal.Signals(self.stopping).name, self.processes, worst)
        return worst


def supervise(processes, settings, daemon, child_main, restore=True):
    """``txmail-qp`` with several processes: run them, return the exit status
    (``restore``: see :meth:`Supervisor.run`)."""
    operations = None
    if daemon or settings.metrics_file:
        from .procmetrics import ParentOperations

        operations = ParentOperations(settings, daemon)
    return Supervisor(processes, settings, daemon=daemon,
                      operations=operations).run(child_main, restore)


def _missing(unreported):
    """What the one-pass summary lacks: `` (1 process killed by SIGKILL: its counts
    are missing)``, or nothing when every child reported its pass."""
    if not unreported:
        return ""
    hows = sorted({_how(status) for status in unreported})
    whose = "its counts are" if len(unreported) == 1 else "their counts are"
    noun = "process" if len(unreported) == 1 else "processes"
    return f" ({len(unreported)} {noun} {', '.join(hows)}: {whose} missing)"


def _preload(settings):
    """Import, once in the parent, what each child would import lazily for its first
    pass (the queue backend): forked children share these pages instead of each
    importing them again -- a cron pass's start-up.  Imports only: no thread, file or
    connection is made by them.  Not the SMTP transport (smtplib, ssl, the email
    package's parser): a child imports it when it has a message to send, so a cron
    pass over an empty queue never pays for it."""
    import concurrent.futures  # noqa: F401 (the processor's workers)

    if settings.queue_url:
        from ..queue.sql import backend  # noqa: F401
    else:
        from ..queue.maildir import backend  # noqa: F401,F811


def _noted(signum, frame):
    """The parent's handler: nothing; the wake-up pipe carries the signal to the loop."""


def _kill(pid, signum):
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _exit(code):
    """A forked child ends here: flush the logs and stdio, skip the parent's atexit."""
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code if isinstance(code, int) else EX_SOFTWARE)
