"""Are the outbox's tables there, and the ones this version expects?

``init-db`` creates missing tables but never alters existing ones, so a table
left by another version (or a hand-made one) was reported "ready" and every
pass of txmail-qp then failed with a ProgrammingError and its traceback.
:func:`differences` compares the tables in the database with
:data:`~pyramid_txmail.queue.sql.schema.metadata` (columns by name; an extra
NOT NULL column without a default breaks our INSERTs too), and
:func:`check` raises :class:`IncompatibleTables` naming what differs.

On PostgreSQL the columns of both tables come from one catalog query
(:func:`columns_of`): txmail-qp looks at them at every start, and
SQLAlchemy's Inspector took eight round trips and a good part of the
start-up's database time for it.
"""
from __future__ import annotations

import contextlib

import sqlalchemy as sa

from .schema import metadata

HOW_TO_FIX = ("create or migrate them with `txmail-queue CONFIG_URI init-db` (a new "
              "database) or the application's Alembic migrations (branch txmail)")


class IncompatibleTables(Exception):
    """The outbox tables are missing or not the ones this version uses."""


#: PostgreSQL: every column of the outbox tables the search path finds, and
#: whether an INSERT that leaves it out fails (NOT NULL, no default, no identity).
_PG_COLUMNS = """
SELECT c.relname, a.attname,
       a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0
                                  AND NOT a.attisdropped
WHERE c.relname IN ('txmail_outbox', 'txmail_outbox_chunk')
  AND c.relkind IN ('r', 'p') AND pg_catalog.pg_table_is_visible(c.oid)
"""


def columns_of(bind):
    """``{table: {column: needs a value}}`` of the outbox tables that exist."""
    if bind.dialect.name == "postgresql":
        opened = (contextlib.nullcontext(bind) if isinstance(bind, sa.engine.Connection)
                  else bind.connect())
        found = {}
        with opened as connection:
            for table, column, needed in connection.exec_driver_sql(_PG_COLUMNS):
                found.setdefault(table, {})[column] = bool(needed)
        return found
    inspector = sa.inspect(bind)
    return {table.name: {c["name"]: (not c.get("nullable", True) and c.get("default") is None
                                     and not c.get("autoincrement") is True)
                         for c in inspector.get_columns(table.name)}
            for table in metadata.sorted_tables if inspector.has_table(table.name)}


def missing(bind):
    """The names of the outbox tables the database lacks."""
    found = columns_of(bind)
    return [table.name for table in metadata.sorted_tables if table.name not in found]


def differences(bind, missing_ok=False, found=None):
    """One text per difference between the database's outbox tables and ours."""
    found = columns_of(bind) if found is None else found
    problems = []
    for table in metadata.sorted_tables:
        if table.name not in found:
            if not missing_ok:
                problems.append(f"table {table.name} is missing")
            continue
        columns = found[table.name]
        absent = [c.name for c in table.columns if c.name not in columns]
        if absent:
            problems.append(f"table {table.name} has no column {', '.join(absent)}")
        extra = [name for name, needed in columns.items() if name not in table.columns
                 and needed]
        if extra:
            problems.append(f"table {table.name} has NOT NULL column(s) {', '.join(extra)} "
                            "that this version does not fill")
    return problems


def check(bind, where, missing_ok=False):
    """Raise IncompatibleTables (one line naming what differs) unless the tables fit."""
    found = differences(bind, missing_ok)
    if found:
        raise IncompatibleTables(f"the outbox tables in {where} are not the ones this "
                                 f"version of pyramid_txmail uses: {'; '.join(found)}; "
                                 f"{HOW_TO_FIX}")
