"""``/healthz`` and ``/metrics`` on ``mail.metrics_port``: probes for systemd and Kubernetes.

The daemon is unhealthy (503, with a JSON body saying why) when

* it is **stuck**: work is due, yet no pass completed and no message was
  settled within :meth:`Health.stuck_after` -- ``mail.claim_timeout`` (the
  longest one message may take before another processor may take it over) plus
  the daemon's rescan interval;
* the **queue is unreachable**: the spool directory is gone or unreadable, or
  the database does not answer;
* **every relay is failing**: resting after failed session set-ups, or, for a
  lone relay (never rested), its last few set-ups all failed.

The same verdict decides whether the systemd watchdog is petted
(:mod:`.sdnotify`), except that "work is due" is not asked there: an idle
daemon still passes at least once a rescan interval, so a loop that stopped
turning is stuck whether or not mail waits.
"""
from __future__ import annotations

import errno
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler

from ..util.printable import get_logger, printable
from .daemon import RESCAN_INTERVAL
from .http_listener import BoundedHTTPServer

log = get_logger("pyramid_txmail.health")

#: Queue readings younger than this are served again (a big spool is costly to list).
STATUS_CACHE_SECONDS = 5.0


class QueueReader:
    """The queue's status, shared by scrapes for a few seconds (see module doc).

    :meth:`read` returns the status dict, or raises what the backend raised
    (the spool directory gone, the database down) -- :mod:`.health` reports that.
    """

    def __init__(self, queue, ttl=STATUS_CACHE_SECONDS, clock=time.monotonic):
        self.queue = queue
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._read_at = None
        self._status = None

    def invalidate(self):
        with self._lock:
            self._read_at = None

    def read(self):
        with self._lock:  # concurrent scrapes wait for one reading, not make two
            now = self.clock()
            if self._read_at is None or now - self._read_at >= self.ttl:
                self._status = None
                reachable(self.queue)
                self._status = self.queue.status(time.time())
                self._read_at = now
            return self._status


def reachable(queue):
    """Raise OSError naming the directory when a spool is gone or unusable.

    A spool's status lists missing directories as empty (a spool being set
    up), so a removed or unmounted spool would look idle and healthy; the SQL
    outbox's status raises by itself when the database is down.
    """
    spool = getattr(queue, "spool", None)
    if spool is None:
        return
    for state in ("new", "cur", "deferred"):
        path = os.path.join(spool.path, state)
        if not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, "no such spool directory", path)
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "spool directory not writable", path)


class Progress:
    """What the daemon did lately: for /healthz, the watchdog and systemd's STATUS.

    Needs no prometheus_client: a daemon under systemd without metrics has it too.
    ``relays`` is set by the processor when it delivers over SMTP.
    """

    def __init__(self, queue, clock=time.monotonic):
        self.reader = QueueReader(queue)
        self.clock = clock
        self.relays = None
        self.last_pass = None  # unix time of the last completed pass
        self.last_progress = clock()  # a pass completed or a message settled
        self.last_summary = "no pass yet"
        self.listeners = []  # called with the PassStats after each pass
        self.failure_listeners = []  # called after a pass that raised

    def progressed(self):
        self.last_progress = self.clock()

    def pass_done(self, stats, now):
        self.last_pass = now
        self.last_summary = stats.summary()
        self.progressed()
        self.reader.invalidate()
        for listener in self.listeners:
            try:
                listener(stats)
            except Exception:
                log.exception("a pass listener failed")

    def pass_failed(self):
        self.reader.invalidate()
        for listener in self.failure_listeners:
            try:
                listener()
            except Exception:
                log.exception("a pass listener failed")


class Health:
    """The verdict, from a :class:`Progress`."""

    def __init__(self, progress, settings):
        self.progress = progress
        self.settings = settings

    def stuck_after(self):
        return self.settings.claim_timeout + RESCAN_INTERVAL

    def progressing(self):
        """True while passes or messages have progressed within :meth:`stuck_after`."""
        p = self.progress
        return p.clock() - p.last_progress <= self.stuck_after()

    def check(self):
        """``(healthy, body)``: body is a dict with ``status`` and ``problems``."""
        problems = []
        status = None
        try:
            reachable(self.progress.reader.queue)  # cheap, so always fresh
            status = self.progress.reader.read()  # a few seconds old at most
        except Exception as exc:
            # the cached reading is stale now: the next scrape reads afresh (txmail_queue_up
            # then says 0, as /healthz does, rather than up to a cache's age later)
            self.progress.reader.invalidate()
            problems.append({"check": "queue", "problem": "queue unreachable",
                             "detail": f"{self.progress.reader.queue.where}: {_why(exc)}"})
        if status is not None and not self.progressing():
            due = (status.get("queued") or 0) + (status.get("deferred_due") or 0)
            if due:
                problems.append({"check": "progress", "problem": "stuck",
                                 "detail": f"{due} message(s) due, but no pass completed "
                                           f"for over {self.stuck_after():g}s"})
        relays = self.progress.relays
        if relays is not None:
            failing = relays.failing()
            if failing and len(failing) == len(relays.hosts):
                names = ", ".join(f"{h}:{p}" for h, p in failing)
                problems.append({"check": "relays", "problem": "every relay is resting",
                                 "detail": f"no session could be set up lately with {names}"})
        body = {"status": "fail" if problems else "ok", "problems": problems,
                "last_pass": self.progress.last_pass, "last_pass_summary":
                self.progress.last_summary}
        if status is not None:
            body["queued"] = status.get("queued")
            body["deferred"] = status.get("deferred")
        return not problems, body


def _why(exc):
    """One line: a database error's first line of the driver's reason (never the SQL or
    the URL, which :attr:`where` already names without its password), else the error."""
    if type(exc).__module__.startswith("sqlalchemy"):
        from ..queue.sql.engine import unreachable

        return unreachable(exc) or type(exc).__name__
    return printable(f"{type(exc).__name__}: {exc}")


class _Handler(BaseHTTPRequestHandler):
    server_version = "txmail-qp"

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            metrics = self.server.metrics
            if metrics is None:
                self._send(404, b"no metrics: prometheus_client is not installed\n",
                           "text/plain")
                return
            try:
                body = metrics.exposition()
            except Exception as exc:
                log.exception("metrics: cannot render /metrics")
                self._send(500, b"cannot render the metrics: " + repr(exc).encode(), "text/plain")
                return
            self._send(200, body, metrics.content_type())
        elif path in ("/healthz", "/livez", "/readyz"):
            healthy, body = self.server.health.check()
            self._send(200 if healthy else 503, json.dumps(body).encode() + b"\n",
                       "application/json")
        else:
            self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # scrapes every few seconds: debug only
        log.debug("metrics http: %s", fmt % args)


class MetricsServer:
    """The HTTP server, in a daemon thread of its own, until :meth:`close`."""

    def __init__(self, metrics, health, host, port, **limits):
        self.httpd = BoundedHTTPServer((host, port), _Handler, **limits)  # IPv6, timeouts
        self.httpd.metrics = metrics
        self.httpd.health = health
        self.address = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="txmail-metrics",
                                        daemon=True)

    def start(self):
        self._thread.start()
        log.info("serving /metrics and /healthz on %s", self.httpd.url)
        return self

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()
