"""SQL outbox, part 3: claims per second as the table grows to a million rows.

An outbox keeps what it has sent (delivered rows for ``mail.keep_delivered``,
dead letters until purged), so a busy site's table is large while its queue
is short.  The claim must not slow down with the table: its partial indexes
(one per claimable state) hold only the rows a claim may take.

One database grows through the sizes: history rows are bulk copies of one
enqueued message, most of them delivered (body gone, as after ``retire``),
1 in 12 failed (body kept) and 1 in 50 deferred with a retry not yet due
(inside the processor's retry horizon, so a pass counts them and leaves
them).  At each size, a fixed batch of queued rows is added and claimed by
the backend's own path, :meth:`SQLQueue.candidates` (the count of deferred
rows not due, then one ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP
LOCKED)`` per claim, each its own transaction, then the due and stray
deferred rows, of which there are none); then the claimed rows are deleted
and the table vacuumed.  The plan of each claim statement at the largest size
is shown with ``EXPLAIN (ANALYZE, BUFFERS)``, run in a transaction that is
rolled back.
"""
from __future__ import annotations

import time

from harness import RECIPIENT, BenchError, Target, median, table
from sql_db import SENDER_ADDRESS, autocommit_sql, copy_rows, engine_for, message_bytes

FULL = dict(sizes=[10_000, 100_000, 1_000_000], batch=2000)
QUICK = dict(sizes=[200, 600, 2000], batch=30)
FLAT = 1.25
#: a deferred history row is due this many seconds after the run starts, plus mod(g, 3000)
NOT_DUE = 600

HISTORY_STATE = ("CASE WHEN mod(g, 50) = 0 THEN 'deferred' WHEN mod(g, 12) = 0 THEN 'failed' "
                 "ELSE 'delivered' END")


def _history(now):
    return {"body": "CASE WHEN mod(g, 50) = 0 OR mod(g, 12) = 0 THEN body END",
            "next_attempt": f"CASE WHEN mod(g, 50) = 0 THEN {now + NOT_DUE} + (mod(g, 3000)) END",
            "settled_at": f"CASE WHEN mod(g, 50) <> 0 THEN {now} - (mod(g, 80000)) END",
            "queued_at": f"{now} - 90000 + (mod(g, 80000))",
            "attempts": "CASE WHEN mod(g, 50) = 0 OR mod(g, 12) = 0 THEN 3 ELSE 1 END"}


def _horizon():
    from pyramid_txmail.processor.outcomes import retry_horizon
    from pyramid_txmail.settings import MailSettings

    return retry_horizon(MailSettings())


class Table:
    """The growing outbox: a template row, history copies, claimable batches."""

    def __init__(self, ctx, pg):
        from pyramid_txmail.queue.sql import SQLQueue, enqueue, init_db

        self.pg = pg
        self.url = pg.database("claims")
        self.engine = engine_for(self.url)
        init_db(self.engine)
        self.now = time.time()
        with self.engine.begin() as connection:
            self.template = enqueue(connection, SENDER_ADDRESS, [RECIPIENT],
                                    message_bytes(ctx))
            connection.exec_driver_sql(  # a dead letter: never claimed, copied from
                f"UPDATE txmail_outbox SET state = 'failed', settled_at = {self.now} "
                f"WHERE id = {self.template}")
        self.rows = 1
        self.queue = SQLQueue(self.url, claim_timeout=3600.0)

    def close(self):
        self.queue.close()
        self.engine.dispose()
        self.pg.drop(self.url)

    def grow(self, size):
        with self.engine.begin() as connection:
            copy_rows(connection, self.template, size - self.rows, HISTORY_STATE,
                      _history(self.now))
        self.rows = max(size, self.rows)
        autocommit_sql(self.engine, "VACUUM ANALYZE txmail_outbox")
        # The load's dirty pages and WAL are written now, not by a checkpoint during
        # the claims (whose commits would wait behind it): filling is not measured.
        autocommit_sql(self.engine, "CHECKPOINT")

    def add_batch(self, count):
        with self.engine.begin() as connection:
            copy_rows(connection, self.template, count, "'queued'",
                      {"settled_at": "NULL", "attempts": "0", "meta": "NULL",
                       "queued_at": f"{time.time()} + g * 0.000001"})

    def claim_batch(self, count):
        """Seconds for one pass of ``candidates`` that claims the ``count`` queued rows."""
        from pyramid_txmail.processor.pass_stats import PassStats

        stats = PassStats()
        start = time.perf_counter()
        claimed = list(self.queue.candidates(time.time(), _horizon(), stats))
        seconds = time.perf_counter() - start
        if len(claimed) != count or stats.errors:
            raise BenchError(f"claims at {self.rows} rows: {len(claimed)} claimed, "
                             f"{stats.errors} errors, expected {count}")
        self.clear_claimed()
        return seconds

    def clear_claimed(self):
        with self.engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM txmail_outbox WHERE state = 'in_progress'")
        autocommit_sql(self.engine, "VACUUM ANALYZE txmail_outbox")

    def size_mb(self):
        with self.engine.connect() as connection:
            return connection.exec_driver_sql(
                "SELECT pg_total_relation_size('txmail_outbox')").scalar() / 1e6

    def capture(self, count):
        """Claim a batch of ``count`` (a warm-up) and keep the statements it sent: the
        count of deferred rows not due, and the claim of a queued row."""
        import sqlalchemy as sa

        seen = []

        def capture(conn, cursor, statement, parameters, context, executemany):
            seen.append((statement, parameters))

        self.add_batch(count)
        sa.event.listen(self.queue.engine, "before_cursor_execute", capture)
        try:
            self.claim_batch(count)
        finally:
            sa.event.remove(self.queue.engine, "before_cursor_execute", capture)
        self.statements = {}
        for statement, parameters in seen:
            head = statement.lstrip().upper()
            if head.startswith("SELECT COUNT"):
                self.statements.setdefault("count the deferred rows not due yet",
                                           (statement, parameters))
            elif head.startswith("UPDATE") and "SKIP LOCKED" in head:
                self.statements.setdefault("claim the oldest queued row",
                                           (statement, parameters))

    def _explain(self, what, options):
        """The plan of the captured statement ``what``, run and rolled back."""
        statement, parameters = self.statements[what]
        with self.engine.connect() as connection:
            with connection.begin() as transaction:
                plan = connection.exec_driver_sql(f"EXPLAIN ({options}) {statement}",
                                                  parameters).scalars().all()
                transaction.rollback()
        return plan

    def server_ms(self, times=20):
        """Median server time (ms) of the claim statement (EXPLAIN ANALYZE's Execution
        Time), with queued rows present: the index's part, without commit or network."""
        found = []
        for _ in range(times):
            plan = self._explain("claim the oldest queued row", "ANALYZE")
            found += [float(line.split(":")[1].split()[0]) for line in plan
                      if line.startswith("Execution Time:")]
        return median(found)

    def explain(self):
        """``[(what, SQL, plan)]`` of the captured statements, a queued row present."""
        self.add_batch(1)
        plans = [(what, statement, "\n".join(self._explain(what, "ANALYZE, BUFFERS")))
                 for what, (statement, _) in self.statements.items()]
        with self.engine.begin() as connection:  # the row, never claimed
            connection.exec_driver_sql("DELETE FROM txmail_outbox WHERE state = 'queued'")
        return plans


def measure(ctx, pg):
    sizes_batch = QUICK if ctx.options.quick else FULL
    sizes, batch = sizes_batch["sizes"], sizes_batch["batch"]
    outbox = Table(ctx, pg)
    figures, plans = {}, []
    try:
        outbox.capture(batch)  # a warm-up, not counted: the engine's connections, caches
        for size in sizes:
            outbox.grow(size)
            runs = []
            server = []
            for _ in range(ctx.options.repeats):
                outbox.add_batch(batch)
                autocommit_sql(outbox.engine, "VACUUM ANALYZE txmail_outbox")
                server.append(outbox.server_ms())
                runs.append(outbox.claim_batch(batch))
            figures[size] = dict(seconds=median(runs), runs=runs, mb=outbox.size_mb(),
                                 server_ms=median(server))
        plans = outbox.explain()
    finally:
        outbox.close()
    return sizes, batch, figures, plans


def run(ctx, pg):
    """``(markdown, lines, targets)`` of the claims part."""
    sizes, batch, figures, plans = measure(ctx, pg)
    rate = {size: batch / f["seconds"] for size, f in figures.items()}
    server = {size: f["server_ms"] for size, f in figures.items()}
    rows = [(f"{size:,}", f"{f['mb']:.0f}", f"{rate[size]:.0f}",
             f"{f['seconds'] / batch * 1e6:.0f}", f"{rate[size] / rate[sizes[0]]:.2f}x",
             f"{server[size]:.3f}", f"{server[size] / server[sizes[0]]:.2f}x",
             ", ".join(f"{batch / s:.0f}" for s in f["runs"]))
            for size, f in figures.items()]
    flat = rate[sizes[-1]] / rate[sizes[0]]
    target = Target(f"claims/s flat as the outbox grows from {sizes[0]:,} to {sizes[-1]:,} "
                    f"rows (within {FLAT}x)", flat >= 1 / FLAT,
                    f"{rate[sizes[0]]:.0f} -> {rate[sizes[-1]]:.0f} claims/s = {flat:.2f}x "
                    f"(the claim statement on the server: {server[sizes[0]]:.3f} -> "
                    f"{server[sizes[-1]]:.3f} ms)")
    parts = [
        f"A batch of {batch} queued rows claimed by one pass of `SQLQueue.candidates` "
        f"(each statement claims up to the queue's `claim_batch` rows, 8 by default, on "
        f"the backend's own engine), {ctx.options.repeats} "
        "time(s) per size, median; the rows already present are 1 in 50 deferred (not due), "
        "1 in 12 failed, the rest delivered.",
        table(["rows present", "table + indexes MB", "claims/s", "us / claim",
               f"vs {sizes[0]:,}", "claim statement, server ms", f"vs {sizes[0]:,}",
               "claims/s, each run"], rows),
        "Each claiming statement is a transaction of its own (its COMMIT waits for the "
        "WAL's fsync), so claims/s follows the disk's commit latency and the "
        "machine's load; the server's own time for the claim statement (`EXPLAIN "
        "ANALYZE`'s Execution Time, median of 20 runs rolled back, queued rows present) "
        "is the part the table's size could change, and is shown beside it."]
    if plans:
        parts.append(f"The plans at {sizes[-1]:,} rows (`EXPLAIN (ANALYZE, BUFFERS)` of the "
                     "statements the backend sent, with their parameters, rolled back):")
        for what, statement, plan in plans:
            parts.append(f"{what}:\n\n```sql\n{statement.strip()}\n```\n\n```\n{plan}\n```")
    lines = ["claims/s at " + ", ".join(f"{s:,} rows {rate[s]:.0f}" for s in sizes)
             + f"; {sizes[-1]:,}/{sizes[0]:,} = {flat:.2f}x; claim statement on the server "
             + ", ".join(f"{server[s]:.3f}" for s in sizes) + " ms"]
    return "\n\n".join(parts), lines, [target]
