"""The outbox schema: the shipped Alembic migration equals the metadata, claims use the indexes.

An application adopts the tables either by its own autogenerate
(``target_metadata = [app_metadata, pyramid_txmail.queue.sql.metadata]``), by
the shipped migration in its ``version_locations``, or by ``init_db``; all three
must give the same tables, on both databases.
"""
from __future__ import annotations

import textwrap
import time

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from pyramid_txmail.queue.sql import init_db, metadata
from pyramid_txmail.queue.sql.backend import SQLQueue
from pyramid_txmail.queue.sql.engine import normalized_url
from pyramid_txmail.queue.sql.schema import SCRIPT_LOCATION, outbox

from .sql_support import db_url  # noqa: F401


def _differences(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)


def test_the_migration_on_an_empty_database_matches_the_metadata(db_url):
    engine = sa.create_engine(normalized_url(db_url))
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "txmail@head")
    assert [d for d in _differences(engine) if "alembic_version" not in repr(d)] == []
    engine.dispose()


def test_init_db_is_idempotent_and_matches_the_metadata(db_url):
    engine = sa.create_engine(normalized_url(db_url))
    init_db(engine)
    init_db(engine)
    assert _differences(engine) == []
    engine.dispose()


def test_an_apps_alembic_runs_the_migration_through_version_locations(db_url, tmp_path):
    """The README's recipe: the app's env.py, its own versions, and ours beside them."""
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(textwrap.dedent("""
        from alembic import context
        connection = context.config.attributes["connection"]
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    """))
    (tmp_path / "versions" / "app_0001.py").write_text(textwrap.dedent("""
        import sqlalchemy as sa
        from alembic import op
        revision, down_revision, branch_labels, depends_on = "app_0001", None, None, None
        def upgrade():
            op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True))
        def downgrade():
            op.drop_table("orders")
    """))
    config = Config()
    config.set_main_option("script_location", str(tmp_path))
    config.set_main_option("path_separator", "space")
    config.set_main_option("version_locations", f"{tmp_path / 'versions'} "
                           "pyramid_txmail.queue.sql:migrations/versions")
    engine = sa.create_engine(normalized_url(db_url))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "heads")
    assert {"orders", "txmail_outbox", "txmail_outbox_chunk"} <= set(
        sa.inspect(engine).get_table_names())
    engine.dispose()


def test_claims_use_the_partial_indexes_among_many_settled_rows(pg_url):
    """EXPLAIN of the claim queries on 200k rows, nearly all delivered or failed."""
    queue = SQLQueue(pg_url)
    init_db(queue.engine)
    now = time.time()
    with queue.engine.begin() as connection:
        connection.exec_driver_sql(f"""
            INSERT INTO txmail_outbox (state, sender, recipients, queued_at, next_attempt,
                attempts, size, chunks, body, eightbit, head_8bit, wire_ready, settled_at)
            SELECT CASE WHEN mod(i, 1000) = 0 THEN 'queued' WHEN mod(i, 1000) = 1 THEN 'deferred'
                        WHEN mod(i, 10) = 0 THEN 'failed' ELSE 'delivered' END,
                   'a@example.com', '["b@example.com"]', {now} - i, {now} + mod(i, 5000), 0,
                   10, 0, 'x', false, false, true, {now} - i
            FROM generate_series(1, 200000) AS i""")
        connection.exec_driver_sql("ANALYZE txmail_outbox")
    plans = {}
    for which in ("queued", "due"):
        pick = (sa.select(outbox.c.id)
                .where(outbox.c.state == "queued" if which == "queued" else
                       sa.and_(outbox.c.state == "deferred", outbox.c.next_attempt <= now))
                .order_by(*((outbox.c.queued_at,) if which == "queued"
                            else (outbox.c.next_attempt,)), outbox.c.id)
                .limit(1).with_for_update(skip_locked=True))
        compiled = pick.compile(queue.engine, compile_kwargs={"literal_binds": True})
        with queue.engine.connect() as connection:
            plans[which] = "\n".join(connection.exec_driver_sql(f"EXPLAIN {compiled}")
                                     .scalars())
    assert "ix_txmail_outbox_queued" in plans["queued"], plans["queued"]
    assert "ix_txmail_outbox_deferred" in plans["due"], plans["due"]
    assert "Seq Scan" not in plans["queued"] + plans["due"], plans
    queue.close()


def test_the_reap_of_delivered_rows_uses_the_settled_index_on_sqlite(sqlite_url):
    """SQLite uses a partial index only when the query's own literals imply its WHERE:
    with the state as a bound parameter, the reap that runs at every pass of the
    daemon scanned the whole table.  The plan of the statement it really sends."""
    queue = SQLQueue(sqlite_url, keep_delivered=86400.0)
    init_db(queue.engine)
    plans = []

    def explain(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith("SELECT txmail_outbox.id") and "settled_at" in statement:
            plans.append(" ".join(row[3] for row in cursor.connection.execute(
                "EXPLAIN QUERY PLAN " + statement, parameters)))

    sa.event.listen(queue.engine, "before_cursor_execute", explain)
    assert queue.reap_delivered() == 0
    sa.event.remove(queue.engine, "before_cursor_execute", explain)
    assert plans and "ix_txmail_outbox_settled" in plans[0], plans
    queue.close()
