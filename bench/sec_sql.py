"""The SQL outbox beside the spool (issue 13, item 5), in three parts.

1. :mod:`sql_enqueue` -- what ``enqueue`` adds to the application's own
   transaction, on PostgreSQL and SQLite, against one comparable INSERT;
2. :mod:`sql_drain` -- draining a PostgreSQL outbox with 1 and 3 txmail-qp
   processes against the spool's default drain and repoze.sendmail's qp;
3. :mod:`sql_claims` -- claims per second as the table grows to a million rows,
   with the claim's plan.

One private PostgreSQL (:class:`sql_db.Postgres`) serves the whole section and
is stopped at its end; SQLite is a file in the run's scratch directory (on
the disk the spools use).  A missed drain target adds a profile
(:mod:`sql_profile`) of what limits it.
"""
from __future__ import annotations

import sql_claims
import sql_drain
import sql_enqueue
import sql_profile
from harness import BenchError, SectionResult, table
from sql_db import Postgres, engine_for

#: messages in the profiled drain, when the drain target is missed
PROFILED = 2000


def run(ctx):
    import sqlalchemy as sa

    try:
        return _run(ctx)
    except sa.exc.SQLAlchemyError as exc:  # one line, not a traceback
        first = str(exc).splitlines()[0]
        raise BenchError(f"the sql section: {type(exc).__name__}: {first}") from None


def _run(ctx):
    parts, lines, targets = [], [], []
    with Postgres() as pg:
        probe = engine_for(pg.cluster.url)
        facts = pg.facts(probe)
        probe.dispose()
        sqlite_url = f"sqlite:///{ctx.scratch('sql-enqueue-sqlite') / 'outbox.sqlite'}"
        parts.append(table(["", ""], facts + [("SQLite", _sqlite_facts())]))

        markdown, got_lines, got_targets = sql_enqueue.run(ctx, pg, sqlite_url)
        parts.append("### Enqueue: the outbox row in the application's transaction\n\n"
                     + markdown)
        lines += got_lines
        targets += got_targets
        for target, (label, url) in zip(got_targets, (
                ("PostgreSQL", None), ("SQLite", sqlite_url.replace(".sqlite", "-p.sqlite")))):
            if not target.met:
                parts.append(sql_profile.enqueue_section(ctx, url or pg.database("profile"),
                                                         label))

        markdown, got_lines, got_targets, _ = sql_drain.run(ctx, pg)
        parts.append("### Drain: PostgreSQL outbox vs the spool vs repoze qp\n\n" + markdown)
        lines += got_lines
        targets += got_targets
        if not all(t.met for t in got_targets):
            count = min(PROFILED, ctx.options.drain_size)
            parts.append(sql_profile.section(ctx, pg, count))

        markdown, got_lines, got_targets = sql_claims.run(ctx, pg)
        parts.append("### Claims as the table grows\n\n" + markdown)
        lines += got_lines
        targets += got_targets
    return SectionResult("SQL outbox", "\n\n".join(parts), lines, targets)


def _sqlite_facts():
    import sqlite3

    connection = sqlite3.connect(":memory:")
    try:
        synchronous = connection.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        connection.close()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return (f"{sqlite3.sqlite_version} (Python's sqlite3 with its defaults: rollback "
            f"journal, synchronous={names.get(synchronous, synchronous)}), a file beside "
            "the spools")
