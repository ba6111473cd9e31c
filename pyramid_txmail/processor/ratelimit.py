"""A message-rate limit shared by the processor's workers (``mail.rate_limit``)."""
from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    """At most ``rate`` messages per second, shared by every worker.

    Each caller is given the next free slot, ``1/rate`` seconds after the
    previous one, and sleeps until it comes (or until ``stop`` is set).
    """

    def __init__(self, rate, clock=time.monotonic, sleep=None):
        if not (math.isfinite(rate) and rate > 0):  # nan/inf would mean no limit at all
            raise ValueError(f"rate must be a positive, finite number, not {rate!r}")
        self.interval = 1.0 / rate
        self.clock = clock
        self.sleep = sleep
        self._next = None
        self._lock = threading.Lock()

    def wait(self, stop=None):
        with self._lock:
            now = self.clock()
            slot = now if self._next is None else max(now, self._next)
            self._next = slot + self.interval
        delay = slot - now
        if delay > 0:
            if self.sleep is not None:
                self.sleep(delay)
            elif stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
