"""``txmail-qp --daemon``: pass after pass over the queue until SIGTERM or SIGINT.

The loop is: mark the watcher, run a pass, then sleep until new mail
arrives (the queue's watcher: inotify on a spool's ``new/``, see
:mod:`pyramid_txmail.queue.maildir.watch`; LISTEN/NOTIFY on PostgreSQL), or a timer comes
due -- the queue's :meth:`~pyramid_txmail.queue.interface.IQueue.next_due`:
the earliest deferred message's ``next_attempt``, the moment the oldest
foreign claim turns stale (``mail.claim_timeout``), and at the latest
:data:`RESCAN_INTERVAL` -- or a signal arrives.

Signals only set flags and wake the sleeper (see :class:`Signals`: no
Python signal handler runs, a thread takes them with ``sigwait``); the loop
does the work:

* SIGTERM, SIGINT: stop.  ``run_pass(stop)`` finishes the message(s) in
  flight, which are recorded as usual; the messages not started stay
  queued, untouched, for the next run.  A second signal changes nothing (the
  in-flight SMTP transaction is bounded by ``mail.timeout`` per step and
  ``mail.data_timeout`` for the reply to the final dot; SIGKILL abandons
  it, and its claim comes back after ``mail.claim_timeout``).
* SIGHUP: re-open the log files of the ini's ``FileHandler``\\ s (for
  logrotate) at once, even in the middle of a long pass -- a thread of the
  daemon's own, ``txmail-logs``, does it, never the signal thread (a
  logging lock held by a worker writing to a full disk must not keep
  SIGTERM from being taken) -- and make a pass when the current one ends.

The SMTP connections live for one pass: the processor's workers each open
one when they have a message and close it when the pass ends, so an idle
daemon holds no connection open.
"""
from __future__ import annotations

import logging
import signal
import threading
import time

from ..queue import as_queue
from ..queue.wakeup import WatchLost
from ..util.printable import get_logger
from .outcomes import retry_horizon
from .pass_stats import PassStats

log = get_logger("pyramid_txmail.daemon")

#: The deferred queue and the claims are looked at at least this often.
RESCAN_INTERVAL = 60.0
#: A timer never makes the daemon pass more often than this (no spinning on a
#: deferred message that is due but cannot be claimed).
MIN_TIMER_WAIT = 1.0
#: Retry due times are rounded up by this, so the pass does not run a hair early.
TIMER_SLACK = 0.05
#: Waits after a pass that raised, growing with each failure in a row.
ERROR_BACKOFF = (1.0, 5.0, 15.0, 60.0)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def reopen_log_files():
    """Re-open every logging ``FileHandler``'s file (after logrotate moved it)."""
    handlers = set(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        handlers.update(getattr(logger, "handlers", ()))
    reopened = []
    for handler in handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                old = handler.setStream(handler._open())
                if old is not None:
                    old.close()
            finally:
                handler.release()
            reopened.append(handler.baseFilename)
    return sorted(reopened)


class Signals:
    """SIGTERM/SIGINT set :attr:`stop`, SIGHUP sets :attr:`hup`, and the waker is poked.

    No Python signal handler does this work.  A handler runs in the main
    thread between two bytecodes, wherever that thread is -- inside
    ``Event.set()`` holding its lock (a second handler taking that lock
    deadlocks for good), inside a logging call, or inside the previous
    handler (a storm nests them until RecursionError).  So the signals are
    *blocked* (``pthread_sigmask``) in the thread that enters, and so in
    every thread started after it (the processor's workers inherit the
    mask), and one thread, ``txmail-signals``, takes them with
    :func:`signal.sigwait`.  That thread is ordinary code: it may set
    events and write to the waker.  Blocked signals of one kind that
    arrive while it is busy are merged into one by the kernel, so a storm
    costs a few loop turns, never a stack.

    Use as a context manager around the daemon.  ``handle_hup=False`` (a
    one-pass run) leaves SIGHUP alone.  ``restore=True`` puts the signal mask
    and dispositions back on exit (for callers that go on running, such as
    tests); ``txmail-qp`` passes ``restore=False``: its process ends right
    after, and a SIGTERM arriving during that shutdown must not kill it with
    the default disposition (exit status -15 instead of 0).

    Child processes inherit the blocked mask (exec keeps it); nothing in
    txmail-qp starts one, but an application's event subscriber that does
    should unblock the signals in the child (``signal.pthread_sigmask`` in
    the program it runs) if it relies on them.
    """

    def __init__(self, waker=None, handle_hup=True, restore=True):
        self.handle_hup = handle_hup
        self.restore = restore
        self.stop = threading.Event()
        self.hup = threading.Event()  # the loop: make a pass
        self.reopen = threading.Event()  # the txmail-logs thread: re-open the log files
        self.first_stop = None  # the first SIGTERM/SIGINT taken (for logging)
        self.stops_received = 0
        self.waker = waker
        self.signums = STOP_SIGNALS + ((signal.SIGHUP,) if handle_hup else ())
        self._thread = None
        self._closing = False
        self._lock = threading.Lock()  # taken by the signal thread only, never in a handler
        self._saved_mask = None
        self._saved_handlers = {}
        self._saved_fd = None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set dispositions: the caller stops us
        self._saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.signums)
        for signum in self.signums:
            # Not SIG_IGN (an ignored signal is discarded before sigwait sees it,
            # as after nohup or `cmd &`), not SIG_DFL (a thread started before us,
            # without the mask, would be killed by it): a thread that does not
            # block the signal hands it on to the signal thread.
            self._saved_handlers[signum] = signal.signal(signum, self._hand_on)
        self._thread = threading.Thread(target=self._take_signals, name="txmail-signals",
                                        daemon=True)
        self._thread.start()
        if self.waker is not None:  # wakes the main thread to run _hand_on
            self._saved_fd = signal.set_wakeup_fd(self.waker.write_fd,
                                                  warn_on_full_buffer=False)
        return self

    def _hand_on(self, signum, frame):
        """Disposition for a thread that does not block the signals (one started
        before :meth:`__enter__`): re-send it to the signal thread, where it is
        blocked and taken by sigwait.  No lock, no logging.  Python runs this in
        the main thread when it next runs Python code: the wakeup fd wakes it
        from a wait on the waker, not from a wait on a lock.  txmail-qp starts
        no thread before :meth:`__enter__`, so there it never runs."""
        signal.pthread_kill(self._thread.ident, signum)

    def _take_signals(self):
        while True:
            signum = signal.sigwait(self.signums)
            with self._lock:  # __exit__ may be closing the waker's pipe meanwhile
                if self._closing:
                    if self.restore:
                        return
                    continue  # txmail-qp: taken, and nothing more, until the process ends
                if signum == signal.SIGHUP:
                    self.hup.set()
                    self.reopen.set()
                else:
                    if self.first_stop is None:
                        self.first_stop = signum
                        log.debug("%s taken: no new message is claimed; the ones in flight "
                                  "finish, then it stops", signal.Signals(signum).name)
                    self.stops_received += 1
                    self.stop.set()
                if self.waker is not None:
                    self.waker.wake()

    def __exit__(self, *exc):
        if self._thread is None:
            return
        with self._lock:  # after this the thread never touches the waker (closed next)
            self._closing = True
        if self._saved_fd is not None:
            signal.set_wakeup_fd(self._saved_fd)
        if not self.restore:
            return  # txmail-qp: the signal thread keeps taking them until the process ends
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, handler)
        signal.pthread_kill(self._thread.ident, self.signums[0])  # ends its sigwait
        self._thread.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, self._saved_mask)

    def first_stop_name(self):
        return signal.Signals(self.first_stop).name if self.first_stop else "request"


class Daemon:
    """Runs ``run_pass(stop) -> PassStats`` whenever there may be work.

    ``run_pass`` is normally a :class:`~pyramid_txmail.processor.processor.Processor`'s
    ``run_once``: it finishes the messages in flight once ``stop`` is set,
    and closes its SMTP connections before it returns.  ``queue`` is the
    :class:`~pyramid_txmail.queue.interface.IQueue` it drains (a
    :class:`~pyramid_txmail.queue.maildir.spool.Spool` is wrapped); ``watcher`` the queue's
    :meth:`~pyramid_txmail.queue.interface.IQueue.watcher`; ``signals`` a
    :class:`Signals` (its ``stop`` and ``hup`` events); ``waker`` the
    :class:`~pyramid_txmail.queue.maildir.watch.Waker` that signals poke.
    """

    def __init__(self, queue, settings, run_pass, watcher, signals, waker, *,
                 rescan=RESCAN_INTERVAL, clock=None, name="txmail-qp daemon",
                 stop_hint="stop with SIGTERM or SIGINT"):
        self.queue = as_queue(queue)
        self.name = name  # what its log lines call it: the in-app thread says so
        self.stop_hint = stop_hint
        self.settings = settings
        self.run_pass = run_pass
        self.watcher = watcher
        self.signals = signals
        self.waker = waker
        self.rescan = rescan
        self.clock = clock if clock is not None else getattr(self.queue, "clock", time.time)
        self.passes = 0
        self.totals = PassStats()
        self._errors_in_a_row = 0

    @property
    def stop(self):
        return self.signals.stop

    def run(self):
        """Pass, sleep, repeat; returns the summed :class:`PassStats` once stopped."""
        log.info("%s started on %s: %s, %d worker(s); %s", self.name, self.queue.where,
                 self.watcher.describe(), self.settings.workers, self.stop_hint)
        done = threading.Event()
        reopener = threading.Thread(target=self._reopen_logs, args=(done,),
                                    name="txmail-logs", daemon=True)
        reopener.start()
        try:
            while not self.stop.is_set():
                self._mark()
                delay = self._pass()
                if self.stop.is_set():
                    break
                self._sleep(delay)
                if self.signals.hup.is_set():
                    self.signals.hup.clear()
                    log.info("SIGHUP: making a pass")
        finally:
            self.watcher.close()
            done.set()
            self.signals.reopen.set()  # ends its wait
            reopener.join()
        self._log_stop()
        return self.totals

    def _reopen_logs(self, done):
        """``txmail-logs``: re-open the log files on each SIGHUP, also during a pass."""
        reopen = self.signals.reopen
        while True:
            reopen.wait()
            if done.is_set():
                return
            reopen.clear()  # a HUP from now on asks again; a storm coalesces
            try:
                files = reopen_log_files()
            except OSError as exc:
                log.error("SIGHUP: cannot re-open the log files: %s", exc)
                continue
            log.info("SIGHUP: re-opened %s", ", ".join(files) if files else "no log files")

    def _mark(self):
        try:
            self.watcher.mark()
        except WatchLost as exc:
            self._fall_back_to_polling(exc)

    def _sleep(self, delay):
        """Until new mail, a timer, or a signal; ``delay`` None means: until a timer."""
        if delay is None:
            try:
                delay = self.next_wake_in()
            except OSError as exc:
                delay = ERROR_BACKOFF[-1]
                log.warning("cannot read the retry times in %s: %s; next pass in %gs",
                            self.queue.where, exc, delay)
            except Exception:  # a bug or an odd file must not end the daemon
                delay = ERROR_BACKOFF[-1]
                log.exception("cannot compute the next retry time in %s; next pass in %gs",
                              self.queue.where, delay)
        try:
            why = self.watcher.wait(delay, self.waker)
        except WatchLost as exc:
            self._fall_back_to_polling(exc)
            why = "watch lost"
        log.debug("woke up after at most %.1fs: %s", delay, why)

    def _fall_back_to_polling(self, exc):
        log.warning("%s; polling every %gs instead", exc, self.settings.poll_interval)
        self.watcher.close()
        self.watcher = self.queue.watcher(self.settings, "poll")
        self.watcher.mark()

    def _pass(self):
        """One pass; returns a back-off delay if it raised, else None."""
        self.passes += 1
        try:
            stats = self.run_pass(self.stop)
        except Exception:
            wait = ERROR_BACKOFF[min(self._errors_in_a_row, len(ERROR_BACKOFF) - 1)]
            self._errors_in_a_row += 1
            log.exception("txmail-qp pass over %s failed; next try in %gs",
                          self.queue.where, wait)
            return wait
        self._errors_in_a_row = 0
        self.totals.add(stats)
        busy = stats.sent or stats.deferred or stats.failed or stats.recovered or stats.errors
        log.log(logging.INFO if busy else logging.DEBUG, "txmail-qp pass over %s: %s",
                self.queue.where, stats.summary())
        return None

    def next_wake_in(self):
        """Seconds until a deferred retry or a stale claim comes due (at most ``rescan``).

        An unknown retry time, or one beyond any retry delay (a clock that
        was ahead), counts as now (:meth:`~pyramid_txmail.queue.interface.IQueue.next_due`).
        """
        now = self.clock()
        due = now + self.rescan
        found = self.queue.next_due(self.settings, now, retry_horizon(self.settings))
        if found is not None:
            due = min(due, found + TIMER_SLACK)
        return max(MIN_TIMER_WAIT, due - now)

    def _log_stop(self):
        asked = self.signals.stops_received
        again = (f" (asked {asked} times; a repeated signal still lets the "
                 "message in flight finish -- SIGKILL abandons it)" if asked > 1 else "")
        log.info("%s stopped on %s after %d %s%s: %s", self.name,
                 self.signals.first_stop_name(), self.passes,
                 "pass" if self.passes == 1 else "passes", again, self.totals.summary())
