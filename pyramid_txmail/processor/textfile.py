"""``mail.metrics_file``: counters that keep counting across cron passes and restarts.

A Prometheus counter starts at zero with its process.  Scraped over HTTP from
a long-running daemon that is what ``rate()``/``increase()`` expect; but a
cron line runs one ``txmail-qp`` per pass, and each wrote its own counts:
``txmail_messages_total{outcome="failed"}`` read 1, 1, 1 after three failing
passes and vanished after an idle one, so the documented alert on
``increase(...[1h])`` never fired (outside probe of issue 15, finding 2).

So the textfile's counters and histograms are cumulative: a small state file
beside the metrics file (``.NAME.counters.json``, a dotfile, which the
textfile collector does not read) holds every series ever written.  Each write
adds what this process counted since its last write (the *delta*, so that a
daemon writing after every pass, or two overlapping cron passes, never count
anything twice), under an ``flock`` of ``.NAME.lock``, then writes the state
and the metrics, each atomically (a temporary file renamed over it).  A
series once seen is written on every pass, with its total (0 if it never
grew).  Deleting the state file resets them; Prometheus takes that as a
counter reset, as after a daemon's restart.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile

from ..util.printable import get_logger

log = get_logger("pyramid_txmail.metrics")

_CUMULATIVE = ("counter", "histogram")


def _key(sample_name, labels):
    return json.dumps([sample_name, sorted(labels.items())])


class CumulativeTextfile:
    """Writes ``registry`` to ``path``, its counters and histograms summed over every
    process that wrote there (see the module's docstring)."""

    def __init__(self, path, prom):
        self.path = path
        self.prom = prom
        directory, name = os.path.split(path)
        self.directory = directory or "."
        self.state_path = os.path.join(self.directory, f".{name}.counters.json")
        self.lock_path = os.path.join(self.directory, f".{name}.lock")
        self._written = {}  # what this process has already added to the state, per series

    def write(self, registry):
        current = {}
        passing = []  # gauges: this moment's value, as they are
        for family in registry.collect():
            if family.type not in _CUMULATIVE:
                passing.append(family)
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # this process's start: meaningless for a sum over processes
                current[_key(sample.name, sample.labels)] = (family, sample)
        with self._locked():
            state = self._load()
            for key, (family, sample) in current.items():
                delta = sample.value - self._written.get(key, 0.0)
                entry = state.setdefault(key, {
                    "family": family.name, "type": family.type,
                    "help": family.documentation, "sample": sample.name,
                    "labels": sample.labels, "value": 0.0})
                entry["value"] += delta
                self._written[key] = sample.value
            self._replace(self.state_path, json.dumps(state, sort_keys=True).encode(), 0o600)
            self._replace(self.path, self._exposition(passing, state), 0o644)

    def _exposition(self, passing, state):
        from prometheus_client.core import Metric

        families = {}
        for entry in sorted(state.values(), key=lambda e: (e["family"], e["sample"],
                                                            sorted(e["labels"].items()))):
            family = families.get(entry["family"])
            if family is None:
                family = families[entry["family"]] = Metric(entry["family"], entry["help"],
                                                            entry["type"])
            family.add_sample(entry["sample"], entry["labels"], entry["value"])
        collected = passing + list(families.values())

        class _Fixed:
            def collect(self):
                return collected

        registry = self.prom.CollectorRegistry(auto_describe=False)
        registry.register(_Fixed())
        return self.prom.generate_latest(registry)

    def _load(self):
        try:
            with open(self.state_path, "rb") as f:
                state = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("the counters kept in %s cannot be read (%s): they start again "
                        "from zero", self.state_path, exc)
            return {}
        if not isinstance(state, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("value"), (int, float))
                and isinstance(e.get("labels"), dict) for e in state.values()):
            log.warning("the counters kept in %s are not what txmail-qp writes: they start "
                        "again from zero", self.state_path)
            return {}
        return state

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _replace(self, path, data, mode):
        fd, tmp = tempfile.mkstemp(prefix=".txmail-metrics.", suffix=".tmp",
                                   dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
