"""``mail.processor = thread``: the daemon's loop in a thread of the web process.

A small application then needs neither a cron line nor a service for
``txmail-qp``: the same :class:`~pyramid_txmail.processor.processor.Processor`
and :class:`~pyramid_txmail.processor.daemon.Daemon` (sleeping on the queue's
watcher and its ``next_due``, spool or SQL outbox alike) run in a daemon
thread named ``txmail-processor``.  Several web processes on one queue are
safe for the same reason several ``txmail-qp`` are: claims are atomic (a
spool's rename and lock, the outbox's ``SKIP LOCKED`` leases).

When it starts -- on the first request a process serves, never before.
Application creation cannot tell a server from a script: ``pshell``,
``prequest``, ``txmail-qp``, ``txmail-queue`` and Alembic's ``env.py`` all
build the app through ``bootstrap``/``get_app`` (``ApplicationCreated``
fires in each), but none of them serves requests.  ``prequest`` does push one
request through the app; it marks it ``paste.command_request`` and is skipped.
``pserve --reload``'s watcher process (hupper's monitor) never loads the
app at all, only its worker does, and the worker serves.  Starting per
process (the pid is checked on each request) also covers servers that fork
after loading the app (gunicorn ``--preload``): a thread does not survive
``fork``, so each worker starts its own at its first request, and
:func:`os.register_at_fork` forgets the parent's thread in the child.  The
trade-off: mail queued while a process has served nothing (after a restart,
by a cron script) waits for its first request; an app that must deliver
without traffic should run ``txmail-qp --daemon`` as a service instead.

How it stops -- at interpreter exit, through ``threading._register_atexit``
(run before the interpreter joins its threads, and before
``concurrent.futures`` stops taking work): the stop flag is set, the
watcher's sleep is woken, the message(s) in flight are finished within the
SMTP deadlines (``mail.timeout``, ``mail.data_timeout``) and the rest stay
queued.  A server that ends with ``SIGTERM`` by dying of it (waitress under
``pserve``: its default disposition) would skip that; so when the app is
created in the main thread and ``SIGTERM`` still has its default
disposition, a handler is installed that raises ``SystemExit`` in the main
thread -- the server unwinds as on Ctrl-C, the interpreter exits with status
0 and stops the thread as above -- *if* this process started the thread.
In a process that did not (a script), it restores the default and
re-sends ``SIGTERM`` to itself, so a script dies of it as before.  Servers
with a ``SIGTERM`` handler of their own (gunicorn's workers) keep theirs,
and exit through the interpreter's normal shutdown.
"""
from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref

from ..queue import open_queue
from ..queue.interface import QueueUnavailable
from ..queue.wakeup import Waker, WatchUnavailable
from ..util.printable import get_logger
from .daemon import Daemon
from .processor import Processor
from .stop_deadline import check_gunicorn, check_systemd, in_flight_deadline

log = get_logger("pyramid_txmail.processor.inapp")

THREAD_NAME = "txmail-processor"
#: The longest wait at exit for the thread to finish its message in flight;
#: ``None``: as long as the SMTP deadlines allow (see :meth:`InAppProcessor.exit_timeout`).
JOIN_SLACK = 5.0


class ThreadControl:
    """What :class:`~pyramid_txmail.processor.daemon.Daemon` reads of its
    :class:`~pyramid_txmail.processor.daemon.Signals`, set by method calls
    instead of signals (a thread that is not the main one may not take them)."""

    def __init__(self, waker):
        self.waker = waker
        self.stop = threading.Event()
        self.hup = threading.Event()
        self.reopen = threading.Event()  # never set: log files belong to the server
        self.stops_received = 0
        self.why = None

    def request_stop(self, why):
        if self.why is None:
            self.why = why
        self.stops_received += 1
        self.stop.set()
        self.waker.wake()

    def first_stop_name(self):
        return self.why or "request"


class InAppProcessor:
    """Starts the processor thread once per process, and stops it at exit.

    ``settings`` are the app's parsed :class:`~pyramid_txmail.settings.MailSettings`,
    ``registry`` the app's registry, through which MailSent, MailDeferred and
    MailFailed are notified.
    """

    def __init__(self, settings, registry):
        self.settings = settings
        self.registry = registry
        self._lock = threading.Lock()
        self._forget()
        after_fork = weakref.WeakMethod(self._after_fork)  # apps made in tests come and go
        os.register_at_fork(after_in_child=lambda: after_fork() and after_fork()())

    def _forget(self):
        self.pid = None  # the process the thread was started in
        self.thread = None
        self.control = None
        self.failed = False  # the queue could not be opened here: said once, not per request

    def _after_fork(self):
        """In a forked child the parent's thread does not exist; its pipe, watcher
        and database connections are the parent's, so they are dropped, not closed."""
        self._lock = threading.Lock()
        self._forget()

    @property
    def running(self):
        return self.pid == os.getpid() and self.thread is not None and self.thread.is_alive()

    def on_new_request(self, event):
        """A ``NewRequest`` subscriber: the first request of a process starts the thread."""
        if self.pid == os.getpid():
            return
        if event.request.environ.get("paste.command_request"):
            return  # prequest: one request from a script, not a server
        self.ensure_started()

    def ensure_started(self):
        """Start the thread in this process unless it was started here already."""
        with self._lock:
            if self.pid == os.getpid():
                return self.thread
            self._forget()
            self.pid = os.getpid()
            try:
                queue = open_queue(self.settings, create=False)
                watcher = queue.watcher(self.settings, "auto")
            except (QueueUnavailable, WatchUnavailable, OSError) as exc:
                self.failed = True
                log.error("mail.processor = thread: cannot start the processor thread in "
                          "pid %d: %s; the queue is not delivered by this process", self.pid,
                          exc)
                return None
            waker = Waker()
            self.control = ThreadControl(waker)
            processor = Processor(queue, None, self.settings, registry=self.registry)
            daemon = Daemon(queue, self.settings, processor.run_once, watcher,
                            self.control, waker,
                            name=f"in-app processor thread (mail.processor = thread) in pid "
                                 f"{self.pid}",
                            stop_hint="it stops when the web process exits")
            self.thread = threading.Thread(target=self._run, args=(daemon, waker),
                                           name=THREAD_NAME, daemon=True)
            _register_exit(self.stop_at_exit)
            self.thread.start()
            log.info("mail.processor = thread: processor thread started in pid %d on %s",
                     self.pid, queue.where)
            # a stop deadline shorter than one message in flight: said once per process
            check_gunicorn(self.settings) or check_systemd(self.settings)
            return self.thread

    def _run(self, daemon, waker):
        try:
            daemon.run()
        except Exception:  # the web process goes on; say why its mail stopped moving
            log.exception("mail.processor = thread: the processor thread in pid %d ended "
                          "on an error; mail stays queued", os.getpid())
        finally:
            waker.close()

    def exit_timeout(self):
        """How long exit waits: one SMTP transaction's deadlines, and some slack."""
        return in_flight_deadline(self.settings) + JOIN_SLACK

    def stop(self, why="request", timeout=None):
        """Ask the thread to stop after its message(s) in flight, and wait for it."""
        if not self.running:
            return True
        log.info("mail.processor = thread: stopping the processor thread in pid %d (%s): "
                 "the message(s) in flight are finished, the rest stays queued",
                 os.getpid(), why)
        self.control.request_stop(why)
        self.thread.join(self.exit_timeout() if timeout is None else timeout)
        if self.thread.is_alive():
            log.warning("mail.processor = thread: the processor thread in pid %d did not "
                        "finish within %gs; its message in flight is sent again after "
                        "mail.claim_timeout", os.getpid(), timeout or self.exit_timeout())
            return False
        return True

    def stop_at_exit(self):
        self.stop("interpreter exit")

    def install_sigterm(self):
        """See the module's docstring: SIGTERM ends a serving process through
        ``SystemExit`` (clean stop of the thread), and a script as before."""
        if threading.current_thread() is not threading.main_thread():
            return False
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False  # the server's own (gunicorn), or a script's (txmail-qp)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return True

    def _on_sigterm(self, signum, frame):
        if self.running:
            raise SystemExit(0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _register_exit(callback):
    """Before the interpreter joins its threads (as concurrent.futures does), else atexit."""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(callback)
            return
        except RuntimeError:  # the interpreter is already shutting down
            return
    atexit.register(callback)  # pragma: no cover (Python without the private hook)


def includeme_processor(config, settings):
    """``mail.processor = thread``: the first request of each process starts the thread."""
    from pyramid.events import NewRequest
    from pyramid.exceptions import ConfigurationError

    if settings.metrics_port:
        # Every web process (gunicorn's workers) would bind the same port: the first
        # wins, the others fail, and a scrape sees one process's counts at random.
        raise ConfigurationError(
            f"mail.metrics_port = {settings.metrics_port}: not served with mail.processor "
            "= thread (one port cannot be bound by each web process); run txmail-qp "
            "--daemon as a service for /metrics and /healthz, or print the queue's gauges "
            "with `txmail-queue INI metrics` (docs/operating.rst, In-app processor thread)")
    inapp = InAppProcessor(settings, config.registry)
    config.add_subscriber(inapp.on_new_request, NewRequest)
    inapp.install_sigterm()
    return inapp
