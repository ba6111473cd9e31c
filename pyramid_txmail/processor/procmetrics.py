"""Metrics, ``/healthz`` and systemd notification of ``txmail-qp`` with several processes.

One TCP port cannot be bound by N processes, systemd listens to one process
(``NOTIFY_SOCKET``), and one textfile cannot be written by N writers without each
overwriting the others' numbers.  So the *parent* does all of it:

* **Delivery counters** are counted where the deliveries happen, in the children,
  through prometheus_client's multiprocess mode: the parent makes a private
  ``PROMETHEUS_MULTIPROC_DIR`` before it forks, each child's counters live in
  memory-mapped files there, and the parent's ``/metrics`` (and
  ``mail.metrics_file``) sums them (:class:`prometheus_client.multiprocess.MultiProcessCollector`).
  A restarted child's files stay, so the sums never go backwards.
* **Queue gauges** are read by the parent from the queue, as with one process.
* **/healthz and the watchdog** judge the parent's :class:`~.health.Progress`, fed by
  the children's pass reports (:mod:`.supervisor`): any child completing a pass is
  progress; the relays' health is the children's, from the same reports
  (:class:`ChildrenRelays`).
* **systemd**: ``READY=1`` once every child has started its first pass, ``STATUS=``
  after each pass a child reports, ``WATCHDOG=1``, ``STOPPING=1`` -- from the parent
  only (the children's environment has no ``NOTIFY_SOCKET``).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import weakref

from pyramid.exceptions import ConfigurationError

from ..util.printable import get_logger
from .health import Health, MetricsServer, Progress
from .metrics import QueueCollector, require_prometheus
from .reporting import PassReports
from .sdnotify import Notifier

log = get_logger("pyramid_txmail.procmetrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _Exposition:
    """What :class:`~.health.MetricsServer` serves: the parent's registry."""

    def __init__(self, prom, registry):
        self.prom, self.registry = prom, registry

    def exposition(self):
        return self.prom.generate_latest(self.registry)

    def content_type(self):
        return self.prom.CONTENT_TYPE_LATEST


class ChildrenRelays:
    """The relays as the children last reported them after a pass: what
    :class:`~.health.Health` asks a processor's :class:`~pyramid_txmail.relay.smtp_session.Relays`.

    A relay is failing when some child's latest pass found it failing, or when the
    children's consecutive failed session set-ups with it add up to what one
    process counts (``FAILURES_BEFORE_REST``): the messages are shared out, so one
    process alone may never see enough of them.  Resting: the most any child rests.
    """

    def __init__(self):
        self.hosts = ()
        self._failing = {}
        self._failures = {}
        self._resting = {}

    def report(self, index, report):
        self.hosts = tuple(tuple(h) for h in report["hosts"])
        self._failing[index] = {tuple(h) for h in report["failing"]}
        self._failures[index] = {tuple(h): n for h, n in report.get("failures", ())}
        self._resting[index] = report["resting"]

    def failing(self):
        from ..relay.smtp_session import FAILURES_BEFORE_REST

        found = set().union(*self._failing.values()) if self._failing else set()
        for host in self.hosts:
            if sum(f.get(host, 0) for f in self._failures.values()) >= FAILURES_BEFORE_REST:
                found.add(host)
        return [h for h in self.hosts if h in found]

    def resting_count(self):
        return max(self._resting.values(), default=0)


class _RestingCollector:
    """``txmail_relays_resting`` as the children reported it (a per-process gauge)."""

    def __init__(self, relays):
        self.relays = relays

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        gauge = GaugeMetricFamily("txmail_relays_resting", "Relays skipped for "
                                  "mail.host_rest after failing to set up sessions (the "
                                  "most any process rests)")
        gauge.add_metric([], self.relays.resting_count())
        yield gauge


class ParentOperations(PassReports):
    """The parent's metrics port, textfile, /healthz and systemd notification."""

    def __init__(self, settings, daemon, environ=None):
        self.settings = settings
        self.daemon = daemon
        self.notifier = Notifier(environ) if daemon else Notifier({})
        self.port = settings.metrics_port if daemon else None
        self.metrics_dir = None
        self.server = None
        self.progress = None
        self.health = None
        self.exposition = None
        self.queue = None
        #: the DBAPI connections the queue view's pool opened (weakly: closed ones go)
        self._connections = weakref.WeakSet()
        self.is_ready = False
        if self.port or settings.metrics_file:
            key = "mail.metrics_port" if self.port else "mail.metrics_file"
            if "prometheus_client.values" in sys.modules and not os.environ.get(MULTIPROC_ENV):
                log.warning("prometheus_client was imported before txmail-qp started its "
                            "processes: their delivery counters are not summed")
            self.metrics_dir = tempfile.mkdtemp(prefix="txmail-qp-metrics.")
            os.environ[MULTIPROC_ENV] = self.metrics_dir  # before the fork, before the import
            try:
                prom = require_prometheus(key)
            except ConfigurationError:
                self.close()
                raise
            from prometheus_client import multiprocess

            self.prom = prom
            self.registry = prom.CollectorRegistry(auto_describe=True)
            multiprocess.MultiProcessCollector(self.registry, self.metrics_dir)
            self.exposition = _Exposition(prom, self.registry)
        if self.port:
            host = settings.metrics_host
            try:  # bound now: a port in use is a configuration error before any child runs
                self.server = MetricsServer(self.exposition, None, host, self.port)
            except OSError as exc:
                self.close()
                raise ConfigurationError(
                    f"mail.metrics_port = {self.port} (mail.metrics_host = {host}): cannot "
                    f"listen there: {exc.strerror or exc}") from None

    @property
    def counting(self):
        """Children count deliveries into the multiprocess directory."""
        return self.metrics_dir is not None

    def in_child(self):
        """In a freshly forked child (a restart, after :meth:`_open`): let go of every
        descriptor the parent's operations own -- its listening socket, its systemd
        socket, its queue view's database pool -- without closing the parent's."""
        if self.server is not None:
            self.server.httpd.socket.close()
        self.notifier.forget_in_child()
        engine = getattr(self.queue, "engine", None)
        if engine is not None:
            from . import child

            child.release_inherited_engine(engine, list(self._connections))

    def _open(self):
        """The parent's own view of the queue, opened after the children were forked."""
        if self.progress is not None:
            return
        from ..queue import open_queue

        self.queue = open_queue(self.settings, create=False)
        engine = getattr(self.queue, "engine", None)
        if engine is not None:  # what a child forked later must let go of (in_child)
            from sqlalchemy import event

            event.listen(engine, "connect", self._opened)
        self.progress = Progress(self.queue)
        self.progress.relays = self.relays = ChildrenRelays()
        self.health = Health(self.progress, self.settings)
        if self.exposition is not None:
            self.registry.register(QueueCollector(self.progress.reader))
            self.registry.register(_RestingCollector(self.relays))
        if self.settings.metrics_file:  # counters summed over passes, as one process's
            from .textfile import CumulativeTextfile

            self.textfile = CumulativeTextfile(self.settings.metrics_file, self.prom)
            self.progress.listeners.append(self._write_textfile)
            self.progress.failure_listeners.append(self._write_textfile)
        if self.notifier.enabled:
            self.progress.listeners.append(self._status)

    def ready(self):
        """Every child is up: serve, tell systemd, pet its watchdog."""
        self._open()
        self.is_ready = True
        if self.server is not None:
            self.server.httpd.health = self.health
            self.server.start()
        self.notifier.ready(f"serving {self.queue.where}")
        self.notifier.start_watchdog(self.health.progressing)

    def pass_done(self, stats, index=0, report=None):
        self._open()
        if report and "hosts" in report:
            self.relays.report(index, report)
        self.progress.pass_done(stats, time.time())

    def stopping(self):
        self.notifier.stopping()

    def close(self):
        self.notifier.close()
        if self.server is not None:
            if self.server._thread.is_alive():
                self.server.close()
            else:
                self.server.httpd.server_close()
            self.server = None
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            if os.environ.get(MULTIPROC_ENV) == self.metrics_dir:
                del os.environ[MULTIPROC_ENV]

    def textfile_registry(self):
        return self.registry

    def _opened(self, dbapi_connection, record):
        """A connection of the parent's queue view, for a child forked later to let go
        of.  Only those with a socket of their own can be referred to weakly, and only
        they need it: sqlite3's connection (a file the child never touches) can be
        neither."""
        try:
            self._connections.add(dbapi_connection)
        except TypeError:  # cannot create weak reference: no socket to let go of
            pass
