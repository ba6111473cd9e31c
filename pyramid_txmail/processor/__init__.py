"""The processor (``txmail-qp``): takes committed messages from the queue, sends them
through the relay with N workers, and records each recipient's result (sent, deferred
with backoff, dead-lettered); the daemon, its wake-ups, the rate limit and the pass
statistics."""
