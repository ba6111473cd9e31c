"""Helpers of the metrics and health tests: a real ``txmail-qp --daemon``, scraped over HTTP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
WAIT = 30.0  # generous deadlines on a loaded machine, never a speed target


def wait_until(predicate, timeout=WAIT, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def parse(text):
    """``{(name, frozenset(labels.items())): value}`` of every sample."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples, name, **labels):
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def get(url):
    """``(status, body text)``, also for 4xx/5xx; None while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None


class RunningDaemon:
    """``txmail-qp INI --daemon --no-app`` until :meth:`stop` (SIGTERM, exit 0 expected)."""

    def __init__(self, ini, port=None, env=None, log=None):
        self.port = port
        self.log = log or os.path.join(os.path.dirname(ini), "qp.stderr")
        self._err = open(self.log, "w")
        self.proc = subprocess.Popen([QP, ini, "--daemon", "--no-app"], stderr=self._err,
                                     env={**os.environ, **(env or {})})

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def scrape(self):
        got = wait_until(lambda: self._alive_get("/metrics"), what="/metrics to answer")
        assert got[0] == 200, got
        return parse(got[1])

    def health(self):
        status, body = wait_until(lambda: self._alive_get("/healthz"), what="/healthz")
        return status, json.loads(body)

    def _alive_get(self, path):
        assert self.proc.poll() is None, f"txmail-qp exited: {self.stderr()}"
        return get(self.url(path))

    def stderr(self):
        with open(self.log) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._err.close()
        return code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
