"""The operator's side of ``txmail-qp``: metrics, health, textfile and systemd, in one place.

``txmail-qp`` makes an :class:`Operations` from the settings and asks it for
its processor and, with ``--daemon``, to serve around the daemon's loop; the
rest of it (and :mod:`.daemon`, :mod:`.processor`) stays as it was.  Nothing is
set up that the settings and environment do not ask for: no metrics setting
and no ``$NOTIFY_SOCKET`` gives a plain :class:`~.processor.Processor`, and a
one-pass run without them imports neither the health nor the metrics modules
(their HTTP server and prometheus_client are start-up time a cron pass pays).
"""
from __future__ import annotations

import contextlib

from ..util.config_error import configuration_error
from ..util.printable import get_logger
from . import child as child_side
from .processor import Processor
from .reporting import PassReports
from .sdnotify import Notifier

log = get_logger("pyramid_txmail.operate")


class Operations(PassReports):
    def __init__(self, queue, settings, daemon, environ=None):
        self.queue = queue
        self.settings = settings
        self.daemon = daemon
        self.notifier = Notifier(environ) if daemon else Notifier({})
        port = settings.metrics_port if daemon else None
        # a child of several processes counts for its parent's /metrics (.procmetrics)
        counting = child_side.CHILD is not None and child_side.CHILD.counting
        self.wanted = bool(port or settings.metrics_file or self.notifier.enabled or counting)
        self.progress = self.metrics = self.health = None
        self.server = None
        if not (daemon or self.wanted):
            return  # one plain pass
        from .health import Health, Progress

        self.progress = Progress(queue)
        if port or settings.metrics_file or counting:
            from .metrics import Metrics

            key = "mail.metrics_port" if port else "mail.metrics_file"
            self.metrics = Metrics(self.progress, key)
        self.health = Health(self.progress, settings)
        if settings.metrics_file:  # after every pass, also one that raised
            from .textfile import CumulativeTextfile

            self.textfile = CumulativeTextfile(settings.metrics_file, self.metrics.prom)
            self.progress.listeners.append(self._write_textfile)
            self.progress.failure_listeners.append(self._write_textfile)
        if self.notifier.enabled:
            self.progress.listeners.append(self._status)

    def processor(self, *args, **kwargs):
        """The processor, metered when anything watches it."""
        if not self.wanted:
            return Processor(*args, **kwargs)
        from .metrics import MeteredProcessor

        return MeteredProcessor(*args, progress=self.progress, metrics=self.metrics, **kwargs)

    @contextlib.contextmanager
    def serving(self):
        """Around the daemon's loop: the HTTP port, READY, the watchdog, STOPPING."""
        port = self.settings.metrics_port
        if port:
            from .health import MetricsServer

            host = self.settings.metrics_host
            try:
                self.server = MetricsServer(self.metrics, self.health, host, port).start()
            except OSError as exc:
                raise configuration_error(f"mail.metrics_port = {port} (mail.metrics_host = "
                                          f"{host}): cannot listen there: "
                                          f"{exc.strerror or exc}") from None
        from .stop_deadline import check_systemd

        check_systemd(self.settings)  # a TimeoutStopSec shorter than one message may take
        try:
            self.notifier.ready(f"serving {self.queue.where}")
            self.notifier.start_watchdog(self.health.progressing)
            yield self
        finally:
            self.notifier.stopping()
            self.notifier.close()
            if self.server is not None:
                self.server.close()

    def textfile_registry(self):
        return self.metrics.registry
