"""Prometheus metrics of the queue processor (issue 15): what an operator scrapes.

Two kinds of numbers, from two places:

* **Queue gauges** (:class:`QueueCollector`) come from the queue itself, through
  :meth:`~pyramid_txmail.queue.interface.IQueueAdmin.status` -- the same numbers
  as ``txmail-queue status``, for the spool and the SQL outbox alike.  On a big
  spool that lists every directory, so one reading is shared by the scrapes of
  :data:`~pyramid_txmail.processor.health.STATUS_CACHE_SECONDS` and refreshed at once after every pass.
* **Delivery counters** (:class:`MeteredProcessor`) are counted by the process
  that delivers: they start at zero with it, as Prometheus counters do (its
  ``rate()`` copes with restarts).  ``txmail-queue INI metrics`` therefore prints
  the queue gauges only.

The names follow the Prometheus conventions: a ``txmail_`` prefix, ``_total`` on
counters, base units (``_seconds``), unix times as ``_timestamp_seconds``.
prometheus_client is the ``ops`` extra: :func:`require_prometheus` turns its
absence into a ConfigurationError naming the setting and the extra.
"""
from __future__ import annotations

import os
import tempfile

from ..relay.result import SENT, TEMPORARY
from ..util.config_error import configuration_error
from ..util.printable import get_logger
from .health import QueueReader
from .processor import Processor

log = get_logger("pyramid_txmail.metrics")

#: The latency histogram's buckets: from a second to past the default max_queue_time.
LATENCY_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400, float("inf"))


def require_prometheus(key):
    """prometheus_client, or a ConfigurationError saying which extra provides it."""
    try:
        import prometheus_client
    except ImportError:
        raise configuration_error(
            f"{key} is set, but prometheus_client is not installed: install "
            "pyramid_txmail[ops] (pip install 'pyramid_txmail[ops]')") from None
    return prometheus_client


def code_class(code):
    """``250`` → ``2xx``; no reply at all (a dropped connection) → ``none``."""
    if isinstance(code, int) and 200 <= code < 600:
        return f"{code // 100}xx"
    return "none"


def relay_label(relay):
    return relay or "none"


class QueueCollector:
    """txmail_queue_messages{state}, txmail_queue_oldest_age_seconds{state}."""

    def __init__(self, reader):
        self.reader = reader

    def describe(self):
        return []  # collected on demand: registering must not read the queue

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        try:
            status = self.reader.read()
        except Exception as exc:  # a scrape must still answer: up says the rest
            log.warning("metrics: cannot read the queue %s: %s", self.reader.queue.where, exc)
            status = None
        up = GaugeMetricFamily("txmail_queue_up",
                               "1 if the queue (spool directory or database) could be read")
        up.add_metric([], 0 if status is None else 1)
        yield up
        if status is None:
            return
        depth = GaugeMetricFamily("txmail_queue_messages", "Messages in the queue per state",
                                  labels=["state"])
        oldest = GaugeMetricFamily(
            "txmail_queue_oldest_age_seconds",
            "Age of the oldest message per state (0 when there is none)", labels=["state"])
        for info in status["states"].values():
            depth.add_metric([info["label"]], info["count"])
            oldest.add_metric([info["label"]], info["oldest_age"] or 0)
        due = GaugeMetricFamily("txmail_queue_deferred_due",
                                "Deferred messages whose retry is due now")
        due.add_metric([], status.get("deferred_due") or 0)
        yield depth
        yield oldest
        yield due


class Metrics:
    """The registry of one txmail-qp process and the instruments in it.

    ``progress`` is the process's :class:`~pyramid_txmail.processor.health.Progress`:
    its queue reader feeds the queue gauges, its relays the resting gauge.
    """

    def __init__(self, progress, key="mail.metrics_port"):
        prom = require_prometheus(key)
        self.prom = prom
        self.progress = progress
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.registry.register(QueueCollector(progress.reader))
        reg = self.registry
        labels = ["outcome", "relay", "code_class"]
        self.messages = prom.Counter(
            "txmail_messages", "Messages settled by this process: sent (left the queue), "
            "deferred or failed (dead-lettered)", labels, registry=reg)
        self.recipients = prom.Counter(
            "txmail_recipients", "Recipients settled by this process, per outcome, the relay "
            "that answered and its reply-code class", labels, registry=reg)
        self.attempts = prom.Counter(
            "txmail_delivery_attempts", "Delivery attempts (one per message handed to the "
            "relay)", registry=reg)
        self.latency = prom.Histogram(
            "txmail_queued_to_accepted_seconds", "From a message's queueing to an attempt "
            "in which recipients accepted it", buckets=LATENCY_BUCKETS, registry=reg)
        self.sessions = prom.Counter(
            "txmail_smtp_sessions", "SMTP sessions set up, per relay", ["relay"],
            registry=reg)
        self.session_failures = prom.Counter(
            "txmail_smtp_session_failures", "SMTP sessions that could not be set up, per "
            "relay", ["relay"], registry=reg)
        self.passes = prom.Counter("txmail_passes", "Passes over the queue completed",
                                   registry=reg)
        self.pass_errors = prom.Counter("txmail_pass_errors",
                                        "Passes that raised (retried after a back-off)",
                                        registry=reg)
        self.last_pass = prom.Gauge(
            "txmail_last_successful_pass_timestamp_seconds",
            "Unix time the last pass over the queue completed", registry=reg)
        self.resting = prom.Gauge("txmail_relays_resting",
                                  "Relays skipped for mail.host_rest after failing to set "
                                  "up sessions", registry=reg)
        self.resting.set_function(
            lambda: len(progress.relays.resting()) if progress.relays is not None else 0)

    def session_event(self, host, ok):
        relay = f"{host[0]}:{host[1]}" if isinstance(host, tuple) else str(host)
        (self.sessions if ok else self.session_failures).labels(relay).inc()

    def pass_done(self, stats, now):
        self.passes.inc()
        self.last_pass.set(now)

    def pass_failed(self):
        self.pass_errors.inc()

    # -- output --------------------------------------------------------------------

    def exposition(self):
        return self.prom.generate_latest(self.registry)

    def content_type(self):
        return self.prom.CONTENT_TYPE_LATEST

    def write_textfile(self, path):
        write_textfile(self.prom, self.registry, path)


def write_textfile(prom, registry, path):
    """The textfile-collector format to ``path``: a temporary file beside it, renamed
    over it, so node_exporter never reads half a file."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".txmail-metrics.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(prom.generate_latest(registry))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def queue_exposition(queue):
    """The queue gauges only (``txmail-queue INI metrics``: no process counts deliveries)."""
    prom = require_prometheus("txmail-queue INI metrics")
    registry = prom.CollectorRegistry(auto_describe=True)
    registry.register(QueueCollector(QueueReader(queue, ttl=0)))
    return prom.generate_latest(registry)


class MeteredProcessor(Processor):
    """A :class:`~pyramid_txmail.processor.processor.Processor` that reports to
    ``progress`` (:class:`~pyramid_txmail.processor.health.Progress`: health,
    watchdog, systemd status) and counts into ``metrics`` (a :class:`Metrics`, or None).

    It watches the outcomes through the processor's own steps rather than
    adding lines to them: the message's fate is read from the per-worker
    :class:`~pyramid_txmail.processor.pass_stats.PassStats` before and after
    ``_settle`` -- the same numbers the pass summary logs, so the two agree.
    """

    def __init__(self, *args, progress, metrics=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = progress
        self.metrics = metrics
        if self.relays is not None:
            progress.relays = self.relays
            if metrics is not None:
                self.relays.observer = metrics.session_event

    def run_once(self, stop=None):
        try:
            stats = super().run_once(stop)
        except Exception:
            if self.metrics is not None:
                self.metrics.pass_failed()
            self.progress.pass_failed()
            raise
        now = self.clock()
        if self.metrics is not None:
            self.metrics.pass_done(stats, now)
        self.progress.pass_done(stats, now)
        return stats

    def _deliver(self, transport, job, pending):
        if self.metrics is not None:
            self.metrics.attempts.inc()
        return super()._deliver(transport, job, pending)

    def _settle(self, job, result, stats):
        before = (stats.sent, stats.deferred, stats.failed)
        found = super()._settle(job, result, stats)
        self.progress.progressed()
        if self.metrics is not None:
            after = (stats.sent, stats.deferred, stats.failed)
            self._count(job, result, *(a - b for a, b in zip(after, before)))
        return found

    def _count(self, job, result, sent, deferred, failed):
        accepted = [r for r in result.results if r.status == SENT]
        temporary = [r for r in result.results if r.status == TEMPORARY]
        dead = [r for r in result.results if r.status not in (SENT, TEMPORARY)]
        if not deferred:  # expired: the temporary failures were given up too
            dead, temporary = dead + temporary, []
        m = self.metrics
        for outcome, count, group in (("sent", sent, accepted), ("deferred", deferred, temporary),
                                      ("failed", failed, dead)):
            for r in group:
                m.recipients.labels(outcome, relay_label(r.relay), code_class(r.code)).inc()
            if count:  # the message is labelled by the last answer of its outcome
                last = group[-1] if group else None
                m.messages.labels(outcome, relay_label(last and last.relay),
                                  code_class(last and last.code)).inc(count)
        if accepted:
            queued_at = job.claimed.queued_at or job.meta.get("queued_at")
            if queued_at:
                m.latency.observe(max(0.0, self.clock() - queued_at))

    def _bury_poison(self, claimed, meta, why, stats):
        super()._bury_poison(claimed, meta, why, stats)
        self.progress.progressed()
        if self.metrics is not None:
            self.metrics.messages.labels("failed", "none", "none").inc()

    def _bury_unknown_state(self, job, stats):
        super()._bury_unknown_state(job, stats)
        self.progress.progressed()
        if self.metrics is not None:
            self.metrics.messages.labels("failed", "none", "none").inc()
            self.metrics.recipients.labels("failed", "none", "none").inc(len(job.toaddrs))
